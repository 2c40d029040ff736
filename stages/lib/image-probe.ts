// Cheap image checks for big datasets: the size from the header and a quick integrity test,
// without decoding any pixels. JPEG: SOI, marker segments up to the frame header (SOF), and
// the EOI marker at the end; PNG: signature, IHDR and IEND. Other formats fall back to sharp's
// header reader (loaded only then). A damaged file is reported, never thrown.

export type ImageProblem = 'missing' | 'corrupt' | 'truncated';

export interface ProbeResult {
  /** 'jpeg', 'png', or what sharp called it; null when nothing could be recognised. */
  format: string | null;
  /** Pixel size from the header; null when the header could not be read. */
  width: number | null;
  height: number | null;
  /** null: header and end marker look fine. */
  problem: Exclude<ImageProblem, 'missing'> | null;
  /** What is wrong, for logs (empty when nothing is). */
  detail: string;
}

const ok = (format: string, width: number, height: number): ProbeResult => ({ format, width, height, problem: null, detail: '' });

/** Length without trailing zero bytes (some writers pad files to a block size after EOI/IEND). */
function trimmedLength(buf: Uint8Array): number {
  let n = buf.length;
  while (n > 0 && buf[n - 1] === 0) n--;
  return n;
}

// SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
function isSof(m: number): boolean {
  return m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
}

/** Parse a JPEG's header for its size and check that it ends with EOI. */
export function probeJpeg(buf: Uint8Array): ProbeResult {
  const bad = (problem: 'corrupt' | 'truncated', detail: string, w: number | null = null, h: number | null = null): ProbeResult =>
    ({ format: 'jpeg', width: w, height: h, problem, detail });
  if (buf.length < 4 || buf[0] !== 0xff || buf[1] !== 0xd8) {
    return { format: null, width: null, height: null, problem: 'corrupt', detail: 'no JPEG start-of-image marker (FF D8)' };
  }
  let pos = 2;
  let width: number | null = null;
  let height: number | null = null;
  while (width === null) {
    // Markers may be preceded by any number of FF fill bytes.
    if (pos >= buf.length) return bad('truncated', `file ends at byte ${pos} inside the header, before the frame header (SOF)`);
    if (buf[pos] !== 0xff) return bad('corrupt', `expected a marker at byte ${pos}, found 0x${buf[pos]!.toString(16).padStart(2, '0')}`);
    while (pos < buf.length && buf[pos] === 0xff) pos++;
    if (pos >= buf.length) return bad('truncated', 'file ends inside the header');
    const marker = buf[pos++]!;
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue; // no length field
    if (marker === 0xd9 || marker === 0xda) return bad('corrupt', `${marker === 0xd9 ? 'end-of-image' : 'start-of-scan'} marker before any frame header (SOF)`);
    if (pos + 2 > buf.length) return bad('truncated', 'file ends inside a segment length');
    const len = (buf[pos]! << 8) | buf[pos + 1]!;
    if (len < 2) return bad('corrupt', `segment FF${marker.toString(16).toUpperCase()} at byte ${pos - 2} has an impossible length ${len}`);
    if (isSof(marker)) {
      if (len < 8) return bad('corrupt', `frame header at byte ${pos - 2} is too short (${len} bytes)`);
      if (pos + 7 > buf.length) return bad('truncated', 'file ends inside the frame header');
      height = (buf[pos + 3]! << 8) | buf[pos + 4]!;
      width = (buf[pos + 5]! << 8) | buf[pos + 6]!;
      if (width === 0 || height === 0) return bad('corrupt', `frame header gives a ${width}x${height} image`);
    }
    pos += len;
  }
  const end = trimmedLength(buf);
  if (end < 2 || buf[end - 2] !== 0xff || buf[end - 1] !== 0xd9) {
    return bad('truncated', `no end-of-image marker (FF D9) at the end of the ${buf.length}-byte file`, width, height);
  }
  return ok('jpeg', width, height!);
}

const PNG_SIG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Starts like a JPEG file (SOI marker). */
export const isJpeg = (buf: Uint8Array): boolean => buf.length >= 2 && buf[0] === 0xff && buf[1] === 0xd8;

/** Starts with the PNG signature. */
export const isPng = (buf: Uint8Array): boolean => buf.length >= 8 && PNG_SIG.every((b, i) => buf[i] === b);
const IEND = [0x49, 0x45, 0x4e, 0x44];

/** Parse a PNG's IHDR for its size and check that it ends with an IEND chunk. */
export function probePng(buf: Uint8Array): ProbeResult {
  if (buf.length < 8 || PNG_SIG.some((b, i) => buf[i] !== b)) {
    return { format: null, width: null, height: null, problem: 'corrupt', detail: 'no PNG signature' };
  }
  if (buf.length < 24) return { format: 'png', width: null, height: null, problem: 'truncated', detail: 'file ends before IHDR' };
  if (buf[12] !== 0x49 || buf[13] !== 0x48 || buf[14] !== 0x44 || buf[15] !== 0x52) {
    return { format: 'png', width: null, height: null, problem: 'corrupt', detail: 'first chunk is not IHDR' };
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const width = dv.getUint32(16);
  const height = dv.getUint32(20);
  if (width === 0 || height === 0) return { format: 'png', width, height, problem: 'corrupt', detail: `IHDR gives a ${width}x${height} image` };
  const end = trimmedLength(buf);
  // IEND is the 12-byte chunk 00000000 'IEND' AE426082; the type sits 8 bytes before the end.
  if (end < 12 + 24 || IEND.some((b, i) => buf[end - 8 + i] !== b)) {
    return { format: 'png', width, height, problem: 'truncated', detail: `no IEND chunk at the end of the ${buf.length}-byte file` };
  }
  return ok('png', width, height);
}

/** Size and integrity of one encoded image. Synchronous for JPEG/PNG; other formats ask sharp. */
export async function probeImage(buf: Uint8Array): Promise<ProbeResult> {
  if (isJpeg(buf)) return probeJpeg(buf);
  if (buf.length >= 8 && buf[0] === 0x89 && buf[1] === 0x50) return probePng(buf);
  if (buf.length === 0) return { format: null, width: null, height: null, problem: 'corrupt', detail: 'empty file' };
  try {
    const { default: sharp } = await import('sharp');
    const m = await sharp(buf).metadata();
    if (!m.width || !m.height) throw new Error('no size in header');
    return ok(m.format ?? 'unknown', m.width, m.height);
  } catch (err) {
    const first = Array.from(buf.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
    return { format: null, width: null, height: null, problem: 'corrupt', detail: `not a recognisable image (starts ${first}): ${(err as Error).message}` };
  }
}
