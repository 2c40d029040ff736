// Reading images out of IMDB-WIKI-style sources without ever unpacking them: a tar (optionally
// gzipped) is streamed member by member with tar-stream, so memory holds one member plus what
// the caller keeps in flight, whatever the size of the tar; a directory is walked in sorted order.
// Each source's content digest (sha256 of the tar's bytes; for a directory a digest over its
// sorted (path, file sha256) list) is computed while reading, so rows can carry it and a later
// stage can check that the archive is still the one they were made from.
//
// A damaged tar (a header that does not parse, a file that ends inside a member) is reported as
// a 'damaged' event naming the member being read, and reading of that source stops there; the
// caller decides whether that is fatal. A source that cannot be opened at all throws.

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';

export type ArchiveEvent =
  /** A regular file the caller wants, with all of its bytes. */
  | { kind: 'member'; name: string; data: Buffer }
  /** A regular file the caller does not want (its bytes were read past, not kept). */
  | { kind: 'skip'; name: string; size: number }
  /** The source cannot be read any further; `member` is the one being read when it broke. */
  | { kind: 'damaged'; member: string | null; detail: string }
  /** Always last: the source's content digest and its size in bytes. */
  | { kind: 'end'; sha256: string; bytes: number };

export interface ReadArchiveOptions {
  /** Which regular files to hand over with their bytes (default: all). */
  want?: (name: string) => boolean;
  signal?: AbortSignal;
  /** Called as bytes of a tar are read (running total), for progress. */
  onBytes?: (bytesSoFar: number) => void;
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

async function digestWholeFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function* readTar(file: string, size: number, opts: ReadArchiveOptions): AsyncGenerator<ArchiveEvent> {
  const { signal, onBytes } = opts;
  const want = opts.want ?? (() => true);
  signal?.throwIfAborted();
  const tar = await import('tar-stream');
  const gz = await isGzip(file);
  const hash = createHash('sha256');
  let bytes = 0;
  let fullyRead = false;
  const rs = fs.createReadStream(file, { highWaterMark: 1 << 20 });
  // The hash sees every chunk as it goes by; pipe() does the back-pressure.
  rs.on('data', (c) => {
    hash.update(c as Buffer);
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
      yield { kind: 'member', name, data: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks) };
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
  const sha256 = fullyRead ? hash.digest('hex') : await digestWholeFile(file);
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
    if (want(rel)) yield { kind: 'member', name: rel, data };
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
}

/**
 * Read each source once and run `work` on every wanted member, `concurrency` at a time, with the
 * results handed over in order. Throws when a tar's digest no longer matches the one recorded.
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
    const seen = new Set<string>();
    let brokeOff: string | null = null;
    for await (const ev of readArchive(src.abs, { want: (n) => src.members.has(n), signal: opts.signal, onBytes: (b) => opts.onBytes?.(src.archive, b) })) {
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
      } else if (ev.kind === 'end') {
        if (src.sha256 && ev.sha256 !== src.sha256) {
          throw new Error(`${src.archive}: the archive has changed since its rows were made ` +
            `(sha256 recorded ${src.sha256.slice(0, 12)}…, now ${ev.sha256.slice(0, 12)}…); rerun extract-metadata on it`);
        }
      }
    }
    for (const [member, group] of src.members) {
      if (!seen.has(member)) await note(group, src.archive, member, { missing: brokeOff ?? 'member not found in the archive' });
    }
  }
  await window.drain();
}

export { TarFileWriter } from './tar-writer.js';
