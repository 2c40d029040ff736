// The study's network and loss, in tfjs. The network outputs raw values per cell
// [batch, grid, grid, 14]; activations are applied in the loss and in decoding (grid-layout.ts),
// so the saved model is plain conv layers that any tfjs runtime (browser included) can load.
import type * as TF from '@tensorflow/tfjs';
import { AGE_BUCKETS, CH, CHANNELS, GENDERS, type GridLayout } from './grid-layout.js';

type Tf = typeof import('@tensorflow/tfjs');

export type HeadKind = 'conv1x1' | 'passthrough' | 'dense';

export interface NetSettings {
  /** Convolutions per block; a 2x2 max-pool follows each block. */
  filters: number[][];
  head: HeadKind;
  /** Hidden units of the dense head. */
  denseUnits: number;
  seed: number;
  /** null = any input size (multi-scale training); conv heads only. */
  inputSize: number | null;
}

/** 3x3 SAME convs + ReLU, 2x2 max-pool after each block, then the chosen head. */
export function buildGridModel(tf: Tf, s: NetSettings): TF.LayersModel {
  registerGridLayers(tf);
  let seed = s.seed * 1000;
  const init = () => tf.initializers.glorotUniform({ seed: seed++ });
  const input = tf.input({ shape: [s.inputSize, s.inputSize, 3], name: 'image' });
  let x: TF.SymbolicTensor = input;
  let passthroughSource: TF.SymbolicTensor | undefined;
  s.filters.forEach((block, bi) => {
    block.forEach((f, ci) => {
      x = tf.layers
        .conv2d({ filters: f, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(), name: `block${bi + 1}_conv${ci + 1}` })
        .apply(x) as TF.SymbolicTensor;
    });
    // YOLOv2's passthrough reads the last block's features before its pool (2x the grid).
    if (bi === s.filters.length - 1) passthroughSource = x;
    x = tf.layers.maxPooling2d({ poolSize: 2, strides: 2, padding: 'same', name: `block${bi + 1}_pool` }).apply(x) as TF.SymbolicTensor;
  });
  let out: TF.SymbolicTensor;
  if (s.head === 'dense') {
    if (s.inputSize === null) throw new Error('head: dense needs a fixed input size (it cannot be combined with input.multi_scale)');
    const grid = x.shape[1]!;
    const flat = tf.layers.flatten({ name: 'head_flatten' }).apply(x) as TF.SymbolicTensor;
    const hidden = tf.layers.dense({ units: s.denseUnits, activation: 'relu', kernelInitializer: init(), name: 'head_dense' }).apply(flat) as TF.SymbolicTensor;
    const cells = tf.layers.dense({ units: grid * grid * CHANNELS, kernelInitializer: init(), name: 'head_cells' }).apply(hidden) as TF.SymbolicTensor;
    out = tf.layers.reshape({ targetShape: [grid, grid, CHANNELS], name: 'head_grid' }).apply(cells) as TF.SymbolicTensor;
  } else {
    if (s.head === 'passthrough') {
      const reorg = new SpaceToDepth({ name: 'head_reorg' }).apply(passthroughSource!) as TF.SymbolicTensor;
      x = tf.layers.concatenate({ name: 'head_concat' }).apply([x, reorg]) as TF.SymbolicTensor;
    }
    out = tf.layers.conv2d({ filters: CHANNELS, kernelSize: 1, padding: 'same', kernelInitializer: init(), name: 'head_conv1x1' }).apply(x) as TF.SymbolicTensor;
  }
  return tf.model({ inputs: input, outputs: out, name: 'grid' });
}

let SpaceToDepth: new (args: { name: string }) => TF.layers.Layer;

/**
 * YOLOv2 reorg: [h, w, c] → [ceil(h/2), ceil(w/2), 4c], zero-padding odd sides first so that it
 * lines up with a SAME 2x2 pool. Registered as a custom layer so saved models load again.
 */
export function registerGridLayers(tf: Tf): void {
  if (SpaceToDepth) return;
  class SpaceToDepthLayer extends tf.layers.Layer {
    static className = 'PipeSpaceToDepth';
    override computeOutputShape(shape: TF.Shape | TF.Shape[]): TF.Shape {
      const s = shape as TF.Shape;
      const half = (v: number | null) => (v === null ? null : Math.ceil(v / 2));
      return [s[0]!, half(s[1]!), half(s[2]!), s[3]! * 4];
    }
    override call(inputs: TF.Tensor | TF.Tensor[]): TF.Tensor {
      return tf.tidy(() => {
        const x = (Array.isArray(inputs) ? inputs[0] : inputs) as TF.Tensor4D;
        const [b, h, w, c] = x.shape;
        const padded = h % 2 || w % 2 ? tf.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]]) : x;
        const H = Math.ceil(h / 2);
        const W = Math.ceil(w / 2);
        return padded.reshape([b, H, 2, W, 2, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([b, H, W, 4 * c]);
      });
    }
  }
  tf.serialization.registerClass(SpaceToDepthLayer);
  SpaceToDepth = SpaceToDepthLayer as unknown as typeof SpaceToDepth;
}

export interface LossWeights {
  conf_obj: number;
  conf_noobj: number;
  center: number;
  size: number;
  gender: number;
  age: number;
}

export const LOSS_TERMS = ['conf_obj', 'conf_noobj', 'center', 'size', 'gender', 'age'] as const;

/**
 * Sum of averaged terms (each weighted): log loss on confidence over face cells and over
 * empty cells; MSE on centre and on size in face cells only; softmax cross-entropy for gender
 * and age in face cells only (age optionally class-weighted). Works for any number of faces
 * per image: the mask comes from the targets.
 * raw, targets: [batch, grid, grid, 14].
 */
export function gridLoss(
  tf: Tf,
  raw: TF.Tensor4D,
  targets: TF.Tensor4D,
  layout: GridLayout,
  weights: LossWeights,
  ageClassWeights?: number[],
): { total: TF.Scalar; terms: Record<(typeof LOSS_TERMS)[number], TF.Scalar> } {
  const slice = (t: TF.Tensor4D, start: number, size: number) => t.slice([0, 0, 0, start], [-1, -1, -1, size]);
  const mask = slice(targets, CH.conf, 1); // 1 in face cells
  const nObj = mask.sum().maximum(1);
  const nEmpty = tf.scalar(1).sub(mask).sum().maximum(1);
  const confLogit = slice(raw, CH.conf, 1);
  // log loss written with softplus for stability: -log σ(x) = softplus(-x), -log(1-σ(x)) = softplus(x)
  const confObj = mask.mul(tf.softplus(confLogit.neg())).sum().div(nObj) as TF.Scalar;
  const confNoobj = tf.scalar(1).sub(mask).mul(tf.softplus(confLogit)).sum().div(nEmpty) as TF.Scalar;
  const centre = tf.sigmoid(slice(raw, CH.cy, 2));
  const center = mask.mul(centre.sub(slice(targets, CH.cy, 2)).square()).sum().div(nObj.mul(2)) as TF.Scalar;
  const sizeRaw = slice(raw, CH.h, 2);
  const sizeAct = layout.box.relative ? tf.sigmoid(sizeRaw) : tf.exp(tf.minimum(sizeRaw, Math.log(layout.box.maxCells)));
  const size = mask.mul(sizeAct.sub(slice(targets, CH.h, 2)).square()).sum().div(nObj.mul(2)) as TF.Scalar;
  const logits = (start: number, n: number) => {
    const l = slice(raw, start, n);
    return layout.classActivation === 'relu_softmax' ? tf.relu(l) : l;
  };
  const ce = (start: number, n: number) => tf.logSoftmax(logits(start, n)).mul(slice(targets, start, n)).sum(-1, true).neg(); // [b,g,g,1]
  const gender = mask.mul(ce(CH.gender, GENDERS)).sum().div(nObj) as TF.Scalar;
  let ageCe = ce(CH.age, AGE_BUCKETS);
  if (ageClassWeights) {
    const w = slice(targets, CH.age, AGE_BUCKETS).mul(tf.tensor1d(ageClassWeights)).sum(-1, true);
    ageCe = ageCe.mul(w);
  }
  const age = mask.mul(ageCe).sum().div(nObj) as TF.Scalar;
  const terms = { conf_obj: confObj, conf_noobj: confNoobj, center, size, gender, age };
  let total = tf.scalar(0);
  for (const k of LOSS_TERMS) total = total.add(terms[k].mul(weights[k]));
  return { total: total as TF.Scalar, terms };
}

/**
 * Per-class weights for the age loss, normalised so that their mean over the training faces is 1.
 * inverse_frequency: 1/n_c. effective_number (Cui et al. 2019): (1-β)/(1-β^n_c).
 */
export function ageClassWeights(counts: number[], scheme: 'none' | 'inverse_frequency' | 'effective_number', beta = 0.999): number[] | undefined {
  if (scheme === 'none') return undefined;
  const raw = counts.map((n) => (n === 0 ? 0 : scheme === 'inverse_frequency' ? 1 / n : (1 - beta) / (1 - beta ** n)));
  const total = counts.reduce((a, b) => a + b, 0);
  const mean = counts.reduce((a, n, i) => a + n * raw[i]!, 0) / Math.max(total, 1);
  return raw.map((w) => (mean > 0 ? w / mean : 1));
}
