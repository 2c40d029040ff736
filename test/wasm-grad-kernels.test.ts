// Our wasm gradient kernels (stages/lib/wasm-grad-kernels.ts) against the stock
// tfjs 'cpu' kernels, which serve as the reference implementation.
//
// Metric for float comparisons: err = max_i |ours_i - ref_i| / max(1, max_i |ref_i|)
// (absolute error for values of order 1 or less, relative to the largest
// reference value otherwise); required err <= 1e-5. Max-pool gradients only
// route dy, so they must match exactly, ties included.
//
// Inputs come from a seeded PRNG (mulberry32), so every run sees the same data.

import { before, test } from 'node:test';
import assert from 'node:assert/strict';

import { initBackend } from '../stages/lib/tf-backend.js';
import { err, randArray, size } from './kernel-check.js';
import { mulberry32 } from '../stages/lib/random.js';
import { REGISTERED_WASM_KERNELS, registerWasmGradKernels, wasmGradKernelsRegistered } from '../stages/lib/wasm-grad-kernels.js';

type Tf = Awaited<ReturnType<typeof initBackend>>['tf'];
type Tensor = import('@tensorflow/tfjs').Tensor;
type Tensor4D = import('@tensorflow/tfjs').Tensor4D;
type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];

const TOL = 1e-5;
const quiet = { log: () => {} };
let tf: Tf;

before(async () => {
  tf = (await initBackend('wasm', quiet)).tf;
  // Makes the engine check every kernel for leaked data buffers (and throw).
  tf.env().set('IS_TEST', true);
});

async function useBackend(name: 'wasm' | 'cpu'): Promise<void> {
  await initBackend(name, quiet);
  assert.equal(tf.getBackend(), name);
}

/** Runs f on `backend` and checks that it leaves no tensor or buffer behind. */
async function onBackend<T>(name: 'wasm' | 'cpu', f: () => T): Promise<T> {
  await useBackend(name);
  const before = tf.memory();
  const out = f();
  const after = tf.memory();
  assert.equal(after.numTensors, before.numTensors, `${name}: tensors leaked`);
  assert.equal(after.numDataBuffers, before.numDataBuffers, `${name}: data buffers leaked`);
  return out;
}

interface ConvCase { b: number; h: number; w: number; ci: number; co: number; k: number | [number, number]; stride: number | [number, number]; pad: Pad }

const convCases: ConvCase[] = [
  { b: 1, h: 5, w: 5, ci: 1, co: 1, k: 3, stride: 1, pad: 'same' },
  { b: 3, h: 7, w: 6, ci: 3, co: 8, k: 3, stride: 2, pad: 'same' },
  { b: 2, h: 8, w: 8, ci: 8, co: 16, k: 3, stride: 2, pad: 'valid' },
  { b: 1, h: 9, w: 9, ci: 16, co: 3, k: 1, stride: 1, pad: 'valid' },
  { b: 3, h: 6, w: 7, ci: 3, co: 16, k: 3, stride: 1, pad: 'valid' },
  { b: 2, h: 10, w: 9, ci: 3, co: 8, k: 1, stride: 2, pad: 'same' },
  { b: 1, h: 8, w: 8, ci: 16, co: 16, k: 3, stride: 1, pad: 'same' },
  { b: 3, h: 5, w: 5, ci: 8, co: 1, k: 1, stride: 1, pad: 'same' },
  { b: 1, h: 7, w: 7, ci: 1, co: 3, k: 3, stride: 2, pad: 'valid' },
  { b: 2, h: 7, w: 8, ci: 3, co: 8, k: 3, stride: [2, 1], pad: 'same' },
  { b: 1, h: 6, w: 5, ci: 3, co: 8, k: 3, stride: 1, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
  // Even/rectangular kernels: SAME pads unevenly; stride 3 leaves rows unused.
  { b: 2, h: 9, w: 8, ci: 3, co: 5, k: [2, 4], stride: [3, 2], pad: 'same' },
  { b: 1, h: 8, w: 10, ci: 4, co: 2, k: [5, 2], stride: 3, pad: 'valid' },
];

test('conv2d gradients (input and filter) on wasm match the cpu kernels', async (t) => {
  let worst = 0;
  for (const [i, c] of convCases.entries()) {
    const xShape = [c.b, c.h, c.w, c.ci];
    const [kh, kw] = typeof c.k === 'number' ? [c.k, c.k] : c.k;
    const wShape = [kh, kw, c.ci, c.co];
    const xv = randArray(size(xShape), 100 + i);
    const wv = randArray(size(wShape), 200 + i);
    const run = () => tf.tidy(() => {
      const x = tf.tensor4d(xv, xShape as [number, number, number, number]);
      const w = tf.tensor4d(wv, wShape as [number, number, number, number]);
      const yShape = tf.conv2d(x, w, c.stride, c.pad).shape;
      // L = sum(y * R): dL/dy = R exactly on both backends, so only the backprop kernels differ.
      const r = tf.tensor(randArray(size(yShape), 300 + i), yShape);
      const g = tf.grads((a: Tensor, b: Tensor) => tf.sum(tf.mul(tf.conv2d(a as Tensor4D, b as Tensor4D, c.stride, c.pad), r)));
      const [gx, gw] = g([x, w]);
      return [gx!.dataSync() as Float32Array, gw!.dataSync() as Float32Array];
    });
    const ours = await onBackend('wasm', run);
    const ref = await onBackend('cpu', run);
    const label = JSON.stringify(c);
    assert.ok(err(ours[0]!, ref[0]!) <= TOL, `dL/dx ${label}: err ${err(ours[0]!, ref[0]!)}`);
    assert.ok(err(ours[1]!, ref[1]!) <= TOL, `dL/dW ${label}: err ${err(ours[1]!, ref[1]!)}`);
    worst = Math.max(worst, err(ours[0]!, ref[0]!), err(ours[1]!, ref[1]!));
  }
  t.diagnostic(`worst err over ${convCases.length} cases: ${worst.toExponential(2)}`);
});

test('Conv2DBackpropInput/Filter called directly as kernels match cpu', async () => {
  const dyShape: [number, number, number, number] = [3, 4, 4, 8];
  const xv = randArray(3 * 7 * 7 * 3, 11);
  const dyv = randArray(size(dyShape), 12);
  const wv = randArray(3 * 3 * 3 * 8, 13);
  const attrs = { strides: [2, 2], pad: 'same', dataFormat: 'NHWC', dimRoundingMode: undefined };
  const run = () => tf.tidy(() => {
    const x = tf.tensor4d(xv, [3, 7, 7, 3]);
    const dy = tf.tensor4d(dyv, dyShape);
    const w = tf.tensor4d(wv, [3, 3, 3, 8]);
    const dx = tf.engine().runKernel('Conv2DBackpropInput', { dy, filter: w }, { ...attrs, inputShape: [3, 7, 7, 3] } as never) as Tensor;
    const dw = tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, { ...attrs, filterShape: [3, 3, 3, 8] } as never) as Tensor;
    assert.deepEqual(dx.shape, [3, 7, 7, 3]);
    assert.deepEqual(dw.shape, [3, 3, 3, 8]);
    return [dx.dataSync() as Float32Array, dw.dataSync() as Float32Array];
  });
  const ours = await onBackend('wasm', run);
  const ref = await onBackend('cpu', run);
  assert.ok(err(ours[0]!, ref[0]!) <= TOL, `dx err ${err(ours[0]!, ref[0]!)}`);
  assert.ok(err(ours[1]!, ref[1]!) <= TOL, `dW err ${err(ours[1]!, ref[1]!)}`);
});

interface PoolCase { b: number; h: number; w: number; c: number; k: number | [number, number]; s: number | [number, number]; pad: 'same' | 'valid'; levels?: number }

const poolCases: PoolCase[] = [
  { b: 1, h: 8, w: 8, c: 16, k: 2, s: 2, pad: 'same' }, // wrong in the stock wasm kernel of 4.22.0
  { b: 3, h: 7, w: 5, c: 3, k: 2, s: 2, pad: 'same' },
  { b: 2, h: 7, w: 9, c: 1, k: 2, s: 2, pad: 'valid' },
  { b: 1, h: 6, w: 6, c: 8, k: 2, s: 2, pad: 'valid', levels: 2 }, // many ties
  { b: 3, h: 5, w: 6, c: 16, k: 2, s: 2, pad: 'same', levels: 1 }, // mostly ties
  { b: 2, h: 7, w: 7, c: 3, k: 3, s: 2, pad: 'same', levels: 3 }, // overlapping windows
  { b: 1, h: 6, w: 5, c: 8, k: 3, s: 1, pad: 'valid' },
  { b: 2, h: 6, w: 6, c: 3, k: 2, s: 1, pad: 'same', levels: 2 },
  { b: 1, h: 9, w: 7, c: 3, k: [1, 2], s: [3, 2], pad: 'valid' }, // gaps between windows
];

test('maxPool gradient on wasm matches cpu (ties go to the first maximum)', async () => {
  for (const [i, c] of poolCases.entries()) {
    const xShape = [c.b, c.h, c.w, c.c];
    const xv = randArray(size(xShape), 400 + i, c.levels);
    const run = () => tf.tidy(() => {
      const x = tf.tensor4d(xv, xShape as [number, number, number, number]);
      const yShape = tf.maxPool(x, c.k, c.s, c.pad).shape;
      const r = tf.tensor(randArray(size(yShape), 500 + i), yShape);
      const g = tf.grad((a: Tensor) => tf.sum(tf.mul(tf.maxPool(a as Tensor4D, c.k, c.s, c.pad), r)));
      return g(x).dataSync() as Float32Array;
    });
    const ours = await onBackend('wasm', run);
    const ref = await onBackend('cpu', run);
    const [kh, kw] = typeof c.k === 'number' ? [c.k, c.k] : c.k;
    const [sh, sw] = typeof c.s === 'number' ? [c.s, c.s] : c.s;
    if (kh <= sh && kw <= sw) {
      // Each input gets at most one dy: exact (err, not deepEqual: -0 and 0 are the same gradient).
      assert.equal(err(ours, ref), 0, `maxPool grad ${JSON.stringify(c)}: ${ours} vs ${ref}`);
    } else {
      // Overlapping windows add several dy in a different order than cpu.
      assert.ok(err(ours, ref) <= TOL, `maxPool grad ${JSON.stringify(c)}: err ${err(ours, ref)}`);
    }
  }
});

test('UnsortedSegmentSum and the gather gradient match cpu', async () => {
  const xv = randArray(6 * 3, 21);
  const run = () => tf.tidy(() => {
    const x = tf.tensor2d(xv, [6, 3]);
    // Repeated ids and ids outside [0, 4) (dropped).
    const ids = tf.tensor1d([0, 2, 2, -1, 3, 4], 'int32');
    const s1 = tf.unsortedSegmentSum(x, ids, 4);
    const si = tf.unsortedSegmentSum(tf.tensor1d([5, -7, 9, 2], 'int32'), tf.tensor1d([1, 1, 0, 1], 'int32'), 3);
    const params = tf.tensor2d(xv, [6, 3]);
    const idx = tf.tensor2d([[5, 1], [1, 1], [0, 3]], [3, 2], 'int32');
    const r = tf.tensor(randArray(3 * 2 * 3, 22), [3, 2, 3]);
    const gp = tf.grad((p: Tensor) => tf.sum(tf.mul(tf.gather(p, idx), r)))(params);
    const gp1 = tf.grad((p: Tensor) => tf.sum(tf.mul(tf.gather(p, tf.tensor1d([2, 0, 2], 'int32'), 1), tf.tensor(randArray(18, 23), [6, 3]))))(params);
    // Ours keeps x's dtype (as TensorFlow does); the cpu kernel returns float32.
    if (tf.getBackend() === 'wasm') assert.equal(si.dtype, 'int32');
    return [s1, si, gp, gp1].map((t) => Array.from(t.dataSync() as Float32Array));
  });
  const ours = await onBackend('wasm', run);
  const ref = await onBackend('cpu', run);
  for (let i = 0; i < ref.length; i++) {
    assert.ok(err(Float32Array.from(ours[i]!), Float32Array.from(ref[i]!)) <= TOL, `output ${i}: ${ours[i]} vs ${ref[i]}`);
  }
  assert.deepEqual(ours[1], [9, 5 - 7 + 2, 0]);
  // Multi-dimensional segment ids (TensorFlow semantics: out = [numSegments, ...x.shape[ids.rank:]]);
  // tfjs' cpu kernel shapes this case differently, so check against sums done here.
  await useBackend('wasm');
  const s2 = tf.tidy(() => {
    const ids2d = tf.tensor2d([[1, 0, 1], [0, 1, 5]], [2, 3], 'int32') as unknown as import('@tensorflow/tfjs').Tensor1D;
    const out = tf.unsortedSegmentSum(tf.tensor3d(xv, [2, 3, 3]), ids2d, 2);
    assert.deepEqual(out.shape, [2, 3]);
    return out.dataSync() as Float32Array;
  });
  const row = (r: number) => Array.from(xv.slice(r * 3, r * 3 + 3));
  const expected = [0, 1, 2].map((j) => row(1)[j]! + row(3)[j]!).concat([0, 1, 2].map((j) => row(0)[j]! + row(2)[j]! + row(4)[j]!));
  assert.ok(err(s2, Float32Array.from(expected)) <= TOL, `2-D ids: ${s2} vs ${expected}`);
});

test('OneHot with dtype float32 and custom on/off values on wasm matches cpu', async () => {
  const run = () => tf.tidy(() => {
    const a = tf.oneHot(tf.tensor2d([[0, 2], [3, -1]], [2, 2], 'int32'), 3, 0.9, 0.05, 'float32');
    const b = tf.oneHot(tf.tensor1d([1, 0], 'int32'), 2);
    assert.equal(a.dtype, 'float32');
    assert.equal(b.dtype, 'int32');
    return [Array.from(a.dataSync()), Array.from(b.dataSync())];
  });
  const ours = await onBackend('wasm', run);
  const ref = await onBackend('cpu', run);
  assert.deepEqual(ours, ref);
  assert.deepEqual(ours[1], [0, 1, 1, 0]);
});

test('registerWasmGradKernels is idempotent and replaces the stock kernels', async () => {
  await useBackend('wasm');
  assert.ok(wasmGradKernelsRegistered());
  const before = REGISTERED_WASM_KERNELS.map((n) => tf.getKernel(n, 'wasm')!.kernelFunc);
  registerWasmGradKernels();
  registerWasmGradKernels();
  const after = REGISTERED_WASM_KERNELS.map((n) => tf.getKernel(n, 'wasm')!.kernelFunc);
  assert.deepEqual(after, before);
  assert.ok(wasmGradKernelsRegistered());
});

// A small CNN using the ops our nets train with; weights from fixed seeds.
function makeNet(seed: number) {
  const shapes: Record<string, number[]> = {
    w1: [3, 3, 3, 4], b1: [4], w2: [3, 3, 4, 8], b2: [8], emb: [5, 2], dw: [8 + 2, 3], db: [3],
  };
  const init: Record<string, Float32Array> = {};
  let s = seed;
  for (const [k, shape] of Object.entries(shapes)) init[k] = randArray(size(shape), s++).map((v) => v * 0.5);
  return { shapes, init };
}

function netLoss(t: Tf, v: Record<string, import('@tensorflow/tfjs').Variable>, x: Tensor4D, ids: Tensor, labels: Tensor) {
  let h = t.maxPool(t.relu(t.add(t.conv2d(x, v['w1'] as unknown as Tensor4D, 1, 'same'), v['b1']!)) as Tensor4D, 2, 2, 'same');
  h = t.maxPool(t.relu(t.add(t.conv2d(h, v['w2'] as unknown as Tensor4D, 2, 'valid'), v['b2']!)) as Tensor4D, 2, 2, 'valid');
  const n = x.shape[0];
  const feats = t.concat([t.reshape(h, [n, -1]), t.sigmoid(t.gather(v['emb']!, ids))], 1);
  const logits = t.add(t.matMul(feats, v['dw'] as unknown as import('@tensorflow/tfjs').Tensor2D), v['db']!);
  const p = t.clipByValue(t.softmax(logits), 1e-7, 1);
  return t.neg(t.mean(t.sum(t.mul(labels, t.log(p)), 1))) as import('@tensorflow/tfjs').Scalar;
}

test('one Adam training step on wasm matches the same step on cpu', async () => {
  const { shapes, init } = makeNet(600);
  const xv = randArray(4 * 11 * 11 * 3, 700);
  const step = () => {
    const vars = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tf.tidy(() => tf.variable(tf.tensor(init[k]!, s), true, `${k}_${tf.getBackend()}`))]));
    const x = tf.tensor4d(xv, [4, 11, 11, 3]);
    const ids = tf.tensor1d([0, 3, 3, 4], 'int32');
    const labels = tf.tidy(() => tf.cast(tf.oneHot(tf.tensor1d([0, 2, 1, 2], 'int32'), 3), 'float32'));
    const opt = tf.train.adam(0.01);
    const loss = opt.minimize(() => netLoss(tf, vars, x, ids, labels), true, Object.values(vars))!;
    const out = { loss: loss.dataSync()[0]!, weights: Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, v.dataSync() as Float32Array])) };
    opt.dispose();
    tf.dispose([loss, x, ids, labels, ...Object.values(vars)]);
    return out;
  };
  const ours = await onBackend('wasm', step);
  const ref = await onBackend('cpu', step);
  assert.ok(Number.isFinite(ours.loss));
  assert.ok(Math.abs(ours.loss - ref.loss) <= TOL * Math.max(1, Math.abs(ref.loss)), `loss ${ours.loss} vs ${ref.loss}`);
  for (const k of Object.keys(shapes)) {
    const e = err(ours.weights[k]!, ref.weights[k]!);
    assert.ok(e <= TOL, `updated ${k}: err ${e}`);
    // The step really changed the weights.
    assert.ok(err(ours.weights[k]!, init[k]!) > 1e-3, `${k} did not move`);
  }
});

test('50 Adam steps on wasm reduce the loss on a toy problem', async (t) => {
  await useBackend('wasm');
  // Toy task: which third of a 12x12 image holds a bright 3x3 blob (3 classes).
  const n = 24;
  const r = mulberry32(800);
  const xv = new Float32Array(n * 12 * 12 * 3);
  const lab: number[] = [];
  for (let i = 0; i < n; i++) {
    const cls = i % 3;
    lab.push(cls);
    const cy = 1 + Math.floor(r() * 9), cx = cls * 4 + Math.floor(r() * 2);
    for (let y = 0; y < 12; y++) for (let x = 0; x < 12; x++) for (let ch = 0; ch < 3; ch++) {
      const inBlob = y >= cy && y < cy + 3 && x >= cx && x < cx + 3;
      xv[((i * 12 + y) * 12 + x) * 3 + ch] = (inBlob ? 1 : 0) + 0.1 * (r() - 0.5);
    }
  }
  const before = tf.memory().numTensors;
  const { shapes, init } = makeNet(900);
  const vars = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tf.tidy(() => tf.variable(tf.tensor(init[k]!, s), true, `toy_${k}`))]));
  const x = tf.tensor4d(xv, [n, 12, 12, 3]);
  const ids = tf.tensor1d(lab.map(() => 0), 'int32');
  const labels = tf.tidy(() => tf.cast(tf.oneHot(tf.tensor1d(lab, 'int32'), 3), 'float32'));
  const opt = tf.train.adam(0.02);
  const losses: number[] = [];
  for (let i = 0; i < 50; i++) {
    const l = opt.minimize(() => netLoss(tf, vars, x, ids, labels), true, Object.values(vars))!;
    losses.push(l.dataSync()[0]!);
    l.dispose();
  }
  opt.dispose();
  tf.dispose([x, ids, labels, ...Object.values(vars)]);
  assert.equal(tf.memory().numTensors, before, 'training leaked tensors');
  const first = losses[0]!, last = losses[losses.length - 1]!;
  t.diagnostic(`loss ${first.toFixed(4)} -> ${last.toFixed(4)} after 50 steps`);
  assert.ok(losses.every(Number.isFinite), 'loss became non-finite');
  assert.ok(last < 0.5 * first, `loss did not drop enough: ${first} -> ${last}`);
});
