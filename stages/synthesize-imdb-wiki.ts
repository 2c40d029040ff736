// synthesize-imdb-wiki: a small, seeded, IMDB-WIKI-shaped dataset of procedurally drawn faces.
// Writes images.tar (JPEGs under <struct>_crop/NN/...), <struct>.mat (same layout as the real
// metadata file), rows.jsonl (the truth per row: size, drawn box, kind) and metrics.json.
// With bad_rows, a few rows break exactly one rule each that the filter stage must apply.

import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';
import { writeImdbWikiMeta, type MetaRow } from './lib/imdb-wiki-meta.js';
import {
  AGE_BUCKETS, Rng, TarWriter, ageBucket, boxToFaceLocation, createImage, drawBackground, drawFace,
  labelCounts, makeFaceLook, makeFullPath, matlabDatenum, mixSeed, orderedPipeline, tarMemberName,
  type FaceBox, type FaceLook, type RgbImage, type StructName,
} from './lib/synth-faces.js';

export interface SynthesizeSettings {
  count: number;
  seed: number;
  min_size: number;
  max_size: number;
  face_min: number;
  face_max: number;
  struct_name: StructName;
  bad_rows: boolean;
}

export const SYNTH_DEFAULTS: SynthesizeSettings = {
  count: 600, seed: 1, min_size: 160, max_size: 400, face_min: 0.4, face_max: 0.75,
  struct_name: 'wiki', bad_rows: true,
};

/** Each bad kind breaks exactly one filter rule and is otherwise a good row. */
export const BAD_KINDS = [
  'tiny_image', // a side < 150 px
  'second_face', // finite second_face_score, and a second face really drawn
  'missing_gender', // gender NaN
  'no_face', // face_score -Inf, face_location [1 1 1 1], no face drawn
  'low_face_score', // face_score < 1.5
  'age_too_young', // age < 10
  'age_too_old', // age >= 80
  'box_outside', // face box partly outside the image
  'corrupt_jpeg', // member is garbage bytes
  'truncated_jpeg', // member is the first half of a JPEG
] as const;
export type BadKind = (typeof BAD_KINDS)[number];

export interface SynthRow {
  index: number;
  kind: 'good' | BadKind;
  width: number;
  height: number;
  /** Drawn box of the face the metadata describes; null when no face is drawn. */
  box: FaceBox | null;
  look: FaceLook | null;
  second: { box: FaceBox; look: FaceLook } | null;
  /** True age (photo_taken - year(dob)). */
  age: number;
  meta: MetaRow;
  /** Seed of the row's own random stream (background, garbage bytes). */
  drawSeed: number;
}

/** Rows of bad kinds for a given total count: one of each per 300 rows, at least one. */
export function badRowsPerKind(count: number): number {
  return Math.max(1, Math.floor(count / 300));
}

function checkSettings(s: SynthesizeSettings): void {
  if (s.min_size > s.max_size) {
    throw new Error(`synthesize-imdb-wiki: min_size (${s.min_size}) is larger than max_size (${s.max_size})`);
  }
  if (s.face_min > s.face_max) {
    throw new Error(`synthesize-imdb-wiki: face_min (${s.face_min}) is larger than face_max (${s.face_max})`);
  }
  const bad = s.bad_rows ? BAD_KINDS.length * badRowsPerKind(s.count) : 0;
  if (s.count < bad) {
    throw new Error(`synthesize-imdb-wiki: count (${s.count}) is smaller than the ${bad} rows bad_rows adds; ` +
      'raise count or set bad_rows: false');
  }
}

const BOX_ASPECT = 1.2; // face box height / width

/** The whole dataset as data: a pure function of the settings (no pixels yet). */
export function planSynthRows(s: SynthesizeSettings): SynthRow[] {
  checkSettings(s);
  const rng = new Rng(mixSeed(s.seed, 0x5157));
  const kinds: Array<'good' | BadKind> = [];
  if (s.bad_rows) for (const k of BAD_KINDS) for (let i = 0; i < badRowsPerKind(s.count); i++) kinds.push(k);
  const goodCount = s.count - kinds.length;
  for (let i = 0; i < goodCount; i++) kinds.push('good');
  rng.shuffle(kinds);
  // Good rows take gender i%2 and bucket i%7: every 14 rows cover all pairs (2 and 7 are
  // coprime) and both marginals stay within one of even; then the labels get shuffled.
  const labels: Array<{ gender: 0 | 1; bucket: number }> = [];
  for (let i = 0; i < goodCount; i++) labels.push({ gender: (i % 2) as 0 | 1, bucket: i % AGE_BUCKETS });
  rng.shuffle(labels);

  const rows: SynthRow[] = [];
  let nextLabel = 0;
  for (let index = 0; index < s.count; index++) {
    const kind = kinds[index]!;
    const r = new Rng(mixSeed(s.seed, index, 0xface));
    let gender: 0 | 1;
    let age: number;
    if (kind === 'good') {
      const l = labels[nextLabel++]!;
      gender = l.gender;
      age = 10 + l.bucket * 10 + r.int(0, 9);
    } else {
      gender = r.chance(0.5) ? 1 : 0;
      age = kind === 'age_too_young' ? r.int(2, 9) : kind === 'age_too_old' ? r.int(80, 99) : r.int(10, 79);
    }
    const drawnBucket = Math.max(0, Math.min(AGE_BUCKETS - 1, ageBucket(age)));

    let width = r.int(s.min_size, s.max_size);
    let height = r.int(s.min_size, s.max_size);
    if (kind === 'tiny_image') {
      width = r.int(90, 140);
      height = r.int(90, 140);
    }
    let box: FaceBox | null = null;
    let second: SynthRow['second'] = null;
    const look = kind === 'no_face' ? null : makeFaceLook(r, gender, drawnBucket);
    const frac = r.range(s.face_min, s.face_max);
    if (kind === 'second_face') {
      width = Math.max(width, Math.min(2 * s.max_size, 2 * height)); // room for two faces
      const fw = Math.max(24, Math.round(r.range(0.6, 0.9) * Math.min(width / 2.2, height / BOX_ASPECT)));
      const fh = Math.round(fw * BOX_ASPECT);
      const half = Math.floor(width / 2);
      const a: FaceBox = { left: r.int(0, half - fw), top: r.int(0, height - fh), width: fw, height: fh };
      const b: FaceBox = { left: r.int(half, width - fw), top: r.int(0, height - fh), width: fw, height: fh };
      const mainLeft = r.chance(0.5);
      box = mainLeft ? a : b;
      const otherGender: 0 | 1 = r.chance(0.5) ? 1 : 0;
      second = { box: mainLeft ? b : a, look: makeFaceLook(r, otherGender, r.int(0, AGE_BUCKETS - 1)) };
    } else if (kind !== 'no_face') {
      const fw = Math.min(width, Math.max(16, Math.round(frac * Math.min(width, height / BOX_ASPECT))));
      const fh = Math.min(height, Math.round(fw * BOX_ASPECT));
      box = { left: r.int(0, width - fw), top: r.int(0, height - fh), width: fw, height: fh };
      if (kind === 'box_outside') {
        const out = (n: number) => Math.round(n * r.range(0.25, 0.5)); // how much sticks out
        switch (r.int(0, 3)) {
          case 0: box.left = -out(fw); break;
          case 1: box.top = -out(fh); break;
          case 2: box.left = width - fw + out(fw); break;
          default: box.top = height - fh + out(fh); break;
        }
      }
    }

    const photoTaken = r.int(1995, 2015);
    const dob = { year: photoTaken - age, month: r.int(1, 12), day: r.int(1, 28) };
    const fullPath = makeFullPath(s.struct_name, { index, dob, photoTaken }, r);
    const meta: MetaRow = {
      full_path: fullPath,
      name: `Synth Person ${index + 1}`,
      dob: matlabDatenum(dob.year, dob.month, dob.day),
      photo_taken: photoTaken,
      gender: kind === 'missing_gender' ? NaN : gender,
      face_location: box ? boxToFaceLocation(box) : [1, 1, 1, 1],
      face_score: kind === 'no_face' ? -Infinity : kind === 'low_face_score' ? r.range(0.2, 1.4) : r.range(2.5, 6.5),
      second_face_score: kind === 'second_face' ? r.range(1.6, 2.4) : NaN,
    };
    if (s.struct_name === 'imdb') meta.celeb_id = index + 1;
    rows.push({ index, kind, width, height, box, look, second, age, meta, drawSeed: r.int(0, 0x7fffffff) });
  }
  return rows;
}

/** The pixels of one row (corrupt/truncated rows render normally; they are spoiled after encoding). */
export function renderSynthRow(row: SynthRow): RgbImage {
  const img = createImage(row.width, row.height);
  const rng = new Rng(row.drawSeed);
  drawBackground(img, rng);
  if (row.second) drawFace(img, row.second.box, row.second.look);
  if (row.box && row.look) drawFace(img, row.box, row.look);
  return img;
}

/** JPEG bytes of a row as stored in the tar, spoiled for the corrupt/truncated kinds. */
export async function encodeSynthRow(row: SynthRow): Promise<Buffer> {
  if (row.kind === 'corrupt_jpeg') {
    const rng = new Rng(row.drawSeed);
    const bytes = Buffer.alloc(rng.int(1500, 6000));
    for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(0, 255);
    bytes[0] = 0x47; // never starts like a JPEG (FF D8)
    return bytes;
  }
  const img = renderSynthRow(row);
  const { default: sharp } = await import('sharp');
  const jpeg = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
  return row.kind === 'truncated_jpeg' ? jpeg.subarray(0, Math.floor(jpeg.length / 2)) : jpeg;
}

/** One line of rows.jsonl: what the metadata cannot say (image size, kind) plus the labels. */
export function truthLine(structName: StructName, row: SynthRow): string {
  return JSON.stringify({
    full_path: row.meta.full_path,
    member: tarMemberName(structName, row.meta.full_path),
    kind: row.kind,
    width: row.width,
    height: row.height,
    gender: Number.isNaN(row.meta.gender) ? null : row.meta.gender,
    age: row.age,
    box: row.box ? [row.box.left, row.box.top, row.box.width, row.box.height] : null,
  });
}

export default {
  name: 'synthesize-imdb-wiki',
  description: 'Draw a seeded IMDB-WIKI-shaped dataset of synthetic faces (images.tar + .mat), with optional bad rows',
  module: import.meta.url,
  resources: { cpu: 1, memoryMb: 512 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      count: { type: 'integer', minimum: 1, default: SYNTH_DEFAULTS.count, description: 'Number of rows (images), bad rows included' },
      seed: { type: 'integer', default: SYNTH_DEFAULTS.seed, description: 'Seed of everything random; same settings give byte-identical outputs' },
      min_size: { type: 'integer', minimum: 48, default: SYNTH_DEFAULTS.min_size, description: 'Smallest image side in pixels (good rows; keep >= 150 so the size filter keeps them)' },
      max_size: { type: 'integer', minimum: 48, maximum: 4000, default: SYNTH_DEFAULTS.max_size, description: 'Largest image side in pixels; width and height are drawn independently' },
      face_min: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: SYNTH_DEFAULTS.face_min, description: 'Smallest face box width as a fraction of the room the image gives it' },
      face_max: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: SYNTH_DEFAULTS.face_max, description: 'Largest face box width as a fraction of the room the image gives it' },
      struct_name: { type: 'string', enum: ['wiki', 'imdb'], default: SYNTH_DEFAULTS.struct_name, description: 'Name of the .mat struct and naming style of the files (wiki or imdb)' },
      bad_rows: { type: 'boolean', default: SYNTH_DEFAULTS.bad_rows, description: 'Add rows that each break one filter rule (count/300 per kind, at least one)' },
    },
  },
  async run(ctx) {
    const s = ctx.settings;
    const t0 = performance.now();
    const rows = planSynthRows(s);
    const tarPath = path.join(ctx.outDir, 'images.tar');
    const tar = await TarWriter.open(tarPath);
    let tarBytes = 0;
    try {
      await orderedPipeline(rows, 3, (row) => encodeSynthRow(row), async (jpeg, i) => {
        const row = rows[i]!;
        await tar.add(tarMemberName(s.struct_name, row.meta.full_path), jpeg);
        tarBytes += jpeg.length;
        ctx.progress(i + 1, rows.length, 'images');
      }, ctx.signal);
      await tar.close();
    } catch (e) {
      tar.abort();
      throw e;
    }
    const matName = `${s.struct_name}.mat`;
    await fs.writeFile(path.join(ctx.outDir, matName), writeImdbWikiMeta(s.struct_name, rows.map((r) => r.meta)));
    await fs.writeFile(path.join(ctx.outDir, 'rows.jsonl'), rows.map((r) => truthLine(s.struct_name, r) + '\n').join(''));

    const labelRows = rows.map((r) => ({ gender: r.meta.gender, age: r.age }));
    const good = rows.filter((r) => r.kind === 'good').map((r) => ({ gender: r.meta.gender, age: r.age }));
    const badCounts: Record<string, number> = {};
    for (const k of BAD_KINDS) badCounts[k] = rows.filter((r) => r.kind === k).length;
    const all = labelCounts(labelRows);
    const goodCounts = labelCounts(good);
    const metrics = {
      total: rows.length,
      good: good.length,
      bad: rows.length - good.length,
      gender: all.gender,
      age_bucket: all.age_bucket,
      good_gender: goodCounts.gender,
      good_age_bucket: goodCounts.age_bucket,
      bad_rows: badCounts,
      tar_image_bytes: tarBytes,
    };
    await fs.writeFile(path.join(ctx.outDir, 'metrics.json'), JSON.stringify(metrics, null, 2) + '\n');
    ctx.log(`synthesize-imdb-wiki: ${rows.length} images (${metrics.bad} bad rows), ` +
      `${(tarBytes / 1e6).toFixed(1)} MB of JPEG, ${matName}, in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return metrics;
  },
} satisfies StageType<SynthesizeSettings>;
