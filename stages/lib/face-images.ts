// The pixel work of the face-study stages, all done by sharp (libvips) off the main thread:
// letterboxing, face crops, and re-encoding. Every output is 3-channel sRGB (grey images are
// expanded, alpha is flattened onto black) without metadata, so the same input gives the same
// bytes. sharp is imported on first use, not when this module loads.

import type { CropRect, LetterboxGeometry } from './face-geometry.js';
import { isJpeg } from './image-probe.js';

export type OutputFormat = 'jpeg' | 'png';

type Sharp = typeof import('sharp');
let sharpModule: Sharp | undefined;

export async function loadSharp(): Promise<Sharp> {
  if (!sharpModule) {
    sharpModule = (await import('sharp')).default;
    // These stages stream thousands of distinct images: libvips' operation cache can never hit,
    // it only holds up to 50 MB of dead results and costs a lookup per operation.
    sharpModule.cache(false);
    // One libvips thread per pipeline; the parallelism comes from running several pipelines
    // at once (bin/pipe.js sizes libuv's pool to the cores). On 2 cores this measured 10-20%
    // faster than libvips' default of one thread per core inside every pipeline.
    sharpModule.concurrency(1);
  }
  return sharpModule;
}

// No Huffman-table optimisation: at quality 95 on 250x250 images it measured about half the
// encode CPU (0.6 vs 1.1 ms an image, where decode + resize is ~3.3 ms) for files ~6% larger.
function encode(img: import('sharp').Sharp, format: OutputFormat, quality: number): Promise<Buffer> {
  return format === 'png' ? img.png({ compressionLevel: 6 }).toBuffer() : img.jpeg({ quality, optimiseCoding: false }).toBuffer();
}

/**
 * Resize to the geometry's inner size and pad with black to size×size.
 *
 * A JPEG with the padding at the bottom and right (the seed's layout) is done in one libvips
 * pipeline: the resized image is AND-ed with a size×size image of 255s, and libvips widens the
 * smaller operand of a binary operation with zero pixels along the bottom and right, which is
 * exactly the padding; AND with 255 leaves every 8-bit pixel as it was. Measured on the 2-core
 * machine, that is ~0.2 ms an image cheaper than two pipelines (a second one costs ~0.35 ms of
 * fixed overhead), and the pixels are identical (test/face-images.test.ts). sharp's own
 * extend()/contain paths cost more than both (each evaluates extra images for the background).
 * Other inputs (PNG, possibly 16-bit, where AND with 255 would cut pixels) and centred padding
 * take two pipelines: resize to raw pixels, copy them into a black canvas, encode.
 */
export async function letterboxImage(data: Buffer, g: LetterboxGeometry, format: OutputFormat, quality: number): Promise<Buffer> {
  const sharp = await loadSharp();
  const [left, top] = g.pad;
  // A JPEG (as libjpeg decodes it) is 8 bits a sample, so AND 255 leaves every value as it is.
  if (left === 0 && top === 0 && isJpeg(data)) {
    const img = sharp(data)
      .resize(g.resizedWidth, g.resizedHeight, { fit: 'fill' })
      .flatten({ background: '#000000' })
      .boolean(paddingMask(g.size), 'and', { raw: { width: g.size, height: g.size, channels: 3 } })
      .toColourspace('srgb');
    return encode(img, format, quality);
  }
  const { data: px, info } = await sharp(data)
    .resize(g.resizedWidth, g.resizedHeight, { fit: 'fill' })
    .flatten({ background: '#000000' })
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== g.resizedWidth || info.height !== g.resizedHeight) {
    throw new Error(`resize gave ${info.width}x${info.height}x${info.channels}, expected ${g.resizedWidth}x${g.resizedHeight}x3`);
  }
  const canvas = takeCanvas(g.size * g.size * 3);
  try {
    const rowBytes = info.width * 3;
    for (let y = 0; y < info.height; y++) px.copy(canvas, ((y + top) * g.size + left) * 3, y * rowBytes, (y + 1) * rowBytes);
    return await encode(sharp(canvas, { raw: { width: g.size, height: g.size, channels: 3 } }), format, quality);
  } finally {
    giveCanvas(canvas);
  }
}

// One size×size×3 image of 255s per output size, made once and never written to.
const paddingMasks = new Map<number, Buffer>();

function paddingMask(size: number): Buffer {
  let m = paddingMasks.get(size);
  if (!m) paddingMasks.set(size, (m = Buffer.alloc(size * size * 3, 255)));
  return m;
}

// Black canvases are reused once their encode is done: thousands of fresh 190 KB buffers a
// minute only feed the garbage collector. A few dozen are kept at most.
const canvases = new Map<number, Buffer[]>();

function takeCanvas(bytes: number): Buffer {
  const c = canvases.get(bytes)?.pop();
  return c ? c.fill(0) : Buffer.alloc(bytes);
}

function giveCanvas(c: Buffer): void {
  let list = canvases.get(c.length);
  if (!list) canvases.set(c.length, (list = []));
  if (list.length < 32) list.push(c);
}

/** Cut `rect` out of the image and resize it to size×size. */
export async function cropImage(data: Buffer, rect: CropRect, size: number, format: OutputFormat, quality: number): Promise<Buffer> {
  const sharp = await loadSharp();
  const img = sharp(data)
    .extract(rect)
    .resize(size, size, { fit: 'fill' })
    .flatten({ background: '#000000' })
    .toColourspace('srgb');
  return encode(img, format, quality);
}

/** Decode to raw H×W×3 RGB. */
export async function decodeRgb(data: Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const sharp = await loadSharp();
  const { data: px, info } = await sharp(data).flatten({ background: '#000000' }).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
  return { data: px, width: info.width, height: info.height };
}

/** Re-encode an image as JPEG or PNG. */
export async function reencode(data: Buffer, format: OutputFormat, quality: number): Promise<Buffer> {
  const sharp = await loadSharp();
  return encode(sharp(data).flatten({ background: '#000000' }).toColourspace('srgb'), format, quality);
}
