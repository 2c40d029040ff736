// IMDB-WIKI metadata (imdb.mat / wiki.mat) on top of the generic MAT-file code.
//
// The real files hold one 1x1 struct (`imdb` or `wiki`) whose fields are
// 1xN row vectors / cell rows, one column per photo:
//   dob (MATLAB datenum), photo_taken (year), full_path {char}, gender (1 male,
//   0 female, NaN unknown), name {char}, face_location {1x4 double},
//   face_score (-Inf: no face found), second_face_score (NaN: no second face);
//   imdb.mat adds celeb_names {char} (one per celebrity) and celeb_id (index into it).
// Per-row oddities become NaN / '' so that later stages decide what to drop;
// only structural problems throw.
import { readMat, writeMat, numel, charRows, matCell, matChar, matDouble, type MatValue, type MatStruct } from './matfile.js';

export interface MetaRow {
  full_path: string;
  name: string;
  dob: number;
  photo_taken: number;
  gender: number;
  face_location: [number, number, number, number];
  face_score: number;
  second_face_score: number;
  celeb_id?: number;
}

const ROW_FIELDS = ['dob', 'photo_taken', 'full_path', 'gender', 'name', 'face_location', 'face_score', 'second_face_score'] as const;
const NUMERIC_FIELDS = ['dob', 'photo_taken', 'gender', 'face_score', 'second_face_score'] as const;

/** MATLAB datenum of 1970-01-01 (datenum 1 is 0000-01-01, proleptic Gregorian). */
const DATENUM_UNIX_EPOCH = 719529;
const MS_PER_DAY = 86_400_000;

/** Year of a MATLAB serial date number; NaN when not finite or out of range. */
export function matlabDatenumToYear(datenum: number): number {
  if (!Number.isFinite(datenum)) return NaN;
  const t = (Math.floor(datenum) - DATENUM_UNIX_EPOCH) * MS_PER_DAY;
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? NaN : d.getUTCFullYear();
}

/** MATLAB serial date number of a calendar date (month 1-12). */
export function matlabDatenum(year: number, month: number, day: number): number {
  const d = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0-99 to 1900-1999.
  d.setUTCFullYear(year, month - 1, day);
  return Math.round(d.getTime() / MS_PER_DAY) + DATENUM_UNIX_EPOCH;
}

function charText(v: MatValue | undefined): string {
  if (!v || v.kind !== 'char') return '';
  if (v.dims.length === 2 && (v.dims[0] ?? 0) <= 1) return v.text;
  // A multi-row char matrix (not seen in the real files): rows joined by a space.
  if (v.dims.length !== 2) return '';
  return charRows(v).map((r) => r.trimEnd()).join(' ').trim();
}

export function readImdbWikiMeta(buf: Buffer, fileName = '<buffer>'): { structName: string; rows: MetaRow[] } {
  const vars = readMat(buf, fileName);
  const structName = vars.has('imdb') ? 'imdb' : vars.has('wiki') ? 'wiki' : undefined;
  if (!structName) {
    throw new Error(`${fileName}: no 'imdb' or 'wiki' variable (variables: ${[...vars.keys()].join(', ') || 'none'})`);
  }
  const s = vars.get(structName)!;
  if (s.kind !== 'struct') throw new Error(`${fileName}: variable '${structName}' is a ${s.kind} array, expected a struct`);
  if (numel(s.dims) !== 1) throw new Error(`${fileName}: struct '${structName}' is ${s.dims.join('x')}, expected 1x1`);
  const rec = s.items[0]!;

  const field = (name: string): MatValue => {
    const v = rec[name];
    if (!v) throw new Error(`${fileName}: ${structName}.${name}: field is missing (fields present: ${s.fields.join(', ')})`);
    return v;
  };
  // All per-row fields must be vectors of the same length as full_path.
  const paths = field('full_path');
  if (paths.kind !== 'cell') throw new Error(`${fileName}: ${structName}.full_path: expected a cell array, found ${paths.kind}`);
  const n = paths.items.length;
  const checkVector = (name: string, v: MatValue, len: number): void => {
    const nonSingleton = v.dims.filter((d) => d !== 1).length;
    if (len !== n || nonSingleton > 1) {
      throw new Error(`${fileName}: ${structName}.${name}: is ${v.dims.join('x')}, expected a vector of ${n} entries (one per full_path)`);
    }
  };
  const numeric = (name: string): Float64Array => {
    const v = field(name);
    if (v.kind !== 'numeric' && v.kind !== 'logical') {
      throw new Error(`${fileName}: ${structName}.${name}: expected a numeric array, found ${v.kind}`);
    }
    if (v.kind === 'numeric' && v.imag) throw new Error(`${fileName}: ${structName}.${name}: complex values are not expected`);
    checkVector(name, v, v.data.length);
    return v.kind === 'numeric' ? v.data : Float64Array.from(v.data);
  };
  const cell = (name: string): MatValue[] => {
    const v = field(name);
    if (v.kind !== 'cell') throw new Error(`${fileName}: ${structName}.${name}: expected a cell array, found ${v.kind}`);
    checkVector(name, v, v.items.length);
    return v.items;
  };

  for (const f of ROW_FIELDS) field(f);
  const cols = Object.fromEntries(NUMERIC_FIELDS.map((f) => [f, numeric(f)])) as Record<(typeof NUMERIC_FIELDS)[number], Float64Array>;
  const pathItems = cell('full_path');
  const names = cell('name');
  const locs = cell('face_location');
  const isImdb = structName === 'imdb';
  // imdb.mat carries celebrity ids; a wiki file that happens to have them keeps them too.
  const celebIds = isImdb || rec['celeb_id'] ? numeric('celeb_id') : undefined;
  if (rec['celeb_names'] && rec['celeb_names'].kind !== 'cell') {
    throw new Error(`${fileName}: ${structName}.celeb_names: expected a cell array, found ${rec['celeb_names'].kind}`);
  }

  const rows = new Array<MetaRow>(n);
  for (let i = 0; i < n; i++) {
    const loc = locs[i]!;
    let faceLocation: [number, number, number, number];
    if (loc.kind === 'numeric' && loc.data.length === 4 && !loc.imag) {
      const d = loc.data;
      faceLocation = [d[0]!, d[1]!, d[2]!, d[3]!];
    } else {
      faceLocation = [NaN, NaN, NaN, NaN];
    }
    const row: MetaRow = {
      full_path: charText(pathItems[i]),
      name: charText(names[i]),
      dob: cols.dob[i]!,
      photo_taken: cols.photo_taken[i]!,
      gender: cols.gender[i]!,
      face_location: faceLocation,
      face_score: cols.face_score[i]!,
      second_face_score: cols.second_face_score[i]!,
    };
    if (celebIds) row.celeb_id = celebIds[i]!;
    rows[i] = row;
  }
  return { structName, rows };
}

/**
 * Writes rows in the real files' layout: one 1x1 struct of 1xN fields, each
 * variable zlib-compressed, integer-valued doubles stored narrow as MATLAB does.
 * For 'imdb', celeb_names{k} is the name of the first row with celeb_id k
 * ('' for unused ids) and rows without a celeb_id get NaN; 'wiki' has neither.
 */
export function writeImdbWikiMeta(structName: 'imdb' | 'wiki', rows: MetaRow[]): Buffer {
  if (structName !== 'imdb' && structName !== 'wiki') {
    throw new Error(`writeImdbWikiMeta: struct name must be 'imdb' or 'wiki', got ${JSON.stringify(structName)}`);
  }
  const n = rows.length;
  const col = (get: (r: MetaRow) => number): Float64Array => {
    const a = new Float64Array(n);
    for (let i = 0; i < n; i++) a[i] = get(rows[i]!);
    return a;
  };
  const fullPath = new Array<MatValue>(n);
  const names = new Array<MatValue>(n);
  const locs = new Array<MatValue>(n);
  for (let i = 0; i < n; i++) {
    const r = rows[i]!;
    if (typeof r.full_path !== 'string' || typeof r.name !== 'string') {
      throw new Error(`writeImdbWikiMeta: row ${i}: full_path and name must be strings`);
    }
    if (!Array.isArray(r.face_location) || r.face_location.length !== 4) {
      throw new Error(`writeImdbWikiMeta: row ${i} (${r.full_path}): face_location must have 4 numbers`);
    }
    fullPath[i] = matChar(r.full_path);
    names[i] = matChar(r.name);
    locs[i] = matDouble(r.face_location, [1, 4]);
  }
  const fields: Record<string, MatValue> = {
    dob: matDouble(col((r) => r.dob)),
    photo_taken: matDouble(col((r) => r.photo_taken)),
    full_path: matCell(fullPath),
    gender: matDouble(col((r) => r.gender)),
    name: matCell(names),
    face_location: matCell(locs),
    face_score: matDouble(col((r) => r.face_score)),
    second_face_score: matDouble(col((r) => r.second_face_score)),
  };
  if (structName === 'imdb') {
    const ids = col((r) => r.celeb_id ?? NaN);
    const celeb: string[] = [];
    for (let i = 0; i < n; i++) {
      const id = ids[i]!;
      if (Number.isInteger(id) && id >= 1 && id <= n + 1e6 && celeb[id - 1] === undefined) celeb[id - 1] = rows[i]!.name;
    }
    const celebNames: MatValue[] = [];
    for (let k = 0; k < celeb.length; k++) celebNames.push(matChar(celeb[k] ?? ''));
    fields['celeb_names'] = matCell(celebNames);
    fields['celeb_id'] = matDouble(ids);
  }
  const struct: MatStruct = { kind: 'struct', dims: [1, 1], fields: Object.keys(fields), items: [fields] };
  return writeMat({ [structName]: struct }, { compress: true, narrow: true });
}
