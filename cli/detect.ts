// `pipe detect --experiment FILE [--stage NAME] IMAGES… --out DIR`: runs an experiment's cached
// grid model on any JPEG/PNG, letterboxed exactly as in training, and writes annotated images
// plus detections.json (boxes in original pixels, confidence, gender and age bucket with
// probabilities).
import { promises as fs } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import type { ModelArtifact } from './model-artifact.js';
import { UsageError } from './errors.js';

export interface DetectOptions {
  model: ModelArtifact;
  images: string[];
  outDir: string;
  threshold: number;
  nmsIou: number;
  log: (line: string) => void;
}

export interface ImageDetections {
  image: string;
  width: number;
  height: number;
  annotated: string;
  detections: {
    box: [number, number, number, number];
    confidence: number;
    gender: string;
    gender_probs: Record<string, number>;
    age_bucket: string;
    age_probs: Record<string, number>;
  }[];
}

export async function detectImages(o: DetectOptions): Promise<ImageDetections[]> {
  const { initBackend } = await import('../stages/lib/tf-backend.js');
  const { tf, info } = await initBackend('auto', { log: () => {} });
  const { loadModel } = await import('../stages/lib/tf-model-io.js');
  const { registerGridLayers } = await import('../stages/lib/grid-net.js');
  const { detect } = await import('../stages/lib/grid-layout.js');
  const { letterboxGeometry } = await import('../stages/lib/face-geometry.js');
  const { letterboxImage, decodeRgb } = await import('../stages/lib/face-images.js');
  const sharp = (await import('sharp')).default;
  registerGridLayers(tf);
  const layout = o.model.layout;
  const model = await loadModel(tf, o.model.modelDir);
  o.log(`model ${o.model.experiment}/${o.model.stage} (${layout.inputSize}px, grid ${layout.grid}) on ${info.name} ${info.version}`);
  await fs.mkdir(o.outDir, { recursive: true });
  const results: ImageDetections[] = [];
  const names = new Set<string>();
  for (const image of o.images) {
    let data: Buffer;
    let width: number;
    let height: number;
    try {
      data = await fs.readFile(image);
      const meta = await sharp(data).metadata();
      width = meta.width!;
      height = meta.height!;
      if (!width || !height) throw new Error('no image size in its header');
    } catch (err) {
      o.log(`skipped ${image}: not a readable JPEG/PNG (${(err as Error).message})`);
      continue;
    }
    const g = letterboxGeometry(width, height, layout.inputSize, layout.input.padding);
    const rgb = await decodeRgb(await letterboxImage(data, g, 'png', 100));
    const x = tf.tensor4d(Float32Array.from(rgb.data, (v) => v * layout.input.scale), [1, layout.inputSize, layout.inputSize, 3]);
    const out = model.predict(x) as import('@tensorflow/tfjs').Tensor;
    const raw = await out.data();
    tf.dispose([x, out]);
    const [left, top] = g.pad;
    const clamp = (v: number, hi: number) => Math.max(0, Math.min(hi, v));
    const dets = detect(raw, layout, { threshold: o.threshold, nmsIou: o.nmsIou }).map((d) => ({
      // back from letterboxed to original pixels
      box: [
        clamp((d.box[0] - left) / g.scale, width),
        clamp((d.box[1] - top) / g.scale, height),
        clamp((d.box[2] - left) / g.scale, width),
        clamp((d.box[3] - top) / g.scale, height),
      ] as [number, number, number, number],
      confidence: d.confidence,
      gender: layout.genderLabels[d.gender]!,
      gender_probs: Object.fromEntries(layout.genderLabels.map((l, i) => [l, d.genderProbs[i]!])),
      age_bucket: layout.ageLabels[d.ageBucket]!,
      age_probs: Object.fromEntries(layout.ageLabels.map((l, i) => [l, d.ageProbs[i]!])),
    }));
    let name = `${basename(image, extname(image))}.png`;
    for (let i = 2; names.has(name); i++) name = `${basename(image, extname(image))}-${i}.png`;
    names.add(name);
    const stroke = Math.max(2, Math.round(Math.max(width, height) / 300));
    const font = Math.max(12, Math.round(Math.max(width, height) / 40));
    const esc = (t: string) => t.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${dets
      .map(
        (d) =>
          `<rect x="${d.box[0]}" y="${d.box[1]}" width="${d.box[2] - d.box[0]}" height="${d.box[3] - d.box[1]}" fill="none" stroke="#3f3" stroke-width="${stroke}"/>` +
          `<text x="${d.box[0] + 2}" y="${Math.max(font, d.box[1] - 4)}" font-family="sans-serif" font-size="${font}" fill="#3f3" stroke="black" stroke-width="0.5">${esc(`${d.gender} ${d.age_bucket} ${(d.confidence * 100).toFixed(0)}%`)}</text>`,
      )
      .join('')}</svg>`;
    await sharp(data).composite([{ input: Buffer.from(svg) }]).png().toFile(join(o.outDir, name));
    results.push({ image: resolve(image), width, height, annotated: join(o.outDir, name), detections: dets });
    o.log(`${image}: ${dets.length} face${dets.length === 1 ? '' : 's'}`);
  }
  model.dispose();
  await fs.writeFile(join(o.outDir, 'detections.json'), JSON.stringify({ model: { experiment: o.model.experiment, stage: o.model.stage, key: o.model.key, backend: `${info.name} ${info.version}` }, threshold: o.threshold, nms_iou: o.nmsIou, images: results }, null, 2));
  return results;
}

/** Expand directories into the JPEG/PNG files they contain. */
export async function listImages(paths: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    const st = await fs.stat(p).catch(() => null);
    if (!st) throw new UsageError(`${p}: no such file or directory`);
    if (st.isDirectory()) {
      for (const f of (await fs.readdir(p)).sort()) if (/\.(jpe?g|png)$/i.test(f)) out.push(join(p, f));
    } else out.push(p);
  }
  return out;
}
