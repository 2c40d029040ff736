// Pipeline/experiment files: resolution and diagnostics (file:line:col, path, expected, did-you-mean).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadExperiments } from '../runner/config.js';
import { DiagnosticError } from '../runner/diagnostics.js';
import type { StageType } from '../runner/stage-type.js';
import { pipeSync, tempDir, writeTree } from './helpers.js';

const trainType: StageType = {
  name: 'train',
  description: 'test stage with a strict schema',
  module: import.meta.url,
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      steps: { type: 'integer', minimum: 1, default: 10 },
      head: { enum: ['conv1x1', 'passthrough', 'dense'], default: 'conv1x1' },
      data: { type: 'string', 'x-path': true, default: 'data.bin' },
      box: {
        type: 'object',
        additionalProperties: false,
        default: {},
        properties: { sqrt_wh: { type: 'boolean', default: false }, relative: { type: 'boolean', default: false } },
      },
    },
  },
  async run() {},
};
const sourceType: StageType = { ...trainType, name: 'source', schema: { type: 'object', additionalProperties: true, properties: {} } };
const registry = new Map([trainType, sourceType].map((t) => [t.name, t]));

function load(dir: string, files: string[], cliSets?: string[]) {
  return loadExperiments(files.map((f) => join(dir, f)), { registry, projectRoot: dir, cliSets });
}

function diagnostics(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof DiagnosticError) return err.message.split('\n');
    throw err;
  }
  assert.fail('expected diagnostics');
}

const PIPELINE = `params:
  steps: 5
stages:
  source:
    uses: source
  train:
    uses: train
    needs: [source]
    with:
      steps: \${params.steps}
      data: ../data/train.bin
      box:
        sqrt_wh: false
`;

test('defaults, params, set, and paths relative to the file that set them', () => {
  const dir = tempDir();
  writeTree(dir, {
    'pipelines/p.yaml': PIPELINE,
    'experiments/e.yaml': 'extends: ../pipelines/p.yaml\nset:\n  train.box.sqrt_wh: true\n  params.steps: 7\n  train.data: local.bin\n',
  });
  const [p] = load(dir, ['pipelines/p.yaml']);
  const t = p!.stages.get('train')!;
  assert.deepEqual(t.settings, { steps: 5, head: 'conv1x1', data: join(dir, 'data/train.bin'), box: { sqrt_wh: false, relative: false } });
  assert.equal(t.keySettings.data, 'data/train.bin', 'keys hold project-relative paths');
  const [e] = load(dir, ['experiments/e.yaml']);
  const te = e!.stages.get('train')!;
  assert.equal(te.settings.steps, 7);
  assert.deepEqual(te.settings.box, { sqrt_wh: true, relative: false });
  assert.equal(te.settings.data, join(dir, 'experiments/local.bin'));
  assert.equal(e!.name, 'e');
  assert.deepEqual(e!.order, ['source', 'train']);
  const [c] = load(dir, ['experiments/e.yaml'], ['train.head=dense', 'train.steps=9']);
  assert.equal(c!.stages.get('train')!.settings.head, 'dense');
  assert.equal(c!.stages.get('train')!.settings.steps, 9, '--set values are parsed as YAML scalars');
});

test('every error in a file is reported at once, with file:line:col, path and did-you-mean', () => {
  const dir = tempDir();
  writeTree(dir, {
    'pipelines/p.yaml': PIPELINE,
    'experiments/bad.yaml': `extends: ../pipelines/p.yaml
set:
  train.box.sqrt_wx: true
  train.steps: many
  trian.steps: 3
  train.head: passthru
`,
  });
  const lines = diagnostics(() => load(dir, ['experiments/bad.yaml']));
  const f = join('experiments', 'bad.yaml');
  const has = (re: RegExp) => assert.ok(lines.some((l) => re.test(l)), `no line matches ${re}:\n${lines.join('\n')}`);
  has(new RegExp(`${f}:3:3: train\\.box\\.sqrt_wx: unknown setting \`sqrt_wx\` \\(did you mean \`sqrt_wh\`\\?\\)`));
  has(new RegExp(`${f}:4:16: train\\.steps: expected integer, got "many" \\(string\\)`));
  has(new RegExp(`${f}:5:3: trian\\.steps: unknown stage \`trian\` \\(did you mean \`train\`\\?\\)`));
  has(new RegExp(`${f}:6:15: train\\.head: expected one of "conv1x1" \\| "passthrough" \\| "dense", got "passthru" \\(string\\) \\(did you mean \`passthrough\`\\?\\)`));
  assert.equal(lines.length, 4);
});

test('pipeline errors: unknown stage keys, unknown type, missing needed stage, cycle', () => {
  const dir = tempDir();
  writeTree(dir, {
    'pipelines/bad.yaml': `stages:
  a:
    uses: source
    neds: [b]
  b:
    uses: trian
  c:
    uses: train
    needs: [missing]
  d:
    uses: source
    needs: [e]
  e:
    uses: source
    needs: [f]
  f:
    uses: source
    needs: [d]
`,
  });
  const lines = diagnostics(() => load(dir, ['pipelines/bad.yaml']));
  const f = join('pipelines', 'bad.yaml');
  const has = (re: RegExp) => assert.ok(lines.some((l) => re.test(l)), `no line matches ${re}:\n${lines.join('\n')}`);
  has(new RegExp(`${f}:4:5: a\\.neds: unknown key \`neds\` \\(did you mean \`needs\`\\?\\)`));
  has(new RegExp(`${f}:6:11: b\\.uses: unknown stage type \`trian\` \\(did you mean \`train\`\\?\\)`));
  has(new RegExp(`${f}:9:13: c\\.needs: needs unknown stage \`missing\``));
  has(new RegExp(`${f}:12:13: d\\.needs: dependency cycle: d → e → f → d`));
});

test('YAML syntax errors and matrix problems carry positions; the CLI exits 2 and runs nothing', () => {
  const dir = tempDir();
  writeTree(dir, {
    'p.yaml': 'stages:\n  a:\n    uses: command\n    with:\n      run: echo a: b: c\n',
    'm.yaml': 'extends: p2.yaml\nmatrix:\n  a.x: 3\n',
    'p2.yaml': 'stages:\n  a:\n    uses: command\n    with: {run: "true"}\n',
  });
  const r = pipeSync(['run', 'p.yaml', 'm.yaml', '--json'], { cwd: dir, env: { PIPE_STORE: join(dir, 'store') } });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /p\.yaml:5:\d+: YAML: /);
  assert.match(r.stderr, /m\.yaml:3:8: matrix\.a\.x: expected a non-empty list of values/);
  assert.match(r.stderr, /3 errors; nothing was run/);
  assert.equal(r.stdout, '');
});

test('experiments may swap a stage type, rewire needs, and require data that may be absent', () => {
  const dir = tempDir();
  writeTree(dir, {
    'pipelines/p.yaml': PIPELINE,
    'present.bin': 'x',
    'experiments/swap.yaml': `extends: ../pipelines/p.yaml
requires: [../present.bin, ../absent/imdb.mat]
set:
  train.needs: []
  source.uses: train
  source.steps: 3
`,
    'experiments/bad-swap.yaml': 'extends: ../pipelines/p.yaml\nset:\n  source.uses: trian\n  train.needs: [nope]\n',
  });
  const [e] = load(dir, ['experiments/swap.yaml']);
  assert.deepEqual(e!.stages.get('train')!.needs, []);
  assert.equal(e!.stages.get('source')!.type.name, 'train');
  assert.equal(e!.stages.get('source')!.settings.steps, 3, 'settings validated against the new type, defaults filled');
  assert.deepEqual(e!.unavailable, [join(dir, 'absent/imdb.mat')]);
  const lines = diagnostics(() => load(dir, ['experiments/bad-swap.yaml']));
  assert.ok(lines.some((l) => /bad-swap\.yaml:3:16: source\.uses: unknown stage type `trian` \(did you mean `train`\?\)/.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => /bad-swap\.yaml:4:16: train\.needs: needs unknown stage `nope`/.test(l)), lines.join('\n'));
});
