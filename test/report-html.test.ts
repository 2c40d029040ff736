// `pipe compare --html`: the numbers behind the table (best values, mean ± std over seeds),
// then the real page in headless Chromium (charts drawn, images decoded, nothing fetched), and
// the CLI end to end on a tiny command-stage project.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { CompareRow } from '../cli/compare.js';
import { bestIndices, escapeHtml, formatNumber, loadGalleries, meanStd, metricDirection, niceTicks, renderHtmlReport, seedGroups, writeHtmlReport } from '../cli/report-html.js';
import { pipeSync, repoRoot, tempDir, writeTree } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';

/** Remove a temp dir after the test; a store's read-only trees may refuse, which is harmless. */
function cleanup(t: { after: (fn: () => void) => void }, dir: string): string {
  t.after(() => {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* left for the OS to clear */
    }
  });
  return dir;
}

test('metric direction follows the metric name', () => {
  for (const k of ['evaluate.gender_acc', 'evaluate.age_acc_detected', 'evaluate.balanced_age_acc', 'evaluate.crop_age_acc', 'evaluate.iou', 'evaluate.ap50', 'evaluate.detection_rate', 'evaluate.two_stage_img_per_s', 'train-grid-model.train_img_per_s']) {
    assert.equal(metricDirection(k), 'higher', k);
  }
  for (const k of ['train-grid-model.final_loss.total', 'train-grid-model.final_loss.gender', 'crop-age.final_loss', 'train-grid-model.seconds_per_step']) {
    assert.equal(metricDirection(k), 'lower', k);
  }
  for (const k of ['train-grid-model.steps', 'evaluate.test_faces', 'evaluate.test_images']) assert.equal(metricDirection(k), null, k);
});

test('best value marking: max or min, ties all marked, nothing when lone or all equal', () => {
  assert.deepEqual([...bestIndices([0.8, 0.84, 0.9, undefined], 'higher')], [2]);
  assert.deepEqual([...bestIndices([0.5, 0.4, 0.6], 'lower')], [1]);
  assert.deepEqual([...bestIndices([0.7, 0.9, null, 0.9], 'higher')].sort(), [1, 3]);
  assert.deepEqual([...bestIndices([0.7, undefined, null], 'higher')], []);
  assert.deepEqual([...bestIndices([3, 3, 3], 'lower')], []);
  assert.deepEqual([...bestIndices([NaN, 1, 2], 'lower')], [1]);
});

test('mean ± sample std on known numbers', () => {
  const a = meanStd([0.8, 0.84]);
  assert.ok(Math.abs(a.mean - 0.82) < 1e-12);
  assert.ok(Math.abs(a.std - Math.SQRT2 * 0.02) < 1e-12); // |0.84 − 0.8| / √2
  const b = meanStd([2, 4, 4, 4, 5, 5, 7, 9]);
  assert.equal(b.mean, 5);
  assert.ok(Math.abs(b.std - Math.sqrt(32 / 7)) < 1e-12);
  assert.deepEqual(meanStd([3]), { mean: 3, std: 0, n: 1 });
  assert.equal(`${formatNumber(a.mean)} ± ${formatNumber(a.std)}`, '0.82 ± 0.0283');
});

test('seed groups: matrix names and settings differing only in a path ending in seed', () => {
  const row = (experiment: string, settings: Record<string, unknown>): CompareRow => ({ experiment, file: 'x.yaml', settings, metrics: {}, missing: [], outputs: {}, volatile: {} });
  const groups = seedGroups([
    row('seeds@seed=1,head=dense', { 'train.seed': 1, 'train.head': 'dense' }),
    row('seeds@seed=2,head=dense', { 'train.seed': 2, 'train.head': 'dense' }),
    row('seeds@seed=1,head=sparse', { 'train.seed': 1, 'train.head': 'sparse' }),
    row('seeds@seed=3,head=dense', { 'train.seed': 3, 'train.head': 'dense' }),
    row('a', { 'split.split_seed': 1, 'train.head': 'x' }),
    row('b', { 'split.split_seed': 2, 'train.head': 'x' }),
  ]);
  assert.deepEqual(
    groups.map((g) => [g.label, g.members]),
    [
      ['seeds@head=dense', [0, 1, 3]],
      ['a / b', [4, 5]],
    ],
  );
  // Same settings and no seed anywhere: not a seed group.
  assert.deepEqual(seedGroups([row('p', { 'train.head': 'x' }), row('q', { 'train.head': 'x' })]), []);
  assert.deepEqual(niceTicks(0, 0.93, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.equal(escapeHtml(`<a href="x">&'`), '&lt;a href=&quot;x&quot;&gt;&amp;&#39;');
});

// ---------------------------------------------------------------- fixtures ------------------

/** Deterministic pseudo-random numbers for the fixtures. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function curve(n: number, start: number, end: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => end + (start - end) * Math.exp((-5 * i) / n) * (0.9 + 0.2 * r()));
}

const HOSTILE = 'multi<img src=x id=inj>&"scale"';

async function galleryDir(root: string, name: string, tint: number): Promise<string> {
  const sharp = (await import('sharp')).default;
  const dir = join(root, name);
  mkdirSync(join(dir, 'gallery'), { recursive: true });
  const gallery = [];
  for (let k = 0; k < 2; k++) {
    const px = Buffer.alloc(64 * 64 * 3);
    for (let i = 0; i < px.length; i += 3) [px[i], px[i + 1], px[i + 2]] = [60 + tint, 90 + ((i / 3) % 64), 120 + k * 40];
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128"><rect x="30" y="26" width="60" height="70" fill="none" stroke="white" stroke-dasharray="4 3" stroke-width="2"/><rect x="34" y="30" width="56" height="64" fill="none" stroke="#3f3" stroke-width="2"/></svg>`;
    const file = `gallery/${String(k).padStart(2, '0')}.png`;
    await sharp(px, { raw: { width: 64, height: 64, channels: 3 } }).resize(128, 128, { kernel: 'nearest' }).composite([{ input: Buffer.from(svg) }]).png().toFile(join(dir, file));
    gallery.push({
      file,
      key: `wiki/0${k}/${1000 + k}_1980-01-0${k + 1}_2009.jpg`,
      truths: [{ box: [15, 13, 45, 48], gender: k ? 'male' : 'female', age: '20-29' }],
      predictions: [
        { box: [17, 15, 45, 47], confidence: 0.91 - tint / 1000, gender: k ? 'male' : 'female', age: tint > 20 ? '30-39' : '20-29' },
        ...(k === 1 ? [{ box: [50, 2, 62, 14], confidence: 0.74, gender: 'female', age: '40-49' }] : []),
      ],
    });
  }
  writeFileSync(join(dir, 'report.json'), JSON.stringify({ metrics: {}, settings: { match_iou: 0.2 }, gallery }));
  return dir;
}

const backend = (name: string) => ({ name, package: name === 'wasm' ? '@tensorflow/tfjs-backend-wasm' : '@tensorflow/tfjs-node', version: '4.22.0', threads: name === 'wasm' ? 2 : 16, simd: true, gpu: false });

function faceRow(experiment: string, settings: Record<string, unknown>, v: { seed: number; genderAcc: number; loss: number; single: number; two: number; be: string }, evalDir: string): CompareRow {
  const n = 200;
  const step = Array.from({ length: n }, (_, i) => (i + 1) * 10);
  const terms = ['conf_obj', 'conf_noobj', 'center', 'size', 'gender', 'age'];
  const curves: Record<string, number[]> = { step, total: curve(n, 12, v.loss, v.seed) };
  terms.forEach((t, k) => (curves[t] = curve(n, 3 / (k + 1), v.loss / (k + 2), v.seed * 10 + k)));
  const final = Object.fromEntries(Object.entries(curves).filter(([k]) => k !== 'step').map(([k, ys]) => [k, ys.at(-1)!]));
  final.total = v.loss;
  const crop = (task: string, seed: number) => {
    const total = curve(60, 2, 0.4 + seed / 100, seed);
    return { backend: backend(v.be), task, steps: 600, resumed_from: 0, train_images: 480, seconds_per_step: 0.05, final_loss: total.at(-1), loss_curves: { step: total.map((_, i) => (i + 1) * 10), total, cross_entropy: total } };
  };
  const r = rng(v.seed);
  const age = Array.from({ length: 7 }, (_, i) => Array.from({ length: 7 }, (_, j) => (i === j ? 20 + Math.round(r() * 20) : Math.abs(i - j) === 1 ? Math.round(r() * 8) : Math.round(r() * 2))));
  return {
    experiment,
    file: `experiments/${experiment.split('@')[0]}.yaml`,
    settings,
    metrics: {
      'train-grid-model': { backend: backend(v.be), steps: 2000, resumed_from: 0, train_images: 480, seconds_per_step: 0.21 + v.seed / 100, train_img_per_s: 150 - v.seed, final_loss: final, loss_curves: curves },
      'crop-gender': crop('gender', v.seed + 3),
      'crop-age': crop('age', v.seed + 5),
      evaluate: {
        iou: 0.71 + v.seed / 100,
        gender_acc: v.genderAcc,
        age_acc: 0.41 + v.seed / 50,
        detection_rate: 0.93,
        gender_acc_detected: v.genderAcc + 0.02,
        age_acc_detected: 0.44,
        ap50: 0.88 - v.seed / 100,
        balanced_age_acc: 0.37,
        age_acc_per_bucket: [0.2 + v.seed / 20, 0.62 - v.seed / 25, 0.5, 0.38 + v.seed / 30, 0.3, 0.05 + v.seed / 40, null],
        gender_confusion: [
          [70 + v.seed, 12],
          [9, 81 - v.seed],
        ],
        age_confusion: age,
        crop_gender_acc: 0.86,
        crop_age_acc: 0.39,
        single_model_img_per_s: v.single,
        two_stage_img_per_s: v.two,
        backend: `${v.be} 4.22.0`,
        test_images: 120,
        test_faces: 172,
      },
    },
    missing: [],
    outputs: { 'train-grid-model': join(evalDir, '..', 'nothing-here'), evaluate: evalDir },
    volatile: { 'train-grid-model': { backend: 'auto' }, 'crop-gender': { backend: 'auto' }, 'crop-age': { backend: 'auto' }, evaluate: { backend: 'auto', speed_images: 64 } },
  };
}

async function fixtureRows(root: string): Promise<CompareRow[]> {
  return [
    faceRow('seeds@seed=1,head=dense', { 'train-grid-model.seed': 1, 'train-grid-model.head': 'dense' }, { seed: 1, genderAcc: 0.8, loss: 0.5, single: 210, two: 64, be: 'tensorflow' }, await galleryDir(root, 'e1', 0)),
    faceRow('seeds@seed=2,head=dense', { 'train-grid-model.seed': 2, 'train-grid-model.head': 'dense' }, { seed: 2, genderAcc: 0.84, loss: 0.4, single: 190, two: 70, be: 'tensorflow' }, await galleryDir(root, 'e2', 30)),
    faceRow(HOSTILE, { 'train-grid-model.seed': 1, 'train-grid-model.head': 'sparse' }, { seed: 3, genderAcc: 0.9, loss: 0.6, single: 95.5, two: 31.25, be: 'wasm' }, await galleryDir(root, 'e3', 60)),
    { experiment: 'not-run', file: 'experiments/not-run.yaml', settings: { 'train-grid-model.seed': 5, 'train-grid-model.head': 'dense' }, metrics: {}, missing: ['train-grid-model', 'crop-gender', 'crop-age', 'evaluate'], outputs: {}, volatile: {} },
  ];
}

test('odd metrics render without NaN or exceptions', () => {
  const rows: CompareRow[] = [
    { experiment: 'odd', file: 'odd.yaml', settings: {}, missing: [], outputs: {}, volatile: {}, metrics: { t: { loss_curves: { step: [1, 2], total: [NaN, NaN], other: [] }, final_loss: 0.3 }, e: { iou: 0.5, age_acc_per_bucket: [null, 0.5, 0.25], gender_confusion: [[0, 0], [0, 0]], age_confusion: [[1]], single_model_img_per_s: 10, two_stage_img_per_s: null } } },
    { experiment: 'bare', file: 'bare.yaml', settings: {}, missing: ['t'], outputs: {}, volatile: {}, metrics: {} },
  ];
  const html = renderHtmlReport(rows);
  assert.doesNotMatch(html, /NaN|Infinity|undefined/);
  assert.match(html, /bucket 2/);
  assert.match(html, /n\/a \(no crop classifiers\)/);
  assert.match(renderHtmlReport([]), /No experiments/);
});

test('gallery loading reports broken report.json and missing images instead of failing', async (t) => {
  const root = cleanup(t, tempDir('pipe-report-'));
  const bad = join(root, 'bad');
  const gone = join(root, 'gone');
  writeTree(bad, { 'report.json': '{"gallery": [' });
  writeTree(gone, { 'report.json': JSON.stringify({ gallery: [{ file: 'gallery/07.png', key: 'k', truths: [], predictions: [] }, { file: '../../etc/passwd.png' }] }) });
  const rows: CompareRow[] = [{ experiment: 'x', file: 'x.yaml', settings: {}, metrics: {}, missing: [], outputs: { evaluate: bad, other: gone }, volatile: {} }];
  const notes: string[] = [];
  const galleries = await loadGalleries(rows, notes);
  assert.equal(galleries.length, 1);
  assert.equal(galleries[0]!.items[0]!.src, null);
  assert.equal(notes.length, 3, notes.join('\n'));
  assert.match(notes[0]!, /x\/evaluate: .*report\.json is not valid JSON/);
  assert.match(notes[1]!, /x\/other: cannot read .*07\.png \(ENOENT\)/);
  assert.match(notes[2]!, /outside the stage's outputs/);
  const html = renderHtmlReport(rows, { galleries, notes });
  assert.match(html, /image unavailable/);
  assert.match(html, /not valid JSON/);
});

test('HTML report renders in headless Chromium: charts, gallery, no network, no errors', async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} absent: install Debian chromium to check the report in a real browser`);
    return;
  }
  const root = cleanup(t, tempDir('pipe-report-'));
  const rows = await fixtureRows(root);
  const file = join(root, 'out', 'report.html');
  await writeHtmlReport(rows, file);
  const html = readFileSync(file, 'utf8');
  assert.match(html, /<meta name="generator" content="pipe">/);
  assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, 'no external resources');
  assert.ok(!html.includes(HOSTILE), 'the experiment name is escaped');

  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const consoleErrors: string[] = [];
    const pageErrors: string[] = [];
    const requests: string[] = [];
    page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('request', (r) => requests.push(r.url()));
    const url = pathToFileURL(file).href;
    await page.goto(url, { waitUntil: 'load' });

    const facts = await page.evaluate(() => {
      const box = (e: Element) => e.getBoundingClientRect();
      const charts = [...document.querySelectorAll('svg.chart')].map((s) => ({ cls: s.getAttribute('class'), w: box(s).width, h: box(s).height }));
      const curves = [...document.querySelectorAll('path.curve')].map((p) => ({ points: (p.getAttribute('d') ?? '').split(/[ML]/).length - 1, w: box(p).width, h: box(p).height, stroke: p.getAttribute('stroke') }));
      const bars = (sel: string, dim: 'height' | 'width') =>
        [...document.querySelectorAll(sel)].map((b) => ({ chart: [...document.querySelectorAll('svg.chart')].indexOf(b.closest('svg')!), value: Number(b.getAttribute('data-value')), size: box(b)[dim] }));
      const imgs = [...document.images].map((i) => ({ complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, src: i.src.slice(0, 22) }));
      const summary = [...document.querySelectorAll('tr.summary')].map((r) => r.textContent ?? '');
      const header = [...document.querySelectorAll('table.metrics thead tr:nth-child(2) th')].map((th) => th.getAttribute('title') ?? '');
      const bestCells = [...document.querySelectorAll('table.metrics td.best')].map((td) => {
        const tr = td.closest('tr')!;
        const idx = [...tr.children].indexOf(td) - 1; // minus the experiment header cell
        return { experiment: tr.querySelector('th.exp')!.textContent, column: header[idx], text: td.textContent };
      });
      return {
        title: document.title,
        generator: document.querySelector('meta[name=generator]')?.getAttribute('content'),
        charts,
        curves,
        vbars: bars('rect.bar-v', 'height'),
        hbars: bars('rect.bar-h', 'width'),
        cells: document.querySelectorAll('table.confusion td.cell').length,
        diag: document.querySelectorAll('table.confusion td.diag').length,
        imgs,
        summary,
        bestCells,
        injected: document.querySelectorAll('#inj').length,
        hostileShown: document.body.textContent!.includes('multi<img src=x id=inj>&"scale"'),
        missing: document.querySelector('#missing')!.textContent,
        backend: document.querySelector('#backend')!.textContent,
        faces: document.querySelectorAll('ul.faces li').length,
        extras: document.querySelectorAll('ul.faces li.extra').length,
        sections: [...document.querySelectorAll('section h2')].map((h) => h.textContent),
      };
    });

    assert.equal(facts.generator, 'pipe');
    assert.deepEqual(facts.sections, ['Metrics', 'Training loss curves', 'Accuracy per age bucket', 'Confusion matrices', 'Test images', 'Speed: single model vs detector + two classifiers', 'Backends', 'Experiments without cached results']);
    // Charts: 7 grid-model terms + total for each crop baseline, 1 age chart, 1 speed chart.
    assert.equal(facts.charts.length, 7 + 2 + 1 + 1, JSON.stringify(facts.charts));
    for (const c of facts.charts) assert.ok(c.w > 100 && c.h > 100, `chart ${c.cls} has a size: ${c.w}x${c.h}`);
    // Curves: one path per experiment with curves and term.
    assert.equal(facts.curves.length, 3 * 7 + 3 * 2);
    for (const c of facts.curves) {
      assert.ok(c.points >= 60, `curve has ${c.points} points`);
      assert.ok(c.w > 50 && c.h > 5, `curve box ${c.w}x${c.h}`);
    }
    assert.equal(facts.curves.filter((c) => c.points === 200).length, 3 * 7, 'every logged grid-model step drawn');
    assert.equal(new Set(facts.curves.map((c) => c.stroke)).size, 3, 'one colour per experiment');
    // Age bars: 3 experiments x 7 buckets, minus the empty 70-79 bucket; height ∝ value.
    assert.equal(facts.vbars.length, 3 * 6);
    const pxPerUnit = facts.vbars[0]!.size / facts.vbars[0]!.value;
    assert.ok(pxPerUnit > 50);
    for (const b of facts.vbars) assert.ok(Math.abs(b.size - b.value * pxPerUnit) < 0.6, `bar ${b.value} is ${b.size}px, expected ${b.value * pxPerUnit}`);
    // Speed bars: two per experiment; width ∝ img/s.
    assert.deepEqual(facts.hbars.map((b) => b.value), [210, 64, 190, 70, 95.5, 31.25]);
    const pxPerImg = facts.hbars[0]!.size / 210;
    for (const b of facts.hbars) assert.ok(Math.abs(b.size - b.value * pxPerImg) < 0.6, `speed bar ${b.value} is ${b.size}px`);
    // Confusion matrices: 2x2 + 7x7 per evaluated experiment.
    assert.equal(facts.cells, 3 * (4 + 49));
    assert.equal(facts.diag, 3 * (2 + 7));
    // Gallery: 2 images x 3 experiments, all decoded (128 px PNGs as data: URIs).
    assert.equal(facts.imgs.length, 6);
    for (const i of facts.imgs) {
      assert.ok(i.complete && i.w === 128 && i.h === 128, JSON.stringify(i));
      assert.equal(i.src, 'data:image/png;base64,');
    }
    assert.equal(facts.faces, 6 + 3, 'one line per true face plus the extra prediction in image 2');
    assert.equal(facts.extras, 3);
    // Table: seed group summary with mean ± std; best values marked in the right rows.
    assert.equal(facts.summary.length, 1);
    assert.match(facts.summary[0]!, /seeds@head=dense/);
    assert.match(facts.summary[0]!, /0\.82 ± 0\.0283/, 'gender_acc over seeds 0.80 and 0.84');
    const best = (col: string) => facts.bestCells.filter((b) => b.column === col).map((b) => b.experiment);
    assert.deepEqual(best('evaluate.gender_acc (higher is better)'), [HOSTILE]);
    assert.deepEqual(best('train-grid-model.final_loss.total (lower is better)'), ['seeds@seed=2,head=dense']);
    assert.deepEqual(best('evaluate.single_model_img_per_s (higher is better)'), ['seeds@seed=1,head=dense']);
    assert.ok(facts.bestCells.every((b) => b.column && !/steps|test_faces/.test(b.column)));
    // Escaping, missing experiments, backends.
    assert.equal(facts.injected, 0);
    assert.ok(facts.hostileShown);
    assert.match(facts.title, /4 experiments/);
    assert.match(facts.missing!, /not-run: no cached result for train-grid-model, crop-gender, crop-age, evaluate — run pipe run experiments\/not-run\.yaml/);
    assert.match(facts.backend!, /@tensorflow\/tfjs-backend-wasm/);
    assert.match(facts.backend!, /wasm 4\.22\.0/);

    assert.deepEqual(consoleErrors, []);
    assert.deepEqual(pageErrors, []);
    const foreign = requests.filter((u) => u !== url && !u.startsWith('data:'));
    assert.deepEqual(foreign, [], 'no network requests besides the file itself');
    assert.ok(requests.includes(url));

    // Printable: on an A4 landscape page (273 mm ≈ 1032 CSS px) nothing sticks out sideways.
    await page.setViewportSize({ width: 1032, height: 800 });
    await page.emulateMedia({ media: 'print' });
    const printWidth = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(printWidth <= 1032, `print layout is ${printWidth}px wide`);
    assert.ok((await page.locator('svg.chart').first().boundingBox())!.width > 100);
    await page.emulateMedia({ media: 'screen' });
    await page.setViewportSize({ width: 1400, height: 900 });

    const artifacts = join(repoRoot, 'test-artifacts');
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'report.png'), fullPage: true });
    assert.ok(existsSync(join(artifacts, 'report.png')));
  } finally {
    await browser.close();
  }
});

test('pipe compare --html writes the report and says where', async (t) => {
  const sharp = (await import('sharp')).default;
  const dir = cleanup(t, tempDir('pipe-report-cli-'));
  writeTree(dir, {
    'fixture/report.json': JSON.stringify({ settings: { match_iou: 0.2 }, gallery: [{ file: 'gallery/00.png', key: 'img-1', truths: [{ box: [1, 1, 6, 6], gender: 'male', age: '30-39' }], predictions: [{ box: [1, 1, 6, 6], confidence: 0.9, gender: 'male', age: '30-39' }] }] }),
    'fixture/metrics.json': JSON.stringify({ gender_acc: 0.75, iou: 0.6, age_acc_per_bucket: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, null], gender_confusion: [[3, 1], [0, 4]], single_model_img_per_s: 100, two_stage_img_per_s: 40, backend: 'cpu 4.22.0' }),
    'pipelines/face.yaml': `
stages:
  evaluate:
    uses: command
    with:
      run: mkdir -p "$PIPE_OUT/gallery" && cp fixture/00.png "$PIPE_OUT/gallery/00.png" && cp fixture/report.json "$PIPE_OUT/report.json" && sed "s/0.75/0.7$PIPE_PARAM_SEED/" fixture/metrics.json > "$PIPE_OUT/metrics.json"
      inputs: [../fixture]
      cwd: ..
      seed: 1
`,
    'experiments/seeds.yaml': 'extends: ../pipelines/face.yaml\nmatrix:\n  evaluate.seed: [1, 3]\n',
    'experiments/ghost.yaml': 'extends: ../pipelines/face.yaml\nset:\n  evaluate.variant: ghost\n',
  });
  await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).png().toFile(join(dir, 'fixture/00.png'));
  const env = { PIPE_STORE: join(dir, 'store') };
  const run = pipeSync(['run', 'experiments/seeds.yaml'], { cwd: dir, env });
  assert.equal(run.code, 0, run.stderr);
  const r = pipeSync(['compare', 'experiments/seeds.yaml', 'experiments/ghost.yaml', '--html', 'out/cmp.html'], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /seeds@seed=1/, 'the text table is still printed');
  const target = join(dir, 'out', 'cmp.html');
  assert.match(r.stderr, new RegExp(`report written to ${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  const html = readFileSync(target, 'utf8');
  assert.match(html, /<meta name="generator" content="pipe">/);
  assert.match(html, /seeds <span class="muted">mean ± std, 2 seeds/);
  assert.match(html, /0\.72 ± 0\.0141/, 'gender_acc 0.71 and 0.73');
  assert.match(html, /<img src="data:image\/png;base64,/);
  assert.match(html, /<strong>ghost<\/strong>: no cached result for <code>evaluate<\/code>/);
  assert.equal(pipeSync(['--help'], { cwd: dir }).stdout.includes('--html FILE'), true);
});
