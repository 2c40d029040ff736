// The crop classifiers' network (the seed's baseline): blocks of 3x3 SAME convs + ReLU, each
// followed by a 2x2 max-pool, then a dense ReLU layer and the class logits.
import type * as TF from '@tensorflow/tfjs';
import type { FaceRecord } from './face-dataset.js';

type Tf = typeof import('@tensorflow/tfjs');

export function buildClassifier(tf: Tf, o: { inputSize: number; filters: number[][]; denseUnits: number; classes: number; seed: number }): TF.LayersModel {
  let seed = o.seed * 1000;
  const init = () => tf.initializers.glorotUniform({ seed: seed++ });
  const input = tf.input({ shape: [o.inputSize, o.inputSize, 3], name: 'crop' });
  let x: TF.SymbolicTensor = input;
  o.filters.forEach((block, bi) => {
    block.forEach((f, ci) => {
      x = tf.layers.conv2d({ filters: f, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(), name: `block${bi + 1}_conv${ci + 1}` }).apply(x) as TF.SymbolicTensor;
    });
    x = tf.layers.maxPooling2d({ poolSize: 2, strides: 2, padding: 'same', name: `block${bi + 1}_pool` }).apply(x) as TF.SymbolicTensor;
  });
  x = tf.layers.flatten({ name: 'flatten' }).apply(x) as TF.SymbolicTensor;
  x = tf.layers.dense({ units: o.denseUnits, activation: 'relu', kernelInitializer: init(), name: 'dense' }).apply(x) as TF.SymbolicTensor;
  const logits = tf.layers.dense({ units: o.classes, kernelInitializer: init(), name: 'logits' }).apply(x) as TF.SymbolicTensor;
  return tf.model({ inputs: input, outputs: logits, name: 'crop_classifier' });
}

/** The label of a crop record for a task, or -1 when unknown. */
export function labelOf(r: FaceRecord, task: 'gender' | 'age'): number {
  const f = r.faces[0];
  if (!f) return -1;
  const v = task === 'gender' ? f.gender : f.ageBucket;
  return v >= 0 && v < (task === 'gender' ? 2 : 7) ? v : -1;
}
