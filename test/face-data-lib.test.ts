// Unit tests of the face-study data libraries: image probing, archive streaming (damaged tars),
// the ordered window, filter rules, geometry (letterbox, crops, cells), shard assignment and the
// record format.
import { test } from 'node:test';
import { tarBytes, tempDirs } from './helpers.js';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { probeImage, probeJpeg, probePng } from '../stages/lib/image-probe.js';
import { OrderedWindow, TarFileWriter, forEachWantedImage, normaliseMemberName, readArchive, readLocated, tarHeaderMismatch, type ArchiveEvent } from '../stages/lib/image-archive.js';
import { BadItems, FILTER_RULES, firstFailedRule, jsonNumber, numberOf, readJsonl, recordedPath, type MetaImageRow } from '../stages/lib/face-rows.js';
import { cellTarget, cropRect, letterboxBox, letterboxGeometry } from '../stages/lib/face-geometry.js';
import { shardFileName, shardOf, splitOfShard, shardTotals } from '../stages/lib/face-shards.js';
import { encodeCropExample, encodeFaceExample, parseFaceExample } from '../stages/lib/face-records.js';
import { decodeExample } from '../stages/lib/tf-example.js';
import { cropImage, decodeRgb, letterboxImage, reencode } from '../stages/lib/face-images.js';

const tempDir = tempDirs('pipe-facelib');

const jpeg = (w: number, h: number) => sharp({ create: { width: w, height: h, channels: 3, background: { r: 200, g: 90, b: 40 } } }).jpeg().toBuffer();

async function collect(source: string, want?: (n: string) => boolean): Promise<ArchiveEvent[]> {
  const out: ArchiveEvent[] = [];
  for await (const ev of readArchive(source, { want })) out.push(ev);
  return out;
}

test('probeJpeg / probePng: size from the header, truncation and garbage', async () => {
  const j = await jpeg(123, 45);
  assert.deepEqual(probeJpeg(j), { format: 'jpeg', width: 123, height: 45, problem: null, detail: '' });
  // Zero padding after EOI is tolerated.
  assert.equal(probeJpeg(Buffer.concat([j, Buffer.alloc(100)])).problem, null);
  const half = probeJpeg(j.subarray(0, Math.floor(j.length / 2)));
  assert.equal(half.problem, 'truncated');
  assert.equal(half.width, 123, 'the size is still known when the header is intact');
  assert.match(half.detail, /FF D9/);
  assert.equal(probeJpeg(j.subarray(0, 10)).problem, 'truncated');
  const garbage = Buffer.from(j);
  garbage[2] = 0x12; // not a marker where one must be
  assert.equal(probeJpeg(garbage).problem, 'corrupt');
  assert.equal(probeJpeg(Buffer.from('hello world')).problem, 'corrupt');

  const p = await sharp({ create: { width: 30, height: 20, channels: 4, background: '#00ff0080' } }).png().toBuffer();
  assert.deepEqual(probePng(p), { format: 'png', width: 30, height: 20, problem: null, detail: '' });
  assert.equal(probePng(p.subarray(0, p.length - 20)).problem, 'truncated');

  // Other formats go through sharp's header reader; garbage is corrupt, never a throw.
  const webp = await sharp({ create: { width: 17, height: 9, channels: 3, background: '#123456' } }).webp().toBuffer();
  assert.deepEqual(await probeImage(webp), { format: 'webp', width: 17, height: 9, problem: null, detail: '' });
  const bad = await probeImage(Buffer.from([0x47, 1, 2, 3, 4, 5]));
  assert.equal(bad.problem, 'corrupt');
  assert.match(bad.detail, /starts 47 01 02 03/);
  assert.equal((await probeImage(Buffer.alloc(0))).problem, 'corrupt');
});

test('readArchive: members, digest, ./ names, gzip, directories', async () => {
  const dir = tempDir('arch');
  const a = await jpeg(10, 10);
  const b = await jpeg(20, 10);
  const bytes = await tarBytes([['./wiki_crop/01/a.jpg', a], ['wiki_crop/02/b.jpg', b], ['notes.txt', Buffer.from('x')]]);
  const tarFile = path.join(dir, 'x.tar');
  fs.writeFileSync(tarFile, bytes);
  const evs = await collect(tarFile, (n) => n.endsWith('.jpg'));
  assert.deepEqual(evs.map((e) => e.kind), ['member', 'member', 'skip', 'end']);
  assert.equal((evs[0] as { name: string }).name, 'wiki_crop/01/a.jpg', 'leading ./ is dropped');
  assert.ok((evs[1] as { data: Buffer }).data.equals(b));
  const end = evs[3] as { sha256: string; bytes: number };
  assert.equal(end.sha256, createHash('sha256').update(bytes).digest('hex'));
  assert.equal(end.bytes, bytes.length);

  const gz = path.join(dir, 'x.tar.gz');
  fs.writeFileSync(gz, (await import('node:zlib')).gzipSync(bytes));
  const gzEvs = await collect(gz);
  assert.deepEqual(gzEvs.filter((e) => e.kind === 'member').map((e) => (e as { name: string }).name), ['wiki_crop/01/a.jpg', 'wiki_crop/02/b.jpg', 'notes.txt']);
  assert.equal((gzEvs.at(-1) as { sha256: string }).sha256, createHash('sha256').update(fs.readFileSync(gz)).digest('hex'), 'digest of the file as stored');

  const tree = path.join(dir, 'tree');
  fs.mkdirSync(path.join(tree, '17'), { recursive: true });
  fs.writeFileSync(path.join(tree, '17', 'b.jpg'), b);
  fs.writeFileSync(path.join(tree, '17', 'a.jpg'), a);
  fs.writeFileSync(path.join(tree, 'wiki.mat'), 'not an image');
  const dirEvs = await collect(tree, (n) => n.endsWith('.jpg'));
  assert.deepEqual(dirEvs.map((e) => (e.kind === 'end' ? 'end' : `${e.kind}:${(e as { name: string }).name}`)), ['member:17/a.jpg', 'member:17/b.jpg', 'skip:wiki.mat', 'end']);
  const d1 = (dirEvs.at(-1) as { sha256: string }).sha256;
  fs.writeFileSync(path.join(tree, '17', 'a.jpg'), b);
  const d2 = ((await collect(tree)).at(-1) as { sha256: string }).sha256;
  assert.notEqual(d1, d2, 'a directory digest follows file contents');

  assert.equal(normaliseMemberName('././a\\b.jpg'), 'a/b.jpg');
  await assert.rejects(collect(path.join(dir, 'absent.tar')), /absent\.tar: cannot read image source/);
});

test('readArchive: a tar cut inside a member and a garbage header are reported, not thrown', async () => {
  const dir = tempDir('damaged');
  const a = await jpeg(10, 10);
  const big = Buffer.alloc(5000, 7);
  const bytes = await tarBytes([['a.jpg', a], ['b.jpg', big]]);
  const headerB = 512 + Math.ceil(a.length / 512) * 512;
  const cut = path.join(dir, 'cut.tar');
  fs.writeFileSync(cut, bytes.subarray(0, headerB + 512 + 1000)); // b.jpg's data stops after 1000 bytes
  const evs = await collect(cut);
  assert.deepEqual(evs.map((e) => e.kind), ['member', 'damaged', 'end']);
  const dmg = evs[1] as { member: string; detail: string };
  assert.equal(dmg.member, 'b.jpg');
  assert.match(dmg.detail, /ends inside this member/);
  assert.equal((evs[2] as { sha256: string }).sha256, createHash('sha256').update(fs.readFileSync(cut)).digest('hex'));

  const garbled = Buffer.from(bytes);
  garbled.fill(0x41, headerB, headerB + 512); // b.jpg's header is garbage
  const g = path.join(dir, 'garbled.tar');
  fs.writeFileSync(g, garbled);
  const gEvs = await collect(g);
  assert.deepEqual(gEvs.map((e) => e.kind), ['member', 'damaged', 'end']);
  assert.equal((gEvs[1] as { member: string | null }).member, null);
  assert.match((gEvs[1] as { detail: string }).detail, /Invalid tar header/);
  // The digest covers the whole file even though reading stopped early.
  assert.equal((gEvs[2] as { sha256: string }).sha256, createHash('sha256').update(garbled).digest('hex'));
});

test('OrderedWindow: results in push order, at most limit in flight', async () => {
  const seen: number[] = [];
  let running = 0;
  let peak = 0;
  const w = new OrderedWindow<number>(3, (v) => {
    seen.push(v);
  });
  for (let i = 0; i < 12; i++) {
    running++;
    peak = Math.max(peak, running);
    // Later tasks finish first: order must still be kept.
    await w.push(new Promise((r) => setTimeout(() => { running--; r(i); }, (12 - i) % 4)));
  }
  await w.drain();
  assert.deepEqual(seen, [...Array(12).keys()]);
  assert.ok(peak <= 3, `peak in flight ${peak}`);
});

test('forEachWantedImage: order, failures, missing members, changed archive', async () => {
  const dir = tempDir('wanted');
  const bytes = await tarBytes([['x/1.jpg', Buffer.from('one')], ['x/2.jpg', Buffer.from('two')], ['x/3.jpg', Buffer.from('three')]]);
  const file = path.join(dir, 'a.tar');
  fs.writeFileSync(file, bytes);
  const sha = createHash('sha256').update(bytes).digest('hex');
  const members = new Map([['x/3.jpg', 'g3'], ['x/1.jpg', 'g1'], ['x/9.jpg', 'g9'], ['x/2.jpg', 'g2']]);
  const log: string[] = [];
  await forEachWantedImage([{ archive: 'a.tar', abs: file, sha256: sha, members }], {
    concurrency: 2,
    work: async (data, group) => {
      if (group === 'g2') throw new Error('cannot decode');
      await new Promise((r) => setTimeout(r, group === 'g1' ? 20 : 1));
      return data.toString();
    },
    result: (r, group, _a, member) => void log.push(r.ok ? `${group}:${member}:${r.value}` : `${group}:failed:${r.error}`),
    missing: (group, archive, member, reason) => void log.push(`${group}:missing:${archive}:${member}:${reason}`),
    damaged: () => assert.fail('not damaged'),
  });
  assert.deepEqual(log, ['g1:x/1.jpg:one', 'g2:failed:cannot decode', 'g3:x/3.jpg:three', 'g9:missing:a.tar:x/9.jpg:member not found in the archive']);
  // A tar cut inside a wanted member: that one is `damaged`, wanted ones after it are missing with the reason.
  const cutBytes = await tarBytes([['m/1', Buffer.alloc(600, 1)], ['m/2', Buffer.alloc(3000, 2)], ['m/3', Buffer.alloc(10, 3)]]);
  const cutFile = path.join(dir, 'cut.tar');
  fs.writeFileSync(cutFile, cutBytes.subarray(0, 512 + 1024 + 512 + 700));
  const cutLog: string[] = [];
  await forEachWantedImage([{ archive: 'cut.tar', abs: cutFile, sha256: null, members: new Map([['m/1', 1], ['m/2', 2], ['m/3', 3]]) }], {
    concurrency: 2,
    work: async (data) => data.length,
    result: (r, g) => void cutLog.push(`${g}:ok:${r.ok && r.value}`),
    missing: (g, _a, _m, reason) => void cutLog.push(`${g}:missing:${reason}`),
    damaged: (g, _a, m, detail) => void cutLog.push(`${g}:damaged:${m}:${detail}`),
  });
  assert.equal(cutLog.length, 3);
  assert.equal(cutLog[0], '1:ok:600');
  assert.match(cutLog[1]!, /^2:damaged:m\/2:archive ends inside this member/);
  assert.match(cutLog[2]!, /^3:missing:the archive is damaged at m\/2 before it/);

  // A directory source reads the wanted files directly, in `members` order.
  const tree = path.join(dir, 'tree');
  fs.mkdirSync(path.join(tree, 'd'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'd', 'b'), 'bee');
  fs.writeFileSync(path.join(tree, 'd', 'a'), 'a');
  const dirLog: string[] = [];
  await forEachWantedImage([{ archive: 'tree', abs: tree, sha256: null, members: new Map([['d/b', 'B'], ['d/zz', 'Z'], ['d/a', 'A']]) }], {
    concurrency: 3,
    work: async (data) => data.toString(),
    result: (r, g) => void dirLog.push(`${g}:${r.ok && r.value}`),
    missing: (g, _a, m) => void dirLog.push(`${g}:missing:${m}`),
    damaged: () => assert.fail('not damaged'),
  });
  assert.deepEqual(dirLog, ['B:bee', 'Z:missing:d/zz', 'A:a']);

  await assert.rejects(
    forEachWantedImage([{ archive: 'a.tar', abs: file, sha256: 'f'.repeat(64), members }], {
      concurrency: 2, work: async () => 0, result: () => {}, missing: () => {}, damaged: () => {},
    }),
    /a\.tar: the archive has changed since its rows were made/,
  );
});

test('TarFileWriter: same members give the same bytes', async () => {
  const dir = tempDir('tw');
  const write = async (name: string) => {
    const w = await TarFileWriter.open(path.join(dir, name));
    await w.add('0.jpg', Buffer.from('abc'));
    await w.add('1.jpg', Buffer.from('defg'));
    await w.close();
    return fs.readFileSync(path.join(dir, name));
  };
  const a = await write('a.tar');
  assert.ok(a.equals(await write('b.tar')));
  const evs = await collect(path.join(dir, 'a.tar'));
  assert.deepEqual(evs.filter((e) => e.kind === 'member').map((e) => (e as { name: string }).name), ['0.jpg', '1.jpg']);

  // add() says where each member's bytes went, as long as it can know (no pax record yet).
  const w = await TarFileWriter.open(path.join(dir, 'c.tar'));
  const long = `${'x'.repeat(120)}.jpg`;
  const offsets = [await w.add('a/0.jpg', Buffer.alloc(700, 1)), await w.add('1.jpg', Buffer.alloc(512, 2)), await w.add('2.jpg', Buffer.alloc(3, 3)),
    await w.add(long, Buffer.alloc(5, 4)), await w.add('4.jpg', Buffer.alloc(5, 5))];
  await w.close();
  const members = (await collect(path.join(dir, 'c.tar'))).filter((e) => e.kind === 'member') as Array<Extract<ArchiveEvent, { kind: 'member' }>>;
  assert.deepEqual(offsets.slice(0, 3), members.slice(0, 3).map((m) => m.offset), 'offsets as the reader finds them');
  assert.deepEqual(offsets.slice(3), [null, null], 'unknown from the first long name on');
  assert.equal(members[3]!.name, long);
});

const goodRow: MetaImageRow = {
  key: '17/x.jpg', archive: { path: 'a.tar', sha256: 'ab' }, member: 'wiki_crop/17/x.jpg', member_offset: 512, member_bytes: 1000, width: 300, height: 200,
  image_problem: null, box: [10, 10, 100, 120], face_score: 3, second_face_score: 'NaN', gender: 1, age: 30, name: 'n',
};
const FS = { min_face_score: 1.5, min_side: 150, min_age: 10, max_age: 80, single_face: true };

test('filter rules: each rule alone, first failed rule wins, unknown sizes fall to undecodable', () => {
  assert.equal(firstFailedRule(goodRow, FS), null);
  const cases: Array<[Partial<MetaImageRow>, string]> = [
    [{ face_score: '-Infinity' }, 'face_score'],
    [{ face_score: 1.49 }, 'face_score'],
    [{ face_score: 'NaN' }, 'face_score'],
    [{ second_face_score: 2.1 }, 'second_face'],
    [{ gender: null }, 'unknown_label'],
    [{ age: null }, 'unknown_label'],
    [{ age: 9 }, 'age_range'],
    [{ age: 80 }, 'age_range'],
    [{ width: 149 }, 'min_side'],
    [{ box: [10, 10, 300, 120] }, 'box_outside'], // x2 = width is outside (x2 is inclusive)
    [{ box: [-1, 10, 100, 120] }, 'box_outside'],
    [{ box: null }, 'box_outside'],
    [{ image_problem: 'truncated' }, 'undecodable'],
    [{ image_problem: 'missing', archive: null, member: null, width: null, height: null }, 'undecodable'],
    [{ image_problem: 'corrupt', width: null, height: null, box: [500, 500, 900, 900] }, 'undecodable'],
  ];
  for (const [change, rule] of cases) assert.equal(firstFailedRule({ ...goodRow, ...change }, FS), rule, JSON.stringify(change));
  assert.equal(firstFailedRule({ ...goodRow, box: [10, 10, 299, 199] }, FS), null, 'a box touching the last pixel is inside');
  assert.equal(firstFailedRule({ ...goodRow, second_face_score: 2.1 }, { ...FS, single_face: false }), null);
  assert.equal(firstFailedRule({ ...goodRow, age: 79 }, FS), null);
  // Several broken rules: the first in the seed's order counts.
  assert.equal(firstFailedRule({ ...goodRow, face_score: 0.2, age: 5, width: 20 }, FS), 'face_score');
  assert.equal(firstFailedRule({ ...goodRow, age: 5, width: 20 }, FS), 'age_range');
  assert.deepEqual([...FILTER_RULES], ['face_score', 'second_face', 'unknown_label', 'age_range', 'min_side', 'box_outside', 'undecodable']);
});

test('JSON numbers, JSON Lines, recorded paths, bad items', async () => {
  assert.deepEqual([NaN, Infinity, -Infinity, 2.5].map(jsonNumber), ['NaN', 'Infinity', '-Infinity', 2.5]);
  assert.ok(Number.isNaN(numberOf('NaN')) && numberOf('-Infinity') === -Infinity && numberOf(3) === 3 && Number.isNaN(numberOf(null)));
  const dir = tempDir('jsonl');
  const f = path.join(dir, 'r.jsonl');
  fs.writeFileSync(f, '{"a":1}\n\n{oops\n{"a":2}\n');
  const lines = [];
  for await (const l of readJsonl<{ a: number }>(f)) lines.push(l);
  assert.deepEqual(lines.map((l) => [l.line, l.value?.a, l.error ? 'error' : undefined]), [[1, 1, undefined], [3, undefined, 'error'], [4, 2, undefined]]);
  assert.equal(recordedPath('/p/root', '/p/root/.pipe/trees/ab/images.tar'), '.pipe/trees/ab/images.tar');
  assert.equal(recordedPath('/p/root', '/data/wiki.tar'), '/data/wiki.tar');
  const logs: string[] = [];
  const bad = new BadItems('s', (l) => logs.push(l), false, 2);
  for (let i = 0; i < 5; i++) bad.report('corrupt', `a.tar: m${i}`, 'garbage');
  bad.finish();
  assert.deepEqual(bad.counts, { corrupt: 5 });
  assert.equal(logs.length, 3);
  assert.match(logs[0]!, /skipped corrupt: a\.tar: m0: garbage/);
  assert.match(logs[2]!, /3 more bad item/);
  assert.throws(() => new BadItems('letterbox', () => {}, true).report('undecodable', 'x.tar: y.jpg', 'bad'),
    /letterbox: x\.tar: y\.jpg: undecodable: bad \(strict/);
});

test('letterbox geometry: 400x200 and 200x400, both paddings, exact numbers', () => {
  const br = letterboxGeometry(400, 200, 250, 'bottom-right');
  assert.deepEqual(br, { size: 250, scale: 0.625, resizedWidth: 250, resizedHeight: 125, pad: [0, 0, 0, 125] });
  assert.deepEqual(letterboxBox([40, 20, 199, 119], br), [25, 12.5, 124.375, 74.375]);
  const c = letterboxGeometry(400, 200, 250, 'centre');
  assert.deepEqual(c.pad, [0, 62, 0, 63]);
  assert.deepEqual(letterboxBox([40, 20, 199, 119], c), [25, 74.5, 124.375, 136.375]);
  const tall = letterboxGeometry(200, 400, 250, 'centre');
  assert.deepEqual([tall.resizedWidth, tall.resizedHeight, ...tall.pad], [125, 250, 62, 0, 63, 0]);
  assert.deepEqual(letterboxBox([20, 40, 119, 199], tall), [74.5, 25, 136.375, 124.375]);
  // Rounding of the short side; upscaling of a small image.
  const odd = letterboxGeometry(333, 500, 250, 'bottom-right');
  assert.deepEqual([odd.resizedWidth, odd.resizedHeight, ...odd.pad], [167, 250, 0, 0, 83, 0]);
  const up = letterboxGeometry(100, 50, 250, 'centre');
  assert.deepEqual([up.scale, up.resizedWidth, up.resizedHeight, ...up.pad], [2.5, 250, 125, 0, 62, 0, 63]);
  assert.throws(() => letterboxGeometry(0, 5, 250, 'centre'), /not positive/);
});

test('crop rectangles and cell targets', () => {
  // Box 100 wide (x 100..199), 50 tall (y 50..99); margin 0.4 adds 40 and 20.
  assert.deepEqual(cropRect([100, 50, 199, 99], 0.4, 1000, 1000), { left: 60, top: 30, width: 180, height: 90 });
  // Clipped at the image edges.
  assert.deepEqual(cropRect([0, 0, 99, 49], 0.4, 120, 60), { left: 0, top: 0, width: 120, height: 60 });
  assert.deepEqual(cropRect([10, 10, 19, 19], 0, 100, 100), { left: 10, top: 10, width: 10, height: 10 });
  assert.throws(() => cropRect([500, 500, 600, 600], 0, 100, 100), /does not overlap/);

  const t = cellTarget([40, 8, 80, 72], 250, 32); // centre (60, 40)
  assert.deepEqual(t, { cell_row: 1, cell_col: 1, offset_y: 0.25, offset_x: 0.875, h_cells: 2, w_cells: 1.25 });
  // A centre on the far edge of a 250 image (8 cells of 32, the last one partial) stays in the grid.
  assert.deepEqual([cellTarget([249, 249, 251, 251], 250, 32).cell_row, cellTarget([249, 249, 251, 251], 250, 32).cell_col], [7, 7]);
});

test('shardOf: first 4 bytes of sha256 mod count; names and splits', () => {
  const key = '17/10000217_1981-05-05_2009.jpg';
  const h = createHash('sha256').update(key).digest();
  assert.equal(shardOf(key, 10), h.readUInt32BE(0) % 10);
  assert.equal(shardOf(key, 1), 0);
  // Spread: 2000 keys over 10 shards, none empty or wildly over.
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 2000; i++) counts[shardOf(`k${i}`, 10)]++;
  assert.ok(Math.min(...counts) > 140 && Math.max(...counts) < 260, String(counts));
  assert.equal(shardFileName(0, 10, 1), 'train-00000-of-00010.tfrecord');
  assert.equal(shardFileName(9, 10, 1), 'test-00009-of-00010.tfrecord');
  assert.equal(shardFileName(8, 10, 2), 'test-00008-of-00010.tfrecord');
  assert.equal(splitOfShard(9, 10, 0), 'train');
  assert.deepEqual(shardTotals({ 'train-00000-of-00002.tfrecord': 3, 'test-00001-of-00002.tfrecord': 2 }), { records: 5, train: 3, test: 2 });
  assert.throws(() => shardOf('x', 0), /positive integer/);
});

test('face and crop examples round-trip through tf.train.Example', () => {
  const img = { format: 'jpeg' as const, bytes: new Uint8Array([1, 2, 3]), height: 250, width: 250, channels: 3 };
  const faces = [
    { box: [25, 12.5, 124.375, 74.375] as [number, number, number, number], gender: 1, age: 33, age_bucket: 2, cell: cellTarget([25, 12.5, 124.375, 74.375], 250, 32) },
    { box: [130.1, 20, 200, 90] as [number, number, number, number], gender: 0, age: 71, age_bucket: 6, cell: cellTarget([130.1, 20, 200, 90], 250, 32) },
  ];
  const bytes = encodeFaceExample('01/a.jpg', img, faces);
  const features = decodeExample(bytes);
  assert.deepEqual(Object.keys(features).sort(), [
    'face/age', 'face/age_bucket', 'face/cell_col', 'face/cell_row', 'face/gender', 'face/h_cells', 'face/offset_x', 'face/offset_y',
    'face/w_cells', 'face/x1', 'face/x2', 'face/y1', 'face/y2', 'image/channels', 'image/encoded', 'image/format', 'image/height', 'image/key', 'image/width',
  ]);
  const back = parseFaceExample(features, 'test');
  assert.equal(back.key, '01/a.jpg');
  assert.deepEqual(back.encoded, img);
  assert.equal(back.faces.length, 2);
  assert.deepEqual(back.faces[1]!.box, [Math.fround(130.1), 20, 200, 90]);
  assert.equal(back.faces[0]!.cell!.cell_col, faces[0]!.cell.cell_col);
  assert.equal(back.faces[0]!.cell!.offset_x, Math.fround(faces[0]!.cell.offset_x));
  assert.deepEqual([back.faces[1]!.gender, back.faces[1]!.age, back.faces[1]!.age_bucket], [0, 71, 6]);

  const crop = parseFaceExample(decodeExample(encodeCropExample('k', { ...img, height: 60, width: 60 }, { gender: 0, age: 25, age_bucket: 1 })), 'crop');
  assert.deepEqual(crop.faces, [{ gender: 0, age: 25, age_bucket: 1 }]);
  assert.equal(crop.encoded.height, 60);
  assert.throws(() => parseFaceExample({ 'image/key': { bytes: [new Uint8Array([65])] } }, 'f.tfrecord: record 3'), /f\.tfrecord: record 3: feature image\/format is missing/);
});

test('face-images: grey and RGBA inputs come out 3-channel sRGB; padding is black', async () => {
  const grey = await sharp({ create: { width: 40, height: 20, channels: 3, background: '#808080' } }).toColourspace('b-w').jpeg().toBuffer();
  assert.equal((await sharp(grey).metadata()).channels, 1);
  const g = letterboxGeometry(40, 20, 32, 'centre');
  const out = await letterboxImage(grey, g, 'png', 95);
  const px = await decodeRgb(out);
  assert.deepEqual([px.width, px.height, px.data.length], [32, 32, 32 * 32 * 3]);
  const at = (x: number, y: number) => [...px.data.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3)];
  assert.deepEqual(at(16, 2), [0, 0, 0], 'top band is black');
  assert.ok(Math.abs(at(16, 16)[0]! - 128) < 6, `middle is grey: ${at(16, 16)}`);

  const rgba = await sharp({ create: { width: 30, height: 30, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
  const crop = await decodeRgb(await cropImage(rgba, { left: 5, top: 5, width: 10, height: 10 }, 8, 'png', 95));
  assert.deepEqual([crop.width, crop.height, crop.data[0]], [8, 8, 0], 'transparent flattens onto black');
  const again = await reencode(grey, 'jpeg', 90);
  assert.equal((await sharp(again).metadata()).channels, 3);
  await assert.rejects(letterboxImage(Buffer.from('nope'), g, 'jpeg', 95));
});

test('letterboxImage: the one-pipeline JPEG path gives the same pixels as resize + pad, for every colour kind', async () => {
  // A picture with edges and colours, so that a shifted or clipped pad would show.
  const W = 400, H = 300;
  const picture = await sharp({ create: { width: W, height: H, channels: 3, background: { r: 200, g: 90, b: 30 } } })
    .composite([{ input: Buffer.from(`<svg width="${W}" height="${H}"><circle cx="200" cy="150" r="100" fill="#3af"/><rect x="10" y="10" width="80" height="280" fill="#fff"/></svg>`) }])
    .png().toBuffer();
  const inputs: Record<string, Buffer> = {
    'RGB JPEG': await sharp(picture).jpeg().toBuffer(),
    'grey JPEG': await sharp(picture).toColourspace('b-w').jpeg().toBuffer(),
    'CMYK JPEG': await sharp(picture).toColourspace('cmyk').jpeg().toBuffer(),
    'portrait JPEG': await sharp(picture).rotate(90).jpeg().toBuffer(),
    'RGBA PNG': await sharp(picture).ensureAlpha(0.5).png().toBuffer(),
    '16-bit grey PNG': await sharp(picture).toColourspace('grey16').png().toBuffer(),
  };
  for (const [kind, data] of Object.entries(inputs)) {
    const meta = await sharp(data).metadata();
    for (const padding of ['bottom-right', 'centre'] as const) {
      const g = letterboxGeometry(meta.width!, meta.height!, 96, padding);
      // The reference, written here independently: resize to raw pixels, copy into black.
      const { data: px } = await sharp(data).resize(g.resizedWidth, g.resizedHeight, { fit: 'fill' })
        .flatten({ background: '#000000' }).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
      const want = Buffer.alloc(96 * 96 * 3);
      for (let y = 0; y < g.resizedHeight; y++) {
        px.copy(want, ((y + g.pad[1]) * 96 + g.pad[0]) * 3, y * g.resizedWidth * 3, (y + 1) * g.resizedWidth * 3);
      }
      // PNG output is lossless, so the letterboxed pixels can be compared exactly.
      const got = await decodeRgb(await letterboxImage(data, g, 'png', 95));
      assert.deepEqual([got.width, got.height], [96, 96], `${kind}, ${padding}`);
      assert.ok(got.data.equals(want), `${kind}, ${padding}: letterboxed pixels equal resize + black padding`);
      // And the JPEG output is that picture (within JPEG's error).
      const jpg = await decodeRgb(await letterboxImage(data, g, 'jpeg', 95));
      let err = 0;
      for (let i = 0; i < want.length; i++) err += Math.abs(jpg.data[i]! - want[i]!);
      assert.ok(err / want.length < 4, `${kind}, ${padding}: JPEG mean abs error ${(err / want.length).toFixed(2)}`);
    }
  }
});

test('readArchive offsets and readLocated: members read by location, headers checked', async () => {
  const dir = tempDir('located');
  const long = `${'d/'.repeat(60)}long-name.jpg`; // > 100 bytes: a pax header before it
  const members: Array<[string, Buffer]> = [['a/1.jpg', Buffer.from('first')], [long, Buffer.alloc(1500, 7)], ['a/2.jpg', Buffer.alloc(700, 2)], ['a/3.jpg', Buffer.from('third')]];
  const bytes = await tarBytes(members);
  const file = path.join(dir, 'a.tar');
  fs.writeFileSync(file, bytes);
  const evs = (await collect(file)).filter((e) => e.kind === 'member') as Array<Extract<ArchiveEvent, { kind: 'member' }>>;
  const locations = new Map<string, { offset: number; size: number }>();
  for (const e of evs) {
    assert.equal(typeof e.offset, 'number', `${e.name} has an offset`);
    assert.ok(bytes.subarray(e.offset!, e.offset! + e.data.length).equals(e.data), `${e.name}: the bytes at its offset are its data`);
    locations.set(e.name, { offset: e.offset!, size: e.data.length });
  }
  const read = async (locs: Map<string, { offset: number; size: number }>, names: string[], f = file) => {
    const out: string[] = [];
    for await (const m of readLocated(f, locs, names)) out.push(m.data ? `${m.member}=${m.data.length}:${m.data[0]}` : `${m.member}!${m.problem}`);
    return out;
  };
  // In file order whatever the order asked; unwanted members in between are not handed out.
  assert.deepEqual(await read(locations, ['a/3.jpg', long, 'a/1.jpg']), ['a/1.jpg=5:102', `${long}=1500:7`, 'a/3.jpg=5:116']);
  // A wrong location never yields another member's bytes.
  const wrong = new Map(locations);
  wrong.set('a/3.jpg', locations.get('a/2.jpg')!);
  wrong.set('a/1.jpg', { offset: locations.get('a/1.jpg')!.offset, size: 4 });
  const bad = await read(wrong, ['a/1.jpg', 'a/3.jpg']);
  assert.match(bad[0]!, /^a\/1\.jpg!no such member at the recorded offset 512: header says 5 bytes, the row says 4/);
  assert.match(bad[1]!, /^a\/3\.jpg!no such member at the recorded offset \d+: header names "a\/2\.jpg"/);
  wrong.set('a/1.jpg', { offset: 1000, size: 5 });
  assert.match((await read(wrong, ['a/1.jpg']))[0]!, /header checksum does not match/);
  // A file cut short: the members past the end are a problem, the ones before it are read.
  const cut = path.join(dir, 'cut.tar');
  fs.writeFileSync(cut, bytes.subarray(0, locations.get('a/2.jpg')!.offset + 100));
  const cutOut = await read(locations, ['a/1.jpg', 'a/2.jpg'], cut);
  assert.equal(cutOut[0], 'a/1.jpg=5:102');
  assert.match(cutOut[1]!, /^a\/2\.jpg!the archive ends before the recorded location of its bytes/);
  // A gzipped tar has no file offsets.
  const gz = path.join(dir, 'a.tar.gz');
  fs.writeFileSync(gz, (await import('node:zlib')).gzipSync(bytes));
  for (const e of await collect(gz)) if (e.kind === 'member') assert.equal(e.offset, null);
  assert.ok(tarHeaderMismatch(bytes.subarray(0, 512), 'a/1.jpg', 5) === null);
});

test('forEachWantedImage with locations: same results as streaming; a changed archive fails before any work', async () => {
  const dir = tempDir('wanted-located');
  const bytes = await tarBytes([['x/1.jpg', Buffer.from('one')], ['x/2.jpg', Buffer.from('two')], ['x/3.jpg', Buffer.from('three')]]);
  const file = path.join(dir, 'a.tar');
  fs.writeFileSync(file, bytes);
  const sha = createHash('sha256').update(bytes).digest('hex');
  const locations = new Map<string, { offset: number; size: number }>();
  for (const e of await collect(file)) if (e.kind === 'member') locations.set(e.name, { offset: e.offset!, size: e.data.length });
  const members = new Map([['x/3.jpg', 'g3'], ['x/1.jpg', 'g1'], ['x/2.jpg', 'g2']]);
  const run = async (src: { locations?: Map<string, { offset: number; size: number }>; sha256: string | null }, digests: string[] = []) => {
    const log: string[] = [];
    await forEachWantedImage([{ archive: 'a.tar', abs: file, members, ...src }], {
      concurrency: 2,
      fileDigest: async (f) => {
        digests.push(f);
        return createHash('sha256').update(fs.readFileSync(f)).digest('hex');
      },
      work: async (data, group) => {
        if (group === 'g2') throw new Error('cannot decode');
        return data.toString();
      },
      result: (r, group, _a, member) => void log.push(r.ok ? `${group}:${member}:${r.value}` : `${group}:failed:${r.error}`),
      missing: (group, _a, member, reason) => void log.push(`${group}:missing:${member}:${reason}`),
      damaged: () => assert.fail('not damaged'),
    });
    return log;
  };
  const digests: string[] = [];
  const streamed = await run({ sha256: sha }, digests);
  assert.deepEqual(streamed, ['g1:x/1.jpg:one', 'g2:failed:cannot decode', 'g3:x/3.jpg:three']);
  assert.deepEqual(await run({ sha256: sha, locations }, digests), streamed);
  assert.deepEqual(digests, [file, file], 'the digest check goes through fileDigest (the runner\'s cache)');
  // A stale location is reported as missing, with why.
  const stale = new Map(locations);
  stale.set('x/3.jpg', locations.get('x/1.jpg')!);
  const staleLog = await run({ sha256: null, locations: stale });
  assert.match(staleLog.find((l) => l.startsWith('g3:'))!, /^g3:missing:x\/3\.jpg:no such member at the recorded offset/);
  assert.ok(staleLog.includes('g1:x/1.jpg:one'));
  let worked = 0;
  await assert.rejects(
    forEachWantedImage([{ archive: 'a.tar', abs: file, sha256: 'f'.repeat(64), members, locations }], {
      concurrency: 2, work: async () => worked++, result: () => {}, missing: () => {}, damaged: () => {},
    }),
    /a\.tar: the archive has changed since its rows were made/,
  );
  assert.equal(worked, 0, 'no image was worked on');
});
