// evaluate: the seed's metrics for the grid model on the test shards (confidence > 0.7, NMS at
// IoU 0.2, a prediction matches a true face when IoU > 0.2; a miss counts 0 IoU and wrong
// labels), plus AP50, accuracies on detected faces only, balanced age accuracy, confusion
// matrices, per-bucket accuracy, the crop baselines on ground-truth crops, and the speed of the
// single model versus detector + two classifiers on the same images and backend.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { StageContext, StageType } from '../runner/stage-type.js';
import type { FaceRecord } from './lib/face-dataset.js';

interface EvaluateSettings {
  threshold: number;
  nms_iou: number;
  match_iou: number;
  ap_iou: number;
  gallery: number;
  speed_images: number;
  backend: 'auto' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
}

type Tf = typeof import('@tensorflow/tfjs');

/** The needed outputs by what they hold; the test splits are read once, here. */
async function findInputs(ctx: StageContext<EvaluateSettings>) {
  const { loadRecords, shardFiles } = await import('./lib/face-dataset.js');
  let modelDir: string | undefined;
  let shards: { dir: string; test: FaceRecord[] } | undefined;
  let crops: FaceRecord[] | undefined;
  const classifiers: Record<string, { dir: string; inputSize: number }> = {};
  for (const dir of Object.values(ctx.inputs)) {
    const files = await fs.readdir(dir);
    if (files.includes('layout.json')) modelDir = dir;
    else if (files.includes('classifier.json')) {
      const info = JSON.parse(await fs.readFile(join(dir, 'classifier.json'), 'utf8'));
      classifiers[info.task] = { dir, inputSize: info.inputSize };
    }
    else if (files.some((f) => /^test-.*\.tfrecord$/.test(f))) {
      // Shards locate their faces; crops are the face itself.
      const test = await loadRecords(shardFiles(dir, 'test'), ctx.signal);
      if (test.some((r) => r.boxed)) shards ??= { dir, test };
      else crops ??= test;
    }
  }
  if (!modelDir) throw new Error(`${ctx.stageName}: needs a train-grid-model stage (an output with layout.json)`);
  if (!shards) throw new Error(`${ctx.stageName}: needs a shard stage with test-*.tfrecord files of boxed faces`);
  return { modelDir, shards, crops, classifiers };
}

async function run(ctx: StageContext<EvaluateSettings>) {
  const s = ctx.settings;
  const { initBackend } = await import('./lib/tf-backend.js');
  const { tf, info } = await initBackend(s.backend, { log: ctx.log });
  const ds = await import('./lib/face-dataset.js');
  const { loadModel } = await import('./lib/tf-model-io.js');
  const { detect, decodeCells, AGE_BUCKETS } = await import('./lib/grid-layout.js');
  const { matchBoxes, averagePrecision, nms, iou } = await import('./lib/boxes.js');
  const { registerGridLayers } = await import('./lib/grid-net.js');
  const { labelOf } = await import('./lib/classifier-net.js');
  registerGridLayers(tf);

  const inputs = await findInputs(ctx);
  const layout = JSON.parse(await fs.readFile(join(inputs.modelDir, 'layout.json'), 'utf8'));
  const model = await loadModel(tf, join(inputs.modelDir, 'model'));
  const test = inputs.shards.test;
  const size = layout.inputSize as number;
  ctx.log(`backend ${info.name} (${info.package} ${info.version}); ${test.length} test images at ${size}px`);

  // ---- detection and labels ----
  let faces = 0;
  let iouSum = 0;
  let genderRight = 0;
  let ageRight = 0;
  let detected = 0;
  let genderRightDet = 0;
  let ageRightDet = 0;
  const genderConfusion = [0, 1].map(() => [0, 0]);
  const ageConfusion = Array.from({ length: AGE_BUCKETS }, () => new Array(AGE_BUCKETS).fill(0));
  const bucketTotal = new Array(AGE_BUCKETS).fill(0);
  const bucketRight = new Array(AGE_BUCKETS).fill(0);
  const apImages: { preds: { box: [number, number, number, number]; confidence: number }[]; truths: [number, number, number, number][] }[] = [];
  const gallery: unknown[] = [];
  const BATCH = 16;
  for (let start = 0; start < test.length; start += BATCH) {
    ctx.signal.throwIfAborted();
    const batch = test.slice(start, start + BATCH);
    const pixels = await ds.decodeBatch(batch, size);
    const out = tf.tidy(() => model.predict(tf.tensor4d(pixels, [batch.length, size, size, 3])) as import('@tensorflow/tfjs').Tensor);
    const raw = await out.data();
    out.dispose();
    const per = raw.length / batch.length;
    batch.forEach((r, i) => {
      const cellsRaw = raw.subarray(i * per, (i + 1) * per);
      const dets = detect(cellsRaw, layout, { threshold: s.threshold, nmsIou: s.nms_iou });
      const truths = ds.scaledFaces(r, size).filter((f) => f.gender >= 0 && f.ageBucket >= 0 && f.ageBucket < AGE_BUCKETS);
      const { truthToPred } = matchBoxes(dets, truths.map((t) => t.box), s.match_iou);
      truths.forEach((t, ti) => {
        faces++;
        bucketTotal[t.ageBucket]++;
        const p = truthToPred[ti]!;
        if (p < 0) return;
        const d = dets[p]!;
        detected++;
        iouSum += iou(d.box, t.box);
        genderConfusion[t.gender]![d.gender]!++;
        ageConfusion[t.ageBucket]![d.ageBucket]!++;
        if (d.gender === t.gender) {
          genderRight++;
          genderRightDet++;
        }
        if (d.ageBucket === t.ageBucket) {
          ageRight++;
          ageRightDet++;
          bucketRight[t.ageBucket]++;
        }
      });
      // AP ranks every cell's prediction (after NMS), not only those above the threshold.
      const ranked = nms(decodeCells(cellsRaw, layout).filter((d) => d.confidence > 0.001), s.nms_iou);
      apImages.push({ preds: ranked.map((d) => ({ box: d.box, confidence: d.confidence })), truths: truths.map((t) => t.box) });
      if (gallery.length < s.gallery) gallery.push({ record: r, dets, truths });
    });
    ctx.progress(Math.min(start + BATCH, test.length), test.length, 'images');
  }
  const perBucket = bucketTotal.map((n, b) => (n ? bucketRight[b] / n : null));
  const seen = perBucket.filter((v): v is number => v !== null);

  // ---- crop baselines on ground-truth crops ----
  const classifiers: Record<string, import('@tensorflow/tfjs').LayersModel> = {};
  const classifierSize: Record<string, number> = {};
  for (const [task, { dir, inputSize }] of Object.entries(inputs.classifiers)) {
    classifiers[task] = await loadModel(tf, join(dir, 'model'));
    classifierSize[task] = inputSize;
  }
  const cropAcc: Record<string, number | null> = { gender: null, age: null };
  if (inputs.crops && Object.keys(classifiers).length) {
    const crops = inputs.crops;
    for (const [task, m] of Object.entries(classifiers)) {
      const labelled = crops.filter((r) => labelOf(r, task as 'gender' | 'age') >= 0);
      let right = 0;
      for (let i = 0; i < labelled.length; i += 64) {
        const b = labelled.slice(i, i + 64);
        const px = await ds.decodeBatch(b, classifierSize[task]!);
        const pred = tf.tidy(() => (m.predict(tf.tensor4d(px, [b.length, classifierSize[task]!, classifierSize[task]!, 3])) as import('@tensorflow/tfjs').Tensor).argMax(-1));
        const labels = await pred.data();
        pred.dispose();
        b.forEach((r, k) => (right += labels[k] === labelOf(r, task as 'gender' | 'age') ? 1 : 0));
      }
      cropAcc[task] = labelled.length ? right / labelled.length : null;
    }
  }

  // ---- speed: one model vs detector + two classifiers, same images, same backend ----
  const speed = await measureSpeed(tf, model, classifiers, classifierSize, test.slice(0, s.speed_images), size, layout, s, ds, detect);

  const metrics = {
    iou: faces ? iouSum / faces : 0,
    gender_acc: faces ? genderRight / faces : 0,
    age_acc: faces ? ageRight / faces : 0,
    detection_rate: faces ? detected / faces : 0,
    gender_acc_detected: detected ? genderRightDet / detected : null,
    age_acc_detected: detected ? ageRightDet / detected : null,
    ap50: averagePrecision(apImages, s.ap_iou),
    balanced_age_acc: seen.length ? seen.reduce((a, b) => a + b, 0) / seen.length : 0,
    age_acc_per_bucket: perBucket,
    gender_confusion: genderConfusion,
    age_confusion: ageConfusion,
    crop_gender_acc: cropAcc.gender,
    crop_age_acc: cropAcc.age,
    single_model_img_per_s: speed.single,
    two_stage_img_per_s: speed.twoStage,
    backend: `${info.name} ${info.version}${info.gpu ? ' (GPU)' : ''}`,
    test_images: test.length,
    test_faces: faces,
  };
  const galleryOut = await drawGallery(ctx, gallery as GalleryItem[], size, layout, ds);
  await fs.writeFile(join(ctx.outDir, 'metrics.json'), JSON.stringify(metrics));
  await fs.writeFile(
    join(ctx.outDir, 'report.json'),
    JSON.stringify(
      {
        metrics,
        settings: s,
        layout,
        backend: info,
        dataset: { test_images: test.length, test_faces: faces, detected_faces: detected },
        gallery: galleryOut,
      },
      null,
      1,
    ),
  );
  model.dispose();
  for (const m of Object.values(classifiers)) m.dispose();
  ctx.log(`iou ${metrics.iou.toFixed(3)}, gender ${metrics.gender_acc.toFixed(3)}, age ${metrics.age_acc.toFixed(3)}, ap50 ${metrics.ap50.toFixed(3)}; ${speed.single.toFixed(1)} vs ${speed.twoStage?.toFixed(1) ?? '—'} img/s`);
}

async function measureSpeed(
  tf: Tf,
  model: import('@tensorflow/tfjs').LayersModel,
  classifiers: Record<string, import('@tensorflow/tfjs').LayersModel>,
  classifierSize: Record<string, number>,
  images: import('./lib/face-dataset.js').FaceRecord[],
  size: number,
  layout: import('./lib/grid-layout.js').GridLayout,
  s: EvaluateSettings,
  ds: typeof import('./lib/face-dataset.js'),
  detect: typeof import('./lib/grid-layout.js').detect,
): Promise<{ single: number; twoStage: number | null }> {
  if (images.length === 0) return { single: 0, twoStage: null };
  const pixels = await ds.decodeBatch(images, size);
  const one = (i: number) => tf.tensor4d(pixels.subarray(i * size * size * 3, (i + 1) * size * size * 3), [1, size, size, 3]);
  // Both pipelines see one image at a time (a camera's view) and finish with labels on the host.
  const single = async (i: number) => {
    const x = one(i);
    const out = model.predict(x) as import('@tensorflow/tfjs').Tensor;
    detect(await out.data(), layout, { threshold: s.threshold, nmsIou: s.nms_iou });
    tf.dispose([x, out]);
  };
  const tasks = Object.keys(classifiers);
  const twoStage = async (i: number) => {
    const x = one(i);
    const out = model.predict(x) as import('@tensorflow/tfjs').Tensor;
    const dets = detect(await out.data(), layout, { threshold: s.threshold, nmsIou: s.nms_iou });
    if (dets.length) {
      const boxes = tf.tensor2d(dets.map((d) => [d.box[1] / size, d.box[0] / size, d.box[3] / size, d.box[2] / size]));
      for (const t of tasks) {
        const c = classifierSize[t]!;
        const crops = tf.image.cropAndResize(x, boxes, new Array(dets.length).fill(0), [c, c]);
        const logits = classifiers[t]!.predict(crops) as import('@tensorflow/tfjs').Tensor;
        await logits.argMax(-1).data();
        tf.dispose([crops, logits]);
      }
      boxes.dispose();
    }
    tf.dispose([x, out]);
  };
  const time = async (f: (i: number) => Promise<void>) => {
    for (let i = 0; i < Math.min(3, images.length); i++) await f(i); // warm-up
    const t0 = performance.now();
    for (let i = 0; i < images.length; i++) await f(i);
    return images.length / ((performance.now() - t0) / 1000);
  };
  return { single: await time(single), twoStage: tasks.length === 2 ? await time(twoStage) : null };
}

interface GalleryItem {
  record: import('./lib/face-dataset.js').FaceRecord;
  dets: import('./lib/grid-layout.js').Detection[];
  truths: import('./lib/face-dataset.js').FaceLabel[];
}

/** A few test images with predicted boxes + labels (green) and the truth (white), for people to look at. */
async function drawGallery(ctx: StageContext<EvaluateSettings>, items: GalleryItem[], size: number, layout: import('./lib/grid-layout.js').GridLayout, ds: typeof import('./lib/face-dataset.js')) {
  const sharp = (await import('sharp')).default;
  await fs.mkdir(join(ctx.outDir, 'gallery'), { recursive: true });
  const zoom = Math.max(1, Math.round(256 / size));
  const out = [];
  for (const [i, it] of items.entries()) {
    const px = await ds.decodeRecord(it.record, size);
    const S = size * zoom;
    const rect = (b: number[], colour: string, dash = '') =>
      `<rect x="${b[0]! * zoom}" y="${b[1]! * zoom}" width="${(b[2]! - b[0]!) * zoom}" height="${(b[3]! - b[1]!) * zoom}" fill="none" stroke="${colour}" stroke-width="2" ${dash}/>`;
    const label = (b: number[], text: string, colour: string, below: boolean) =>
      `<text x="${b[0]! * zoom + 2}" y="${below ? b[3]! * zoom + 12 : Math.max(10, b[1]! * zoom - 3)}" font-family="sans-serif" font-size="11" fill="${colour}" stroke="black" stroke-width="0.3">${text}</text>`;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${S}" height="${S}">${it.truths
      .map((t) => rect(t.box, 'white', 'stroke-dasharray="4 3"') + label(t.box, `${layout.genderLabels[t.gender]} ${layout.ageLabels[t.ageBucket]}`, 'white', true))
      .join('')}${it.dets
      .map((d) => rect(d.box, '#3f3') + label(d.box, `${layout.genderLabels[d.gender]} ${layout.ageLabels[d.ageBucket]} ${(d.confidence * 100).toFixed(0)}%`, '#3f3', false))
      .join('')}</svg>`;
    const file = `gallery/${String(i).padStart(2, '0')}.png`;
    await sharp(Buffer.from(px), { raw: { width: size, height: size, channels: 3 } })
      .resize(S, S, { kernel: 'nearest' })
      .composite([{ input: Buffer.from(svg) }])
      .png()
      .toFile(join(ctx.outDir, file));
    out.push({
      file,
      key: it.record.key,
      truths: it.truths.map((t) => ({ box: t.box, gender: layout.genderLabels[t.gender], age: layout.ageLabels[t.ageBucket] })),
      predictions: it.dets.map((d) => ({ box: d.box, confidence: d.confidence, gender: layout.genderLabels[d.gender], age: layout.ageLabels[d.ageBucket] })),
    });
  }
  return out;
}

export default {
  name: 'evaluate',
  description: 'Evaluate the grid model (IoU, gender/age accuracy, AP50, speed) and the crop baselines on the test split',
  module: import.meta.url,
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      threshold: { type: 'number', minimum: 0, maximum: 1, default: 0.7, description: 'confidence above which a cell is a detection' },
      nms_iou: { type: 'number', minimum: 0, maximum: 1, default: 0.2 },
      match_iou: { type: 'number', minimum: 0, maximum: 1, default: 0.2, description: 'a prediction matches a true face above this IoU' },
      ap_iou: { type: 'number', minimum: 0, maximum: 1, default: 0.5 },
      gallery: { type: 'integer', minimum: 0, default: 8, description: 'test images drawn with boxes and labels' },
      speed_images: { type: 'integer', minimum: 0, default: 64, description: 'images timed for the single-model vs two-stage comparison' },
      backend: { enum: ['auto', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'], default: 'auto' },
    },
  },
  volatileSettings: ['backend', 'speed_images'],
  resources: { cpu: 2, gpu: 1, memoryMb: 2048 },
  run,
} satisfies StageType<EvaluateSettings>;
