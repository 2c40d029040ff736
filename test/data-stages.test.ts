// The face study's data stages (extract-metadata → filter → letterbox → shard, and crop), with
// run() called directly on hand-made contexts, and once end to end through the real CLI.
// Source data: synthesize-imdb-wiki output (bad rows included) and small hand-made tars.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { StageContext, StageType } from '../runner/stage-type.js';
import synthesize, { SYNTH_DEFAULTS } from '../stages/synthesize-imdb-wiki.js';
import extract from '../stages/extract-metadata.js';
import filter from '../stages/filter.js';
import letterbox from '../stages/letterbox.js';
import shard from '../stages/shard.js';
import crop from '../stages/crop.js';
import { matlabDatenum, writeImdbWikiMeta, type MetaRow } from '../stages/lib/imdb-wiki-meta.js';
import { readArchive } from '../stages/lib/image-archive.js';
import { cellTarget } from '../stages/lib/face-geometry.js';
import { shardOf, splitOfShard } from '../stages/lib/face-shards.js';
import { faceShardFiles, parseFaceExample, readFaceRecords, type FaceRecord } from '../stages/lib/face-records.js';
import { TFRecordError, readAllTFRecords } from '../stages/lib/tfrecord.js';
import { decodeExample } from '../stages/lib/tf-example.js';
import type { LetterboxRow, MetaImageRow } from '../stages/lib/face-rows.js';
import { pipeSync, repoRoot, statuses, summary, tarBytes, writeTree, tempDirs } from './helpers.js';
import { digestFile } from '../artifacts/digest.js';

const tempDir = tempDirs('pipe-data');

function defaults(t: StageType): Record<string, unknown> {
  const props = (t.schema as { properties: Record<string, { default?: unknown }> }).properties;
  return Object.fromEntries(Object.entries(props).filter(([, v]) => 'default' in v).map(([k, v]) => [k, v.default]));
}

interface Ran { dir: string; logs: string[]; metrics: Record<string, any> }

/** Run a stage's run() with its defaults plus `settings`, into a fresh directory. */
async function runStage(
  t: StageType, settings: Record<string, unknown>, inputs: Record<string, string> = {}, signal?: AbortSignal,
  onProgress?: (done: number) => void,
): Promise<Ran> {
  const dir = tempDir(t.name);
  const logs: string[] = [];
  const progress: Array<[number, number | undefined]> = [];
  const ctx: StageContext<any> = {
    settings: { ...defaults(t), ...settings },
    experiment: 'test',
    stageName: t.name,
    inputs,
    outDir: dir,
    scratchDir: tempDir('scratch'),
    stateDir: tempDir('state'),
    projectRoot: repoRoot,
    progress(done, total) {
      progress.push([done, total]);
      onProgress?.(done);
    },
    log(line) { logs.push(line); },
    signal: signal ?? new AbortController().signal,
    fileDigest: (file: string) => digestFile(file),
  };
  const returned = (await t.run(ctx)) as Record<string, unknown>;
  const file = JSON.parse(fs.readFileSync(path.join(dir, 'metrics.json'), 'utf8'));
  // metrics.json holds what the data determines; timings only travel in the returned metrics.
  if (t.name !== 'synthesize-imdb-wiki') {
    assert.equal(typeof returned.seconds, 'number', `${t.name}: returned metrics carry seconds`);
    assert.equal(file.seconds, undefined, `${t.name}: no timing in metrics.json`);
  }
  const metrics = { ...file, ...returned };
  for (const [k, v] of Object.entries(file)) assert.deepEqual(returned[k], v, `${t.name}: returned ${k} = metrics.json`);
  assert.ok(progress.length > 0, `${t.name} reports progress`);
  return { dir, logs, metrics };
}

function readJsonl<T>(file: string): T[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);
}

async function tarMembers(file: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const ev of readArchive(file)) if (ev.kind === 'member') out.set(ev.name, ev.data);
  return out;
}

async function writeTar(file: string, members: Array<[string, Buffer]>): Promise<Buffer> {
  const bytes = await tarBytes(members);
  fs.writeFileSync(file, bytes);
  return bytes;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------- the synthesized chain, built once

interface Truth { full_path: string; member: string; kind: string; width: number; height: number; gender: number | null; age: number; box: [number, number, number, number] | null }

let chainPromise: Promise<{ synth: Ran; ex: Ran; fi: Ran; lb: Ran }> | undefined;
function chain() {
  chainPromise ??= (async () => {
    const synth = await runStage(synthesize, { ...SYNTH_DEFAULTS, count: 90, seed: 11, bad_rows: true });
    const ex = await runStage(extract, {}, { data: synth.dir });
    const fi = await runStage(filter, {}, { extract: ex.dir });
    const lb = await runStage(letterbox, {}, { filter: fi.dir });
    return { synth, ex, fi, lb };
  })();
  return chainPromise;
}

const RULE_OF_KIND: Record<string, string> = {
  tiny_image: 'min_side', second_face: 'second_face', missing_gender: 'unknown_label', no_face: 'face_score',
  low_face_score: 'face_score', age_too_young: 'age_range', age_too_old: 'age_range', box_outside: 'box_outside',
  corrupt_jpeg: 'undecodable', truncated_jpeg: 'undecodable',
};

test('extract-metadata on synthesized data: every row joined, sizes, boxes, labels, problems', async () => {
  const { synth, ex } = await chain();
  const truth = readJsonl<Truth>(path.join(synth.dir, 'rows.jsonl'));
  const rows = readJsonl<MetaImageRow>(path.join(ex.dir, 'rows.jsonl'));
  const tar = path.join(synth.dir, 'images.tar');
  assert.equal(rows.length, 90);
  assert.deepEqual(
    { rows: ex.metrics.rows, images_seen: ex.metrics.images_seen, joined: ex.metrics.joined, missing: ex.metrics.missing, corrupt: ex.metrics.corrupt, truncated: ex.metrics.truncated, unmatched: ex.metrics.unmatched_members },
    { rows: 90, images_seen: 90, joined: 90, missing: 0, corrupt: 1, truncated: 1, unmatched: 0 },
  );
  assert.equal(typeof ex.metrics.seconds, 'number');
  const digest = sha256(fs.readFileSync(tar));
  for (const [i, r] of rows.entries()) {
    const t = truth[i]!;
    const where = `${t.full_path} (${t.kind})`;
    assert.equal(r.key, t.full_path, 'rows keep .mat order');
    assert.equal(r.member, t.member, where);
    assert.deepEqual(r.archive, { path: tar, sha256: digest }, where);
    assert.equal(r.image_problem, t.kind === 'corrupt_jpeg' ? 'corrupt' : t.kind === 'truncated_jpeg' ? 'truncated' : null, where);
    if (t.kind === 'corrupt_jpeg') assert.deepEqual([r.width, r.height], [null, null]);
    else assert.deepEqual([r.width, r.height], [t.width, t.height], `${where}: size from the header`);
    assert.equal(r.gender, t.gender, where);
    assert.equal(r.age, t.age, where);
    // face_location [l+1, t+1, l+w, t+h] → box [l, t, l+w-1, t+h-1]; no face: [1 1 1 1] → [0 0 0 0].
    assert.deepEqual(r.box, t.box ? [t.box[0], t.box[1], t.box[0] + t.box[2] - 1, t.box[1] + t.box[3] - 1] : [0, 0, 0, 0], where);
    if (t.kind === 'no_face') assert.equal(r.face_score, '-Infinity');
    else assert.equal(typeof r.face_score, 'number');
    if (t.kind === 'second_face') assert.equal(typeof r.second_face_score, 'number');
    else assert.equal(r.second_face_score, 'NaN', where);
  }
  const corrupt = truth.find((t) => t.kind === 'corrupt_jpeg')!;
  assert.ok(ex.logs.some((l) => l.includes('corrupt') && l.includes(tar) && l.includes(corrupt.member)), ex.logs.join('\n'));
});

test('filter: per-rule counts are what synthesize\'s bad kinds predict; kept = the good rows', async () => {
  const { synth, fi } = await chain();
  const truth = readJsonl<Truth>(path.join(synth.dir, 'rows.jsonl'));
  const predicted: Record<string, number> = { face_score: 0, second_face: 0, unknown_label: 0, age_range: 0, min_side: 0, box_outside: 0, undecodable: 0 };
  for (const t of truth) if (t.kind !== 'good') predicted[RULE_OF_KIND[t.kind]!]!++;
  assert.deepEqual(fi.metrics.dropped, predicted);
  assert.deepEqual(predicted, { face_score: 2, second_face: 1, unknown_label: 1, age_range: 2, min_side: 1, box_outside: 1, undecodable: 2 });
  assert.equal(fi.metrics.rows_in, 90);
  assert.equal(fi.metrics.kept, 80);
  const kept = readJsonl<MetaImageRow>(path.join(fi.dir, 'rows.jsonl'));
  assert.deepEqual(kept.map((r) => r.key), truth.filter((t) => t.kind === 'good').map((t) => t.full_path));

  // Looser settings keep more; each setting is honoured.
  const loose = await runStage(filter, { min_face_score: 0, single_face: false, min_side: 50, min_age: 0, max_age: 200 }, { extract: (await chain()).ex.dir });
  assert.deepEqual(loose.metrics.dropped, { face_score: 1, second_face: 0, unknown_label: 1, age_range: 0, min_side: 0, box_outside: 1, undecodable: 2 });
});

/** A white image of w×h as JPEG. */
const white = (w: number, h: number) => sharp({ create: { width: w, height: h, channels: 3, background: '#ffffff' } }).jpeg({ quality: 95 }).toBuffer();

function metaRow(fullPath: string, loc: [number, number, number, number], extra: Partial<MetaRow> = {}): MetaRow {
  return {
    full_path: fullPath, name: fullPath, dob: matlabDatenum(1970, 3, 1), photo_taken: 2000, gender: 1,
    face_location: loc, face_score: 3, second_face_score: NaN, ...extra,
  };
}

test('letterbox: non-square images, both paddings, exact boxes, black padding, several faces per image', async () => {
  const src = tempDir('lbsrc');
  // wide.jpg (400x200) in a tar under wiki_crop/; tall.jpg (200x400) in a directory, member = full_path.
  await writeTar(path.join(src, 'wiki.tar'), [['wiki_crop/01/wide.jpg', await white(400, 200)]]);
  fs.mkdirSync(path.join(src, 'imgs', '02'), { recursive: true });
  fs.writeFileSync(path.join(src, 'imgs', '02', 'tall.jpg'), await white(200, 400));
  fs.writeFileSync(path.join(src, 'wiki.mat'), writeImdbWikiMeta('wiki', [
    metaRow('01/wide.jpg', [41, 21, 200, 120]),
    metaRow('02/tall.jpg', [21, 41, 120, 200], { gender: 0, photo_taken: 2045 }),
    metaRow('01/wide.jpg', [251, 51, 350.7, 150], { gender: 0, photo_taken: 2021 }), // a second face in wide.jpg
  ]));
  const ex = await runStage(extract, { mat: path.join(src, 'wiki.mat'), images: [path.join(src, 'wiki.tar'), path.join(src, 'imgs')] });
  assert.deepEqual(extract.externalInputs!({ mat: '/a.mat', images: ['/b.tar'], strict: false }), ['/a.mat', '/b.tar']);
  assert.equal(ex.metrics.joined, 3);
  const exRows = readJsonl<MetaImageRow>(path.join(ex.dir, 'rows.jsonl'));
  assert.deepEqual(exRows[1]!.archive!.path, path.join(src, 'imgs'));
  assert.equal(exRows[1]!.member, '02/tall.jpg');
  assert.deepEqual(exRows[2]!.box, [250, 50, 349, 149], 'floor(face_location) - 1');
  // A tar member's bytes are located in the tar (so letterbox reads just them); a folder's are not.
  const tarRow = exRows.find((r) => r.archive!.path.endsWith('.tar'))!;
  const tarBytes = fs.readFileSync(path.resolve(repoRoot, tarRow.archive!.path));
  assert.equal(typeof tarRow.member_offset, 'number');
  assert.equal(tarBytes.subarray(tarRow.member_offset!, tarRow.member_offset! + tarRow.member_bytes!).readUInt16BE(0), 0xffd8, 'a JPEG starts at member_offset');
  assert.deepEqual([exRows[1]!.member_offset, exRows[1]!.member_bytes], [null, null]);
  const fi = await runStage(filter, {}, { extract: ex.dir });
  assert.equal(fi.metrics.kept, 3);

  const expected = {
    'bottom-right': { wide: { pad: [0, 0, 0, 125], boxes: [[25, 12.5, 124.375, 74.375], [156.25, 31.25, 218.125, 93.125]] }, tall: { pad: [0, 0, 125, 0], box: [12.5, 25, 74.375, 124.375] } },
    centre: { wide: { pad: [0, 62, 0, 63], boxes: [[25, 74.5, 124.375, 136.375], [156.25, 93.25, 218.125, 155.125]] }, tall: { pad: [62, 0, 63, 0], box: [74.5, 25, 136.375, 124.375] } },
  } as const;
  for (const padding of ['bottom-right', 'centre'] as const) {
    const lb = await runStage(letterbox, { padding }, { filter: fi.dir });
    const rows = readJsonl<LetterboxRow>(path.join(lb.dir, 'rows.jsonl'));
    assert.deepEqual(rows.map((r) => [r.key, r.member, r.faces.length]), [['01/wide.jpg', '0.jpg', 2], ['02/tall.jpg', '1.jpg', 1]]);
    const [wide, tall] = rows as [LetterboxRow, LetterboxRow];
    const lbTar = fs.readFileSync(path.join(lb.dir, 'images.tar'));
    for (const r of rows) {
      const img = lbTar.subarray(r.member_offset!, r.member_offset! + r.member_bytes);
      assert.deepEqual([(await sharp(img).metadata()).width, img.at(-1)], [250, 0xd9], `${r.member}: its JPEG lies at member_offset in images.tar`);
    }
    const e = expected[padding];
    assert.equal(wide.scale, 0.625);
    assert.deepEqual([wide.size, wide.original_width, wide.original_height], [250, 400, 200]);
    assert.deepEqual(wide.pad, e.wide.pad);
    assert.deepEqual(wide.faces.map((f) => f.box), e.wide.boxes);
    assert.deepEqual(wide.faces.map((f) => [f.gender, f.age, f.age_bucket]), [[1, 30, 2], [0, 51, 4]]);
    assert.deepEqual(tall.pad, e.tall.pad);
    assert.deepEqual(tall.faces[0]!.box, e.tall.box);
    assert.deepEqual([tall.faces[0]!.age, tall.faces[0]!.age_bucket], [75, 6]);
    assert.deepEqual(tall.source, { archive: path.join(src, 'imgs'), member: '02/tall.jpg' });
    assert.equal(lb.metrics.written, 2);
    assert.equal(lb.metrics.faces, 3);

    // Pixels: the picture is white where the geometry puts it, the padding is black.
    const members = await tarMembers(path.join(lb.dir, 'images.tar'));
    const px = async (name: string) => sharp(members.get(name)!).raw().toBuffer({ resolveWithObject: true });
    const w = await px('0.jpg');
    assert.deepEqual([w.info.width, w.info.height, w.info.channels], [250, 250, 3]);
    const at = (img: typeof w, x: number, y: number) => img.data[(y * img.info.width + x) * 3]!;
    const t = await px('1.jpg');
    if (padding === 'bottom-right') {
      assert.ok(at(w, 125, 60) > 240 && at(w, 125, 200) < 15, 'wide: white on top, black below row 125');
      assert.ok(at(t, 60, 125) > 240 && at(t, 200, 125) < 15, 'tall: white on the left, black right of column 125');
    } else {
      assert.ok(at(w, 125, 30) < 15 && at(w, 125, 125) > 240 && at(w, 125, 230) < 15, 'wide: black bands above and below');
      assert.ok(at(t, 30, 125) < 15 && at(t, 125, 125) > 240 && at(t, 230, 125) < 15, 'tall: black bands left and right');
    }
  }

  const png = await runStage(letterbox, { format: 'png', size: 64 }, { filter: fi.dir });
  const pngMembers = await tarMembers(path.join(png.dir, 'images.tar'));
  assert.deepEqual([...pngMembers.keys()], ['0.png', '1.png']);
  assert.deepEqual(await sharp(pngMembers.get('0.png')!).metadata().then((m) => [m.format, m.width, m.height]), ['png', 64, 64]);
});

async function allRecords(dir: string): Promise<FaceRecord[]> {
  const out: FaceRecord[] = [];
  for (const split of ['train', 'test'] as const) for await (const r of readFaceRecords(dir, split)) out.push(r);
  return out;
}

test('shard: every record decodes back to its letterbox row; byte-identical reruns; raw; CRC errors name file and record', async () => {
  const { lb } = await chain();
  const lbRows = readJsonl<LetterboxRow>(path.join(lb.dir, 'rows.jsonl'));
  const lbImages = await tarMembers(path.join(lb.dir, 'images.tar'));
  const a = await runStage(shard, { count: 4, test_shards: 1 }, { letterbox: lb.dir });
  const b = await runStage(shard, { count: 4, test_shards: 1 }, { letterbox: lb.dir });
  const names = ['train-00000-of-00004.tfrecord', 'train-00001-of-00004.tfrecord', 'train-00002-of-00004.tfrecord', 'test-00003-of-00004.tfrecord'];
  assert.deepEqual(faceShardFiles(a.dir).map((f) => path.basename(f)).sort(), [...names].sort());
  for (const n of names) assert.ok(fs.readFileSync(path.join(a.dir, n)).equals(fs.readFileSync(path.join(b.dir, n))), `${n} differs between runs`);
  assert.deepEqual(Object.keys(a.metrics.records).sort(), [...names].sort());
  assert.equal(a.metrics.total_records, lbRows.length);
  assert.equal(a.metrics.train_records + a.metrics.test_records, lbRows.length);
  assert.equal(a.metrics.passed_through, lbRows.length, 'jpeg letterbox images are passed through');

  const records = await allRecords(a.dir);
  assert.equal(records.length, lbRows.length);
  const byKey = new Map(lbRows.map((r) => [r.key, r]));
  const orderInShard = new Map<string, string[]>();
  for (const rec of records) {
    const row = byKey.get(rec.key)!;
    assert.ok(row, `record key ${rec.key} is a letterbox row`);
    const shardIdx = shardOf(rec.key, 4);
    assert.equal(path.basename(rec.file), names[shardIdx], `${rec.key} is in the shard its key hashes to`);
    assert.equal(path.basename(rec.file).startsWith(splitOfShard(shardIdx, 4, 1)), true);
    assert.equal(rec.format, 'jpeg');
    assert.deepEqual([rec.image.width, rec.image.height, rec.image.data.length], [250, 250, 250 * 250 * 3]);
    const expect = await sharp(lbImages.get(row.member)!).raw().toBuffer();
    assert.ok(Buffer.from(rec.image.data).equals(expect), `${rec.key}: pixels are the letterbox image's`);
    assert.equal(rec.faces.length, row.faces.length);
    for (const [i, f] of rec.faces.entries()) {
      const want = row.faces[i]!;
      assert.deepEqual(f.box, want.box.map(Math.fround));
      assert.deepEqual([f.gender, f.age, f.age_bucket], [want.gender, want.age, want.age_bucket]);
      const cell = cellTarget(want.box, 250, 32);
      assert.deepEqual(f.cell, { ...cell, offset_x: Math.fround(cell.offset_x), offset_y: Math.fround(cell.offset_y), h_cells: Math.fround(cell.h_cells), w_cells: Math.fround(cell.w_cells) });
      assert.ok(f.cell!.offset_x >= 0 && f.cell!.offset_x <= 1 && f.cell!.cell_col >= 0 && f.cell!.cell_col < 8);
    }
    orderInShard.set(rec.file, [...(orderInShard.get(rec.file) ?? []), rec.key]);
  }
  // jpeg from a jpeg letterbox: the very bytes of the letterbox image, not a re-encode.
  for (const n of names) {
    for (const [i, payload] of readAllTFRecords(path.join(a.dir, n)).entries()) {
      const ex = parseFaceExample(decodeExample(payload), `${n}: record ${i}`);
      assert.ok(Buffer.from(ex.encoded.bytes).equals(lbImages.get(byKey.get(ex.key)!.member)!), `${ex.key}: bytes passed through`);
    }
  }
  // Inside a shard, records follow letterbox's order.
  const lbOrder = lbRows.map((r) => r.key);
  for (const keys of orderInShard.values()) assert.deepEqual(keys, lbOrder.filter((k) => keys.includes(k)));

  // raw: the same pixels, stored undecoded.
  const raw = await runStage(shard, { count: 4, encoding: 'raw' }, { letterbox: lb.dir });
  const rawRecords = await allRecords(raw.dir);
  assert.deepEqual(rawRecords.map((r) => r.key), records.map((r) => r.key));
  for (const [i, r] of rawRecords.entries()) {
    assert.equal(r.format, 'raw');
    assert.ok(Buffer.from(r.image.data).equals(Buffer.from(records[i]!.image.data)));
  }
  const pngShards = await runStage(shard, { count: 2, encoding: 'png' }, { letterbox: lb.dir });
  for await (const r of readFaceRecords(pngShards.dir, 'train')) {
    assert.equal(r.format, 'png');
    assert.equal(r.image.data.length, 250 * 250 * 3);
    break;
  }

  // A flipped byte in record 1 of a shard: the CRC error names the file and the record.
  const broken = tempDir('crc');
  const victim = names.find((n) => a.metrics.records[n] >= 2 && n.startsWith('train'))!;
  for (const n of names) fs.copyFileSync(path.join(a.dir, n), path.join(broken, n));
  const bytes = fs.readFileSync(path.join(broken, victim));
  const firstLen = Number(bytes.readBigUInt64LE(0));
  const second = 12 + firstLen + 4;
  bytes[second + 12 + 40] ^= 0xff; // inside record 1's payload
  fs.writeFileSync(path.join(broken, victim), bytes);
  await assert.rejects(allRecords(broken), (err: unknown) => {
    assert.ok(err instanceof TFRecordError, String(err));
    assert.equal(path.basename(err.file), victim);
    assert.equal(err.recordIndex, 1);
    assert.match(err.message, /record 1 .*data CRC mismatch/);
    return true;
  });
  await assert.rejects(runStage(shard, { count: 2, test_shards: 3 }, { letterbox: lb.dir }), /test_shards \(3\) is larger than count \(2\)/);
});

test('crop: face crops from the originals, same split as shard', async () => {
  const { fi, lb } = await chain();
  const kept = readJsonl<MetaImageRow>(path.join(fi.dir, 'rows.jsonl'));
  const c = await runStage(crop, { count: 4, test_shards: 1, size: 48 }, { filter: fi.dir });
  assert.equal(c.metrics.total_records, kept.length);
  const s = await runStage(shard, { count: 4, test_shards: 1 }, { letterbox: lb.dir });
  const shardSplit = new Map<string, string>();
  for (const split of ['train', 'test'] as const) for await (const r of readFaceRecords(s.dir, split)) shardSplit.set(r.key, split);
  const byKey = new Map(kept.map((r) => [r.key, r]));
  let n = 0;
  for (const split of ['train', 'test'] as const) {
    for await (const r of readFaceRecords(c.dir, split)) {
      n++;
      assert.equal(shardSplit.get(r.key), split, `${r.key}: crop split = shard split`);
      assert.deepEqual([r.image.width, r.image.height], [48, 48]);
      const row = byKey.get(r.key)!;
      assert.deepEqual(r.faces, [{ gender: row.gender, age: row.age, age_bucket: Math.floor((row.age! - 10) / 10) }]);
    }
  }
  assert.equal(n, kept.length);
  assert.equal(c.metrics.test_records, s.metrics.test_records);
});

test('crop: the crop is the box plus margin of the original', async () => {
  // Left half black, right half white; the face box covers x 100..199 (straddling the edge at 150).
  const src = tempDir('cropsrc');
  const half = await sharp({ create: { width: 300, height: 300, channels: 3, background: '#000000' } })
    .composite([{ input: { create: { width: 150, height: 300, channels: 3, background: '#ffffff' } }, left: 150, top: 0 }]).png().toBuffer();
  await writeTar(path.join(src, 'a.tar'), [['a/01/x.png', half]]);
  fs.writeFileSync(path.join(src, 'wiki.mat'), writeImdbWikiMeta('wiki', [metaRow('01/x.png', [101, 101, 200, 200])]));
  const ex = await runStage(extract, { mat: path.join(src, 'wiki.mat'), images: [path.join(src, 'a.tar')] });
  const fi = await runStage(filter, {}, { extract: ex.dir });
  const c = await runStage(crop, { count: 1, test_shards: 0, margin: 0, size: 100, format: 'png' }, { filter: fi.dir });
  const [rec] = await allRecords(c.dir);
  // margin 0: crop = x 100..199 at scale 1: columns < 50 black, >= 50 white.
  const at = (x: number, y: number) => rec!.image.data[(y * 100 + x) * 3]!;
  assert.deepEqual([at(10, 50), at(49, 50), at(50, 50), at(90, 50)], [0, 0, 255, 255]);
});

/** A JPEG of noise (so it is several KB, unlike a flat colour). */
async function noisy(w: number, h: number): Promise<Buffer> {
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 2654435761) >>> 24;
  return sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
}

test('bad items: garbage member, truncated JPEG, tar cut mid-member, undecodable image; strict makes each fatal', async () => {
  const src = tempDir('bad');
  const good = await noisy(300, 240);
  assert.ok(good.length > 4000);
  const half = good.subarray(0, Math.floor(good.length / 2));
  const eoiOnly = Buffer.concat([half, Buffer.from([0xff, 0xd9])]); // passes the cheap check, fails to decode
  const garbage = Buffer.alloc(3000);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919) & 255;
  const badTar = path.join(src, 'bad.tar');
  await writeTar(badTar, [['wiki_crop/01/good.jpg', good], ['wiki_crop/02/garbage.jpg', garbage], ['wiki_crop/03/trunc.jpg', half], ['wiki_crop/04/eoi.jpg', eoiOnly]]);
  const whole = await writeTar(path.join(src, 'whole.tar'), [['wiki_crop/05/ok.jpg', good], ['wiki_crop/06/cut.jpg', good]]);
  const cutTar = path.join(src, 'cut.tar');
  fs.writeFileSync(cutTar, whole.subarray(0, 512 + Math.ceil(good.length / 512) * 512 + 512 + 1000)); // cut.jpg stops after 1000 bytes
  const loc: [number, number, number, number] = [31, 31, 130, 150];
  const mat = path.join(src, 'wiki.mat');
  fs.writeFileSync(mat, writeImdbWikiMeta('wiki', ['01/good.jpg', '02/garbage.jpg', '03/trunc.jpg', '04/eoi.jpg', '05/ok.jpg', '06/cut.jpg', '07/absent.jpg'].map((p) => metaRow(p, loc))));

  const ex = await runStage(extract, { mat, images: [badTar, cutTar] });
  assert.deepEqual(
    [ex.metrics.joined, ex.metrics.missing, ex.metrics.corrupt, ex.metrics.truncated, ex.metrics.archive_errors, ex.metrics.images_seen],
    [6, 1, 1, 2, 1, 6],
  );
  const problems = readJsonl<MetaImageRow>(path.join(ex.dir, 'rows.jsonl')).map((r) => r.image_problem);
  assert.deepEqual(problems, [null, 'corrupt', 'truncated', null, null, 'truncated', 'missing']);
  const logged = ex.logs.join('\n');
  assert.match(logged, /corrupt: .*bad\.tar: wiki_crop\/02\/garbage\.jpg: /);
  assert.match(logged, /truncated: .*bad\.tar: wiki_crop\/03\/trunc\.jpg: no end-of-image marker/);
  assert.match(logged, /damaged_archive: .*cut\.tar: wiki_crop\/06\/cut\.jpg: archive ends inside this member/);

  const fi = await runStage(filter, {}, { extract: ex.dir });
  assert.equal(fi.metrics.kept, 3);
  assert.equal(fi.metrics.dropped.undecodable, 4);

  const lb = await runStage(letterbox, {}, { filter: fi.dir });
  assert.equal(lb.metrics.written, 2);
  assert.deepEqual(lb.metrics.skipped, { undecodable: 1 });
  assert.match(lb.logs.join('\n'), /undecodable: .*bad\.tar: wiki_crop\/04\/eoi\.jpg: /);
  const c = await runStage(crop, { count: 2 }, { filter: fi.dir });
  assert.equal(c.metrics.total_records, 2);
  assert.deepEqual(c.metrics.skipped, { undecodable: 1 });

  // strict: the first bad item is fatal, and the error names the archive and the member.
  await assert.rejects(runStage(extract, { mat, images: [badTar], strict: true }), /extract-metadata: .*bad\.tar: wiki_crop\/02\/garbage\.jpg: corrupt/);
  await assert.rejects(runStage(extract, { mat, images: [cutTar], strict: true }), /extract-metadata: .*cut\.tar: wiki_crop\/06\/cut\.jpg: damaged_archive: archive ends inside this member/);
  await assert.rejects(runStage(letterbox, { strict: true }, { filter: fi.dir }), /letterbox: .*bad\.tar: wiki_crop\/04\/eoi\.jpg: undecodable/);
  await assert.rejects(runStage(crop, { strict: true }, { filter: fi.dir }), /crop: .*bad\.tar: wiki_crop\/04\/eoi\.jpg: undecodable/);

  // The tar changes after extract-metadata read it: letterbox refuses stale rows.
  await writeTar(badTar, [['wiki_crop/01/good.jpg', await white(320, 240)], ['wiki_crop/04/eoi.jpg', eoiOnly]]);
  await assert.rejects(runStage(letterbox, {}, { filter: fi.dir }), /bad\.tar: the archive has changed since its rows were made/);
});

test('stages stop when aborted, and explain a missing upstream', async () => {
  const { synth } = await chain();
  const ac = new AbortController();
  ac.abort(new Error('stopped by test'));
  await assert.rejects(runStage(extract, {}, { data: synth.dir }, ac.signal), /stopped by test/);
  const { ex, fi, lb } = await chain();
  await assert.rejects(runStage(filter, {}, { extract: ex.dir }, ac.signal), /stopped by test/);
  await assert.rejects(runStage(letterbox, {}, { filter: fi.dir }, ac.signal), /stopped by test/);
  await assert.rejects(runStage(crop, {}, { filter: fi.dir }, ac.signal), /stopped by test/);
  await assert.rejects(runStage(shard, {}, { letterbox: lb.dir }, ac.signal), /stopped by test/);
  // Aborted half way through the tar: letterbox stops, the error is the abort reason.
  const mid = new AbortController();
  let seen = 0;
  await assert.rejects(runStage(letterbox, {}, { filter: fi.dir }, mid.signal, (done) => {
    seen = done;
    if (done === 10) mid.abort(new Error('stopped half way'));
  }), /stopped half way/);
  assert.ok(seen < 40, `letterbox stopped soon after the abort (last progress ${seen} of 80)`);
  await assert.rejects(runStage(extract, {}, {}), /extract-metadata: needs exactly one upstream stage/);
  await assert.rejects(runStage(extract, {}, { a: synth.dir, b: synth.dir }), /got a, b/);
});

test('end to end through the CLI: synthesize → extract → filter → letterbox → shard (+ crop), then fully cached', () => {
  const dir = tempDir('cli');
  writeTree(dir, {
    'pipelines/faces.yaml': `
stages:
  data:
    uses: synthesize-imdb-wiki
    with: { count: 40, seed: 4, min_size: 160, max_size: 260 }
  extract:
    uses: extract-metadata
    needs: [data]
  filter:
    uses: filter
    needs: [extract]
  letterbox:
    uses: letterbox
    needs: [filter]
    with: { size: 96, padding: centre }
  shard:
    uses: shard
    needs: [letterbox]
    with: { count: 3, cell_size: 16 }
  crop:
    uses: crop
    needs: [filter]
    with: { count: 3, size: 32 }
`,
  });
  const env = { PIPE_STORE: path.join(dir, 'store') };
  const first = pipeSync(['run', 'pipelines/faces.yaml', '--json'], { cwd: dir, env });
  assert.equal(first.code, 0, first.stderr + first.stdout);
  const stages = ['crop', 'data', 'extract', 'filter', 'letterbox', 'shard'];
  assert.deepEqual(statuses(first), Object.fromEntries(stages.map((s) => [`faces/${s}`, 'ran'])));
  const second = pipeSync(['run', 'pipelines/faces.yaml', '--json'], { cwd: dir, env });
  assert.equal(second.code, 0, second.stderr);
  assert.deepEqual(statuses(second), Object.fromEntries(stages.map((s) => [`faces/${s}`, 'cached'])));
  assert.equal(summary(second).ran, 0);

  const show = pipeSync(['show', 'pipelines/faces.yaml', 'filter', '--json'], { cwd: dir, env });
  assert.equal(show.code, 0, show.stderr);
  assert.equal(show.json[0].metrics.rows_in, 40);
  assert.equal(show.json[0].metrics.kept, 30);
  const shardShow = pipeSync(['show', 'pipelines/faces.yaml', 'shard', '--json'], { cwd: dir, env }).json[0];
  assert.equal(shardShow.metrics.total_records, 30);
  assert.deepEqual(Object.keys(shardShow.outputs).filter((f) => f.endsWith('.tfrecord')).sort(),
    ['test-00002-of-00003.tfrecord', 'train-00000-of-00003.tfrecord', 'train-00001-of-00003.tfrecord']);

  // Rerunning extract gives the same bytes (no timings in its files): nothing downstream reruns.
  const forced = pipeSync(['run', 'pipelines/faces.yaml', '--json', '--force', 'extract'], { cwd: dir, env });
  assert.equal(forced.code, 0, forced.stderr);
  assert.deepEqual(Object.entries(statuses(forced)).filter(([, s]) => s === 'ran').map(([k]) => k), ['faces/extract']);

  // A letterbox setting change reruns letterbox and shard only.
  const third = pipeSync(['run', 'pipelines/faces.yaml', '--json', '--set', 'letterbox.size=64'], { cwd: dir, env });
  assert.equal(third.code, 0, third.stderr);
  assert.deepEqual(Object.entries(statuses(third)).filter(([, s]) => s === 'ran').map(([k]) => k).sort(), ['faces/letterbox', 'faces/shard']);
});
