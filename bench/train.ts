// Training throughput benchmark (`npm run bench:train`): images per second of the grid model
// (the seed's default architecture) at 250x250 and 128x128, batch 8 and 32, through the real
// training path (trainLoop: Adam via optimizer.minimize, gridLoss) on the backend initBackend
// picks; beside it, the same network, loss, batch and thread count in PyTorch CPU
// (bench/torch_step.py, Debian's python3-torch, installed with apt-get when missing), plus
// PyTorch on all cores for information. Each case runs pipe, then the PyTorch processes, back
// to back (the machine may be shared: the load average is printed with every line). Synthetic
// inputs, one face per image; median of --steps steps after --warmup steps. The last line
// printed is one JSON object (250x250, batch 32): ratio = torch / pipe images per second.
//
//   npm run bench:train [-- --steps 5 --warmup 2 --sizes 250,128 --batches 8,32 --no-torch --profile]
//
// --profile: afterwards, where one step's time goes on the pipe backend for the largest case
// (forward / backward / Adam, and exclusive time per kernel and per kernel call shape).
// PIPE_WASM_SIMD=0 runs the wasm kernels without their SIMD routines (for comparison).
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { createInterface } from 'node:readline';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as TF from '@tensorflow/tfjs';
import { initBackend, type BackendInfo } from '../stages/lib/tf-backend.js';
import { buildGridModel, gridLoss, LOSS_TERMS, type LossWeights } from '../stages/lib/grid-net.js';
import { buildTargets, CHANNELS, makeLayout, type GridLayout } from '../stages/lib/grid-layout.js';
import { rng } from '../stages/lib/face-dataset.js';
import { trainLoop } from '../stages/lib/train-loop.js';

type Tf = typeof import('@tensorflow/tfjs');

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TORCH_SCRIPT = join(repo, 'bench', 'torch_step.py');
// Debian's interpreter: the `python3` on PATH may be a pyenv one without python3-torch.
const PYTHON = '/usr/bin/python3';
const FILTERS = [[10], [11, 13], [14, 16], [17, 19], [20, 22]];
const LEARNING_RATE = 0.0008;
const ONES: LossWeights = { conf_obj: 1, conf_noobj: 1, center: 1, size: 1, gender: 1, age: 1 };

interface Options {
  steps: number;
  warmup: number;
  sizes: number[];
  batches: number[];
  torch: boolean;
  profile: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { steps: 5, warmup: 2, sizes: [250, 128], batches: [8, 32], torch: true, profile: false };
  const list = (v: string | undefined, flag: string) => {
    const xs = (v ?? '').split(',').map(Number);
    if (!xs.length || xs.some((x) => !Number.isInteger(x) || x < 8)) throw new Error(`bench/train: ${flag} expects integers >= 8, comma separated; got '${v}'`);
    return xs;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const int = (min: number) => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < min) throw new Error(`bench/train: ${a} expects an integer >= ${min}; got '${argv[i]}'`);
      return v;
    };
    if (a === '--steps') o.steps = int(1);
    else if (a === '--warmup') o.warmup = int(0);
    else if (a === '--sizes') o.sizes = list(argv[++i], a);
    else if (a === '--batches') o.batches = list(argv[++i], a);
    else if (a === '--no-torch') o.torch = false;
    else if (a === '--profile') o.profile = true;
    else throw new Error(`bench/train: unknown argument '${a}' (known: --steps N --warmup N --sizes a,b --batches a,b --no-torch --profile)`);
  }
  return o;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const load = () => os.loadavg().map((v) => v.toFixed(2)).join(' ');

/** Synthetic batch: uniform pixels in [0,1) and one face per image at a random place and size. */
function syntheticBatch(tf: Tf, layout: GridLayout, size: number, batch: number, seed: number): { x: TF.Tensor4D; y: TF.Tensor4D } {
  const r = rng(seed);
  const px = new Float32Array(batch * size * size * 3);
  for (let i = 0; i < px.length; i++) px[i] = r();
  const cells = layout.grid * layout.grid * CHANNELS;
  const targets = new Float32Array(batch * cells);
  for (let i = 0; i < batch; i++) {
    const w = 16 + r() * (size / 2);
    const x1 = r() * (size - w);
    const y1 = r() * (size - w);
    const face = { box: [x1, y1, x1 + w, y1 + w] as [number, number, number, number], gender: i % 2, ageBucket: i % 7 };
    targets.set(buildTargets([face], layout), i * cells);
  }
  return { x: tf.tensor4d(px, [batch, size, size, 3]), y: tf.tensor4d(targets, [batch, layout.grid, layout.grid, CHANNELS]) };
}

interface PipeResult {
  medianS: number;
  imgPerS: number;
  stepsS: number[];
  finalLoss: number;
}

/** Times trainLoop itself: the gap between its per-step progress calls is one full step. */
async function benchPipe(tf: Tf, size: number, batch: number, o: Options, twoThreads = false): Promise<PipeResult> {
  const layout = makeLayout({ inputSize: size, blocks: FILTERS.length, sqrtWh: false, relative: false });
  // The stage's data-parallel mode: a worker thread with its own wasm instance takes half of each batch.
  const parallel = twoThreads
    ? { recipe: { kind: 'grid' as const, net: { filters: FILTERS, head: 'conv1x1' as const, denseUnits: 256, seed: 1, inputSize: size }, layout, lossWeights: ONES }, backend: 'wasm' }
    : undefined;
  const model = buildGridModel(tf, { filters: FILTERS, head: 'conv1x1', denseUnits: 256, seed: 1, inputSize: size });
  const data = syntheticBatch(tf, layout, size, batch, size * 1000 + batch);
  const marks: number[] = [];
  const total = o.warmup + o.steps;
  const t0 = performance.now();
  const result = await trainLoop({
    tf,
    model,
    steps: total,
    learningRate: LEARNING_RATE,
    // trainLoop disposes each batch: hand it clones (shared buffers, no copy), so the timing
    // is the step, not pixel generation.
    makeBatch: async () => ({ x: tf.clone(data.x), y: tf.clone(data.y) }),
    loss: (pred, y) => gridLoss(tf, pred as TF.Tensor4D, y as TF.Tensor4D, layout, ONES),
    terms: LOSS_TERMS,
    checkpointEvery: 0,
    logEvery: 1,
    progress: () => marks.push(performance.now()),
    parallel,
  });
  const steps = marks.map((m, i) => (m - (i ? marks[i - 1]! : t0)) / 1000).slice(o.warmup);
  tf.dispose([data.x, data.y]);
  model.dispose();
  const medianS = median(steps);
  return { medianS, imgPerS: batch / medianS, stepsS: steps, finalLoss: result.curves.total.at(-1) ?? NaN };
}

interface TorchResult {
  size: number;
  batch: number;
  threads: number;
  median_s: number;
  img_per_s: number;
  steps_s: number[];
  torch: string;
}

function torchAvailable(): boolean {
  return spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

/** Installs Debian's python3-torch when missing; returns why not when it cannot. */
function ensureTorch(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} not found (Debian's python3 is needed for python3-torch)`;
  if (torchAvailable()) return undefined;
  console.error('bench/train: torch missing for /usr/bin/python3; installing python3-torch (apt-get)...');
  const r = spawnSync('sh', ['-c', 'apt-get update && apt-get install -y python3-torch'], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) return `apt-get install -y python3-torch failed (exit ${r.status})`;
  return torchAvailable() ? undefined : 'python3-torch installed, but `import torch` still fails';
}

/**
 * A PyTorch process at a fixed thread count, answering one case per request, so that each
 * case runs right after pipe's (the machine's load drifts; back-to-back runs see the same).
 */
class TorchServer {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  failed = false;
  constructor(readonly threads: number) {
    this.proc = spawn(PYTHON, [TORCH_SCRIPT, '--serve', String(threads)], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stderr.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    // A failed start or a dead process shows up as the end of stdout (next() throws).
    this.proc.on('error', (e) => (this.stderr += `\n${e.message}`));
    this.proc.stdin.on('error', () => {});
    this.lines = createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
  }
  private async next(): Promise<Record<string, unknown>> {
    const r = await this.lines.next();
    if (r.done) throw new Error(`bench/train: ${TORCH_SCRIPT} (threads ${this.threads}) exited:\n${this.stderr}`);
    return JSON.parse(r.value) as Record<string, unknown>;
  }
  async ready(): Promise<void> {
    const hello = await this.next();
    if (hello['threads'] !== this.threads) throw new Error(`bench/train: torch runs ${String(hello['threads'])} threads, asked for ${this.threads}`);
  }
  async run(size: number, batch: number, o: Options): Promise<TorchResult> {
    this.proc.stdin.write(JSON.stringify({ size, batch, warmup: o.warmup, steps: o.steps, filters: FILTERS }) + '\n');
    return (await this.next()) as unknown as TorchResult;
  }
  close(): void {
    this.proc.stdin.end();
  }
}

/**
 * Wraps every kernel of the active backend with a timer. Times are exclusive (a kernel that runs
 * other kernels, like our gradient kernels, is charged only for its own work); `restore` puts
 * the original kernels back.
 */
function instrumentKernels(tf: Tf) {
  const backendName = tf.getBackend();
  const stats = new Map<string, { ms: number; n: number }>();
  const byShape = new Map<string, number>();
  const stack: number[] = []; // child time accumulated per open kernel
  const originals = tf.getKernelsForBackend(backendName);
  for (const k of originals) {
    const inner = k.kernelFunc;
    const wrapped: TF.KernelFunc = (args) => {
      stack.push(0);
      const t0 = performance.now();
      const out = inner(args);
      const total = performance.now() - t0;
      const children = stack.pop()!;
      if (stack.length) stack[stack.length - 1]! += total;
      const self = total - children;
      const e = stats.get(k.kernelName) ?? { ms: 0, n: 0 };
      e.ms += self;
      e.n++;
      stats.set(k.kernelName, e);
      const key = `${k.kernelName} ${Object.values(args.inputs).map((t) => `[${t?.shape}]`).join(' ')}`;
      byShape.set(key, (byShape.get(key) ?? 0) + self);
      return out;
    };
    tf.unregisterKernel(k.kernelName, backendName);
    tf.registerKernel({ ...k, kernelFunc: wrapped });
  }
  return {
    stats,
    byShape,
    reset: () => { stats.clear(); byShape.clear(); },
    restore: () => {
      for (const k of originals) {
        tf.unregisterKernel(k.kernelName, backendName);
        tf.registerKernel(k);
      }
    },
  };
}

/** Where one step's time goes: forward+loss, backward, Adam; exclusive time per kernel. */
async function profileStep(tf: Tf, info: BackendInfo, size: number, batch: number): Promise<void> {
  const layout = makeLayout({ inputSize: size, blocks: FILTERS.length, sqrtWh: false, relative: false });
  const model = buildGridModel(tf, { filters: FILTERS, head: 'conv1x1', denseUnits: 256, seed: 1, inputSize: size });
  const { x, y } = syntheticBatch(tf, layout, size, batch, 7);
  const vars = model.trainableWeights.map((w) => (w as unknown as { val: TF.Variable }).val);
  const lossOf = () => gridLoss(tf, model.apply(x, { training: true }) as TF.Tensor4D, y, layout, ONES).total;
  const optimizer = tf.train.adam(LEARNING_RATE);
  const time = (f: () => void, n = 3) => {
    f();
    const ts: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      f();
      ts.push(performance.now() - t);
    }
    return median(ts);
  };
  const step = () => {
    const l = optimizer.minimize(lossOf, true, vars)!;
    l.dataSync();
    l.dispose();
  };
  const fwd = time(() => tf.tidy(() => lossOf()).dataSync());
  const grads = time(() => {
    const g = tf.variableGrads(lossOf, vars);
    g.value.dataSync();
    tf.dispose([g.value, ...Object.values(g.grads)]);
  });
  const full = time(step);
  console.log(`\nprofile ${size}x${size} batch ${batch} on ${info.name} (threads ${info.threads}; load ${load()}): step ${full.toFixed(0)} ms = ` +
    `forward+loss ${fwd.toFixed(0)} + backward ${(grads - fwd).toFixed(0)} + Adam ${(full - grads).toFixed(0)}`);
  const probe = instrumentKernels(tf);
  let wall = 0;
  try {
    step();
    probe.reset();
    const t0 = performance.now();
    step();
    wall = performance.now() - t0;
  } finally {
    probe.restore();
  }
  const sum = [...probe.stats.values()].reduce((a, e) => a + e.ms, 0);
  console.log(`one step: ${wall.toFixed(0)} ms wall, ${sum.toFixed(0)} ms in kernels (exclusive), ${(wall - sum).toFixed(0)} ms outside kernels (tfjs engine, tape, JS)`);
  for (const [name, e] of [...probe.stats.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 16)) {
    console.log(`  ${name.padEnd(24)} ${e.ms.toFixed(1).padStart(8)} ms  ${((100 * e.ms) / wall).toFixed(1).padStart(5)}%  x${e.n}`);
  }
  console.log('largest kernel calls (exclusive ms, name, input shapes):');
  for (const [key, ms] of [...probe.byShape.entries()].sort((a, b) => b[1] - a[1]).slice(0, 14)) console.log(`  ${ms.toFixed(1).padStart(8)} ms  ${key}`);
  optimizer.dispose();
  tf.dispose([x, y]);
  model.dispose();
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  console.log(`load average at start: ${load()} (${os.availableParallelism()} cores)`);
  const { tf, info } = await initBackend('auto', { log: (l) => console.log(`tf-backend: ${l}`) });
  const cases: [number, number][] = o.sizes.flatMap((s) => o.batches.map((b) => [s, b] as [number, number]));

  let torchWhyNot = o.torch ? ensureTorch() : 'skipped (--no-torch)';
  const allCores = os.availableParallelism();
  const servers: TorchServer[] = [];
  if (!torchWhyNot) {
    try {
      servers.push(new TorchServer(info.threads));
      if (allCores !== info.threads) servers.push(new TorchServer(allCores));
      for (const srv of servers) await srv.ready();
    } catch (e) {
      torchWhyNot = (e as Error).message;
      servers.forEach((srv) => srv.close());
      servers.length = 0;
    }
  }
  const torchSame: TorchResult[] = [];
  const torchAll: TorchResult[] = [];
  const pipe = new Map<string, PipeResult>();
  const pipe2 = new Map<string, PipeResult>();
  const ms = (s: number) => (s * 1000).toFixed(0);
  for (const [size, batch] of cases) {
    const r = await benchPipe(tf, size, batch, o);
    pipe.set(`${size}x${batch}`, r);
    console.log(`pipe  ${size}x${size} batch ${batch} threads ${info.threads}: ${r.imgPerS.toFixed(2)} img/s (median ${ms(r.medianS)} ms/step of ` +
      `${r.stepsS.map(ms).join(' ')}; loss ${r.finalLoss.toFixed(3)}) load ${load()}`);
    if (info.name === 'wasm' && allCores >= 2) {
      const r2 = await benchPipe(tf, size, batch, o, true);
      pipe2.set(`${size}x${batch}`, r2);
      console.log(`pipe  ${size}x${size} batch ${batch} 2 threads (data-parallel): ${r2.imgPerS.toFixed(2)} img/s (median ${ms(r2.medianS)} ms/step; ` +
        `loss ${r2.finalLoss.toFixed(3)}) load ${load()}`);
    }
    for (const [i, srv] of servers.entries()) {
      if (srv.failed) continue;
      try {
        const t = await srv.run(size, batch, o);
        (i === 0 ? torchSame : torchAll).push(t);
        console.log(`torch ${size}x${size} batch ${batch} threads ${t.threads}: ${t.img_per_s.toFixed(2)} img/s (median ${ms(t.median_s)} ms/step of ` +
          `${t.steps_s.map(ms).join(' ')}) load ${load()}`);
      } catch (e) {
        srv.failed = true;
        torchWhyNot = (e as Error).message;
      }
    }
  }
  servers.forEach((srv) => srv.close());
  if (servers.length === 1) torchAll.push(...torchSame);
  if (torchWhyNot) console.log(`torch: not measured: ${torchWhyNot}`);

  const find = (rs: TorchResult[], s: number, b: number) => rs.find((t) => t.size === s && t.batch === b);
  const fmt = (v: number | undefined, d = 2) => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
  console.log(`\ngrid model training, img/s (backend ${info.name} ${info.version}, threads ${info.threads}, simd ${info.simd}; ` +
    `median of ${o.steps} steps after ${o.warmup} warm-up; load at end ${load()})`);
  const head = ['size', 'batch', `pipe (${info.threads}t)`, `torch (${info.threads}t)`, 'torch/pipe', 'pipe (2t)', `torch (${allCores}t)`, `torch ${allCores}t/pipe 2t`];
  const rows = cases.map(([s, b]) => {
    const p = pipe.get(`${s}x${b}`)!;
    const p2 = pipe2.get(`${s}x${b}`)?.imgPerS;
    const t1 = find(torchSame, s, b)?.img_per_s;
    const tn = find(torchAll, s, b)?.img_per_s;
    return [`${s}x${s}`, `${b}`, fmt(p.imgPerS), fmt(t1), t1 === undefined ? '-' : `${fmt(t1 / p.imgPerS)}x`, fmt(p2), fmt(tn), tn === undefined || p2 === undefined ? '-' : `${fmt(tn / p2)}x`];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));

  if (o.profile) {
    const [s, b] = cases.reduce((a, c) => (c[0] * c[0] * c[1] > a[0] * a[0] * a[1] ? c : a));
    await profileStep(tf, info, s, b);
  }

  const key = cases.find(([s, b]) => s === 250 && b === 32) ?? cases[0]!;
  const p = pipe.get(`${key[0]}x${key[1]}`)!;
  const t = find(torchSame, key[0], key[1]);
  const round = (v: number) => Math.round(v * 1000) / 1000;
  console.log(JSON.stringify({
    backend: info.name,
    size: key[0],
    batch: key[1],
    pipe_img_per_s: round(p.imgPerS),
    torch_img_per_s: t ? round(t.img_per_s) : null,
    ratio: t ? round(t.img_per_s / p.imgPerS) : null,
    // the stage's default on a 2-core machine: two threads, against torch on all cores
    pipe_2t_img_per_s: pipe2.has(`${key[0]}x${key[1]}`) ? round(pipe2.get(`${key[0]}x${key[1]}`)!.imgPerS) : null,
    torch_all_cores_img_per_s: find(torchAll, key[0], key[1]) ? round(find(torchAll, key[0], key[1])!.img_per_s) : null,
  }));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
