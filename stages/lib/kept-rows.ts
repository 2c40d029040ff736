// The filtered rows of extract-metadata grouped the way the image stages read them: one entry
// per source archive (in order of first appearance), and in it one entry per distinct member
// holding every row (face) of that image. letterbox and crop both start from this.

import { BadItems, readJsonl, resolveRecordedPath, type MetaImageRow } from './face-rows.js';
import type { WantedSource } from './image-archive.js';

export interface KeptSources {
  sources: Array<WantedSource<MetaImageRow[]>>;
  rows: number;
  images: number;
}

export async function loadKeptSources(file: string, projectRoot: string, bad: BadItems, signal?: AbortSignal): Promise<KeptSources> {
  const byArchive = new Map<string, WantedSource<MetaImageRow[]>>();
  let rows = 0;
  let images = 0;
  for await (const l of readJsonl<MetaImageRow>(file, signal)) {
    const r = l.value;
    if (l.error !== undefined || !r || typeof r.key !== 'string') {
      bad.report('bad_line', `${file}:${l.line}`, l.error ?? 'not a row object with a key');
      continue;
    }
    if (!r.archive || typeof r.archive.path !== 'string' || typeof r.member !== 'string' ||
        !r.box || r.width === null || r.height === null || r.gender === null || r.age === null) {
      bad.report('bad_row', `${file}:${l.line} (${r.key})`, 'row lacks archive, member, size, box or labels (was it filtered?)');
      continue;
    }
    let src = byArchive.get(r.archive.path);
    if (!src) {
      src = { archive: r.archive.path, abs: resolveRecordedPath(projectRoot, r.archive.path), sha256: r.archive.sha256 || null, members: new Map() };
      byArchive.set(r.archive.path, src);
    } else if (src.sha256 !== (r.archive.sha256 || null)) {
      throw new Error(`${file}:${l.line}: archive ${r.archive.path} has two digests in one rows file (${src.sha256} and ${r.archive.sha256})`);
    }
    const group = src.members.get(r.member);
    if (group) group.push(r);
    else {
      src.members.set(r.member, [r]);
      images++;
      // Rows written before extract-metadata recorded locations (or from a directory or a
      // gzipped tar) have none: that source is then streamed instead.
      if (Number.isSafeInteger(r.member_offset) && Number.isSafeInteger(r.member_bytes)) {
        (src.locations ??= new Map()).set(r.member, { offset: r.member_offset!, size: r.member_bytes! });
      }
    }
    rows++;
  }
  return { sources: [...byArchive.values()], rows, images };
}
