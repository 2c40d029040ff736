// Gradient kernels for the tfjs 'wasm' backend, built from its fast (XNNPACK)
// forward ops, so that training runs on wasm instead of the ~2000x slower
// stock 'cpu' backend.
//
// What a training step of our nets needs and wasm 4.22.0 lacks or does badly
// (checked by running conv2d+relu+maxPool+matMul+sigmoid+softmax+exp+
// clipByValue+log+mean/sum+concat/slice/reshape/transpose+gather with
// tf.train.adam through optimizer.minimize on wasm):
//   - Conv2DBackpropFilter  missing on wasm ("Kernel ... not registered").
//   - UnsortedSegmentSum    missing on wasm; needed by the gradient of gather.
//   - Conv2DBackpropInput   exists, but is a plain loop: ours (one XNNPACK
//                           conv2d) measured 4-10x faster, so we replace it.
//   - MaxPoolGrad           exists, but gives wrong results (e.g. [1,8,8,16]
//                           2x2/2: 19 of 1024 values differ from cpu) and is
//                           slow (~30 ns/value); replaced.
//   - OneHot                exists, but ignores dtype 'float32' (writes int32
//                           bits into a float tensor: 1 reads as 1.4e-45);
//                           wrapped so float one-hot labels are right.
// Everything else in that list already has a wasm kernel (gradients of the
// other ops are written in terms of forward ops); a tf.layers model with
// conv2d/batchNormalization/maxPooling2d/dropout/globalAveragePooling2d/
// averagePooling2d/upSampling2d/dense also trains with model.fit. Still missing
// on wasm (not used by our nets): DepthwiseConv2dNativeBackpropFilter/Input
// (so separable/depthwise conv layers cannot train on wasm), Einsum, FFT,
// complex numbers.
//
// Kernels run tf ops on the active backend (wasm). The engine does not record
// ops run inside a kernel on the gradient tape, so this is safe under
// tf.grads/minimize.

import * as tf from '@tensorflow/tfjs';
// Side effect: registers the stock wasm kernels before we replace some of them
// (registering ours first would let the package overwrite them on import).
import '@tensorflow/tfjs-backend-wasm';

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
// That is a conv2d of x^T ([ci,H,W,b], batch and channels swapped) with the
// filter dy^T ([oh,ow,b,co]) dilated by the stride, evaluated at kh x kw output
// positions; the result [ci,kh,kw,co] is transposed back to [kh,kw,ci,co].
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
  return runOps(backend, [x, dy], (xt, dyt) => {
    const xT = tf.transpose(xt as tf.Tensor4D, [3, 1, 2, 0]) as tf.Tensor4D; // [ci,H,W,b]
    const dyT = tf.transpose(dyt as tf.Tensor4D, [1, 2, 0, 3]) as tf.Tensor4D; // [oh,ow,b,co]
    const xP = padOrCrop(xT, pt, needH - H - pt, pl, needW - W - pl);
    const z = tf.conv2d(xP, dyT, 1, 'valid', 'NHWC', [sh, sw]); // [ci,kh,kw,co]
    return tf.transpose(z, [1, 2, 0, 3]);
  });
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
    const dP = padOrCrop(d, top, H + kh - 1 - L - top, left, W + kw - 1 - M - left);
    const wRot = rotateFilter(ft as tf.Tensor4D); // [kh,kw,co,ci]
    return tf.conv2d(dP, wRot, 1, 'valid');
  });
}

// Max-pool gradient: dy goes to the first maximum of each window in row-major
// order (the stock cpu kernel's tie rule; ties are common after relu).
// Note: the stock wasm MaxPoolGrad of tfjs 4.22.0 gives wrong results (e.g.
// [1,8,8,16], 2x2 stride 2: 19 of 1024 values differ from cpu), and is slow.
function maxPoolGrad(args: { inputs: tf.NamedTensorInfoMap; backend: KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend } = args;
  const attrs = args.attrs as unknown as tf.MaxPoolGradAttrs;
  const dy = inputs['dy'], input = inputs['input'], output = inputs['output'];
  if (dy == null || input == null || output == null) {
    throw new Error('MaxPoolGrad (wasm-grad-kernels): inputs dy, input and output are required');
  }
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number], attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  if (dy.shape[1] !== info.outHeight || dy.shape[2] !== info.outWidth || output.shape[1] !== info.outHeight || output.shape[2] !== info.outWidth) {
    throw new Error(`MaxPoolGrad (wasm-grad-kernels): dy [${dy.shape}] / output [${output.shape}] do not match the pooled shape [${info.outShape}]`);
  }
  const tiled = info.filterHeight === info.strideHeight && info.filterWidth === info.strideWidth;
  return runOps(backend, [dy, input, output], (g, x, y) =>
    (tiled ? maxPoolGradTiled : maxPoolGradGeneral)(g as tf.Tensor4D, x as tf.Tensor4D, y as tf.Tensor4D, info));
}

// Windows tile the (padded) input exactly (filter == stride, e.g. 2x2/2):
// view x as [n, oh, kh, ow, kw, c] and use only fast (XNNPACK) elementwise ops
// with broadcasting plus one max-pool:
//   s     = step(y - x)                  0 at window maxima, 1 elsewhere
//   score = P - (K+1) s                  P = K..1 in row-major window order
//   m     = maxPool(score)               score of the first maximum
//   dx    = relu(score - (m - 1)) * dy   1 only at that first maximum
// (comparisons like tf.equal/where are 10-100x slower on wasm with broadcasting.)
// Limitation: a window whose maximum is +Infinity (inf - inf = NaN) gets NaN
// gradients here, where the cpu kernel routes dy; finite inputs are exact.
function maxPoolGradTiled(g: tf.Tensor4D, x: tf.Tensor4D, y: tf.Tensor4D, info: tf.backend_util.Conv2DInfo): tf.Tensor4D {
  const { filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, inHeight: H, inWidth: W } = info;
  const { top: pt, left: pl } = info.padInfo;
  const [n, , , c] = x.shape;
  const HP = oh * kh, WP = ow * kw, K = kh * kw;
  // Padding never wins: y - (-inf) = +inf, step = 1.
  const xP = padOrCrop(x, pt, HP - H - pt, pl, WP - W - pl, -Infinity);
  const x6 = tf.reshape(xP, [n, oh, kh, ow, kw, c]);
  const y6 = tf.reshape(y, [n, oh, 1, ow, 1, c]);
  const rank = Array.from({ length: K }, (_, i) => K - i);
  const P = tf.tensor(rank, [1, 1, kh, 1, kw, 1], 'float32');
  const s = tf.step(tf.sub(y6, x6));
  const score = tf.sub(P, tf.mul(s, K + 1));
  const m = tf.maxPool(tf.reshape(score, [n, HP, WP, c]) as tf.Tensor4D, [kh, kw], [kh, kw], 'valid');
  const mShift = tf.reshape(tf.sub(m, 1), [n, oh, 1, ow, 1, c]);
  const win = tf.relu(tf.sub(score, mShift));
  const dx6 = tf.mul(win, tf.reshape(g, [n, oh, 1, ow, 1, c]));
  return padOrCrop(tf.reshape(dx6, [n, HP, WP, c]) as tf.Tensor4D, -pt, H + pt - HP, -pl, W + pl - WP);
}

// Any other window/stride (overlapping windows or gaps): for each window offset
// (p,q) take the strided view x[:, p + i*sh, q + j*sw], keep dy where it is the
// first maximum so far, and scatter it back by zero-interleave + shift + add.
// Slower (strided slices are slow on wasm), but exact; our nets use 2x2/2.
function maxPoolGradGeneral(g: tf.Tensor4D, x: tf.Tensor4D, y: tf.Tensor4D, info: tf.backend_util.Conv2DInfo): tf.Tensor4D {
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, inHeight: H, inWidth: W } = info;
  const { top: pt, left: pl } = info.padInfo;
  const [n, , , c] = x.shape;
  const HP = Math.max((oh - 1) * sh + kh, oh * sh), WP = Math.max((ow - 1) * sw + kw, ow * sw);
  const xP = padOrCrop(x, pt, HP - H - pt, pl, WP - W - pl, -Infinity);
  const zeros = tf.zerosLike(g);
  let taken: tf.Tensor | null = null;
  let acc: tf.Tensor4D | null = null;
  for (let p = 0; p < kh; p++) {
    for (let q = 0; q < kw; q++) {
      const xs = tf.stridedSlice(xP, [0, p, q, 0], [n, p + (oh - 1) * sh + 1, q + (ow - 1) * sw + 1, c], [1, sh, sw, 1]);
      const eq = tf.equal(xs, y);
      const first: tf.Tensor = taken == null ? eq : tf.logicalAnd(eq, tf.logicalNot(taken));
      taken = taken == null ? eq : tf.logicalOr(taken, eq);
      const z = zeroInterleave(tf.where(first, g, zeros) as tf.Tensor4D, sh, sw); // [n, oh*sh, ow*sw, c]
      const placed = padOrCrop(z, p, HP - p - oh * sh, q, WP - q - ow * sw);
      acc = acc == null ? placed : (tf.add(acc, placed) as tf.Tensor4D);
    }
  }
  return padOrCrop(acc!, -pt, H + pt - HP, -pl, W + pl - WP);
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

const OUR_KERNELS: Record<(typeof REGISTERED_WASM_KERNELS)[number], tf.KernelFunc> = {
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  MaxPoolGrad: maxPoolGrad as unknown as tf.KernelFunc,
  UnsortedSegmentSum: unsortedSegmentSum as unknown as tf.KernelFunc,
  OneHot: oneHot as unknown as tf.KernelFunc,
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
    if (name === 'OneHot') {
      if (existing == null) throw new Error('registerWasmGradKernels: the stock wasm OneHot kernel is missing');
      stockOneHot = existing.kernelFunc;
    }
    // Unregister first: registerKernel warns when overwriting.
    if (existing != null) tf.unregisterKernel(name, BACKEND);
    // Keep the stock setup (cwrap of its wasm function): our OneHot calls the
    // stock kernel, and setup only runs for kernels registered when the
    // backend initialises.
    const setupFunc = existing?.setupFunc;
    tf.registerKernel(setupFunc ? { kernelName: name, backendName: BACKEND, kernelFunc, setupFunc } : { kernelName: name, backendName: BACKEND, kernelFunc });
  }
}

/** True when every kernel of REGISTERED_WASM_KERNELS is ours on 'wasm'. */
export function wasmGradKernelsRegistered(): boolean {
  return REGISTERED_WASM_KERNELS.every((name) => tf.getKernel(name, BACKEND)?.kernelFunc === OUR_KERNELS[name]);
}
