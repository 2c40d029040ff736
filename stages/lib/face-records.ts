// The face study's tf.train.Example records: how shard (whole letterboxed images with their
// faces) and crop (one face crop per record) write them, and `readFaceRecords`, which reads
// either kind back for training, decoding JPEG/PNG to raw RGB with sharp.
//
// Features (all standard tf.train.Example lists, readable by TF's parse_single_example):
//   image/encoded  bytes   raw uint8 H×W×C (image/format 'raw') or the JPEG/PNG file bytes
//   image/format   bytes   'raw' | 'jpeg' | 'png'
//   image/height, image/width, image/channels   int64
//   image/key      bytes   the row key (IMDB-WIKI full_path)
//   per face, one list entry each (shard): face/x1 face/y1 face/x2 face/y2 (float, letterboxed
//   pixels), face/gender face/age face/age_bucket (int64), face/cell_row face/cell_col (int64,
//   cell of the face centre), face/offset_y face/offset_x (float 0-1, centre inside the cell),
//   face/h_cells face/w_cells (float, box size in cells)
//   crop records carry face/gender, face/age, face/age_bucket for their one face.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { decodeExample, encodeExample, type ExampleFeatures, type FeatureValue } from './tf-example.js';
import { readTFRecords } from './tfrecord.js';
import type { CellTarget } from './face-geometry.js';
import type { Box } from './face-rows.js';
import type { Split } from './face-shards.js';

export type ImageEncoding = 'raw' | 'jpeg' | 'png';

export interface EncodedImage {
  format: ImageEncoding;
  /** File bytes, or raw H×W×C pixels. */
  bytes: Uint8Array;
  height: number;
  width: number;
  channels: number;
}

export interface RecordFace {
  /** Letterboxed pixels, float32 precision; absent in crop records. */
  box?: Box;
  gender: number;
  age: number;
  age_bucket: number;
  /** Absent in crop records. */
  cell?: CellTarget;
}

const utf8 = (s: string) => new TextEncoder().encode(s);

function imageFeatures(key: string, img: EncodedImage): ExampleFeatures {
  return {
    'image/encoded': { bytes: [img.bytes] },
    'image/format': { bytes: [utf8(img.format)] },
    'image/height': { int64: [img.height] },
    'image/width': { int64: [img.width] },
    'image/channels': { int64: [img.channels] },
    'image/key': { bytes: [utf8(key)] },
  };
}

/** A detector record: one letterboxed image and all of its faces (each with box and cell). */
export function encodeFaceExample(key: string, img: EncodedImage, faces: ReadonlyArray<Required<RecordFace>>): Uint8Array {
  const f = imageFeatures(key, img);
  const col = (get: (x: Required<RecordFace>) => number) => faces.map(get);
  f['face/x1'] = { float: col((x) => x.box[0]) };
  f['face/y1'] = { float: col((x) => x.box[1]) };
  f['face/x2'] = { float: col((x) => x.box[2]) };
  f['face/y2'] = { float: col((x) => x.box[3]) };
  f['face/gender'] = { int64: col((x) => x.gender) };
  f['face/age'] = { int64: col((x) => x.age) };
  f['face/age_bucket'] = { int64: col((x) => x.age_bucket) };
  f['face/cell_row'] = { int64: col((x) => x.cell.cell_row) };
  f['face/cell_col'] = { int64: col((x) => x.cell.cell_col) };
  f['face/offset_y'] = { float: col((x) => x.cell.offset_y) };
  f['face/offset_x'] = { float: col((x) => x.cell.offset_x) };
  f['face/h_cells'] = { float: col((x) => x.cell.h_cells) };
  f['face/w_cells'] = { float: col((x) => x.cell.w_cells) };
  return encodeExample(f);
}

/** A classifier record: one face crop with its labels. */
export function encodeCropExample(key: string, img: EncodedImage, face: { gender: number; age: number; age_bucket: number }): Uint8Array {
  const f = imageFeatures(key, img);
  f['face/gender'] = { int64: [face.gender] };
  f['face/age'] = { int64: [face.age] };
  f['face/age_bucket'] = { int64: [face.age_bucket] };
  return encodeExample(f);
}

// ---------------------------------------------------------------- reading back

export interface FaceRecord {
  key: string;
  image: { data: Uint8Array; height: number; width: number };
  /** How the image was stored in the record. */
  format: ImageEncoding;
  faces: RecordFace[];
  /** Shard file and 0-based record index, for messages. */
  file: string;
  index: number;
}

/** Shard files of one split (or both) in a stage's output directory, sorted by name. */
export function faceShardFiles(dir: string, split?: Split): string[] {
  const re = split ? new RegExp(`^${split}-\\d{5}-of-\\d{5}\\.tfrecord$`) : /^(train|test)-\d{5}-of-\d{5}\.tfrecord$/;
  return fs.readdirSync(dir).filter((n) => re.test(n)).sort().map((n) => path.join(dir, n));
}

const text = (v: FeatureValue | undefined): string | undefined =>
  v && 'bytes' in v && v.bytes[0] ? new TextDecoder().decode(v.bytes[0]) : undefined;
const ints = (v: FeatureValue | undefined): number[] | undefined =>
  v && 'int64' in v ? v.int64.map((x) => Number(x)) : undefined;
const floats = (v: FeatureValue | undefined): number[] | undefined => (v && 'float' in v ? v.float : undefined);

/** Decode the labels and image fields of one record (the image stays encoded). */
export function parseFaceExample(features: ExampleFeatures, where: string): { key: string; encoded: EncodedImage; faces: RecordFace[] } {
  const need = <T>(name: string, v: T | undefined): T => {
    if (v === undefined) throw new Error(`${where}: feature ${name} is missing or of the wrong type`);
    return v;
  };
  const key = need('image/key', text(features['image/key']));
  const format = need('image/format', text(features['image/format'])) as ImageEncoding;
  if (format !== 'raw' && format !== 'jpeg' && format !== 'png') throw new Error(`${where}: image/format ${JSON.stringify(format)} is not raw|jpeg|png`);
  const enc = features['image/encoded'];
  if (!enc || !('bytes' in enc) || enc.bytes.length !== 1) throw new Error(`${where}: image/encoded must hold exactly one bytes value`);
  const height = need('image/height', ints(features['image/height']))[0]!;
  const width = need('image/width', ints(features['image/width']))[0]!;
  const channels = ints(features['image/channels'])?.[0] ?? 3;
  const gender = need('face/gender', ints(features['face/gender']));
  const age = need('face/age', ints(features['face/age']));
  const bucket = need('face/age_bucket', ints(features['face/age_bucket']));
  const x1 = floats(features['face/x1']);
  const faces: RecordFace[] = [];
  for (let i = 0; i < gender.length; i++) {
    const face: RecordFace = { gender: gender[i]!, age: age[i]!, age_bucket: bucket[i]! };
    if (x1) {
      const at = (name: string, get: typeof floats | typeof ints) => {
        const list = need(name, get(features[name]));
        if (list.length !== gender.length) throw new Error(`${where}: ${name} has ${list.length} entries, face/gender has ${gender.length}`);
        return list[i]!;
      };
      face.box = [at('face/x1', floats), at('face/y1', floats), at('face/x2', floats), at('face/y2', floats)];
      face.cell = {
        cell_row: at('face/cell_row', ints),
        cell_col: at('face/cell_col', ints),
        offset_y: at('face/offset_y', floats),
        offset_x: at('face/offset_x', floats),
        h_cells: at('face/h_cells', floats),
        w_cells: at('face/w_cells', floats),
      };
    }
    faces.push(face);
  }
  return { key, encoded: { format, bytes: enc.bytes[0]!, height, width, channels }, faces };
}

/** Raw RGB H×W×3 pixels of an encoded image. */
export async function decodeToRgb(img: EncodedImage, where: string): Promise<{ data: Uint8Array; height: number; width: number }> {
  if (img.format === 'raw') {
    if (img.bytes.length !== img.height * img.width * img.channels) {
      throw new Error(`${where}: raw image has ${img.bytes.length} bytes, expected ${img.height}x${img.width}x${img.channels}`);
    }
    if (img.channels !== 3) throw new Error(`${where}: raw image has ${img.channels} channels, expected 3`);
    return { data: img.bytes, height: img.height, width: img.width };
  }
  const { default: sharp } = await import('sharp');
  let out: { data: Buffer; info: { width: number; height: number; channels: number } };
  try {
    out = await sharp(img.bytes).flatten().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new Error(`${where}: cannot decode the ${img.format} image: ${(err as Error).message}`);
  }
  if (out.info.channels !== 3) throw new Error(`${where}: decoded image has ${out.info.channels} channels, expected 3`);
  if (out.info.width !== img.width || out.info.height !== img.height) {
    throw new Error(`${where}: decoded image is ${out.info.width}x${out.info.height}, the record says ${img.width}x${img.height}`);
  }
  return { data: new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.length), height: out.info.height, width: out.info.width };
}

export interface ReadFaceRecordsOptions {
  signal?: AbortSignal;
  /** Check TFRecord CRCs (default true). A mismatch throws TFRecordError (file + record index). */
  verify?: boolean;
}

/**
 * Every record of one split of a shard or crop output directory, file by file in name order,
 * records in file order, images decoded to raw RGB. Errors name the file and record index.
 * Stop early with `break` (or `.return()`) so the open file is closed.
 */
export async function* readFaceRecords(dir: string, split: Split, opts: ReadFaceRecordsOptions = {}): AsyncGenerator<FaceRecord> {
  const files = faceShardFiles(dir, split);
  // No files of this split is fine (test_shards: 0); no shard files at all is a wrong directory.
  if (files.length === 0 && faceShardFiles(dir).length === 0) throw new Error(`${dir}: no (train|test)-NNNNN-of-NNNNN.tfrecord files`);
  for (const file of files) {
    let index = 0;
    // TFRecordError from the reader (CRC, truncation) already names file and record index.
    for await (const payload of readTFRecords(file, { verify: opts.verify ?? true, signal: opts.signal })) {
      const where = `${file}: record ${index}`;
      let features: ExampleFeatures;
      try {
        features = decodeExample(payload);
      } catch (err) {
        throw new Error(`${where}: ${(err as Error).message}`);
      }
      const { key, encoded, faces } = parseFaceExample(features, where);
      const image = await decodeToRgb(encoded, where);
      yield { key, image, format: encoded.format, faces, file, index };
      index++;
    }
  }
}
