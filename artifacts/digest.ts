// Digests get their own branded string types so that a file's content digest can never be
// passed where a cache key or a tree digest is expected (the compiler refuses it).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

declare const brand: unique symbol;
type Branded<T, B extends string> = T & { readonly [brand]: B };

/** sha256 (hex) of one file's bytes. */
export type FileDigest = Branded<string, 'FileDigest'>;
/** sha256 of a directory tree listing (relative path, mode, file digest). */
export type TreeDigest = Branded<string, 'TreeDigest'>;
/** sha256 of a stage's key fields: names a manifest in the run-cache. */
export type CacheKey = Branded<string, 'CacheKey'>;
/** sha256 of a stage type's module source and the project modules it imports. */
export type CodeDigest = Branded<string, 'CodeDigest'>;

export function sha256(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function digestBytes(data: string | Uint8Array): FileDigest {
  return sha256(data) as FileDigest;
}

export async function digestFile(path: string, signal?: AbortSignal): Promise<FileDigest> {
  const hash = createHash('sha256');
  // 1 MiB reads: large enough that syscalls do not dominate on multi-GB inputs.
  const stream = createReadStream(path, { highWaterMark: 1 << 20, signal });
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex') as FileDigest;
}

export interface TreeEntry {
  path: string; // posix, relative to the tree root
  digest: FileDigest;
  size: number;
  executable: boolean;
}

export function digestTree(entries: readonly TreeEntry[]): TreeDigest {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const lines = sorted.map((e) => `${e.executable ? 'x' : '-'} ${e.digest} ${e.path}`);
  return sha256(lines.join('\n')) as TreeDigest;
}

/** JSON with object keys sorted at every level: equal values always give equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return value;
}
