// A stage type's code digest: its module's source plus every project-local module it
// imports (statically or with a literal dynamic import), followed recursively, plus the
// versions of the npm packages those modules import. Editing `stages/evaluate.ts` changes
// only evaluate's digest; editing a helper that only letterbox imports changes letterbox's.
// Runs map compiled `dist/x.js` back to the `x.ts` source they were built from; the `pipe`
// launcher rebuilds dist/ when a source is newer, so the source is what actually runs.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256, type CodeDigest } from '../artifacts/digest.js';

// import … from '…', export … from '…', import('…'), and new URL('./…', import.meta.url)
// (how worker threads are started): each is code the module runs.
const IMPORT_RE =
  /(?:^|[^\w$.])(?:import|export)\s+(type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|new URL\(\s*['"](\.[^'"]+)['"]\s*,\s*import\.meta\.url\s*\)/g;

const fileCache = new Map<string, { hash: string; deps: string[]; packages: string[] }>();

/** Map a compiled module under `<root>/dist/` back to its TypeScript source when present. */
export function sourceOf(moduleUrlOrPath: string): string {
  const path = moduleUrlOrPath.startsWith('file:') ? fileURLToPath(moduleUrlOrPath) : moduleUrlOrPath;
  const m = /^(.*)[\\/]dist[\\/](.*)\.js$/.exec(path);
  if (m) {
    const ts = join(m[1]!, `${m[2]}.ts`);
    if (existsSync(ts)) return ts;
  }
  return path;
}

function scan(file: string): { hash: string; deps: string[]; packages: string[] } {
  const cached = fileCache.get(file);
  if (cached) return cached;
  const text = readFileSync(file, 'utf8');
  const deps: string[] = [];
  const packages: string[] = [];
  for (const m of text.matchAll(IMPORT_RE)) {
    if (m[1]) continue; // `import type`: erased at run time, cannot change behaviour
    const spec = (m[2] ?? m[3] ?? m[4])!;
    if (spec.startsWith('.')) {
      let target = resolve(dirname(file), spec);
      if (target.endsWith('.js') && existsSync(target.slice(0, -3) + '.ts')) target = target.slice(0, -3) + '.ts';
      if (existsSync(target)) deps.push(target);
    } else if (!spec.startsWith('node:')) {
      packages.push(packageName(spec));
    }
  }
  const entry = { hash: sha256(text), deps, packages };
  fileCache.set(file, entry);
  return entry;
}

function packageName(spec: string): string {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

const versionCache = new Map<string, string>();

function packageVersion(projectRoot: string, name: string): string {
  const file = join(projectRoot, 'node_modules', name, 'package.json');
  let v = versionCache.get(file);
  if (v === undefined) {
    try {
      v = JSON.parse(readFileSync(file, 'utf8')).version ?? '?';
    } catch {
      v = 'absent';
    }
    versionCache.set(file, v!);
  }
  return v!;
}

/** Files (project-relative) that make up a module's code, for `plan` explanations and tests. */
export function codeFiles(entry: string): string[] {
  const seen = new Set<string>();
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    for (const d of scan(f).deps) walk(d);
  };
  walk(entry);
  return [...seen].sort();
}

// The package's own root (dist/runner/ → ../../ ; runner/ → ../ when run from source).
const here = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_ROOT = /[\\/]dist[\\/]runner$/.test(here) ? resolve(here, '../..') : resolve(here, '..');

export function codeDigest(moduleUrlOrPath: string, projectRoot: string = PACKAGE_ROOT): CodeDigest {
  const entry = sourceOf(moduleUrlOrPath);
  const files = codeFiles(entry);
  const packages = new Set<string>();
  const lines = files.map((f) => {
    const s = scan(f);
    for (const p of s.packages) packages.add(p);
    return `${s.hash} ${relative(projectRoot, f).split(sep).join('/')}`;
  });
  for (const p of [...packages].sort()) lines.push(`pkg ${p}@${packageVersion(projectRoot, p)}`);
  return sha256(lines.join('\n')) as CodeDigest;
}

/** Forget cached file hashes (tests edit sources between digests). */
export function clearCodeDigestCache(): void {
  fileCache.clear();
}
