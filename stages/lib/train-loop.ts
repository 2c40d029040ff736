// The training loop shared by the grid model and the crop classifiers: Adam, a batch that
// is a pure function of (seed, step) so that training can stop anywhere and resume exactly,
// checkpoints every N steps into the stage's state dir, loss curves per term.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';

type Tf = typeof import('@tensorflow/tfjs');

export interface Batch {
  x: TF.Tensor;
  y: TF.Tensor;
}

export interface TrainLoopOptions<Term extends string> {
  tf: Tf;
  model: TF.LayersModel;
  steps: number;
  learningRate: number;
  /** Builds the batch of a step; must depend only on the step (and fixed seeds). */
  makeBatch: (step: number) => Promise<Batch>;
  loss: (pred: TF.Tensor, y: TF.Tensor) => { total: TF.Scalar; terms: Record<Term, TF.Scalar> };
  terms: readonly Term[];
  /** Where checkpoints live (survives interrupted attempts); undefined = no checkpoints. */
  stateDir?: string;
  checkpointEvery: number;
  /** Loss curve resolution: mean of the terms over each window of this many steps. */
  logEvery: number;
  signal?: AbortSignal;
  progress?: (done: number, total: number) => void;
  log?: (line: string) => void;
  /** Stop after this step (tests use it to simulate an interruption). */
  stopAfter?: number;
  /**
   * Data-parallel training on a second core: a worker thread builds the same model from this
   * recipe and computes the gradients of half of each batch while this thread does the other
   * half; the averaged gradients take one Adam step here. Numerically a different (equally
   * valid) summation than one thread, so results match one-thread training only closely.
   */
  parallel?: { recipe: import('./train-recipes.js').Recipe; backend: string };
}

/** The settings every training stage has (the loop's, the optimiser's, where it runs). */
export interface TrainStageSettings {
  steps: number;
  batch_size: number;
  learning_rate: number;
  seed: number;
  backend: 'auto' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
  threads: 'auto' | 1 | 2;
  checkpoint_every: number;
  log_every: number;
}

/** Their JSON Schema properties; a stage adds its own next to them. */
export const TRAIN_STAGE_PROPERTIES = {
  steps: { type: 'integer', minimum: 1, default: 5000, description: 'Training steps (the seed ran 5,000-step rounds)' },
  batch_size: { type: 'integer', minimum: 1, default: 200 },
  learning_rate: { type: 'number', exclusiveMinimum: 0, default: 0.0008, description: 'Adam learning rate' },
  seed: { type: 'integer', default: 1, description: 'Weights initialisation and batch sampling' },
  backend: { enum: ['auto', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'], default: 'auto', description: 'tfjs backend (recorded, not part of the cache key); env PIPE_TF_BACKEND when auto' },
  threads: { enum: ['auto', 1, 2], default: 'auto', description: 'wasm: split each batch over 2 threads (auto: when the machine has 2+ cores); recorded, not keyed' },
  checkpoint_every: { type: 'integer', minimum: 0, default: 500 },
  log_every: { type: 'integer', minimum: 1, default: 10 },
};

/** Where a model trains never changes what it is: recorded in the manifest, not keyed. */
export const TRAIN_VOLATILE_SETTINGS = ['backend', 'threads'] as const;

/** The options every training stage passes the same way, from its context and settings. */
export function stageLoopOptions(
  ctx: import('../../runner/stage-type.js').StageContext<Pick<TrainStageSettings, 'checkpoint_every' | 'log_every'>>,
): Pick<TrainLoopOptions<string>, 'stateDir' | 'checkpointEvery' | 'logEvery' | 'signal' | 'progress' | 'log'> {
  return {
    stateDir: ctx.stateDir,
    checkpointEvery: ctx.settings.checkpoint_every,
    logEvery: ctx.settings.log_every,
    signal: ctx.signal,
    progress: (d, t) => ctx.progress(d, t, 'steps'),
    log: ctx.log,
  };
}

export interface Curves {
  step: number[];
  total: number[];
  [term: string]: number[];
}

export interface TrainResult {
  curves: Curves;
  /** 2 when steps ran data-parallel on a worker thread too. */
  threads: number;
  resumedFrom: number;
  stepsRun: number;
  secondsPerStep: number;
}

interface Checkpoint {
  step: number;
  curves: Curves;
  window: Record<string, number>;
  windowSteps: number;
  weights: { name: string; shape: number[]; dtype: string; offset: number; length: number }[];
  optimizer: { name: string; shape: number[]; dtype: string; offset: number; length: number }[];
}

export async function trainLoop<Term extends string>(o: TrainLoopOptions<Term>): Promise<TrainResult> {
  const { tf, model } = o;
  const optimizer = tf.train.adam(o.learningRate);
  const vars = model.trainableWeights.map((w) => (w as unknown as { val: TF.Variable }).val);
  let curves: Curves = { step: [], total: [], ...Object.fromEntries(o.terms.map((t) => [t, [] as number[]])) } as Curves;
  let window: Record<string, number> = {};
  let windowSteps = 0;
  let start = 0;
  const restored = o.stateDir ? await loadCheckpoint(tf, o.stateDir, model, optimizer) : undefined;
  if (restored) {
    start = restored.step;
    curves = restored.curves;
    window = restored.window;
    windowSteps = restored.windowSteps;
    o.log?.(`resumed from checkpoint at step ${start} of ${o.steps}`);
  }
  const helper = o.parallel && start < o.steps ? await GradHelper.start(o.parallel.recipe, o.parallel.backend) : undefined;
  const t0 = performance.now();
  let next = start < o.steps ? o.makeBatch(start) : undefined;
  let step = start;
  try {
    for (; step < o.steps; step++) {
      o.signal?.throwIfAborted();
      const batch = await next!;
      // Decode the next batch (sharp, off the main thread) while this step trains.
      next = step + 1 < o.steps ? o.makeBatch(step + 1) : undefined;
      let termTensors: Record<string, TF.Scalar> = {};
      const n = batch.x.shape[0]!;
      let names: string[];
      let values: ArrayLike<number>[];
      if (helper && n >= 2) {
        // This thread takes the first part of the batch, the worker the rest, at the same weights.
        const mine = n - Math.floor(n / 2);
        const theirs = n - mine;
        const part = (t: TF.Tensor, from: number, size: number) => t.slice([from], [size]);
        const [xb, yb] = [part(batch.x, mine, theirs), part(batch.y, mine, theirs)];
        const reply = helper.request({
          weights: vars.map((v) => new Float32Array(v.dataSync() as Float32Array)),
          x: new Float32Array(xb.dataSync() as Float32Array),
          xShape: xb.shape,
          y: new Float32Array(yb.dataSync() as Float32Array),
          yShape: yb.shape,
        });
        const [xa, ya] = [part(batch.x, 0, mine), part(batch.y, 0, mine)];
        const { value, grads } = tf.variableGrads(() => {
          const { total, terms } = o.loss(model.apply(xa, { training: true }) as TF.Tensor, ya);
          termTensors = Object.fromEntries(Object.entries(terms).map(([k, v]) => [k, tf.keep(v as TF.Scalar)]));
          return total;
        }, vars);
        const r = await reply;
        const wa = mine / n;
        const wb = theirs / n;
        const averaged = Object.fromEntries(
          vars.map((v, i) => [v.name, tf.tidy(() => grads[v.name]!.mul(wa).add(tf.tensor(r.grads[i]!, v.shape).mul(wb)))]),
        );
        optimizer.applyGradients(averaged);
        const mineValues = await Promise.all([value, ...Object.values(termTensors)].map((t) => t.data()));
        names = ['total', ...Object.keys(termTensors)];
        values = names.map((k, i) => [mineValues[i]![0]! * wa + (k === 'total' ? r.total : r.terms[k]!) * wb]);
        tf.dispose([value, ...Object.values(grads), ...Object.values(averaged), ...Object.values(termTensors), xa, ya, xb, yb, batch.x, batch.y]);
      } else {
        const total = optimizer.minimize(
          () => {
            const pred = model.apply(batch.x, { training: true }) as TF.Tensor;
            const { total, terms } = o.loss(pred, batch.y);
            termTensors = Object.fromEntries(Object.entries(terms).map(([k, v]) => [k, tf.keep(v as TF.Scalar)]));
            return total;
          },
          true,
          vars,
        )!;
        values = await Promise.all([total, ...Object.values(termTensors)].map((t) => t.data()));
        tf.dispose([total, ...Object.values(termTensors), batch.x, batch.y]);
        names = ['total', ...Object.keys(termTensors)];
      }
      names.forEach((n, i) => (window[n] = (window[n] ?? 0) + values[i]![0]!));
      windowSteps++;
      if (!Number.isFinite(values[0]![0]!)) throw new Error(`loss is ${values[0]![0]} at step ${step + 1}: lower learning_rate or check the data`);
      const done = step + 1;
      if (windowSteps >= o.logEvery || done === o.steps) {
        curves.step.push(done);
        for (const n of names) (curves[n] ??= []).push(window[n]! / windowSteps);
        window = {};
        windowSteps = 0;
        // About ten loss lines per training in the stage's log (`pipe show`, `--verbose`).
        const every = Math.max(1, Math.round(o.steps / o.logEvery / 10));
        if (curves.step.length % every === 0 || done === o.steps) {
          o.log?.(`step ${done}/${o.steps}: ${names.map((n) => `${n} ${curves[n]!.at(-1)!.toFixed(4)}`).join(', ')}`);
        }
      }
      o.progress?.(done, o.steps);
      if (o.stateDir && o.checkpointEvery > 0 && done % o.checkpointEvery === 0 && done < o.steps) {
        await saveCheckpoint(tf, o.stateDir, { step: done, curves, window, windowSteps }, model, optimizer);
      }
      if (o.stopAfter !== undefined && done >= o.stopAfter) {
        step++;
        break;
      }
      // Let progress events and signals through between steps.
      await new Promise((r) => setImmediate(r));
    }
  } finally {
    await helper?.stop(); // a live worker thread would keep the process running
  }
  if (next) tf.dispose(Object.values(await next));
  optimizer.dispose();
  const stepsRun = step - start;
  return { curves, threads: helper ? 2 : 1, resumedFrom: start, stepsRun, secondsPerStep: stepsRun ? (performance.now() - t0) / 1000 / stepsRun : 0 };
}

/** The worker thread of data-parallel training (grad-worker.ts), one request at a time. */
class GradHelper {
  private pending?: { resolve: (r: import('./grad-worker.js').GradReply) => void; reject: (e: Error) => void };

  private constructor(private readonly worker: import('node:worker_threads').Worker) {
    worker.on('message', (m: import('./grad-worker.js').GradReply & { error?: string }) => {
      const p = this.pending;
      this.pending = undefined;
      if (m.error) p?.reject(new Error(`gradient worker: ${m.error}`));
      else p?.resolve(m);
    });
    worker.on('error', (err) => this.pending?.reject(err));
  }

  static async start(recipe: import('./train-recipes.js').Recipe, backend: string): Promise<GradHelper> {
    const { Worker } = await import('node:worker_threads');
    const worker = new Worker(new URL('./grad-worker.js', import.meta.url), { workerData: { recipe, backend } });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    return new GradHelper(worker);
  }

  request(r: import('./grad-worker.js').GradRequest): Promise<import('./grad-worker.js').GradReply> {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.worker.postMessage(r, [r.x.buffer as ArrayBuffer, r.y.buffer as ArrayBuffer, ...r.weights.map((w) => w.buffer as ArrayBuffer)]);
    });
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

async function tensorsToBuffer(tensors: { name: string; tensor: TF.Tensor }[]) {
  const parts: Buffer[] = [];
  const index: Checkpoint['weights'] = [];
  let offset = 0;
  for (const { name, tensor } of tensors) {
    const data = await tensor.data();
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    index.push({ name, shape: tensor.shape, dtype: tensor.dtype, offset, length: buf.length });
    parts.push(Buffer.from(buf));
    offset += buf.length;
  }
  return { index, data: Buffer.concat(parts) };
}

async function saveCheckpoint(
  tf: Tf,
  dir: string,
  state: Pick<Checkpoint, 'step' | 'curves' | 'window' | 'windowSteps'>,
  model: TF.LayersModel,
  optimizer: TF.AdamOptimizer,
): Promise<void> {
  const w = await tensorsToBuffer(model.weights.map((v, i) => ({ name: `${i}`, tensor: v.read() })));
  // tfjs recomputes Adam's β^t as pow(β, t) on restore, while training multiplies step by step;
  // the two differ in the last bits. Saving the running products keeps a resume bit-exact.
  const acc = optimizer as unknown as { accBeta1: TF.Variable; accBeta2: TF.Variable };
  const opt = await tensorsToBuffer([
    ...(await optimizer.getWeights()),
    { name: 'accBeta1', tensor: acc.accBeta1 },
    { name: 'accBeta2', tensor: acc.accBeta2 },
  ]);
  await fs.mkdir(dir, { recursive: true });
  // Data files first, the index last (renamed into place): a crash mid-save leaves the previous checkpoint.
  const tag = state.step;
  await fs.writeFile(join(dir, `weights-${tag}.bin`), w.data);
  await fs.writeFile(join(dir, `optimizer-${tag}.bin`), opt.data);
  const ckpt: Checkpoint & { files: string[] } = { ...state, weights: w.index, optimizer: opt.index, files: [`weights-${tag}.bin`, `optimizer-${tag}.bin`] };
  await fs.writeFile(join(dir, 'checkpoint.json.tmp'), JSON.stringify(ckpt));
  await fs.rename(join(dir, 'checkpoint.json.tmp'), join(dir, 'checkpoint.json'));
  for (const f of await fs.readdir(dir)) {
    if (/^(weights|optimizer)-\d+\.bin$/.test(f) && !ckpt.files.includes(f)) await fs.unlink(join(dir, f)).catch(() => {});
  }
  void tf;
}

async function loadCheckpoint(
  tf: Tf,
  dir: string,
  model: TF.LayersModel,
  optimizer: TF.AdamOptimizer,
): Promise<Pick<Checkpoint, 'step' | 'curves' | 'window' | 'windowSteps'> | undefined> {
  let ckpt: Checkpoint & { files: string[] };
  try {
    ckpt = JSON.parse(await fs.readFile(join(dir, 'checkpoint.json'), 'utf8'));
  } catch {
    return undefined;
  }
  const wData = await fs.readFile(join(dir, ckpt.files[0]!));
  const oData = await fs.readFile(join(dir, ckpt.files[1]!));
  const toTensor = (buf: Buffer, e: Checkpoint['weights'][number]) => {
    const slice = buf.subarray(e.offset, e.offset + e.length);
    const copy = new Uint8Array(slice).buffer;
    const arr = e.dtype === 'int32' ? new Int32Array(copy) : new Float32Array(copy);
    return tf.tensor(arr, e.shape, e.dtype as TF.DataType);
  };
  if (ckpt.weights.length !== model.weights.length) {
    throw new Error(`checkpoint in ${dir} has ${ckpt.weights.length} weights, the model ${model.weights.length}: settings changed under the same key?`);
  }
  const weights = ckpt.weights.map((e) => toTensor(wData, e));
  model.setWeights(weights);
  tf.dispose(weights);
  const accEntries = ckpt.optimizer.filter((e) => e.name === 'accBeta1' || e.name === 'accBeta2');
  await optimizer.setWeights(ckpt.optimizer.filter((e) => !accEntries.includes(e)).map((e) => ({ name: e.name, tensor: toTensor(oData, e) })));
  const acc = optimizer as unknown as Record<string, TF.Variable>;
  for (const e of accEntries) {
    const t = toTensor(oData, e);
    acc[e.name]!.assign(t);
    t.dispose();
  }
  return ckpt;
}
