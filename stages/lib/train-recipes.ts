// A model and its loss described by plain data, so that a worker thread can build the very
// same network for data-parallel training (see grad-worker.ts).
import type * as TF from '@tensorflow/tfjs';
import { buildGridModel, gridLoss, type LossWeights, type NetSettings } from './grid-net.js';
import type { GridLayout } from './grid-layout.js';
import { buildClassifier } from './classifier-net.js';

type Tf = typeof import('@tensorflow/tfjs');

export type Recipe =
  | { kind: 'grid'; net: NetSettings; layout: GridLayout; lossWeights: LossWeights; ageWeights?: number[] }
  | { kind: 'classifier'; inputSize: number; filters: number[][]; denseUnits: number; classes: number; seed: number };

export interface Built {
  model: TF.LayersModel;
  loss: (pred: TF.Tensor, y: TF.Tensor) => { total: TF.Scalar; terms: Record<string, TF.Scalar> };
}

export function buildRecipe(tf: Tf, r: Recipe): Built {
  if (r.kind === 'grid') {
    return {
      model: buildGridModel(tf, r.net),
      loss: (pred, y) => gridLoss(tf, pred as TF.Tensor4D, y as TF.Tensor4D, r.layout, r.lossWeights, r.ageWeights),
    };
  }
  return {
    model: buildClassifier(tf, r),
    loss: (pred, y) => {
      const ce = tf.losses.softmaxCrossEntropy(y, pred) as TF.Scalar;
      return { total: ce, terms: { cross_entropy: ce } };
    },
  };
}
