// Tests of the two stages that build IMDB-WIKI-shaped datasets: synthesize-imdb-wiki (drawn
// faces, with bad rows) and compose-imdb-wiki (real UTKFace crops on random canvases).
// The stages' run() is called directly with a hand-made context.

import { test } from 'node:test';
import { tempDirs } from './helpers.js';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import * as tarStream from 'tar-stream';
import type { StageContext } from '../runner/stage-type.js';
import synthesize, { BAD_KINDS, SYNTH_DEFAULTS, type SynthesizeSettings } from '../stages/synthesize-imdb-wiki.js';
import compose, { COMPOSE_DEFAULTS, parseUtkName, type ComposeSettings } from '../stages/compose-imdb-wiki.js';
import { matlabDatenumToYear, readImdbWikiMeta, type MetaRow } from '../stages/lib/imdb-wiki-meta.js';
import { digestFile } from '../artifacts/digest.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const utkDir = path.join(repoRoot, '..', 'shared', 'data', 'utkface', 'images');

const tempDir = tempDirs('pipe-synth');

function makeCtx<S>(settings: S, outDir: string, logs: string[] = []): StageContext<S> {
  return {
    settings,
    experiment: 'test',
    stageName: 'data',
    inputs: {},
    outDir,
    scratchDir: tempDir('scratch'),
    stateDir: tempDir('state'),
    projectRoot: repoRoot,
    progress() {},
    log(line: string) { logs.push(line); },
    signal: new AbortController().signal,
    fileDigest: (file: string) => digestFile(file),
  };
}

async function readTar(file: string): Promise<Array<{ header: tarStream.Header; data: Buffer }>> {
  const extract = tarStream.extract();
  fs.createReadStream(file).pipe(extract);
  const out: Array<{ header: tarStream.Header; data: Buffer }> = [];
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    out.push({ header: entry.header, data: Buffer.concat(chunks) });
  }
  return out;
}

interface Truth {
  full_path: string; member: string; kind: string; width: number; height: number;
  gender: number | null; age: number; box: [number, number, number, number] | null;
}

function readJsonl<T>(file: string): T[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);
}

function ageOf(m: MetaRow): number {
  return m.photo_taken - matlabDatenumToYear(m.dob);
}

function boxInside(m: MetaRow, w: number, h: number): boolean {
  const [x1, y1, x2, y2] = m.face_location;
  return x1 >= 1 && y1 >= 1 && x2 <= w && y2 <= h && x2 > x1 && y2 > y1;
}

/** Which filter rules a row breaks, judged from metadata and the true image size only. */
function brokenRules(m: MetaRow, w: number, h: number): string[] {
  const r: string[] = [];
  if (Math.min(w, h) < 150) r.push('tiny_image');
  if (Number.isFinite(m.second_face_score)) r.push('second_face');
  if (Number.isNaN(m.gender)) r.push('missing_gender');
  if (m.face_score === -Infinity) r.push('no_face');
  else if (m.face_score < 1.5) r.push('low_face_score');
  const age = ageOf(m);
  if (age < 10) r.push('age_too_young');
  if (age >= 80) r.push('age_too_old');
  if (m.face_score !== -Infinity && !boxInside(m, w, h)) r.push('box_outside');
  return r;
}

const SMALL: SynthesizeSettings = { ...SYNTH_DEFAULTS, count: 60, seed: 7 };

test('synthesize-imdb-wiki: tar, .mat, bad rows, balance and determinism', async () => {
  const dirA = tempDir('a');
  const dirB = tempDir('b');
  const logs: string[] = [];
  const t0 = performance.now();
  const metricsA = await synthesize.run(makeCtx({ ...SMALL }, dirA, logs));
  const seconds = (performance.now() - t0) / 1000;
  await synthesize.run(makeCtx({ ...SMALL }, dirB));
  assert.ok(logs.some((l) => l.includes('60 images')), `log says what was written: ${logs.join(' | ')}`);

  // Same settings, byte-identical outputs.
  for (const f of ['images.tar', 'wiki.mat', 'rows.jsonl', 'metrics.json']) {
    assert.ok(fs.readFileSync(path.join(dirA, f)).equals(fs.readFileSync(path.join(dirB, f))), `${f} differs between two runs`);
  }

  const truth = readJsonl<Truth>(path.join(dirA, 'rows.jsonl'));
  assert.equal(truth.length, 60);
  const { structName, rows } = readImdbWikiMeta(fs.readFileSync(path.join(dirA, 'wiki.mat')), 'wiki.mat');
  assert.equal(structName, 'wiki');
  assert.equal(rows.length, 60);

  const members = await readTar(path.join(dirA, 'images.tar'));
  assert.deepEqual(members.map((m) => m.header.name), rows.map((r) => `wiki_crop/${r.full_path}`));
  for (const m of members) {
    assert.equal(m.header.mtime?.getTime(), Date.UTC(2016, 0, 1));
    assert.equal(m.header.uid, 0);
    assert.equal(m.header.mode, 0o644);
  }

  const seenKinds = new Set<string>();
  for (let i = 0; i < rows.length; i++) {
    const m = rows[i]!;
    const t = truth[i]!;
    const data = members[i]!.data;
    assert.equal(t.full_path, m.full_path);
    assert.match(m.full_path, /^\d\d\/\d{8}_\d{4}-\d\d-\d\d_\d{4}\.jpg$/);
    assert.equal(m.full_path.slice(0, 2), m.full_path.split('/')[1]!.slice(6, 8), 'folder = last two digits of the id');
    assert.equal(m.name, `Synth Person ${i + 1}`);
    assert.equal(ageOf(m), t.age, `${m.full_path}: age from dob/photo_taken`);
    assert.equal(Number.isNaN(m.gender) ? null : m.gender, t.gender);
    seenKinds.add(t.kind);

    if (t.kind === 'corrupt_jpeg') {
      await assert.rejects(sharp(data).metadata(), `${m.full_path}: garbage should not decode`);
      continue;
    }
    const meta = await sharp(data).metadata();
    assert.equal(meta.format, 'jpeg');
    assert.deepEqual([meta.width, meta.height], [t.width, t.height], `${m.full_path}: JPEG size`);
    if (t.kind === 'truncated_jpeg') {
      await assert.rejects(sharp(data).raw().toBuffer(), `${m.full_path}: a truncated JPEG should fail to decode`);
      continue;
    }
    const broken = brokenRules(m, t.width, t.height);
    if (t.kind === 'good') {
      assert.deepEqual(broken, [], `${m.full_path}: a good row breaks no rule`);
      assert.ok(boxInside(m, t.width, t.height));
      assert.ok(m.face_score >= 1.5 && Number.isNaN(m.second_face_score));
      // face_location is the drawn box, 1-based: x1 = left+1, x2 = left+width.
      const [l, tp, w, h] = t.box!;
      assert.deepEqual(m.face_location, [l + 1, tp + 1, l + w, tp + h]);
    } else {
      assert.deepEqual(broken, [t.kind], `${m.full_path}: a ${t.kind} row breaks exactly its one rule`);
    }
  }
  assert.deepEqual([...seenKinds].sort(), ['good', ...BAD_KINDS].sort(), 'every bad kind is present');

  // A second face is really drawn: the image is wider than tall enough for two boxes.
  const two = truth.find((t) => t.kind === 'second_face')!;
  assert.ok(two.width >= 2 * two.box![2]);

  // Balance of the good rows: genders and buckets differ by at most one.
  const good = rows.filter((_, i) => truth[i]!.kind === 'good');
  assert.equal(good.length, 60 - BAD_KINDS.length);
  const males = good.filter((r) => r.gender === 1).length;
  assert.ok(Math.abs(males - (good.length - males)) <= 1, `gender balance ${males}/${good.length}`);
  const buckets = new Array(7).fill(0) as number[];
  for (const r of good) buckets[Math.floor((ageOf(r) - 10) / 10)]!++;
  assert.ok(Math.max(...buckets) - Math.min(...buckets) <= 1, `bucket balance ${buckets}`);

  const metrics = JSON.parse(fs.readFileSync(path.join(dirA, 'metrics.json'), 'utf8'));
  assert.deepEqual(metricsA, metrics);
  assert.equal(metrics.total, 60);
  assert.equal(metrics.bad, BAD_KINDS.length);
  for (const k of BAD_KINDS) assert.equal(metrics.bad_rows[k], 1, `metrics.bad_rows.${k}`);
  assert.equal(metrics.good_gender.male, males);
  assert.deepEqual(Object.values(metrics.good_age_bucket).slice(0, 7), buckets);
  assert.ok(seconds < 30, `60 images took ${seconds.toFixed(1)} s`);
});

test('synthesize-imdb-wiki: another seed differs; imdb naming; clear settings errors', async () => {
  const dirA = tempDir('s1');
  const dirB = tempDir('s2');
  const base: SynthesizeSettings = { ...SYNTH_DEFAULTS, count: 12, bad_rows: false, min_size: 160, max_size: 200 };
  await synthesize.run(makeCtx({ ...base, seed: 1 }, dirA));
  await synthesize.run(makeCtx({ ...base, seed: 2, struct_name: 'imdb' }, dirB));
  assert.ok(!fs.readFileSync(path.join(dirA, 'images.tar')).equals(fs.readFileSync(path.join(dirB, 'images.tar'))));

  const { structName, rows } = readImdbWikiMeta(fs.readFileSync(path.join(dirB, 'imdb.mat')), 'imdb.mat');
  assert.equal(structName, 'imdb');
  assert.equal(rows.length, 12);
  const members = await readTar(path.join(dirB, 'images.tar'));
  for (let i = 0; i < rows.length; i++) {
    assert.match(rows[i]!.full_path, /^\d\d\/nm\d{7}_rm\d{9}_\d{4}-\d{1,2}-\d{1,2}_\d{4}\.jpg$/);
    assert.equal(members[i]!.header.name, `imdb_crop/${rows[i]!.full_path}`);
    assert.equal(rows[i]!.celeb_id, i + 1);
  }
  const metrics = JSON.parse(fs.readFileSync(path.join(dirB, 'metrics.json'), 'utf8'));
  assert.equal(metrics.bad, 0);

  await assert.rejects(synthesize.run(makeCtx({ ...base, count: 5, bad_rows: true }, tempDir('e1'))), /count \(5\).*bad_rows/);
  const aborted = new AbortController();
  aborted.abort(new Error('stopped by test'));
  await assert.rejects(synthesize.run({ ...makeCtx({ ...base }, tempDir('e4')), signal: aborted.signal }), /stopped by test/);
  await assert.rejects(synthesize.run(makeCtx({ ...base, min_size: 300, max_size: 200 }, tempDir('e2'))), /min_size \(300\)/);
});

test('compose-imdb-wiki: parses UTKFace names, skips others, flips gender (made-up crops)', async () => {
  assert.deepEqual(parseUtkName('25_0_1_20170101000000000.jpg.chip.jpg'),
    { file: '25_0_1_20170101000000000.jpg.chip.jpg', age: 25, utkGender: 0, race: 1, date: '20170101000000000' });
  assert.equal(parseUtkName('25_2_1_20170101.jpg'), null);
  assert.equal(parseUtkName('39_1_20170116174525125.jpg.chip.jpg'), null, 'race missing');

  const faces = tempDir('faces');
  const names = ['25_0_1_20170101000000000.jpg.chip.jpg', '71_1_0_20170102000000000.jpg', '40_1_3_20170103000000000.jpg.chip.jpg'];
  for (const [i, n] of names.entries()) {
    const w = 120 + i * 20;
    await sharp({ create: { width: w, height: 100, channels: 3, background: { r: 40 * i, g: 100, b: 200 } } })
      .jpeg().toFile(path.join(faces, n));
  }
  fs.writeFileSync(path.join(faces, 'notes.txt'), 'not a face');
  fs.writeFileSync(path.join(faces, '39_1_20170116174525125.jpg.chip.jpg'), 'race missing');
  fs.writeFileSync(path.join(faces, '33_1_2_20170104000000000.jpg'), 'right name, not a JPEG');
  const out = tempDir('compose-small');
  const logs: string[] = [];
  const settings: ComposeSettings = { ...COMPOSE_DEFAULTS, faces, seed: 3 };
  const metrics = await compose.run(makeCtx(settings, out, logs)) as Record<string, any>;
  assert.equal(metrics.total, 3);
  assert.equal(metrics.skipped_names, 2);
  assert.equal(metrics.unreadable, 1);
  assert.ok(logs.some((l) => l.includes('skipped 2 file(s)') && l.includes('notes.txt')), logs.join(' | '));
  assert.ok(logs.some((l) => l.includes('unreadable') && l.includes('33_1_2_')), logs.join(' | '));
  const { rows } = readImdbWikiMeta(fs.readFileSync(path.join(out, 'wiki.mat')), 'wiki.mat');
  const members = await readTar(path.join(out, 'images.tar'));
  assert.equal(rows.length, 3);
  for (const [i, r] of rows.entries()) {
    const src = parseUtkName(r.name.replace(/^UTKFace /, '') + '.jpg')!;
    assert.equal(r.gender, 1 - src.utkGender);
    assert.equal(ageOf(r), src.age);
    const meta = await sharp(members[i]!.data).metadata();
    assert.ok(boxInside(r, meta.width!, meta.height!));
    // The crop keeps its aspect ratio: 120x100 → box w/h = 1.2.
    const [x1, y1, x2, y2] = r.face_location;
    const expect = { 25: 120 / 100, 71: 140 / 100, 40: 160 / 100 }[src.age]!;
    assert.ok(Math.abs((x2 - x1 + 1) / (y2 - y1 + 1) - expect) < 0.08, `aspect of ${r.name}`);
  }
  await assert.rejects(compose.run(makeCtx({ ...settings, faces: path.join(faces, 'missing') }, tempDir('e3'))),
    /cannot list the faces directory/);
});

test('compose-imdb-wiki: 30 real UTKFace crops', async (t) => {
  if (!fs.existsSync(utkDir)) {
    t.skip(`UTKFace crops absent (${utkDir}); this test needs ../shared/data/utkface/images`);
    return;
  }
  const out = tempDir('compose');
  const out2 = tempDir('compose2');
  const settings: ComposeSettings = { ...COMPOSE_DEFAULTS, faces: utkDir, count: 30, seed: 5 };
  await compose.run(makeCtx(settings, out));
  await compose.run(makeCtx({ ...settings }, out2));
  for (const f of ['images.tar', 'wiki.mat', 'rows.jsonl']) {
    assert.ok(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(out2, f))), `${f} differs between two runs`);
  }
  const { rows } = readImdbWikiMeta(fs.readFileSync(path.join(out, 'wiki.mat')), 'wiki.mat');
  const truth = readJsonl<Truth & { source: string; utk_gender: number }>(path.join(out, 'rows.jsonl'));
  const members = await readTar(path.join(out, 'images.tar'));
  assert.equal(rows.length, 30);
  assert.equal(members.length, 30);
  assert.equal(new Set(truth.map((x) => x.source)).size, 30, 'each crop used once');
  let males = 0;
  for (const [i, r] of rows.entries()) {
    const src = parseUtkName(truth[i]!.source)!;
    assert.ok(fs.existsSync(path.join(utkDir, src.file)));
    assert.equal(r.name, `UTKFace ${src.file.replace(/\.jpg(\.chip\.jpg)?$/, '')}`);
    assert.equal(r.gender, src.utkGender === 0 ? 1 : 0, `${src.file}: UTKFace 0 = male must become IMDB-WIKI 1`);
    if (r.gender === 1) males++;
    assert.equal(ageOf(r), src.age);
    assert.equal(members[i]!.header.name, `wiki_crop/${r.full_path}`);
    const meta = await sharp(members[i]!.data).metadata();
    assert.deepEqual([meta.width, meta.height], [truth[i]!.width, truth[i]!.height]);
    assert.ok(boxInside(r, meta.width!, meta.height!), `${src.file}: box ${r.face_location} inside ${meta.width}x${meta.height}`);
    assert.equal(r.face_location[2] - r.face_location[0] + 1, truth[i]!.box![2]);
  }
  assert.ok(males > 0 && males < 30, 'both genders among 30 random crops');
});
