// The content-addressed store. Layout (all under one root, one filesystem, so that
// publishing is a rename):
//   objects/ab/<digest>        file contents, one copy however many artifacts share them
//   trees/<tree digest>/…       an artifact's output directory: read-only hard links into objects/
//   runs/<key>.json             manifest: the commit point of a stage run (written last, atomically)
//   refs/<experiment>/<stage>.json  last key per experiment and stage (what `plan` explains against)
//   tmp/                        work directories of running stages; debris of dead runs is swept
//   locks/<key>.lock            one running producer per key across processes
//   stat-cache.json             digests of external inputs by (dev, ino, size, mtime, ctime)
import { promises as fs, constants as fsc } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  digestBytes,
  digestFile,
  digestTree,
  type CacheKey,
  type FileDigest,
  type TreeDigest,
  type TreeEntry,
} from './digest.js';
import { StatCache, walkFiles } from './stat-cache.js';

export const MANIFEST_VERSION = 1;

export interface Manifest {
  version: number;
  key: CacheKey;
  stage: string;
  type: string;
  /** Experiment whose run produced it (others may share it). */
  experiment: string;
  /** Every field that went into the key, so `plan` can say what changed. */
  keyFields: Record<string, unknown>;
  /** Recorded but not part of the key (e.g. the backend a training ran on). */
  volatile: Record<string, unknown>;
  outputs: { tree: TreeDigest; files: TreeEntry[] };
  metrics: Record<string, unknown>;
  log: FileDigest;
  startedAt: string;
  seconds: number;
  host: string;
  pid: number;
}

export interface Ref {
  key: CacheKey;
  at: string;
}

interface LockInfo {
  pid: number;
  host: string;
  started: string;
}

const HOST = hostname();

export class Store {
  readonly statCache: StatCache;

  private constructor(readonly root: string) {
    this.statCache = new StatCache(join(root, 'stat-cache.json'));
  }

  static async open(root: string): Promise<Store> {
    for (const d of ['objects', 'trees', 'runs', 'refs', 'tmp', 'locks']) {
      await fs.mkdir(join(root, d), { recursive: true });
    }
    return new Store(root);
  }

  manifestPath(key: CacheKey): string {
    return join(this.root, 'runs', `${key}.json`);
  }

  treePath(tree: TreeDigest): string {
    return join(this.root, 'trees', tree);
  }

  objectPath(digest: FileDigest): string {
    return join(this.root, 'objects', digest.slice(0, 2), digest.slice(2));
  }

  async readManifest(key: CacheKey): Promise<Manifest | undefined> {
    try {
      const m = JSON.parse(await fs.readFile(this.manifestPath(key), 'utf8')) as Manifest;
      if (m.version !== MANIFEST_VERSION) return undefined;
      // A manifest is only valid while its tree is present (gc or a hand edit may remove it).
      await fs.access(this.treePath(m.outputs.tree));
      return m;
    } catch {
      return undefined;
    }
  }

  async listManifests(): Promise<Manifest[]> {
    const out: Manifest[] = [];
    for (const f of await fs.readdir(join(this.root, 'runs'))) {
      if (!f.endsWith('.json')) continue;
      try {
        out.push(JSON.parse(await fs.readFile(join(this.root, 'runs', f), 'utf8')));
      } catch {
        /* a torn write cannot happen (rename), but a hand-edited file may not parse */
      }
    }
    return out;
  }

  async readLog(m: Manifest): Promise<string> {
    try {
      return await fs.readFile(this.objectPath(m.log), 'utf8');
    } catch {
      return '';
    }
  }

  // ---- refs: last key per experiment and stage ----

  private refPath(experiment: string, stage: string): string {
    return join(this.root, 'refs', encodeName(experiment), `${encodeName(stage)}.json`);
  }

  async readRef(experiment: string, stage: string): Promise<Ref | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.refPath(experiment, stage), 'utf8'));
    } catch {
      return undefined;
    }
  }

  async writeRef(experiment: string, stage: string, key: CacheKey): Promise<void> {
    const path = this.refPath(experiment, stage);
    await fs.mkdir(dirname(path), { recursive: true });
    await atomicWrite(path, JSON.stringify({ key, at: new Date().toISOString() } satisfies Ref));
  }

  // ---- work directories ----

  /** A fresh work dir for one stage attempt: `out/` is published, `scratch/` is not. */
  async makeWorkDir(label: string): Promise<string> {
    const dir = join(this.root, 'tmp', `${HOST}-${process.pid}-${randomBytes(4).toString('hex')}-${safe(label)}`);
    await fs.mkdir(join(dir, 'out'), { recursive: true });
    await fs.mkdir(join(dir, 'scratch'), { recursive: true });
    return dir;
  }

  async removeWorkDir(dir: string): Promise<void> {
    await removeTree(dir);
  }

  /** Remove work dirs left by processes on this host that no longer run. */
  async sweepTmp(): Promise<number> {
    let swept = 0;
    for (const name of await fs.readdir(join(this.root, 'tmp'))) {
      const m = /^(.*)-(\d+)-[0-9a-f]{8}-/.exec(name);
      if (!m || m[1] !== HOST || isAlive(Number(m[2]))) continue;
      await removeTree(join(this.root, 'tmp', name));
      swept++;
    }
    return swept;
  }

  // ---- publish ----

  /**
   * Hash everything in `outDir`, move the bytes into objects/, make the tree read-only and
   * visible under trees/, then write the manifest. Until the manifest rename nothing is
   * visible as a result: a crash at any earlier point leaves only tmp/ debris.
   */
  async publish(
    outDir: string,
    log: string,
    fields: Omit<Manifest, 'version' | 'outputs' | 'log' | 'host' | 'pid'>,
  ): Promise<Manifest> {
    const files: TreeEntry[] = [];
    for (const file of await walkFiles(outDir)) {
      const st = await fs.lstat(file);
      if (st.isSymbolicLink()) {
        // Outputs must be self-contained bytes: resolve links to copies.
        const target = await fs.readFile(file);
        await fs.unlink(file);
        await fs.writeFile(file, target);
      }
      const digest = await digestFile(file);
      const size = (await fs.stat(file)).size;
      await this.adoptObject(file, digest);
      files.push({
        path: relative(outDir, file).split(sep).join('/'),
        digest,
        size,
        executable: (st.mode & 0o111) !== 0,
      });
    }
    const tree = digestTree(files);
    const treeDir = this.treePath(tree);
    await makeReadOnly(outDir);
    try {
      await fs.rename(outDir, treeDir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'EISDIR') throw err;
      // The same bytes were already published (by an earlier run or another key): keep that one.
      await removeTree(outDir);
    }
    const logDigest = digestBytes(log);
    await this.putObject(log, logDigest);
    const manifest: Manifest = {
      version: MANIFEST_VERSION,
      ...fields,
      outputs: { tree, files },
      log: logDigest,
      host: HOST,
      pid: process.pid,
    };
    await atomicWrite(this.manifestPath(fields.key), JSON.stringify(manifest, null, 1));
    return manifest;
  }

  /** Replace `file` by a hard link to the object with its digest (adding the object if new). */
  private async adoptObject(file: string, digest: FileDigest): Promise<void> {
    const obj = this.objectPath(digest);
    await fs.mkdir(dirname(obj), { recursive: true });
    try {
      await fs.link(file, obj);
      await fs.chmod(obj, 0o444);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      await fs.unlink(file);
      await fs.link(obj, file);
    }
  }

  private async putObject(data: string | Uint8Array, digest: FileDigest): Promise<void> {
    const obj = this.objectPath(digest);
    try {
      await fs.access(obj);
      return;
    } catch {
      /* not there yet */
    }
    await fs.mkdir(dirname(obj), { recursive: true });
    await atomicWrite(obj, data);
    await fs.chmod(obj, 0o444);
  }

  // ---- locks ----

  /**
   * Take the lock of `key`, waiting while a live process holds it. A lock whose holder
   * died (same host, pid gone; or no heartbeat for STALE_MS elsewhere) is taken over.
   * `onWait` is called once if we had to wait.
   */
  async lock(key: CacheKey, signal?: AbortSignal, onWait?: (holder: LockInfo) => void): Promise<() => Promise<void>> {
    const path = join(this.root, 'locks', `${key}.lock`);
    let waited = false;
    for (;;) {
      signal?.throwIfAborted();
      try {
        const fh = await fs.open(path, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY);
        await fh.writeFile(JSON.stringify({ pid: process.pid, host: HOST, started: new Date().toISOString() }));
        await fh.close();
        // Heartbeat so that holders on other hosts can tell we are alive.
        const beat = setInterval(() => {
          const now = new Date();
          fs.utimes(path, now, now).catch(() => {});
        }, HEARTBEAT_MS);
        beat.unref();
        return async () => {
          clearInterval(beat);
          await fs.unlink(path).catch(() => {});
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const holder = await readLock(path);
      if (holder && (await isStale(path, holder))) {
        // Move the stale lock aside under a name only this takeover uses, then retry.
        await fs.rename(path, `${path}.stale-${process.pid}`).then(
          () => fs.unlink(`${path}.stale-${process.pid}`),
          () => {},
        );
        continue;
      }
      if (!waited && holder) {
        waited = true;
        onWait?.(holder);
      }
      await sleep(100, signal);
    }
  }

  // ---- maintenance ----

  /** Re-hash every object; return those whose bytes no longer match their name. */
  async verifyObjects(onProgress?: (done: number, total: number) => void): Promise<FileDigest[]> {
    const bad: FileDigest[] = [];
    const objectsDir = join(this.root, 'objects');
    const all: string[] = [];
    for (const prefix of await fs.readdir(objectsDir)) {
      for (const rest of await fs.readdir(join(objectsDir, prefix))) all.push(prefix + rest);
    }
    let done = 0;
    for (const name of all) {
      const digest = name as FileDigest;
      const actual = await digestFile(this.objectPath(digest));
      if (actual !== digest) bad.push(digest);
      onProgress?.(++done, all.length);
    }
    return bad;
  }

  /** Delete manifests not in `keep`, then trees and objects no remaining manifest uses. */
  async gc(keep: Set<string>, dryRun: boolean): Promise<{ manifests: string[]; trees: number; objects: number; bytes: number }> {
    const manifests = await this.listManifests();
    const removedKeys: string[] = [];
    const liveTrees = new Set<string>();
    const liveObjects = new Set<string>();
    for (const m of manifests) {
      if (keep.has(m.key)) {
        liveTrees.add(m.outputs.tree);
        liveObjects.add(m.log);
        for (const f of m.outputs.files) liveObjects.add(f.digest);
      } else {
        removedKeys.push(m.key);
      }
    }
    let trees = 0;
    let objects = 0;
    let bytes = 0;
    if (!dryRun) for (const k of removedKeys) await fs.unlink(this.manifestPath(k as CacheKey)).catch(() => {});
    for (const t of await fs.readdir(join(this.root, 'trees'))) {
      if (liveTrees.has(t)) continue;
      trees++;
      if (!dryRun) await removeTree(join(this.root, 'trees', t));
    }
    const objectsDir = join(this.root, 'objects');
    for (const prefix of await fs.readdir(objectsDir)) {
      for (const rest of await fs.readdir(join(objectsDir, prefix))) {
        if (liveObjects.has(prefix + rest)) continue;
        const p = join(objectsDir, prefix, rest);
        bytes += (await fs.stat(p)).size;
        objects++;
        if (!dryRun) await fs.unlink(p);
      }
    }
    return { manifests: removedKeys, trees, objects, bytes };
  }
}

const HEARTBEAT_MS = 10_000;
const STALE_MS = 60_000;

async function readLock(path: string): Promise<LockInfo | undefined> {
  try {
    return JSON.parse(await fs.readFile(path, 'utf8'));
  } catch {
    return undefined; // being written or just removed: look again shortly
  }
}

async function isStale(path: string, holder: LockInfo): Promise<boolean> {
  if (holder.host === HOST) return !isAlive(holder.pid);
  try {
    const st = await fs.stat(path);
    return Date.now() - st.mtimeMs > STALE_MS;
  } catch {
    return false;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

export async function atomicWrite(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await fs.writeFile(tmp, data);
  await fs.rename(tmp, path);
}

async function makeReadOnly(dir: string): Promise<void> {
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await makeReadOnly(p);
    else await fs.chmod(p, 0o444);
  }
  await fs.chmod(dir, 0o555);
}

/** rm -rf that also works on the read-only trees we publish. */
export async function removeTree(path: string): Promise<void> {
  const st = await fs.lstat(path).catch(() => null);
  if (!st) return;
  if (st.isDirectory()) {
    await fs.chmod(path, 0o755).catch(() => {});
    for (const e of await fs.readdir(path)) await removeTree(join(path, e));
    await fs.rmdir(path).catch(async () => fs.rm(path, { recursive: true, force: true }));
  } else {
    await fs.unlink(path).catch(() => {});
  }
}

/** File-system safe, reversible name for experiments and stages (matrix names contain '=' and ','). */
export function encodeName(name: string): string {
  return name.replace(/[^A-Za-z0-9._=,@+-]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function safe(label: string): string {
  return label.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 40);
}
