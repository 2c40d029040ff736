// train-crop-baselines: the seed's separate classifiers on face crops (one per task, each its
// own stage instance and cached artifact): 60x60 input, blocks of one 3x3 conv + 2x2 pool
// (10/13/16/19 filters), a dense ReLU layer, softmax. Reads the `crop` stage's TFRecords.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { StageContext, StageType } from '../runner/stage-type.js';
import { TRAIN_STAGE_PROPERTIES, TRAIN_VOLATILE_SETTINGS, type TrainStageSettings } from './lib/train-loop.js';

export interface CropTrainSettings extends TrainStageSettings {
  task: 'gender' | 'age';
  filters: number[][];
  dense_units: number;
}

export const CLASSES = { gender: 2, age: 7 } as const;

async function run(ctx: StageContext<CropTrainSettings>) {
  const s = ctx.settings;
  const { initBackend, backendRecord, parallelTraining } = await import('./lib/tf-backend.js');
  const { tf, info } = await initBackend(s.backend, { log: ctx.log });
  const ds = await import('./lib/face-dataset.js');
  const { trainLoop, stageLoopOptions } = await import('./lib/train-loop.js');
  const { saveModel } = await import('./lib/tf-model-io.js');
  const { labelOf } = await import('./lib/classifier-net.js');
  const { buildRecipe } = await import('./lib/train-recipes.js');

  const cropDir = ds.trainingShardDir(ctx.inputs, ctx.stageName, 'train-*.tfrecord face crops (a `crop` stage)');
  const all = await ds.loadRecords(ds.shardFiles(cropDir, 'train'), ctx.signal);
  const records = all.filter((r) => labelOf(r, s.task) >= 0);
  if (records.length === 0) throw new Error(`no labelled ${s.task} crops in ${cropDir}`);
  const size = records[0]!.width;
  const classes = CLASSES[s.task];
  ctx.log(`backend ${info.name} (${info.package} ${info.version}); ${records.length} ${size}x${size} crops; task ${s.task} (${classes} classes)`);
  const recipe = { kind: 'classifier' as const, inputSize: size, filters: s.filters, denseUnits: s.dense_units, classes, seed: s.seed };
  const { model, loss } = buildRecipe(tf, recipe);
  const result = await trainLoop({
    tf,
    model,
    steps: s.steps,
    learningRate: s.learning_rate,
    makeBatch: async (step) => {
      const batch = ds.sampleBatch(records.length, s.batch_size, s.seed, step).map((i) => records[i]!);
      const pixels = await ds.decodeBatch(batch, size);
      const labels = batch.map((r) => labelOf(r, s.task));
      return { x: tf.tensor4d(pixels, [batch.length, size, size, 3]), y: tf.oneHot(tf.tensor1d(labels, 'int32'), classes) };
    },
    loss,
    terms: ['cross_entropy'] as const,
    ...stageLoopOptions(ctx),
    parallel: parallelTraining(info, s.threads, recipe, ctx.log),
  });
  const backend = backendRecord(info);
  await saveModel(tf, model, join(ctx.outDir, 'model'), { task: s.task, backend });
  model.dispose();
  const { GENDER_LABELS, AGE_LABELS } = await import('./lib/grid-layout.js');
  const labels = s.task === 'gender' ? GENDER_LABELS : AGE_LABELS;
  await fs.writeFile(join(ctx.outDir, 'classifier.json'), JSON.stringify({ task: s.task, classes, labels, inputSize: size, input: { scale: 1 / 255, channelsOrder: 'RGB' } }, null, 2));
  await fs.writeFile(
    join(ctx.outDir, 'metrics.json'),
    JSON.stringify({
      backend,
      task: s.task,
      steps: s.steps,
      resumed_from: result.resumedFrom,
      train_images: records.length,
      final_loss: result.curves.total.at(-1) ?? null,
      loss_curves: result.curves,
    }),
  );
  return { seconds_per_step: result.secondsPerStep }; // manifest only: keeps the files reproducible
}

export default {
  name: 'train-crop-baselines',
  description: 'Train the seed\'s separate gender or age classifier on face crops (baseline)',
  module: import.meta.url,
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['task'],
    properties: {
      task: { enum: ['gender', 'age'], description: 'which classifier this instance trains' },
      ...TRAIN_STAGE_PROPERTIES,
      filters: {
        type: 'array',
        items: { type: 'array', minItems: 1, items: { type: 'integer', minimum: 1 } },
        minItems: 1,
        default: [[10], [13], [16], [19]],
        description: 'conv filters per block (one 3x3 conv each in the seed); set to the grid model\'s to pretrain its backbone',
      },
      dense_units: { type: 'integer', minimum: 1, default: 64 },
    },
  },
  volatileSettings: TRAIN_VOLATILE_SETTINGS,
  resources: { cpu: 2, gpu: 1, memoryMb: 2048 },
  run,
} satisfies StageType<CropTrainSettings>;
