// The study end to end: the sweep shares its common stages, the quickstart trains a model
// that clearly beats an untrained one, and `pipe detect` runs the cached model on photos.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pipeSync, repoRoot, sharedData, summary, tempDir, writeTree } from './helpers.js';
import { quickstartStore } from './fixtures.js';

const hasUtk = existsSync(join(sharedData, 'utkface', 'images'));

test('the sweep experiments/*.yaml shares every common stage (cold store plan)', () => {
  const store = tempDir('pipe-sweep-');
  const r = pipeSync(['plan', 'experiments/*.yaml', '--json'], { cwd: repoRoot, env: { PIPE_STORE: store } });
  assert.equal(r.code, 0, r.stderr);
  const stages = r.json.filter((j) => j.type === 'stage');
  const experiments = new Set(stages.map((s) => s.experiment));
  // quickstart + 8 ablations + 12 seed combinations + seed + real-faces, 10 stages each
  assert.equal(experiments.size, 23);
  assert.equal(stages.length, 230);
  const run = (stage: string) => stages.filter((s) => s.stage === stage && s.action === 'run' && !s.unavailable).length;
  const datasets = hasUtk ? 2 : 1; // synthesized, and composed from UTKFace when present
  for (const data of ['source', 'extract-metadata', 'filter', 'letterbox', 'shard', 'crop', 'crop-age']) {
    assert.equal(run(data), datasets, `${data} runs once per dataset`);
  }
  // quickstart, 7 one-setting ablations + pretrain, 9 seed combinations not equal to an ablation, real faces
  assert.equal(run('train-grid-model'), 1 + 8 + 9 + (hasUtk ? 1 : 0));
  assert.equal(run('crop-gender'), datasets + 1, 'pretrain-backbone trains its own gender classifier');
  const s = summary(r);
  assert.equal(s.run, hasUtk ? 55 : 45);
  assert.equal(s.unavailable, hasUtk ? 10 : 20, 'seed.yaml (and real-faces without shared data) are unavailable, not failed');
  const shared = stages.find((j) => j.experiment === 'sqrt-wh' && j.stage === 'shard');
  assert.equal(shared.action, 'cached');
  assert.match(shared.reasons[0], /computed once, by experiment `[a-z-]+`/);
});

test('the quickstart model detects faces clearly better than an untrained one', () => {
  const { file, env } = quickstartStore();
  const show = (extra: string[]) => {
    const r = pipeSync(['show', file, 'evaluate', '--json', ...extra], { cwd: repoRoot, env });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return r.json[0].metrics;
  };
  const trained = show([]);
  const untrainedRun = pipeSync(['run', file, '--json', '--set', 'train-grid-model.steps=1'], { cwd: repoRoot, env });
  assert.equal(untrainedRun.code, 0, untrainedRun.stderr);
  // Only the model and its evaluation depend on `steps` (they may be cached from an earlier npm test).
  const ran = untrainedRun.json.filter((j) => j.type === 'stage' && j.status === 'ran').map((j) => j.stage).sort();
  assert.ok(ran.length === 0 || ran.join() === 'evaluate,train-grid-model', `reran: ${ran.join(', ')}`);
  const untrained = show(['--set', 'train-grid-model.steps=1']);
  assert.ok(trained.iou > untrained.iou + 0.3, `trained IoU ${trained.iou} vs untrained ${untrained.iou}`);
  assert.ok(trained.ap50 > untrained.ap50 + 0.3, `trained AP50 ${trained.ap50} vs untrained ${untrained.ap50}`);
  assert.ok(trained.gender_acc > untrained.gender_acc + 0.2, `gender ${trained.gender_acc} vs ${untrained.gender_acc}`);
  // every metric the report promises is there
  for (const k of ['iou', 'gender_acc', 'age_acc', 'gender_acc_detected', 'age_acc_detected', 'ap50', 'crop_gender_acc', 'crop_age_acc', 'single_model_img_per_s', 'two_stage_img_per_s', 'backend']) {
    assert.ok(k in trained, `metrics.json has ${k}`);
  }
  assert.match(trained.backend, /wasm|tensorflow/);
});

test('pipe detect runs the cached model on real photos; an uncached model names the command', (t) => {
  const dlib = join(sharedData, 'dlib-faces');
  const { file, env } = quickstartStore();
  const cold = pipeSync(['detect', '--experiment', file, join(repoRoot, 'README.md'), '--out', tempDir()], { cwd: repoRoot, env: { PIPE_STORE: tempDir() } });
  assert.equal(cold.code, 2);
  assert.match(cold.stderr, /not cached for the current settings; build it with: pipe run .*quickstart\.yaml/);
  if (!existsSync(dlib)) {
    t.skip(`../shared/data/dlib-faces is absent: detect on real photos not tried`);
    return;
  }
  const out = tempDir('pipe-detect-');
  const r = pipeSync(['detect', '--experiment', file, dlib, '--out', out], { cwd: repoRoot, env });
  assert.equal(r.code, 0, r.stderr);
  const result = JSON.parse(readFileSync(join(out, 'detections.json'), 'utf8'));
  const photos = readdirSync(dlib).filter((f) => /\.jpe?g$/i.test(f));
  assert.equal(result.images.length, photos.length);
  for (const img of result.images) {
    assert.ok(existsSync(img.annotated), `annotated image for ${img.image}`);
    for (const d of img.detections) {
      assert.ok(d.box[0] >= 0 && d.box[1] >= 0 && d.box[2] <= img.width && d.box[3] <= img.height, 'boxes in original pixels, inside the image');
      assert.ok(d.confidence > 0.7);
      assert.ok(['female', 'male'].includes(d.gender));
      assert.ok(Math.abs(Object.values(d.age_probs as Record<string, number>).reduce((a, b) => a + b, 0) - 1) < 1e-5);
    }
  }
});

test('a model records how its data was letterboxed, so detect and the browser pad new images the same way', () => {
  const dir = tempDir('pipe-centre-');
  writeTree(dir, {
    'p.yaml': `stages:
  source: {uses: synthesize-imdb-wiki, with: {count: 40, bad_rows: false}}
  extract-metadata: {uses: extract-metadata, needs: [source]}
  filter: {uses: filter, needs: [extract-metadata]}
  letterbox: {uses: letterbox, needs: [filter], with: {size: 32, padding: centre}}
  shard: {uses: shard, needs: [letterbox], with: {count: 4}}
  train-grid-model: {uses: train-grid-model, needs: [shard], with: {steps: 2, batch_size: 4, filters: [[4], [4]]}}
`,
  });
  const env = { PIPE_STORE: join(dir, 'store') };
  const r = pipeSync(['run', 'p.yaml', '--json'], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const show = pipeSync(['show', 'p.yaml', 'train-grid-model', '--json'], { cwd: dir, env });
  const layout = JSON.parse(readFileSync(show.json[0].outputs['layout.json'], 'utf8'));
  assert.equal(layout.input.padding, 'centre');
  assert.equal(layout.inputSize, 32);
  assert.equal(layout.grid, 8);
});
