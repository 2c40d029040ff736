// The grid model's output layout, shared by training (targets), evaluation, `pipe detect`
// and the browser page (decoding). It is written next to every trained model as layout.json,
// so a consumer needs no training settings. No dependencies: this file is served to browsers.
import { nms, type Box } from './boxes.js';

export const GENDERS = 2; // index = IMDB-WIKI gender: 0 female, 1 male
export const AGE_BUCKETS = 7; // (age - 10) // 10: 10-19 … 70-79
export const CHANNELS = 5 + GENDERS + AGE_BUCKETS; // 14
export const GENDER_LABELS = ['female', 'male'];
export const AGE_LABELS = Array.from({ length: AGE_BUCKETS }, (_, i) => `${10 + 10 * i}-${19 + 10 * i}`);

/** Channel offsets within one cell's vector. */
export const CH = { conf: 0, cy: 1, cx: 2, h: 3, w: 4, gender: 5, age: 5 + GENDERS } as const;

export interface GridLayout {
  format: 'pipe-grid-v1';
  /** Square input side in pixels (the letterbox size). */
  inputSize: number;
  /** Pixels per grid cell (2^number of pooling blocks). */
  stride: number;
  /** Grid side in cells for inputSize. */
  grid: number;
  channels: number;
  /** How raw outputs become values (see decodeCell). */
  box: { sqrtWh: boolean; relative: boolean; maxCells: number };
  classActivation: 'relu_softmax' | 'softmax';
  /** Input pixels are RGB, scaled by this factor (1/255), letterboxed with this padding. */
  input: { scale: number; padding: 'bottom-right' | 'centre'; channelsOrder: 'RGB' };
  genderLabels: string[];
  ageLabels: string[];
}

export function makeLayout(o: { inputSize: number; blocks: number; sqrtWh: boolean; relative: boolean; classActivation?: 'relu_softmax' | 'softmax'; padding?: 'bottom-right' | 'centre' }): GridLayout {
  const stride = 2 ** o.blocks;
  return {
    format: 'pipe-grid-v1',
    inputSize: o.inputSize,
    stride,
    grid: gridSize(o.inputSize, o.blocks),
    channels: CHANNELS,
    box: { sqrtWh: o.sqrtWh, relative: o.relative, maxCells: 1000 },
    classActivation: o.classActivation ?? 'relu_softmax',
    input: { scale: 1 / 255, padding: o.padding ?? 'bottom-right', channelsOrder: 'RGB' },
    genderLabels: GENDER_LABELS,
    ageLabels: AGE_LABELS,
  };
}

/** Output side after `blocks` 2x2 max-pools with SAME padding. */
export function gridSize(inputSize: number, blocks: number): number {
  let s = inputSize;
  for (let i = 0; i < blocks; i++) s = Math.ceil(s / 2);
  return s;
}

export interface FaceTruth {
  box: Box; // letterboxed pixels
  gender: number; // 0/1
  ageBucket: number; // 0..6
}

/**
 * Training targets for one image: a [grid*grid*CHANNELS] vector. In a face's cell: conf 1,
 * centre offsets in the cell (0-1), size in the layout's units (after sqrt when sqrtWh),
 * one-hot gender and age. Several faces per image are supported; when two faces fall in one
 * cell, the larger one owns it (the other cannot be represented by a one-box-per-cell grid).
 */
export function buildTargets(faces: FaceTruth[], layout: GridLayout, inputSize = layout.inputSize): Float32Array {
  const grid = gridSizeFor(layout, inputSize);
  const t = new Float32Array(grid * grid * CHANNELS);
  const owner = new Float32Array(grid * grid); // area of the face owning each cell
  for (const f of faces) {
    const [x1, y1, x2, y2] = f.box;
    const w = x2 - x1;
    const h = y2 - y1;
    if (!(w > 0 && h > 0)) continue;
    const cx = (x1 + x2) / 2;
    const cy = (y1 + y2) / 2;
    const col = Math.min(grid - 1, Math.max(0, Math.floor(cx / layout.stride)));
    const row = Math.min(grid - 1, Math.max(0, Math.floor(cy / layout.stride)));
    const cell = row * grid + col;
    if (owner[cell]! >= w * h) continue;
    owner[cell] = w * h;
    const o = cell * CHANNELS;
    t.fill(0, o, o + CHANNELS);
    t[o + CH.conf] = 1;
    t[o + CH.cy] = cy / layout.stride - row;
    t[o + CH.cx] = cx / layout.stride - col;
    t[o + CH.h] = sizeTarget(h, layout, inputSize);
    t[o + CH.w] = sizeTarget(w, layout, inputSize);
    t[o + CH.gender + f.gender] = 1;
    t[o + CH.age + f.ageBucket] = 1;
  }
  return t;
}

export function gridSizeFor(layout: GridLayout, inputSize: number): number {
  return Math.ceil(inputSize / layout.stride);
}

/** Size in pixels → the value the network regresses. */
export function sizeTarget(pixels: number, layout: GridLayout, inputSize: number): number {
  const unit = layout.box.relative ? pixels / inputSize : pixels / layout.stride;
  return layout.box.sqrtWh ? Math.sqrt(unit) : unit;
}

/** Regressed value (after its activation) → size in pixels. */
export function sizeFromValue(v: number, layout: GridLayout, inputSize: number): number {
  const unit = layout.box.sqrtWh ? v * v : v;
  return layout.box.relative ? unit * inputSize : unit * layout.stride;
}

export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** Size activation: sigmoid (relative boxes, 0-1) or exp clipped to [0, maxCells]. */
export function sizeActivation(x: number, layout: GridLayout): number {
  return layout.box.relative ? sigmoid(x) : Math.min(Math.exp(Math.min(x, 50)), layout.box.maxCells);
}

export function softmax(xs: number[], relu: boolean): number[] {
  const v = relu ? xs.map((x) => Math.max(0, x)) : xs;
  const m = Math.max(...v);
  const e = v.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

export interface Detection {
  box: Box; // in input (letterboxed) pixels
  confidence: number;
  gender: number;
  genderProbs: number[];
  ageBucket: number;
  ageProbs: number[];
  cell: [number, number]; // row, col
}

/** All cells of one image's raw output [grid*grid*CHANNELS] as detections (before thresholding). */
export function decodeCells(raw: ArrayLike<number>, layout: GridLayout, inputSize = layout.inputSize): Detection[] {
  const grid = gridSizeFor(layout, inputSize);
  const out: Detection[] = [];
  const relu = layout.classActivation === 'relu_softmax';
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const o = (row * grid + col) * CHANNELS;
      const cy = (row + sigmoid(raw[o + CH.cy]!)) * layout.stride;
      const cx = (col + sigmoid(raw[o + CH.cx]!)) * layout.stride;
      const h = sizeFromValue(sizeActivation(raw[o + CH.h]!, layout), layout, inputSize);
      const w = sizeFromValue(sizeActivation(raw[o + CH.w]!, layout), layout, inputSize);
      const genderProbs = softmax(Array.from({ length: GENDERS }, (_, i) => raw[o + CH.gender + i]!), relu);
      const ageProbs = softmax(Array.from({ length: AGE_BUCKETS }, (_, i) => raw[o + CH.age + i]!), relu);
      out.push({
        box: [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
        confidence: sigmoid(raw[o + CH.conf]!),
        gender: argmax(genderProbs),
        genderProbs,
        ageBucket: argmax(ageProbs),
        ageProbs,
        cell: [row, col],
      });
    }
  }
  return out;
}

/** The seed's detection rule: confidence > threshold, then NMS at nmsIou. */
export function detect(raw: ArrayLike<number>, layout: GridLayout, opts: { threshold?: number; nmsIou?: number; inputSize?: number } = {}): Detection[] {
  const cells = decodeCells(raw, layout, opts.inputSize ?? layout.inputSize);
  return nms(cells.filter((d) => d.confidence > (opts.threshold ?? 0.7)), opts.nmsIou ?? 0.2);
}

export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/**
 * Letterbox geometry for browsers and `pipe detect`: the same numbers as the letterbox stage's
 * (stages/lib/face-geometry.ts, checked equal by a test): longer side exactly `size`, the
 * shorter rounded, black padding bottom-right or split evenly.
 */
export function letterboxGeometry(width: number, height: number, size: number, padding: 'bottom-right' | 'centre') {
  const scale = size / Math.max(width, height);
  const w = width >= height ? size : Math.min(size, Math.max(1, Math.round(width * scale)));
  const h = height >= width ? size : Math.min(size, Math.max(1, Math.round(height * scale)));
  const padX = padding === 'centre' ? Math.floor((size - w) / 2) : 0;
  const padY = padding === 'centre' ? Math.floor((size - h) / 2) : 0;
  return { scale, width: w, height: h, padX, padY };
}
