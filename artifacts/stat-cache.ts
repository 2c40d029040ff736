// Remembers file digests keyed by (device, inode, size, mtime ns, ctime ns) so that an
// unchanged multi-GB input is not read again. Like git's racy-clean rule, an entry whose
// mtime falls within TICK of the moment hashing started is not trusted: the file may have
// been written again in the same timestamp tick without any visible stat change.
import { promises as fs, Stats, BigIntStats } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { digestFile, digestTree, type FileDigest, type TreeDigest, type TreeEntry } from './digest.js';

const TICK_NS = 2_000_000_000n; // generous: covers coarse filesystem clocks (FAT: 2 s)

interface Entry {
  dev: string;
  ino: string;
  size: string;
  mtimeNs: string;
  ctimeNs: string;
  digest: FileDigest;
  hashStartNs: string;
}

export interface InputDigest {
  path: string;
  kind: 'file' | 'dir';
  digest: FileDigest | TreeDigest;
}

export class StatCache {
  private entries = new Map<string, Entry>();
  private dirty = new Map<string, Entry>();
  private loaded = false;
  /** Bytes actually read (not served from the cache) during this process: lets tests and benches check. */
  bytesHashed = 0;

  constructor(private readonly file: string) {}

  private async load(): Promise<void> {
    if (this.loaded) return;
    this.loaded = true;
    try {
      const text = await fs.readFile(this.file, 'utf8');
      const obj = JSON.parse(text) as Record<string, Entry>;
      for (const [k, v] of Object.entries(obj)) this.entries.set(k, v);
    } catch {
      // absent or unreadable: start empty (it is only a cache)
    }
  }

  async digestFile(path: string, stat?: BigIntStats, signal?: AbortSignal): Promise<FileDigest> {
    await this.load();
    const st = stat ?? (await fs.stat(path, { bigint: true }));
    const known = this.entries.get(path);
    if (known && sameStat(known, st) && BigInt(known.mtimeNs) + TICK_NS < BigInt(known.hashStartNs)) {
      return known.digest;
    }
    const hashStartNs = BigInt(Date.now()) * 1_000_000n; // wall clock, comparable with mtime
    const digest = await digestFile(path, signal);
    this.bytesHashed += Number(st.size);
    // Re-stat: if the file changed while we read it, do not remember the digest.
    const after = await fs.stat(path, { bigint: true });
    if (sameStat(entryOf(st, digest, hashStartNs), after)) {
      const entry = entryOf(st, digest, hashStartNs);
      this.entries.set(path, entry);
      this.dirty.set(path, entry);
    }
    return digest;
  }

  /** Digest of a file, or of every file under a directory (as a tree). */
  async digestInput(path: string, signal?: AbortSignal): Promise<InputDigest> {
    let st: BigIntStats;
    try {
      st = await fs.stat(path, { bigint: true });
    } catch (err) {
      throw new Error(`input ${path} does not exist (${(err as NodeJS.ErrnoException).code ?? err})`);
    }
    if (st.isDirectory()) {
      const entries: TreeEntry[] = [];
      for (const file of await walkFiles(path)) {
        const fst = await fs.stat(file, { bigint: true });
        entries.push({
          path: relative(path, file).split(sep).join('/'),
          digest: await this.digestFile(file, fst, signal),
          size: Number(fst.size),
          executable: (Number(fst.mode) & 0o111) !== 0,
        });
      }
      return { path, kind: 'dir', digest: digestTree(entries) };
    }
    return { path, kind: 'file', digest: await this.digestFile(path, st, signal) };
  }

  /** Merge our new entries into the file on disk (other processes may have added theirs). */
  async save(): Promise<void> {
    if (this.dirty.size === 0) return;
    let onDisk: Record<string, Entry> = {};
    try {
      onDisk = JSON.parse(await fs.readFile(this.file, 'utf8'));
    } catch {
      /* start fresh */
    }
    for (const [k, v] of this.dirty) onDisk[k] = v;
    const tmp = `${this.file}.${process.pid}.${Date.now()}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(onDisk));
    await fs.rename(tmp, this.file);
    this.dirty.clear();
  }
}

function entryOf(st: BigIntStats, digest: FileDigest, hashStartNs: bigint): Entry {
  return {
    dev: String(st.dev),
    ino: String(st.ino),
    size: String(st.size),
    mtimeNs: String(st.mtimeNs),
    ctimeNs: String(st.ctimeNs),
    digest,
    hashStartNs: String(hashStartNs),
  };
}

function sameStat(e: Entry, st: BigIntStats | Stats): boolean {
  const s = st as BigIntStats;
  return (
    e.dev === String(s.dev) &&
    e.ino === String(s.ino) &&
    e.size === String(s.size) &&
    e.mtimeNs === String(s.mtimeNs) &&
    e.ctimeNs === String(s.ctimeNs)
  );
}

/** All regular files under dir, sorted, following no symlinked directories. */
export async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await fs.readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walkFiles(p)));
    else if (e.isFile()) out.push(p);
    else if (e.isSymbolicLink()) {
      const st = await fs.stat(p).catch(() => null);
      if (st?.isFile()) out.push(p);
    }
  }
  return out;
}
