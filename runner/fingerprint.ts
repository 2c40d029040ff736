// What goes into a stage's cache key, and why each part is there.
import { canonicalJson, sha256, type CacheKey, type CodeDigest, type FileDigest, type TreeDigest } from '../artifacts/digest.js';
import type { StatCache } from '../artifacts/stat-cache.js';
import { codeDigest } from './code-digest.js';
import type { StageInstance } from './config.js';
import { relative, sep } from 'node:path';

/** Bump when the meaning of a key changes, so old manifests are never mistaken for new ones. */
export const KEY_FORMAT = 1;

export interface KeyFields {
  /** Key format version (see KEY_FORMAT). */
  format: number;
  /** Stage type name: two types with equal settings must not share results. */
  type: string;
  /** Source of the type's module and the project modules it imports: editing evaluate must not retrain. */
  code: CodeDigest;
  /** The stage's own settings after defaults, paths project-relative, volatile ones (backend) left out. */
  settings: Record<string, unknown>;
  /** Output digests (not keys) of needed stages by name: a rerun with identical bytes changes nothing downstream (early cutoff). */
  upstream: Record<string, TreeDigest>;
  /** Content digests of external input files and directories, by project-relative path. */
  inputs: Record<string, FileDigest | TreeDigest>;
}

export function keyOf(fields: KeyFields): CacheKey {
  return sha256(canonicalJson(fields)) as CacheKey;
}

export async function keyFields(
  inst: StageInstance,
  upstream: Record<string, TreeDigest>,
  statCache: StatCache,
  projectRoot: string,
  signal?: AbortSignal,
): Promise<KeyFields> {
  const inputs: Record<string, FileDigest | TreeDigest> = {};
  for (const path of inst.type.externalInputs?.(inst.settings as never) ?? []) {
    const d = await statCache.digestInput(path, signal);
    inputs[relative(projectRoot, path).split(sep).join('/') || '.'] = d.digest;
  }
  return {
    format: KEY_FORMAT,
    type: inst.type.name,
    code: codeDigest(inst.type.module),
    settings: inst.keySettings,
    upstream,
    inputs,
  };
}

/** Why a stage would rerun, compared with the fields of the last run of the same experiment and stage. */
export function explainChange(prev: KeyFields | undefined, next: Partial<KeyFields>, willRunUpstream: string[]): string[] {
  if (!prev) return ['new: never ran for this experiment'];
  const reasons: string[] = [];
  if (prev.format !== KEY_FORMAT) reasons.push(`key format changed (${prev.format} → ${KEY_FORMAT})`);
  if (next.type !== undefined && prev.type !== next.type) reasons.push(`stage type changed: ${prev.type} → ${next.type}`);
  if (next.code !== undefined && prev.code !== next.code) reasons.push(`code of stage type \`${next.type}\` changed`);
  if (next.settings) {
    const a = flatten(prev.settings);
    const b = flatten(next.settings);
    for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
      const x = a.get(k);
      const y = b.get(k);
      if (x !== y) reasons.push(`setting ${k}: ${x ?? '(unset)'} → ${y ?? '(unset)'}`);
    }
  }
  if (next.inputs) {
    for (const k of new Set([...Object.keys(prev.inputs), ...Object.keys(next.inputs)])) {
      if (!(k in prev.inputs)) reasons.push(`input added: ${k}`);
      else if (!(k in next.inputs)) reasons.push(`input removed: ${k}`);
      else if (prev.inputs[k] !== next.inputs[k]) reasons.push(`input changed: ${k}`);
    }
  }
  for (const u of willRunUpstream) reasons.push(`upstream \`${u}\` will run (this stage may still be cut off if its output is unchanged)`);
  if (next.upstream) {
    for (const k of new Set([...Object.keys(prev.upstream), ...Object.keys(next.upstream)])) {
      if (prev.upstream[k] !== next.upstream[k]) reasons.push(`upstream \`${k}\` output changed`);
    }
  }
  return reasons;
}

function flatten(v: unknown, prefix = '', out = new Map<string, string>()): Map<string, string> {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix ? `${prefix}.${k}` : k, out);
    if (Object.keys(v).length === 0 && prefix) out.set(prefix, '{}');
  } else if (prefix) {
    out.set(prefix, JSON.stringify(v));
  }
  return out;
}
