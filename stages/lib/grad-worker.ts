// Worker thread of data-parallel training: builds the same model from a Recipe on its own
// backend instance (its own wasm memory and thread), and for each request computes the
// gradients of its share of the batch at the weights it is sent. The optimizer lives in the
// main thread only, so there is one source of truth for the weights.
import { parentPort, workerData } from 'node:worker_threads';
import type * as TF from '@tensorflow/tfjs';
import { initBackend, type BackendChoice } from './tf-backend.js';
import { buildRecipe, type Recipe } from './train-recipes.js';

export interface GradRequest {
  weights: Float32Array[];
  x: Float32Array;
  xShape: number[];
  y: Float32Array;
  yShape: number[];
}

export interface GradReply {
  grads: Float32Array[];
  total: number;
  terms: Record<string, number>;
}

const { recipe, backend } = workerData as { recipe: Recipe; backend: BackendChoice };
const { tf } = await initBackend(backend, { log: () => {} });
const { model, loss } = buildRecipe(tf, recipe);
const vars = model.trainableWeights.map((w) => (w as unknown as { val: TF.Variable }).val);

parentPort!.on('message', (m: GradRequest) => {
  try {
    vars.forEach((v, i) => {
      const t = tf.tensor(m.weights[i]!, v.shape);
      v.assign(t);
      t.dispose();
    });
    const x = tf.tensor(m.x, m.xShape);
    const y = tf.tensor(m.y, m.yShape);
    let terms: Record<string, TF.Scalar> = {};
    const { value, grads } = tf.variableGrads(() => {
      const r = loss(model.apply(x, { training: true }) as TF.Tensor, y);
      terms = Object.fromEntries(Object.entries(r.terms).map(([k, t]) => [k, tf.keep(t)]));
      return r.total;
    }, vars);
    const reply: GradReply = {
      // copies: a backend's typed arrays may view its own memory, which must never be transferred
      grads: vars.map((v) => new Float32Array(grads[v.name]!.dataSync() as Float32Array)),
      total: value.dataSync()[0]!,
      terms: Object.fromEntries(Object.entries(terms).map(([k, t]) => [k, t.dataSync()[0]!])),
    };
    tf.dispose([x, y, value, ...Object.values(grads), ...Object.values(terms)]);
    parentPort!.postMessage(reply, reply.grads.map((g) => g.buffer as ArrayBuffer));
  } catch (err) {
    parentPort!.postMessage({ error: (err as Error).stack ?? String(err) });
  }
});
parentPort!.postMessage({ ready: true });
