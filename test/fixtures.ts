// A trained quickstart model shared by the tests that need one (report, detect, serve).
// Every test file runs `pipe run experiments/quickstart.yaml` on the same store under
// test-artifacts/: the first one trains, the others are cache hits.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pipeSync, repoRoot } from './helpers.js';

export const testArtifacts = join(repoRoot, 'test-artifacts');
export const quickstartFile = join(repoRoot, 'experiments', 'quickstart.yaml');
export const sharedStore = join(testArtifacts, 'store');

export function quickstartStore(): { store: string; file: string; env: Record<string, string> } {
  mkdirSync(testArtifacts, { recursive: true });
  const env = { PIPE_STORE: sharedStore };
  const r = pipeSync(['run', quickstartFile, '--json'], { cwd: repoRoot, env });
  if (r.code !== 0) throw new Error(`quickstart failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return { store: sharedStore, file: quickstartFile, env };
}
