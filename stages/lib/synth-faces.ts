// Procedural faces and the shared plumbing of the two stages that build IMDB-WIKI-shaped
// datasets (synthesize-imdb-wiki, compose-imdb-wiki): a seeded PRNG, an RGB canvas with a few
// anti-aliased primitives, backgrounds, faces whose look encodes gender and age bucket, the
// IMDB-WIKI naming and date conventions, an ordered bounded-concurrency loop and a deterministic
// tar writer. No heavy imports at module level: tar-stream is loaded inside TarWriter.open().


// ---------------------------------------------------------------- random numbers

import { mulberry32 } from './random.js';
export { mulberry32 };

/** Mix several integers into one 32-bit seed, so each row gets its own independent stream. */
export function mixSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193) >>> 0;
    h ^= h >>> 13;
    h = Math.imul(h, 0x5bd1e995) >>> 0;
    h ^= h >>> 15;
  }
  return h >>> 0;
}

export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** Uniform 32-bit unsigned integer. */
  nextUint32(): number {
    return (this.next() * 4294967296) >>> 0;
  }
  /** Uniform float in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** Uniform integer in [lo, hi] (both inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** Fisher-Yates in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      const t = items[i]!;
      items[i] = items[j]!;
      items[j] = t;
    }
    return items;
  }
}

// ---------------------------------------------------------------- canvas and primitives

export type Rgb = [number, number, number];

export interface RgbImage {
  width: number;
  height: number;
  /** width*height*3 bytes, row-major RGB. */
  data: Buffer;
}

export function createImage(width: number, height: number): RgbImage {
  return { width, height, data: Buffer.alloc(width * height * 3) };
}

function clamp01(v: number): number {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

export function mix(a: Rgb, b: Rgb, t: number): Rgb {
  return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
}

export function scale(c: Rgb, f: number): Rgb {
  return [Math.min(255, c[0] * f), Math.min(255, c[1] * f), Math.min(255, c[2] * f)];
}

function blend(img: RgbImage, x: number, y: number, c: Rgb, a: number): void {
  const o = (y * img.width + x) * 3;
  const d = img.data;
  // A convex combination of two bytes stays in 0..255, so no clamping is needed.
  d[o] = (d[o]! + (c[0] - d[o]!) * a + 0.5) | 0;
  d[o + 1] = (d[o + 1]! + (c[1] - d[o + 1]!) * a + 0.5) | 0;
  d[o + 2] = (d[o + 2]! + (c[2] - d[o + 2]!) * a + 0.5) | 0;
}

type Clip = (x: number, y: number) => boolean;

/** Filled, anti-aliased axis-aligned ellipse; `clip` keeps only pixels (centres) it accepts. */
export function fillEllipse(
  img: RgbImage, cx: number, cy: number, rx: number, ry: number, c: Rgb, alpha = 1, clip?: Clip,
): void {
  if (rx <= 0 || ry <= 0) return;
  const x0 = Math.max(0, Math.floor(cx - rx - 1));
  const x1 = Math.min(img.width - 1, Math.ceil(cx + rx + 1));
  const y0 = Math.max(0, Math.floor(cy - ry - 1));
  const y1 = Math.min(img.height - 1, Math.ceil(cy + ry + 1));
  const rEff = (rx + ry) / 2;
  for (let y = y0; y <= y1; y++) {
    const dy = (y + 0.5 - cy) / ry;
    for (let x = x0; x <= x1; x++) {
      const dx = (x + 0.5 - cx) / rx;
      const q = Math.sqrt(dx * dx + dy * dy);
      const cover = clamp01(0.5 - (q - 1) * rEff);
      if (cover <= 0) continue;
      if (clip && !clip(x + 0.5, y + 0.5)) continue;
      blend(img, x, y, c, cover * alpha);
    }
  }
}

/** Anti-aliased thick line segment with round caps. */
export function drawLine(
  img: RgbImage, xa: number, ya: number, xb: number, yb: number, thickness: number, c: Rgb, alpha = 1,
): void {
  const r = Math.max(0.5, thickness / 2);
  const x0 = Math.max(0, Math.floor(Math.min(xa, xb) - r - 1));
  const x1 = Math.min(img.width - 1, Math.ceil(Math.max(xa, xb) + r + 1));
  const y0 = Math.max(0, Math.floor(Math.min(ya, yb) - r - 1));
  const y1 = Math.min(img.height - 1, Math.ceil(Math.max(ya, yb) + r + 1));
  const vx = xb - xa;
  const vy = yb - ya;
  const len2 = vx * vx + vy * vy;
  for (let y = y0; y <= y1; y++) {
    const py = y + 0.5;
    for (let x = x0; x <= x1; x++) {
      const px = x + 0.5;
      let t = len2 > 0 ? ((px - xa) * vx + (py - ya) * vy) / len2 : 0;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const ex = px - (xa + t * vx);
      const ey = py - (ya + t * vy);
      const cover = clamp01(r + 0.5 - Math.sqrt(ex * ex + ey * ey));
      if (cover > 0) blend(img, x, y, c, cover * alpha);
    }
  }
}

function drawPolyline(img: RgbImage, pts: Array<[number, number]>, thickness: number, c: Rgb, alpha = 1): void {
  for (let i = 1; i < pts.length; i++) {
    drawLine(img, pts[i - 1]![0], pts[i - 1]![1], pts[i]![0], pts[i]![1], thickness, c, alpha);
  }
}

function randomColour(rng: Rng): Rgb {
  return [rng.int(0, 255), rng.int(0, 255), rng.int(0, 255)];
}

/** A random linear gradient, a few soft blobs and lines, and some grain, all from `rng`.
 * The smooth part is drawn at quarter resolution and upsampled bilinearly (16x fewer blob
 * pixels); the grain is added at full resolution in the same pass. */
export function drawBackground(img: RgbImage, rng: Rng): void {
  const { width: w, height: h, data } = img;
  const F = 4;
  const sw = Math.ceil(w / F) + 1;
  const sh = Math.ceil(h / F) + 1;
  const small = createImage(sw, sh);
  const sd = small.data;
  const c1 = randomColour(rng);
  const c2 = randomColour(rng);
  const ang = rng.range(0, Math.PI * 2);
  const ux = Math.cos(ang);
  const uy = Math.sin(ang);
  const span = Math.abs(ux) * sw + Math.abs(uy) * sh;
  const base = Math.min(0, ux * sw) + Math.min(0, uy * sh);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      const t = (x * ux + y * uy - base) / span;
      const o = (y * sw + x) * 3;
      sd[o] = Math.round(c1[0] + (c2[0] - c1[0]) * t);
      sd[o + 1] = Math.round(c1[1] + (c2[1] - c1[1]) * t);
      sd[o + 2] = Math.round(c1[2] + (c2[2] - c1[2]) * t);
    }
  }
  const blobs = rng.int(2, 7);
  for (let i = 0; i < blobs; i++) {
    const r = rng.range(0.08, 0.4) * Math.max(sw, sh);
    fillEllipse(small, rng.range(0, sw), rng.range(0, sh), r * rng.range(0.5, 1.5), r, randomColour(rng), rng.range(0.25, 0.7));
  }
  if (rng.chance(0.4)) {
    const lines = rng.int(2, 6);
    const col = randomColour(rng);
    for (let i = 0; i < lines; i++) {
      drawLine(small, rng.range(0, sw), rng.range(0, sh), rng.range(0, sw), rng.range(0, sh), rng.range(0.5, 2), col, 0.5);
    }
  }
  const amp = rng.range(2, 12);
  const noiseScale = (2 * amp) / 255;
  let bits = 0;
  for (let y = 0; y < h; y++) {
    const fy = y / F;
    const y0 = Math.floor(fy);
    const ty = fy - y0;
    const row0 = y0 * sw;
    const row1 = Math.min(sh - 1, y0 + 1) * sw;
    for (let x = 0; x < w; x++) {
      const fx = x / F;
      const x0 = Math.floor(fx);
      const tx = fx - x0;
      const x1 = Math.min(sw - 1, x0 + 1);
      const a = (row0 + x0) * 3;
      const b = (row0 + x1) * 3;
      const c = (row1 + x0) * 3;
      const d = (row1 + x1) * 3;
      // One 32-bit draw gives the grain of four pixels.
      if ((x & 3) === 0) bits = rng.nextUint32();
      const n = ((bits >>> ((x & 3) * 8)) & 255) * noiseScale - amp;
      const o = (y * w + x) * 3;
      for (let k = 0; k < 3; k++) {
        const top = sd[a + k]! + (sd[b + k]! - sd[a + k]!) * tx;
        const bot = sd[c + k]! + (sd[d + k]! - sd[c + k]!) * tx;
        const v = (top + (bot - top) * ty + n + 0.5) | 0;
        data[o + k] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
  }
}

// ---------------------------------------------------------------- faces

/** Number of age buckets: (age-10)//10 for ages 10..79. */
export const AGE_BUCKETS = 7;

export function ageBucket(age: number): number {
  return Math.floor((age - 10) / 10);
}

export interface FaceBox {
  /** 0-based pixel column of the box's left edge. */
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Everything random about one face, chosen up front so drawing is a pure function. */
export interface FaceLook {
  /** IMDB-WIKI convention: 1 male, 0 female. */
  gender: 0 | 1;
  /** Age bucket 0..6 that the picture shows. */
  bucket: number;
  skin: Rgb;
  hair: Rgb;
  iris: Rgb;
  lips: Rgb;
  /** Face half-width as a fraction of the box width. */
  widthFrac: number;
  /** Small offsets (fractions of the box) of the head and of the features. */
  dx: number;
  dy: number;
  eyeDy: number;
  mouthDy: number;
  stubble: boolean;
  /** How far the male hairline has receded (0..1). */
  recede: number;
}

const SKIN_LIGHT: Rgb = [246, 214, 188];
const SKIN_DARK: Rgb = [105, 70, 50];
// Dark young colours only: a light blond would read as grey and blur the age signal.
const YOUNG_HAIR: readonly Rgb[] = [
  [28, 24, 22], [50, 35, 26], [72, 48, 32], [96, 60, 36], [104, 50, 28],
];
const WHITE_HAIR: Rgb = [232, 232, 234];

/** Hair goes from the young colour to white in even steps across the buckets. */
export function hairColour(young: Rgb, bucket: number, jitter = 0): Rgb {
  return mix(young, WHITE_HAIR, clamp01(bucket / (AGE_BUCKETS - 1) + jitter));
}

export function makeFaceLook(rng: Rng, gender: 0 | 1, bucket: number): FaceLook {
  const skin = mix(SKIN_LIGHT, SKIN_DARK, rng.next() ** 1.3);
  const skinJ: Rgb = [skin[0] + rng.range(-8, 8), skin[1] + rng.range(-8, 8), skin[2] + rng.range(-6, 6)];
  const b = Math.max(0, Math.min(AGE_BUCKETS - 1, bucket));
  const young = rng.pick(YOUNG_HAIR);
  return {
    gender,
    bucket: b,
    skin: skinJ,
    hair: hairColour(young, b, rng.range(-0.04, 0.04)),
    iris: rng.pick<Rgb>([[60, 40, 25], [40, 80, 130], [70, 100, 60], [30, 25, 20]]),
    lips: gender === 0
      ? [rng.range(170, 215), rng.range(30, 70), rng.range(55, 95)]
      : scale(mix(skinJ, [150, 60, 60], 0.35), 0.8),
    widthFrac: (gender === 1 ? 0.43 : 0.37) * rng.range(0.96, 1.04),
    dx: rng.range(-0.02, 0.02),
    dy: rng.range(-0.015, 0.015),
    eyeDy: rng.range(-0.03, 0.03),
    mouthDy: rng.range(-0.04, 0.04),
    stubble: gender === 1 && b >= 1 && rng.chance(0.35),
    recede: gender === 1 ? clamp01(b / 6 + rng.range(-0.1, 0.1)) : 0,
  };
}

/** Draw one face so that its forehead-to-chin, ear-to-ear extent fills `box`.
 * Gender shows as long hair down the sides, a narrower face and red lips (female) versus short
 * hair with ears showing, a wider face, thick brows and sometimes stubble (male). Age bucket
 * shows as hair colour (dark → grey → white), that many forehead lines, and from bucket 2 on
 * crow's feet, then cheek folds, eye bags and mouth-corner lines. */
export function drawFace(img: RgbImage, box: FaceBox, look: FaceLook): void {
  const W = box.width;
  const H = box.height;
  const cx = box.left + W * (0.5 + look.dx);
  const cy = box.top + H * (0.56 + look.dy);
  const rx = W * look.widthFrac;
  const ry = H * 0.43;
  const female = look.gender === 0;
  const skin = look.skin;
  const shade = scale(skin, 0.82);
  const line = scale(skin, 0.6);
  const hair = look.hair;
  const b = look.bucket;

  // Behind the head: long hair (female) falls to just below the chin.
  if (female) {
    const bottom = cy + ry * 1.15;
    fillEllipse(img, cx, cy + ry * 0.12, rx * 1.38, ry * 1.26, hair, 1, (_x, y) => y < bottom);
  }
  // Neck, then ears (hidden by long hair, so only drawn for short hair).
  const neckTop = cy + ry * 0.6;
  const neckBottom = Math.min(img.height, cy + ry * 1.35);
  for (let y = neckTop; y < neckBottom; y += Math.max(1, ry * 0.1)) {
    drawLine(img, cx, y, cx, Math.min(neckBottom, y + ry * 0.1), rx * 0.85, shade);
  }
  if (!female) {
    fillEllipse(img, cx - rx * 0.98, cy - ry * 0.02, rx * 0.16, ry * 0.22, shade);
    fillEllipse(img, cx + rx * 0.98, cy - ry * 0.02, rx * 0.16, ry * 0.22, shade);
  }
  fillEllipse(img, cx, cy, rx, ry, skin);

  // Hair on top: a fringe for long hair; short hair with a hairline that recedes with age.
  const hairline = female ? cy - ry * 0.62 : cy - ry * (0.55 + 0.22 * look.recede);
  const sideburnY = cy - ry * 0.15;
  fillEllipse(img, cx, cy - ry * 0.07, rx * 1.07, ry * 1.08, hair, 1, (x, y) =>
    y < hairline + Math.sin((x - cx) / rx * 6) * ry * 0.015 ||
    (!female && y < sideburnY && Math.abs(x - cx) > rx * 0.86));

  if (look.stubble) {
    fillEllipse(img, cx, cy + ry * 0.05, rx * 0.98, ry * 0.98, hair, 0.35, (_x, y) => y > cy + ry * 0.28);
  }

  // Forehead lines: as many as the age bucket, spread between hairline and brows.
  const thin = Math.max(0.9, H * 0.014);
  const fTop = hairline + ry * 0.07;
  const fBottom = cy - ry * 0.32;
  for (let k = 0; k < b; k++) {
    const y = fTop + ((k + 1) * (fBottom - fTop)) / (b + 1);
    const pts: Array<[number, number]> = [];
    for (let u = -0.5; u <= 0.5001; u += 0.25) pts.push([cx + u * rx, y - ry * 0.03 * (1 - 4 * u * u)]);
    drawPolyline(img, pts, thin, line, 0.85);
  }

  // Eyes and brows.
  const eyeY = cy - ry * (0.05 - look.eyeDy);
  const browW = female ? H * 0.028 : H * 0.05;
  for (const side of [-1, 1]) {
    const ex = cx + side * rx * 0.37;
    drawLine(img, cx + side * rx * 0.14, eyeY - ry * 0.2, cx + side * rx * 0.58, eyeY - ry * 0.24, browW, scale(hair, 0.9));
    fillEllipse(img, ex, eyeY, rx * 0.17, ry * 0.085, [245, 245, 240]);
    fillEllipse(img, ex, eyeY, ry * 0.07, ry * 0.07, look.iris);
    fillEllipse(img, ex, eyeY, ry * 0.03, ry * 0.03, [10, 10, 10]);
    if (female) drawLine(img, ex - rx * 0.18, eyeY - ry * 0.06, ex + rx * 0.18, eyeY - ry * 0.08, thin * 1.6, [20, 15, 15]);
    if (b >= 2) {
      const ox = cx + side * rx * 0.56;
      drawLine(img, ox, eyeY, ox + side * rx * 0.14, eyeY - ry * 0.06, thin, line, 0.8);
      drawLine(img, ox, eyeY + ry * 0.02, ox + side * rx * 0.14, eyeY + ry * 0.08, thin, line, 0.8);
    }
    if (b >= 4) {
      drawPolyline(img, [
        [ex - rx * 0.15, eyeY + ry * 0.12], [ex, eyeY + ry * 0.17], [ex + rx * 0.15, eyeY + ry * 0.12],
      ], thin, line, 0.7);
    }
  }

  // Nose, cheek folds, mouth.
  drawLine(img, cx, eyeY + ry * 0.05, cx + rx * 0.05, cy + ry * 0.3, thin * 1.4, shade);
  drawLine(img, cx - rx * 0.1, cy + ry * 0.33, cx + rx * 0.12, cy + ry * 0.33, thin * 1.6, line);
  const mouthY = cy + ry * (0.55 + look.mouthDy);
  if (b >= 3) {
    for (const side of [-1, 1]) {
      drawLine(img, cx + side * rx * 0.2, cy + ry * 0.3, cx + side * rx * 0.4, mouthY + ry * 0.05, thin, line, 0.8);
    }
  }
  fillEllipse(img, cx, mouthY, rx * (female ? 0.3 : 0.34), ry * (female ? 0.08 : 0.045), look.lips);
  if (b >= 5) {
    for (const side of [-1, 1]) {
      drawLine(img, cx + side * rx * 0.34, mouthY, cx + side * rx * 0.3, mouthY + ry * 0.2, thin, line, 0.8);
    }
  }
}

// ---------------------------------------------------------------- IMDB-WIKI conventions

export type StructName = 'imdb' | 'wiki';

/** MATLAB serial date number of a calendar date (719529 = 1970-01-01). */
export function matlabDatenum(year: number, month: number, day: number): number {
  const d = new Date(Date.UTC(2000, 0, 1));
  d.setUTCFullYear(year, month - 1, day); // setUTCFullYear keeps years < 100 literal
  return Math.round(d.getTime() / 86400000) + 719529;
}

/** face_location of a drawn box: MATLAB 1-based [x1 y1 x2 y2] with x1 = left+1 and
 * x2 = left+width (the last covered pixel, 1-based), so floor(face_location)-1 gives the
 * 0-based inclusive box [left, top, left+width-1, top+height-1]. */
export function boxToFaceLocation(b: FaceBox): [number, number, number, number] {
  return [b.left + 1, b.top + 1, b.left + b.width, b.top + b.height];
}

export interface PathParts {
  index: number;
  dob: { year: number; month: number; day: number };
  photoTaken: number;
}

/** full_path in the dataset's own style, e.g. `17/10000217_1981-05-05_2009.jpg` (wiki) or
 * `01/nm0000001_rm124825600_1899-5-10_1968.jpg` (imdb); `rng` picks the id's free digits. */
export function makeFullPath(structName: StructName, p: PathParts, rng: Rng): string {
  const { year, month, day } = p.dob;
  if (structName === 'wiki') {
    // The index fixes the leading digits, so ids never collide.
    const id = 10000000 + p.index * 100 + rng.int(0, 99);
    const mm = String(month).padStart(2, '0');
    const dd = String(day).padStart(2, '0');
    return `${String(id % 100).padStart(2, '0')}/${id}_${year}-${mm}-${dd}_${p.photoTaken}.jpg`;
  }
  const nm = 1000000 + p.index * 100 + rng.int(0, 99);
  const rm = rng.int(100000000, 999999999);
  return `${String(nm % 100).padStart(2, '0')}/nm${String(nm).padStart(7, '0')}_rm${rm}_${year}-${month}-${day}_${p.photoTaken}.jpg`;
}

/** Name of the tar member holding `fullPath`, as in `wiki_crop.tar`. */
export function tarMemberName(structName: StructName, fullPath: string): string {
  return `${structName}_crop/${fullPath}`;
}

const BUCKET_LABELS = ['10-19', '20-29', '30-39', '40-49', '50-59', '60-69', '70-79'];

/** Label counts over rows in IMDB-WIKI convention (gender NaN = unknown). */
export function labelCounts(rows: ReadonlyArray<{ gender: number; age: number }>): {
  gender: { male: number; female: number; unknown: number };
  age_bucket: Record<string, number>;
} {
  const gender = { male: 0, female: 0, unknown: 0 };
  const age: Record<string, number> = {};
  for (const l of BUCKET_LABELS) age[l] = 0;
  age['out_of_range'] = 0;
  for (const r of rows) {
    if (r.gender === 1) gender.male++;
    else if (r.gender === 0) gender.female++;
    else gender.unknown++;
    const b = ageBucket(r.age);
    if (r.age >= 10 && r.age < 80) age[BUCKET_LABELS[b]!]!++;
    else age['out_of_range']!++;
  }
  return { gender, age_bucket: age };
}

// ---------------------------------------------------------------- streaming helpers

/** Run `produce` for items in order with at most `limit` in flight (the synchronous part of
 * `produce`, e.g. drawing, runs on this thread; the awaited part, e.g. a sharp encode, in
 * libuv's pool), and hand results to `consume` strictly in order. */
export async function orderedPipeline<T, R>(
  items: readonly T[],
  limit: number,
  produce: (item: T, index: number) => Promise<R>,
  consume: (result: R, index: number) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const inFlight = new Map<number, Promise<R>>();
  let started = 0;
  for (let i = 0; i < items.length; i++) {
    while (started < items.length && started < i + Math.max(1, limit)) {
      if (signal?.aborted) break;
      const p = produce(items[started]!, started);
      p.catch(() => {}); // rejections surface when awaited in order, not as unhandled
      inFlight.set(started, p);
      started++;
      // Let the event loop breathe between synchronous drawing steps.
      await new Promise<void>((r) => setImmediate(r));
    }
    if (signal?.aborted) {
      throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
    }
    const r = await inFlight.get(i)!;
    inFlight.delete(i);
    await consume(r, i);
  }
}

export { TarFileWriter as TarWriter } from './tar-writer.js';
