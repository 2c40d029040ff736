// The one interface every stage type implements: the built-in `command` stage and the
// face study's stages alike. The runner only ever sees this shape, so it knows nothing
// about what a stage computes.

/** A JSON Schema object (draft 2020-12 / ajv). `x-path: true` on a string or string-array
 * property marks it as a path relative to the YAML file that set it; such paths are
 * normalised to project-root-relative form and, when listed by `externalInputs`, hashed. */
export type JsonSchema = Record<string, unknown>;

export interface StageResources {
  /** CPU slots held while running (default 1). */
  cpu?: number;
  /** Accelerator / exclusive-training slots (default 0). Two stages that each need one never overlap. */
  gpu?: number;
  /** Memory in MiB the stage may use at peak (default 256). */
  memoryMb?: number;
}

export type Metrics = Record<string, unknown>;

export interface StageContext<S = Record<string, unknown>> {
  /** Validated settings with defaults filled in; path settings are absolute. */
  readonly settings: S;
  readonly experiment: string;
  readonly stageName: string;
  /** One read-only directory per needed stage, keyed by that stage's name. */
  readonly inputs: Readonly<Record<string, string>>;
  /** Empty directory the stage writes all of its outputs into. */
  readonly outDir: string;
  /** Scratch directory removed after the stage, never published. */
  readonly scratchDir: string;
  /** Directory for checkpoints: it survives a failed or interrupted attempt of this same key
   * (so a rerun can resume) and is removed once the result is published. Never a result. */
  readonly stateDir: string;
  /** Project root (where relative paths in settings were resolved from). */
  readonly projectRoot: string;
  /** Report progress: `done` of `total` `unit`s (total may be unknown). */
  progress(done: number, total?: number, unit?: string): void;
  /** One line of the stage's log (stored with the artifact, shown on cache hits with `pipe show`). */
  log(line: string): void;
  /** sha256 (hex) of a file's bytes, from the runner's content-hash cache: a file the runner
   * already hashed (an external input of this key) is not read again while it is unchanged. */
  fileDigest(path: string): Promise<string>;
  /** Aborted on Ctrl-C or when the run fails fast; stages should stop promptly. */
  readonly signal: AbortSignal;
}

export interface StageType<S = any> {
  /** Name used in `uses:`. */
  readonly name: string;
  /** One line shown in help and error messages. */
  readonly description: string;
  /** JSON Schema of the stage's `with:` settings, with defaults. */
  readonly schema: JsonSchema;
  readonly resources?: StageResources | ((settings: S) => StageResources);
  /** `import.meta.url` of the module defining the stage: its source and the project-local
   * modules it imports form the stage's code digest. */
  readonly module: string;
  /** External files/directories (absolute paths) whose content goes into the cache key. */
  externalInputs?(settings: S): string[];
  /** Settings that are recorded in the manifest but deliberately left out of the cache key
   * (dotted paths, e.g. `backend`: the same settings on CPU and GPU give the same kind of result). */
  readonly volatileSettings?: readonly string[];
  /** Do the work. May return metrics; a `metrics.json` written into outDir is also read. */
  run(ctx: StageContext<S>): Promise<Metrics | void>;
}

// Stage modules import this file with `import type` only, so that editing the runner's
// interface comments does not change every stage's code digest (and rerun everything).
// Write a stage as:  export default { name, …, run } satisfies StageType<MySettings>;
