// The SIMD paths of the wasm training kernels (stages/lib/wasm-simd.ts, used by
// stages/lib/wasm-grad-kernels.ts) against the stock tfjs 'cpu' kernels, on shapes that reach
// them (channels >= 4, bigger than the unit cases of wasm-grad-kernels.test.ts), and against
// their JavaScript fallbacks (PIPE_WASM_SIMD=0).
import { before, test } from 'node:test';
import assert from 'node:assert/strict';

import { initBackend } from '../stages/lib/tf-backend.js';
import { err, randArray, size } from './kernel-check.js';
import { simdKernelsFor, simdModuleBytes } from '../stages/lib/wasm-simd.js';

type Tf = Awaited<ReturnType<typeof initBackend>>['tf'];
type Tensor = import('@tensorflow/tfjs').Tensor;
type Tensor4D = import('@tensorflow/tfjs').Tensor4D;

const quiet = { log: () => {} };
let tf: Tf;

before(async () => {
  tf = (await initBackend('wasm', quiet)).tf;
  tf.env().set('IS_TEST', true);
});

/** f's result on wasm with SIMD, on wasm without (JavaScript paths), and on cpu. */
async function threeWays<T>(f: () => T): Promise<{ simd: T; js: T; cpu: T }> {
  await initBackend('wasm', quiet);
  const before = tf.memory().numTensors;
  const simd = f();
  assert.equal(tf.memory().numTensors, before, 'wasm: tensors leaked');
  process.env['PIPE_WASM_SIMD'] = '0';
  let js: T;
  try {
    js = f();
  } finally {
    delete process.env['PIPE_WASM_SIMD'];
  }
  await initBackend('cpu', quiet);
  const cpu = f();
  await initBackend('wasm', quiet);
  return { simd, js, cpu };
}

test('the SIMD module validates and binds to the wasm backend memory', async () => {
  assert.ok(WebAssembly.validate(simdModuleBytes()));
  await initBackend('wasm', quiet);
  const memory = (tf.backend() as unknown as { wasm: { asm: { memory: WebAssembly.Memory } } }).wasm.asm.memory;
  assert.ok(simdKernelsFor(memory), 'SIMD kernels should be available in Node 20');
});

test('maxPool gradient (2x2 stride 2, SIMD) matches cpu exactly, ties and infinities included', async () => {
  const cases: { shape: [number, number, number, number]; pad: 'same' | 'valid'; levels?: number; special?: boolean }[] = [
    { shape: [2, 9, 11, 10], pad: 'same' }, // odd sides: partial windows at the borders
    { shape: [1, 8, 8, 4], pad: 'valid', levels: 1 }, // mostly ties
    { shape: [2, 7, 6, 6], pad: 'valid' }, // a last row in no window
    { shape: [3, 10, 12, 13], pad: 'same', levels: 3, special: true },
  ];
  for (const [i, c] of cases.entries()) {
    const xv = randArray(size(c.shape), 40 + i, c.levels);
    if (c.special) {
      // NaN never wins (cpu rule), -Infinity only ties with itself, +Infinity wins.
      for (let j = 0; j < xv.length; j += 7) xv[j] = [NaN, -Infinity, Infinity][j % 3]!;
    }
    const run = () => tf.tidy(() => {
      const x = tf.tensor4d(xv, c.shape);
      const yShape = tf.maxPool(x, 2, 2, c.pad).shape;
      const r = tf.tensor(randArray(size(yShape), 50 + i), yShape);
      return Array.from(tf.grad((a: Tensor) => tf.sum(tf.mul(tf.maxPool(a as Tensor4D, 2, 2, c.pad), r)))(x).dataSync());
    });
    const { simd, js, cpu } = await threeWays(run);
    assert.equal(err(simd, cpu), 0, `SIMD vs cpu ${JSON.stringify(c)}`);
    assert.equal(err(js, cpu), 0, `JS vs cpu ${JSON.stringify(c)}`);
  }
});

test('conv2d filter gradient (direct SIMD path, out channels >= 4) matches cpu', async () => {
  type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];
  const cases: { x: [number, number, number, number]; k: [number, number]; co: number; stride: number | [number, number]; pad: Pad }[] = [
    { x: [3, 12, 11, 3], k: [3, 3], co: 10, stride: 1, pad: 'same' },
    { x: [2, 9, 9, 5], k: [3, 3], co: 13, stride: 2, pad: 'same' },
    { x: [2, 10, 7, 1], k: [3, 3], co: 4, stride: 1, pad: 'valid' },
    { x: [1, 8, 9, 2], k: [2, 4], co: 6, stride: [3, 2], pad: 'same' },
    { x: [2, 6, 6, 4], k: [1, 1], co: 5, stride: 1, pad: 'valid' },
    { x: [1, 7, 8, 3], k: [3, 3], co: 8, stride: 1, pad: [[0, 0], [2, 0], [0, 1], [0, 0]] },
    { x: [1, 9, 8, 4], k: [5, 2], co: 7, stride: 3, pad: 'valid' }, // rows and columns the taps never reach
  ];
  for (const [i, c] of cases.entries()) {
    const wShape: [number, number, number, number] = [c.k[0], c.k[1], c.x[3], c.co];
    const xv = randArray(size(c.x), 60 + i);
    const wv = randArray(size(wShape), 70 + i);
    const run = () => tf.tidy(() => {
      const x = tf.tensor4d(xv, c.x);
      const w = tf.tensor4d(wv, wShape);
      const yShape = tf.conv2d(x, w, c.stride, c.pad).shape;
      const r = tf.tensor(randArray(size(yShape), 80 + i), yShape);
      const [, gw] = tf.grads((a: Tensor, b: Tensor) => tf.sum(tf.mul(tf.conv2d(a as Tensor4D, b as Tensor4D, c.stride, c.pad), r)))([x, w]);
      return Array.from(gw!.dataSync());
    });
    const { simd, js, cpu } = await threeWays(run);
    assert.ok(err(simd, cpu) <= 1e-5, `SIMD dW ${JSON.stringify(c)}: err ${err(simd, cpu)}`);
    assert.ok(err(js, cpu) <= 1e-5, `JS dW ${JSON.stringify(c)}: err ${err(js, cpu)}`);
  }
});

test('sum over leading axes and per-channel bias add (SIMD) match cpu', async () => {
  const big = randArray(3 * 11 * 13 * 10, 90);
  const tall = randArray(4099 * 3, 91);
  const bias = randArray(10, 92);
  const run = () => tf.tidy(() => {
    const x = tf.tensor4d(big, [3, 11, 13, 10]);
    const t = tf.tensor2d(tall, [4099, 3]);
    const b = tf.tensor1d(bias);
    const outs: Tensor[] = [
      tf.sum(x, [0, 1, 2]),
      tf.sum(x, [2, 0, 1], true), // axes in any order, keepDims
      tf.sum(x, 0),
      tf.sum(t, 0), // 3 channels: rows of lcm(3, 4) = 12 values
      tf.sum(x, [1, 2]), // not leading: stock kernel
      tf.add(x, b),
      tf.add(b, x),
      tf.add(t, tf.tensor1d([0.5, -1, 2])),
      tf.add(x, tf.reshape(b, [1, 1, 1, 10])),
    ];
    assert.deepEqual(outs[1]!.shape, [1, 1, 1, 10]);
    return outs.map((o) => Array.from(o.dataSync()));
  });
  const { simd, js, cpu } = await threeWays(run);
  for (let i = 0; i < cpu.length; i++) {
    // Sums: float32 partial sums vs cpu's order; adds: exact.
    const tol = i < 5 ? 1e-5 : 0;
    assert.ok(err(simd[i]!, cpu[i]!) <= tol, `output ${i} SIMD: err ${err(simd[i]!, cpu[i]!)}`);
    assert.ok(err(js[i]!, cpu[i]!) <= tol, `output ${i} JS: err ${err(js[i]!, cpu[i]!)}`);
  }
});

test('Identity and same-dtype Cast share the buffer; other casts convert', async () => {
  await initBackend('wasm', quiet);
  const x = tf.tensor1d([1.5, -2.25, 3]);
  const before = tf.memory().numDataBuffers;
  const c = tf.clone(x);
  const f = tf.cast(x, 'float32');
  assert.equal(tf.memory().numDataBuffers, before, 'clone/cast of the same dtype should not allocate');
  assert.equal(c.dataId, x.dataId);
  x.dispose();
  assert.deepEqual(Array.from(c.dataSync()), [1.5, -2.25, 3]);
  assert.deepEqual(Array.from(f.dataSync()), [1.5, -2.25, 3]);
  const i = tf.cast(c, 'int32');
  assert.equal(i.dtype, 'int32');
  assert.deepEqual(Array.from(i.dataSync()), [1, -2, 3]);
  tf.dispose([c, f, i]);
});
