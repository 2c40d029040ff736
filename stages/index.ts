// Every stage type `uses:` can name. Stage modules are cheap to import (heavy packages are
// imported inside run()), so loading this list costs milliseconds.
import type { StageType } from '../runner/stage-type.js';
import command from './command.js';
import synthesizeImdbWiki from './synthesize-imdb-wiki.js';
import composeImdbWiki from './compose-imdb-wiki.js';
import extractMetadata from './extract-metadata.js';
import filter from './filter.js';
import letterbox from './letterbox.js';
import crop from './crop.js';
import shard from './shard.js';
import trainGridModel from './train-grid-model.js';
import trainCropBaselines from './train-crop-baselines.js';
import evaluate from './evaluate.js';

export const stageTypes: StageType[] = [command, synthesizeImdbWiki, composeImdbWiki, extractMetadata, filter, letterbox, crop, shard, trainGridModel, trainCropBaselines, evaluate];

export function stageRegistry(): Map<string, StageType> {
  return new Map(stageTypes.map((t) => [t.name, t]));
}
