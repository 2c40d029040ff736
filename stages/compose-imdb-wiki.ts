// compose-imdb-wiki: an IMDB-WIKI-shaped dataset from real, labelled UTKFace crops. Each crop is
// resized and placed on a larger random background at a known box; the output has the same
// layout as synthesize-imdb-wiki (images.tar, <struct>.mat, rows.jsonl, metrics.json).
// UTKFace gender is 0 male / 1 female; IMDB-WIKI's is 1 male / 0 female, so it is flipped here.

import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';
import { writeImdbWikiMeta, type MetaRow } from './lib/imdb-wiki-meta.js';
import {
  Rng, TarWriter, boxToFaceLocation, createImage, drawBackground, labelCounts, makeFullPath,
  matlabDatenum, mixSeed, orderedPipeline, tarMemberName, type FaceBox, type StructName,
} from './lib/synth-faces.js';

export interface ComposeSettings {
  faces: string;
  count: number;
  seed: number;
  canvas_min: number;
  canvas_max: number;
  crop_min: number;
  crop_max: number;
  struct_name: StructName;
}

export const COMPOSE_DEFAULTS: Omit<ComposeSettings, 'faces'> = {
  count: 0, seed: 1, canvas_min: 250, canvas_max: 500, crop_min: 0.35, crop_max: 0.8, struct_name: 'wiki',
};

export interface UtkName {
  file: string;
  age: number;
  /** UTKFace convention: 0 male, 1 female. */
  utkGender: 0 | 1;
  race: number;
  /** The date-time field, e.g. 20170110183726390. */
  date: string;
}

const UTK_NAME = /^(\d{1,3})_([01])_(\d)_(\d+)\.jpg(?:\.chip\.jpg)?$/i;

/** Parse `age_gender_race_date.jpg[.chip.jpg]`; null when the name does not follow it. */
export function parseUtkName(file: string): UtkName | null {
  const m = UTK_NAME.exec(file);
  if (!m) return null;
  return { file, age: Number(m[1]), utkGender: Number(m[2]) as 0 | 1, race: Number(m[3]), date: m[4]! };
}

interface ComposeRow {
  index: number;
  src: UtkName;
  width: number;
  height: number;
  /** Crop width as a fraction of the canvas's shorter side. */
  frac: number;
  /** Where the crop goes, as fractions of the free room. */
  px: number;
  py: number;
  age: number;
  meta: MetaRow;
  drawSeed: number;
}

function planCompose(s: ComposeSettings, sources: UtkName[]): ComposeRow[] {
  const picked = new Rng(mixSeed(s.seed, 0xc0)).shuffle(sources.slice());
  const chosen = s.count > 0 ? picked.slice(0, s.count) : picked;
  return chosen.map((src, index) => {
    const r = new Rng(mixSeed(s.seed, index, 0xc0de));
    const width = r.int(s.canvas_min, s.canvas_max);
    const height = r.int(s.canvas_min, s.canvas_max);
    const dateYear = Number(src.date.slice(0, 4));
    const photoTaken = dateYear >= 1990 && dateYear <= 2030 ? dateYear : r.int(2000, 2015);
    const dob = { year: photoTaken - src.age, month: r.int(1, 12), day: r.int(1, 28) };
    const fullPath = makeFullPath(s.struct_name, { index, dob, photoTaken }, r);
    const base = src.file.replace(/\.jpg(\.chip\.jpg)?$/i, '');
    const meta: MetaRow = {
      full_path: fullPath,
      name: `UTKFace ${base}`,
      dob: matlabDatenum(dob.year, dob.month, dob.day),
      photo_taken: photoTaken,
      gender: 1 - src.utkGender,
      face_location: [1, 1, 1, 1], // set once the crop's size is known
      face_score: r.range(2.5, 6.5),
      second_face_score: NaN,
    };
    if (s.struct_name === 'imdb') meta.celeb_id = index + 1;
    return {
      index, src, width, height, frac: r.range(s.crop_min, s.crop_max), px: r.next(), py: r.next(),
      age: src.age, meta, drawSeed: r.int(0, 0x7fffffff),
    };
  });
}

type Composed = { ok: true; jpeg: Buffer; box: FaceBox } | { ok: false; error: string };

async function composeRow(s: ComposeSettings, row: ComposeRow): Promise<Composed> {
  const { default: sharp } = await import('sharp');
  const file = path.join(s.faces, row.src.file);
  let crop: { data: Buffer; info: { width: number; height: number; channels: number } };
  let box: FaceBox;
  try {
    const info = await sharp(file).metadata();
    const sw = info.width ?? 0;
    const sh = info.height ?? 0;
    if (!sw || !sh) throw new Error('no image size');
    const short = Math.min(row.width, row.height);
    // Fit the crop, aspect kept, in a square of side frac*short.
    const side = Math.max(8, Math.round(row.frac * short));
    const k = side / Math.max(sw, sh);
    const w = Math.max(1, Math.min(row.width, Math.round(sw * k)));
    const h = Math.max(1, Math.min(row.height, Math.round(sh * k)));
    box = {
      left: Math.floor(row.px * (row.width - w + 1)),
      top: Math.floor(row.py * (row.height - h + 1)),
      width: w,
      height: h,
    };
    crop = await sharp(file).resize(w, h, { fit: 'fill' }).toColourspace('srgb').removeAlpha().raw()
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    return { ok: false, error: `${file}: ${(e as Error).message}` };
  }
  const bg = createImage(row.width, row.height);
  drawBackground(bg, new Rng(row.drawSeed));
  const jpeg = await sharp(bg.data, { raw: { width: bg.width, height: bg.height, channels: 3 } })
    .composite([{
      input: crop.data,
      raw: { width: crop.info.width, height: crop.info.height, channels: crop.info.channels as 3 },
      left: box.left,
      top: box.top,
    }])
    .jpeg({ quality: 90 })
    .toBuffer();
  return { ok: true, jpeg, box };
}

export default {
  name: 'compose-imdb-wiki',
  description: 'Place real UTKFace crops on random canvases at known boxes: an IMDB-WIKI-shaped dataset (images.tar + .mat)',
  module: import.meta.url,
  resources: { cpu: 1, memoryMb: 512 },
  externalInputs: (s) => [s.faces],
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['faces'],
    properties: {
      faces: { type: 'string', 'x-path': true, description: 'Directory of UTKFace crops named age_gender_race_date.jpg[.chip.jpg] (gender 0 male, 1 female)' },
      count: { type: 'integer', minimum: 0, default: COMPOSE_DEFAULTS.count, description: 'Number of crops to use, picked at random by seed (0 = all)' },
      seed: { type: 'integer', default: COMPOSE_DEFAULTS.seed, description: 'Seed of the pick, canvases and placements' },
      canvas_min: { type: 'integer', minimum: 32, default: COMPOSE_DEFAULTS.canvas_min, description: 'Smallest canvas side in pixels' },
      canvas_max: { type: 'integer', minimum: 32, maximum: 4000, default: COMPOSE_DEFAULTS.canvas_max, description: 'Largest canvas side in pixels; width and height are drawn independently' },
      crop_min: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: COMPOSE_DEFAULTS.crop_min, description: 'Smallest crop side as a fraction of the canvas\'s shorter side' },
      crop_max: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: COMPOSE_DEFAULTS.crop_max, description: 'Largest crop side as a fraction of the canvas\'s shorter side' },
      struct_name: { type: 'string', enum: ['wiki', 'imdb'], default: COMPOSE_DEFAULTS.struct_name, description: 'Name of the .mat struct and naming style of the files (wiki or imdb)' },
    },
  },
  async run(ctx) {
    const s = ctx.settings;
    const t0 = performance.now();
    if (s.canvas_min > s.canvas_max) throw new Error(`compose-imdb-wiki: canvas_min (${s.canvas_min}) is larger than canvas_max (${s.canvas_max})`);
    if (s.crop_min > s.crop_max) throw new Error(`compose-imdb-wiki: crop_min (${s.crop_min}) is larger than crop_max (${s.crop_max})`);
    let entries: string[];
    try {
      entries = (await fs.readdir(s.faces, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => d.name).sort();
    } catch (e) {
      throw new Error(`compose-imdb-wiki: cannot list the faces directory ${s.faces}: ${(e as Error).message}`);
    }
    const sources: UtkName[] = [];
    const badNames: string[] = [];
    for (const f of entries) {
      const p = parseUtkName(f);
      if (p) sources.push(p);
      else badNames.push(f);
    }
    if (badNames.length > 0) {
      ctx.log(`compose-imdb-wiki: skipped ${badNames.length} file(s) not named age_gender_race_date.jpg[.chip.jpg]: ` +
        badNames.slice(0, 5).join(', ') + (badNames.length > 5 ? ', …' : ''));
    }
    if (sources.length === 0) {
      throw new Error(`compose-imdb-wiki: no file in ${s.faces} is named age_gender_race_date.jpg[.chip.jpg] ` +
        `(${entries.length} file(s) there)`);
    }
    const rows = planCompose(s, sources);

    const tar = await TarWriter.open(path.join(ctx.outDir, 'images.tar'));
    const metas: MetaRow[] = [];
    const truth: string[] = [];
    const labelRows: Array<{ gender: number; age: number }> = [];
    let unreadable = 0;
    let tarBytes = 0;
    try {
      await orderedPipeline(rows, 3, (row) => composeRow(s, row), async (res, i) => {
        const row = rows[i]!;
        ctx.progress(i + 1, rows.length, 'images');
        if (!res.ok) {
          unreadable++;
          ctx.log(`compose-imdb-wiki: skipped unreadable image ${res.error}`);
          return;
        }
        row.meta.face_location = boxToFaceLocation(res.box);
        const member = tarMemberName(s.struct_name, row.meta.full_path);
        await tar.add(member, res.jpeg);
        tarBytes += res.jpeg.length;
        metas.push(row.meta);
        labelRows.push({ gender: row.meta.gender, age: row.age });
        truth.push(JSON.stringify({
          full_path: row.meta.full_path, member, source: row.src.file, width: row.width, height: row.height,
          gender: row.meta.gender, utk_gender: row.src.utkGender, race: row.src.race, age: row.age,
          box: [res.box.left, res.box.top, res.box.width, res.box.height],
        }) + '\n');
      }, ctx.signal);
      await tar.close();
    } catch (e) {
      tar.abort();
      throw e;
    }
    if (metas.length === 0) throw new Error(`compose-imdb-wiki: none of the ${rows.length} picked images in ${s.faces} could be read`);
    const matName = `${s.struct_name}.mat`;
    await fs.writeFile(path.join(ctx.outDir, matName), writeImdbWikiMeta(s.struct_name, metas));
    await fs.writeFile(path.join(ctx.outDir, 'rows.jsonl'), truth.join(''));
    const counts = labelCounts(labelRows);
    const metrics = {
      total: metas.length,
      source_files: entries.length,
      skipped_names: badNames.length,
      unreadable,
      gender: counts.gender,
      age_bucket: counts.age_bucket,
      tar_image_bytes: tarBytes,
    };
    await fs.writeFile(path.join(ctx.outDir, 'metrics.json'), JSON.stringify(metrics, null, 2) + '\n');
    ctx.log(`compose-imdb-wiki: ${metas.length} images from ${s.faces}, ${(tarBytes / 1e6).toFixed(1)} MB of JPEG, ` +
      `${matName}, in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return metrics;
  },
} satisfies StageType<ComposeSettings>;
