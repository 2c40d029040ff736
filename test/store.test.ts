// Unit tests of the pieces under the cache: stat cache, code digests, resource pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { StatCache } from '../artifacts/stat-cache.js';
import { clearCodeDigestCache, codeDigest, codeFiles } from '../runner/code-digest.js';
import { ResourcePool } from '../runner/resources.js';
import { tempDir, writeTree } from './helpers.js';

test('stat cache: unchanged files are not read again; changes and same-tick writes are', async () => {
  const dir = tempDir();
  const file = join(dir, 'big.bin');
  writeFileSync(file, 'a'.repeat(1000));
  const hourAgo = new Date(Date.now() - 3600_000);
  utimesSync(file, hourAgo, hourAgo);
  const cache = new StatCache(join(dir, 'stat-cache.json'));
  const d1 = await cache.digestFile(file);
  assert.equal(cache.bytesHashed, 1000);
  assert.equal(await cache.digestFile(file), d1);
  assert.equal(cache.bytesHashed, 1000, 'unchanged file served from the cache');
  await cache.save();
  const reloaded = new StatCache(join(dir, 'stat-cache.json'));
  assert.equal(await reloaded.digestFile(file), d1);
  assert.equal(reloaded.bytesHashed, 0, 'the cache persists across processes');

  // Same size, mtime put back: ctime still moves, so the change is seen.
  writeFileSync(file, 'b'.repeat(1000));
  utimesSync(file, hourAgo, hourAgo);
  const d2 = await reloaded.digestFile(file);
  assert.notEqual(d2, d1);
  assert.equal(reloaded.bytesHashed, 1000);

  // A file written just now (within a timestamp tick of hashing) is not trusted next time.
  const fresh = join(dir, 'fresh.bin');
  writeFileSync(fresh, 'x'.repeat(10));
  await reloaded.digestFile(fresh);
  await reloaded.digestFile(fresh);
  assert.equal(reloaded.bytesHashed, 1020, 'racily-clean entry was re-hashed');

  // Directories hash as trees of their files.
  writeTree(dir, { 'd/x.txt': '1', 'd/sub/y.txt': '2' });
  const t1 = await reloaded.digestInput(join(dir, 'd'));
  writeTree(dir, { 'd/sub/y.txt': '3' });
  const t2 = await reloaded.digestInput(join(dir, 'd'));
  assert.equal(t1.kind, 'dir');
  assert.notEqual(t1.digest, t2.digest);
  await assert.rejects(reloaded.digestInput(join(dir, 'nope')), /input .*nope does not exist/);
});

test('code digest follows project-local imports only as far as each stage reaches', () => {
  const dir = tempDir();
  writeTree(dir, {
    'stages/letterbox.ts': "import { pad } from './lib/geometry.js';\nimport type { X } from './lib/types.js';\nimport sharp from 'sharp';\nexport const a = pad;\n",
    'stages/evaluate.ts': "import { iou } from './lib/boxes.js';\nexport async function run() { const m = await import('./lib/draw.js'); return m; }\n",
    'stages/lib/geometry.ts': "export { shared } from './shared.js';\nexport const pad = 1;\n",
    'stages/lib/boxes.ts': "import { shared } from './shared.js';\nexport const iou = shared;\n",
    'stages/lib/shared.ts': 'export const shared = 1;\n',
    'stages/lib/types.ts': 'export type X = number;\n',
    'stages/lib/draw.ts': 'export const draw = 1;\n',
  });
  const lb = join(dir, 'stages/letterbox.ts');
  const ev = join(dir, 'stages/evaluate.ts');
  const rel = (fs: string[]) => fs.map((f) => f.slice(dir.length + 1));
  assert.deepEqual(rel(codeFiles(lb)), ['stages/letterbox.ts', 'stages/lib/geometry.ts', 'stages/lib/shared.ts']);
  assert.deepEqual(rel(codeFiles(ev)), ['stages/evaluate.ts', 'stages/lib/boxes.ts', 'stages/lib/draw.ts', 'stages/lib/shared.ts']);
  const digests = () => {
    clearCodeDigestCache();
    return { lb: codeDigest(lb, dir), ev: codeDigest(ev, dir) };
  };
  const d0 = digests();
  writeTree(dir, { 'stages/evaluate.ts': "import { iou } from './lib/boxes.js';\nexport const v = 2;\n" });
  const d1 = digests();
  assert.equal(d1.lb, d0.lb, 'editing evaluate does not touch letterbox');
  assert.notEqual(d1.ev, d0.ev);
  writeTree(dir, { 'stages/lib/geometry.ts': "export { shared } from './shared.js';\nexport const pad = 2;\n" });
  const d2 = digests();
  assert.notEqual(d2.lb, d1.lb, 'a helper only letterbox imports changes letterbox');
  assert.equal(d2.ev, d1.ev, '…and not evaluate');
  writeTree(dir, { 'stages/lib/types.ts': 'export type X = string;\n' });
  assert.deepEqual(digests(), d2, '`import type` is erased at run time and not followed');
  writeTree(dir, { 'stages/lib/shared.ts': 'export const shared = 2;\n' });
  const d4 = digests();
  assert.notEqual(d4.lb, d2.lb);
  assert.notEqual(d4.ev, d2.ev);
});

test('resource pool: two gpu stages never overlap; cpu slots bound concurrency', async () => {
  const pool = new ResourcePool({ cpu: 2, gpu: 1, memoryMb: 1000 });
  let gpuBusy = 0;
  let maxGpu = 0;
  let cpuBusy = 0;
  let maxCpu = 0;
  const job = async (gpu: number) => {
    const release = await pool.acquire({ cpu: 1, gpu });
    cpuBusy++;
    gpuBusy += gpu;
    maxCpu = Math.max(maxCpu, cpuBusy);
    maxGpu = Math.max(maxGpu, gpuBusy);
    await new Promise((r) => setTimeout(r, 20));
    cpuBusy--;
    gpuBusy -= gpu;
    release();
  };
  await Promise.all([job(1), job(1), job(0), job(0), job(1), job(0)]);
  assert.equal(maxGpu, 1);
  assert.equal(maxCpu, 2);
  // A request larger than the pool is clamped and still runs.
  const release = await pool.acquire({ cpu: 64, memoryMb: 10 ** 9 });
  release();
});
