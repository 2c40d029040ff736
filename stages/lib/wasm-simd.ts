// Small WebAssembly SIMD routines that work directly on the tensors of the tfjs 'wasm' backend
// (they import its memory), for the steps of training where tfjs-backend-wasm has no fast
// kernel: the conv filter gradient (filter_grad, generated per channel layout), the max-pool
// gradient, strided copies (transposes, zero padding), sums over leading axes (bias
// gradients) and adding a per-channel bias. JavaScript typed-array loops run the simple ones
// at 2-5 ns per value; 128-bit SIMD is several times faster. The modules are assembled here
// from a few lines of bytecode (no toolchain, no binary in the repository); when they cannot
// be instantiated (no wasm SIMD) or env PIPE_WASM_SIMD=0, callers use their fallbacks.
//
// All addresses are byte offsets into the backend's memory; counts are in elements.

const V128 = 0x7b;
const I32 = 0x7f;

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (i32). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const name = (s: string) => [...uleb(s.length), ...Buffer.from(s, 'utf8')];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];

/** A function body: instructions appended in order (a tiny stack-machine assembler). */
class Body {
  readonly code: number[] = [];
  private readonly locals: number[] = [];
  constructor(private readonly nParams: number) {}
  /** Declares a local of `type` and returns its index. */
  local(type: number): number {
    this.locals.push(type);
    return this.nParams + this.locals.length - 1;
  }
  op(...bytes: number[]): this {
    this.code.push(...bytes);
    return this;
  }
  get(i: number) { return this.op(0x20, ...uleb(i)); }
  set(i: number) { return this.op(0x21, ...uleb(i)); }
  tee(i: number) { return this.op(0x22, ...uleb(i)); }
  i32(v: number) { return this.op(0x41, ...sleb(v | 0)); }
  add() { return this.op(0x6a); }
  sub() { return this.op(0x6b); }
  mul() { return this.op(0x6c); }
  ltS() { return this.op(0x48); }
  geS() { return this.op(0x4e); }
  /** local[i] += v */
  inc(i: number, v: number | (() => void)) {
    this.get(i);
    if (typeof v === 'number') this.i32(v);
    else v();
    return this.add().set(i);
  }
  i32load(offset = 0) { return this.op(0x28, 2, ...uleb(offset)); }
  i32store(offset = 0) { return this.op(0x36, 2, ...uleb(offset)); }
  simd(opcode: number) { return this.op(0xfd, ...uleb(opcode)); }
  vload(offset = 0) { return this.simd(0x00).op(0, ...uleb(offset)); }
  vstore(offset = 0) { return this.simd(0x0b).op(0, ...uleb(offset)); }
  f32x4splat() { return this.simd(0x13); }
  f32x4gt() { return this.simd(0x44); }
  f32x4add() { return this.simd(0xe4); }
  f32x4mul() { return this.simd(0xe6); }
  f32load(offset = 0) { return this.op(0x2a, 2, ...uleb(offset)); }
  vand() { return this.simd(0x4e); }
  vandnot() { return this.simd(0x4f); }
  vor() { return this.simd(0x50); }
  bitselect() { return this.simd(0x52); }
  f32(v: number) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    return this.op(0x43, ...b);
  }
  /** while (local[i] < limit) { body; } - the body must advance local[i]. */
  whileLt(i: number, limit: () => void, body: () => void) {
    this.op(0x02, 0x40); // block
    this.get(i);
    limit();
    this.geS().op(0x0d, 0); // br_if exit
    this.op(0x03, 0x40); // loop
    body();
    this.get(i);
    limit();
    this.ltS().op(0x0d, 0); // br_if loop
    this.op(0x0b, 0x0b); // end loop, end block
    return this;
  }
  /** for (local[i] = 0; local[i] < local[n]; local[i]++) body */
  forCount(i: number, n: number, body: () => void) {
    this.i32(0).set(i);
    return this.whileLt(i, () => this.get(n), () => {
      body();
      this.inc(i, 1);
    });
  }
  encode(): number[] {
    const groups: number[][] = this.locals.map((t) => [1, t]);
    const body = [...vec(groups), ...this.code, 0x0b];
    return [...uleb(body.length), ...body];
  }
}

interface FnDef {
  name: string;
  params: number;
  body: Body;
}

/**
 * maxpool_grad_2x2(x0, x1, g, d0, d1, count, cBytes): `count` full 2x2 windows along one output
 * row. x0/x1: the window's top/bottom input rows at its first window; g: dy at that window;
 * d0/d1: dx rows. C = cBytes/4 >= 4 channels, processed 4 at a time (the last group overlaps the
 * previous one; recomputing a channel writes the same values). Per channel, dy goes to the
 * first value strictly greater than everything before it, starting from -Infinity (tfjs' cpu
 * rule, NaN never wins); the other three positions get +0.
 */
function maxPoolGrad2x2(): FnDef {
  const [x0, x1, g, d0, d1, count, cb] = [0, 1, 2, 3, 4, 5, 6];
  const f = new Body(7);
  const w = f.local(I32), c = f.local(I32), last = f.local(I32);
  const [a, b, cc, d, gv, s0, s1, s2, s3, m, ninf] = Array.from({ length: 11 }, () => f.local(V128));
  f.f32(-Infinity).f32x4splat().set(ninf);
  f.get(cb).i32(16).sub().set(last);
  const group = () => {
    // a b / cc d: the window at channel offset c (bytes).
    f.get(x0).get(c).add().vload().set(a);
    f.get(x0).get(c).add().get(cb).add().vload().set(b);
    f.get(x1).get(c).add().vload().set(cc);
    f.get(x1).get(c).add().get(cb).add().vload().set(d);
    f.get(g).get(c).add().vload().set(gv);
    // s_k: position k beats the running maximum m.
    f.get(a).get(ninf).f32x4gt().set(s0);
    f.get(a).get(ninf).get(s0).bitselect().set(m);
    f.get(b).get(m).f32x4gt().set(s1);
    f.get(b).get(m).get(s1).bitselect().set(m);
    f.get(cc).get(m).f32x4gt().set(s2);
    f.get(cc).get(m).get(s2).bitselect().set(m);
    f.get(d).get(m).f32x4gt().set(s3);
    // Winner masks: the last position that beat the maximum.
    f.get(d1).get(c).add().get(cb).add().get(gv).get(s3).vand().vstore();
    f.get(s2).get(s3).vandnot().set(s2); // s2 & ~s3
    f.get(d1).get(c).add().get(gv).get(s2).vand().vstore();
    f.get(s2).get(s3).vor().set(s3); // any of 2, 3
    f.get(s1).get(s3).vandnot().set(s1);
    f.get(d0).get(c).add().get(cb).add().get(gv).get(s1).vand().vstore();
    f.get(s1).get(s3).vor().set(s3); // any of 1, 2, 3
    f.get(s0).get(s3).vandnot().set(s0);
    f.get(d0).get(c).add().get(gv).get(s0).vand().vstore();
  };
  f.forCount(w, count, () => {
    f.i32(0).set(c);
    f.whileLt(c, () => f.get(last), () => {
      group();
      f.inc(c, 16);
    });
    f.get(last).set(c);
    group();
    // Next window: two pixels right in x/dx, one in dy.
    const two = () => f.get(cb).get(cb).add();
    f.inc(x0, two).inc(x1, two).inc(d0, two).inc(d1, two).inc(g, () => f.get(cb));
  });
  return { name: 'maxpool_grad_2x2', params: 7, body: f };
}

/**
 * copy_rows(src, dst, nA, nB, rowBytes, strideA, strideB, dstStrideA, dstStrideB): for a < nA,
 * b < nB, the row of rowBytes (>= 16, a multiple of 4) at src + a*strideA + b*strideB goes to
 * dst + a*dstStrideA + b*dstStrideB. Rows are copied 16 bytes at a time, the last chunk
 * overlapping the previous one.
 */
function copyRows(): FnDef {
  const [src, dst, nA, nB, rb, sa, sb, da, db] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const f = new Body(9);
  const ia = f.local(I32), ib = f.local(I32), c = f.local(I32), last = f.local(I32), rowA = f.local(I32), row = f.local(I32);
  const outA = f.local(I32), out = f.local(I32);
  f.get(rb).i32(16).sub().set(last);
  f.get(src).set(rowA);
  f.get(dst).set(outA);
  f.forCount(ia, nA, () => {
    f.get(rowA).set(row);
    f.get(outA).set(out);
    f.forCount(ib, nB, () => {
      f.i32(0).set(c);
      f.whileLt(c, () => f.get(last), () => {
        f.get(out).get(c).add().get(row).get(c).add().vload().vstore();
        f.inc(c, 16);
      });
      f.get(out).get(last).add().get(row).get(last).add().vload().vstore();
      f.inc(out, () => f.get(db));
      f.inc(row, () => f.get(sb));
    });
    f.inc(rowA, () => f.get(sa)).inc(outA, () => f.get(da));
  });
  return { name: 'copy_rows', params: 9, body: f };
}

/**
 * gather3(src, dst, nA, nB, nK, strideA, strideB, strideK, dstStrideA): the 32-bit value at
 * src + a*strideA + b*strideB + k*strideK goes to dst + a*dstStrideA + (b*nK + k)*4 (bytes).
 */
function gather3(): FnDef {
  const [src, dst, nA, nB, nK, sa, sb, sk, da] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const f = new Body(9);
  const ia = f.local(I32), ib = f.local(I32), ik = f.local(I32), pa = f.local(I32), pb = f.local(I32), p = f.local(I32);
  const rowA = f.local(I32), q = f.local(I32);
  f.get(src).set(pa);
  f.get(dst).set(rowA);
  f.forCount(ia, nA, () => {
    f.get(pa).set(pb);
    f.get(rowA).set(q);
    f.forCount(ib, nB, () => {
      f.get(pb).set(p);
      f.forCount(ik, nK, () => {
        f.get(q).get(p).i32load().i32store();
        f.inc(q, 4).inc(p, () => f.get(sk));
      });
      f.inc(pb, () => f.get(sb));
    });
    f.inc(pa, () => f.get(sa)).inc(rowA, () => f.get(da));
  });
  return { name: 'gather3', params: 9, body: f };
}

/**
 * sum_rows(src, acc, n, lBytes): acc[0..L) += sum over i < n of src[i*L .. i*L + L), float32,
 * 16 bytes at a time (lBytes a multiple of 16).
 */
function sumRows(): FnDef {
  const [src, acc, n, lb] = [0, 1, 2, 3];
  const f = new Body(4);
  const i = f.local(I32), c = f.local(I32);
  f.forCount(i, n, () => {
    f.i32(0).set(c);
    f.whileLt(c, () => f.get(lb), () => {
      f.get(acc).get(c).add();
      f.get(acc).get(c).add().vload();
      f.get(src).get(c).add().vload();
      f.f32x4add().vstore();
      f.inc(c, 16);
    });
    f.inc(src, () => f.get(lb));
  });
  return { name: 'sum_rows', params: 4, body: f };
}

/**
 * add_rows(src, pat, dst, n, lBytes): dst[i*L + j] = src[i*L + j] + pat[j] for i < n, j < L,
 * float32, 16 bytes at a time (lBytes a multiple of 16).
 */
function addRows(): FnDef {
  const [src, pat, dst, n, lb] = [0, 1, 2, 3, 4];
  const f = new Body(5);
  const i = f.local(I32), c = f.local(I32);
  f.forCount(i, n, () => {
    f.i32(0).set(c);
    f.whileLt(c, () => f.get(lb), () => {
      f.get(dst).get(c).add();
      f.get(src).get(c).add().vload();
      f.get(pat).get(c).add().vload();
      f.f32x4add().vstore();
      f.inc(c, 16);
    });
    f.inc(src, () => f.get(lb)).inc(dst, () => f.get(lb));
  });
  return { name: 'add_rows', params: 5, body: f };
}

function assemble(fns: FnDef[], sharedMemory: boolean): Uint8Array<ArrayBuffer> {
  const types = fns.map((fn) => [0x60, ...vec(Array.from({ length: fn.params }, () => [I32])), 0]);
  // Memory import: no minimum, no maximum (shared memory must declare both: 4 GiB).
  const memType = sharedMemory ? [0x03, 0, ...uleb(65536)] : [0x00, 0];
  const imports = vec([[...name('env'), ...name('memory'), 0x02, ...memType]]);
  const funcs = vec(fns.map((_, i) => uleb(i)));
  const exports = vec(fns.map((fn, i) => [...name(fn.name), 0x00, ...uleb(i)]));
  const code = vec(fns.map((fn) => fn.body.encode()));
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    ...section(2, imports),
    ...section(3, funcs),
    ...section(7, exports),
    ...section(10, code),
  ]);
}

/**
 * filter_grad(x, dy, acc, nY, nX, xPix, dyPix, xRow, kh, kw, tapRow, tapCol): the filter
 * gradient of one image for a group of G input channels: for every tap (i < kh, j < kw),
 * acc[i][j][g][v] (4 lanes) += sum over output pixels (y < nY, x < nX) of
 * x[y*xRow + x*xPix + i*tapRow + j*tapCol + g] * dy[pixel][lanes of vector v].
 * x: the (padded) input at output pixel (0,0), tap (0,0), channel of the group; dy: contiguous,
 * dyPix bytes per pixel. Vector v covers output channels offs[v]..offs[v]+3 (the last one may
 * overlap the previous one: co >= 4 values, none read past a pixel). Row by row: one output
 * row of dy and the kh input rows it meets stay in L1 cache across all taps, and the G*V
 * accumulators of a tap stay in registers along the row (the code is generated per G, offs).
 */
function filterGrad(G: number, offs: number[]): FnDef {
  const V = offs.length;
  const [x, dy, acc, nY, nX, xPix, dyPix, xRow, kh, kw, tapRow, tapCol] = Array.from({ length: 12 }, (_, i) => i);
  const f = new Body(12);
  const iy = f.local(I32), ix = f.local(I32), ti = f.local(I32), tj = f.local(I32);
  const xr = f.local(I32), dr = f.local(I32), slot = f.local(I32), rowX = f.local(I32), tapX = f.local(I32);
  const d = offs.map(() => f.local(V128));
  const s = f.local(V128);
  const a = Array.from({ length: G * V }, () => f.local(V128));
  f.forCount(iy, nY, () => {
    f.get(acc).set(slot);
    f.get(x).set(rowX);
    f.forCount(ti, kh, () => {
      f.get(rowX).set(tapX);
      f.forCount(tj, kw, () => {
        for (let i = 0; i < G * V; i++) f.get(slot).vload(i * 16).set(a[i]!);
        f.get(tapX).set(xr);
        f.get(dy).set(dr);
        f.forCount(ix, nX, () => {
          offs.forEach((o, v) => f.get(dr).vload(o * 4).set(d[v]!));
          for (let g = 0; g < G; g++) {
            f.get(xr).f32load(g * 4).f32x4splat().set(s);
            for (let v = 0; v < V; v++) f.get(a[g * V + v]!).get(s).get(d[v]!).f32x4mul().f32x4add().set(a[g * V + v]!);
          }
          f.inc(xr, () => f.get(xPix)).inc(dr, () => f.get(dyPix));
        });
        for (let i = 0; i < G * V; i++) f.get(slot).get(a[i]!).vstore(i * 16);
        f.inc(slot, G * V * 16).inc(tapX, () => f.get(tapCol));
      });
      f.inc(rowX, () => f.get(tapRow));
    });
    f.inc(x, () => f.get(xRow));
    f.get(dy).get(nX).get(dyPix).mul().add().set(dy);
  });
  return { name: 'filter_grad', params: 12, body: f };
}

export type FilterGradFn = (x: number, dy: number, acc: number, nY: number, nX: number, xPix: number, dyPix: number, xRow: number,
  kh: number, kw: number, tapRow: number, tapCol: number) => void;

const filterGradModules = new Map<string, WebAssembly.Module>();
const filterGradInstances = new WeakMap<WebAssembly.Memory, Map<string, FilterGradFn>>();

/** The filter-gradient routine for G input channels and output-channel vectors at offs, or null. */
export function filterGradFor(memory: WebAssembly.Memory | undefined, G: number, offs: number[]): FilterGradFn | null {
  if (simdKernelsFor(memory) == null) return null;
  const key = `${G}:${offs.join(',')}`;
  let byKey = filterGradInstances.get(memory!);
  if (byKey == null) filterGradInstances.set(memory!, (byKey = new Map()));
  let fn = byKey.get(key);
  if (fn == null) {
    let mod = filterGradModules.get(key);
    if (mod == null) {
      mod = new WebAssembly.Module(assemble([filterGrad(G, offs)], compiled!.shared));
      filterGradModules.set(key, mod);
    }
    fn = new WebAssembly.Instance(mod, { env: { memory: memory! } }).exports['filter_grad'] as FilterGradFn;
    byKey.set(key, fn);
  }
  return fn;
}

export interface SimdKernels {
  maxpool_grad_2x2(x0: number, x1: number, g: number, d0: number, d1: number, count: number, cBytes: number): void;
  copy_rows(src: number, dst: number, nA: number, nB: number, rowBytes: number, strideA: number, strideB: number, dstStrideA: number, dstStrideB: number): void;
  gather3(src: number, dst: number, nA: number, nB: number, nK: number, strideA: number, strideB: number, strideK: number, dstStrideA: number): void;
  sum_rows(src: number, acc: number, n: number, lBytes: number): void;
  add_rows(src: number, pat: number, dst: number, n: number, lBytes: number): void;
}

let compiled: { module: WebAssembly.Module; shared: boolean } | null = null;
const instances = new WeakMap<WebAssembly.Memory, SimdKernels | null>();
let disabled = false;

/**
 * The SIMD routines bound to `memory` (tfjs-backend-wasm's), or null when this runtime cannot
 * run them (no wasm SIMD) or when disabled (env PIPE_WASM_SIMD=0, for comparisons).
 */
export function simdKernelsFor(memory: WebAssembly.Memory | undefined): SimdKernels | null {
  if (disabled || memory == null || process.env['PIPE_WASM_SIMD'] === '0') return null;
  if (instances.has(memory)) return instances.get(memory)!;
  let kernels: SimdKernels | null = null;
  try {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    if (compiled == null || compiled.shared !== shared) {
      const bytes = assemble([maxPoolGrad2x2(), copyRows(), gather3(), sumRows(), addRows()], shared);
      compiled = { module: new WebAssembly.Module(bytes), shared };
    }
    const inst = new WebAssembly.Instance(compiled.module, { env: { memory } });
    kernels = inst.exports as unknown as SimdKernels;
  } catch {
    // No wasm SIMD here: stay on the JavaScript paths from now on.
    disabled = true;
    kernels = null;
  }
  instances.set(memory, kernels);
  return kernels;
}

/** The module's bytes (for tests: it must validate). */
export function simdModuleBytes(): Uint8Array<ArrayBuffer> {
  return assemble([maxPoolGrad2x2(), copyRows(), gather3(), sumRows(), addRows()], false);
}
