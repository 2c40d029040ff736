// extract-metadata: join an IMDB-WIKI .mat with the images in its tars (or directories).
//
// Sources: `mat` and `images` when set; otherwise taken from the single needed stage's output
// (its one .mat file and its .tar files), which is how synthesize-imdb-wiki chains into it.
// Tars are streamed member by member (never unpacked); every image that joins a row has its
// size read from its header and a cheap integrity check (see lib/image-probe.ts). A member joins
// a row when it equals full_path, or does after dropping its first path component
// (`wiki_crop/17/x.jpg` → `17/x.jpg`).
//
// rows.jsonl, one object per .mat row in .mat order (type MetaImageRow in lib/face-rows.ts):
//   key (full_path), archive {path, sha256} | null, member | null, member_offset | null,
//   member_bytes | null (where the member's bytes are in an uncompressed tar, so the image
//   stages read only the kept members), width, height,
//   image_problem null|'missing'|'corrupt'|'truncated', box [x1,y1,x2,y2] (floor(face_location)-1,
//   0-based, inclusive) | null, face_score, second_face_score, gender 1|0|null, age | null, name.
// face_score / second_face_score are JSON numbers when finite and the strings "NaN",
// "Infinity", "-Infinity" otherwise; other unknowns are null. archive.path is project-relative
// when the archive is inside the project (absolute otherwise); archive.sha256 is the content
// digest of the tar (from the runner's content-hash cache, which hashed it for this stage's key),
// so the rows (and every key downstream) change when the tar does.
// metrics.json: rows, images_seen, joined, missing, corrupt, truncated, unmatched_members,
// duplicate_members, archive_errors, archives; seconds and mb_per_s are in the returned
// metrics (the manifest), not in the file (see writeMetrics).

import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';

export interface ExtractSettings {
  mat?: string;
  images?: string[];
  strict: boolean;
}

const TAR_RE = /\.(tar|tar\.gz|tgz)$/i;

/** The .mat and image sources: from the settings, else from the needed stage's output. */
async function resolveSources(ctx: { settings: ExtractSettings; inputs: Readonly<Record<string, string>> }): Promise<{ mat: string; images: string[] }> {
  const s = ctx.settings;
  if (s.mat && s.images) return { mat: s.mat, images: s.images };
  const { singleInput } = await import('./lib/face-rows.js');
  const dir = singleInput(ctx.inputs, 'extract-metadata', 'to take the .mat and tars from, since `mat`/`images` are not both set');
  const names = (await fsp.readdir(dir)).sort();
  let mat = s.mat;
  if (!mat) {
    const mats = names.filter((n) => n.endsWith('.mat'));
    if (mats.length !== 1) throw new Error(`extract-metadata: expected exactly one .mat file in ${dir}, found ${mats.length ? mats.join(', ') : 'none'}; set \`mat\``);
    mat = path.join(dir, mats[0]!);
  }
  let images = s.images;
  if (!images) {
    images = names.filter((n) => TAR_RE.test(n)).map((n) => path.join(dir, n));
    if (images.length === 0) throw new Error(`extract-metadata: no .tar files in ${dir}; set \`images\``);
  }
  return { mat, images };
}

export default {
  name: 'extract-metadata',
  description: 'Join an IMDB-WIKI .mat with its images (streamed from tars): size, integrity, box, labels per row',
  module: import.meta.url,
  resources: { cpu: 1, memoryMb: 1024 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      mat: { type: 'string', 'x-path': true, description: 'The imdb.mat / wiki.mat file; default: the one .mat in the needed stage\'s output' },
      images: {
        type: 'array', items: { type: 'string' }, minItems: 1, 'x-path': true,
        description: 'Tar files (.tar, .tar.gz) and/or directories holding the images; default: the .tar files in the needed stage\'s output',
      },
      strict: { type: 'boolean', default: false, description: 'Fail on the first corrupt or truncated image or damaged tar instead of counting and skipping it' },
    },
  },
  externalInputs(s) {
    return [...(s.mat ? [s.mat] : []), ...(s.images ?? [])];
  },
  async run(ctx) {
    const t0 = performance.now();
    const { readImdbWikiMeta, matlabDatenumToYear } = await import('./lib/imdb-wiki-meta.js');
    const { readArchive } = await import('./lib/image-archive.js');
    const { probeImage } = await import('./lib/image-probe.js');
    const rowsLib = await import('./lib/face-rows.js');
    const { BadItems, JsonlWriter, jsonNumber, recordedPath, writeMetrics } = rowsLib;
    type Row = import('./lib/face-rows.js').MetaImageRow;
    type Problem = import('./lib/image-probe.js').ImageProblem;

    const { mat, images } = await resolveSources(ctx);
    const meta = readImdbWikiMeta(await fsp.readFile(mat), mat);
    const rows = meta.rows;
    ctx.log(`extract-metadata: ${rows.length} rows in ${path.basename(mat)} (struct ${meta.structName}); ${images.length} image source(s)`);

    // full_path → rows (a path may repeat); a member joins on itself or minus its first component.
    const byPath = new Map<string, number[]>();
    rows.forEach((r, i) => {
      const list = byPath.get(r.full_path);
      if (list) list.push(i);
      else byPath.set(r.full_path, [i]);
    });
    const lookup = (member: string): number[] | undefined => {
      const direct = byPath.get(member);
      if (direct) return direct;
      const slash = member.indexOf('/');
      return slash >= 0 ? byPath.get(member.slice(slash + 1)) : undefined;
    };

    interface Found {
      source: number; member: string; offset: number | null; bytes: number | null;
      width: number | null; height: number | null; problem: Problem | null;
    }
    const found = new Array<Found | undefined>(rows.length);
    const bad = new BadItems('extract-metadata', (l) => ctx.log(l), ctx.settings.strict);
    const sources = images.map((p) => ({ path: recordedPath(ctx.projectRoot, p), sha256: '', bytes: 0 }));
    let imagesSeen = 0;
    let unmatched = 0;
    let duplicates = 0;
    let archiveErrors = 0;

    // Progress in MB of tar read; a directory source reports images instead (its size is unknown).
    const stats = await Promise.all(images.map((p) => fsp.stat(p)));
    const totalMb = Math.max(1, Math.round(stats.reduce((a, st) => a + (st.isDirectory() ? 0 : st.size), 0) / 1e6));
    let doneBytes = 0;

    const assign = (idxs: number[], f: Found): boolean => {
      let any = false;
      for (const i of idxs) {
        if (!found[i]) {
          found[i] = f;
          any = true;
        }
      }
      return any;
    };

    for (const [si, abs] of images.entries()) {
      const src = sources[si]!;
      const isDir = stats[si]!.isDirectory();
      // A tar's digest comes from the runner's cache (no second pass over its bytes); a
      // directory's is made while walking it (its 'end' event).
      if (!isDir) src.sha256 = await ctx.fileDigest(abs);
      for await (const ev of readArchive(abs, {
        want: (n) => lookup(n) !== undefined,
        signal: ctx.signal,
        digest: false,
        onBytes: (b) => ctx.progress(Math.round((doneBytes + b) / 1e6), totalMb, 'MB'),
      })) {
        if (isDir) ctx.progress(imagesSeen, undefined, 'images');
        if (ev.kind === 'skip') {
          imagesSeen++;
          unmatched++;
        } else if (ev.kind === 'member') {
          imagesSeen++;
          const idxs = lookup(ev.name)!;
          if (idxs.every((i) => found[i])) {
            duplicates++; // the same full_path again (another tar, or twice in one): first one wins
            continue;
          }
          const p = await probeImage(ev.data);
          if (p.problem) bad.report(p.problem, `${src.path}: ${ev.name}`, p.detail);
          assign(idxs, { source: si, member: ev.name, offset: ev.offset, bytes: ev.offset === null ? null : ev.data.length, width: p.width, height: p.height, problem: p.problem });
        } else if (ev.kind === 'damaged') {
          archiveErrors++;
          bad.report('damaged_archive', `${src.path}: ${ev.member ?? '(between members)'}`, `${ev.detail}; the rest of this archive is not read`);
          if (ev.member !== null) {
            imagesSeen++;
            const idxs = lookup(ev.member);
            if (idxs) assign(idxs, { source: si, member: ev.member, offset: null, bytes: null, width: null, height: null, problem: 'truncated' });
            else unmatched++;
          }
        } else {
          if (ev.sha256 !== null) src.sha256 = ev.sha256;
          src.bytes = ev.bytes;
        }
      }
      if (!isDir) doneBytes += src.bytes;
      ctx.log(`${src.path}: sha256 ${src.sha256.slice(0, 16)}…, ${(src.bytes / 1e6).toFixed(1)} MB`);
    }

    const counts = { joined: 0, missing: 0, corrupt: 0, truncated: 0 };
    const out = await JsonlWriter.open(path.join(ctx.outDir, 'rows.jsonl'));
    try {
      for (const [i, m] of rows.entries()) {
        const f = found[i];
        const dobYear = matlabDatenumToYear(m.dob);
        const age = Number.isFinite(m.photo_taken) && Number.isFinite(dobYear) ? m.photo_taken - dobYear : null;
        const loc = m.face_location;
        const row: Row = {
          key: m.full_path,
          archive: f ? { path: sources[f.source]!.path, sha256: sources[f.source]!.sha256 } : null,
          member: f ? f.member : null,
          member_offset: f ? f.offset : null,
          member_bytes: f ? f.bytes : null,
          width: f ? f.width : null,
          height: f ? f.height : null,
          image_problem: f ? f.problem : 'missing',
          box: loc.every(Number.isFinite) ? [Math.floor(loc[0]) - 1, Math.floor(loc[1]) - 1, Math.floor(loc[2]) - 1, Math.floor(loc[3]) - 1] : null,
          face_score: jsonNumber(m.face_score),
          second_face_score: jsonNumber(m.second_face_score),
          gender: m.gender === 1 ? 1 : m.gender === 0 ? 0 : null,
          age,
          name: m.name,
        };
        if (f) counts.joined++;
        else counts.missing++;
        if (row.image_problem === 'corrupt') counts.corrupt++;
        if (row.image_problem === 'truncated') counts.truncated++;
        await out.write(row);
      }
    } finally {
      await out.close();
    }
    bad.finish();
    const seconds = (performance.now() - t0) / 1000;
    const metrics = {
      rows: rows.length,
      images_seen: imagesSeen,
      ...counts,
      unmatched_members: unmatched,
      duplicate_members: duplicates,
      archive_errors: archiveErrors,
      archives: sources.map((s) => ({ path: s.path, sha256: s.sha256, bytes: s.bytes })),
    };
    const all = await writeMetrics(ctx.outDir, metrics, { seconds, mb_per_s: sources.reduce((a, x) => a + x.bytes, 0) / 1e6 / Math.max(seconds, 1e-9) });
    ctx.log(`extract-metadata: ${rows.length} rows, ${imagesSeen} images seen, ${counts.joined} joined, ${counts.missing} missing, ` +
      `${counts.corrupt} corrupt, ${counts.truncated} truncated, ${unmatched} unmatched member(s), in ${seconds.toFixed(1)} s`);
    return all;
  },
} satisfies StageType<ExtractSettings>;
