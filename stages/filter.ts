// filter: keep the rows the face study trains on, by the seed's rules in the seed's order; a
// dropped row is counted under the first rule it breaks:
//   face_score     face_score finite and >= min_face_score
//   second_face    second_face_score NaN (only when single_face)
//   unknown_label  gender and age known
//   age_range      min_age <= age < max_age
//   min_side       image at least min_side px on each side
//   box_outside    face box inside the image
//   undecodable    image present and passed extract-metadata's check (image_problem null)
// Input: the needed extract-metadata stage's rows.jsonl. Output: rows.jsonl (the kept rows,
// unchanged, same order) and metrics.json {rows_in, kept, dropped: {rule: count}, bad_lines}
// (seconds in the returned metrics).

import * as path from 'node:path';
import type { StageType } from '../runner/stage-type.js';

export interface FilterStageSettings {
  min_face_score: number;
  min_side: number;
  min_age: number;
  max_age: number;
  single_face: boolean;
  strict: boolean;
}

export default {
  name: 'filter',
  description: 'Drop IMDB-WIKI rows by the seed\'s rules (face score, second face, labels, age, size, box, decodable), counted per rule',
  module: import.meta.url,
  resources: { cpu: 1 },
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      min_face_score: { type: 'number', default: 1.5, description: 'Smallest face_score kept (the detector\'s confidence; -Inf means no face)' },
      min_side: { type: 'integer', minimum: 1, default: 150, description: 'Smallest image width and height in pixels' },
      min_age: { type: 'integer', default: 10, description: 'Youngest age kept (inclusive)' },
      max_age: { type: 'integer', default: 80, description: 'Age limit (exclusive): rows with age >= max_age are dropped' },
      single_face: { type: 'boolean', default: true, description: 'Drop photos where a second face was detected (second_face_score not NaN)' },
      strict: { type: 'boolean', default: false, description: 'Fail on a malformed line of the input rows instead of counting and skipping it' },
    },
  },
  async run(ctx) {
    const t0 = performance.now();
    const s = ctx.settings;
    if (s.min_age >= s.max_age) throw new Error(`filter: min_age (${s.min_age}) must be below max_age (${s.max_age})`);
    const { BadItems, FILTER_RULES, JsonlWriter, firstFailedRule, readJsonl, singleInput, writeMetrics } = await import('./lib/face-rows.js');
    type Row = import('./lib/face-rows.js').MetaImageRow;
    const inFile = path.join(singleInput(ctx.inputs, 'filter', 'extract-metadata'), 'rows.jsonl');
    const dropped = Object.fromEntries(FILTER_RULES.map((r) => [r, 0])) as Record<(typeof FILTER_RULES)[number], number>;
    const bad = new BadItems('filter', (l) => ctx.log(l), s.strict);
    let rowsIn = 0;
    const out = await JsonlWriter.open(path.join(ctx.outDir, 'rows.jsonl'));
    try {
      for await (const l of readJsonl<Row>(inFile, ctx.signal)) {
        if (l.error !== undefined || typeof l.value !== 'object' || l.value === null || typeof l.value.key !== 'string') {
          bad.report('bad_line', `${inFile}:${l.line}`, l.error ?? 'not a row object with a key');
          continue;
        }
        rowsIn++;
        const rule = firstFailedRule(l.value, s);
        if (rule) dropped[rule]++;
        else await out.write(l.value);
        if (rowsIn % 1000 === 0) ctx.progress(rowsIn, undefined, 'rows');
      }
    } finally {
      await out.close();
    }
    bad.finish();
    ctx.progress(rowsIn, rowsIn, 'rows');
    const kept = out.lines;
    const seconds = (performance.now() - t0) / 1000;
    const metrics = await writeMetrics(ctx.outDir, { rows_in: rowsIn, kept, dropped, bad_lines: bad.counts['bad_line'] ?? 0 }, { seconds });
    ctx.log(`filter: kept ${kept} of ${rowsIn} rows; dropped ${FILTER_RULES.map((r) => `${r} ${dropped[r]}`).join(', ')}`);
    return metrics;
  },
} satisfies StageType<FilterStageSettings>;
