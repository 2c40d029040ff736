// train-grid-model: the study's single CNN that finds faces and classifies gender and age in
// one pass (YOLO-style grid). Reads TFRecord shards from its needed `shard` stage; writes the
// model in tfjs format (model/model.json + weights.bin) and layout.json describing the output.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { StageContext, StageType } from '../runner/stage-type.js';
import { TRAIN_STAGE_PROPERTIES, TRAIN_VOLATILE_SETTINGS, type TrainStageSettings } from './lib/train-loop.js';

export interface GridTrainSettings extends TrainStageSettings {
  filters: number[][];
  head: 'conv1x1' | 'passthrough' | 'dense';
  dense_units: number;
  box: { sqrt_wh: boolean; relative: boolean };
  age_loss: { weighting: 'none' | 'inverse_frequency' | 'effective_number'; beta: number };
  sampling: { oversample_age: boolean };
  pretrain: 'none' | 'gender' | 'age';
  input: { size: number | null; multi_scale: boolean; scales: number[] };
  loss_weights: { conf_obj: number; conf_noobj: number; center: number; size: number; gender: number; age: number };
  class_activation: 'relu_softmax' | 'softmax';
}

const weight = { type: 'number', minimum: 0, default: 1 };

export const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...TRAIN_STAGE_PROPERTIES,
    filters: {
      type: 'array',
      minItems: 1,
      items: { type: 'array', minItems: 1, items: { type: 'integer', minimum: 1 } },
      default: [[10], [11, 13], [14, 16], [17, 19], [20, 22]],
      description: '3x3 conv filters per block; a 2x2 max-pool follows each block',
    },
    head: { enum: ['conv1x1', 'passthrough', 'dense'], default: 'conv1x1', description: '1x1 conv; YOLOv2 reorg of the last block before pooling; or a dense layer for global context' },
    dense_units: { type: 'integer', minimum: 1, default: 256 },
    box: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        sqrt_wh: { type: 'boolean', default: false, description: 'predict √w, √h' },
        relative: { type: 'boolean', default: false, description: 'w, h relative to the image (sigmoid, 0-1) instead of exp in cell units' },
      },
    },
    age_loss: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        weighting: { enum: ['none', 'inverse_frequency', 'effective_number'], default: 'none' },
        beta: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.999, description: 'for effective_number' },
      },
    },
    sampling: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: { oversample_age: { type: 'boolean', default: false, description: 'draw images so every age bucket is equally frequent' } },
    },
    pretrain: { enum: ['none', 'gender', 'age'], default: 'none', description: 'initialise matching backbone convs from a needed train-crop-baselines artifact of this task' },
    input: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        size: { type: ['integer', 'null'], minimum: 8, default: null, description: 'input side (null: the shards\' image size)' },
        multi_scale: { type: 'boolean', default: false, description: 'YOLOv2-style: a different input size per batch' },
        scales: { type: 'array', items: { type: 'integer', minimum: 8 }, default: [], description: 'sizes for multi_scale (default: size ± 1 and 2 strides)' },
      },
    },
    loss_weights: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: { conf_obj: weight, conf_noobj: weight, center: weight, size: weight, gender: weight, age: weight },
    },
    class_activation: { enum: ['relu_softmax', 'softmax'], default: 'relu_softmax', description: 'the seed applied ReLU before softmax' },
  },
};

async function run(ctx: StageContext<GridTrainSettings>) {
  const s = ctx.settings;
  const { initBackend, backendRecord } = await import('./lib/tf-backend.js');
  const { tf, info } = await initBackend(s.backend, { log: ctx.log });
  const { ageClassWeights, LOSS_TERMS } = await import('./lib/grid-net.js');
  const { buildRecipe } = await import('./lib/train-recipes.js');
  const { parallelTraining } = await import('./lib/tf-backend.js');
  const { makeLayout, buildTargets, CHANNELS, gridSizeFor } = await import('./lib/grid-layout.js');
  const ds = await import('./lib/face-dataset.js');
  const { trainLoop, stageLoopOptions } = await import('./lib/train-loop.js');
  const { saveModel, loadModel } = await import('./lib/tf-model-io.js');

  const shardDir = ds.trainingShardDir(ctx.inputs, ctx.stageName, 'train-*.tfrecord shards (a `shard` stage)');
  const records = await ds.loadRecords(ds.shardFiles(shardDir, 'train'), ctx.signal);
  if (records.length === 0) throw new Error(`no training records in ${shardDir}`);
  const dataSize = records[0]!.width;
  const size = s.input.size ?? dataSize;
  const blocks = s.filters.length;
  const stride = 2 ** blocks;
  const scales = s.input.multi_scale
    ? (s.input.scales.length ? s.input.scales : [-2, -1, 0, 1, 2].map((k) => size + k * stride).filter((v) => v >= stride))
    : [size];
  if (s.input.multi_scale && s.head === 'dense') throw new Error('input.multi_scale cannot be combined with head: dense (a dense head needs one input size)');
  if (s.head === 'passthrough') {
    for (const sc of scales) if (Math.ceil(sc / 2 ** (blocks - 1)) % 2 && sc % stride) ctx.log(`note: input ${sc} is not a multiple of ${stride}; the passthrough pads odd maps`);
  }
  // How the shards were letterboxed (recorded by letterbox, carried by shard): new images must be padded the same way.
  const geometry = await fs.readFile(join(shardDir, 'letterbox.json'), 'utf8').then((t) => JSON.parse(t) as { padding?: 'bottom-right' | 'centre' }, () => ({ padding: undefined }));
  if (!geometry.padding) ctx.log('note: the shards carry no letterbox.json; assuming bottom-right padding');
  const layout = makeLayout({ inputSize: size, blocks, sqrtWh: s.box.sqrt_wh, relative: s.box.relative, classActivation: s.class_activation, padding: geometry.padding ?? 'bottom-right' });
  const bucketCounts = new Array(7).fill(0);
  for (const r of records) for (const f of r.faces) if (f.ageBucket >= 0 && f.ageBucket < 7) bucketCounts[f.ageBucket]++;
  const ageWeights = ageClassWeights(bucketCounts, s.age_loss.weighting, s.age_loss.beta);
  const sampleWeights = s.sampling.oversample_age
    ? records.map((r) => {
        const b = r.faces[0]?.ageBucket ?? -1;
        return b >= 0 && bucketCounts[b] ? 1 / bucketCounts[b] : 0;
      })
    : undefined;
  ctx.log(`backend ${info.name} (${info.package} ${info.version}, threads ${info.threads}, simd ${info.simd}); ${records.length} training images of ${dataSize}px; input ${s.input.multi_scale ? scales.join('/') : size}px; grid ${layout.grid}x${layout.grid}`);
  ctx.log(`age buckets in training data: ${bucketCounts.join(' ')}${ageWeights ? `; age loss weights ${ageWeights.map((w) => w.toFixed(2)).join(' ')}` : ''}`);

  const recipe = {
    kind: 'grid' as const,
    net: { filters: s.filters, head: s.head, denseUnits: s.dense_units, seed: s.seed, inputSize: s.input.multi_scale ? null : size },
    layout,
    lossWeights: s.loss_weights,
    ageWeights,
  };
  const { model, loss } = buildRecipe(tf, recipe);
  if (s.pretrain !== 'none') await pretrainBackbone(ctx, tf, model, s.pretrain, loadModel);

  const makeBatch = async (step: number) => {
    const idx = ds.sampleBatch(records.length, s.batch_size, s.seed, step, sampleWeights);
    const scale = scales[Math.floor(ds.rng(ds.stepSeed(s.seed + 7919, step))() * scales.length)]!;
    const batch = idx.map((i) => records[i]!);
    const pixels = await ds.decodeBatch(batch, scale);
    const grid = gridSizeFor(layout, scale);
    const targets = new Float32Array(batch.length * grid * grid * CHANNELS);
    batch.forEach((r, i) => {
      const faces = ds.scaledFaces(r, scale).filter((f) => f.gender >= 0 && f.ageBucket >= 0 && f.ageBucket < 7);
      targets.set(buildTargets(faces.map((f) => ({ box: f.box, gender: f.gender, ageBucket: f.ageBucket })), layout, scale), i * grid * grid * CHANNELS);
    });
    return { x: tf.tensor4d(pixels, [batch.length, scale, scale, 3]), y: tf.tensor4d(targets, [batch.length, grid, grid, CHANNELS]) };
  };
  const result = await trainLoop({
    tf,
    model,
    steps: s.steps,
    learningRate: s.learning_rate,
    makeBatch,
    loss,
    terms: LOSS_TERMS,
    ...stageLoopOptions(ctx),
    parallel: parallelTraining(info, s.threads, recipe, ctx.log),
  });
  const backend = backendRecord(info);
  await saveModel(tf, model, join(ctx.outDir, 'model'), { layout, backend });
  await fs.writeFile(join(ctx.outDir, 'layout.json'), JSON.stringify(layout, null, 2));
  model.dispose();
  const last = Object.fromEntries(Object.entries(result.curves).filter(([k]) => k !== 'step').map(([k, v]) => [k, v.at(-1) ?? null]));
  const metrics = {
    backend,
    steps: s.steps,
    resumed_from: result.resumedFrom,
    training_threads: result.threads,
    train_images: records.length,
    final_loss: last,
    loss_curves: result.curves,
  };
  // Timings go to the manifest only (returned), not into the published files: a rerun that
  // trains the same weights then publishes the same bytes, and evaluation is cut off.
  const timings = {
    seconds_per_step: round(result.secondsPerStep),
    train_img_per_s: round(result.secondsPerStep ? s.batch_size / result.secondsPerStep : 0),
  };
  ctx.log(`trained ${result.stepsRun} steps (${timings.seconds_per_step}s/step); final loss ${Number(last.total).toFixed(4)}`);
  await fs.writeFile(join(ctx.outDir, 'metrics.json'), JSON.stringify(metrics));
  return { ...metrics, ...timings };
}

/** Copy conv kernels from a crop classifier whose shapes match the grid model's, in order. */
async function pretrainBackbone(
  ctx: StageContext<GridTrainSettings>,
  tf: typeof import('@tensorflow/tfjs'),
  model: import('@tensorflow/tfjs').LayersModel,
  task: string,
  loadModel: (tf: typeof import('@tensorflow/tfjs'), dir: string) => Promise<import('@tensorflow/tfjs').LayersModel>,
): Promise<void> {
  let source: string | undefined;
  for (const dir of Object.values(ctx.inputs)) {
    try {
      const info = JSON.parse(await fs.readFile(join(dir, 'classifier.json'), 'utf8'));
      if (info.task === task) source = dir;
    } catch {
      /* not a classifier artifact */
    }
  }
  if (!source) throw new Error(`pretrain: ${task} needs a train-crop-baselines stage with task ${task} in \`needs\``);
  const donor = await loadModel(tf, join(source, 'model'));
  const convs = (m: import('@tensorflow/tfjs').LayersModel) => m.layers.filter((l) => l.getClassName() === 'Conv2D' && !l.name.startsWith('head'));
  const from = convs(donor);
  let copied = 0;
  for (const [i, layer] of convs(model).entries()) {
    const d = from[i];
    if (!d) break;
    const src = d.getWeights();
    const dst = layer.getWeights();
    if (src.length === dst.length && src.every((w, k) => w.shape.join() === dst[k]!.shape.join())) {
      layer.setWeights(src);
      copied++;
    } else break; // later layers would see different features: stop at the first mismatch
  }
  donor.dispose();
  if (copied === 0) throw new Error(`pretrain: the ${task} classifier's first conv does not match the grid model's (set the crop classifier's filters to the grid's)`);
  ctx.log(`pretrain: initialised ${copied} backbone conv layer(s) from the ${task} crop classifier`);
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

export default {
  name: 'train-grid-model',
  description: 'Train the YOLO-style grid CNN (faces + gender + age in one pass) on TFRecord shards',
  module: import.meta.url,
  schema,
  volatileSettings: TRAIN_VOLATILE_SETTINGS,
  resources: { cpu: 2, gpu: 1, memoryMb: 4096 },
  run,
} satisfies StageType<GridTrainSettings>;
