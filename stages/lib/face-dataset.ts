// Face records from TFRecord shards, held in memory in their encoded form (JPEG/PNG bytes are
// ~15 KB per 250x250 image, so even the full IMDB-WIKI fits), decoded per batch with sharp off
// the main thread. Random access by index is what makes a batch a pure function of its step.
// Parsing and file naming are face-records.ts's (the format's one definition); this module adds
// holding records encoded in memory and decoding them per batch at a given size.
import { readTFRecords } from './tfrecord.js';
import { decodeExample } from './tf-example.js';
import { faceShardFiles, parseFaceExample } from './face-records.js';
import type { Box } from './boxes.js';
import { mulberry32 } from './random.js';
import { loadSharp } from './face-images.js';

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
  /** Whether the record locates its faces (a shard) or is the face itself (a crop). */
  boxed: boolean;
}

export function shardFiles(dir: string, split: 'train' | 'test'): string[] {
  return faceShardFiles(dir, split);
}

/** The needed stage output (by directory) that holds training shards, or a clear error. */
export function trainingShardDir(inputs: Readonly<Record<string, string>>, stageName: string, what: string): string {
  for (const dir of Object.values(inputs)) if (faceShardFiles(dir, 'train').length) return dir;
  throw new Error(`${stageName}: none of its needed stages (${Object.keys(inputs).join(', ') || 'none'}) provides ${what}`);
}

export async function loadRecords(files: string[], signal?: AbortSignal): Promise<FaceRecord[]> {
  const out: FaceRecord[] = [];
  for (const file of files) {
    let i = 0;
    for await (const payload of readTFRecords(file, { signal })) {
      const where = `${file}: record ${i++}`;
      const { key, encoded, faces } = parseFaceExample(decodeExample(payload), where);
      out.push({
        key,
        format: encoded.format,
        encoded: encoded.bytes,
        height: encoded.height,
        width: encoded.width,
        channels: encoded.channels,
        // A crop record's face is the whole image.
        faces: faces.map((f) => ({ box: f.box ?? [0, 0, encoded.width, encoded.height], gender: f.gender, age: f.age, ageBucket: f.age_bucket })),
        boxed: faces.some((f) => f.box !== undefined),
      });
    }
  }
  return out;
}

/** Decode one record to RGB HWC uint8 at `size`x`size` (resizing if the record differs). */
export async function decodeRecord(r: FaceRecord, size: number): Promise<Uint8Array> {
  if (r.format === 'raw' && r.channels === 3 && r.width === size && r.height === size) return r.encoded;
  const sharp = await loadSharp();
  const bytes = Buffer.from(r.encoded.buffer, r.encoded.byteOffset, r.encoded.byteLength);
  let img = r.format === 'raw' ? sharp(bytes, { raw: { width: r.width, height: r.height, channels: r.channels as 3 } }) : sharp(bytes);
  if (r.width !== size || r.height !== size) img = img.resize(size, size, { fit: 'fill' });
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
