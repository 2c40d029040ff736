// initBackend: which backend it picks on this machine, what it logs, and that
// the module itself stays cheap to import.

import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { BACKEND_ENV, TFJS_VERSION, initBackend } from '../stages/lib/tf-backend.js';

const require = createRequire(import.meta.url);
const savedEnv = process.env[BACKEND_ENV];

afterEach(() => {
  if (savedEnv === undefined) delete process.env[BACKEND_ENV];
  else process.env[BACKEND_ENV] = savedEnv;
});

function installed(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

function collect(): { lines: string[]; log: (l: string) => void } {
  const lines: string[] = [];
  return { lines, log: (l) => lines.push(l) };
}

const nativePresent = installed('@tensorflow/tfjs-node') || installed('@tensorflow/tfjs-node-gpu');

test("initBackend('auto') falls back to wasm and says why tfjs-node(-gpu) were skipped", async (t) => {
  if (nativePresent) {
    t.skip('@tensorflow/tfjs-node(-gpu) is installed here, so auto does not fall back to wasm');
    return;
  }
  delete process.env[BACKEND_ENV];
  const { lines, log } = collect();
  const { tf, info } = await initBackend('auto', { log });
  assert.equal(info.name, 'wasm');
  assert.equal(tf.getBackend(), 'wasm');
  assert.equal(info.package, '@tensorflow/tfjs-backend-wasm');
  assert.equal(info.version, TFJS_VERSION);
  assert.equal(tf.version_core, '4.22.0');
  assert.equal(info.gpu, false);
  assert.equal(typeof info.simd, 'boolean');
  // Node 20 validates wasm SIMD; tfjs-backend-wasm never uses threads under Node.
  assert.equal(info.simd, true);
  assert.equal(info.threads, 1);
  const text = lines.join('\n');
  assert.match(text, /skipped: @tensorflow\/tfjs-node-gpu is not installed/);
  assert.match(text, /skipped: @tensorflow\/tfjs-node is not installed/);
  assert.match(text, /using backend 'wasm' \(@tensorflow\/tfjs-backend-wasm 4\.22\.0, tfjs-core 4\.22\.0/);
  // The gradient kernels came with it.
  assert.ok(tf.getKernel('Conv2DBackpropFilter', 'wasm'), 'Conv2DBackpropFilter registered for wasm');
});

test('PIPE_TF_BACKEND=wasm is respected without trying tfjs-node', async () => {
  process.env[BACKEND_ENV] = 'wasm';
  const { lines, log } = collect();
  const { tf, info } = await initBackend(undefined, { log });
  assert.equal(info.name, 'wasm');
  assert.equal(tf.getBackend(), 'wasm');
  assert.ok(!lines.some((l) => l.includes('skipped')), lines.join('\n'));
  assert.match(lines.join('\n'), /selection: PIPE_TF_BACKEND=wasm/);
  // 'auto' as the argument also defers to the environment.
  const again = collect();
  await initBackend('auto', { log: again.log });
  assert.match(again.lines.join('\n'), /selection: PIPE_TF_BACKEND=wasm/);
});

test('an explicit argument wins over PIPE_TF_BACKEND; cpu logs a warning', async () => {
  process.env[BACKEND_ENV] = 'wasm';
  const { lines, log } = collect();
  const warned: string[] = [];
  const warn = console.warn;
  console.warn = (...a: unknown[]) => { warned.push(a.join(' ')); };
  let tf, info;
  try {
    ({ tf, info } = await initBackend('cpu', { log }));
    tf.tidy(() => { tf!.add(tf!.scalar(1), 1); });
  } finally {
    console.warn = warn;
  }
  // tfjs' "install tfjs-node" banner is swallowed.
  assert.deepEqual(warned, []);
  assert.equal(info.name, 'cpu');
  assert.equal(tf.getBackend(), 'cpu');
  assert.match(lines.join('\n'), /WARNING: using the stock 'cpu' backend/);
  await initBackend('wasm', { log: () => {} });
  assert.equal(tf.getBackend(), 'wasm');
});

test('a bad PIPE_TF_BACKEND value is a clear error', async () => {
  process.env[BACKEND_ENV] = 'tpu';
  await assert.rejects(initBackend(undefined, { log: () => {} }), /PIPE_TF_BACKEND='tpu' is not one of auto, tensorflow, tensorflow-gpu, wasm, cpu/);
});

test("initBackend('tensorflow') without tfjs-node fails and says it is not installed", async (t) => {
  if (installed('@tensorflow/tfjs-node')) {
    t.skip('@tensorflow/tfjs-node is installed here');
    return;
  }
  await assert.rejects(initBackend('tensorflow', { log: () => {} }), /backend 'tensorflow' requested \(argument\) but @tensorflow\/tfjs-node is not installed/);
});

test('importing tf-backend does not load tfjs', () => {
  const mod = fileURLToPath(new URL('../stages/lib/tf-backend.js', import.meta.url));
  const script = `
    import { createRequire } from 'node:module';
    await import(${JSON.stringify(mod)});
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes('@tensorflow'));
    console.log(JSON.stringify(loaded));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim()), []);
});
