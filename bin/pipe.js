#!/usr/bin/env node
// Launcher: makes sure dist/ is built from the current sources (stage code digests are
// computed from the .ts sources, so what runs must be what was hashed), then starts the CLI.
import { existsSync, readdirSync, statSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Image stages run one single-threaded libvips pipeline per libuv worker: give the pool one
// worker per core (it must be set before the pool is first used).
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, availableParallelism()));
const stamp = join(root, 'dist', '.tsbuildinfo');

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

const built = existsSync(stamp) ? statSync(stamp).mtimeMs : 0;
const sources = Math.max(...['runner', 'artifacts', 'stages', 'cli'].map((d) => newestSource(join(root, d))));
if (sources > built) {
  process.stderr.write('pipe: sources changed, rebuilding dist/ …\n');
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], { stdio: 'inherit' });
    const now = new Date();
    utimesSync(stamp, now, now); // an incremental no-op build leaves the stamp as it was
  } catch {
    process.stderr.write('pipe: build failed; fix the errors above\n');
    process.exit(1);
  }
}
const { cli } = await import('../dist/cli/main.js');
await cli(process.argv.slice(2));
