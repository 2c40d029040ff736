// Plans and runs experiments. Each (experiment, stage) node waits for the nodes it needs,
// computes its key from their output digests, and then either reuses a manifest or
// produces one. Equal keys anywhere in a sweep share one producer (in this process through
// a promise map, across processes through the store's per-key lock).
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import PQueue from 'p-queue';
import { sha256, canonicalJson, type CacheKey } from '../artifacts/digest.js';
import { atomicWrite, removeTree, type Manifest, type Store } from '../artifacts/store.js';
import type { Experiment, StageInstance } from './config.js';
import type { RunEvents, StageStatus } from './events.js';
import { explainChange, keyFields, keyOf, type KeyFields } from './fingerprint.js';
import { defaultCapacity, ResourcePool, type Capacity } from './resources.js';
import type { StageContext, StageResources } from './stage-type.js';

export interface NodeResult {
  experiment: string;
  stage: string;
  status: StageStatus;
  key: CacheKey | null;
  manifest?: Manifest;
  error?: string;
  seconds: number;
  /** Skipped because the experiment's `requires:` data is absent (not a failure). */
  unavailable?: boolean;
}

export interface RunOptions {
  store: Store;
  projectRoot: string;
  events: RunEvents;
  jobs: number;
  /** Stage names to rerun even when cached. */
  force?: ReadonlySet<string>;
  signal: AbortSignal;
  capacity?: Capacity;
}

interface Produced {
  ok: boolean;
  ran: boolean;
  manifest?: Manifest;
  error?: string;
  by: string; // experiment that produced (or found) it
}

const nodeId = (experiment: string, stage: string) => `${experiment}\u0000${stage}`;

export async function runExperiments(experiments: Experiment[], opts: RunOptions): Promise<NodeResult[]> {
  const { store, events, signal } = opts;
  const started = performance.now();
  const queue = new PQueue({ concurrency: Math.max(1, opts.jobs) });
  const pool = new ResourcePool(opts.capacity ?? defaultCapacity());
  const producing = new Map<CacheKey, Promise<Produced>>();
  const nodes = new Map<string, Promise<NodeResult>>();
  await store.sweepTmp();
  events.emit({
    type: 'run-start',
    experiments: experiments.map((e) => e.name),
    stages: experiments.reduce((n, e) => n + e.order.length, 0),
  });

  const produce = async (exp: Experiment, inst: StageInstance, key: CacheKey, fields: KeyFields, ups: NodeResult[]): Promise<Produced> => {
    const forced = opts.force?.has(inst.name) ?? false;
    if (!forced) {
      const m = await store.readManifest(key);
      if (m) return { ok: true, ran: false, manifest: m, by: exp.name };
    }
    const resources = resolveResources(inst);
    return (await queue.add(async (): Promise<Produced> => {
      const release = await pool.acquire(resources);
      try {
        signal.throwIfAborted();
        const unlock = await store.lock(key, signal, (holder) =>
          events.emit({ type: 'stage-wait', experiment: exp.name, stage: inst.name, key, holder: `pid ${holder.pid} on ${holder.host}` }),
        );
        try {
          // Another process may have produced it while we waited for the lock.
          if (!forced) {
            const m = await store.readManifest(key);
            if (m) return { ok: true, ran: false, manifest: m, by: exp.name };
          }
          return await execute(exp, inst, key, fields, ups);
        } finally {
          await unlock();
        }
      } catch (err) {
        return { ok: false, ran: false, error: errorText(err), by: exp.name };
      } finally {
        release();
      }
    })) as Produced;
  };

  const execute = async (exp: Experiment, inst: StageInstance, key: CacheKey, fields: KeyFields, ups: NodeResult[]): Promise<Produced> => {
    events.emit({ type: 'stage-start', experiment: exp.name, stage: inst.name, key });
    const work = await store.makeWorkDir(inst.name);
    const stateDir = join(store.root, 'state', key);
    await fs.mkdir(stateDir, { recursive: true });
    const outDir = join(work, 'out');
    const logLines: string[] = [];
    const startedAt = new Date();
    const t0 = performance.now();
    let lastProgress = 0;
    const inputs: Record<string, string> = {};
    inst.needs.forEach((n, i) => (inputs[n] = store.treePath(ups[i]!.manifest!.outputs.tree)));
    const ctx: StageContext = {
      settings: structuredClone(inst.settings),
      experiment: exp.name,
      stageName: inst.name,
      inputs,
      outDir,
      scratchDir: join(work, 'scratch'),
      stateDir,
      projectRoot: opts.projectRoot,
      signal,
      fileDigest: (path: string) => store.statCache.digestFile(path, undefined, signal),
      log: (line: string) => {
        for (const l of String(line).split('\n')) {
          logLines.push(l);
          events.emit({ type: 'stage-log', experiment: exp.name, stage: inst.name, line: l });
        }
      },
      progress: (done: number, total?: number, unit?: string) => {
        const now = performance.now();
        // Throttled: displays need ~10 updates a second, not one per item.
        if (now - lastProgress < 100 && done !== total) return;
        lastProgress = now;
        events.emit({ type: 'stage-progress', experiment: exp.name, stage: inst.name, done, total, unit });
      },
    };
    try {
      const returned = await inst.type.run(ctx);
      signal.throwIfAborted();
      let metrics: Record<string, unknown> = {};
      try {
        metrics = JSON.parse(await fs.readFile(join(outDir, 'metrics.json'), 'utf8'));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`metrics.json is not valid JSON: ${errorText(err)}`);
      }
      if (returned && typeof returned === 'object') metrics = { ...metrics, ...returned };
      const manifest = await store.publish(outDir, logLines.join('\n'), {
        key,
        stage: inst.name,
        type: inst.type.name,
        experiment: exp.name,
        keyFields: fields as unknown as Record<string, unknown>,
        volatile: inst.volatile,
        metrics,
        startedAt: startedAt.toISOString(),
        seconds: (performance.now() - t0) / 1000,
      });
      await removeTree(stateDir);
      await fs.unlink(join(store.root, 'failed', `${key}.log`)).catch(() => {}); // an earlier failure is history now
      return { ok: true, ran: true, manifest, by: exp.name };
    } catch (err) {
      const message = signal.aborted ? 'aborted' : errorText(err);
      // Keep the failed attempt's log for `pipe show`; it is not a result.
      const failedDir = join(store.root, 'failed');
      await fs.mkdir(failedDir, { recursive: true });
      await atomicWrite(join(failedDir, `${key}.log`), `${logLines.join('\n')}\nerror: ${message}\n`).catch(() => {});
      return { ok: false, ran: false, error: message, by: exp.name };
    } finally {
      await store.removeWorkDir(work);
    }
  };

  const processNode = async (exp: Experiment, inst: StageInstance): Promise<NodeResult> => {
    const ups = await Promise.all(inst.needs.map((n) => nodes.get(nodeId(exp.name, n))!));
    // Timed from when its inputs are ready: a stage's seconds exclude waiting for upstream.
    const t0 = performance.now();
    const finish = (r: Omit<NodeResult, 'experiment' | 'stage' | 'seconds'>, sharedWith?: string): NodeResult => {
      const ran = r.status === 'ran' && r.manifest;
      const result = { experiment: exp.name, stage: inst.name, seconds: ran ? r.manifest!.seconds : (performance.now() - t0) / 1000, ...r };
      events.emit({
        type: 'stage-end',
        experiment: exp.name,
        stage: inst.name,
        key: r.key,
        status: r.status,
        seconds: result.seconds,
        outputs: r.manifest ? store.treePath(r.manifest.outputs.tree) : undefined,
        error: r.error,
        sharedWith,
      });
      return result;
    };
    if (exp.unavailable.length) {
      return finish({ status: 'skipped', key: null, unavailable: true, error: `experiment requires ${exp.unavailable.join(', ')}, which is absent here` });
    }
    const blocked = ups.find((u) => u.status === 'failed' || u.status === 'skipped');
    if (blocked || signal.aborted) {
      return finish({ status: 'skipped', key: null, error: blocked ? `needs \`${blocked.stage}\`, which ${blocked.status === 'failed' ? 'failed' : 'was skipped'}` : 'aborted' });
    }
    let fields: KeyFields;
    try {
      const upstream = Object.fromEntries(inst.needs.map((n, i) => [n, ups[i]!.manifest!.outputs.tree]));
      fields = await keyFields(inst, upstream, store.statCache, opts.projectRoot, signal);
    } catch (err) {
      return finish({ status: 'failed', key: null, error: errorText(err) });
    }
    const key = keyOf(fields);
    let producer = producing.get(key);
    const mine = !producer;
    if (!producer) {
      producer = produce(exp, inst, key, fields, ups);
      producing.set(key, producer);
    }
    const p = await producer;
    if (!p.ok) return finish({ status: 'failed', key, error: mine ? p.error : `${p.error} (in experiment ${p.by})` });
    const ref = await store.readRef(exp.name, inst.name);
    if (ref?.key !== key) await store.writeRef(exp.name, inst.name, key);
    return finish({ status: mine && p.ran ? 'ran' : 'cached', key, manifest: p.manifest }, !mine && p.ran ? p.by : undefined);
  };

  for (const exp of experiments) {
    for (const name of exp.order) {
      const inst = exp.stages.get(name)!;
      nodes.set(nodeId(exp.name, name), processNode(exp, inst));
    }
  }
  const results = await Promise.all(nodes.values());
  await store.statCache.save().catch(() => {});
  const count = (s: StageStatus) => results.filter((r) => r.status === s).length;
  events.emit({
    type: 'run-end',
    ran: count('ran'),
    cached: count('cached'),
    failed: count('failed'),
    skipped: count('skipped'),
    seconds: (performance.now() - started) / 1000,
    aborted: signal.aborted,
  });
  return results;
}

function resolveResources(inst: StageInstance): StageResources {
  const r = inst.type.resources;
  return typeof r === 'function' ? r(inst.settings as never) : (r ?? {});
}

export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

// ---------------------------------------------------------------------------------------
// Plan: what would run and why, without running anything.

export interface PlanEntry {
  experiment: string;
  stage: string;
  action: 'run' | 'cached';
  /** Known only when every upstream stage is cached. */
  key: CacheKey | null;
  reasons: string[];
  manifest?: Manifest;
  /** The experiment's `requires:` data is absent: it cannot run here. */
  unavailable?: boolean;
}

export async function planExperiments(
  experiments: Experiment[],
  store: Store,
  projectRoot: string,
  force?: ReadonlySet<string>,
): Promise<PlanEntry[]> {
  const entries = new Map<string, PlanEntry & { prospective: string }>();
  const firstByProspective = new Map<string, string>();
  const out: PlanEntry[] = [];
  for (const exp of experiments) {
    for (const name of exp.order) {
      const inst = exp.stages.get(name)!;
      const ups = inst.needs.map((n) => entries.get(nodeId(exp.name, n))!);
      const pending = ups.filter((u) => !u.manifest);
      const ref = await store.readRef(exp.name, name);
      const prev = ref ? ((await readManifestFields(store, ref.key)) as KeyFields | undefined) : undefined;
      let entry: PlanEntry & { prospective: string };
      // Everything but the upstream digests, computed once per node.
      let base: KeyFields | undefined;
      let problem: string | undefined;
      if (exp.unavailable.length) problem = `cannot run here: the experiment requires ${exp.unavailable.join(', ')} (absent)`;
      else {
        try {
          base = await keyFields(inst, {}, store.statCache, projectRoot);
        } catch (err) {
          problem = `cannot compute its key: ${errorText(err)}`;
        }
      }
      if (!base) {
        entry = { experiment: exp.name, stage: name, action: 'run', key: null, reasons: [problem!], prospective: `${exp.name}\u0000${name}`, ...(exp.unavailable.length ? { unavailable: true } : {}) };
      } else if (pending.length === 0) {
        const fields: KeyFields = { ...base, upstream: Object.fromEntries(inst.needs.map((n, i) => [n, ups[i]!.manifest!.outputs.tree])) };
        const key = keyOf(fields);
        const manifest = force?.has(name) ? undefined : await store.readManifest(key);
        let reasons: string[] = [];
        if (!manifest) {
          reasons = explainChange(prev, fields, []);
          if (force?.has(name)) reasons.unshift('forced with --force');
          if (reasons.length === 0) reasons.push('output missing from the store (removed by gc or by hand)');
        }
        entry = { experiment: exp.name, stage: name, action: manifest ? 'cached' : 'run', key, reasons, manifest, prospective: key };
      } else {
        const reasons = explainChange(prev, { ...base, upstream: undefined }, pending.map((u) => u.stage));
        const prospective = sha256(canonicalJson({ ...base, upstream: ups.map((u) => u.prospective) }));
        entry = { experiment: exp.name, stage: name, action: 'run', key: null, reasons, prospective };
      }
      if (entry.action === 'run') {
        const first = firstByProspective.get(entry.prospective);
        if (first) {
          entry.action = 'cached';
          entry.reasons = [`computed once, by experiment \`${first}\``];
        } else firstByProspective.set(entry.prospective, exp.name);
      }
      entries.set(nodeId(exp.name, name), entry);
      const { prospective: _p, ...pub } = entry;
      out.push(pub);
    }
  }
  await store.statCache.save().catch(() => {});
  return out;
}

async function readManifestFields(store: Store, key: CacheKey): Promise<Record<string, unknown> | undefined> {
  try {
    return (JSON.parse(await fs.readFile(store.manifestPath(key), 'utf8')) as Manifest).keyFields;
  } catch {
    return undefined;
  }
}
