// crop: one face crop per kept row, cut from the ORIGINAL image (box grown by `margin` of its
// size on every side, clipped to the image, resized to size×size), written as TFRecord shards
// for the age/gender classifier. Same archive streaming as letterbox (lib/image-archive.ts),
// and the same shard names and hash-of-key split as shard (lib/face-shards.ts), so an image's
// crops are test crops exactly when the image is a test image for the detector.
// Features: image/encoded, image/format, image/height, image/width, image/channels,
// image/key, face/gender, face/age, face/age_bucket (lib/face-records.ts).

import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';

export interface CropSettings {
  margin: number;
  size: number;
  format: 'jpeg' | 'png';
  quality: number;
  count: number;
  test_shards: number;
  strict: boolean;
}

export default {
  name: 'crop',
  description: 'Cut face crops (box plus margin, resized square) from the original images into hash-split TFRecord shards',
  module: import.meta.url,
  resources: { cpu: 2, memoryMb: 1024 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      margin: { type: 'number', minimum: 0, maximum: 5, default: 0.4, description: 'Added on every side, as a fraction of the box width (left/right) and height (top/bottom)' },
      size: { type: 'integer', minimum: 8, maximum: 1024, default: 60, description: 'Side of the square crop in pixels (the crop is stretched to it)' },
      format: { type: 'string', enum: ['jpeg', 'png'], default: 'jpeg', description: 'Encoding of the crops in image/encoded' },
      quality: { type: 'integer', minimum: 1, maximum: 100, default: 95, description: 'JPEG quality' },
      count: { type: 'integer', minimum: 1, maximum: 99999, default: 10, description: 'Number of shard files (train and test together)' },
      test_shards: { type: 'integer', minimum: 0, default: 1, description: 'How many of the shards (the last indices) are the test split' },
      strict: { type: 'boolean', default: false, description: 'Fail on the first image that cannot be read or decoded instead of counting and skipping it' },
    },
  },
  async run(ctx) {
    const t0 = performance.now();
    const s = ctx.settings;
    const { BadItems, sourceArchiveProblems, ageBucketOf, imageConcurrency, singleInput, writeMetrics } = await import('./lib/face-rows.js');
    const { loadKeptSources } = await import('./lib/kept-rows.js');
    const { forEachWantedImage } = await import('./lib/image-archive.js');
    const { cropRect } = await import('./lib/face-geometry.js');
    const { cropImage } = await import('./lib/face-images.js');
    const { ShardSet, checkShardSettings, shardMetrics } = await import('./lib/face-shards.js');
    const { encodeCropExample } = await import('./lib/face-records.js');
    type MetaRow = import('./lib/face-rows.js').MetaImageRow;

    checkShardSettings('crop', s.count, s.test_shards);
    const rowsFile = path.join(singleInput(ctx.inputs, 'crop', 'filter'), 'rows.jsonl');
    const bad = new BadItems('crop', (l) => ctx.log(l), s.strict);
    const kept = await loadKeptSources(rowsFile, ctx.projectRoot, bad, ctx.signal);
    ctx.log(`crop: ${kept.rows} faces in ${kept.images} images from ${kept.sources.length} archive(s)`);
    const shards = await ShardSet.open(ctx.outDir, s.count, s.test_shards);
    let done = 0;
    let crops = 0;
    let perFile: Record<string, number>;
    try {
      await forEachWantedImage<MetaRow[], Buffer[]>(kept.sources, {
        concurrency: imageConcurrency(),
        signal: ctx.signal,
        fileDigest: ctx.fileDigest,
        // One pipeline per face; images with several faces are rare.
        work: (data, group) => Promise.all(group.map((r) => cropImage(data, cropRect(r.box!, s.margin, r.width!, r.height!), s.size, s.format, s.quality))),
        async result(r, group, archive, member) {
          ctx.progress(++done, kept.images, 'images');
          if (!r.ok) {
            bad.report('undecodable', `${archive}: ${member}`, r.error);
            return;
          }
          for (const [i, row] of group.entries()) {
            const img = { format: s.format, bytes: r.value[i]!, height: s.size, width: s.size, channels: 3 };
            await shards.write(row.key, encodeCropExample(row.key, img, { gender: row.gender!, age: row.age!, age_bucket: ageBucketOf(row.age!) }));
            crops++;
          }
        },
        ...sourceArchiveProblems(bad, () => ctx.progress(++done, kept.images, 'images')),
      });
    } finally {
      perFile = await shards.close();
    }
    bad.finish();
    const totals = shardMetrics(perFile);
    const seconds = (performance.now() - t0) / 1000;
    const metrics = {
      ...totals,
      rows_in: kept.rows,
      images_in: kept.images,
      skipped: bad.counts,
    };
    const all = await writeMetrics(ctx.outDir, metrics, { seconds });
    ctx.log(`crop: ${crops} crops of ${s.size}px (margin ${s.margin}) in ${s.count} files (${totals.train_records} train, ${totals.test_records} test), ${bad.total} skipped`);
    return all;
  },
} satisfies StageType<CropSettings>;
