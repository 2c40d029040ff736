// `pipe` command line: parses arguments and wires config → executor → reporters. It holds
// no logic of its own beyond presentation.
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Store } from '../artifacts/store.js';
import { loadExperiments, type Experiment } from '../runner/config.js';
import { DiagnosticError } from '../runner/diagnostics.js';
import { RunEvents } from '../runner/events.js';
import { planExperiments, runExperiments, type PlanEntry } from '../runner/executor.js';
import { stageRegistry } from '../stages/index.js';
import { jsonReporter, plainReporter, ttyReporter } from './reporters.js';
import { compareExperiments, printCompareTable } from './compare.js';
import { UsageError } from './errors.js';

export { UsageError };

const HELP = `pipe — declarative, reproducible ML experiments

usage: pipe <command> [files or globs…] [options]

commands:
  run [files…]            run experiments (default: experiments/*.yaml)
      --jobs N              stages at once (default: number of cores)
      --store DIR           store directory (default: $PIPE_STORE or <project>/.pipe)
      --force STAGE         rerun STAGE even if cached (repeatable)
      --set path=value      override a setting, e.g. train.steps=10 (repeatable)
      --json                JSON lines: one per stage, then a summary
      --dry-run             same as \`pipe plan\`
      --verbose             stream stage logs
  plan [files…]           what would run and why (--json, --set, --force)
  dag [files…]            print the stage graph (--format mermaid|dot)
  show FILE [STAGE]       key, outputs, metrics and log of cached stages (--json, --experiment NAME)
  compare [files…]        metrics side by side with the settings that differ (--json;
                            --html FILE also writes a self-contained HTML report)
  gc [files…]             remove artifacts the given experiment files do not reach (--dry-run)
  verify                  re-hash the store and report artifacts whose bytes changed
  detect --experiment FILE IMAGES… --out DIR
                          run the experiment's cached grid model on JPEG/PNG files or folders
                          (--stage NAME, --threshold 0.7); writes annotated images + detections.json
  types                   list stage types and their settings
  serve --experiment FILE live face/gender/age detection on the webcam in a browser (--stage NAME, --port N, --host H)
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP);
    return command ? 0 : 2;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      jobs: { type: 'string', short: 'j' },
      store: { type: 'string' },
      force: { type: 'string', multiple: true },
      set: { type: 'string', multiple: true },
      json: { type: 'boolean' },
      'dry-run': { type: 'boolean' },
      verbose: { type: 'boolean', short: 'v' },
      format: { type: 'string' },
      experiment: { type: 'string' },
      stage: { type: 'string' },
      threshold: { type: 'string' },
      html: { type: 'string' },
      out: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const projectRoot = findProjectRoot(process.cwd());
  const storeDir = resolve(values.store ?? process.env.PIPE_STORE ?? join(projectRoot, '.pipe'));
  const registry = stageRegistry();
  const load = (files: string[]): Experiment[] =>
    loadExperiments(expandFiles(files.length ? files : defaultFiles(projectRoot)), { registry, projectRoot, cliSets: values.set });
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const force = new Set(values.force ?? []);

  switch (command) {
    case 'run': {
      const experiments = load(positionals);
      for (const f of force) {
        if (!experiments.some((e) => e.stages.has(f))) throw new UsageError(`--force ${f}: no such stage in the given experiments`);
      }
      const store = await Store.open(storeDir);
      if (values['dry-run']) return printPlan(await planExperiments(experiments, store, projectRoot, force), !!values.json);
      const events = new RunEvents();
      if (values.json) jsonReporter(events, out);
      else if (process.stderr.isTTY && !process.env.CI) ttyReporter(events, process.stderr, { verbose: !!values.verbose });
      else plainReporter(events, (l) => process.stderr.write(`${l}\n`), { verbose: !!values.verbose });
      const controller = new AbortController();
      let interrupts = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        // First Ctrl-C: stop stages and clean up. Second: leave now (the store stays consistent
        // either way: nothing is visible before its manifest is written).
        if (++interrupts > 1) process.exit(130);
        process.stderr.write(`\n${sig}: stopping running stages…\n`);
        controller.abort(new Error(`interrupted by ${sig}`));
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const jobs = values.jobs ? Number(values.jobs) : undefined;
      if (jobs !== undefined && !(jobs >= 1)) throw new UsageError(`--jobs must be a positive number, got ${values.jobs}`);
      const results = await runExperiments(experiments, {
        store,
        projectRoot,
        events,
        jobs: jobs ?? (await import('node:os')).cpus().length,
        force,
        signal: controller.signal,
      });
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      if (!values.json) printReportHints(experiments, results, storeDir);
      if (controller.signal.aborted) return 130;
      const unavailable = [...new Set(results.filter((r) => r.unavailable).map((r) => r.experiment))];
      for (const name of unavailable) {
        process.stderr.write(`not run: ${name} requires ${experiments.find((e) => e.name === name)!.unavailable.join(', ')} (absent; see the README)\n`);
      }
      return results.some((r) => r.status === 'failed' || (r.status === 'skipped' && !r.unavailable)) ? 1 : 0;
    }
    case 'plan': {
      const experiments = load(positionals);
      const store = await Store.open(storeDir);
      return printPlan(await planExperiments(experiments, store, projectRoot, force), !!values.json);
    }
    case 'dag': {
      const experiments = load(positionals);
      out(renderDag(experiments, values.format ?? 'mermaid'));
      return 0;
    }
    case 'show': {
      if (positionals.length === 0) throw new UsageError('usage: pipe show FILE [STAGE] [--json]');
      const [file, stageName] = positionals;
      let experiments = load([file!]);
      if (values.experiment) experiments = experiments.filter((e) => e.name === values.experiment);
      if (experiments.length === 0) throw new UsageError(`no experiment named ${values.experiment} in ${file}`);
      const store = await Store.open(storeDir);
      const plan = await planExperiments(experiments, store, projectRoot);
      const wanted = plan.filter((p) => !stageName || p.stage === stageName);
      if (stageName && wanted.length === 0) {
        const names = [...experiments[0]!.stages.keys()];
        throw new UsageError(`no stage \`${stageName}\` in ${file}; stages: ${names.join(', ')}`);
      }
      let missing = 0;
      for (const p of wanted) {
        if (!p.manifest) {
          missing++;
          const msg = `${p.experiment}/${p.stage}: not cached for the current settings; build it with: pipe run ${file}`;
          // A failed attempt keeps its log (never a result): point at it.
          const failedLog = p.key ? join(store.root, 'failed', `${p.key}.log`) : undefined;
          const failed = failedLog && existsSync(failedLog) ? failedLog : undefined;
          if (values.json) out(JSON.stringify({ experiment: p.experiment, stage: p.stage, key: null, error: msg, ...(failed ? { failed_log: failed } : {}) }));
          else {
            out(msg);
            if (failed) out(`  the last attempt failed; its log (${failed}):\n    ${(await fs.readFile(failed, 'utf8')).trimEnd().split('\n').slice(-15).join('\n    ')}`);
          }
          continue;
        }
        const m = p.manifest;
        const tree = store.treePath(m.outputs.tree);
        const outputs = Object.fromEntries(m.outputs.files.map((f) => [f.path, join(tree, f.path)]));
        if (values.json) {
          out(JSON.stringify({ experiment: p.experiment, stage: p.stage, key: m.key, outputs, metrics: m.metrics, dir: tree, seconds: m.seconds, volatile: m.volatile }));
        } else {
          out(`${p.experiment}/${p.stage}`);
          out(`  key      ${m.key}`);
          out(`  ran      ${m.startedAt} for ${m.seconds.toFixed(2)}s (experiment ${m.experiment})`);
          out(`  outputs  ${tree}`);
          for (const f of m.outputs.files) out(`           ${f.path}  (${f.size} bytes)`);
          if (Object.keys(m.metrics).length) out(`  metrics  ${JSON.stringify(m.metrics).slice(0, 2000)}`);
          if (Object.keys(m.volatile).length) out(`  recorded ${JSON.stringify(m.volatile)}`);
          const log = await store.readLog(m);
          if (log.trim()) out(`  log\n    ${log.trimEnd().split('\n').join('\n    ')}`);
        }
      }
      return missing ? 1 : 0;
    }
    case 'compare': {
      const experiments = load(positionals);
      const store = await Store.open(storeDir);
      const rows = await compareExperiments(experiments, store, projectRoot);
      if (values.json) for (const r of rows) out(JSON.stringify({ experiment: r.experiment, settings: r.settings, metrics: r.metrics, ...(r.missing.length ? { missing: r.missing } : {}) }));
      else printCompareTable(rows, out);
      if (values.html) {
        // Loaded only when asked for: the CLI stays quick to start.
        const { writeHtmlReport } = await import('./report-html.js');
        const target = resolve(values.html);
        await writeHtmlReport(rows, target);
        process.stderr.write(`report written to ${target}\n`);
      }
      return 0;
    }
    case 'gc': {
      const experiments = load(positionals);
      const store = await Store.open(storeDir);
      const plan = await planExperiments(experiments, store, projectRoot);
      const keep = new Set(plan.filter((p) => p.manifest).map((p) => p.key as string));
      const r = await store.gc(keep, !!values['dry-run']);
      const verb = values['dry-run'] ? 'would remove' : 'removed';
      out(`${verb} ${r.manifests.length} artifacts (${r.trees} output trees, ${r.objects} objects, ${(r.bytes / 2 ** 20).toFixed(1)} MiB); kept ${keep.size} reached by ${experiments.length} experiments`);
      for (const k of r.manifests) out(`  ${k}`);
      return 0;
    }
    case 'verify': {
      const store = await Store.open(storeDir);
      const bad = await verifyStore(store);
      if (values.json) out(JSON.stringify({ ok: bad.length === 0, bad }));
      else if (bad.length === 0) out('store verified: every artifact matches its digests');
      else for (const b of bad) out(`CORRUPT ${b.experiment}/${b.stage} key ${b.key}: ${b.file} (${b.problem})`);
      return bad.length ? 1 : 0;
    }
    case 'serve': {
      const { serveCommand } = await import('./serve.js');
      const file = positionals[0] ?? values.experiment;
      return serveCommand({ file, name: positionals[0] ? values.experiment : undefined, stage: values.stage, port: values.port, host: values.host, load, openStore: () => Store.open(storeDir), projectRoot, out });
    }
    case 'detect': {
      if (!values.experiment || !values.out || positionals.length === 0) {
        throw new UsageError('usage: pipe detect --experiment FILE [--stage NAME] IMAGES… --out DIR');
      }
      const store = await Store.open(storeDir);
      const { findGridModel } = await import('./model-artifact.js');
      const { detectImages, listImages } = await import('./detect.js');
      const model = await findGridModel(load([values.experiment]), values.experiment, store, projectRoot, values.stage);
      const images = await listImages(positionals);
      const results = await detectImages({
        model,
        images,
        outDir: resolve(values.out),
        threshold: values.threshold ? Number(values.threshold) : 0.7,
        nmsIou: 0.2,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      out(`${results.length} images, ${results.reduce((n, r) => n + r.detections.length, 0)} faces: ${join(resolve(values.out), 'detections.json')}`);
      return 0;
    }
    case 'types': {
      for (const t of registry.values()) {
        out(`${t.name} — ${t.description}`);
        const props = (t.schema.properties ?? {}) as Record<string, { type?: string; default?: unknown; description?: string }>;
        for (const [k, p] of Object.entries(props)) {
          out(`    ${k}${p.type ? ` (${p.type})` : ''}${p.default !== undefined ? ` = ${JSON.stringify(p.default)}` : ''}${p.description ? `  ${p.description}` : ''}`);
        }
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown command \`${command}\`\n\n${HELP}`);
  }
}


function printPlan(plan: PlanEntry[], json: boolean): number {
  const out = (line: string) => process.stdout.write(`${line}\n`);
  for (const p of plan) {
    if (json) out(JSON.stringify({ type: 'stage', experiment: p.experiment, stage: p.stage, key: p.key, action: p.action, reasons: p.reasons, ...(p.unavailable ? { unavailable: true } : {}) }));
    else {
      out(`${p.action === 'run' ? 'run   ' : 'cached'} ${p.experiment}/${p.stage}`);
      for (const r of p.reasons) out(`         ${r}`);
    }
  }
  const unavailable = plan.filter((p) => p.unavailable).length;
  const run = plan.filter((p) => p.action === 'run' && !p.unavailable).length;
  const cached = plan.filter((p) => p.action === 'cached').length;
  if (json) out(JSON.stringify({ type: 'summary', run, cached, ...(unavailable ? { unavailable } : {}) }));
  else out(`${run} to run, ${cached} cached${unavailable ? `, ${unavailable} unavailable (their experiments' required data is absent)` : ''}`);
  return 0;
}

function printReportHints(experiments: Experiment[], results: { experiment: string; stage: string; status: string; manifest?: { outputs: { tree: string; files: { path: string }[] } } }[], storeDir: string): void {
  // Point at the reports so the user knows where to look after a run.
  const withReports = results.filter((r) => (r.status === 'ran' || r.status === 'cached') && r.manifest?.outputs.files.some((f) => f.path === 'report.json'));
  for (const r of withReports) {
    process.stderr.write(`report: ${r.experiment}/${r.stage}: ${join(storeDir, 'trees', r.manifest!.outputs.tree, 'report.json')}\n`);
  }
  if (withReports.length) {
    const files = [...new Set(withReports.map((r) => experiments.find((e) => e.name === r.experiment)!.file))].map((f) => relative(process.cwd(), f) || f);
    process.stderr.write(`see them side by side: pipe compare ${files.join(' ')} --html report.html\n`);
  }
}

async function verifyStore(store: Store) {
  const badObjects = new Set<string>(await store.verifyObjects());
  const problems: { experiment: string; stage: string; key: string; file: string; problem: string }[] = [];
  const { digestFile } = await import('../artifacts/digest.js');
  for (const m of await store.listManifests()) {
    const tree = store.treePath(m.outputs.tree);
    for (const f of m.outputs.files) {
      const p = join(tree, f.path);
      const st = await fs.stat(p).catch(() => null);
      if (!st) {
        problems.push({ experiment: m.experiment, stage: m.stage, key: m.key, file: p, problem: 'missing' });
        continue;
      }
      if (badObjects.has(f.digest)) {
        problems.push({ experiment: m.experiment, stage: m.stage, key: m.key, file: p, problem: 'bytes no longer match their digest' });
        continue;
      }
      const obj = await fs.stat(store.objectPath(f.digest)).catch(() => null);
      // A file replaced by a new inode does not change the object: hash the file itself.
      if (!obj || obj.ino !== st.ino) {
        if ((await digestFile(p)) !== f.digest) problems.push({ experiment: m.experiment, stage: m.stage, key: m.key, file: p, problem: 'bytes no longer match their digest' });
      }
    }
  }
  return problems;
}

function renderDag(experiments: Experiment[], format: string): string {
  const id = (e: string, s: string) => `${e}__${s}`.replace(/[^A-Za-z0-9_]/g, '_');
  const lines: string[] = [];
  if (format === 'dot') {
    lines.push('digraph pipe {', '  rankdir=LR;');
    for (const e of experiments) {
      lines.push(`  subgraph "cluster_${id(e.name, '')}" {`, `    label="${e.name}";`);
      for (const s of e.order) lines.push(`    ${id(e.name, s)} [label="${s}\\n(${e.stages.get(s)!.type.name})"];`);
      lines.push('  }');
      for (const s of e.order) for (const n of e.stages.get(s)!.needs) lines.push(`  ${id(e.name, n)} -> ${id(e.name, s)};`);
    }
    lines.push('}');
  } else if (format === 'mermaid') {
    lines.push('flowchart LR');
    for (const e of experiments) {
      lines.push(`  subgraph ${id(e.name, '')}["${e.name}"]`);
      for (const s of e.order) lines.push(`    ${id(e.name, s)}["${s}<br/>${e.stages.get(s)!.type.name}"]`);
      lines.push('  end');
      for (const s of e.order) for (const n of e.stages.get(s)!.needs) lines.push(`  ${id(e.name, n)} --> ${id(e.name, s)}`);
    }
  } else throw new UsageError(`--format must be mermaid or dot, got ${format}`);
  return lines.join('\n');
}

/** The nearest ancestor that looks like a pipe project; the current directory otherwise. */
export function findProjectRoot(start: string): string {
  let dir = resolve(start);
  for (;;) {
    for (const marker of ['.pipe', 'pipelines', 'package.json', '.git']) {
      if (existsSync(join(dir, marker))) return dir;
    }
    const up = dirname(dir);
    if (up === dir) return resolve(start);
    dir = up;
  }
}

function defaultFiles(root: string): string[] {
  const dir = join(root, 'experiments');
  if (!existsSync(dir)) throw new UsageError('no files given and no experiments/ directory here');
  return [join(dir, '*.yaml')];
}

/** Expand `*` and `?` in the file-name part (for quoted globs and Windows shells). */
export function expandFiles(args: string[]): string[] {
  const out: string[] = [];
  for (const a of args) {
    if (!/[*?[]/.test(a)) {
      out.push(a);
      continue;
    }
    const dir = dirname(a);
    const re = new RegExp(`^${basename(a).replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
    const matches = existsSync(dir) ? readdirSync(dir).filter((f) => re.test(f)).sort() : [];
    if (matches.length === 0) throw new UsageError(`${a}: no files match`);
    out.push(...matches.map((f) => join(dir, f)));
  }
  return out;
}

export async function cli(argv: string[]): Promise<void> {
  try {
    process.exitCode = await main(argv);
  } catch (err) {
    if (err instanceof DiagnosticError) {
      process.stderr.write(`${err.message}\n${err.diagnostics.length} error${err.diagnostics.length === 1 ? '' : 's'}; nothing was run\n`);
      process.exitCode = 2;
    } else if (err instanceof UsageError) {
      process.stderr.write(`pipe: ${err.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`pipe: ${(err as Error)?.stack ?? err}\n`);
      process.exitCode = 1;
    }
  }
}
