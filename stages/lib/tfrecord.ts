// TFRecord files: a sequence of records, each framed as
//   uint64 LE length | uint32 LE masked CRC32C(length bytes) | payload | uint32 LE masked CRC32C(payload)
// (uncompressed only; TF's GZIP/ZLIB variants are not handled here).

import { crc32c } from '@node-rs/crc32';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';

const HEADER = 12; // length + length CRC
const FOOTER = 4; // payload CRC
const MASK_DELTA = 0xa282ead8;

/** CRC32C as TFRecord stores it: rotated right by 15 bits plus a constant (uint32). */
export function maskedCrc32c(buf: Uint8Array): number {
  const crc = crc32c(buf) >>> 0;
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + MASK_DELTA) >>> 0;
}

export type TFRecordErrorKind = 'length-crc' | 'data-crc' | 'truncated';

export class TFRecordError extends Error {
  readonly file: string;
  /** 0-based index of the record the problem is in. */
  readonly recordIndex: number;
  /** Byte offset in the file where that record starts. */
  readonly offset: number;
  readonly kind: TFRecordErrorKind;
  constructor(file: string, recordIndex: number, offset: number, kind: TFRecordErrorKind, detail: string) {
    super(`${file}: record ${recordIndex} at byte offset ${offset}: ${detail}`);
    this.name = 'TFRecordError';
    this.file = file;
    this.recordIndex = recordIndex;
    this.offset = offset;
    this.kind = kind;
  }
}

/** One record with its framing, ready to append to a TFRecord file. */
export function frameRecord(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER + payload.length + FOOTER);
  out.writeBigUInt64LE(BigInt(payload.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  out.set(payload, HEADER);
  out.writeUInt32LE(maskedCrc32c(payload), HEADER + payload.length);
  return out;
}

const hex = (n: number) => '0x' + n.toString(16).padStart(8, '0');

/**
 * Check a 12-byte header and return the payload length. `remaining` is how many bytes of the
 * file follow the header; a length that cannot fit is reported as truncation instead of being
 * allocated (a corrupt length could otherwise ask for petabytes when CRCs are not verified).
 */
function parseHeader(
  header: Buffer,
  verify: boolean,
  remaining: number,
  file: string,
  index: number,
  offset: number,
): number {
  if (verify) {
    const stored = header.readUInt32LE(8);
    const computed = maskedCrc32c(header.subarray(0, 8));
    if (stored !== computed) {
      throw new TFRecordError(
        file, index, offset, 'length-crc',
        `length CRC mismatch (stored ${hex(stored)}, computed ${hex(computed)}): the length field or its CRC is corrupt`,
      );
    }
  }
  const len = header.readBigUInt64LE(0);
  if (len + BigInt(FOOTER) > BigInt(remaining)) {
    throw new TFRecordError(
      file, index, offset, 'truncated',
      `file is truncated: record says ${len} payload bytes but only ${remaining} bytes follow its header (need ${len + BigInt(FOOTER)})`,
    );
  }
  return Number(len);
}

function checkPayload(payload: Uint8Array, stored: number, file: string, index: number, offset: number): void {
  const computed = maskedCrc32c(payload);
  if (stored !== computed) {
    throw new TFRecordError(
      file, index, offset, 'data-crc',
      `data CRC mismatch (stored ${hex(stored)}, computed ${hex(computed)}): the ${payload.length}-byte payload or its CRC is corrupt`,
    );
  }
}

export interface ReadTFRecordsOptions {
  /** Check both CRCs of every record (default true). */
  verify?: boolean;
  /** Stop between records when aborted (throws the signal's reason). */
  signal?: AbortSignal;
}

/**
 * Parse a whole TFRecord file held in memory. Returned records are views into `buf` (no copy).
 * `file` is only used in error messages.
 */
export function parseTFRecords(buf: Buffer, file = '<buffer>', opts: { verify?: boolean } = {}): Buffer[] {
  const verify = opts.verify ?? true;
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const index = out.length;
    if (buf.length - pos < HEADER) {
      throw new TFRecordError(
        file, index, pos, 'truncated',
        `file is truncated: ${buf.length - pos} bytes left, a record header needs ${HEADER}`,
      );
    }
    const len = parseHeader(buf.subarray(pos, pos + HEADER), verify, buf.length - pos - HEADER, file, index, pos);
    const payload = buf.subarray(pos + HEADER, pos + HEADER + len);
    if (verify) checkPayload(payload, buf.readUInt32LE(pos + HEADER + len), file, index, pos);
    out.push(payload);
    pos += HEADER + len + FOOTER;
  }
  return out;
}

/** Read a whole (small) TFRecord file synchronously; records are views into one file buffer. */
export function readAllTFRecords(path: string, opts: { verify?: boolean } = {}): Buffer[] {
  return parseTFRecords(fs.readFileSync(path), path, opts);
}

const READ_CHUNK = 1 << 16;

/**
 * Stream the records of a TFRecord file. Memory stays at one read buffer plus the record being
 * yielded; each yielded Buffer is a fresh copy the caller may keep. Throws TFRecordError on a CRC
 * mismatch or a truncated file, naming the file, record index, byte offset and what failed.
 */
export async function* readTFRecords(path: string, opts: ReadTFRecordsOptions = {}): AsyncGenerator<Buffer> {
  const verify = opts.verify ?? true;
  const signal = opts.signal;
  signal?.throwIfAborted();
  const fh = await fsp.open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const chunk = Buffer.allocUnsafe(READ_CHUNK);
    let chunkStart = 0; // file position of chunk[0]
    let chunkLen = 0; // valid bytes in chunk
    let pos = 0; // file position of the next unread byte

    // Copy exactly `n` bytes at `pos` into `dst` (caller has checked the file is long enough).
    const readInto = async (dst: Buffer, n: number): Promise<void> => {
      let filled = 0;
      while (filled < n) {
        const avail = chunkStart + chunkLen - pos;
        if (avail > 0) {
          const take = Math.min(avail, n - filled);
          const from = pos - chunkStart;
          chunk.copy(dst, filled, from, from + take);
          filled += take;
          pos += take;
          continue;
        }
        const want = n - filled;
        if (want >= READ_CHUNK) {
          // Big payloads go straight into their own buffer rather than through the chunk.
          const { bytesRead } = await fh.read(dst, filled, want, pos);
          if (bytesRead === 0) throw new Error(`${path}: file shrank while being read`);
          filled += bytesRead;
          pos += bytesRead;
        } else {
          const { bytesRead } = await fh.read(chunk, 0, READ_CHUNK, pos);
          if (bytesRead === 0) throw new Error(`${path}: file shrank while being read`);
          chunkStart = pos;
          chunkLen = bytesRead;
        }
      }
    };

    const header = Buffer.allocUnsafe(HEADER);
    const footer = Buffer.allocUnsafe(FOOTER);
    for (let index = 0; pos < size; index++) {
      signal?.throwIfAborted();
      const offset = pos;
      if (size - pos < HEADER) {
        throw new TFRecordError(
          path, index, offset, 'truncated',
          `file is truncated: ${size - pos} bytes left, a record header needs ${HEADER}`,
        );
      }
      await readInto(header, HEADER);
      const len = parseHeader(header, verify, size - pos, path, index, offset);
      const payload = Buffer.allocUnsafe(len);
      await readInto(payload, len);
      await readInto(footer, FOOTER);
      if (verify) checkPayload(payload, footer.readUInt32LE(0), path, index, offset);
      yield payload;
    }
  } finally {
    await fh.close();
  }
}

const FLUSH_AT = 1 << 20;
const MAX_UNWRITTEN = 4 << 20;

/**
 * Appends framed records to a new file (truncating any old one). Records are gathered in memory
 * and written in ~1 MiB batches; `write()` resolves at once while at most 4 MiB is waiting to
 * be written, and otherwise when the batches before it are written, so a producer that awaits it
 * never runs far ahead of the disk but does not wait on every batch either (file writes queue in
 * libuv's pool behind other work). Writes may also be issued without awaiting: their order is
 * kept. `close()` must be awaited to get everything out.
 */
export class TFRecordWriter {
  readonly path: string;
  #fh: fsp.FileHandle;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #unwrittenBytes = 0;
  #chain: Promise<void> = Promise.resolve();
  #error: unknown = undefined;
  #closed = false;
  #records = 0;
  #bytes = 0;

  private constructor(path: string, fh: fsp.FileHandle) {
    this.path = path;
    this.#fh = fh;
  }

  static async open(path: string): Promise<TFRecordWriter> {
    return new TFRecordWriter(path, await fsp.open(path, 'w'));
  }

  /** Records accepted so far. */
  get records(): number {
    return this.#records;
  }

  /** File bytes accepted so far (framing included). */
  get bytes(): number {
    return this.#bytes;
  }

  write(payload: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new Error(`${this.path}: write after close`));
    if (this.#error !== undefined) return Promise.reject(this.#error);
    const framed = frameRecord(payload);
    this.#pending.push(framed);
    this.#pendingBytes += framed.length;
    this.#records++;
    this.#bytes += framed.length;
    if (this.#pendingBytes < FLUSH_AT) return Promise.resolve();
    const written = this.#flush();
    if (this.#unwrittenBytes <= MAX_UNWRITTEN) {
      written.catch(() => {}); // kept in #error: the next write() or close() reports it
      return Promise.resolve();
    }
    return written;
  }

  #flush(): Promise<void> {
    const batch = this.#pending;
    const bytes = this.#pendingBytes;
    this.#pending = [];
    this.#pendingBytes = 0;
    if (batch.length === 0) return this.#chain;
    this.#unwrittenBytes += bytes;
    this.#chain = this.#chain.then(async () => {
      if (this.#error !== undefined) throw this.#error;
      try {
        await writeAll(this.#fh, batch);
      } catch (err) {
        this.#error = new Error(`${this.path}: write failed: ${(err as Error).message}`, { cause: err });
        throw this.#error;
      } finally {
        this.#unwrittenBytes -= bytes;
      }
    });
    return this.#chain;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#flush();
    } finally {
      await this.#fh.close();
    }
  }
}

async function writeAll(fh: fsp.FileHandle, bufs: Buffer[]): Promise<void> {
  // writev may write only part of what it was given; keep going from where it stopped.
  let rest = bufs;
  while (rest.length > 0) {
    let { bytesWritten } = await fh.writev(rest);
    const next: Buffer[] = [];
    for (const b of rest) {
      if (bytesWritten >= b.length) {
        bytesWritten -= b.length;
      } else {
        next.push(bytesWritten > 0 ? b.subarray(bytesWritten) : b);
        bytesWritten = 0;
      }
    }
    rest = next;
  }
}
