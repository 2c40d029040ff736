// Pipeline and experiment files → validated experiments.
//   load      YAML with source positions (the `yaml` package's ranges + LineCounter)
//   resolve   extends chain, `set`, `matrix`, `--set`, `${params.x}` substitution
//   validate  each stage's settings against its type's JSON Schema (ajv), defaults filled
//   graph     needs → DAG; cycles reported as the path of stage names
// Every problem found is collected; nothing runs unless the list is empty.
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, relative, resolve, sep } from 'node:path';
import { LineCounter, parseDocument, isMap, isSeq, isScalar, type Document, type Node } from 'yaml';
import { parse as parseYamlValue } from 'yaml';
import AjvModule, { type ErrorObject, type ValidateFunction } from 'ajv';
import { DiagnosticError, didYouMean, type Diagnostic, type SourceLoc } from './diagnostics.js';
import type { StageType } from './stage-type.js';

const Ajv = AjvModule.default ?? AjvModule;

export type StageRegistry = ReadonlyMap<string, StageType>;

export interface StageInstance {
  experiment: string;
  name: string;
  type: StageType;
  needs: string[];
  /** Settings as the stage sees them: defaults filled, path settings absolute. */
  settings: Record<string, unknown>;
  /** What goes into the key: paths project-relative, volatile settings removed. */
  keySettings: Record<string, unknown>;
  /** Recorded with the artifact but not in the key (e.g. `backend`). */
  volatile: Record<string, unknown>;
  /** Where the stage is declared. */
  loc: SourceLoc;
}

export interface Experiment {
  name: string;
  /** The file the experiment was loaded from. */
  file: string;
  pipelineFile: string;
  /** Dotted paths set by the experiment chain and the command line (for display). */
  overrides: Record<string, unknown>;
  stages: Map<string, StageInstance>;
  /** Stage names, dependencies first. */
  order: string[];
  /** Paths listed under `requires:` that do not exist: the experiment cannot run here. */
  unavailable: string[];
}

export interface LoadOptions {
  registry: StageRegistry;
  projectRoot: string;
  /** `--set stage.path=value` from the command line, applied last to every experiment. */
  cliSets?: string[];
}

// ---------------------------------------------------------------------------------------
// Loading YAML with positions

interface LoadedFile {
  path: string;
  display: string;
  doc: Document;
  lines: LineCounter;
  data: unknown;
}

interface Origin {
  loc: SourceLoc; // where the value is
  keyLoc: SourceLoc; // where its key is (unknown-key errors point here)
  dir: string; // relative paths in this value resolve against this directory
}

class Loader {
  private files = new Map<string, LoadedFile | null>();
  readonly diagnostics: Diagnostic[] = [];

  constructor(readonly projectRoot: string) {}

  display(path: string): string {
    const rel = relative(process.cwd(), path);
    return rel && !rel.startsWith('..') ? rel : path;
  }

  load(path: string, from?: SourceLoc): LoadedFile | null {
    const abs = resolve(path);
    if (this.files.has(abs)) return this.files.get(abs)!;
    let text: string;
    try {
      text = readFileSync(abs, 'utf8');
    } catch (err) {
      const loc = from ?? { file: this.display(abs), line: 1, col: 1 };
      this.diagnostics.push({ ...loc, message: `cannot read ${this.display(abs)}: ${(err as NodeJS.ErrnoException).code ?? err}` });
      this.files.set(abs, null);
      return null;
    }
    const lines = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
    const display = this.display(abs);
    for (const e of doc.errors) {
      const pos = lines.linePos(e.pos[0]);
      this.diagnostics.push({ file: display, line: pos.line, col: pos.col, message: `YAML: ${e.message.split('\n')[0]}` });
    }
    const loaded: LoadedFile = { path: abs, display, doc, lines, data: doc.errors.length ? null : doc.toJS() };
    this.files.set(abs, loaded);
    return loaded;
  }

  /** Position of the value (or key) at `path` in a file; the nearest existing ancestor otherwise. */
  loc(file: LoadedFile, path: (string | number)[], which: 'key' | 'value' = 'value'): SourceLoc {
    let node: unknown = file.doc.contents;
    let at: number = (node as Node | null)?.range?.[0] ?? 0;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i];
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) break;
        const keyStart = (pair.key as Node).range?.[0] ?? at;
        if (i === path.length - 1 && which === 'key') {
          at = keyStart;
          break;
        }
        node = pair.value;
        at = (pair.value as Node | null)?.range?.[0] ?? keyStart;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
        at = (node as Node | undefined)?.range?.[0] ?? at;
      } else break;
    }
    const pos = file.lines.linePos(at);
    return { file: file.display, line: pos.line, col: pos.col };
  }

  error(loc: SourceLoc, message: string, path?: string): void {
    this.diagnostics.push({ ...loc, path, message });
  }
}

// ---------------------------------------------------------------------------------------
// Resolution: a draft is an experiment before validation

interface StageDraft {
  name: string;
  uses: string;
  needs: string[];
  with: Record<string, unknown>;
  file: LoadedFile;
  loc: SourceLoc;
  needsLocs: SourceLoc[];
  usesLoc: SourceLoc;
  origins: Map<string, Origin>;
}

interface Draft {
  name: string;
  file: string;
  pipelineFile: string;
  params: Record<string, unknown>;
  paramOrigins: Map<string, Origin>;
  stages: Map<string, StageDraft>;
  overrides: Record<string, unknown>;
  requires: string[];
}

const PIPELINE_KEYS = ['description', 'params', 'stages'];
const EXPERIMENT_KEYS = ['description', 'extends', 'set', 'matrix', 'requires'];
const STAGE_KEYS = ['uses', 'needs', 'with', 'description'];
const STAGE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_-]*$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function clone<T>(v: T): T {
  return v === undefined ? v : structuredClone(v);
}

function recordOrigins(
  loader: Loader,
  file: LoadedFile,
  basePath: (string | number)[],
  value: unknown,
  prefix: string,
  into: Map<string, Origin>,
): void {
  const dir = dirname(file.path);
  into.set(prefix, { loc: loader.loc(file, basePath), keyLoc: loader.loc(file, basePath, 'key'), dir });
  if (isObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      recordOrigins(loader, file, [...basePath, k], v, prefix ? `${prefix}.${k}` : k, into);
    }
  }
}

function lookupOrigin(origins: Map<string, Origin>, dotted: string): Origin | undefined {
  const parts = dotted ? dotted.split('.') : [];
  for (let n = parts.length; n >= 0; n--) {
    const o = origins.get(parts.slice(0, n).join('.'));
    if (o) return o;
  }
  return undefined;
}

function resolveDraft(loader: Loader, path: string, chain: string[], from?: SourceLoc): Draft | null {
  const abs = resolve(path);
  if (chain.includes(abs)) {
    loader.error(from ?? { file: loader.display(abs), line: 1, col: 1 },
      `\`extends\` forms a cycle: ${[...chain, abs].map((p) => loader.display(p)).join(' → ')}`);
    return null;
  }
  const file = loader.load(abs, from);
  if (!file || file.data === null) return null;
  const data = file.data;
  const top = { file: file.display, line: 1, col: 1 };
  if (!isObject(data)) {
    loader.error(top, 'expected a mapping with `stages:` (a pipeline) or `extends:` (an experiment)');
    return null;
  }
  const isPipeline = 'stages' in data && !('extends' in data);
  const allowed = isPipeline ? PIPELINE_KEYS : EXPERIMENT_KEYS;
  for (const k of Object.keys(data)) {
    if (!allowed.includes(k)) {
      const kind = isPipeline ? 'pipeline' : 'experiment';
      loader.error(loader.loc(file, [k], 'key'), `unknown top-level key \`${k}\` in a ${kind} file${didYouMean(k, allowed)}; expected one of ${allowed.join(', ')}`, k);
    }
  }
  const name = basename(abs, extname(abs));
  if (isPipeline) return readPipeline(loader, file, data, name);
  if (!('extends' in data)) {
    loader.error(top, 'expected `stages:` (a pipeline) or `extends:` (an experiment)');
    return null;
  }
  if (typeof data.extends !== 'string') {
    loader.error(loader.loc(file, ['extends']), 'expected a relative path (string)', 'extends');
    return null;
  }
  const parent = resolveDraft(loader, resolve(dirname(abs), data.extends), [...chain, abs], loader.loc(file, ['extends']));
  if (!parent) return null;
  const draft: Draft = { ...parent, name, file: abs, overrides: { ...parent.overrides } };
  draft.stages = new Map([...parent.stages].map(([k, s]) => [k, { ...s, with: clone(s.with), origins: new Map(s.origins) }]));
  draft.params = clone(parent.params);
  draft.paramOrigins = new Map(parent.paramOrigins);
  draft.requires = [...parent.requires];
  if (data.requires !== undefined && data.requires !== null) {
    // Data not everyone has (the real IMDB-WIKI download): without it the experiment is
    // reported as unavailable instead of failing a sweep.
    if (!Array.isArray(data.requires) || data.requires.some((r) => typeof r !== 'string')) {
      loader.error(loader.loc(file, ['requires']), 'expected a list of paths (relative to this file)', 'requires');
    } else draft.requires.push(...(data.requires as string[]).map((r) => resolve(dirname(abs), r)));
  }
  if (data.set !== undefined && data.set !== null) {
    if (!isObject(data.set)) loader.error(loader.loc(file, ['set']), 'expected a mapping of `stage.dotted.path: value`', 'set');
    else {
      for (const [dotted, value] of Object.entries(data.set)) {
        const origin = { loc: loader.loc(file, ['set', dotted]), keyLoc: loader.loc(file, ['set', dotted], 'key'), dir: dirname(abs) };
        applySet(loader, draft, dotted, value, origin);
      }
    }
  }
  return draft;
}

function readPipeline(loader: Loader, file: LoadedFile, data: Record<string, unknown>, name: string): Draft | null {
  const draft: Draft = {
    name,
    file: file.path,
    pipelineFile: file.path,
    params: {},
    paramOrigins: new Map(),
    stages: new Map(),
    overrides: {},
    requires: [],
  };
  if (data.params !== undefined && data.params !== null) {
    if (!isObject(data.params)) loader.error(loader.loc(file, ['params']), 'expected a mapping of param names to values', 'params');
    else {
      draft.params = clone(data.params);
      for (const k of Object.keys(data.params)) {
        draft.paramOrigins.set(k, { loc: loader.loc(file, ['params', k]), keyLoc: loader.loc(file, ['params', k], 'key'), dir: dirname(file.path) });
      }
    }
  }
  if (!isObject(data.stages)) {
    loader.error(loader.loc(file, ['stages']), 'expected a mapping of stage names to stages', 'stages');
    return draft;
  }
  for (const [stageName, raw] of Object.entries(data.stages)) {
    const at = ['stages', stageName];
    if (!STAGE_NAME.test(stageName)) {
      loader.error(loader.loc(file, at, 'key'), 'stage names may use letters, digits, `_` and `-` only', stageName);
    }
    if (!isObject(raw)) {
      loader.error(loader.loc(file, at), 'expected a mapping with `uses:`, `needs:` and `with:`', stageName);
      continue;
    }
    for (const k of Object.keys(raw)) {
      if (!STAGE_KEYS.includes(k)) {
        loader.error(loader.loc(file, [...at, k], 'key'), `unknown key \`${k}\`${didYouMean(k, STAGE_KEYS)}; a stage has ${STAGE_KEYS.join(', ')}`, `${stageName}.${k}`);
      }
    }
    if (typeof raw.uses !== 'string') {
      loader.error(loader.loc(file, [...at, 'uses']), 'expected `uses:` naming a stage type', `${stageName}.uses`);
    }
    let needs: string[] = [];
    if (raw.needs !== undefined && raw.needs !== null) {
      if (!Array.isArray(raw.needs) || raw.needs.some((n) => typeof n !== 'string')) {
        loader.error(loader.loc(file, [...at, 'needs']), 'expected a list of stage names', `${stageName}.needs`);
      } else needs = raw.needs as string[];
    }
    let withValue: Record<string, unknown> = {};
    if (raw.with !== undefined && raw.with !== null) {
      if (!isObject(raw.with)) loader.error(loader.loc(file, [...at, 'with']), 'expected a mapping of settings', `${stageName}.with`);
      else withValue = clone(raw.with);
    }
    const origins = new Map<string, Origin>();
    recordOrigins(loader, file, [...at, 'with'], withValue, '', origins);
    draft.stages.set(stageName, {
      name: stageName,
      uses: typeof raw.uses === 'string' ? raw.uses : '',
      needs,
      with: withValue,
      file,
      loc: loader.loc(file, at, 'key'),
      usesLoc: loader.loc(file, [...at, 'uses']),
      needsLocs: needs.map((_, i) => loader.loc(file, [...at, 'needs', i])),
      origins,
    });
  }
  return draft;
}

/** `stage.dotted.path: value` (or `params.name: value`) applied to a draft. */
function applySet(loader: Loader, draft: Draft, dotted: string, value: unknown, origin: Origin): void {
  const [head, ...rest] = dotted.split('.');
  draft.overrides[dotted] = value;
  if (head === 'params') {
    if (rest.length === 0) {
      loader.error(origin.keyLoc, 'expected `params.NAME`', dotted);
      return;
    }
    const pname = rest.join('.');
    if (!(pname in draft.params)) {
      loader.error(origin.keyLoc, `unknown param \`${pname}\`${didYouMean(pname, Object.keys(draft.params))}`, dotted);
      return;
    }
    draft.params[pname] = clone(value);
    draft.paramOrigins.set(pname, origin);
    return;
  }
  const stage = draft.stages.get(head!);
  if (!stage) {
    const names = [...draft.stages.keys(), 'params'];
    loader.error(origin.keyLoc, `unknown stage \`${head}\`${didYouMean(head!, names)}; stages here: ${[...draft.stages.keys()].join(', ')}`, dotted);
    return;
  }
  if (rest.length === 0) {
    loader.error(origin.keyLoc, 'expected `stage.setting` (a dotted path into the stage\'s `with:`)', dotted);
    return;
  }
  if (rest.length === 1 && rest[0] === 'uses') {
    // An experiment may swap a stage's type (e.g. a dataset built from real faces instead of
    // synthesized ones); its settings are then validated against the new type's schema.
    if (typeof value !== 'string') {
      loader.error(origin.loc, 'expected a stage type name', dotted);
      return;
    }
    stage.uses = value;
    stage.usesLoc = origin.loc;
    return;
  }
  if (rest.length === 1 && rest[0] === 'needs') {
    // An experiment may rewire what a stage reads (e.g. pretraining from a classifier).
    if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
      loader.error(origin.loc, 'expected a list of stage names', dotted);
      return;
    }
    stage.needs = [...(value as string[])];
    stage.needsLocs = stage.needs.map(() => origin.loc);
    return;
  }
  let target = stage.with;
  for (let i = 0; i < rest.length - 1; i++) {
    const k = rest[i]!;
    if (!isObject(target[k])) target[k] = {};
    target = target[k] as Record<string, unknown>;
  }
  target[rest[rest.length - 1]!] = clone(value);
  const sub = rest.join('.');
  for (const k of [...stage.origins.keys()]) if (k === sub || k.startsWith(`${sub}.`)) stage.origins.delete(k);
  stage.origins.set(sub, origin);
}

// ---------------------------------------------------------------------------------------
// Params: `${params.name}` in any string setting

const PARAM_REF = /\$\{params\.([A-Za-z0-9_.-]+)\}/g;

function substituteParams(loader: Loader, value: unknown, params: Record<string, unknown>, stage: StageDraft, path: string): unknown {
  if (typeof value === 'string') {
    const whole = /^\$\{params\.([A-Za-z0-9_.-]+)\}$/.exec(value);
    const check = (name: string): boolean => {
      if (name in params) return true;
      const o = lookupOrigin(stage.origins, path);
      loader.error(o?.loc ?? stage.loc, `unknown param \`${name}\`${didYouMean(name, Object.keys(params))}`, `${stage.name}.${path}`);
      return false;
    };
    if (whole) return check(whole[1]!) ? clone(params[whole[1]!]) : value;
    return value.replace(PARAM_REF, (m, name: string) => (check(name) ? String(params[name]) : m));
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteParams(loader, v, params, stage, `${path}.${i}`));
  if (isObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = substituteParams(loader, v, params, stage, path ? `${path}.${k}` : k);
    return out;
  }
  return value;
}

// ---------------------------------------------------------------------------------------
// Matrix

function readMatrix(loader: Loader, file: LoadedFile): { dotted: string; values: unknown[]; origin: Origin }[] {
  const data = file.data as Record<string, unknown>;
  if (data.matrix === undefined || data.matrix === null) return [];
  if (!isObject(data.matrix)) {
    loader.error(loader.loc(file, ['matrix']), 'expected a mapping of `stage.dotted.path: [values…]`', 'matrix');
    return [];
  }
  const out = [];
  for (const [dotted, values] of Object.entries(data.matrix)) {
    const origin = { loc: loader.loc(file, ['matrix', dotted]), keyLoc: loader.loc(file, ['matrix', dotted], 'key'), dir: dirname(file.path) };
    if (!Array.isArray(values) || values.length === 0) {
      loader.error(origin.loc, 'expected a non-empty list of values', `matrix.${dotted}`);
      continue;
    }
    out.push({ dotted, values, origin });
  }
  return out;
}

function matrixLabel(dottedKeys: string[]): Map<string, string> {
  // Short labels (last path segment) unless two keys would share one.
  const labels = new Map<string, string>();
  const last = dottedKeys.map((k) => k.split('.').pop()!);
  dottedKeys.forEach((k, i) => labels.set(k, last.filter((l) => l === last[i]).length > 1 ? k : last[i]!));
  return labels;
}

function formatScalar(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------
// Validation against stage schemas

const validators = new WeakMap<StageType, ValidateFunction>();

function makeAjv() {
  const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });
  ajv.addKeyword({ keyword: 'x-path', schemaType: 'boolean' });
  return ajv;
}
let ajvInstance: ReturnType<typeof makeAjv> | undefined;

function validatorFor(type: StageType): ValidateFunction {
  let v = validators.get(type);
  if (!v) {
    ajvInstance ??= makeAjv();
    v = ajvInstance.compile(type.schema);
    validators.set(type, v);
  }
  return v;
}

function describeAjvError(e: ErrorObject): { path: string; message: string; key?: string } {
  const path = e.instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~')).join('.');
  const got = (v: unknown) => (v === undefined ? 'nothing' : `${JSON.stringify(v)} (${Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v})`);
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String((e.params as { additionalProperty: string }).additionalProperty);
      const known = Object.keys(((e.parentSchema ?? {}) as { properties?: object }).properties ?? {});
      return {
        path: path ? `${path}.${key}` : key,
        key,
        message: `unknown setting \`${key}\`${didYouMean(key, known)}${known.length ? `; known settings: ${known.join(', ')}` : ''}`,
      };
    }
    case 'type':
      return { path, message: `expected ${(e.params as { type: string }).type}, got ${got(e.data)}` };
    case 'enum':
      return {
        path,
        message: `expected one of ${((e.params as { allowedValues: unknown[] }).allowedValues).map((v) => JSON.stringify(v)).join(' | ')}, got ${got(e.data)}${typeof e.data === 'string' ? didYouMean(e.data, ((e.params as { allowedValues: unknown[] }).allowedValues).map(String)) : ''}`,
      };
    case 'required': {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      return { path: path ? `${path}.${missing}` : missing, message: 'required setting is missing' };
    }
    default:
      return { path, message: `${e.message ?? 'invalid'}, got ${got(e.data)}` };
  }
}

/** Walk the schema and rewrite `x-path` settings with `fn(value, dottedPath)`. */
function mapPaths(schema: unknown, value: unknown, dotted: string, fn: (p: string, dotted: string) => string): unknown {
  if (!isObject(schema)) return value;
  if (schema['x-path'] === true) {
    if (typeof value === 'string') return fn(value, dotted);
    if (Array.isArray(value)) return value.map((v, i) => (typeof v === 'string' ? fn(v, `${dotted}.${i}`) : v));
    return value;
  }
  if (Array.isArray(value) && isObject(schema.items)) {
    return value.map((v, i) => mapPaths(schema.items, v, `${dotted}.${i}`, fn));
  }
  if (isObject(value) && isObject(schema.properties)) {
    const out: Record<string, unknown> = { ...value };
    for (const [k, sub] of Object.entries(schema.properties)) {
      if (k in out) out[k] = mapPaths(sub, out[k], dotted ? `${dotted}.${k}` : k, fn);
    }
    return out;
  }
  return value;
}

function toProjectPath(projectRoot: string, abs: string): string {
  const rel = relative(projectRoot, abs);
  return rel.split(sep).join('/') || '.';
}

function deleteDotted(obj: Record<string, unknown>, dotted: string): unknown {
  const parts = dotted.split('.');
  let target: unknown = obj;
  for (const p of parts.slice(0, -1)) {
    if (!isObject(target)) return undefined;
    target = target[p];
  }
  if (!isObject(target)) return undefined;
  const last = parts[parts.length - 1]!;
  const v = target[last];
  delete target[last];
  return v;
}

function finishExperiment(loader: Loader, draft: Draft, opts: LoadOptions): Experiment | null {
  const before = loader.diagnostics.length;
  const stages = new Map<string, StageInstance>();
  for (const sd of draft.stages.values()) {
    const type = opts.registry.get(sd.uses);
    if (!type) {
      if (sd.uses) loader.error(sd.usesLoc, `unknown stage type \`${sd.uses}\`${didYouMean(sd.uses, opts.registry.keys())}; available: ${[...opts.registry.keys()].sort().join(', ')}`, `${sd.name}.uses`);
      continue;
    }
    sd.needs.forEach((n, i) => {
      if (!draft.stages.has(n)) {
        loader.error(sd.needsLocs[i]!, `needs unknown stage \`${n}\`${didYouMean(n, draft.stages.keys())}`, `${sd.name}.needs`);
      }
    });
    const withParams = substituteParams(loader, sd.with, draft.params, sd, '') as Record<string, unknown>;
    const settings = clone(withParams);
    const validate = validatorFor(type);
    if (!validate(settings)) {
      const seen = new Set<string>();
      for (const e of validate.errors ?? []) {
        const d = describeAjvError(e);
        const origin = lookupOrigin(sd.origins, d.path);
        const exact = sd.origins.get(d.path);
        const loc = d.key ? (exact?.keyLoc ?? origin?.loc ?? sd.loc) : (origin?.loc ?? sd.loc);
        const text = `${loc.file}:${loc.line}:${loc.col}:${d.path}:${d.message}`;
        if (seen.has(text)) continue;
        seen.add(text);
        loader.error(loc, d.message, `${sd.name}.${d.path}`.replace(/\.$/, ''));
      }
      continue;
    }
    const absSettings = mapPaths(type.schema, settings, '', (p, dotted) => {
      if (isAbsolute(p)) return p;
      const dir = lookupOrigin(sd.origins, dotted)?.dir ?? dirname(sd.file.path);
      return resolve(dir, p);
    }) as Record<string, unknown>;
    const keySettings = mapPaths(type.schema, clone(absSettings), '', (p) => toProjectPath(opts.projectRoot, p)) as Record<string, unknown>;
    const volatile: Record<string, unknown> = {};
    for (const v of type.volatileSettings ?? []) volatile[v] = deleteDotted(keySettings, v);
    stages.set(sd.name, {
      experiment: draft.name,
      name: sd.name,
      type,
      needs: sd.needs,
      settings: absSettings,
      keySettings,
      volatile,
      loc: sd.loc,
    });
  }
  const order = topoOrder(loader, draft);
  if (loader.diagnostics.length > before || !order) return null;
  return {
    name: draft.name,
    file: draft.file,
    pipelineFile: draft.pipelineFile,
    overrides: draft.overrides,
    stages,
    order,
    unavailable: draft.requires.filter((p) => !existsSync(p)),
  };
}

/** Dependencies first; a cycle is reported as the path of stage names that forms it. */
function topoOrder(loader: Loader, draft: Draft): string[] | null {
  const state = new Map<string, 'visiting' | 'done'>();
  const order: string[] = [];
  const stack: string[] = [];
  let ok = true;
  const reported = new Set<string>();
  const visit = (name: string): void => {
    const s = draft.stages.get(name);
    if (!s || state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') {
      const cycle = [...stack.slice(stack.indexOf(name)), name];
      const id = [...cycle].slice(0, -1).sort().join(',');
      if (!reported.has(id)) {
        reported.add(id);
        const first = draft.stages.get(cycle[0]!)!;
        const i = first.needs.indexOf(cycle[1]!);
        loader.error(first.needsLocs[i] ?? first.loc, `dependency cycle: ${cycle.join(' → ')}`, `${first.name}.needs`);
      }
      ok = false;
      return;
    }
    state.set(name, 'visiting');
    stack.push(name);
    for (const n of s.needs) visit(n);
    stack.pop();
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of draft.stages.keys()) visit(name);
  return ok ? order : null;
}

// ---------------------------------------------------------------------------------------

/** Load every file (pipelines and experiments), expanding matrices. Throws DiagnosticError. */
export function loadExperiments(files: string[], opts: LoadOptions): Experiment[] {
  const loader = new Loader(opts.projectRoot);
  const experiments: Experiment[] = [];
  const names = new Map<string, string>();
  for (const f of files) {
    const draft = resolveDraft(loader, f, []);
    if (!draft) continue;
    const leaf = loader.load(f)!;
    const matrix = leaf.data && isObject(leaf.data) && !('stages' in leaf.data) ? readMatrix(loader, leaf) : [];
    const combos: { name: string; sets: { dotted: string; value: unknown; origin: Origin }[] }[] = [];
    if (matrix.length === 0) combos.push({ name: draft.name, sets: [] });
    else {
      const labels = matrixLabel(matrix.map((m) => m.dotted));
      let partial: { dotted: string; value: unknown; origin: Origin }[][] = [[]];
      for (const m of matrix) {
        partial = partial.flatMap((p) => m.values.map((v) => [...p, { dotted: m.dotted, value: v, origin: m.origin }]));
      }
      for (const sets of partial) {
        combos.push({ name: `${draft.name}@${sets.map((s) => `${labels.get(s.dotted)}=${formatScalar(s.value)}`).join(',')}`, sets });
      }
    }
    for (const combo of combos) {
      const d: Draft = {
        ...draft,
        name: combo.name,
        overrides: { ...draft.overrides },
        params: clone(draft.params),
        paramOrigins: new Map(draft.paramOrigins),
        stages: new Map([...draft.stages].map(([k, s]) => [k, { ...s, with: clone(s.with), origins: new Map(s.origins) }])),
      };
      for (const s of combo.sets) applySet(loader, d, s.dotted, s.value, s.origin);
      for (const [i, raw] of (opts.cliSets ?? []).entries()) {
        const eq = raw.indexOf('=');
        const loc = { file: '--set', line: 1, col: i + 1 };
        if (eq <= 0) {
          loader.error(loc, `expected \`stage.dotted.path=value\`, got \`${raw}\``);
          continue;
        }
        const dotted = raw.slice(0, eq);
        let value: unknown;
        try {
          value = parseYamlValue(raw.slice(eq + 1));
        } catch {
          value = raw.slice(eq + 1);
        }
        applySet(loader, d, dotted, value, { loc, keyLoc: loc, dir: process.cwd() });
      }
      const exp = finishExperiment(loader, d, opts);
      if (!exp) continue;
      const prev = names.get(exp.name);
      if (prev && prev !== resolve(f)) {
        loader.error({ file: loader.display(f), line: 1, col: 1 }, `experiment name \`${exp.name}\` is also used by ${loader.display(prev)}; rename one of the files`);
        continue;
      }
      if (prev) continue; // the same file given twice
      names.set(exp.name, resolve(f));
      experiments.push(exp);
    }
  }
  if (loader.diagnostics.length) throw new DiagnosticError(dedupe(loader.diagnostics));
  return experiments;
}

function dedupe(ds: Diagnostic[]): Diagnostic[] {
  const seen = new Set<string>();
  return ds.filter((d) => {
    const k = `${d.file}:${d.line}:${d.col}:${d.path}:${d.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
