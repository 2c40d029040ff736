// Shared test helpers: locate the repository, make temp projects, run the real CLI.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after } from 'node:test';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tarStream from 'tar-stream';

/** Repository root (tests run from dist/test/). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const sharedData = resolve(repoRoot, '../shared/data');
export const pipeBin = join(repoRoot, 'bin', 'pipe.js');

export function tempDir(prefix = 'pipe-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Write files (path → content) under root, creating folders. */
export function writeTree(root: string, files: Record<string, string>): void {
  for (const [p, content] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), content);
  }
}

/** A tar of these members made by tar-stream (fixed mtime), as one Buffer. */
export async function tarBytes(members: Array<[string, Buffer]>): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => pack.on('end', () => r()));
  for (const [name, data] of members) pack.entry({ name, mtime: new Date(0) }, data);
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

export interface PipeResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON lines (lines that are not JSON are dropped). */
  json: any[];
}

function parseLines(stdout: string): any[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

export function pipeSync(args: string[], opts: { cwd: string; env?: Record<string, string> }): PipeResult {
  const r = spawnSync(process.execPath, [pipeBin, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, CI: '1', ...opts.env },
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, json: parseLines(r.stdout) };
}

export function pipeAsync(args: string[], opts: { cwd: string; env?: Record<string, string> }): { child: ReturnType<typeof spawn>; done: Promise<PipeResult> } {
  const child = spawn(process.execPath, [pipeBin, ...args], { cwd: opts.cwd, env: { ...process.env, CI: '1', ...opts.env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<PipeResult>((res) => child.on('close', (code) => res({ code: code ?? -1, stdout, stderr, json: parseLines(stdout) })));
  return { child, done };
}

export function statuses(r: PipeResult): Record<string, string> {
  return Object.fromEntries(r.json.filter((j) => j.type === 'stage').map((j) => [`${j.experiment}/${j.stage}`, j.status ?? j.action]));
}

export function summary(r: PipeResult): any {
  return r.json.find((j) => j.type === 'summary');
}

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

export { existsSync };

/** A python3 that can import scipy (Debian's python3-scipy lives under /usr/bin; a pyenv
 * python3 may come first on PATH without it), or undefined. */
export const scipyPython: string | undefined = ['/usr/bin/python3', 'python3'].find(
  (py) => spawnSync(py, ['-c', 'import scipy.io'], { encoding: 'utf8' }).status === 0,
);

/** A temp-dir maker whose folders are removed when the test file ends. */
export function tempDirs(prefix: string): (tag: string) => string {
  const made: string[] = [];
  after(() => {
    for (const d of made) rmSync(d, { recursive: true, force: true });
  });
  return (tag) => {
    const d = mkdtempSync(join(tmpdir(), `${prefix}-${tag}-`));
    made.push(d);
    return d;
  };
}
