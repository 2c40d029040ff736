// letterbox: every kept image, longer side scaled to `size` with the aspect ratio kept and
// black padding to size×size, its faces' boxes moved along (scale, then the padding offset).
//
// Reads the kept rows of the needed `filter` stage; the images come from the archives those
// rows name (recorded by extract-metadata, with the tar's digest, which is checked here).
// Each archive is streamed once; kept members go through sharp, several at a time, and are
// written in stream order. An image sharp cannot decode is counted and skipped (fatal with
// strict). Rows sharing one image become one output image with several faces.
//
// images.tar: members <index>.jpg (or .png), index 0, 1, … in output order.
// rows.jsonl, one per output image, in the same order (type LetterboxRow in lib/face-rows.ts):
//   key, member, member_offset, member_bytes (where its bytes are in images.tar), size, scale, pad [left, top, right, bottom], original_width, original_height,
//   source {archive, member}, faces [{box [x1,y1,x2,y2] float letterboxed px, gender, age,
//   age_bucket (age-10)//10}].

import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';

export interface LetterboxSettings {
  size: number;
  padding: 'bottom-right' | 'centre';
  format: 'jpeg' | 'png';
  quality: number;
  strict: boolean;
}

export default {
  name: 'letterbox',
  description: 'Scale kept images to size×size with black padding (aspect kept) and move their face boxes; images.tar + rows.jsonl',
  module: import.meta.url,
  resources: { cpu: 2, memoryMb: 1024 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      size: { type: 'integer', minimum: 8, maximum: 4096, default: 250, description: 'Side of the square output image in pixels' },
      padding: { type: 'string', enum: ['bottom-right', 'centre'], default: 'bottom-right', description: 'Where the black padding goes: bottom and right (image at the top-left, as in the seed) or split evenly' },
      format: { type: 'string', enum: ['jpeg', 'png'], default: 'jpeg', description: 'Encoding of the output images' },
      quality: { type: 'integer', minimum: 1, maximum: 100, default: 95, description: 'JPEG quality' },
      strict: { type: 'boolean', default: false, description: 'Fail on the first image that cannot be read or decoded instead of counting and skipping it' },
    },
  },
  async run(ctx) {
    const t0 = performance.now();
    const s = ctx.settings;
    const { BadItems, sourceArchiveProblems, JsonlWriter, ageBucketOf, imageConcurrency, singleInput, writeMetrics } = await import('./lib/face-rows.js');
    const { loadKeptSources } = await import('./lib/kept-rows.js');
    const { TarFileWriter, forEachWantedImage } = await import('./lib/image-archive.js');
    const { letterboxBox, letterboxGeometry } = await import('./lib/face-geometry.js');
    const { letterboxImage } = await import('./lib/face-images.js');
    type Row = import('./lib/face-rows.js').LetterboxRow;
    type Geometry = import('./lib/face-geometry.js').LetterboxGeometry;

    const rowsFile = path.join(singleInput(ctx.inputs, 'letterbox', 'filter'), 'rows.jsonl');
    const bad = new BadItems('letterbox', (l) => ctx.log(l), s.strict);
    const kept = await loadKeptSources(rowsFile, ctx.projectRoot, bad, ctx.signal);
    const concurrency = imageConcurrency();
    ctx.log(`letterbox: ${kept.images} images (${kept.rows} faces) from ${kept.sources.length} archive(s), ${concurrency} in flight`);

    const ext = s.format === 'png' ? 'png' : 'jpg';
    const tar = await TarFileWriter.open(path.join(ctx.outDir, 'images.tar'));
    const out = await JsonlWriter.open(path.join(ctx.outDir, 'rows.jsonl'));
    let written = 0;
    let faces = 0;
    let done = 0;
    let outBytes = 0;
    try {
      await forEachWantedImage<import('./lib/face-rows.js').MetaImageRow[], { data: Buffer; g: Geometry }>(kept.sources, {
        concurrency,
        signal: ctx.signal,
        fileDigest: ctx.fileDigest,
        async work(data, group) {
          const g = letterboxGeometry(group[0]!.width!, group[0]!.height!, s.size, s.padding);
          return { data: await letterboxImage(data, g, s.format, s.quality), g };
        },
        async result(r, group, archive, member) {
          ctx.progress(++done, kept.images, 'images');
          if (!r.ok) {
            bad.report('undecodable', `${archive}: ${member}`, r.error);
            return;
          }
          const { data, g } = r.value;
          const name = `${written}.${ext}`;
          const offset = await tar.add(name, data);
          outBytes += data.length;
          const row: Row = {
            key: group[0]!.key,
            member: name,
            member_offset: offset,
            member_bytes: data.length,
            size: g.size,
            scale: g.scale,
            pad: g.pad,
            original_width: group[0]!.width!,
            original_height: group[0]!.height!,
            source: { archive, member },
            faces: group.map((f) => ({ box: letterboxBox(f.box!, g), gender: f.gender!, age: f.age!, age_bucket: ageBucketOf(f.age!) })),
          };
          faces += row.faces.length;
          await out.write(row);
          written++;
        },
        ...sourceArchiveProblems(bad, () => ctx.progress(++done, kept.images, 'images')),
      });
      await tar.close();
    } catch (err) {
      tar.abort();
      throw err;
    } finally {
      await out.close();
    }
    bad.finish();
    const seconds = (performance.now() - t0) / 1000;
    const metrics = {
      rows_in: kept.rows,
      images_in: kept.images,
      written,
      faces,
      skipped: bad.counts,
      output_mb: outBytes / 1e6,
    };
    const imgPerS = written / Math.max(seconds, 1e-9);
    const all = await writeMetrics(ctx.outDir, metrics, { seconds, img_per_s: imgPerS });
    // The geometry travels with the data (shard copies it) so that a trained model's layout,
    // `pipe detect` and the browser letterbox new images exactly as these were.
    await (await import('node:fs/promises')).writeFile(path.join(ctx.outDir, 'letterbox.json'), JSON.stringify({ size: s.size, padding: s.padding, format: s.format }, null, 2));
    ctx.log(`letterbox: wrote ${written} of ${kept.images} images (${faces} faces) at ${s.size}px, ${s.padding} padding, ` +
      `${bad.total} skipped, ${imgPerS.toFixed(0)} img/s`);
    return all;
  },
} satisfies StageType<LetterboxSettings>;
