// Reading images out of IMDB-WIKI-style sources without ever unpacking them: a tar (optionally
// gzipped) is streamed member by member with tar-stream, so memory holds one member plus what
// the caller keeps in flight, whatever the size of the tar; a directory is walked in sorted order.
// Each source's content digest (sha256 of the tar's bytes; for a directory a digest over its
// sorted (path, file sha256) list) is computed while reading, so rows can carry it and a later
// stage can check that the archive is still the one they were made from.
//
// Each member read from an uncompressed tar also carries the byte offset of its data in the
// file, so a later stage can read just the members it keeps (readLocated below) instead of
// streaming the whole archive again: IMDB-WIKI's tars are 27 GB each and the filter keeps a
// fraction of their images.
//
// A damaged tar (a header that does not parse, a file that ends inside a member) is reported as
// a 'damaged' event naming the member being read, and reading of that source stops there; the
// caller decides whether that is fatal. A source that cannot be opened at all throws.

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { digestFile } from '../../artifacts/digest.js';

export type ArchiveEvent =
  /** A regular file the caller wants, with all of its bytes; `offset` is where those bytes start
   * in the file (an uncompressed tar; null in a gzipped tar or a directory). */
  | { kind: 'member'; name: string; data: Buffer; offset: number | null }
  /** A regular file the caller does not want (its bytes were read past, not kept). */
  | { kind: 'skip'; name: string; size: number }
  /** The source cannot be read any further; `member` is the one being read when it broke. */
  | { kind: 'damaged'; member: string | null; detail: string }
  /** Always last: the source's content digest (null for a tar read with `digest: false`) and its size in bytes. */
  | { kind: 'end'; sha256: string | null; bytes: number };

export interface ReadArchiveOptions {
  /** Which regular files to hand over with their bytes (default: all). */
  want?: (name: string) => boolean;
  signal?: AbortSignal;
  /** Called as bytes of a tar are read (running total), for progress. */
  onBytes?: (bytesSoFar: number) => void;
  /** Hash a tar's bytes as they go by (default true). Callers that get the digest from the
   * runner's content-hash cache (StageContext.fileDigest) switch it off. A directory's digest
   * is always made: walking it reads every file anyway. */
  digest?: boolean;
}

/** Member names as stored in rows: POSIX separators, no leading './'. */
export function normaliseMemberName(name: string): string {
  let n = name.replace(/\\/g, '/');
  while (n.startsWith('./')) n = n.slice(2);
  return n.replace(/^\/+/, '');
}

export async function isDirectory(p: string): Promise<boolean> {
  return (await fsp.stat(p)).isDirectory();
}

/** Stream the files of a tar (.tar, .tar.gz) or a directory. See the module comment. */
export async function* readArchive(source: string, opts: ReadArchiveOptions = {}): AsyncGenerator<ArchiveEvent> {
  let st: fs.Stats;
  try {
    st = await fsp.stat(source);
  } catch (err) {
    throw new Error(`${source}: cannot read image source: ${(err as Error).message}`);
  }
  if (st.isDirectory()) yield* readDirectory(source, opts);
  else yield* readTar(source, st.size, opts);
}

async function isGzip(file: string): Promise<boolean> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    const { bytesRead } = await fh.read(b, 0, 2, 0);
    return bytesRead === 2 && b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

async function* readTar(file: string, size: number, opts: ReadArchiveOptions): AsyncGenerator<ArchiveEvent> {
  const { signal, onBytes } = opts;
  const want = opts.want ?? (() => true);
  signal?.throwIfAborted();
  const tar = await import('tar-stream');
  const gz = await isGzip(file);
  const hash = opts.digest === false ? null : createHash('sha256');
  let bytes = 0;
  let fullyRead = false;
  const rs = fs.createReadStream(file, { highWaterMark: 1 << 20 });
  // The hash sees every chunk as it goes by; pipe() does the back-pressure.
  rs.on('data', (c) => {
    hash?.update(c as Buffer);
    bytes += c.length;
    onBytes?.(bytes);
  });
  rs.on('end', () => (fullyRead = true));
  const extract = tar.extract();
  let upstream: Readable = rs;
  if (gz) {
    const zlib = await import('node:zlib');
    const gunzip = zlib.createGunzip();
    gunzip.on('error', (e) => extract.destroy(new Error(`gzip: ${e.message}`)));
    upstream = rs.pipe(gunzip);
  }
  rs.on('error', (e) => extract.destroy(e));
  upstream.pipe(extract);

  let current: string | null = null;
  let damaged = false;
  try {
    for await (const entry of extract) {
      signal?.throwIfAborted();
      const h = entry.header;
      const name = normaliseMemberName(h.name);
      current = name;
      if ((h.type !== 'file' && h.type !== 'contiguous-file') || !want(name)) {
        // Read past the data (a for-await drains it; resume() would not wait for the end).
        let n = 0;
        for await (const c of entry) n += (c as Buffer).length;
        if (h.type === 'file' || h.type === 'contiguous-file') yield { kind: 'skip', name, size: n };
        current = null;
        continue;
      }
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      current = null;
      // tar-stream records where a member's data starts in the stream it parsed; that is the
      // file offset when nothing was decompressed. readLocated checks the header before it,
      // so a wrong offset can only ever make a member 'missing', never read the wrong bytes.
      const at = (h as { byteOffset?: unknown }).byteOffset;
      const offset = !gz && typeof at === 'number' && at % 512 === 0 ? at : null;
      yield { kind: 'member', name, data: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), offset };
    }
  } catch (err) {
    if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : err;
    const e = err as NodeJS.ErrnoException;
    // I/O errors on the file itself are not a property of the data: fatal.
    if (e.code && e.syscall) throw new Error(`${file}: ${e.message}`);
    damaged = true;
    const detail = /Unexpected end of data/i.test(e.message)
      ? `archive ends ${current ? 'inside this member' : 'inside a header'} (${e.message})`
      : e.message;
    yield { kind: 'damaged', member: current, detail };
  } finally {
    rs.destroy();
  }
  const sha256 = hash === null ? null : fullyRead ? hash.digest('hex') : await digestFile(file);
  if (damaged) onBytes?.(size);
  yield { kind: 'end', sha256, bytes: size };
}

async function listFiles(root: string, rel: string, out: string[], signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  const entries = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
  // Byte order, not locale order: the same tree always lists the same way.
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) await listFiles(root, r, out, signal);
    else if (e.isFile()) out.push(r);
  }
}

async function* readDirectory(dir: string, opts: ReadArchiveOptions): AsyncGenerator<ArchiveEvent> {
  const want = opts.want ?? (() => true);
  const files: string[] = [];
  await listFiles(dir, '', files, opts.signal);
  const lines: string[] = [];
  let bytes = 0;
  for (const rel of files) {
    opts.signal?.throwIfAborted();
    // Every file is read, wanted or not: the digest must cover the whole directory.
    const data = await fsp.readFile(path.join(dir, rel));
    bytes += data.length;
    lines.push(`${createHash('sha256').update(data).digest('hex')} ${rel}`);
    if (want(rel)) yield { kind: 'member', name: rel, data, offset: null };
    else yield { kind: 'skip', name: rel, size: data.length };
  }
  yield { kind: 'end', sha256: createHash('sha256').update(lines.join('\n')).digest('hex'), bytes };
}

// ---------------------------------------------------------------- bounded, ordered parallelism

/**
 * Keeps at most `limit` tasks in flight and hands their results to `consume` strictly in the
 * order they were pushed. `push` waits while the window is full, which is what stops a fast
 * reader from running ahead of the workers (memory stays bounded).
 */
export class OrderedWindow<T> {
  readonly #queue: Array<Promise<T>> = [];
  readonly #limit: number;
  readonly #consume: (value: T) => Promise<void> | void;

  constructor(limit: number, consume: (value: T) => Promise<void> | void) {
    this.#limit = Math.max(1, limit);
    this.#consume = consume;
  }

  get inFlight(): number {
    return this.#queue.length;
  }

  async push(task: Promise<T>): Promise<void> {
    task.catch(() => {}); // a rejection surfaces when its turn comes, not as unhandled
    this.#queue.push(task);
    while (this.#queue.length >= this.#limit) await this.#next();
  }

  async drain(): Promise<void> {
    while (this.#queue.length > 0) await this.#next();
  }

  async #next(): Promise<void> {
    const value = await this.#queue.shift()!;
    await this.#consume(value);
  }
}

// ---------------------------------------------------------------- the wanted images of several sources

export interface WantedSource<G> {
  /** The source as the rows name it (for messages). */
  archive: string;
  /** Where it is on disk. */
  abs: string;
  /** Digest the rows recorded; when set and the source is a tar, it is checked after reading. */
  sha256: string | null;
  /** Member name → what the caller attaches to it (e.g. the rows of that image), in row order. */
  members: Map<string, G>;
  /** Where each member's bytes are in an uncompressed tar (from its `member` event). When every
   * member has one, only those byte ranges are read; otherwise the tar is streamed. */
  locations?: Map<string, MemberLocation>;
}

/** Where a tar member's data is: its byte offset in the file (its 512-byte header is right
 * before it) and its length. */
export interface MemberLocation {
  offset: number;
  size: number;
}

export type WorkResult<R> = { ok: true; value: R } | { ok: false; error: string };

export interface WantedImagesOptions<G, R> {
  /** Tasks in flight at once (several sharp pipelines keep libuv's pool busy). */
  concurrency: number;
  signal?: AbortSignal;
  /** The work on one image (runs off the main thread when it is sharp). A throw is a failed image. */
  work: (data: Buffer, group: G, member: string) => Promise<R>;
  /** Results, in a deterministic order: sources in the given order, members in stream order
   * (for a directory, in `members` order). */
  result: (r: WorkResult<R>, group: G, archive: string, member: string) => Promise<void> | void;
  /** A wanted member that is not in its source; `reason` says so, or that the source broke
   * off before it (a damaged tar, see readArchive). */
  missing: (group: G, archive: string, member: string, reason: string) => void;
  /** A wanted member that the source broke off inside (a tar cut in the middle of its data).
   * Damage that touches no wanted member is not reported: it does not matter here. */
  damaged: (group: G, archive: string, member: string, detail: string) => void;
  /** Bytes read of the current tar source (running total per source), for progress. */
  onBytes?: (archive: string, bytes: number) => void;
  /** The sha256 of a file's bytes; pass StageContext.fileDigest so that an unchanged tar the
   * runner has hashed is not read a second time just to check it. Default: hash the file. */
  fileDigest?: (file: string) => Promise<string>;
}

/**
 * Read each source once and run `work` on every wanted member, `concurrency` at a time, with the
 * results handed over in order. Throws, before reading it, when a tar's digest no longer matches
 * the one recorded.
 */
export async function forEachWantedImage<G, R>(sources: ReadonlyArray<WantedSource<G>>, opts: WantedImagesOptions<G, R>): Promise<void> {
  // Missing and damaged members go through the window too, so every report keeps stream order.
  type Item = { r: WorkResult<R>; group: G; archive: string; member: string; missing?: string; damaged?: string };
  const window = new OrderedWindow<Item>(opts.concurrency, (it) => {
    if (it.missing !== undefined) return opts.missing(it.group, it.archive, it.member, it.missing);
    if (it.damaged !== undefined) return opts.damaged(it.group, it.archive, it.member, it.damaged);
    return opts.result(it.r, it.group, it.archive, it.member);
  });
  const note = (group: G, archive: string, member: string, what: { missing?: string; damaged?: string }) =>
    window.push(Promise.resolve({ r: { ok: false as const, error: '' }, group, archive, member, ...what }));
  const run = (data: Buffer, group: G, archive: string, member: string): Promise<Item> =>
    opts.work(data, group, member).then(
      (value) => ({ r: { ok: true as const, value }, group, archive, member }),
      (err: unknown) => ({ r: { ok: false as const, error: (err as Error)?.message ?? String(err) }, group, archive, member }),
    );
  for (const src of sources) {
    opts.signal?.throwIfAborted();
    const st = await fsp.stat(src.abs).catch((err: Error) => {
      throw new Error(`${src.archive}: cannot read image source: ${err.message}`);
    });
    if (st.isDirectory()) {
      for (const [member, group] of src.members) {
        opts.signal?.throwIfAborted();
        let data: Buffer;
        try {
          data = await fsp.readFile(path.join(src.abs, member));
        } catch (err) {
          await note(group, src.archive, member, { missing: `cannot read it from the directory: ${(err as Error).message}` });
          continue;
        }
        await window.push(run(data, group, src.archive, member));
      }
      continue;
    }
    if (src.sha256) {
      const now = await (opts.fileDigest ?? digestFile)(src.abs);
      if (now !== src.sha256) {
        throw new Error(`${src.archive}: the archive has changed since its rows were made ` +
          `(sha256 recorded ${src.sha256.slice(0, 12)}…, now ${now.slice(0, 12)}…); rerun extract-metadata on it`);
      }
    }
    if (src.locations && [...src.members.keys()].every((m) => src.locations!.has(m)) && !(await isGzip(src.abs))) {
      for await (const m of readLocated(src.abs, src.locations, [...src.members.keys()], opts.signal)) {
        opts.signal?.throwIfAborted();
        const group = src.members.get(m.member)!;
        if (m.data) await window.push(run(m.data, group, src.archive, m.member));
        else await note(group, src.archive, m.member, { missing: m.problem });
      }
      continue;
    }
    const seen = new Set<string>();
    let brokeOff: string | null = null;
    for await (const ev of readArchive(src.abs, { want: (n) => src.members.has(n), signal: opts.signal, digest: false, onBytes: (b) => opts.onBytes?.(src.archive, b) })) {
      if (ev.kind === 'member') {
        if (seen.has(ev.name)) continue; // a repeated member name: the first copy counts
        seen.add(ev.name);
        await window.push(run(ev.data, src.members.get(ev.name)!, src.archive, ev.name));
      } else if (ev.kind === 'damaged') {
        brokeOff = `the archive is damaged${ev.member ? ` at ${ev.member}` : ''} before it (${ev.detail})`;
        const group = ev.member !== null && !seen.has(ev.member) ? src.members.get(ev.member) : undefined;
        if (group !== undefined) {
          seen.add(ev.member!);
          await note(group, src.archive, ev.member!, { damaged: ev.detail });
        }
      }
    }
    for (const [member, group] of src.members) {
      if (!seen.has(member)) await note(group, src.archive, member, { missing: brokeOff ?? 'member not found in the archive' });
    }
  }
  await window.drain();
}

// ---------------------------------------------------------------- members read by location

// Nearby members are read with one call: up to this many bytes at once, across gaps (members
// not wanted) of at most READ_GAP bytes.
const READ_SPAN = 4 << 20;
const READ_GAP = 256 << 10;

export type LocatedMember = { member: string; data: Buffer; problem?: undefined } | { member: string; data?: undefined; problem: string };

/**
 * Read the given members of an uncompressed tar at their recorded locations, in file order.
 * The 512-byte header in front of each is checked (checksum, size, and the name when it fits
 * the header), so a stale or wrong location yields a `problem`, never someone else's bytes.
 */
export async function* readLocated(file: string, locations: ReadonlyMap<string, MemberLocation>, members: readonly string[], signal?: AbortSignal): AsyncGenerator<LocatedMember> {
  const wanted = members.map((member) => ({ member, loc: locations.get(member)! })).sort((a, b) => a.loc.offset - b.loc.offset);
  // Runs of members that lie close together (headers included), each read with one call.
  type Run = { start: number; end: number; members: typeof wanted };
  const runs: Run[] = [];
  for (const w of wanted) {
    const [start, end] = [w.loc.offset - 512, w.loc.offset + w.loc.size];
    const last = runs.at(-1);
    if (last && start - last.end <= READ_GAP && end - last.start <= READ_SPAN) {
      last.end = Math.max(last.end, end);
      last.members.push(w);
    } else {
      runs.push({ start, end, members: [w] });
    }
  }
  const fh = await fsp.open(file, 'r').catch((err: Error) => {
    throw new Error(`${file}: cannot read image source: ${err.message}`);
  });
  const readRun = async ({ start, end }: Run) => {
    const buf = Buffer.allocUnsafe(Math.max(0, end - start));
    const { bytesRead } = start >= 0 ? await fh.read(buf, 0, buf.length, start) : { bytesRead: 0 };
    return { buf, bytesRead };
  };
  // The next run is read while the caller works on this one (file reads wait in libuv's pool
  // behind the caller's image work, so asking early hides that wait).
  let ahead: ReturnType<typeof readRun> | null = null;
  try {
    for (let r = 0; r < runs.length; r++) {
      signal?.throwIfAborted();
      const current = await (ahead ?? readRun(runs[r]!));
      ahead = r + 1 < runs.length ? readRun(runs[r + 1]!) : null;
      ahead?.catch(() => {}); // surfaces when awaited
      const { buf, bytesRead } = current;
      for (const { member, loc } of runs[r]!.members) {
        const at = loc.offset - 512 - runs[r]!.start;
        if (loc.offset < 512 || at + 512 + loc.size > bytesRead) {
          yield { member, problem: `the archive ends before the recorded location of its bytes (offset ${loc.offset}, ${loc.size} bytes)` };
          continue;
        }
        const wrong = tarHeaderMismatch(buf.subarray(at, at + 512), member, loc.size);
        if (wrong) yield { member, problem: `no such member at the recorded offset ${loc.offset}: ${wrong}` };
        else yield { member, data: buf.subarray(at + 512, at + 512 + loc.size) };
      }
    }
  } finally {
    await ahead?.catch(() => {}); // never close the file under a read in flight
    await fh.close();
  }
}

/** Why a ustar header block does not describe `member` of `size` bytes (null when it does). */
export function tarHeaderMismatch(block: Buffer, member: string, size: number): string | null {
  const field = (from: number, len: number) => {
    const raw = block.subarray(from, from + len);
    const nul = raw.indexOf(0);
    return raw.subarray(0, nul < 0 ? len : nul).toString('utf8');
  };
  let sum = 0;
  for (let k = 0; k < 512; k++) sum += k >= 148 && k < 156 ? 0x20 : block[k]!;
  const recorded = parseInt(field(148, 8).trim(), 8);
  if (recorded !== sum) return 'header checksum does not match';
  const type = block[156];
  if (type !== 0x30 && type !== 0 && type !== 0x37) return `header is not a regular file (type ${String.fromCharCode(type!)})`;
  const sizeField = block[124]! & 0x80 ? null : parseInt(field(124, 12).trim() || '0', 8);
  if (sizeField !== null && sizeField !== size) return `header says ${sizeField} bytes, the row says ${size}`;
  // A long name lives in a pax/GNU record before this header; the ustar name is then a stand-in.
  if (Buffer.byteLength(member) <= 100) {
    const prefix = block.subarray(257, 262).toString('latin1') === 'ustar' ? field(345, 155) : '';
    const name = normaliseMemberName(prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
    if (name !== member) return `header names ${JSON.stringify(name)}`;
  }
  return null;
}

export { TarFileWriter } from './tar-writer.js';
