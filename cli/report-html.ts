// `pipe compare --html FILE`: one self-contained HTML page comparing experiments. Everything
// the page shows is inside the file (images as data: URIs, inline CSS, SVG charts drawn here;
// no script at all), so it opens offline, can be mailed around and prints. Charts are found
// by the shape of a stage's metrics, never by the stage's name.
import { promises as fs } from 'node:fs';
import { dirname, extname, isAbsolute, join, relative, resolve } from 'node:path';
import type { CompareRow } from './compare.js';

// ---------------------------------------------------------------- numbers -------------------

export type Direction = 'higher' | 'lower';

/** Which way is better for a metric path (`stage.path` or just `path`); null when neither. */
export function metricDirection(key: string): Direction | null {
  const k = key.toLowerCase();
  const leaf = k.slice(k.lastIndexOf('.') + 1);
  if (k.includes('loss')) return 'lower';
  if (leaf.startsWith('seconds_per')) return 'lower';
  if (leaf.includes('acc') || leaf === 'iou' || leaf.endsWith('_iou') || leaf.includes('ap50') || leaf === 'detection_rate' || leaf.includes('img_per_s')) return 'higher';
  return null;
}

/** Indices of the best values. Empty when fewer than two values are known or all are equal:
 * marking a lone or tied-everywhere value would mean nothing. */
export function bestIndices(values: readonly (number | null | undefined)[], dir: Direction): Set<number> {
  const known = values.flatMap((v, i) => (typeof v === 'number' && Number.isFinite(v) ? [[i, v] as const] : []));
  if (known.length < 2) return new Set();
  const vs = known.map(([, v]) => v);
  const best = dir === 'higher' ? Math.max(...vs) : Math.min(...vs);
  if (vs.every((v) => v === best)) return new Set();
  return new Set(known.filter(([, v]) => v === best).map(([i]) => i));
}

/** Mean and sample standard deviation (n − 1; 0 for a single value). */
export function meanStd(values: readonly number[]): { mean: number; std: number; n: number } {
  const n = values.length;
  if (n === 0) return { mean: NaN, std: NaN, n };
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const ss = values.reduce((a, b) => a + (b - mean) ** 2, 0);
  return { mean, std: n > 1 ? Math.sqrt(ss / (n - 1)) : 0, n };
}

export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a >= 1e-3) return String(Number(v.toPrecision(3)));
  return v.toExponential(2);
}

// ---------------------------------------------------------------- seed groups ---------------

/** A setting path whose last segment ends in `seed` (train.seed, split.split_seed). */
export function isSeedPath(path: string): boolean {
  return /seed$/i.test(path.slice(path.lastIndexOf('.') + 1));
}

/** `seeds@seed=1,head=dense` → `seeds@head=dense`; the seed tokens it removed. */
function stripSeedFromName(name: string): { base: string; seeds: string[] } {
  const at = name.indexOf('@');
  if (at < 0) return { base: name, seeds: [] };
  const parts = name.slice(at + 1).split(',');
  const seeds = parts.filter((p) => isSeedPath(p.split('=')[0] ?? ''));
  const rest = parts.filter((p) => !seeds.includes(p));
  return { base: rest.length ? `${name.slice(0, at)}@${rest.join(',')}` : name.slice(0, at), seeds };
}

export interface SeedGroup {
  /** Name for the group: the experiment name without its seed. */
  label: string;
  /** Indices into the rows, in order. */
  members: number[];
  /** The differing setting paths that are seeds. */
  seedPaths: string[];
}

/** Experiments that differ only in seed paths (settings, or the seed in a matrix name) form a
 * group; only groups of two or more distinct seeds are returned. */
export function seedGroups(rows: readonly CompareRow[]): SeedGroup[] {
  const seedPaths = [...new Set(rows.flatMap((r) => Object.keys(r.settings)))].filter(isSeedPath).sort();
  const byKey = new Map<string, { members: number[]; signatures: Set<string>; labels: string[] }>();
  rows.forEach((r, i) => {
    const { base, seeds } = stripSeedFromName(r.experiment);
    const signature = JSON.stringify([seedPaths.map((p) => r.settings[p] ?? null), seeds]);
    const hasSeed = seeds.length > 0 || seedPaths.some((p) => r.settings[p] !== undefined && r.settings[p] !== null);
    if (!hasSeed) return;
    const rest = Object.keys(r.settings)
      .filter((k) => !isSeedPath(k))
      .sort()
      .map((k) => [k, r.settings[k]]);
    // Matrix names carry their base; separate files that differ only in seed group by settings.
    const key = JSON.stringify([rest, seeds.length ? base : null]);
    const g = byKey.get(key) ?? { members: [], signatures: new Set<string>(), labels: [] };
    g.members.push(i);
    g.signatures.add(signature);
    if (!g.labels.includes(base)) g.labels.push(base);
    byKey.set(key, g);
  });
  return [...byKey.values()]
    .filter((g) => g.members.length >= 2 && g.signatures.size === g.members.length)
    .map((g) => ({ label: g.labels.join(' / '), members: g.members, seedPaths: seedPaths.filter((p) => g.members.some((i) => rows[i]!.settings[p] !== undefined)) }));
}

// ---------------------------------------------------------------- escaping / colours --------

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}
const esc = escapeHtml;

// Ten colours that stay apart on screen and in print; beyond that, hues by the golden angle.
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
function colourOf(i: number): string {
  return PALETTE[i] ?? `hsl(${Math.round((i * 137.508) % 360)}, 60%, 45%)`;
}

/** Let long dotted/underscored names wrap in narrow table headers. */
function wrappable(s: string): string {
  return esc(s).replace(/([._,@=])/g, '$1<wbr>');
}

function settingText(v: unknown): string {
  if (v === undefined || v === null) return '—';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

// ---------------------------------------------------------------- metrics access ------------

type Metrics = Record<string, unknown>;
const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
const isNumArray = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => typeof x === 'number');
const isBucketArray = (v: unknown): v is (number | null)[] => Array.isArray(v) && v.length > 0 && v.every((x) => x === null || typeof x === 'number');
const isMatrix = (v: unknown): v is number[][] => Array.isArray(v) && v.length > 0 && v.every((r) => isNumArray(r) && r.length === v.length);

/** Numeric scalars of one stage's metrics by dotted path (backend details live elsewhere). */
function numericLeaves(m: Metrics): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (v: unknown, path: string) => {
    if (typeof v === 'number') out.set(path, v);
    else if (isObj(v)) for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
  };
  for (const [k, v] of Object.entries(m)) if (k !== 'backend') walk(v, k);
  return out;
}

const hasCurves = (m: Metrics): m is Metrics & { loss_curves: Record<string, unknown> & { step: number[] } } =>
  isObj(m.loss_curves) && isNumArray(m.loss_curves.step) && m.loss_curves.step.length > 0;
const isEvaluation = (m: Metrics) => ['iou', 'ap50', 'gender_acc', 'age_acc', 'detection_rate'].some((k) => typeof m[k] === 'number');

/** Stage names in first-seen order over the rows. */
function stageNames(rows: readonly CompareRow[], pick: (m: Metrics) => boolean): string[] {
  const names: string[] = [];
  for (const r of rows) for (const [s, m] of Object.entries(r.metrics)) if (pick(m) && !names.includes(s)) names.push(s);
  return names;
}

// ---------------------------------------------------------------- SVG charts ----------------

function niceStep(span: number, count: number): number {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** Round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) {
    const d = Math.abs(lo) * 0.1 || 1;
    lo -= d;
    hi += d;
  }
  const step = niceStep(hi - lo, count);
  const start = Math.floor(lo / step + 1e-9) * step;
  const end = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0; start + i * step <= end + step * 1e-6; i++) ticks.push(Number((start + i * step).toPrecision(12)));
  return ticks;
}

function logTicks(lo: number, hi: number): number[] {
  const e0 = Math.floor(Math.log10(lo));
  const e1 = Math.ceil(Math.log10(hi));
  const ticks: number[] = [];
  for (let e = e0; e <= e1; e++) {
    const mults = e1 - e0 <= 2 ? [1, 2, 5] : [1];
    for (const m of mults) {
      const v = Number((m * 10 ** e).toPrecision(6));
      if (v <= 10 ** e1 * 1.0000001) ticks.push(v);
    }
  }
  return ticks;
}

function tickLabel(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e3) return `${Number((v / 1e3).toPrecision(3))}k`;
  if (a < 0.01) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

const r1 = (v: number) => Math.round(v * 10) / 10;

interface Series {
  name: string;
  colour: string;
  xs: number[];
  ys: number[];
}

/** A small line chart: one path per series, shared axes, log y when the data spans >20×. */
function lineChart(title: string, series: Series[], xLabel: string, yLabel: string): string {
  const W = 316;
  const H = 216;
  const m = { l: 50, r: 12, t: 24, b: 36 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const xsAll = series.flatMap((s) => s.xs);
  const ysAll = series.flatMap((s) => s.ys.filter((y) => Number.isFinite(y)));
  const xTicks = niceTicks(Math.min(0, ...xsAll), Math.max(...xsAll), 4);
  const yMin = Math.min(...ysAll);
  const yMax = Math.max(...ysAll);
  const log = yMin > 0 && yMax / yMin > 20;
  const yTicks = log ? logTicks(yMin, yMax) : niceTicks(Math.min(0, yMin), yMax, 4);
  const [x0, x1] = [xTicks[0]!, xTicks.at(-1)!];
  const [y0, y1] = log ? [Math.log10(yTicks[0]!), Math.log10(yTicks.at(-1)!)] : [yTicks[0]!, yTicks.at(-1)!];
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0 || 1)) * pw;
  const sy = (y: number) => m.t + ph - (((log ? Math.log10(y) : y) - y0) / (y1 - y0 || 1)) * ph;
  const parts: string[] = [];
  parts.push(`<text class="ctitle" x="${m.l}" y="15">${esc(title)}</text>`);
  for (const t of yTicks) {
    const y = r1(sy(t));
    parts.push(`<line class="grid" x1="${m.l}" x2="${m.l + pw}" y1="${y}" y2="${y}"/><text class="tick" x="${m.l - 5}" y="${y + 3}" text-anchor="end">${tickLabel(t)}</text>`);
  }
  for (const t of xTicks) {
    const x = r1(sx(t));
    parts.push(`<line class="axis" x1="${x}" x2="${x}" y1="${m.t + ph}" y2="${m.t + ph + 4}"/><text class="tick" x="${x}" y="${m.t + ph + 15}" text-anchor="middle">${tickLabel(t)}</text>`);
  }
  parts.push(`<line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>`);
  parts.push(`<text class="alabel" x="${m.l + pw / 2}" y="${H - 4}" text-anchor="middle">${esc(xLabel)}</text>`);
  parts.push(`<text class="alabel" transform="translate(12 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}${log ? ' (log)' : ''}</text>`);
  for (const s of series) {
    // Thin very long curves evenly; a few thousand points already exceed the pixels.
    const stride = Math.max(1, Math.ceil(s.xs.length / 1500));
    let d = '';
    let pen = false;
    for (let i = 0; i < s.xs.length; i += stride) {
      const y = s.ys[i]!;
      if (!Number.isFinite(y) || (log && y <= 0)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${r1(sx(s.xs[i]!))} ${r1(sy(y))}`;
      pen = true;
    }
    parts.push(`<path class="curve" d="${d}" stroke="${s.colour}" data-series="${esc(s.name)}"><title>${esc(s.name)}</title></path>`);
  }
  return `<svg class="chart line-chart" xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(`${title}: ${yLabel} by ${xLabel}`)}">${parts.join('')}</svg>`;
}

/** Vertical bars grouped by category, one bar per series; values in [0, yMax]. */
function groupedBars(title: string, categories: string[], series: { name: string; colour: string; values: (number | null)[] }[], yMax: number, fmt: (v: number) => string): string {
  const n = Math.max(1, series.length);
  const bw = Math.max(5, Math.min(26, Math.floor(150 / n)));
  const groupW = n * bw + 16;
  const m = { l: 46, r: 10, t: 24, b: 34 };
  const W = Math.max(420, m.l + m.r + categories.length * groupW);
  const H = 260;
  const ph = H - m.t - m.b;
  const sy = (v: number) => (v / yMax) * ph;
  const parts: string[] = [`<text class="ctitle" x="${m.l}" y="15">${esc(title)}</text>`];
  for (const t of niceTicks(0, yMax, 5)) {
    if (t > yMax + 1e-9) continue;
    const y = r1(m.t + ph - sy(t));
    parts.push(`<line class="grid" x1="${m.l}" x2="${W - m.r}" y1="${y}" y2="${y}"/><text class="tick" x="${m.l - 5}" y="${y + 3}" text-anchor="end">${fmt(t)}</text>`);
  }
  categories.forEach((c, ci) => {
    const gx = m.l + ci * groupW + 8;
    series.forEach((s, si) => {
      const v = s.values[ci];
      const x = gx + si * bw;
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        parts.push(`<text class="na" x="${x + bw / 2}" y="${m.t + ph - 3}" text-anchor="middle"><title>${esc(`${s.name}, ${c}: no test faces`)}</title>–</text>`);
        return;
      }
      const h = sy(Math.max(0, Math.min(v, yMax)));
      parts.push(`<rect class="bar bar-v" x="${x}" y="${m.t + ph - h}" width="${bw - 2}" height="${h}" fill="${s.colour}" data-value="${v}" data-max="${yMax}"><title>${esc(`${s.name}, ${c}: ${fmt(v)}`)}</title></rect>`);
      if (bw >= 20) parts.push(`<text class="val" x="${x + (bw - 2) / 2}" y="${m.t + ph - h - 3}" text-anchor="middle">${fmt(v)}</text>`);
    });
    parts.push(`<text class="tick" x="${gx + (n * bw) / 2}" y="${m.t + ph + 15}" text-anchor="middle">${esc(c)}</text>`);
  });
  parts.push(`<line class="axis" x1="${m.l}" x2="${W - m.r}" y1="${m.t + ph}" y2="${m.t + ph}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>`);
  parts.push(`<text class="alabel" x="${m.l + (W - m.l - m.r) / 2}" y="${H - 4}" text-anchor="middle">age bucket (true age)</text>`);
  parts.push(`<text class="alabel" transform="translate(12 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">accuracy</text>`);
  return `<svg class="chart bar-chart" xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${parts.join('')}</svg>`;
}

const SPEED_SERIES = [
  { label: 'single model', colour: '#4e79a7' },
  { label: 'detector + two classifiers', colour: '#f28e2b' },
];

/** Horizontal bars: per experiment, images/s of the one-model and the two-stage pipeline. */
function speedChart(items: { name: string; backend: string; single: number | null; twoStage: number | null }[]): string {
  const MAXC = 40;
  const labelW = Math.round(Math.min(320, 20 + 7.3 * Math.max(...items.map((i) => Math.min(MAXC, i.name.length)))));
  const m = { l: labelW, r: 230, t: 34, b: 34 };
  const barH = 13;
  const groupH = 2 * barH + 14;
  const W = m.l + 440 + m.r;
  const H = m.t + items.length * groupH + m.b;
  const pw = W - m.l - m.r;
  const maxV = Math.max(1e-9, ...items.flatMap((i) => [i.single ?? 0, i.twoStage ?? 0]));
  const ticks = niceTicks(0, maxV, 5);
  const xMax = ticks.at(-1)!;
  const sx = (v: number) => (v / xMax) * pw;
  const parts: string[] = [];
  SPEED_SERIES.forEach((s, k) => {
    const x = m.l + k * 190;
    parts.push(`<rect x="${x}" y="8" width="12" height="12" fill="${s.colour}"/><text class="tick" x="${x + 17}" y="18">${esc(s.label)}</text>`);
  });
  for (const t of ticks) {
    const x = r1(m.l + sx(t));
    parts.push(`<line class="grid" x1="${x}" x2="${x}" y1="${m.t - 4}" y2="${H - m.b}"/><text class="tick" x="${x}" y="${H - m.b + 14}" text-anchor="middle">${tickLabel(t)}</text>`);
  }
  items.forEach((it, i) => {
    const gy = m.t + i * groupH + 4;
    const shown = it.name.length > MAXC ? `${it.name.slice(0, MAXC - 1)}…` : it.name;
    parts.push(`<text class="ylab" x="${m.l - 8}" y="${gy + barH + 4}" text-anchor="end"><title>${esc(it.name)}</title>${esc(shown)}</text>`);
    [it.single, it.twoStage].forEach((v, k) => {
      const y = gy + k * (barH + 2);
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        parts.push(`<text class="na" x="${m.l + 4}" y="${y + barH - 2}">n/a${k === 1 ? ' (no crop classifiers)' : ''}</text>`);
        return;
      }
      const w = sx(v);
      parts.push(`<rect class="bar bar-h" x="${m.l}" y="${y}" width="${w}" height="${barH}" fill="${SPEED_SERIES[k]!.colour}" data-value="${v}"><title>${esc(`${it.name}, ${SPEED_SERIES[k]!.label}: ${formatNumber(v)} img/s`)}</title></rect>`);
      parts.push(`<text class="val" x="${m.l + w + 4}" y="${y + barH - 2}">${formatNumber(v)}</text>`);
    });
    const ratio = it.single && it.twoStage ? `${(it.single / it.twoStage).toFixed(1)}× faster` : '';
    const side = [ratio, it.backend].filter(Boolean).join(' · ');
    if (side) parts.push(`<text class="ratio" x="${m.l + pw + 56}" y="${gy + barH + 4}">${esc(side)}</text>`);
  });
  parts.push(`<line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t - 4}" y2="${H - m.b}"/><line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${H - m.b}" y2="${H - m.b}"/>`);
  parts.push(`<text class="alabel" x="${m.l + pw / 2}" y="${H - 4}" text-anchor="middle">images per second (higher is better)</text>`);
  return `<svg class="chart speed-chart" xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="inference speed, images per second">${parts.join('')}</svg>`;
}

function legend(rows: readonly CompareRow[], which: number[]): string {
  return `<ul class="legend">${which.map((i) => `<li><span class="swatch" style="background:${colourOf(i)}"></span>${esc(rows[i]!.experiment)}</li>`).join('')}</ul>`;
}

// ---------------------------------------------------------------- gallery -------------------

interface Face {
  box: number[] | null;
  gender: string;
  age: string;
  confidence: number | null;
}

interface GalleryItem {
  key: string;
  file: string;
  /** data: URI, or null when the image could not be read (the reason is in the notes). */
  src: string | null;
  truths: Face[];
  predictions: Face[];
}

export interface Gallery {
  row: number;
  stage: string;
  matchIou: number;
  items: GalleryItem[];
}

const MIME: Record<string, string> = { '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.webp': 'image/webp', '.gif': 'image/gif' };
const MAX_GALLERY_ITEMS = 24;

function face(v: unknown): Face {
  const o = isObj(v) ? v : {};
  const box = isNumArray(o.box) && o.box.length === 4 ? o.box : null;
  return { box, gender: typeof o.gender === 'string' ? o.gender : '?', age: typeof o.age === 'string' ? o.age : '?', confidence: typeof o.confidence === 'number' ? o.confidence : null };
}

/** Read `report.json` galleries from the rows' output directories; problems become notes. */
export async function loadGalleries(rows: readonly CompareRow[], notes: string[]): Promise<Gallery[]> {
  const out: Gallery[] = [];
  for (const [row, r] of rows.entries()) {
    for (const [stage, dir] of Object.entries(r.outputs)) {
      const reportPath = join(dir, 'report.json');
      let text: string;
      try {
        text = await fs.readFile(reportPath, 'utf8');
      } catch {
        continue; // most stages write no report
      }
      let report: unknown;
      try {
        report = JSON.parse(text);
      } catch (err) {
        notes.push(`${r.experiment}/${stage}: ${reportPath} is not valid JSON (${(err as Error).message}); no gallery shown`);
        continue;
      }
      if (!isObj(report) || !Array.isArray(report.gallery)) continue;
      const settings = isObj(report.settings) ? report.settings : {};
      const g: Gallery = { row, stage, matchIou: typeof settings.match_iou === 'number' ? settings.match_iou : 0.2, items: [] };
      if (report.gallery.length > MAX_GALLERY_ITEMS) notes.push(`${r.experiment}/${stage}: gallery has ${report.gallery.length} images; the first ${MAX_GALLERY_ITEMS} are shown`);
      for (const [k, entry] of report.gallery.slice(0, MAX_GALLERY_ITEMS).entries()) {
        if (!isObj(entry) || typeof entry.file !== 'string') {
          notes.push(`${r.experiment}/${stage}: report.json gallery[${k}] has no \`file\`; skipped`);
          continue;
        }
        const item: GalleryItem = {
          key: typeof entry.key === 'string' || typeof entry.key === 'number' ? String(entry.key) : entry.file,
          file: entry.file,
          src: null,
          truths: Array.isArray(entry.truths) ? entry.truths.map(face) : [],
          predictions: Array.isArray(entry.predictions) ? entry.predictions.map(face) : [],
        };
        const p = resolve(dir, entry.file);
        const rel = relative(dir, p);
        const mime = MIME[extname(p).toLowerCase()];
        if (rel.startsWith('..') || isAbsolute(rel)) notes.push(`${r.experiment}/${stage}: gallery[${k}].file ${entry.file} points outside the stage's outputs; not shown`);
        else if (!mime) notes.push(`${r.experiment}/${stage}: gallery[${k}].file ${entry.file}: not a known image type; not shown`);
        else {
          try {
            item.src = `data:${mime};base64,${(await fs.readFile(p)).toString('base64')}`;
          } catch (err) {
            notes.push(`${r.experiment}/${stage}: cannot read ${p} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
          }
        }
        g.items.push(item);
      }
      out.push(g);
    }
  }
  return out;
}

export function iou(a: readonly number[], b: readonly number[]): number {
  const w = Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!);
  const h = Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const area = (x: readonly number[]) => Math.max(0, x[2]! - x[0]!) * Math.max(0, x[3]! - x[1]!);
  return inter / (area(a) + area(b) - inter);
}

/** Pair each true face with the prediction overlapping it most (greedy by IoU, as evaluation does). */
function matchFaces(truths: Face[], preds: Face[], threshold: number): { pairs: [Face, Face | null][]; extra: Face[] } {
  const cand: [number, number, number][] = [];
  truths.forEach((t, i) => preds.forEach((p, j) => t.box && p.box && cand.push([iou(t.box, p.box), i, j])));
  cand.sort((a, b) => b[0] - a[0]);
  const tp = new Map<number, number>();
  const used = new Set<number>();
  for (const [v, i, j] of cand) {
    if (v < threshold) break;
    if (tp.has(i) || used.has(j)) continue;
    tp.set(i, j);
    used.add(j);
  }
  return { pairs: truths.map((t, i) => [t, tp.has(i) ? preds[tp.get(i)!]! : null]), extra: preds.filter((_, j) => !used.has(j)) };
}

function faceLines(item: GalleryItem, threshold: number): string {
  const { pairs, extra } = matchFaces(item.truths, item.predictions, threshold);
  const conf = (p: Face) => (p.confidence === null ? '' : ` <span class="conf">${Math.round(p.confidence * 100)}%</span>`);
  const mark = (ok: boolean) => `<span class="${ok ? 'ok' : 'bad'}">${ok ? '✓' : '✗'}</span>`;
  const lines = pairs.map(([t, p]) =>
    p
      ? `<li><span class="truth">${esc(t.gender)} ${esc(t.age)}</span> → <span class="pred">${esc(p.gender)}${mark(p.gender === t.gender)} ${esc(p.age)}${mark(p.age === t.age)}</span>${conf(p)}</li>`
      : `<li><span class="truth">${esc(t.gender)} ${esc(t.age)}</span> → <span class="bad">missed</span></li>`,
  );
  for (const p of extra) lines.push(`<li class="extra"><span class="bad">extra</span> → <span class="pred">${esc(p.gender)} ${esc(p.age)}</span>${conf(p)}</li>`);
  if (!lines.length) lines.push('<li class="muted">no faces</li>');
  return `<ul class="faces">${lines.join('')}</ul>`;
}

// ---------------------------------------------------------------- sections ------------------

interface Column {
  stage: string;
  path: string;
  dir: Direction | null;
}

function metricsTable(rows: readonly CompareRow[], groups: SeedGroup[]): string {
  const leaves = rows.map((r) => new Map(Object.entries(r.metrics).map(([s, m]) => [s, numericLeaves(m)])));
  // Evaluation results first: that is what people compare; training numbers after.
  const stages = stageNames(rows, () => true).map((s, i) => ({ s, i, eval: rows.some((r) => r.metrics[s] && isEvaluation(r.metrics[s]!)) }));
  stages.sort((a, b) => Number(b.eval) - Number(a.eval) || a.i - b.i);
  const columns: Column[] = [];
  const constants: string[] = [];
  for (const { s } of stages) {
    const paths: string[] = [];
    for (const l of leaves) for (const p of l.get(s)?.keys() ?? []) if (!paths.includes(p)) paths.push(p);
    for (const path of paths) {
      const dir = metricDirection(`${s}.${path}`);
      const present = leaves.filter((l) => l.has(s));
      const vals = present.map((l) => l.get(s)!.get(path));
      // A context number equal everywhere (steps, test_images) says more once than in every row.
      if (!dir && rows.length > 1 && vals.length > 1 && vals.every((v) => v !== undefined && v === vals[0])) {
        constants.push(`<code>${esc(s)}.${esc(path)}</code> = ${formatNumber(vals[0]!)}`);
        continue;
      }
      columns.push({ stage: s, path, dir });
    }
  }
  const settingCols = [...new Set(rows.flatMap((r) => Object.keys(r.settings)))];
  const value = (i: number, c: Column) => leaves[i]!.get(c.stage)?.get(c.path);
  const best = columns.map((c) => (c.dir ? bestIndices(rows.map((_, i) => value(i, c)), c.dir) : new Set<number>()));

  const stageSpans: { stage: string; n: number }[] = [];
  for (const c of columns) {
    const last = stageSpans.at(-1);
    if (last && last.stage === c.stage) last.n++;
    else stageSpans.push({ stage: c.stage, n: 1 });
  }
  const head1 = `<tr><th rowspan="2" class="exp">experiment</th>${settingCols.length ? `<th colspan="${settingCols.length}" class="group settings">settings that differ</th>` : ''}${stageSpans.map((g) => `<th colspan="${g.n}" class="group">${esc(g.stage)}</th>`).join('')}</tr>`;
  const head2 = `<tr>${settingCols.map((k) => `<th class="setting" title="${esc(k)}">${wrappable(k)}</th>`).join('')}${columns
    .map((c) => `<th title="${esc(`${c.stage}.${c.path}`)}${c.dir ? ` (${c.dir} is better)` : ''}">${wrappable(c.path)}${c.dir ? ` <span class="dir">${c.dir === 'higher' ? '↑' : '↓'}</span>` : ''}</th>`)
    .join('')}</tr>`;

  const expRow = (i: number, inGroup: boolean) => {
    const r = rows[i]!;
    const cells = columns.map((c, k) => {
      const v = value(i, c);
      return v === undefined ? '<td class="num muted">—</td>' : `<td class="num${best[k]!.has(i) ? ' best' : ''}">${formatNumber(v)}</td>`;
    });
    return `<tr class="${inGroup ? 'member' : ''}"><th class="exp" scope="row"><span class="swatch" style="background:${colourOf(i)}"></span>${esc(r.experiment)}${r.missing.length ? ' <span class="warn" title="some stages have no cached result">(incomplete)</span>' : ''}</th>${settingCols
      .map((k) => `<td>${esc(settingText(r.settings[k]))}</td>`)
      .join('')}${cells.join('')}</tr>`;
  };
  const summaryRow = (g: SeedGroup) => {
    const settingCells = settingCols.map((k) => {
      const vs = g.members.map((i) => settingText(rows[i]!.settings[k]));
      return `<td>${esc(new Set(vs).size === 1 ? vs[0]! : vs.join(', '))}</td>`;
    });
    const cells = columns.map((c) => {
      const vs = g.members.map((i) => value(i, c)).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
      if (!vs.length) return '<td class="num muted">—</td>';
      const { mean, std, n } = meanStd(vs);
      return `<td class="num" title="n = ${n}">${formatNumber(mean)}${n > 1 ? ` ± ${formatNumber(std)}` : ''}</td>`;
    });
    return `<tr class="summary"><th class="exp" scope="row">${esc(g.label)} <span class="muted">mean ± std, ${g.members.length} seeds</span></th>${settingCells.join('')}${cells.join('')}</tr>`;
  };

  const body: string[] = [];
  const done = new Set<number>();
  rows.forEach((_, i) => {
    if (done.has(i)) return;
    const g = groups.find((x) => x.members.includes(i));
    if (!g) {
      body.push(expRow(i, false));
      return;
    }
    for (const j of g.members) {
      body.push(expRow(j, true));
      done.add(j);
    }
    body.push(summaryRow(g));
  });
  const notes = [
    '<span class="best-key">highlighted</span>: best value of the column (↑ higher is better, ↓ lower is better).',
    groups.length ? 'Summary rows: mean ± sample standard deviation over the seeds.' : '',
    constants.length ? `Same for every experiment: ${constants.join(', ')}.` : '',
  ].filter(Boolean);
  return `<div class="scroll"><table class="metrics">${'<thead>' + head1 + head2 + '</thead>'}<tbody>${body.join('')}</tbody></table></div><p class="small">${notes.join(' ')}</p>`;
}

function curvesSection(rows: readonly CompareRow[]): string {
  const stages = stageNames(rows, hasCurves);
  if (!stages.length) return '<p class="muted">No loss curves in the cached metrics.</p>';
  const out: string[] = [];
  for (const s of stages) {
    const with_ = rows.map((r, i) => ({ r, i, m: r.metrics[s] })).filter((x) => x.m && hasCurves(x.m)) as { r: CompareRow; i: number; m: Metrics & { loss_curves: Record<string, unknown> & { step: number[] } } }[];
    const terms: string[] = [];
    for (const x of with_) for (const [k, v] of Object.entries(x.m.loss_curves)) if (k !== 'step' && isNumArray(v) && !terms.includes(k)) terms.push(k);
    // A single-term loss repeats `total` exactly: say so instead of drawing it twice.
    const same = terms.filter((t) => t !== 'total' && with_.every((x) => JSON.stringify(x.m.loss_curves[t] ?? null) === JSON.stringify(x.m.loss_curves.total ?? null)));
    const task = with_.map((x) => x.m.task).find((t) => typeof t === 'string');
    const charts = terms
      .filter((t) => !same.includes(t))
      .map((t) => {
        const series = with_.flatMap(({ r, i, m }) => {
          const ys = m.loss_curves[t];
          if (!isNumArray(ys) || !ys.some((y) => Number.isFinite(y))) return [];
          const n = Math.min(ys.length, m.loss_curves.step.length);
          return [{ name: r.experiment, colour: colourOf(i), xs: m.loss_curves.step.slice(0, n), ys: ys.slice(0, n) }];
        });
        return series.length ? `<figure class="small-multiple">${lineChart(t === 'total' ? 'total loss' : t, series, 'step', 'loss')}</figure>` : '';
      });
    out.push(
      `<div class="stage-block"><h3>${esc(s)}${typeof task === 'string' ? ` <span class="muted">(task: ${esc(task)})</span>` : ''}</h3><div class="charts">${charts.join('')}</div>${
        same.length ? `<p class="small muted">${same.map((t) => `<code>${esc(t)}</code>`).join(', ')} equal${same.length === 1 ? 's' : ''} the total loss here.</p>` : ''
      }</div>`,
    );
  }
  // One legend for all: colours are the experiment's everywhere in the page.
  const drawn = rows.flatMap((r, i) => (stages.some((s) => r.metrics[s] && hasCurves(r.metrics[s]!)) ? [i] : []));
  return `${legend(rows, drawn)}<div class="stage-blocks">${out.join('')}</div>`;
}

function ageBucketSection(rows: readonly CompareRow[]): string {
  const stages = stageNames(rows, (m) => isBucketArray(m.age_acc_per_bucket));
  if (!stages.length) return '<p class="muted">No per-age-bucket accuracy in the cached metrics.</p>';
  return stages
    .map((s) => {
      const with_ = rows.flatMap((r, i) => {
        const v = r.metrics[s]?.age_acc_per_bucket;
        return isBucketArray(v) ? [{ r, i, v }] : [];
      });
      const nb = Math.max(...with_.map((x) => x.v.length));
      const cats = Array.from({ length: nb }, (_, k) => ageLabel(k, nb));
      const pct = (v: number) => `${Math.round(v * 100)}%`;
      const chart = groupedBars(
        stages.length > 1 ? `${s}: accuracy per age bucket` : 'age accuracy per true age bucket',
        cats,
        with_.map(({ r, i, v }) => ({ name: r.experiment, colour: colourOf(i), values: cats.map((_, k) => (typeof v[k] === 'number' ? v[k]! : null)) })),
        1,
        pct,
      );
      return `${legend(rows, with_.map((x) => x.i))}<figure>${chart}</figure><p class="small muted">A dash marks a bucket with no test faces.</p>`;
    })
    .join('');
}

function ageLabel(k: number, n: number): string {
  return n === 7 ? `${10 + 10 * k}-${19 + 10 * k}` : `bucket ${k}`;
}

function confusionTable(title: string, m: number[][], labels: string[]): string {
  const head = `<tr><th class="corner">truth ↓ · predicted →</th>${labels.map((l) => `<th>${esc(l)}</th>`).join('')}<th class="n">n</th><th class="n">recall</th></tr>`;
  const body = m
    .map((row, i) => {
      const total = row.reduce((a, b) => a + b, 0);
      const cells = row.map((v, j) => {
        const f = total ? v / total : 0;
        const bg = `hsl(212, 70%, ${Math.round(97 - 55 * f)}%)`;
        return `<td class="cell${i === j ? ' diag' : ''}${f > 0.55 ? ' dark' : ''}" style="background:${bg}" data-value="${v}" title="${esc(`truth ${labels[i]}, predicted ${labels[j]}: ${v} (${Math.round(f * 100)}% of the row)`)}">${v}</td>`;
      });
      return `<tr><th>${esc(labels[i] ?? String(i))}</th>${cells.join('')}<td class="n">${total}</td><td class="n">${total ? `${Math.round((row[i]! / total) * 100)}%` : '—'}</td></tr>`;
    })
    .join('');
  return `<table class="confusion"><caption>${esc(title)}</caption><thead>${head}</thead><tbody>${body}</tbody></table>`;
}

function confusionSection(rows: readonly CompareRow[]): string {
  const cards: string[] = [];
  const stages = stageNames(rows, (m) => isMatrix(m.gender_confusion) || isMatrix(m.age_confusion));
  for (const [i, r] of rows.entries()) {
    for (const s of stages) {
      const m = r.metrics[s];
      if (!m) continue;
      const tables: string[] = [];
      const gender = m.gender_confusion;
      const age = m.age_confusion;
      if (isMatrix(gender)) tables.push(confusionTable('gender', gender, gender.length === 2 ? ['female', 'male'] : gender.map((_, k) => `class ${k}`)));
      if (isMatrix(age)) tables.push(confusionTable('age', age, age.map((_, k) => ageLabel(k, age.length))));
      if (!tables.length) continue;
      cards.push(`<div class="card"><h3><span class="swatch" style="background:${colourOf(i)}"></span>${esc(r.experiment)}${stages.length > 1 ? ` <span class="muted">${esc(s)}</span>` : ''}</h3><div class="tables">${tables.join('')}</div></div>`);
    }
  }
  if (!cards.length) return '<p class="muted">No confusion matrices in the cached metrics.</p>';
  return `<p class="small muted">Counts of true faces that were detected; shade = share of the truth row. Diagonal cells are outlined.</p><div class="cards">${cards.join('')}</div>`;
}

function speedSection(rows: readonly CompareRow[]): string {
  const stages = stageNames(rows, (m) => typeof m.single_model_img_per_s === 'number');
  if (!stages.length) return '<p class="muted">No speed measurements in the cached metrics.</p>';
  const items = rows.flatMap((r) =>
    stages.flatMap((s) => {
      const m = r.metrics[s];
      if (!m || typeof m.single_model_img_per_s !== 'number') return [];
      const backend = typeof m.backend === 'string' ? m.backend : isObj(m.backend) && typeof m.backend.name === 'string' ? m.backend.name : '';
      return [{ name: `${r.experiment}${stages.length > 1 ? ` · ${s}` : ''}`, backend, single: m.single_model_img_per_s, twoStage: typeof m.two_stage_img_per_s === 'number' ? m.two_stage_img_per_s : null }];
    }),
  );
  return `<figure>${speedChart(items)}</figure><p class="small muted">Same test images, one at a time, on the backend named with each experiment; speeds from different backends or machines are not comparable.</p>`;
}

function backendSection(rows: readonly CompareRow[]): string {
  const lines: string[] = [];
  for (const [i, r] of rows.entries()) {
    const stages = Object.entries(r.metrics).filter(([, m]) => m.backend !== undefined);
    stages.forEach(([s, m], k) => {
      const b = m.backend;
      const requested = r.volatile[s]?.backend;
      const cell = (v: unknown) => `<td>${v === undefined || v === null ? '' : esc(typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v))}</td>`;
      const fields = isObj(b) ? [b.name, b.package, b.version, b.threads, b.simd, b.gpu] : [b, '', '', '', '', ''];
      lines.push(
        `<tr>${k === 0 ? `<th scope="row" rowspan="${stages.length}" class="exp"><span class="swatch" style="background:${colourOf(i)}"></span>${esc(r.experiment)}</th>` : ''}<td>${esc(s)}</td>${fields.map(cell).join('')}${cell(requested)}</tr>`,
      );
    });
  }
  if (!lines.length) return '<p class="muted">No stage recorded its backend.</p>';
  return `<div class="scroll"><table class="plain"><thead><tr><th>experiment</th><th>stage</th><th>backend</th><th>package</th><th>version</th><th>threads</th><th>SIMD</th><th>GPU</th><th>requested</th></tr></thead><tbody>${lines.join('')}</tbody></table></div>`;
}

function gallerySection(rows: readonly CompareRow[], galleries: Gallery[]): string {
  if (!galleries.some((g) => g.items.length)) return '<p class="muted">No test-image gallery in the cached outputs (an evaluation stage writes one to report.json).</p>';
  const multiStage = new Set(galleries.map((g) => g.stage)).size > 1;
  // Same test image side by side across experiments.
  const byKey = new Map<string, { g: Gallery; item: GalleryItem }[]>();
  for (const g of galleries) for (const item of g.items) byKey.set(item.key, [...(byKey.get(item.key) ?? []), { g, item }]);
  const blocks = [...byKey.entries()].map(([key, entries]) => {
    const cards = entries.map(({ g, item }) => {
      const r = rows[g.row]!;
      const img = item.src ? `<img src="${item.src}" alt="${esc(`${r.experiment}: ${key}`)}">` : `<div class="noimg">image unavailable<br><code>${esc(item.file)}</code></div>`;
      return `<figure class="shot">${img}<figcaption><div class="who"><span class="swatch" style="background:${colourOf(g.row)}"></span>${wrappable(r.experiment)}${multiStage ? ` · ${esc(g.stage)}` : ''}</div>${faceLines(item, g.matchIou)}</figcaption></figure>`;
    });
    return `<div class="gal-key"><h3><code>${esc(key)}</code></h3><div class="shots">${cards.join('')}</div></div>`;
  });
  return `<p class="small muted">Boxes in the images: truth dashed white, predictions green. Beside each: true gender and age → predicted (✓ right, ✗ wrong) and confidence.</p>${blocks.join('')}`;
}

function missingSection(rows: readonly CompareRow[]): string {
  const incomplete = rows.filter((r) => r.missing.length);
  if (!incomplete.length) return '<p>Every experiment has a cached result for every stage.</p>';
  return `<ul class="missing">${incomplete
    .map((r) => `<li><strong>${esc(r.experiment)}</strong>: no cached result for ${r.missing.map((s) => `<code>${esc(s)}</code>`).join(', ')} — run <code>pipe run ${esc(r.file)}</code></li>`)
    .join('')}</ul>`;
}

const CSS = `
:root { color-scheme: light; --fg: #1d232b; --muted: #68717d; --line: #d6dbe1; --bg2: #f4f6f8; --best: #d8f3dc; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
code { font: 12px/1.3 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background: var(--bg2); padding: 1px 4px; border-radius: 3px; }
.muted { color: var(--muted); font-weight: normal; }
.small { font-size: 12.5px; }
.warn { color: #a14d00; font-weight: normal; font-size: 0.9em; }
nav ul { list-style: none; padding: 0; margin: 10px 0 0; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav a { color: #1f5fa8; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.alert { background: #fff4e5; border: 1px solid #f0c27b; padding: 8px 12px; border-radius: 4px; margin-top: 12px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; }
table.metrics { font-size: 12.5px; }
table.metrics th, table.metrics td, table.plain th, table.plain td { border: 1px solid var(--line); padding: 4px 7px; }
table.metrics thead th { background: var(--bg2); font-weight: 600; vertical-align: bottom; text-align: center; min-width: 56px; }
table.metrics th.group { border-bottom: 2px solid #aab3bd; }
table.metrics th.exp, table.plain th.exp { text-align: left; white-space: nowrap; position: sticky; left: 0; background: #fff; z-index: 1; }
table.metrics thead th.exp { background: var(--bg2); }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.metrics td.best, .best-key { background: var(--best); font-weight: 700; }
.best-key { padding: 0 4px; }
table.metrics tr.summary th, table.metrics tr.summary td { background: #eef3fb; border-top: 2px solid #aab3bd; font-weight: 600; }
table.metrics tr.member th.exp { padding-left: 14px; }
.dir { color: var(--muted); font-weight: normal; }
table.plain { font-size: 13px; }
table.plain thead th { background: var(--bg2); text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: baseline; }
.legend { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 14px; }
.stage-blocks { display: flex; flex-wrap: wrap; gap: 0 40px; }
.stage-block { flex: 0 1 auto; min-width: 0; max-width: 100%; }
figure { margin: 0; }
svg.chart { display: block; max-width: 100%; height: auto; background: #fff; }
svg.chart text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #2f3740; }
svg.chart .ctitle { font-size: 13px; font-weight: 600; }
svg.chart .tick, svg.chart .ylab { font-size: 10.5px; }
svg.chart .ylab { font-size: 12px; }
svg.chart .alabel { font-size: 11px; fill: var(--muted); }
svg.chart .val { font-size: 9.5px; fill: #3c4550; }
svg.chart .na { font-size: 11px; fill: #9aa3ad; }
svg.chart .ratio { font-size: 11px; fill: var(--muted); }
svg.chart .grid { stroke: #e7eaee; stroke-width: 1; }
svg.chart .axis { stroke: #7d8792; stroke-width: 1; }
svg.chart .curve { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px 12px; }
.card h3 { margin: 6px 0; }
.tables { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
table.confusion { font-size: 12px; font-variant-numeric: tabular-nums; }
table.confusion caption { text-align: left; font-weight: 600; padding-bottom: 3px; }
table.confusion th, table.confusion td { border: 1px solid #fff; padding: 3px 6px; text-align: right; min-width: 30px; }
table.confusion th { font-weight: 500; color: var(--muted); background: #fff; }
table.confusion th.corner { font-size: 10.5px; }
table.confusion td.diag { outline: 2px solid #2b4c74; outline-offset: -2px; }
table.confusion td.dark { color: #fff; }
table.confusion td.n { color: var(--muted); background: var(--bg2); }
.gal-key { margin-bottom: 14px; }
.gal-key h3 { margin: 12px 0 6px; font-weight: 500; }
.shots { display: flex; flex-wrap: wrap; gap: 12px; }
.shot { display: flex; gap: 10px; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fafbfc; }
.shot img { width: 168px; height: auto; image-rendering: pixelated; border-radius: 3px; background: #000; align-self: flex-start; }
.shot figcaption { font-size: 12.5px; width: 206px; }
.who { font-weight: 600; margin-bottom: 4px; overflow-wrap: break-word; }
.truth, .pred, .conf { white-space: nowrap; }
.noimg { width: 168px; height: 168px; display: flex; flex-direction: column; align-items: center; justify-content: center; background: var(--bg2); color: var(--muted); font-size: 12px; text-align: center; }
ul.faces { list-style: none; padding: 0; margin: 0; }
ul.faces li { margin: 2px 0; }
.truth { color: #333; }
.pred { font-weight: 600; }
.conf { color: var(--muted); font-size: 11.5px; }
.ok { color: #1b7f3b; margin-left: 1px; }
.bad { color: #c0392b; margin-left: 1px; }
ul.missing li { margin: 4px 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { padding: 0; font-size: 11px; }
  nav, .no-print { display: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  .scroll { overflow: visible; }
  /* The wide metrics table must fit the page: small type, and numbers may wrap at ±. */
  table.metrics { font-size: 6px; width: 100%; }
  table.metrics th, table.metrics td { padding: 2px 3px; }
  table.metrics thead th { min-width: 0; }
  table.metrics td.num { white-space: normal; }
  table.metrics th.exp { position: static; white-space: normal; min-width: 70px; }
  table.metrics .swatch { width: 7px; height: 7px; margin-right: 3px; }
  h2 { break-after: avoid; margin-top: 20px; }
  h3 { break-after: avoid; }
  figure, .card, .shot, tr, .legend { break-inside: avoid; }
  .shot img { width: 150px; }
}
`;

// ---------------------------------------------------------------- page ----------------------

export interface RenderOptions {
  galleries?: Gallery[];
  notes?: string[];
  generatedAt?: Date;
}

/** The whole page as a string (pure: no file access). */
export function renderHtmlReport(rows: readonly CompareRow[], opts: RenderOptions = {}): string {
  const groups = seedGroups(rows);
  const notes = opts.notes ?? [];
  const sections: [string, string, string][] = [
    ['metrics', 'Metrics', rows.length ? metricsTable(rows, groups) : '<p class="muted">No experiments.</p>'],
    ['curves', 'Training loss curves', curvesSection(rows)],
    ['age', 'Accuracy per age bucket', ageBucketSection(rows)],
    ['confusion', 'Confusion matrices', confusionSection(rows)],
    ['gallery', 'Test images', gallerySection(rows, opts.galleries ?? [])],
    ['speed', 'Speed: single model vs detector + two classifiers', speedSection(rows)],
    ['backend', 'Backends', backendSection(rows)],
    ['missing', 'Experiments without cached results', missingSection(rows)],
  ];
  if (notes.length) sections.push(['notes', 'Notes', `<ul>${notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>`]);
  const incomplete = rows.filter((r) => r.missing.length).length;
  const when = (opts.generatedAt ?? new Date()).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  const title = `pipe compare — ${rows.length} experiment${rows.length === 1 ? '' : 's'}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="pipe">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<header>
<h1>Experiment comparison</h1>
<div class="muted">${rows.length} experiment${rows.length === 1 ? '' : 's'}: ${rows.map((r) => esc(r.experiment)).join(', ')} · generated by pipe on ${esc(when)}</div>
${incomplete ? `<div class="alert">${incomplete} experiment${incomplete === 1 ? ' has' : 's have'} stages with no cached result: see <a href="#missing">Experiments without cached results</a>.</div>` : ''}
<nav><ul>${sections.map(([id, h]) => `<li><a href="#${id}">${esc(h)}</a></li>`).join('')}</ul></nav>
</header>
<main>
${sections.map(([id, h, body]) => `<section id="${id}">\n<h2>${esc(h)}</h2>\n${body}\n</section>`).join('\n')}
</main>
<footer>Self-contained report written by <code>pipe compare --html</code>; it needs no network.</footer>
</body>
</html>
`;
}

/** Write the comparison report for `rows` to `file` as one self-contained HTML page. */
export async function writeHtmlReport(rows: CompareRow[], file: string): Promise<void> {
  const notes: string[] = [];
  const galleries = await loadGalleries(rows, notes);
  const html = renderHtmlReport(rows, { galleries, notes });
  const target = resolve(file);
  await fs.mkdir(dirname(target), { recursive: true });
  // Write beside the target and rename, so a reader never sees half a page.
  const tmp = `${target}.tmp-${process.pid}`;
  try {
    await fs.writeFile(tmp, html);
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new Error(`${target}: cannot write the HTML report: ${(err as Error).message}`);
  }
}
