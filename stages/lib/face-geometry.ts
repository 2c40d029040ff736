// Pixel geometry of the face study: letterboxing (scale the longer side to `size`, keep the
// aspect ratio, pad with black) and where boxes land; face crops with a margin; and the
// detector's cell targets (which cell of a cell_size grid holds a face's centre, and where).

import type { Box } from './face-rows.js';

export type Padding = 'bottom-right' | 'centre';

export interface LetterboxGeometry {
  size: number;
  /** size / max(width, height). */
  scale: number;
  /** The resized picture before padding. */
  resizedWidth: number;
  resizedHeight: number;
  /** [left, top, right, bottom] black padding; left + resizedWidth + right = size. */
  pad: [number, number, number, number];
}

export function letterboxGeometry(width: number, height: number, size: number, padding: Padding): LetterboxGeometry {
  if (!(width > 0 && height > 0)) throw new Error(`letterbox: image size ${width}x${height} is not positive`);
  const scale = size / Math.max(width, height);
  // The longer side is exactly `size`; the shorter one rounds to the nearest pixel.
  const resizedWidth = width >= height ? size : Math.min(size, Math.max(1, Math.round(width * scale)));
  const resizedHeight = height >= width ? size : Math.min(size, Math.max(1, Math.round(height * scale)));
  const padX = size - resizedWidth;
  const padY = size - resizedHeight;
  const left = padding === 'centre' ? Math.floor(padX / 2) : 0;
  const top = padding === 'centre' ? Math.floor(padY / 2) : 0;
  return { size, scale, resizedWidth, resizedHeight, pad: [left, top, padX - left, padY - top] };
}

/** A box of the original image in letterboxed pixels: scaled, then shifted by the padding. */
export function letterboxBox(box: Box, g: LetterboxGeometry): Box {
  const [left, top] = g.pad;
  return [box[0] * g.scale + left, box[1] * g.scale + top, box[2] * g.scale + left, box[3] * g.scale + top];
}

export interface CropRect {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * The region cut for a face: the box (0-based, inclusive) grown by `margin` times its width and
 * height on every side, rounded outwards to whole pixels and clipped to the image.
 */
export function cropRect(box: Box, margin: number, width: number, height: number): CropRect {
  const [x1, y1, x2, y2] = box;
  const bw = x2 - x1 + 1;
  const bh = y2 - y1 + 1;
  const left = Math.max(0, Math.floor(x1 - margin * bw));
  const top = Math.max(0, Math.floor(y1 - margin * bh));
  const right = Math.min(width, Math.ceil(x2 + 1 + margin * bw)); // exclusive
  const bottom = Math.min(height, Math.ceil(y2 + 1 + margin * bh));
  if (right <= left || bottom <= top) {
    throw new Error(`crop: box [${box.join(', ')}] does not overlap the ${width}x${height} image`);
  }
  return { left, top, width: right - left, height: bottom - top };
}

export interface CellTarget {
  cell_row: number;
  cell_col: number;
  /** Centre offset inside its cell, 0 (top/left edge) to <1. */
  offset_y: number;
  offset_x: number;
  /** Box size in cells. */
  h_cells: number;
  w_cells: number;
}

/**
 * The grid cell holding a box's centre, for a square image of `imageSize` split into
 * `cellSize` cells (the last row/column may be partial). Centre = ((x1+x2)/2, (y1+y2)/2),
 * box size = x2 - x1 by y2 - y1; a centre on the far edge belongs to the last cell.
 */
export function cellTarget(box: Box, imageSize: number, cellSize: number): CellTarget {
  const cells = Math.max(1, Math.ceil(imageSize / cellSize));
  const cx = (box[0] + box[2]) / 2 / cellSize;
  const cy = (box[1] + box[3]) / 2 / cellSize;
  const col = Math.min(cells - 1, Math.max(0, Math.floor(cx)));
  const row = Math.min(cells - 1, Math.max(0, Math.floor(cy)));
  const clamp = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v);
  return {
    cell_row: row,
    cell_col: col,
    offset_y: clamp(cy - row),
    offset_x: clamp(cx - col),
    h_cells: (box[3] - box[1]) / cellSize,
    w_cells: (box[2] - box[0]) / cellSize,
  };
}
