// The runner through the real CLI: caching, early cutoff, input edits, sweeps, crashes,
// concurrent processes on one store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pipeAsync, pipeSync, statuses, summary, tempDir, writeTree } from './helpers.js';

/** A three-stage pipeline: prepare (reads data.txt) → count → report. */
function threeStageProject(): string {
  const dir = tempDir();
  writeTree(dir, {
    'data.txt': 'hello world\n',
    'counter.log': '',
    'pipelines/three.yaml': `
params:
  greeting: hi
stages:
  prepare:
    uses: command
    with:
      # case is a setting whose value does not change the bytes written for lower-case 'x'
      run: echo prepare >> "$COUNTER"; tr a-z A-Z < data.txt > "$PIPE_OUT/upper.txt"
      inputs: [../data.txt]
      cwd: ..
      padding: 0
  count:
    uses: command
    needs: [prepare]
    with:
      run: |
        echo count >> "$COUNTER"
        wc -c < "$PIPE_IN/prepare/upper.txt" | tr -d ' ' > "$PIPE_OUT/count.txt"
        echo "{\\"chars\\": $(cat "$PIPE_OUT/count.txt")}" > "$PIPE_OUT/metrics.json"
  report:
    uses: command
    needs: [count]
    with:
      run: echo report >> "$COUNTER"; echo "$PIPE_PARAM_GREETING $(cat "$PIPE_IN/count/count.txt")" > "$PIPE_OUT/report.txt"
      greeting: \${params.greeting}
`,
  });
  return dir;
}

const envFor = (dir: string) => ({ COUNTER: join(dir, 'counter.log'), PIPE_STORE: join(dir, 'store') });
const ranStages = (r: ReturnType<typeof pipeSync>) =>
  Object.entries(statuses(r))
    .filter(([, s]) => s === 'ran')
    .map(([k]) => k.split('/')[1])
    .sort();

test('three-stage pipeline: caching, setting changes, early cutoff, input edits', () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  const run = (...extra: string[]) => pipeSync(['run', 'pipelines/three.yaml', '--json', ...extra], { cwd: dir, env });

  const first = run();
  assert.equal(first.code, 0, first.stderr);
  assert.deepEqual(ranStages(first), ['count', 'prepare', 'report']);
  assert.deepEqual(summary(first), { type: 'summary', ran: 3, cached: 0, failed: 0, skipped: 0, seconds: summary(first).seconds, aborted: false });

  const second = run();
  assert.equal(second.code, 0, second.stderr);
  assert.equal(summary(second).ran, 0);
  assert.equal(summary(second).cached, 3);
  assert.equal(readFileSync(env.COUNTER, 'utf8').trim().split('\n').length, 3, 'commands ran exactly once each');

  // A setting of the last stage: only it reruns.
  const third = run('--set', 'report.greeting=hello');
  assert.deepEqual(ranStages(third), ['report']);
  const show = pipeSync(['show', 'pipelines/three.yaml', 'report', '--json', '--set', 'report.greeting=hello'], { cwd: dir, env });
  assert.equal(show.code, 0, show.stderr);
  const shown = show.json[0];
  assert.equal(readFileSync(shown.outputs['report.txt'], 'utf8'), 'hello 12\n');

  // A setting of the first stage that leaves its output bytes equal: early cutoff.
  const fourth = run('--set', 'prepare.padding=1');
  assert.equal(fourth.code, 0, fourth.stderr);
  assert.deepEqual(ranStages(fourth), ['prepare']);
  assert.equal(statuses(fourth)['three/count'], 'cached');
  assert.equal(statuses(fourth)['three/report'], 'cached');

  // Editing the input file reruns what reads it, and what its new output feeds.
  writeFileSync(join(dir, 'data.txt'), 'hello brave new world\n');
  const fifth = run();
  assert.deepEqual(ranStages(fifth), ['count', 'prepare', 'report']);
  const again = run();
  assert.equal(summary(again).ran, 0);

  // plan explains why, by dotted setting path and input path.
  const plan = pipeSync(['plan', 'pipelines/three.yaml', '--json', '--set', 'count.mode=slow'], { cwd: dir, env });
  const byStage = Object.fromEntries(plan.json.filter((j) => j.type === 'stage').map((j) => [j.stage, j]));
  assert.equal(byStage.prepare.action, 'cached');
  assert.equal(byStage.count.action, 'run');
  assert.ok(byStage.count.reasons.some((r: string) => r.includes('setting mode') && r.includes('"slow"')), byStage.count.reasons.join('; '));
  assert.equal(byStage.report.action, 'run');
  assert.ok(byStage.report.reasons.some((r: string) => r.includes('upstream `count` will run')));
  assert.deepEqual(plan.json.at(-1), { type: 'summary', run: 2, cached: 1 });

  writeFileSync(join(dir, 'data.txt'), 'changed\n');
  const plan2 = pipeSync(['plan', 'pipelines/three.yaml', '--json'], { cwd: dir, env });
  const prep = plan2.json.find((j) => j.stage === 'prepare');
  assert.equal(prep.action, 'run');
  assert.ok(prep.reasons.includes('input changed: data.txt'), prep.reasons.join('; '));
});

test('a two-experiment sweep sharing a prefix runs the prefix once', () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  writeTree(dir, {
    'experiments/a.yaml': 'extends: ../pipelines/three.yaml\nset:\n  report.greeting: hello\n',
    'experiments/b.yaml': 'extends: ../pipelines/three.yaml\nset:\n  params.greeting: bonjour\n',
  });
  const r = pipeSync(['run', 'experiments/*.yaml', '--json'], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr);
  const st = statuses(r);
  assert.equal([st['a/prepare'], st['b/prepare']].sort().join(','), 'cached,ran');
  assert.equal([st['a/count'], st['b/count']].sort().join(','), 'cached,ran');
  assert.equal(st['a/report'], 'ran');
  assert.equal(st['b/report'], 'ran');
  assert.equal(summary(r).ran, 4);
  const lines = readFileSync(env.COUNTER, 'utf8').trim().split('\n').sort();
  assert.deepEqual(lines, ['count', 'prepare', 'report', 'report']);
  // compare reads the cache only and lists the settings that differ
  const cmp = pipeSync(['compare', 'experiments/*.yaml', '--json'], { cwd: dir, env });
  assert.equal(cmp.code, 0, cmp.stderr);
  assert.deepEqual(cmp.json.map((j) => j.settings), [{ 'report.greeting': 'hello' }, { 'report.greeting': 'bonjour' }]);
  assert.equal(cmp.json[0].metrics.count.chars, 12);
});

test('a matrix expands into readable experiment names', () => {
  const dir = threeStageProject();
  writeTree(dir, { 'experiments/m.yaml': 'extends: ../pipelines/three.yaml\nmatrix:\n  report.greeting: [a, b]\n  count.seed: [1, 2]\n' });
  const r = pipeSync(['plan', 'experiments/m.yaml', '--json'], { cwd: dir, env: envFor(dir) });
  assert.equal(r.code, 0, r.stderr);
  const names = [...new Set(r.json.filter((j) => j.type === 'stage').map((j) => j.experiment))];
  assert.deepEqual(names, ['m@greeting=a,seed=1', 'm@greeting=a,seed=2', 'm@greeting=b,seed=1', 'm@greeting=b,seed=2']);
  // prepare is shared by all four: it runs once
  assert.equal(r.json.filter((j) => j.stage === 'prepare' && j.action === 'run').length, 1);
  assert.equal(r.json.filter((j) => j.stage === 'count' && j.action === 'run').length, 2);
});

test('a failing stage publishes nothing, its dependents are skipped, and the exit code is non-zero', () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  const r = pipeSync(['run', 'pipelines/three.yaml', '--json', '--set', 'count.run=echo boom >&2; exit 3'], { cwd: dir, env });
  assert.equal(r.code, 1);
  const st = statuses(r);
  assert.equal(st['three/count'], 'failed');
  assert.equal(st['three/report'], 'skipped');
  const failed = r.json.find((j) => j.stage === 'count');
  assert.match(failed.error, /exited with code 3/);
  assert.match(failed.error, /boom/);
  assert.equal(readdirSync(join(env.PIPE_STORE, 'tmp')).length, 0, 'work dirs are removed');
});

test('a stage killed with SIGKILL leaves no artifact; the next run succeeds', async () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  const pidFile = join(dir, 'stage.pid');
  // Kill the stage's process: the stage fails and nothing is published.
  const slow = `echo $$ > ${pidFile}; echo partial > "$PIPE_OUT/count.txt"; sleep 30`;
  const a = pipeAsync(['run', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow}`], { cwd: dir, env });
  await waitFor(() => existsSync(pidFile));
  process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
  const ra = await a.done;
  assert.equal(statuses(ra)['three/count'], 'failed');
  assert.match(ra.json.find((j) => j.stage === 'count').error, /signal SIGKILL/);

  // Kill the pipe process itself mid-stage: tmp debris and a stale lock remain.
  const flag = join(dir, 'slow.flag');
  writeFileSync(flag, '');
  const slow2 = `echo $$ > ${pidFile}.2; echo partial > "$PIPE_OUT/count.txt"; if [ -e ${flag} ]; then sleep 30; fi; echo done > "$PIPE_OUT/count.txt"`;
  const b = pipeAsync(['run', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow2}`], { cwd: dir, env });
  await waitFor(() => existsSync(`${pidFile}.2`));
  b.child.kill('SIGKILL');
  await b.done;
  process.kill(Number(readFileSync(`${pidFile}.2`, 'utf8')), 'SIGKILL');
  assert.equal(readdirSync(join(env.PIPE_STORE, 'locks')).length, 1, 'the dead run left its lock');
  assert.ok(readdirSync(join(env.PIPE_STORE, 'tmp')).length >= 1, 'the dead run left its work dir');
  // Nothing the dead runs wrote is visible as a result:
  const plan = pipeSync(['plan', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow2}`], { cwd: dir, env });
  assert.equal(plan.json.find((j) => j.stage === 'count').action, 'run');

  // The next run of the same key takes over the stale lock, sweeps the debris and succeeds.
  rmSync(flag);
  const c = pipeSync(['run', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow2}`], { cwd: dir, env });
  assert.equal(c.code, 0, c.stderr);
  assert.equal(statuses(c)['three/count'], 'ran');
  assert.equal(readdirSync(join(env.PIPE_STORE, 'tmp')).length, 0);
  assert.equal(readdirSync(join(env.PIPE_STORE, 'locks')).length, 0);
  const show = pipeSync(['show', 'pipelines/three.yaml', 'count', '--json', '--set', `count.run=${slow2}`], { cwd: dir, env });
  assert.equal(readFileSync(show.json[0].outputs['count.txt'], 'utf8'), 'done\n');
});

test('Ctrl-C stops running stages, removes their work and publishes nothing', async () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  const pidFile = join(dir, 'child.pid');
  const slow = `echo $$ > ${pidFile}; echo partial > "$PIPE_OUT/count.txt"; sleep 30`;
  const a = pipeAsync(['run', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow}`], { cwd: dir, env });
  await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
  const t0 = Date.now();
  a.child.kill('SIGINT');
  const r = await a.done;
  assert.equal(r.code, 130);
  assert.ok(Date.now() - t0 < 10_000, 'stopped promptly, without waiting for the 30 s command');
  assert.equal(statuses(r)['three/count'], 'failed');
  assert.equal(r.json.find((j) => j.stage === 'count').error, 'aborted');
  assert.equal(summary(r).aborted, true);
  let childAlive = true;
  try {
    process.kill(Number(readFileSync(pidFile, 'utf8')), 0);
  } catch {
    childAlive = false;
  }
  assert.equal(childAlive, false, 'the stage\'s command was killed');
  assert.equal(readdirSync(join(env.PIPE_STORE, 'tmp')).length, 0);
  assert.equal(readdirSync(join(env.PIPE_STORE, 'locks')).length, 0);
  const plan = pipeSync(['plan', 'pipelines/three.yaml', '--json', '--set', `count.run=${slow}`], { cwd: dir, env });
  assert.equal(plan.json.find((j) => j.stage === 'count').action, 'run', 'nothing was published for the interrupted stage');
  assert.equal(plan.json.find((j) => j.stage === 'prepare').action, 'cached', 'what finished before Ctrl-C is kept');
});

test('two concurrent pipe run processes on one store run each key once', async () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  // Slow stages so that the two processes really overlap.
  const sets = ['--set', 'prepare.run=echo prepare >> "$COUNTER"; sleep 1; tr a-z A-Z < data.txt > "$PIPE_OUT/upper.txt"'];
  const a = pipeAsync(['run', 'pipelines/three.yaml', '--json', ...sets], { cwd: dir, env });
  const b = pipeAsync(['run', 'pipelines/three.yaml', '--json', ...sets], { cwd: dir, env });
  const [ra, rb] = await Promise.all([a.done, b.done]);
  assert.equal(ra.code, 0, ra.stderr);
  assert.equal(rb.code, 0, rb.stderr);
  const lines = readFileSync(env.COUNTER, 'utf8').trim().split('\n').sort();
  assert.deepEqual(lines, ['count', 'prepare', 'report'], 'each key ran exactly once across both processes');
  assert.equal(summary(ra).ran + summary(rb).ran, 3);
  assert.equal(summary(ra).cached + summary(rb).cached, 3);
});

test('verify reports a corrupted artifact; gc removes what no experiment reaches', () => {
  const dir = threeStageProject();
  const env = envFor(dir);
  assert.equal(pipeSync(['run', 'pipelines/three.yaml', '--json'], { cwd: dir, env }).code, 0);
  assert.equal(pipeSync(['run', 'pipelines/three.yaml', '--json', '--set', 'report.greeting=yo'], { cwd: dir, env }).code, 0);
  const ok = pipeSync(['verify'], { cwd: dir, env });
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  // Corrupt one output in place (root ignores the read-only bit).
  const show = pipeSync(['show', 'pipelines/three.yaml', 'count', '--json'], { cwd: dir, env });
  const file = show.json[0].outputs['count.txt'];
  writeFileSync(file, '999\n');
  const bad = pipeSync(['verify'], { cwd: dir, env });
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /CORRUPT three\/count key [0-9a-f]{64}: .*count\.txt \(bytes no longer match/);

  const dry = pipeSync(['gc', 'pipelines/three.yaml', '--dry-run'], { cwd: dir, env });
  assert.match(dry.stdout, /would remove 1 artifacts/);
  const gc = pipeSync(['gc', 'pipelines/three.yaml'], { cwd: dir, env });
  assert.match(gc.stdout, /removed 1 artifacts/);
  const after = pipeSync(['run', 'pipelines/three.yaml', '--json'], { cwd: dir, env });
  assert.equal(summary(after).ran, 0, 'what the pipeline reaches was kept');
  const yo = pipeSync(['plan', 'pipelines/three.yaml', '--json', '--set', 'report.greeting=yo'], { cwd: dir, env });
  assert.equal(yo.json.find((j) => j.stage === 'report').action, 'run', 'the unreached artifact is gone');
});

test('dag prints mermaid and dot', () => {
  const dir = threeStageProject();
  const m = pipeSync(['dag', 'pipelines/three.yaml'], { cwd: dir, env: envFor(dir) });
  assert.match(m.stdout, /^flowchart LR/);
  assert.match(m.stdout, /three__prepare --> three__count/);
  const d = pipeSync(['dag', 'pipelines/three.yaml', '--format', 'dot'], { cwd: dir, env: envFor(dir) });
  assert.match(d.stdout, /three__count -> three__report;/);
});

async function waitFor(cond: () => boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}
