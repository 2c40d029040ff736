// The grid network, its targets and its loss: known values, masks, ablations, decoding.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { buildTargets, CH, CHANNELS, decodeCells, detect, makeLayout, sizeTarget } from '../stages/lib/grid-layout.js';
import { ageClassWeights, buildGridModel, gridLoss, LOSS_TERMS } from '../stages/lib/grid-net.js';
import { averagePrecision, iou, nms, type Box } from '../stages/lib/boxes.js';
import { letterboxGeometry } from '../stages/lib/grid-layout.js';
import { letterboxGeometry as stageGeometry } from '../stages/lib/face-geometry.js';

await tf.setBackend('cpu'); // tiny shapes: the stock kernels are exact and fast enough here
const ones = { conf_obj: 1, conf_noobj: 1, center: 1, size: 1, gender: 1, age: 1 };

// A 2x2 grid (input 64, stride 32) with one face whose centre falls in cell row 0, col 1.
const layout = makeLayout({ inputSize: 64, blocks: 5, sqrtWh: false, relative: false });
const faceTop = { box: [40, 0, 56, 16] as Box, gender: 1, ageBucket: 3 }; // centre (48, 8): row 0, col 1

function lossOf(raw: Float32Array, targets: Float32Array, l = layout, ageW?: number[]) {
  const g = l.grid;
  return tf.tidy(() => {
    const r = gridLoss(tf, tf.tensor4d(raw, [1, g, g, CHANNELS]), tf.tensor4d(targets, [1, g, g, CHANNELS]), l, ones, ageW);
    return { total: r.total.dataSync()[0]!, ...Object.fromEntries(LOSS_TERMS.map((k) => [k, r.terms[k].dataSync()[0]!])) } as Record<string, number>;
  });
}

test('targets: the face lands in its centre cell with offsets, size in cells and one-hot labels', () => {
  const t = buildTargets([faceTop], layout);
  assert.equal(layout.grid, 2);
  const o = (0 * 2 + 1) * CHANNELS;
  assert.equal(t[o + CH.conf], 1);
  assert.equal(t[o + CH.cy], 8 / 32);
  assert.equal(t[o + CH.cx], 48 / 32 - 1);
  assert.equal(t[o + CH.h], 16 / 32);
  assert.equal(t[o + CH.w], 16 / 32);
  assert.equal(t[o + CH.gender + 1], 1);
  assert.equal(t[o + CH.age + 3], 1);
  const others = [0, 2, 3].flatMap((c) => Array.from(t.subarray(c * CHANNELS, (c + 1) * CHANNELS)));
  assert.ok(others.every((v) => v === 0), 'cells without a face are all zero');
  // Two faces in one image land in two cells; two in one cell: the larger owns it.
  const two = buildTargets([faceTop, { box: [0, 40, 20, 60], gender: 0, ageBucket: 0 }], layout);
  assert.equal(two[(1 * 2 + 0) * CHANNELS + CH.conf], 1);
  const clash = buildTargets([faceTop, { box: [34, 0, 62, 28], gender: 0, ageBucket: 6 }], layout);
  assert.equal(clash[o + CH.age + 6], 1, 'larger face owns the shared cell');
  assert.equal(clash[o + CH.age + 3], 0);
});

test('loss on hand-built targets equals the hand-computed value', () => {
  const t = buildTargets([faceTop], layout);
  const raw = new Float32Array(4 * CHANNELS); // all zeros: σ=0.5, exp=1, uniform softmax
  const l = lossOf(raw, t);
  const ln2 = Math.log(2);
  assert.ok(Math.abs(l.conf_obj! - ln2) < 1e-6);
  assert.ok(Math.abs(l.conf_noobj! - ln2) < 1e-6);
  // centre: σ(0)=0.5 vs (0.25, 0.5) → ((0.25)² + 0²)/2
  assert.ok(Math.abs(l.center! - 0.03125) < 1e-6, `center ${l.center}`);
  // size: exp(0)=1 vs (0.5, 0.5) → (0.25 + 0.25)/2
  assert.ok(Math.abs(l.size! - 0.25) < 1e-6, `size ${l.size}`);
  assert.ok(Math.abs(l.gender! - ln2) < 1e-6);
  assert.ok(Math.abs(l.age! - Math.log(7)) < 1e-6);
  assert.ok(Math.abs(l.total! - (3 * ln2 + 0.03125 + 0.25 + Math.log(7))) < 1e-5);
  // A confident, correct prediction has a much lower loss.
  const good = new Float32Array(raw);
  const o = 1 * CHANNELS;
  good[o + CH.conf] = 8;
  for (const c of [0, 2, 3]) good[c * CHANNELS + CH.conf] = -8;
  good[o + CH.cy] = Math.log(0.25 / 0.75);
  good[o + CH.h] = Math.log(0.5);
  good[o + CH.w] = Math.log(0.5);
  good[o + CH.gender + 1] = 9;
  good[o + CH.age + 3] = 9;
  const lg = lossOf(good, t);
  assert.ok(lg.total! < 0.01, `total ${lg.total}`);
  assert.ok(lg.center! < 1e-10 && lg.size! < 1e-10);
});

test('masks: face terms ignore cells without faces; no-face confidence ignores the face cell', () => {
  const t = buildTargets([faceTop], layout);
  const base = lossOf(new Float32Array(4 * CHANNELS), t);
  const noisy = new Float32Array(4 * CHANNELS);
  for (const c of [0, 2, 3]) for (let k = 1; k < CHANNELS; k++) noisy[c * CHANNELS + k] = (k % 3) - 1.5;
  const n = lossOf(noisy, t);
  for (const k of ['conf_obj', 'conf_noobj', 'center', 'size', 'gender', 'age']) assert.ok(Math.abs(n[k]! - base[k]!) < 1e-6, k);
  const conf = new Float32Array(4 * CHANNELS);
  conf[0 * CHANNELS + CH.conf] = 3; // an empty cell says "face"
  const c = lossOf(conf, t);
  assert.ok(c.conf_noobj! > base.conf_noobj!);
  assert.ok(Math.abs(c.conf_obj! - base.conf_obj!) < 1e-6);
  // An image without faces: face terms vanish instead of dividing by zero.
  const empty = lossOf(new Float32Array(4 * CHANNELS), buildTargets([], layout));
  assert.equal(empty.center, 0);
  assert.equal(empty.age, 0);
  assert.ok(Math.abs(empty.conf_noobj! - Math.log(2)) < 1e-6);
});

test('ablations change the targets and the loss as specified', () => {
  const sq = makeLayout({ inputSize: 64, blocks: 5, sqrtWh: true, relative: false });
  const rel = makeLayout({ inputSize: 64, blocks: 5, sqrtWh: false, relative: true });
  assert.equal(sizeTarget(16, layout, 64), 0.5);
  assert.equal(sizeTarget(16, sq, 64), Math.sqrt(0.5));
  assert.equal(sizeTarget(16, rel, 64), 0.25);
  const zeros = new Float32Array(4 * CHANNELS);
  // relative: sigmoid(0) = 0.5 vs 0.25 → 0.0625; sqrt: exp(0)=1 vs √0.5
  assert.ok(Math.abs(lossOf(zeros, buildTargets([faceTop], rel), rel).size! - 0.0625) < 1e-6);
  assert.ok(Math.abs(lossOf(zeros, buildTargets([faceTop], sq), sq).size! - (1 - Math.sqrt(0.5)) ** 2) < 1e-6);
  // Decoding inverts the parameterisations.
  for (const l of [layout, sq, rel]) {
    const raw = new Float32Array(4 * CHANNELS);
    const target = buildTargets([faceTop], l);
    const o = CHANNELS;
    raw[o + CH.conf] = 5;
    raw[o + CH.cy] = Math.log(target[o + CH.cy]! / (1 - target[o + CH.cy]!));
    raw[o + CH.cx] = Math.log(target[o + CH.cx]! / (1 - target[o + CH.cx]!));
    for (const ch of [CH.h, CH.w]) raw[o + ch] = l.box.relative ? Math.log(target[o + ch]! / (1 - target[o + ch]!)) : Math.log(target[o + ch]!);
    const [d] = detect(raw, l, { threshold: 0.7 });
    assert.ok(d && iou(d.box, faceTop.box) > 0.999, `decode round trip for ${JSON.stringify(l.box)}`);
  }
  // Age loss weighting: inverse frequency up-weights rare buckets, mean weight over faces is 1.
  const counts = [100, 50, 10, 5, 1, 0, 20];
  const inv = ageClassWeights(counts, 'inverse_frequency')!;
  assert.ok(inv[4]! > inv[0]! * 50);
  const mean = counts.reduce((a, n, i) => a + n * inv[i]!, 0) / counts.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(mean - 1) < 1e-9);
  const eff = ageClassWeights(counts, 'effective_number', 0.99)!;
  assert.ok(eff[4]! > eff[0]! && eff[4]! < inv[4]!, 'effective number is between none and inverse frequency');
  assert.equal(ageClassWeights(counts, 'none'), undefined);
  const t = buildTargets([faceTop], layout);
  const w = new Array(7).fill(1);
  w[3] = 2.5;
  assert.ok(Math.abs(lossOf(zeros, t, layout, w).age! - 2.5 * Math.log(7)) < 1e-5, 'the face\'s bucket weight scales its age loss');
});

test('heads: conv1x1, passthrough and dense give the grid output; multi-scale takes any size', () => {
  const filters = [[4], [6], [8]];
  const shapes: Record<string, number[]> = {};
  const params: Record<string, number> = {};
  for (const head of ['conv1x1', 'passthrough', 'dense'] as const) {
    const m = buildGridModel(tf, { filters, head, denseUnits: 16, seed: 1, inputSize: 40 });
    const out = m.predict(tf.zeros([2, 40, 40, 3])) as tf.Tensor;
    shapes[head] = out.shape;
    params[head] = m.countParams();
    out.dispose();
    m.dispose();
  }
  assert.deepEqual(shapes.conv1x1, [2, 5, 5, CHANNELS]);
  assert.deepEqual(shapes.passthrough, [2, 5, 5, CHANNELS]);
  assert.deepEqual(shapes.dense, [2, 5, 5, CHANNELS]);
  // passthrough: the 1x1 head also sees the reorganised 10x10x8 map (4*8 more input channels)
  assert.equal(params.passthrough! - params.conv1x1!, 4 * 8 * CHANNELS);
  assert.ok(params.dense! > params.conv1x1! * 5);
  const ms = buildGridModel(tf, { filters, head: 'conv1x1', denseUnits: 16, seed: 1, inputSize: null });
  for (const [size, grid] of [[32, 4], [48, 6], [64, 8]] as const) {
    const out = ms.predict(tf.zeros([1, size, size, 3])) as tf.Tensor;
    assert.deepEqual(out.shape, [1, grid, grid, CHANNELS]);
    out.dispose();
  }
  ms.dispose();
  assert.throws(() => buildGridModel(tf, { filters, head: 'dense', denseUnits: 16, seed: 1, inputSize: null }), /dense needs a fixed input size/);
  // The same seed gives the same initial weights.
  const a = buildGridModel(tf, { filters, head: 'conv1x1', denseUnits: 16, seed: 3, inputSize: 40 });
  const b = buildGridModel(tf, { filters, head: 'conv1x1', denseUnits: 16, seed: 3, inputSize: 40 });
  assert.deepEqual(Array.from(a.getWeights()[0]!.dataSync()), Array.from(b.getWeights()[0]!.dataSync()));
});

test('boxes: IoU, NMS and average precision on known cases', () => {
  assert.equal(iou([0, 0, 10, 10], [5, 0, 15, 10]), 50 / 150);
  const kept = nms(
    [
      { box: [0, 0, 10, 10] as Box, confidence: 0.9 },
      { box: [1, 1, 11, 11] as Box, confidence: 0.8 },
      { box: [20, 20, 30, 30] as Box, confidence: 0.7 },
    ],
    0.2,
  );
  assert.deepEqual(kept.map((k) => k.confidence), [0.9, 0.7]);
  const perfect = averagePrecision([{ preds: [{ box: [0, 0, 10, 10], confidence: 0.9 }], truths: [[0, 0, 10, 10]] }], 0.5);
  assert.equal(perfect, 1);
  // One hit ranked below one false positive, and one missed truth: P/R = (0.5, 0.5) → AP 0.25
  const half = averagePrecision(
    [
      { preds: [{ box: [50, 50, 60, 60], confidence: 0.9 }, { box: [0, 0, 10, 10], confidence: 0.8 }], truths: [[0, 0, 10, 10]] },
      { preds: [], truths: [[0, 0, 10, 10]] },
    ],
    0.5,
  );
  assert.ok(Math.abs(half - 0.25) < 1e-12, `ap ${half}`);
  const cells = decodeCells(new Float32Array(4 * CHANNELS), layout);
  assert.equal(cells.length, 4);
  assert.ok(cells.every((c) => c.confidence === 0.5));
});

test('the browser/detect letterbox geometry equals the letterbox stage\'s', () => {
  for (const [w, h] of [[400, 200], [200, 400], [333, 250], [250, 250], [1001, 77], [3, 1000]]) {
    for (const size of [64, 250]) {
      for (const padding of ['bottom-right', 'centre'] as const) {
        const a = letterboxGeometry(w!, h!, size, padding);
        const b = stageGeometry(w!, h!, size, padding);
        assert.deepEqual([a.scale, a.width, a.height, a.padX, a.padY], [b.scale, b.resizedWidth, b.resizedHeight, b.pad[0], b.pad[1]]);
      }
    }
  }
});
