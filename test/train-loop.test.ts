// Training loop: an interrupted training resumes from its checkpoint to exactly the weights of
// an uninterrupted run with the same seed (on the wasm backend the stages really train on).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../stages/lib/tf-backend.js';
import { buildGridModel, gridLoss, LOSS_TERMS } from '../stages/lib/grid-net.js';
import { buildTargets, CHANNELS, makeLayout } from '../stages/lib/grid-layout.js';
import { rng, stepSeed } from '../stages/lib/face-dataset.js';
import { trainLoop } from '../stages/lib/train-loop.js';
import { tempDir } from './helpers.js';

const { tf, info } = await initBackend('wasm', { log: () => {} });
const SIZE = 32;
const layout = makeLayout({ inputSize: SIZE, blocks: 3, sqrtWh: false, relative: false });
const ones = { conf_obj: 1, conf_noobj: 1, center: 1, size: 1, gender: 1, age: 1 };

/** A batch that depends only on the step: a bright square "face" on noise. */
async function makeBatch(step: number) {
  const rand = rng(stepSeed(5, step));
  const n = 4;
  const px = new Float32Array(n * SIZE * SIZE * 3);
  const targets = new Float32Array(n * layout.grid * layout.grid * CHANNELS);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < SIZE * SIZE * 3; j++) px[i * SIZE * SIZE * 3 + j] = rand() * 0.3;
    const w = 8 + Math.floor(rand() * 8);
    const x = Math.floor(rand() * (SIZE - w));
    const y = Math.floor(rand() * (SIZE - w));
    for (let yy = y; yy < y + w; yy++) for (let xx = x; xx < x + w; xx++) px[i * SIZE * SIZE * 3 + (yy * SIZE + xx) * 3] = 1;
    targets.set(buildTargets([{ box: [x, y, x + w, y + w], gender: i % 2, ageBucket: i % 7 }], layout), i * layout.grid * layout.grid * CHANNELS);
  }
  return { x: tf.tensor4d(px, [n, SIZE, SIZE, 3]), y: tf.tensor4d(targets, [n, layout.grid, layout.grid, CHANNELS]) };
}

function train(stateDir: string | undefined, stopAfter?: number) {
  const model = buildGridModel(tf, { filters: [[4], [6], [8]], head: 'conv1x1', denseUnits: 8, seed: 2, inputSize: SIZE });
  return trainLoop({
    tf,
    model,
    steps: 12,
    learningRate: 0.01,
    makeBatch,
    loss: (p, y) => gridLoss(tf, p as never, y as never, layout, ones),
    terms: LOSS_TERMS,
    stateDir,
    checkpointEvery: 5,
    logEvery: 2,
    stopAfter,
  }).then((r) => ({ r, weights: model.getWeights().map((w) => Array.from(w.dataSync())), model }));
}

test('resume from a checkpoint gives the same weights as an uninterrupted run', async () => {
  assert.equal(info.name, 'wasm');
  const full = await train(undefined);
  assert.equal(full.r.stepsRun, 12);
  const state = tempDir('pipe-ckpt-');
  const interrupted = await train(state, 7); // checkpoint at 5, stopped at 7
  assert.equal(interrupted.r.stepsRun, 7);
  assert.ok(existsSync(join(state, 'checkpoint.json')));
  assert.deepEqual(readdirSync(state).filter((f) => f.endsWith('.bin')).sort(), ['optimizer-5.bin', 'weights-5.bin']);
  const resumed = await train(state);
  assert.equal(resumed.r.resumedFrom, 5);
  assert.equal(resumed.r.stepsRun, 7);
  assert.deepEqual(resumed.weights, full.weights, 'bit-identical weights after resuming');
  assert.deepEqual(resumed.r.curves, full.r.curves, 'loss curves continue where they stopped');
  // …and training did something: the loss fell.
  assert.ok(full.r.curves.total.at(-1)! < full.r.curves.total[0]!, `loss ${full.r.curves.total.join(' ')}`);
  for (const m of [full, interrupted, resumed]) m.model.dispose();
});

test('data-parallel training on two threads takes the same steps as one thread, up to rounding', async () => {
  const recipe = { kind: 'grid' as const, net: { filters: [[4], [6], [8]], head: 'conv1x1' as const, denseUnits: 8, seed: 2, inputSize: SIZE }, layout, lossWeights: ones };
  const run = async (parallel: boolean) => {
    const model = buildGridModel(tf, recipe.net);
    const r = await trainLoop({
      tf,
      model,
      steps: 6,
      learningRate: 0.01,
      makeBatch,
      loss: (p, y) => gridLoss(tf, p as never, y as never, layout, ones),
      terms: LOSS_TERMS,
      checkpointEvery: 0,
      logEvery: 1,
      parallel: parallel ? { recipe, backend: 'wasm' } : undefined,
    });
    const weights = model.getWeights().map((w) => Array.from(w.dataSync()));
    model.dispose();
    return { r, weights };
  };
  const one = await run(false);
  const two = await run(true);
  assert.equal(one.r.threads, 1);
  assert.equal(two.r.threads, 2, 'the worker thread really took half of each batch');
  // Every batch here has one face per image, so the two half-batch means average to the full mean.
  let worst = 0;
  one.weights.forEach((w, i) => w.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - two.weights[i]![j]!)))));
  assert.ok(worst < 1e-4, `largest weight difference ${worst}`);
  one.r.curves.total.forEach((l, i) => assert.ok(Math.abs(l - two.r.curves.total[i]!) < 1e-4 * Math.max(1, l), `loss at step ${i + 1}: ${l} vs ${two.r.curves.total[i]}`));
});
