// Finds the cached grid model of an experiment for `pipe detect` and `pipe serve`: the output
// of its train-grid-model stage (or the stage named by --stage) under the current settings.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Store } from '../artifacts/store.js';
import type { Experiment } from '../runner/config.js';
import { planExperiments } from '../runner/executor.js';
import type { GridLayout } from '../stages/lib/grid-layout.js';
import { UsageError } from './errors.js';

export interface ModelArtifact {
  experiment: string;
  stage: string;
  /** Directory holding model.json + weights.bin. */
  modelDir: string;
  layout: GridLayout;
  key: string;
}

export async function findGridModel(experiments: Experiment[], file: string, store: Store, projectRoot: string, stageName?: string): Promise<ModelArtifact> {
  if (experiments.length !== 1) {
    throw new UsageError(`${file} defines ${experiments.length} experiments (a matrix); pick one with --experiment NAME: ${experiments.map((e) => e.name).join(', ')}`);
  }
  const exp = experiments[0]!;
  const candidates = [...exp.stages.values()].filter((s) => (stageName ? s.name === stageName : s.type.name === 'train-grid-model'));
  if (candidates.length === 0) {
    throw new UsageError(stageName ? `no stage \`${stageName}\` in ${file}` : `${file} has no train-grid-model stage; name one with --stage`);
  }
  if (candidates.length > 1) throw new UsageError(`${file} has several grid models (${candidates.map((c) => c.name).join(', ')}); pick one with --stage`);
  const stage = candidates[0]!;
  const plan = await planExperiments([exp], store, projectRoot);
  const entry = plan.find((p) => p.stage === stage.name)!;
  if (!entry.manifest) {
    throw new UsageError(`the model of ${exp.name}/${stage.name} is not cached for the current settings; build it with: pipe run ${file}`);
  }
  const dir = store.treePath(entry.manifest.outputs.tree);
  if (!existsSync(join(dir, 'layout.json'))) throw new UsageError(`${exp.name}/${stage.name} is not a grid model (no layout.json in its outputs)`);
  return {
    experiment: exp.name,
    stage: stage.name,
    modelDir: join(dir, 'model'),
    layout: JSON.parse(readFileSync(join(dir, 'layout.json'), 'utf8')),
    key: entry.manifest.key,
  };
}
