// The row formats the face-study data stages pass along (rows.jsonl), and the small pieces
// every one of those stages needs: JSON Lines in and out (streamed, so a 460k-row IMDB file
// never has to be one string), the filter rules, a counter of bad items that logs them and
// turns fatal under `strict`, and metrics.json.
//
// Numbers that JSON cannot hold: face_score and second_face_score keep their exact value; when
// it is not finite it is written as the string "NaN", "Infinity" or "-Infinity" (JsonNumber;
// decode with `numberOf`). Every other unknown value (gender, age, a size that could not be
// read, a box without coordinates) is null.

import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { ImageProblem } from './image-probe.js';

export type JsonNumber = number | 'NaN' | 'Infinity' | '-Infinity';

export function jsonNumber(v: number): JsonNumber {
  if (Number.isFinite(v)) return v;
  return Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity';
}

/** The number a JsonNumber stands for (null and anything unexpected read as NaN). */
export function numberOf(v: JsonNumber | null | undefined): number {
  if (typeof v === 'number') return v;
  if (v === 'Infinity') return Infinity;
  if (v === '-Infinity') return -Infinity;
  return NaN;
}

/** [x1, y1, x2, y2], 0-based pixels, x2/y2 inclusive (original image) or float (letterboxed). */
export type Box = [number, number, number, number];

export interface ArchiveRef {
  /** As recorded by extract-metadata: project-relative when inside the project, else absolute. */
  path: string;
  /** Content digest of the tar (or of the directory listing), so later keys follow the data. */
  sha256: string;
}

/** One row of extract-metadata's and filter's rows.jsonl (one .mat row, in .mat order). */
export interface MetaImageRow {
  /** full_path from the .mat. */
  key: string;
  /** Where the image was found; null with image_problem 'missing'. */
  archive: ArchiveRef | null;
  member: string | null;
  /** Where the member's bytes start in its (uncompressed) tar, and how many there are: the
   * image stages read just these bytes. null for a directory or a gzipped tar. */
  member_offset: number | null;
  member_bytes: number | null;
  width: number | null;
  height: number | null;
  image_problem: ImageProblem | null;
  /** floor(face_location) - 1; null when face_location is not four finite numbers. */
  box: Box | null;
  face_score: JsonNumber;
  second_face_score: JsonNumber;
  /** 1 male, 0 female, null unknown. */
  gender: 1 | 0 | null;
  /** photo_taken - year(dob); null when either is unknown. */
  age: number | null;
  name: string;
}

/** One face of a letterboxed image. */
export interface LetterboxFace {
  /** Float, in letterboxed pixels. */
  box: Box;
  gender: 1 | 0;
  age: number;
  /** (age - 10) // 10. */
  age_bucket: number;
}

/** One row of letterbox's rows.jsonl (one output image). */
export interface LetterboxRow {
  key: string;
  /** Member of letterbox's images.tar, and where its bytes are in it (null when unknown). */
  member: string;
  member_offset: number | null;
  member_bytes: number;
  size: number;
  scale: number;
  /** Black padding [left, top, right, bottom] in letterboxed pixels. */
  pad: [number, number, number, number];
  original_width: number;
  original_height: number;
  /** Where the original came from (archive as recorded by extract-metadata, member in it). */
  source: { archive: string; member: string };
  faces: LetterboxFace[];
}

export function ageBucketOf(age: number): number {
  return Math.floor((age - 10) / 10);
}

// ---------------------------------------------------------------- filter rules

export const FILTER_RULES = ['face_score', 'second_face', 'unknown_label', 'age_range', 'min_side', 'box_outside', 'undecodable'] as const;
export type FilterRule = (typeof FILTER_RULES)[number];

export interface FilterSettings {
  min_face_score: number;
  min_side: number;
  min_age: number;
  /** Exclusive. */
  max_age: number;
  single_face: boolean;
}

export function boxInside(box: Box, width: number, height: number): boolean {
  const [x1, y1, x2, y2] = box;
  return x1 >= 0 && y1 >= 0 && x2 <= width - 1 && y2 <= height - 1 && x2 > x1 && y2 > y1;
}

/**
 * The first rule a row breaks, in the seed's order, or null when it is kept. The size and box
 * rules need the image size; when it is unknown (the image is missing or unreadable) they are
 * passed over and the row falls to `undecodable`.
 */
export function firstFailedRule(r: MetaImageRow, s: FilterSettings): FilterRule | null {
  const score = numberOf(r.face_score);
  if (!Number.isFinite(score) || score < s.min_face_score) return 'face_score';
  if (s.single_face && !Number.isNaN(numberOf(r.second_face_score))) return 'second_face';
  if ((r.gender !== 0 && r.gender !== 1) || r.age === null || !Number.isFinite(r.age)) return 'unknown_label';
  if (r.age < s.min_age || r.age >= s.max_age) return 'age_range';
  const sized = r.width !== null && r.height !== null;
  if (sized && (r.width! < s.min_side || r.height! < s.min_side)) return 'min_side';
  if (sized && (r.box === null || !boxInside(r.box, r.width!, r.height!))) return 'box_outside';
  if (r.image_problem !== null || !sized || r.archive === null || r.member === null) return 'undecodable';
  return null;
}

// ---------------------------------------------------------------- JSON Lines

export interface JsonlLine<T> {
  /** 1-based line number. */
  line: number;
  value?: T;
  /** Set instead of value when the line is not valid JSON. */
  error?: string;
}

/** Stream a JSON Lines file; blank lines are skipped, bad lines reported (not thrown). */
export async function* readJsonl<T>(file: string, signal?: AbortSignal): AsyncGenerator<JsonlLine<T>> {
  signal?.throwIfAborted();
  const rl = readline.createInterface({ input: fs.createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 20 }), crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const text of rl) {
      n++;
      if (n % 4096 === 0) signal?.throwIfAborted();
      if (!text.trim()) continue;
      try {
        yield { line: n, value: JSON.parse(text) as T };
      } catch (err) {
        yield { line: n, error: (err as Error).message };
      }
    }
  } finally {
    rl.close();
  }
}

/** Read a whole JSON Lines file, throwing on the first bad line (file:line in the message). */
export async function readJsonlStrict<T>(file: string, signal?: AbortSignal): Promise<T[]> {
  const out: T[] = [];
  for await (const l of readJsonl<T>(file, signal)) {
    if (l.error !== undefined) throw new Error(`${file}:${l.line}: not valid JSON: ${l.error}`);
    out.push(l.value!);
  }
  return out;
}

/** Buffered JSON Lines writer: one write per ~1 MiB. */
export class JsonlWriter {
  #fh: fsp.FileHandle;
  #buf: string[] = [];
  #size = 0;
  lines = 0;
  private constructor(readonly file: string, fh: fsp.FileHandle) {
    this.#fh = fh;
  }
  static async open(file: string): Promise<JsonlWriter> {
    return new JsonlWriter(file, await fsp.open(file, 'w'));
  }
  async write(value: unknown): Promise<void> {
    const s = JSON.stringify(value) + '\n';
    this.#buf.push(s);
    this.#size += s.length;
    this.lines++;
    if (this.#size >= 1 << 20) await this.#flush();
  }
  async #flush(): Promise<void> {
    if (this.#buf.length === 0) return;
    const text = this.#buf.join('');
    this.#buf = [];
    this.#size = 0;
    await this.#fh.write(text);
  }
  async close(): Promise<void> {
    try {
      await this.#flush();
    } finally {
      await this.#fh.close();
    }
  }
}

// ---------------------------------------------------------------- stage plumbing

/** The single needed stage's output directory, or a clear error. */
export function singleInput(inputs: Readonly<Record<string, string>>, stage: string, what: string): string {
  const names = Object.keys(inputs);
  if (names.length !== 1) {
    throw new Error(`${stage}: needs exactly one upstream stage (${what}); got ${names.length ? names.join(', ') : 'none'}`);
  }
  return inputs[names[0]!]!;
}

/** A path for rows: project-relative when inside the project, absolute otherwise. */
export function recordedPath(projectRoot: string, abs: string): string {
  const rel = path.relative(projectRoot, abs);
  if (rel && !rel.startsWith('..') && !path.isAbsolute(rel)) return rel.split(path.sep).join('/');
  return abs;
}

export function resolveRecordedPath(projectRoot: string, recorded: string): string {
  return path.resolve(projectRoot, recorded);
}

/**
 * metrics.json gets only what the data determines (counts): it is one of the stage's output
 * files, so a timing in it would make every rerun publish new bytes and rerun everything
 * downstream, defeating early cutoff. Timings are returned instead; the runner records the
 * returned metrics in the manifest (`pipe show`, `pipe compare`) without hashing them.
 */
export async function writeMetrics(
  outDir: string,
  counts: Record<string, unknown>,
  timings: Record<string, number>,
): Promise<Record<string, unknown>> {
  await fsp.writeFile(path.join(outDir, 'metrics.json'), JSON.stringify(counts, null, 2) + '\n');
  return { ...counts, ...timings };
}

/**
 * Bad items of a big dataset: counted by kind, logged (the first `maxLines` individually, then
 * only counted), or fatal when `strict` is set, with the error naming where and what.
 */
export class BadItems {
  readonly counts: Record<string, number> = {};
  #logged = 0;
  #total = 0;
  constructor(
    private readonly stage: string,
    private readonly log: (line: string) => void,
    private readonly strict: boolean,
    private readonly maxLines = 100,
  ) {}

  get total(): number {
    return this.#total;
  }

  /** `where` names the file and member (or row); `detail` says what is wrong. */
  report(kind: string, where: string, detail: string): void {
    if (this.strict) throw new Error(`${this.stage}: ${where}: ${kind}: ${detail} (strict: true makes this fatal)`);
    this.counts[kind] = (this.counts[kind] ?? 0) + 1;
    this.#total++;
    if (this.#logged < this.maxLines) {
      this.#logged++;
      this.log(`skipped ${kind}: ${where}: ${detail}`);
    }
  }

  /** One closing line when some items were only counted. */
  finish(): void {
    if (this.#total > this.#logged) {
      this.log(`… ${this.#total - this.#logged} more bad item(s) not logged one by one; by kind: ${JSON.stringify(this.counts)}`);
    }
  }
}

/**
 * forEachWantedImage's `missing` and `damaged` callbacks for the stages that read the kept
 * images out of the source archives (letterbox, crop): each counts as done and as a bad item.
 */
export function sourceArchiveProblems(bad: BadItems, tick: () => void) {
  return {
    missing(_group: unknown, archive: string, member: string, reason: string): void {
      tick();
      bad.report('missing', `${archive}: ${member}`, reason);
    },
    damaged(_group: unknown, archive: string, member: string, detail: string): void {
      tick();
      bad.report('damaged_archive', `${archive}: ${member}`, `${detail}; the rest of this archive is not read`);
    },
  };
}

/**
 * How many images to keep in flight. sharp runs each pipeline on libuv's pool (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise); results are taken in order, so the window is a few times
 * the pool: while the oldest image is still being worked on, the pool has others queued and
 * never idles behind it. Memory stays a few MB (encoded inputs and outputs).
 * PIPE_IMAGE_CONCURRENCY overrides it.
 */
export function imageConcurrency(): number {
  // A tuning knob for benchmarks; it never changes what is written, only how fast.
  const forced = Number(process.env.PIPE_IMAGE_CONCURRENCY);
  if (Number.isInteger(forced) && forced > 0) return forced;
  const pool = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  return Math.max(8, Math.min(64, 4 * Math.max(pool, os.availableParallelism())));
}
