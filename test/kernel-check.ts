// What the kernel tests share: seeded inputs and the error metric they compare with.
import assert from 'node:assert/strict';
import { mulberry32 } from '../stages/lib/random.js';

/** Uniform values in [-1, 1) from a seeded PRNG; with `levels`, quantised to that many values (for ties). */
export function randArray(n: number, seed: number, levels?: number): Float32Array {
  const r = mulberry32(seed);
  return Float32Array.from({ length: n }, () => {
    const u = r() * 2 - 1;
    return levels ? Math.round(u * levels) / levels : u;
  });
}

export const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** max |ours - ref| / max(1, max |ref|); NaN anywhere counts as infinite. */
export function err(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  assert.equal(ours.length, ref.length, 'length');
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(ours[i]! - ref[i]!));
    scale = Math.max(scale, Math.abs(ref[i]!));
  }
  return Number.isNaN(diff) ? Infinity : diff / scale;
}
