// Runner overhead benchmark (`npm run bench:runner`):
//   1. no-op `pipe run` on a fully cached sweep of 8 experiments x 8 stages (whole CLI process);
//   2. `pipe plan` of a stage whose external input is a 1 GB file, after its first hash, and the
//      in-process status check of that input alone;
//   3. beside them, the same 8x8 DAG under `snakemake -n`, measured in the same run.
// The last line printed is one JSON object.
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { StatCache } from '../artifacts/stat-cache.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const pipe = join(repo, 'bin', 'pipe.js');
const work = mkdtempSync(join(tmpdir(), 'pipe-bench-'));
const EXPERIMENTS = 8;
const STAGES = 8;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function timeCommand(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd, env: { ...process.env, CI: '1', ...env }, encoding: 'utf8' });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return s;
}

// ---- 1. the 8x8 sweep ------------------------------------------------------------------
const sweep = join(work, 'sweep');
mkdirSync(join(sweep, 'pipelines'), { recursive: true });
mkdirSync(join(sweep, 'experiments'), { recursive: true });
let pipeline = 'params:\n  variant: 0\nstages:\n';
for (let s = 0; s < STAGES; s++) {
  pipeline += `  s${s}:\n    uses: command\n${s ? `    needs: [s${s - 1}]\n` : ''}    with:\n      run: echo "${s} $PIPE_PARAM_VARIANT" > "$PIPE_OUT/out.txt"\n      variant: \${params.variant}\n`;
}
writeFileSync(join(sweep, 'pipelines/chain.yaml'), pipeline);
for (let e = 0; e < EXPERIMENTS; e++) {
  writeFileSync(join(sweep, `experiments/e${e}.yaml`), `extends: ../pipelines/chain.yaml\nset:\n  params.variant: ${e}\n`);
}
const env = { PIPE_STORE: join(sweep, '.pipe') };
const cold = timeCommand(process.execPath, [pipe, 'run', 'experiments/*.yaml', '--json'], sweep, env);
const noop: number[] = [];
for (let i = 0; i < 7; i++) noop.push(timeCommand(process.execPath, [pipe, 'run', 'experiments/*.yaml', '--json'], sweep, env));
const nodeBare: number[] = [];
for (let i = 0; i < 5; i++) nodeBare.push(timeCommand(process.execPath, ['-e', '0'], sweep));
console.log(`8x8 sweep: cold run ${cold.toFixed(2)} s; no-op run median ${median(noop).toFixed(3)} s (node startup alone ${median(nodeBare).toFixed(3)} s)`);

// ---- 2. 1 GB external input ---------------------------------------------------------------
const big = join(work, 'big');
mkdirSync(big, { recursive: true });
const bigFile = join(big, 'data.bin');
const fd = openSync(bigFile, 'w');
const chunk = Buffer.alloc(1 << 20);
for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
for (let i = 0; i < 1024; i++) {
  chunk.writeUInt32LE(i, 0);
  writeSync(fd, chunk);
}
closeSync(fd);
// Let the file age past the racy-timestamp window so its first digest is remembered.
const old = new Date(Date.now() - 10_000);
execFileSync('touch', ['-d', old.toISOString(), bigFile]);
writeFileSync(join(big, 'pipe.yaml'), 'stages:\n  read:\n    uses: command\n    with:\n      run: wc -c < data.bin > "$PIPE_OUT/n"\n      inputs: [data.bin]\n');
const benv = { PIPE_STORE: join(big, '.pipe') };
const firstPlan = timeCommand(process.execPath, [pipe, 'plan', 'pipe.yaml', '--json'], big, benv);
const plans: number[] = [];
for (let i = 0; i < 7; i++) plans.push(timeCommand(process.execPath, [pipe, 'plan', 'pipe.yaml', '--json'], big, benv));
// The status check itself, in process: stat + cache lookup.
const statusTimes: number[] = [];
for (let i = 0; i < 20; i++) {
  const cache = new StatCache(join(big, '.pipe', 'stat-cache.json'));
  const t0 = process.hrtime.bigint();
  await cache.digestInput(bigFile);
  statusTimes.push(Number(process.hrtime.bigint() - t0) / 1e9);
  if (cache.bytesHashed !== 0) throw new Error('unchanged input was read again');
}
// Raw hashing speed of a fresh read (page cache warm, like the first plan above).
const fresh = new StatCache(join(work, 'fresh-cache.json'));
const t0 = process.hrtime.bigint();
await fresh.digestFile(bigFile);
const hashS = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(`1 GB input: first plan ${firstPlan.toFixed(2)} s (hashes it); unchanged plan median ${median(plans).toFixed(3)} s (whole CLI process); status check ${(median(statusTimes) * 1000).toFixed(2)} ms; hashing ${(1 / hashS).toFixed(2)} GB/s`);

// ---- 3. snakemake -n on the same DAG ------------------------------------------------------
let snakemakeS: number | null = null;
if (spawnSync('sh', ['-c', 'command -v snakemake']).status !== 0) {
  console.log('installing Debian snakemake for the reference measurement…');
  spawnSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snakemake'], { stdio: 'inherit' });
}
if (spawnSync('sh', ['-c', 'command -v snakemake']).status === 0) {
  const sm = join(work, 'snake');
  mkdirSync(sm);
  let snakefile = `rule all:\n    input: expand("e{e}/s${STAGES - 1}.txt", e=range(${EXPERIMENTS}))\n\n`;
  for (let s = 0; s < STAGES; s++) {
    snakefile += `rule s${s}:\n${s ? `    input: "e{e}/s${s - 1}.txt"\n` : ''}    output: "e{e}/s${s}.txt"\n    shell: "echo ${s} {wildcards.e} > {output}"\n\n`;
  }
  writeFileSync(join(sm, 'Snakefile'), snakefile);
  timeCommand('snakemake', ['-c1', '-q'], sm);
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) runs.push(timeCommand('snakemake', ['-n', '-c1', '-q'], sm));
  snakemakeS = median(runs);
  console.log(`snakemake -n on the same 8x8 DAG (all outputs present): median ${snakemakeS.toFixed(3)} s`);
} else {
  console.log('snakemake is not available: reference not measured');
}

const result = {
  noop_run_s: round(median(noop)),
  plan_unchanged_1gb_s: round(median(plans)),
  status_unchanged_1gb_ms: round(median(statusTimes) * 1000),
  first_hash_gb_per_s: round(1 / hashS),
  snakemake_dry_run_s: snakemakeS === null ? null : round(snakemakeS),
  noop_vs_snakemake: snakemakeS === null ? null : round(median(noop) / snakemakeS),
};
console.log(`floors: no-op run < 0.5 s: ${result.noop_run_s < 0.5 ? 'met' : 'NOT met'}; unchanged 1 GB status < 50 ms: ${result.status_unchanged_1gb_ms < 50 ? 'met' : 'NOT met'}`);
rmSync(work, { recursive: true, force: true });
console.log(JSON.stringify(result));

function round(x: number): number {
  return Math.round(x * 10000) / 10000;
}
