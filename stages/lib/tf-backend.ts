// Picks the tfjs backend to train on: native TensorFlow (GPU, then CPU) when
// the optional @tensorflow/tfjs-node(-gpu) packages are installed, otherwise
// the wasm backend with our gradient kernels. Never the stock 'cpu' backend
// for training (~2000x slower); 'cpu' is only for inference and tests.
//
// npm skips a failed optional install (tfjs-node downloads libtensorflow in
// its install script) without a word, so the log lines written here are the
// only place a user learns which backend really runs and why.
//
// No top-level tfjs import: the CLI loads stage modules just to read schemas.

import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import type * as TF from '@tensorflow/tfjs';

export type BackendChoice = 'auto' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';

export interface BackendInfo {
  /** tfjs backend name really in use: 'tensorflow' | 'wasm' | 'cpu'. */
  name: string;
  /** npm package providing it. */
  package: string;
  /** Version of that package (tfjs-core's for 'cpu'). */
  version: string;
  threads: number;
  simd: boolean;
  gpu: boolean;
  note?: string;
}

// Type-only (erased at runtime): the same namespace type the other modules use
// via `import type * as TF`.
type Tf = typeof TF;

/** tfjs version the project is pinned to (package.json). */
export const TFJS_VERSION = '4.22.0';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'];
export const BACKEND_ENV = 'PIPE_TF_BACKEND';

const LOG_PREFIX = 'tf-backend: ';
const CPU_BANNER = 'Hi, looks like you are running TensorFlow.js in Node.js';

function defaultLog(line: string): void {
  process.stderr.write(LOG_PREFIX + line + '\n');
}

function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split('\n')[0] ?? msg;
}

function isNotInstalled(e: unknown, pkg: string): boolean {
  const code = (e as { code?: string } | null)?.code;
  return (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && firstLine(e).includes(pkg);
}

/** Runs f with tfjs' "install tfjs-node" banner filtered out of console.warn. */
async function withoutCpuBanner<T>(f: () => Promise<T>): Promise<T> {
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (args.some((a) => typeof a === 'string' && a.includes(CPU_BANNER))) return;
    warn(...args);
  };
  try {
    return await f();
  } finally {
    console.warn = warn;
  }
}

let tfPromise: Promise<Tf> | null = null;

async function loadTf(): Promise<Tf> {
  tfPromise ??= import('@tensorflow/tfjs').then((m) => {
    // The CommonJS build is seen through ESM interop; take the namespace that has the API.
    const tf = ((m as unknown as { setBackend?: unknown }).setBackend ? m : (m as unknown as { default: Tf }).default) as Tf;
    const core = tf.version_core;
    if (core !== TFJS_VERSION) {
      throw new Error(`tf-backend: @tensorflow/tfjs-core is ${core}, but the project is pinned to ${TFJS_VERSION} ` +
        `(our wasm gradient kernels are checked against it); reinstall with npm ci`);
    }
    return tf;
  });
  try {
    return await tfPromise;
  } catch (e) {
    tfPromise = null;
    throw e;
  }
}

function resolveChoice(choice: BackendChoice | undefined): { choice: BackendChoice; source: string } {
  if (choice != null && choice !== 'auto') {
    if (!BACKEND_CHOICES.includes(choice)) {
      throw new Error(`tf-backend: unknown backend '${String(choice)}'; expected one of ${BACKEND_CHOICES.join(', ')}`);
    }
    return { choice, source: 'argument' };
  }
  const env = process.env[BACKEND_ENV]?.trim();
  if (env) {
    if (!BACKEND_CHOICES.includes(env as BackendChoice)) {
      throw new Error(`tf-backend: environment ${BACKEND_ENV}='${env}' is not one of ${BACKEND_CHOICES.join(', ')}`);
    }
    return { choice: env as BackendChoice, source: `env ${BACKEND_ENV}` };
  }
  return { choice: 'auto', source: 'default' };
}

/** Loads @tensorflow/tfjs-node(-gpu) and switches to its 'tensorflow' backend; returns why not otherwise. */
async function tryNative(tf: Tf, pkg: '@tensorflow/tfjs-node-gpu' | '@tensorflow/tfjs-node'): Promise<BackendInfo | string> {
  // Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
  process.env['TF_CPP_MIN_LOG_LEVEL'] ??= '2';
  let mod: Record<string, unknown>;
  try {
    const spec: string = pkg; // a variable keeps tsc from requiring its types
    mod = (await import(spec)) as Record<string, unknown>;
  } catch (e) {
    if (isNotInstalled(e, pkg)) {
      return `${pkg} is not installed (npm skips a failed optional install silently; its install script downloads libtensorflow)`;
    }
    return `${pkg} is installed but failed to load: ${firstLine(e)}`;
  }
  if (tf.findBackendFactory('tensorflow') == null) {
    return `${pkg} loaded, but registered its backend in another copy of tfjs-core (versions differ?); skipped`;
  }
  let ok = false;
  try {
    ok = await tf.setBackend('tensorflow');
  } catch (e) {
    return `${pkg}: backend 'tensorflow' failed to start: ${firstLine(e)}`;
  }
  if (!ok || tf.getBackend() !== 'tensorflow') return `${pkg}: backend 'tensorflow' failed to start`;
  const usingGpu = Boolean((tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice);
  return {
    name: 'tensorflow',
    package: pkg,
    version: packageVersion(pkg, mod),
    threads: os.availableParallelism(),
    simd: true,
    gpu: usingGpu,
    note: usingGpu
      ? 'native TensorFlow on GPU'
      : pkg === '@tensorflow/tfjs-node-gpu'
        // The GPU build quietly runs on CPU when CUDA/cuDNN are missing.
        ? 'WARNING: tfjs-node-gpu found no usable GPU (CUDA/cuDNN missing?); native TensorFlow on CPU'
        : 'native TensorFlow on CPU (its own thread pool)',
  };
}

function packageVersion(pkg: string, mod: Record<string, unknown>): string {
  try {
    const v = (createRequire(import.meta.url)(`${pkg}/package.json`) as { version?: unknown }).version;
    if (typeof v === 'string') return v;
  } catch {
    // fall through to the version the module reports
  }
  const versions = (mod['version'] ?? (mod['default'] as Record<string, unknown> | undefined)?.['version']) as Record<string, string> | undefined;
  return versions?.['tfjs-node'] ?? 'unknown';
}

async function startWasm(tf: Tf): Promise<BackendInfo> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  if (wasm.version_wasm !== TFJS_VERSION) {
    throw new Error(`tf-backend: @tensorflow/tfjs-backend-wasm is ${wasm.version_wasm}, but the project is pinned to ${TFJS_VERSION} ` +
      '(our gradient kernels replace some of its kernels); reinstall with npm ci');
  }
  // In Node the .wasm binaries are read from disk: point tfjs at the package's dist/.
  const req = createRequire(import.meta.url);
  const dir = path.dirname(req.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm')) + path.sep;
  wasm.setWasmPaths(dir);
  const { registerWasmGradKernels } = await import('./wasm-grad-kernels.js');
  registerWasmGradKernels();
  if (!(await tf.setBackend('wasm')) || tf.getBackend() !== 'wasm') {
    throw new Error(`tf-backend: the wasm backend failed to start (binaries looked up in ${dir})`);
  }
  const simd = Boolean(await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'));
  const multithread = Boolean(await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'));
  let threads = 1;
  try {
    threads = wasm.getThreadsCount();
  } catch {
    threads = 1;
  }
  const binary = simd && multithread ? 'tfjs-backend-wasm-threaded-simd.wasm' : simd ? 'tfjs-backend-wasm-simd.wasm' : 'tfjs-backend-wasm.wasm';
  return {
    name: 'wasm',
    package: '@tensorflow/tfjs-backend-wasm',
    version: wasm.version_wasm,
    threads,
    simd,
    gpu: false,
    note: `${binary}; ${multithread ? 'multithreaded' : 'single thread (tfjs-backend-wasm has no threads under Node)'}; ` +
      'gradient kernels from stages/lib/wasm-grad-kernels',
  };
}

async function startCpu(tf: Tf): Promise<BackendInfo> {
  await withoutCpuBanner(async () => {
    if (!(await tf.setBackend('cpu'))) throw new Error("tf-backend: the 'cpu' backend failed to start");
    // The banner is printed on the first tensor written; trigger it while filtered.
    tf.tidy(() => { tf.scalar(0); });
  });
  return {
    name: 'cpu',
    package: '@tensorflow/tfjs-backend-cpu',
    version: tf.version_core,
    threads: 1,
    simd: false,
    gpu: false,
    note: 'plain JavaScript kernels: for inference and tests only, never for training',
  };
}

/**
 * Selects and initialises the tfjs backend. Order: explicit `choice` (unless
 * 'auto'), else env PIPE_TF_BACKEND, else auto = tfjs-node-gpu -> tfjs-node ->
 * wasm (+ our gradient kernels). An explicit choice that cannot start throws.
 */
export async function initBackend(
  choice?: BackendChoice,
  opts?: { log?: (line: string) => void },
): Promise<{ tf: Tf; info: BackendInfo }> {
  const log = opts?.log ?? defaultLog;
  const { choice: chosen, source } = resolveChoice(choice);
  const tf = await loadTf();

  let info: BackendInfo;
  if (chosen === 'cpu') {
    info = await startCpu(tf);
    log(`WARNING: using the stock 'cpu' backend (${source}); it is only for inference/tests ` +
      '(training on it is ~2000x slower than wasm)');
  } else if (chosen === 'wasm') {
    info = await startWasm(tf);
  } else if (chosen === 'tensorflow' || chosen === 'tensorflow-gpu') {
    const pkg = chosen === 'tensorflow-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
    const r = await tryNative(tf, pkg);
    if (typeof r === 'string') throw new Error(`tf-backend: backend '${chosen}' requested (${source}) but ${r}`);
    info = r;
  } else {
    const skipped: string[] = [];
    let found: BackendInfo | null = null;
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const) {
      const r = await tryNative(tf, pkg);
      if (typeof r !== 'string') {
        found = r;
        break;
      }
      skipped.push(r);
      log(`skipped: ${r}`);
    }
    if (found == null) {
      try {
        found = await startWasm(tf);
      } catch (e) {
        throw new Error(`tf-backend: no training backend could start. ${skipped.join('; ')}; wasm: ${firstLine(e)}`);
      }
    }
    info = found;
  }
  await tf.ready();
  const selection = source === 'default' ? 'auto' : source === 'argument' ? `argument '${chosen}'` : `${BACKEND_ENV}=${chosen}`;
  log(`using backend '${info.name}' (${info.package} ${info.version}, tfjs-core ${tf.version_core}; ` +
    `selection: ${selection}; threads=${info.threads}, simd=${info.simd}, gpu=${info.gpu})` +
    (info.note ? ` - ${info.note}` : ''));
  return { tf, info };
}

/** What a trained artifact records about the backend it ran on. */
export function backendRecord(info: BackendInfo) {
  return { name: info.name, package: info.package, version: info.version, threads: info.threads, simd: info.simd, gpu: info.gpu };
}

/**
 * Whether to train data-parallel on two threads: only on wasm (single-threaded under Node; the
 * native backends use every core already) and only when a second core exists.
 */
export function parallelTraining<R>(info: BackendInfo, threads: 'auto' | 1 | 2, recipe: R, log: (line: string) => void): { recipe: R; backend: string } | undefined {
  const cores = os.availableParallelism();
  const want = threads === 'auto' ? (info.name === 'wasm' && cores >= 2 ? 2 : 1) : threads;
  if (want < 2) return undefined;
  if (info.name !== 'wasm') {
    log(`threads: ${threads}: the ${info.name} backend uses its own threads; training on one`);
    return undefined;
  }
  log(`training data-parallel on 2 threads (two wasm instances, gradients averaged each step)`);
  return { recipe, backend: 'wasm' };
}
