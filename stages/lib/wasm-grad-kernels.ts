// Gradient kernels for the tfjs 'wasm' backend, so that training runs on wasm
// instead of the ~2000x slower stock 'cpu' backend, and kernels that make a
// training step fast there.
//
// What a training step of our nets needs and wasm 4.22.0 lacks or does badly
// (checked by running conv2d+relu+maxPool+matMul+sigmoid+softmax+exp+
// clipByValue+log+mean/sum+concat/slice/reshape/transpose+gather with
// tf.train.adam through optimizer.minimize on wasm):
//   - Conv2DBackpropFilter  missing on wasm ("Kernel ... not registered").
//                           With >= 4 output channels: generated SIMD code
//                           (wasm-simd.ts), image by image, no transposes;
//                           otherwise one XNNPACK conv2d of the transposed
//                           input and dy.
//   - UnsortedSegmentSum    missing on wasm; needed by the gradient of gather.
//   - Conv2DBackpropInput   exists, but is a plain loop: ours (one XNNPACK
//                           conv2d) measured 4-10x faster, so we replace it.
//   - MaxPoolGrad           exists, but gives wrong results (e.g. [1,8,8,16]
//                           2x2/2: 19 of 1024 values differ from cpu) and is
//                           slow (~30 ns/value); replaced by one pass over
//                           wasm memory (SIMD for full 2x2 windows).
//   - OneHot                exists, but ignores dtype 'float32' (writes int32
//                           bits into a float tensor: 1 reads as 1.4e-45);
//                           wrapped so float one-hot labels are right.
// And for speed (measured with `npm run bench:train -- --profile`):
//   - Identity, Cast        the stock kernels copy the buffer even when
//                           nothing changes; the engine clones every tensor it
//                           saves for the backward pass (activations of 80 MB
//                           at 250x250, batch 32) and the relu gradient casts
//                           float32 to float32. Ours share the buffer
//                           (reference counted, as the cpu backend does).
//   - Sum                   over leading axes (the bias gradient: [b,h,w,c] ->
//                           [c]) the stock kernel transposes the whole input
//                           first; ours is one SIMD pass. Other sums: stock.
//   - Add                   of a per-channel vector (the conv bias): SIMD, 3-4x
//                           faster than the stock broadcasting add. Other
//                           adds: stock.
// At 250x250, batch 32 these took a grid-model step from 1.66 s to ~0.7 s.
// Everything else in that list already has a wasm kernel (gradients of the
// other ops are written in terms of forward ops); a tf.layers model with
// conv2d/batchNormalization/maxPooling2d/dropout/globalAveragePooling2d/
// averagePooling2d/upSampling2d/dense also trains with model.fit. Still missing
// on wasm (not used by our nets): DepthwiseConv2dNativeBackpropFilter/Input
// (so separable/depthwise conv layers cannot train on wasm), Einsum, FFT,
// complex numbers.
//
// Kernels run tf ops on the active backend (wasm), or work directly on the
// tensors in wasm memory. The engine does not record ops run inside a kernel
// on the gradient tape, so this is safe under tf.grads/minimize. Where wasm
// SIMD is unavailable (or env PIPE_WASM_SIMD=0), JavaScript loops and tf ops
// do the same work.

import * as tf from '@tensorflow/tfjs';
// Side effect: registers the stock wasm kernels before we replace some of them
// (registering ours first would let the package overwrite them on import).
import '@tensorflow/tfjs-backend-wasm';
import { filterGradFor, simdKernelsFor, type SimdKernels } from './wasm-simd.js';

type TensorInfo = tf.TensorInfo;
type KernelBackend = tf.KernelBackend;
type Pad = 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
type Rounding = 'floor' | 'round' | 'ceil' | undefined;

const BACKEND = 'wasm';

/** Kernel names this module registers for 'wasm' (in registration order). */
export const REGISTERED_WASM_KERNELS = [
  'Conv2DBackpropFilter',
  'Conv2DBackpropInput',
  'MaxPoolGrad',
  'UnsortedSegmentSum',
  'OneHot',
  'Identity',
  'Sum',
  'Add',
  'Cast',
] as const;

/**
 * Runs `f` on tensors wrapping the kernel inputs and returns its result as a
 * TensorInfo owned by the caller (the engine), leaving no tensor behind.
 */
function runOps(
  backend: KernelBackend,
  inputs: TensorInfo[],
  f: (...ts: tf.Tensor[]) => tf.Tensor,
): TensorInfo {
  const engine = tf.engine();
  const out = tf.tidy(() => {
    const ts = inputs.map((info) => {
      // The wrapper is disposed by tidy; the extra reference keeps the
      // caller's buffer alive.
      backend.incRef(info.dataId);
      return engine.makeTensorFromTensorInfo(info, backend);
    });
    return f(...ts);
  });
  // Hand the buffer over: the engine wraps the returned info in a new tensor
  // without adding a reference, so add one before dropping ours.
  backend.incRef(out.dataId);
  const info: TensorInfo = { dataId: out.dataId, shape: out.shape.slice(), dtype: out.dtype };
  out.dispose();
  return info;
}

/** The parts of tfjs-backend-wasm's BackendWasm that the direct kernels use. */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array | Int32Array | Uint8Array;
  getMemoryOffset(dataId: tf.DataId): number;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  wasm?: { asm?: { memory?: WebAssembly.Memory }; wasmMemory?: WebAssembly.Memory };
}

function wasmBackend(backend: KernelBackend, kernel: string): WasmBackendLike {
  const b = backend as unknown as Partial<WasmBackendLike>;
  if (typeof b.makeOutput !== 'function' || typeof b.typedArrayFromHeap !== 'function' || typeof b.getMemoryOffset !== 'function') {
    throw new Error(`${kernel} (wasm-grad-kernels): the backend is not tfjs-backend-wasm (no makeOutput/typedArrayFromHeap/getMemoryOffset)`);
  }
  return b as WasmBackendLike;
}

/** Our SIMD routines bound to the backend's memory, or null (then JavaScript loops run). */
function simdOf(backend: WasmBackendLike): SimdKernels | null {
  return simdKernelsFor(backend.wasm?.asm?.memory ?? backend.wasm?.wasmMemory);
}

const addr = (backend: WasmBackendLike, t: TensorInfo) => backend.getMemoryOffset(t.dataId);

/** A float32 scratch buffer of n values in wasm memory; free it with backend.disposeData. */
function scratch(backend: WasmBackendLike, n: number): TensorInfo {
  return backend.makeOutput([n], 'float32');
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** Pads (positive amounts) or crops (negative amounts) the two spatial dims of an NHWC tensor. */
function padOrCrop(x: tf.Tensor4D, top: number, bottom: number, left: number, right: number, value = 0): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const ct = Math.max(0, -top), cb = Math.max(0, -bottom);
  const cl = Math.max(0, -left), cr = Math.max(0, -right);
  let y = x;
  if (ct + cb + cl + cr > 0) {
    if (h - ct - cb <= 0 || w - cl - cr <= 0) {
      throw new Error(`wasm-grad-kernels: cannot crop [${h},${w}] by top ${ct} bottom ${cb} left ${cl} right ${cr}`);
    }
    y = tf.slice(y, [0, ct, cl, 0], [n, h - ct - cb, w - cl - cr, c]);
  }
  const pt = Math.max(0, top), pb = Math.max(0, bottom);
  const pl = Math.max(0, left), pr = Math.max(0, right);
  if (pt + pb + pl + pr > 0) {
    y = tf.pad(y, [[0, 0], [pt, pb], [pl, pr], [0, 0]], value);
  }
  return y;
}

/**
 * A 'valid' stride-1 conv2d of x padded (positive amounts) or cropped (negative) on its spatial
 * sides. Padding goes to the convolution itself (XNNPACK reads zeros without a padded copy of x).
 */
function convPadded(x: tf.Tensor4D, f: tf.Tensor4D, top: number, bottom: number, left: number, right: number, dilations: [number, number]): tf.Tensor4D {
  const xc = padOrCrop(x, Math.min(0, top), Math.min(0, bottom), Math.min(0, left), Math.min(0, right));
  const pad: tf.backend_util.ExplicitPadding = [[0, 0], [Math.max(0, top), Math.max(0, bottom)], [Math.max(0, left), Math.max(0, right)], [0, 0]];
  return tf.conv2d(xc, f, 1, pad, 'NHWC', dilations);
}

/** Inserts (s-1) zeros after every row/column: [n,h,w,c] -> [n,h*sh,w*sw,c]. */
function zeroInterleave(x: tf.Tensor4D, sh: number, sw: number): tf.Tensor4D {
  if (sh === 1 && sw === 1) return x;
  const [n, h, w, c] = x.shape;
  const x6 = tf.reshape(x, [n, h, 1, w, 1, c]);
  const p = tf.pad(x6, [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]]);
  return tf.reshape(p, [n, h * sh, w * sw, c]);
}

function convInfo(
  name: string,
  xShape: number[],
  filterShape: number[],
  strides: [number, number] | number,
  pad: Pad,
  dimRoundingMode: Rounding,
  dataFormat: 'NHWC' | 'NCHW' | undefined,
): tf.backend_util.Conv2DInfo {
  if (dataFormat === 'NCHW') {
    throw new Error(`${name} (wasm-grad-kernels): dataFormat NCHW is not supported; use NHWC (wasm Conv2D itself only runs NHWC)`);
  }
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides, 1, pad, dimRoundingMode, false, 'channelsLast');
}

// dW[i,j,ci,co] = sum_{b,y,x} x[b, y*sh + i - pt, x*sw + j - pl, ci] * dy[b,y,x,co].
// With >= 4 output channels and SIMD: filterGradDirect. Otherwise it is a
// conv2d of x^T ([ci,H,W,b], batch and channels swapped) with the filter dy^T
// ([oh,ow,b,co]) dilated by the stride, evaluated at kh x kw output positions;
// the result [ci,kh,kw,co] is transposed back to [kh,kw,ci,co].
function conv2DBackpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend } = args;
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  const x = inputs['x'], dy = inputs['dy'];
  if (x == null || dy == null) throw new Error('Conv2DBackpropFilter (wasm-grad-kernels): inputs x and dy are required');
  const info = convInfo('Conv2DBackpropFilter', x.shape, attrs.filterShape, attrs.strides, attrs.pad, attrs.dimRoundingMode, attrs.dataFormat);
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, inHeight: H, inWidth: W } = info;
  const { top: pt, left: pl } = info.padInfo;
  if (dy.shape[1] !== oh || dy.shape[2] !== ow || dy.shape[3] !== info.outChannels) {
    throw new Error(`Conv2DBackpropFilter (wasm-grad-kernels): dy shape [${dy.shape}] does not match the expected output [${info.outShape}]`);
  }
  // Rows/cols of the (padded) input the filter actually reaches.
  const needH = kh + (oh - 1) * sh, needW = kw + (ow - 1) * sw;
  const wb = wasmBackend(backend, 'Conv2DBackpropFilter');
  if (info.outChannels >= 4 && x.dtype === 'float32' && dy.dtype === 'float32' && simdOf(wb)) {
    return filterGradDirect(wb, x, dy, info, needH, needW);
  }
  return runOps(backend, [x, dy], (xt, dyt) => {
    const xT = batchLast(wb, xt as tf.Tensor4D); // [ci,H,W,b]
    const dyT = batchBeforeChannels(wb, dyt as tf.Tensor4D); // [oh,ow,b,co]
    const z = convPadded(xT, dyT, pt, needH - H - pt, pl, needW - W - pl, [sh, sw]); // [ci,kh,kw,co]
    return tf.transpose(z, [1, 2, 0, 3]);
  });
}

// The filter gradient computed directly, image by image, with generated SIMD
// code (wasm-simd filter_grad): no transposes, and no XNNPACK weight packing of
// dy (the conv formulation packs all of dy as a filter on every call, ~40% of
// its time), ~2-3x faster on our layers. Float32 sums per image, float64
// across images.
function filterGradDirect(backend: WasmBackendLike, x: TensorInfo, dy: TensorInfo, info: tf.backend_util.Conv2DInfo, needH: number, needW: number): TensorInfo {
  const { batchSize: n, inHeight: H, inWidth: W, inChannels: ci, outChannels: co, outHeight: oh, outWidth: ow } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const { top: pt, left: pl } = info.padInfo;
  const memory = backend.wasm?.asm?.memory ?? backend.wasm?.wasmMemory;
  const V = Math.ceil(co / 4);
  const offs = Array.from({ length: V }, (_, v) => Math.min(4 * v, co - 4));
  // Two input channels per pass measured best (2*V accumulators + V dy vectors in registers).
  const G = 2;
  const groups: [number, number][] = [];
  for (let c0 = 0; c0 < ci; c0 += G) groups.push([c0, Math.min(G, ci - c0)]);
  const fns = groups.map(([, g]) => filterGradFor(memory, g, offs));
  if (fns.some((f) => f == null)) throw new Error('Conv2DBackpropFilter (wasm-grad-kernels): SIMD routines unavailable');
  // The input padded (or cropped) to exactly the rows/cols the taps reach.
  const engine = tf.engine();
  const kb = backend as unknown as KernelBackend;
  kb.incRef(x.dataId);
  const xt = engine.makeTensorFromTensorInfo(x, kb) as tf.Tensor4D;
  const xp = padWithZeros(backend, xt, pt, needH - H - pt, pl, needW - W - pl);
  const slot = kh * kw * G * V * 4; // floats of one group's accumulators
  const acc = scratch(backend, groups.length * slot);
  try {
    const out = backend.makeOutput([kh, kw, ci, co], 'float32');
    const av = backend.typedArrayFromHeap(acc) as Float32Array;
    const sum = new Float64Array(kh * kw * ci * co);
    const xa = backend.getMemoryOffset(xp.dataId), da = addr(backend, dy), aa = addr(backend, acc);
    const rowBytes = needW * ci * 4;
    for (let b = 0; b < n; b++) {
      av.fill(0);
      const xImg = xa + b * needH * rowBytes, dyImg = da + b * oh * ow * co * 4;
      groups.forEach(([c0], gi) => {
        fns[gi]!(xImg + c0 * 4, dyImg, aa + gi * slot * 4, oh, ow, sw * ci * 4, co * 4, sh * rowBytes, kh, kw, rowBytes, ci * 4);
      });
      groups.forEach(([c0, g], gi) => {
        for (let t = 0; t < kh * kw; t++) {
          for (let k = 0; k < g; k++) {
            const base = gi * slot + (t * g + k) * V * 4;
            const o = (t * ci + c0 + k) * co;
            for (let c = 0; c < co; c++) {
              const v = Math.min(c >> 2, V - 1);
              sum[o + c] += av[base + v * 4 + c - offs[v]!]!;
            }
          }
        }
      });
    }
    (backend.typedArrayFromHeap(out) as Float32Array).set(sum);
    return out;
  } finally {
    backend.disposeData(acc.dataId);
    if (xp !== xt) xp.dispose();
    xt.dispose();
  }
}

/**
 * x padded with zeros (amounts >= 0) on its spatial sides: a zeroed buffer and one SIMD row
 * copy per input row (the stock wasm PadV2 is a generic loop). Crops and narrow rows go
 * through tf ops. Returns x itself when there is nothing to pad.
 */
function padWithZeros(backend: WasmBackendLike, x: tf.Tensor4D, top: number, bottom: number, left: number, right: number): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (top === 0 && bottom === 0 && left === 0 && right === 0) return x;
  const simd = simdOf(backend);
  if (!simd || top < 0 || bottom < 0 || left < 0 || right < 0 || w * c < 4 || x.dtype !== 'float32') {
    return tf.tidy(() => padOrCrop(x, top, bottom, left, right));
  }
  const H = h + top + bottom, W = w + left + right;
  return permuted(backend, x, [n, H, W, c], (k, src, dst) => {
    (new Float32Array((backend.typedArrayFromHeap(x) as Float32Array).buffer, dst, n * H * W * c)).fill(0);
    k.copy_rows(src, dst + (top * W + left) * c * 4, n, h, w * c * 4, h * w * c * 4, w * c * 4, H * W * c * 4, W * c * 4);
  });
}

/** A new float32 tensor of `shape` filled by `fill(simd, src, dst)` from t (byte addresses). */
function permuted(backend: WasmBackendLike, t: tf.Tensor, shape: number[], fill: (simd: SimdKernels, src: number, dst: number) => void): tf.Tensor4D {
  const out = backend.makeOutput(shape, 'float32');
  fill(simdOf(backend)!, backend.getMemoryOffset(t.dataId), backend.getMemoryOffset(out.dataId));
  return tf.engine().makeTensorFromTensorInfo(out, backend as unknown as KernelBackend) as tf.Tensor4D;
}

// The two transposes of the filter gradient, as plain strided copies in SIMD
// (the stock wasm Transpose is a generic loop, ~2 ns per value).
/** [b,H,W,c] -> [c,H,W,b] */
function batchLast(backend: WasmBackendLike, x: tf.Tensor4D): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  if (!simdOf(backend) || x.dtype !== 'float32') return tf.transpose(x, [3, 1, 2, 0]);
  const p = h * w;
  // In blocks of pixels, so that the 32 (or so) images read at once stay in cache.
  const block = 256;
  return permuted(backend, x, [c, h, w, b], (k, src, dst) => {
    for (let p0 = 0; p0 < p; p0 += block) {
      k.gather3(src + p0 * c * 4, dst + p0 * b * 4, c, Math.min(block, p - p0), b, 4, c * 4, p * c * 4, p * b * 4);
    }
  });
}

/** [b,H,W,c] -> [H,W,b,c] (only reached with c < 4: wider dy goes to filterGradDirect) */
function batchBeforeChannels(backend: WasmBackendLike, x: tf.Tensor4D): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  if (!simdOf(backend) || x.dtype !== 'float32') return tf.transpose(x, [1, 2, 0, 3]);
  const p = h * w;
  return permuted(backend, x, [h, w, b, c], (k, src, dst) => k.gather3(src, dst, p, b, c, c * 4, p * c * 4, 4, b * c * 4));
}

// W[kh-1-i, kw-1-j, co, ci]. Reversing the kh*kw taps is a product with the
// anti-identity: exact, and ~30x faster than the wasm Reverse kernel.
function rotateFilter(f: tf.Tensor4D): tf.Tensor4D {
  const [kh, kw, ci, co] = f.shape;
  const k = kh * kw;
  const flip = tf.tensor2d(Array.from({ length: k * k }, (_, i) => (Math.floor(i / k) + (i % k) === k - 1 ? 1 : 0)), [k, k]);
  const rev = tf.matMul(flip, tf.reshape(f, [k, ci * co]));
  return tf.reshape(tf.transpose(tf.reshape(rev, [k, ci, co]), [0, 2, 1]), [kh, kw, co, ci]);
}

// dx[b,h,w,ci] = sum dy[b,y,x,co] * W[h + pt - y*sh, w + pl - x*sw, ci, co].
// With zeros inserted into dy (stride 1 equivalent), this is a stride-1 conv2d
// of dy with the filter rotated 180 degrees and in/out channels swapped.
function conv2DBackpropInput(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend } = args;
  const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
  const dy = inputs['dy'], filter = inputs['filter'];
  if (dy == null || filter == null) throw new Error('Conv2DBackpropInput (wasm-grad-kernels): inputs dy and filter are required');
  const info = convInfo('Conv2DBackpropInput', attrs.inputShape, filter.shape, attrs.strides, attrs.pad, attrs.dimRoundingMode, attrs.dataFormat);
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, inHeight: H, inWidth: W } = info;
  const { top: pt, left: pl } = info.padInfo;
  if (dy.shape[1] !== oh || dy.shape[2] !== ow || dy.shape[3] !== info.outChannels) {
    throw new Error(`Conv2DBackpropInput (wasm-grad-kernels): dy shape [${dy.shape}] does not match the expected output [${info.outShape}]`);
  }
  return runOps(backend, [dy, filter], (dyt, ft) => {
    const d = zeroInterleave(dyt as tf.Tensor4D, sh, sw); // [b, oh*sh, ow*sw, co]
    const L = oh * sh, M = ow * sw;
    // Output row h reads rows h + (kh-1-pt) - i' of the padded dy, i' < kh.
    const top = kh - 1 - pt, left = kw - 1 - pl;
    const wRot = rotateFilter(ft as tf.Tensor4D); // [kh,kw,co,ci]
    return convPadded(d, wRot, top, H + kh - 1 - L - top, left, W + kw - 1 - M - left, [1, 1]);
  });
}

// Max-pool gradient: dy goes to the first maximum of each window in row-major
// order (the stock cpu kernel's rule: strictly greater than the running max,
// starting from -Infinity, so ties go to the first and a window of only NaN or
// -Infinity gets nothing). Note: the stock wasm MaxPoolGrad of tfjs 4.22.0
// gives wrong results (e.g. [1,8,8,16], 2x2 stride 2: 19 of 1024 values differ
// from cpu), and is slow.
// One pass in JavaScript over the tensors in wasm memory: the gradient only
// routes values, and a composition of tfjs ops needed ~10 passes over x (it was
// the largest single cost of a training step after the convolutions).
function maxPoolGrad(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs } = args;
  const attrs = args.attrs as unknown as tf.MaxPoolGradAttrs;
  const dy = inputs['dy'], input = inputs['input'], output = inputs['output'];
  if (dy == null || input == null || output == null) {
    throw new Error('MaxPoolGrad (wasm-grad-kernels): inputs dy, input and output are required');
  }
  for (const [name, t] of [['dy', dy], ['input', input]] as const) {
    if (t.dtype !== 'float32') throw new Error(`MaxPoolGrad (wasm-grad-kernels): ${name} must be float32, got ${t.dtype}`);
  }
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number], attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  if (dy.shape[1] !== info.outHeight || dy.shape[2] !== info.outWidth || output.shape[1] !== info.outHeight || output.shape[2] !== info.outWidth) {
    throw new Error(`MaxPoolGrad (wasm-grad-kernels): dy [${dy.shape}] / output [${output.shape}] do not match the pooled shape [${info.outShape}]`);
  }
  const backend = wasmBackend(args.backend, 'MaxPoolGrad');
  const out = backend.makeOutput(input.shape.slice(), 'float32');
  // Views after the allocation: growing wasm memory detaches earlier views.
  const xv = backend.typedArrayFromHeap(input) as Float32Array;
  const gv = backend.typedArrayFromHeap(dy) as Float32Array;
  const dxv = backend.typedArrayFromHeap(out) as Float32Array;
  const simd = simdOf(backend);
  const { filterHeight: kh, filterWidth: kw, strideHeight: sh, strideWidth: sw, inChannels: C } = info;
  if (simd && kh === 2 && kw === 2 && sh === 2 && sw === 2 && C >= 4) {
    // Full 2x2 windows with SIMD, the partial ones at the borders in JavaScript.
    const full = fullWindows(info);
    maxPoolGradLoop(xv, gv, dxv, info, full);
    const { batchSize: n, inHeight: H, inWidth: W, outHeight: oh, outWidth: ow } = info;
    const { top: pt, left: pl } = info.padInfo;
    const xa = addr(backend, input), ga = addr(backend, dy), da = addr(backend, out);
    const count = full.ox1 - full.ox0;
    if (count > 0) {
      for (let b = 0; b < n; b++) {
        for (let oy = full.oy0; oy < full.oy1; oy++) {
          const xo = ((b * H + 2 * oy - pt) * W + 2 * full.ox0 - pl) * C * 4;
          const go = ((b * oh + oy) * ow + full.ox0) * C * 4;
          simd.maxpool_grad_2x2(xa + xo, xa + xo + W * C * 4, ga + go, da + xo, da + xo + W * C * 4, count, C * 4);
        }
      }
    }
  } else {
    maxPoolGradLoop(xv, gv, dxv, info);
  }
  return out;
}

/** Output rows [oy0, oy1) and columns [ox0, ox1) whose 2x2 windows lie inside the input. */
function fullWindows(info: tf.backend_util.Conv2DInfo) {
  const { inHeight: H, inWidth: W, outHeight: oh, outWidth: ow } = info;
  const { top: pt, left: pl } = info.padInfo;
  const range = (pad: number, size: number, out: number) => {
    const lo = Math.min(out, Math.max(0, Math.ceil(pad / 2)));
    const hi = Math.max(lo, Math.min(out, Math.floor((size + pad - 2) / 2) + 1));
    return [lo, hi] as const;
  };
  const [oy0, oy1] = range(pt, H, oh);
  const [ox0, ox1] = range(pl, W, ow);
  return { oy0, oy1, ox0, ox1 };
}

/**
 * dx[first max of each window] += dy, 0 elsewhere; NHWC, channels innermost. With `skip`, the
 * windows in that block of rows x columns are left alone (the SIMD routine does them).
 */
function maxPoolGradLoop(x: Float32Array, g: Float32Array, dx: Float32Array, info: tf.backend_util.Conv2DInfo,
  skip?: { oy0: number; oy1: number; ox0: number; ox1: number }): void {
  const { batchSize: n, inHeight: H, inWidth: W, inChannels: C, outHeight: oh, outWidth: ow } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const { top: pt, left: pl } = info.padInfo;
  // Windows that tile the input (2x2 stride 2) write every position they cover, so only
  // positions outside all windows need zeroing first; overlapping windows accumulate.
  const tiled = kh === sh && kw === sw;
  const covered = tiled && pt >= 0 && pl >= 0 && oh * sh - pt >= H && ow * sw - pl >= W;
  if (!covered) dx.fill(0);
  const best = new Float32Array(C);
  const at = new Int32Array(C);
  for (let b = 0; b < n; b++) {
    for (let oy = 0; oy < oh; oy++) {
      const y0 = Math.max(0, oy * sh - pt), y1 = Math.min(H, oy * sh - pt + kh);
      const skipRow = skip != null && oy >= skip.oy0 && oy < skip.oy1;
      for (let ox = 0; ox < ow; ox++) {
        if (skipRow && ox === skip.ox0 && skip.ox1 > skip.ox0) {
          ox = skip.ox1 - 1;
          continue;
        }
        const x0 = Math.max(0, ox * sw - pl), x1 = Math.min(W, ox * sw - pl + kw);
        const go = ((b * oh + oy) * ow + ox) * C;
        const o00 = ((b * H + y0) * W + x0) * C;
        if (tiled && y1 - y0 === 2 && x1 - x0 === 2) {
          // The common case, unrolled: a full 2x2 window.
          const o01 = o00 + C, o10 = o00 + W * C, o11 = o10 + C;
          for (let c = 0; c < C; c++) {
            const v00 = x[o00 + c]!, v01 = x[o01 + c]!, v10 = x[o10 + c]!, v11 = x[o11 + c]!;
            let m = -Infinity, k = -1;
            if (v00 > m) { m = v00; k = 0; }
            if (v01 > m) { m = v01; k = 1; }
            if (v10 > m) { m = v10; k = 2; }
            if (v11 > m) k = 3;
            const gv = g[go + c]!;
            dx[o00 + c] = k === 0 ? gv : 0;
            dx[o01 + c] = k === 1 ? gv : 0;
            dx[o10 + c] = k === 2 ? gv : 0;
            dx[o11 + c] = k === 3 ? gv : 0;
          }
          continue;
        }
        best.fill(-Infinity);
        at.fill(-1);
        for (let y = y0; y < y1; y++) {
          for (let xx = x0; xx < x1; xx++) {
            const o = ((b * H + y) * W + xx) * C;
            for (let c = 0; c < C; c++) {
              const v = x[o + c]!;
              if (v > best[c]!) {
                best[c] = v;
                at[c] = o + c;
              }
              if (tiled) dx[o + c] = 0;
            }
          }
        }
        for (let c = 0; c < C; c++) {
          const i = at[c]!;
          if (i >= 0) dx[i] = dx[i]! + g[go + c]!;
        }
      }
    }
  }
}

// Rows of x beyond this many one-hot entries are processed in chunks, so the
// one-hot matrix stays small (gather over a large table with many indices).
const SEGMENT_CHUNK_ELEMS = 1 << 22;

// out[s, ...] = sum over i with ids[i] == s of x[i, ...]; ids outside
// [0, numSegments) are dropped, like the stock kernel. Done as
// oneHot(ids)^T @ x, chunked over rows. (oneHot is made as int32 and cast:
// the wasm OneHot kernel of 4.22.0 ignores dtype 'float32' and writes int bits.)
function unsortedSegmentSum(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend } = args;
  const { numSegments } = args.attrs as unknown as tf.UnsortedSegmentSumAttrs;
  const x = inputs['x'], ids = inputs['segmentIds'];
  if (x == null || ids == null) throw new Error('UnsortedSegmentSum (wasm-grad-kernels): inputs x and segmentIds are required');
  const idRank = ids.shape.length;
  for (let i = 0; i < idRank; i++) {
    if (ids.shape[i] !== x.shape[i]) {
      throw new Error(`UnsortedSegmentSum (wasm-grad-kernels): segmentIds shape [${ids.shape}] is not a prefix of x shape [${x.shape}]`);
    }
  }
  const rows = ids.shape.reduce((a, b) => a * b, 1);
  const inner = x.shape.slice(idRank);
  const innerSize = inner.reduce((a, b) => a * b, 1);
  const chunk = Math.max(1, Math.floor(SEGMENT_CHUNK_ELEMS / Math.max(1, numSegments)));
  return runOps(backend, [x, ids], (xt, it) => {
    const x2 = tf.reshape(xt.dtype === 'float32' ? xt : tf.cast(xt, 'float32'), [rows, innerSize]);
    const i1 = tf.reshape(it.dtype === 'int32' ? it : tf.cast(it, 'int32'), [rows]);
    let acc: tf.Tensor2D | null = null;
    for (let start = 0; start < rows; start += chunk) {
      const len = Math.min(chunk, rows - start);
      const xs = len === rows ? x2 : tf.slice(x2, [start, 0], [len, innerSize]);
      const is = len === rows ? i1 : tf.slice(i1, [start], [len]);
      const part: tf.Tensor2D = tf.matMul(tf.cast(tf.oneHot(is as tf.Tensor1D, numSegments), 'float32'), xs as tf.Tensor2D, true, false) as tf.Tensor2D;
      acc = acc == null ? part : (tf.add(acc, part) as tf.Tensor2D);
    }
    let out: tf.Tensor = acc ?? tf.zeros([numSegments, innerSize]);
    out = tf.reshape(out, [numSegments, ...inner]);
    // int32 sums go through float32: exact while |partial sums| < 2^24.
    return x.dtype === 'float32' ? out : tf.cast(tf.round(out), x.dtype);
  });
}

// The stock wasm OneHot, kept when ours replaces it: it is right for int32.
let stockOneHot: tf.KernelFunc | null = null;

// int32 goes to the stock kernel; other dtypes are built from an int32 0/1
// one-hot as on*m + off*(1-m), which gives exactly onValue/offValue.
function oneHot(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend } = args;
  const attrs = args.attrs as unknown as tf.OneHotAttrs;
  if (stockOneHot == null) throw new Error('OneHot (wasm-grad-kernels): the stock wasm OneHot kernel was not found');
  if (attrs.dtype === 'int32') return stockOneHot(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  const indices = inputs['indices'];
  if (indices == null) throw new Error('OneHot (wasm-grad-kernels): input indices is required');
  return runOps(backend, [indices], (ind) => {
    const m = tf.cast(tf.oneHot(ind, attrs.depth, 1, 0, 'int32'), 'float32');
    const out = tf.add(tf.mul(m, attrs.onValue), tf.mul(tf.sub(1, m), attrs.offValue));
    return attrs.dtype === 'float32' ? out : tf.cast(out, attrs.dtype);
  });
}

// Shares x's buffer: tensors are immutable (variables get new buffers on assign),
// and the wasm backend reference-counts buffers, so a copy buys nothing.
function identity(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend }): TensorInfo {
  const x = args.inputs['x'];
  if (x == null) throw new Error('Identity (wasm-grad-kernels): input x is required');
  if (x.dtype === 'string') {
    if (stockIdentity == null) throw new Error('Identity (wasm-grad-kernels): the stock wasm Identity kernel was not found');
    return stockIdentity(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  }
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape.slice(), dtype: x.dtype };
}

let stockIdentity: tf.KernelFunc | null = null;
let stockSum: tf.KernelFunc | null = null;

// float32 sums over a leading run of axes (0..k-1, keeping the rest) in one pass
// with float64 accumulators; everything else goes to the stock kernel.
function sum(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  if (stockSum == null) throw new Error('Sum (wasm-grad-kernels): the stock wasm Sum kernel was not found');
  const x = args.inputs['x'];
  if (x == null) throw new Error('Sum (wasm-grad-kernels): input x is required');
  const { axis, keepDims } = args.attrs as unknown as tf.SumAttrs;
  const rank = x.shape.length;
  const axes = tf.util.parseAxisParam(axis, x.shape).slice().sort((a, b) => a - b);
  const k = axes.length;
  const leading = k > 0 && k < rank && axes.every((a, i) => a === i);
  if (x.dtype !== 'float32' || !leading) return stockSum(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  const outer = tf.util.sizeFromShape(x.shape.slice(0, k));
  const inner = tf.util.sizeFromShape(x.shape.slice(k));
  const backend = wasmBackend(args.backend, 'Sum');
  const out = backend.makeOutput(keepDims ? x.shape.map((d, i) => (i < k ? 1 : d)) : x.shape.slice(k), 'float32');
  const simd = simdOf(backend);
  const L = (inner * 4) / gcd(inner, 4); // a whole number of rows and of 4-lane vectors
  if (simd && outer * inner >= 4 * L) {
    sumLeadingSimd(backend, simd, x, out, outer * inner, inner, L);
    return out;
  }
  const xs = backend.typedArrayFromHeap(x) as Float32Array;
  const o = backend.typedArrayFromHeap(out) as Float32Array;
  const acc = new Float64Array(inner);
  const acc2 = new Float64Array(inner);
  let r = 0;
  // Two rows per iteration: two independent accumulator chains run faster.
  for (; r + 1 < outer; r += 2) {
    const a = r * inner, b = a + inner;
    for (let j = 0; j < inner; j++) {
      acc[j] = acc[j]! + xs[a + j]!;
      acc2[j] = acc2[j]! + xs[b + j]!;
    }
  }
  if (r < outer) for (let j = 0, a = r * inner; j < inner; j++) acc[j] = acc[j]! + xs[a + j]!;
  for (let j = 0; j < inner; j++) o[j] = acc[j]! + acc2[j]!;
  return out;
}

// SIMD float32 partial sums over blocks of rows, folded into float64 per block.
function sumLeadingSimd(backend: WasmBackendLike, simd: SimdKernels, x: TensorInfo, out: TensorInfo, size: number, inner: number, L: number): void {
  const buf = scratch(backend, L);
  try {
    const xs = backend.typedArrayFromHeap(x) as Float32Array;
    const part = backend.typedArrayFromHeap(buf) as Float32Array;
    const acc = new Float64Array(inner);
    const n = Math.floor(size / L);
    const xa = addr(backend, x), pa = addr(backend, buf);
    const BLOCK = 256; // rows of L values summed in float32 before folding
    for (let i0 = 0; i0 < n; i0 += BLOCK) {
      part.fill(0);
      simd.sum_rows(xa + i0 * L * 4, pa, Math.min(BLOCK, n - i0), L * 4);
      for (let j = 0; j < L; j++) acc[j % inner] += part[j]!;
    }
    for (let i = n * L; i < size; i++) acc[i % inner] += xs[i]!;
    (backend.typedArrayFromHeap(out) as Float32Array).set(acc);
  } finally {
    backend.disposeData(buf.dataId);
  }
}

// a + b where one of them is a per-channel vector ([c] against [..., c], e.g. a
// conv bias): SIMD over the big one with the vector tiled to a whole number of
// 4-lane vectors. Other adds: stock kernel (XNNPACK; 3-4x slower when broadcasting).
function add(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  if (stockAdd == null) throw new Error('Add (wasm-grad-kernels): the stock wasm Add kernel was not found');
  const a = args.inputs['a'], b = args.inputs['b'];
  if (a == null || b == null) throw new Error('Add (wasm-grad-kernels): inputs a and b are required');
  const bigFirst = a.shape.length >= b.shape.length;
  const big = bigFirst ? a : b, vecT = bigFirst ? b : a;
  const c = big.shape[big.shape.length - 1] ?? 0;
  const size = tf.util.sizeFromShape(big.shape);
  const isChannelVector = vecT.shape.length >= 1 && vecT.shape[vecT.shape.length - 1] === c && tf.util.sizeFromShape(vecT.shape) === c;
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || !isChannelVector || size < 4096 || c < 1) {
    return stockAdd(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  }
  const backend = wasmBackend(args.backend, 'Add');
  const simd = simdOf(backend);
  if (simd == null) return stockAdd(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  const out = backend.makeOutput(big.shape.slice(), 'float32');
  const L = (c * 4) / gcd(c, 4);
  const pat = scratch(backend, L);
  try {
    const bias = backend.typedArrayFromHeap(vecT) as Float32Array;
    const pv = backend.typedArrayFromHeap(pat) as Float32Array;
    for (let j = 0; j < L; j++) pv[j] = bias[j % c]!;
    const n = Math.floor(size / L);
    simd.add_rows(addr(backend, big), addr(backend, pat), addr(backend, out), n, L * 4);
    const xs = backend.typedArrayFromHeap(big) as Float32Array;
    const o = backend.typedArrayFromHeap(out) as Float32Array;
    for (let i = n * L; i < size; i++) o[i] = xs[i]! + bias[i % c]!;
  } finally {
    backend.disposeData(pat.dataId);
  }
  return out;
}

// Same dtype: share the buffer (the stock kernel copies it; the relu gradient
// casts float32 to float32 on every layer).
function cast(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  if (stockCast == null) throw new Error('Cast (wasm-grad-kernels): the stock wasm Cast kernel was not found');
  const x = args.inputs['x'];
  const { dtype } = args.attrs as unknown as tf.CastAttrs;
  if (x == null || x.dtype !== dtype || dtype === 'string' || dtype === 'complex64') return stockCast(args as Parameters<tf.KernelFunc>[0]) as TensorInfo;
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape.slice(), dtype };
}

let stockAdd: tf.KernelFunc | null = null;
let stockCast: tf.KernelFunc | null = null;

const OUR_KERNELS: Record<(typeof REGISTERED_WASM_KERNELS)[number], tf.KernelFunc> = {
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  MaxPoolGrad: maxPoolGrad as unknown as tf.KernelFunc,
  UnsortedSegmentSum: unsortedSegmentSum as unknown as tf.KernelFunc,
  OneHot: oneHot as unknown as tf.KernelFunc,
  Identity: identity as unknown as tf.KernelFunc,
  Sum: sum as unknown as tf.KernelFunc,
  Add: add as unknown as tf.KernelFunc,
  Cast: cast as unknown as tf.KernelFunc,
};

// Stock kernels ours fall back to, captured when ours replace them.
const STOCK = {
  OneHot: (f: tf.KernelFunc) => { stockOneHot = f; },
  Identity: (f: tf.KernelFunc) => { stockIdentity = f; },
  Sum: (f: tf.KernelFunc) => { stockSum = f; },
  Add: (f: tf.KernelFunc) => { stockAdd = f; },
  Cast: (f: tf.KernelFunc) => { stockCast = f; },
};

/**
 * Registers our gradient kernels for the 'wasm' backend, replacing stock ones
 * where present. Idempotent: calling it again changes nothing.
 */
export function registerWasmGradKernels(): void {
  for (const name of REGISTERED_WASM_KERNELS) {
    const kernelFunc = OUR_KERNELS[name];
    const existing = tf.getKernel(name, BACKEND);
    if (existing?.kernelFunc === kernelFunc) continue;
    if (name in STOCK) {
      if (existing == null) throw new Error(`registerWasmGradKernels: the stock wasm ${name} kernel is missing`);
      STOCK[name as keyof typeof STOCK](existing.kernelFunc);
    }
    // Unregister first: registerKernel warns when overwriting.
    if (existing != null) tf.unregisterKernel(name, BACKEND);
    // Keep the stock setup (cwrap of its wasm function): our OneHot, Sum and Add call the
    // stock kernels, and setup only runs for kernels registered when the
    // backend initialises.
    const setupFunc = existing?.setupFunc;
    tf.registerKernel(setupFunc ? { kernelName: name, backendName: BACKEND, kernelFunc, setupFunc } : { kernelName: name, backendName: BACKEND, kernelFunc });
  }
}

/** True when every kernel of REGISTERED_WASM_KERNELS is ours on 'wasm'. */
export function wasmGradKernelsRegistered(): boolean {
  return REGISTERED_WASM_KERNELS.every((name) => tf.getKernel(name, BACKEND)?.kernelFunc === OUR_KERNELS[name]);
}
