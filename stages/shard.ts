// shard: the letterboxed images and their faces as TFRecord shards of tf.train.Example records
// (feature list in lib/face-records.ts), for the detector's training.
//
// A record's shard is shardOf(key, count) (lib/face-shards.ts, shared with crop); the last
// `test_shards` shard indices are the test split: train-00000-of-00010.tfrecord …
// test-00009-of-00010.tfrecord. Records follow letterbox's order inside each shard, so the
// shard bytes are the same on every run. With encoding jpeg (png) and letterbox images already
// in that format, the image bytes are passed through untouched; raw stores H×W×3 uint8 pixels.
// metrics.json: records per file name, totals (records, train, test, faces), skipped (seconds
// in the returned metrics).

import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';

export interface ShardSettings {
  count: number;
  test_shards: number;
  encoding: 'raw' | 'jpeg' | 'png';
  cell_size: number;
  quality: number;
  strict: boolean;
}

export default {
  name: 'shard',
  description: 'Write letterboxed images and face targets as hash-split TFRecord shards of tf.train.Example records',
  module: import.meta.url,
  resources: { cpu: 2, memoryMb: 512 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      count: { type: 'integer', minimum: 1, maximum: 99999, default: 10, description: 'Number of shard files (train and test together)' },
      test_shards: { type: 'integer', minimum: 0, default: 1, description: 'How many of the shards (the last indices) are the test split' },
      encoding: { type: 'string', enum: ['raw', 'jpeg', 'png'], default: 'jpeg', description: 'image/encoded as raw uint8 H×W×3 pixels, or JPEG / PNG file bytes (passed through when letterbox wrote that format)' },
      cell_size: { type: 'integer', minimum: 1, default: 32, description: 'Grid cell size in pixels for the face centre targets (face/cell_row, face/cell_col, offsets, sizes in cells)' },
      quality: { type: 'integer', minimum: 1, maximum: 100, default: 95, description: 'JPEG quality when images have to be re-encoded as JPEG' },
      strict: { type: 'boolean', default: false, description: 'Fail on the first image that cannot be read or re-encoded instead of counting and skipping it' },
    },
  },
  async run(ctx) {
    const t0 = performance.now();
    const s = ctx.settings;
    const { BadItems, imageConcurrency, readJsonlStrict, singleInput, writeMetrics } = await import('./lib/face-rows.js');
    const { forEachWantedImage } = await import('./lib/image-archive.js');
    const { cellTarget } = await import('./lib/face-geometry.js');
    const { ShardSet, checkShardSettings, shardMetrics } = await import('./lib/face-shards.js');
    const { encodeFaceExample } = await import('./lib/face-records.js');
    const { decodeRgb, reencode } = await import('./lib/face-images.js');
    const { isJpeg, isPng } = await import('./lib/image-probe.js');
    type Row = import('./lib/face-rows.js').LetterboxRow;
    type Encoded = import('./lib/face-records.js').EncodedImage;

    checkShardSettings('shard', s.count, s.test_shards);
    const dir = singleInput(ctx.inputs, 'shard', 'letterbox');
    const rows = await readJsonlStrict<Row>(path.join(dir, 'rows.jsonl'), ctx.signal);
    const byMember = new Map(rows.map((r) => [r.member, r]));
    // Letterbox recorded where each image is in its tar: read those bytes directly.
    const locations = new Map(rows.filter((r) => Number.isSafeInteger(r.member_offset)).map((r) => [r.member, { offset: r.member_offset!, size: r.member_bytes }]));
    const tarPath = path.join(dir, 'images.tar');
    const bad = new BadItems('shard', (l) => ctx.log(l), s.strict);
    const shards = await ShardSet.open(ctx.outDir, s.count, s.test_shards);
    let faces = 0;
    let done = 0;
    let passedThrough = 0;
    let perFile: Record<string, number>;
    try {
      await forEachWantedImage<Row, Encoded>([{ archive: tarPath, abs: tarPath, sha256: null, members: byMember, locations }], {
        concurrency: imageConcurrency(),
        signal: ctx.signal,
        async work(data, row): Promise<Encoded> {
          const base = { height: row.size, width: row.size, channels: 3 };
          if (s.encoding === 'raw') {
            const px = await decodeRgb(data);
            if (px.width !== row.size || px.height !== row.size) throw new Error(`image is ${px.width}x${px.height}, rows say ${row.size}x${row.size}`);
            return { format: 'raw', bytes: px.data, ...base };
          }
          const same = s.encoding === 'jpeg' ? isJpeg(data) : isPng(data);
          if (same) passedThrough++;
          return { format: s.encoding, bytes: same ? data : await reencode(data, s.encoding, s.quality), ...base };
        },
        async result(r, row, archive, member) {
          ctx.progress(++done, rows.length, 'images');
          if (!r.ok) {
            bad.report('undecodable', `${archive}: ${member}`, r.error);
            return;
          }
          const recFaces = row.faces.map((f) => ({ ...f, cell: cellTarget(f.box, row.size, s.cell_size) }));
          faces += recFaces.length;
          await shards.write(row.key, encodeFaceExample(row.key, r.value, recFaces));
        },
        missing(_row, archive, member, reason) {
          ctx.progress(++done, rows.length, 'images');
          bad.report('missing', `${archive}: ${member}`, `listed in rows.jsonl but not read from images.tar: ${reason}`);
        },
        damaged(_row, archive, member, detail) {
          ctx.progress(++done, rows.length, 'images');
          bad.report('damaged_archive', `${archive}: ${member}`, detail);
        },
      });
    } finally {
      perFile = await shards.close();
    }
    bad.finish();
    const totals = shardMetrics(perFile);
    const seconds = (performance.now() - t0) / 1000;
    const metrics = {
      ...totals,
      faces,
      encoding: s.encoding,
      passed_through: passedThrough,
      skipped: bad.counts,
    };
    const all = await writeMetrics(ctx.outDir, metrics, { seconds });
    const fsp = await import('node:fs/promises');
    await fsp.copyFile(path.join(dir, 'letterbox.json'), path.join(ctx.outDir, 'letterbox.json')).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    ctx.log(`shard: ${totals.total_records} records (${totals.train_records} train, ${totals.test_records} test, ${faces} faces) in ${s.count} files, ` +
      `${s.encoding}${passedThrough ? ` (${passedThrough} passed through)` : ''}, ${bad.total} skipped`);
    return all;
  },
} satisfies StageType<ShardSettings>;
