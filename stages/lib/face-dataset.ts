// Face records from TFRecord shards, held in memory in their encoded form (JPEG/PNG bytes are
// ~15 KB per 250x250 image, so even the full IMDB-WIKI fits), decoded per batch with sharp off
// the main thread. Random access by index is what makes a batch a pure function of its step.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { readTFRecords } from './tfrecord.js';
import { decodeExample, type ExampleFeatures, type FeatureValue } from './tf-example.js';
import type { Box } from './boxes.js';
import { mulberry32 } from './random.js';

export interface FaceLabel {
  box: Box;
  gender: number;
  age: number;
  ageBucket: number;
}

export interface FaceRecord {
  key: string;
  format: string; // raw | jpeg | png
  encoded: Uint8Array;
  height: number;
  width: number;
  channels: number;
  faces: FaceLabel[];
}

export async function shardFiles(dir: string, split: 'train' | 'test'): Promise<string[]> {
  const files = (await fs.readdir(dir)).filter((f) => f.startsWith(`${split}-`) && f.endsWith('.tfrecord')).sort();
  return files.map((f) => join(dir, f));
}

function ints(f: ExampleFeatures, name: string): number[] {
  const v = f[name] as FeatureValue | undefined;
  return v && 'int64' in v ? v.int64.map(Number) : [];
}
function floats(f: ExampleFeatures, name: string): number[] {
  const v = f[name] as FeatureValue | undefined;
  return v && 'float' in v ? v.float : [];
}
function bytes(f: ExampleFeatures, name: string): Uint8Array | undefined {
  const v = f[name] as FeatureValue | undefined;
  return v && 'bytes' in v ? v.bytes[0] : undefined;
}

export function recordFromExample(f: ExampleFeatures, where: string): FaceRecord {
  const encoded = bytes(f, 'image/encoded');
  if (!encoded) throw new Error(`${where}: no image/encoded feature`);
  const x1 = floats(f, 'face/x1');
  const y1 = floats(f, 'face/y1');
  const x2 = floats(f, 'face/x2');
  const y2 = floats(f, 'face/y2');
  const gender = ints(f, 'face/gender');
  const age = ints(f, 'face/age');
  const bucket = ints(f, 'face/age_bucket');
  const width = ints(f, 'image/width')[0] ?? 0;
  const height = ints(f, 'image/height')[0] ?? 0;
  // Crop records carry labels but no box: the face is the whole image.
  const n = Math.max(x1.length, gender.length);
  const faces: FaceLabel[] = Array.from({ length: n }, (_, i) => ({
    box: (x1.length ? [x1[i]!, y1[i]!, x2[i]!, y2[i]!] : [0, 0, width, height]) as Box,
    gender: gender[i] ?? -1,
    age: age[i] ?? -1,
    ageBucket: bucket[i] ?? -1,
  }));
  const format = bytes(f, 'image/format');
  return {
    key: new TextDecoder().decode(bytes(f, 'image/key') ?? new Uint8Array()),
    format: format ? new TextDecoder().decode(format) : 'jpeg',
    encoded,
    height,
    width,
    channels: ints(f, 'image/channels')[0] ?? 3,
    faces,
  };
}

export async function loadRecords(files: string[], signal?: AbortSignal): Promise<FaceRecord[]> {
  const out: FaceRecord[] = [];
  for (const file of files) {
    let i = 0;
    for await (const payload of readTFRecords(file, { signal })) {
      out.push(recordFromExample(decodeExample(payload), `${file} record ${i}`));
      i++;
    }
  }
  return out;
}

/** Decode one record to RGB HWC uint8 at `size`x`size` (resizing if the record differs). */
export async function decodeRecord(r: FaceRecord, size: number): Promise<Uint8Array> {
  const sharp = (await import('sharp')).default;
  let img =
    r.format === 'raw'
      ? sharp(Buffer.from(r.encoded.buffer, r.encoded.byteOffset, r.encoded.byteLength), { raw: { width: r.width, height: r.height, channels: r.channels as 3 } })
      : sharp(Buffer.from(r.encoded.buffer, r.encoded.byteOffset, r.encoded.byteLength));
  if (r.width !== size || r.height !== size) img = img.resize(size, size, { fit: 'fill' });
  if (r.format === 'raw' && r.channels === 3 && r.width === size && r.height === size) return r.encoded;
  const { data, info } = await img.removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`${r.key}: decoded to ${info.channels} channels, expected 3`);
  return data;
}

/** Scale a record's boxes from its own size to `size`. */
export function scaledFaces(r: FaceRecord, size: number): FaceLabel[] {
  const sx = size / r.width;
  const sy = size / r.height;
  return r.faces.map((f) => ({ ...f, box: [f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy] as Box }));
}

/** Decode many records into one Float32 NHWC batch scaled to 0-1, at most `concurrency` at a time. */
export async function decodeBatch(records: FaceRecord[], size: number, concurrency = 4): Promise<Float32Array> {
  const out = new Float32Array(records.length * size * size * 3);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= records.length) return;
      const px = await decodeRecord(records[i]!, size);
      const o = i * size * size * 3;
      for (let j = 0; j < px.length; j++) out[o + j] = px[j]! / 255;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, records.length) }, worker));
  return out;
}

/** Seeded PRNG: batches are a pure function of (seed, step). */
export const rng = mulberry32;

export function stepSeed(seed: number, step: number): number {
  return (Math.imul(seed ^ 0x9e3779b9, 2654435761) + Math.imul(step + 1, 0x85ebca6b)) >>> 0;
}

/**
 * Indices of a step's batch: uniform over the records, or (oversampling) with probability
 * proportional to 1/frequency of the record's first face's age bucket, so every bucket is
 * drawn equally often.
 */
export function sampleBatch(n: number, batchSize: number, seed: number, step: number, weights?: number[]): number[] {
  const rand = rng(stepSeed(seed, step));
  if (!weights) return Array.from({ length: batchSize }, () => Math.floor(rand() * n));
  const cumulative: number[] = [];
  let acc = 0;
  for (const w of weights) cumulative.push((acc += w));
  return Array.from({ length: batchSize }, () => {
    const r = rand() * acc;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! > r) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  });
}
