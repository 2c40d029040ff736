// `pipe compare`: the experiments' cached metrics side by side with the settings that
// differ between them. Reads the cache only; never runs anything.
import type { Store } from '../artifacts/store.js';
import type { Experiment } from '../runner/config.js';
import { planExperiments } from '../runner/executor.js';

export interface CompareRow {
  experiment: string;
  file: string;
  /** Only the settings (stage.dotted.path) whose values differ between the experiments. */
  settings: Record<string, unknown>;
  /** Cached metrics per stage. */
  metrics: Record<string, Record<string, unknown>>;
  /** Stages with no cached result for the current settings. */
  missing: string[];
  /** Output directories of cached stages (for reports that show images). */
  outputs: Record<string, string>;
  volatile: Record<string, Record<string, unknown>>;
}

export async function compareExperiments(experiments: Experiment[], store: Store, projectRoot: string): Promise<CompareRow[]> {
  const plan = await planExperiments(experiments, store, projectRoot);
  const flat = experiments.map((e) => {
    const m = new Map<string, string>();
    for (const [name, inst] of e.stages) flattenInto(inst.keySettings, `${name}.`, m);
    return m;
  });
  const allKeys = new Set(flat.flatMap((m) => [...m.keys()]));
  const differing = [...allKeys].filter((k) => new Set(flat.map((m) => m.get(k))).size > 1).sort();
  return experiments.map((e, i) => {
    const entries = plan.filter((p) => p.experiment === e.name);
    const metrics: Record<string, Record<string, unknown>> = {};
    const outputs: Record<string, string> = {};
    const volatile: Record<string, Record<string, unknown>> = {};
    for (const p of entries) {
      if (!p.manifest) continue;
      outputs[p.stage] = store.treePath(p.manifest.outputs.tree);
      if (Object.keys(p.manifest.metrics).length) metrics[p.stage] = p.manifest.metrics;
      if (Object.keys(p.manifest.volatile).length) volatile[p.stage] = p.manifest.volatile;
    }
    const settings: Record<string, unknown> = {};
    for (const k of differing) {
      const v = flat[i]!.get(k);
      settings[k] = v === undefined ? null : JSON.parse(v);
    }
    return { experiment: e.name, file: e.file, settings, metrics, missing: entries.filter((p) => !p.manifest).map((p) => p.stage), outputs, volatile };
  });
}

function flattenInto(v: unknown, prefix: string, out: Map<string, string>): void {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flattenInto(x, `${prefix}${k}.`, out);
  } else out.set(prefix.slice(0, -1), JSON.stringify(v));
}

/** Scalar metrics only: curves and matrices belong in the HTML report. */
export function scalarMetrics(row: CompareRow): Map<string, number | string | boolean> {
  const out = new Map<string, number | string | boolean>();
  for (const [stage, m] of Object.entries(row.metrics)) {
    const walk = (v: unknown, path: string) => {
      if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out.set(path, v);
      else if (v && typeof v === 'object' && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
    };
    walk(m, stage);
  }
  return out;
}

const MAX_TERMINAL_METRICS = 12;
const MAX_TERMINAL_SETTINGS = 6;

export function printCompareTable(rows: CompareRow[], out: (l: string) => void): void {
  const allSettings = [...new Set(rows.flatMap((r) => Object.keys(r.settings)))];
  const settingCols = allSettings.slice(0, MAX_TERMINAL_SETTINGS);
  const metricsPerRow = rows.map(scalarMetrics);
  // Columns that are the same for every experiment say nothing in a comparison (dataset counts,
  // step counts); they are left out when there is more than one experiment.
  const metricCols = [...new Set(metricsPerRow.flatMap((m) => [...m.keys()]))]
    .filter((k) => typeof metricsPerRow.find((m) => m.has(k))!.get(k) !== 'string' || k.endsWith('backend'))
    .filter((k) => rows.length < 2 || new Set(metricsPerRow.map((m) => String(m.get(k)))).size > 1);
  // Evaluation metrics first (the stage whose metrics have an `iou`), then the rest; a terminal
  // shows the first dozen, --json and --html have them all.
  const evalStages = new Set(rows.flatMap((r) => Object.entries(r.metrics).filter(([, m]) => 'iou' in m).map(([st]) => st)));
  const rank = (k: string) => (evalStages.has(k.split('.')[0]!) ? 0 : 1);
  metricCols.sort((a, b) => rank(a) - rank(b));
  const hidden = metricCols.splice(MAX_TERMINAL_METRICS);
  const header = ['experiment', ...settingCols, ...metricCols];
  const fmt = (v: unknown) => (v === undefined || v === null ? '—' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v));
  const table = rows.map((r, i) => [r.experiment, ...settingCols.map((c) => fmt(r.settings[c])), ...metricCols.map((c) => fmt(metricsPerRow[i]!.get(c)))]);
  const widths = header.map((h, c) => Math.min(40, Math.max(h.length, ...table.map((row) => row[c]!.length))));
  const line = (cells: string[]) => cells.map((c, i) => c.slice(0, 40).padEnd(widths[i]!)).join('  ');
  out(line(header));
  out(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of table) out(line(row));
  const hiddenSettings = allSettings.length - settingCols.length;
  if (hidden.length || hiddenSettings) {
    out(`(${[hiddenSettings ? `${hiddenSettings} more differing settings` : '', hidden.length ? `${hidden.length} more metric columns` : ''].filter(Boolean).join(', ')}: pipe compare … --json or --html FILE)`);
  }
  for (const r of rows) {
    if (r.missing.length) out(`${r.experiment}: no cached result for ${r.missing.join(', ')} (run: pipe run ${r.file})`);
  }
}
