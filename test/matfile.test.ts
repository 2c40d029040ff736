import { test } from 'node:test';
import { scipyPython } from './helpers.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import {
  readMat, writeMat, charRows, matCell, matChar, matDouble, matLogical, matNumeric, matStruct,
  MatFileError, type MatValue,
} from '../stages/lib/matfile.js';

// ---------------------------------------------------------------- a tiny independent MAT-file builder
// Built by hand from the format description (not with writeMat), so the reader
// is checked against bytes it did not produce itself.

type Endian = 'le' | 'be';
const u32 = (e: Endian, ...v: number[]): Buffer => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => (e === 'le' ? b.writeUInt32LE(x, 4 * i) : b.writeUInt32BE(x, 4 * i)));
  return b;
};
const i32 = (e: Endian, ...v: number[]): Buffer => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => (e === 'le' ? b.writeInt32LE(x, 4 * i) : b.writeInt32BE(x, 4 * i)));
  return b;
};
const pad = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
/** Normal 8-byte-tag element. */
const el = (e: Endian, type: number, data: Buffer): Buffer => pad(Buffer.concat([u32(e, type, data.length), data]));
/** Small data element: size and type packed in 4 bytes. */
const small = (e: Endian, type: number, data: Buffer): Buffer => {
  assert.ok(data.length <= 4);
  return Buffer.concat([u32(e, (data.length << 16) | type), data, Buffer.alloc(4 - data.length)]);
};
const matrix = (e: Endian, classCode: number, flags: number, dims: number[], name: string, ...parts: Buffer[]): Buffer =>
  el(e, 14, Buffer.concat([
    el(e, 6, u32(e, classCode | flags, 0)),
    el(e, 5, i32(e, ...dims)),
    name.length <= 4 ? small(e, 1, Buffer.from(name, 'latin1')) : el(e, 1, Buffer.from(name, 'latin1')),
    ...parts,
  ]));
const header = (e: Endian): Buffer => {
  const h = Buffer.alloc(128, 0x20);
  h.write('MATLAB 5.0 MAT-file, hand-made test file', 0, 'latin1');
  if (e === 'le') { h.writeUInt16LE(0x0100, 124); h.write('IM', 126, 'latin1'); } else { h.writeUInt16BE(0x0100, 124); h.write('MI', 126, 'latin1'); }
  return h;
};
const compressed = (e: Endian, element: Buffer): Buffer => {
  const z = deflateSync(element);
  return Buffer.concat([u32(e, 15, z.length), z]);
};
const i16s = (e: Endian, ...v: number[]): Buffer => {
  const b = Buffer.alloc(2 * v.length);
  v.forEach((x, i) => (e === 'le' ? b.writeInt16LE(x, 2 * i) : b.writeInt16BE(x, 2 * i)));
  return b;
};
const f64s = (e: Endian, ...v: number[]): Buffer => {
  const b = Buffer.alloc(8 * v.length);
  v.forEach((x, i) => (e === 'le' ? b.writeDoubleLE(x, 8 * i) : b.writeDoubleBE(x, 8 * i)));
  return b;
};
const utf16 = (e: Endian, s: string): Buffer => {
  const b = Buffer.from(s, 'utf16le');
  if (e === 'be') b.swap16();
  return b;
};

/** One variable of each interesting kind, as raw elements. */
function handMadeVars(e: Endian): Buffer[] {
  const big = Buffer.alloc(8);
  if (e === 'le') big.writeBigInt64LE(2n ** 60n + 1n); else big.writeBigInt64BE(2n ** 60n + 1n);
  return [
    // double stored as miINT16 (MATLAB narrows integer-valued doubles)
    matrix(e, 6, 0, [1, 3], 'x', el(e, 3, i16s(e, -1, 300, 7))),
    // uint8 with its data in a small element
    matrix(e, 9, 0, [1, 2], 'u', small(e, 2, Buffer.from([5, 250]))),
    matrix(e, 14, 0, [1, 1], 'i64', el(e, 12, big)),
    // char as miUTF16, with a surrogate pair (3 UTF-16 code units)
    matrix(e, 4, 0, [1, 3], 's16', el(e, 17, utf16(e, 'a😀'))),
    // 2x2 char as miUINT16, column-major: ['ab'; 'cd'] is stored a c b d
    matrix(e, 4, 0, [2, 2], 'mat2', el(e, 4, utf16(e, 'acbd'))),
    // char as miUTF8, non-ASCII: 2 bytes, 1 character
    matrix(e, 4, 0, [1, 1], 'u8', small(e, 16, Buffer.from('é', 'utf8'))),
    // empty 0x0 cell
    matrix(e, 1, 0, [0, 0], 'ec'),
    // cell holding a zero-length miMATRIX and a char with small data
    matrix(e, 1, 0, [1, 2], 'c',
      el(e, 14, Buffer.alloc(0)),
      matrix(e, 4, 0, [1, 2], '', small(e, 16, Buffer.from('hi')))),
    // 1x2 struct array with fields a, bb
    matrix(e, 2, 0, [1, 2], 'st',
      small(e, 5, i32(e, 32)),
      el(e, 1, Buffer.concat([Buffer.from('a'.padEnd(32, '\0')), Buffer.from('bb'.padEnd(32, '\0'))])),
      matrix(e, 6, 0, [1, 1], '', el(e, 9, f64s(e, 1.5))),
      matrix(e, 4, 0, [1, 1], '', small(e, 16, Buffer.from('p'))),
      matrix(e, 6, 0, [0, 0], '', el(e, 9, Buffer.alloc(0))),
      matrix(e, 4, 0, [0, 0], '', el(e, 16, Buffer.alloc(0)))),
    // logical: uint8 class with the logical flag
    matrix(e, 9, 0x200, [1, 3], 'lg', small(e, 2, Buffer.from([1, 0, 1]))),
    matrix(e, 6, 0, [1, 3], 'sp', el(e, 9, f64s(e, -Infinity, NaN, 2.5))),
    // complex double
    matrix(e, 6, 0x800, [1, 1], 'cx', el(e, 9, f64s(e, 1)), el(e, 9, f64s(e, -2))),
  ];
}

function checkHandMade(m: Map<string, MatValue>): void {
  assert.deepEqual([...m.keys()], ['x', 'u', 'i64', 's16', 'mat2', 'u8', 'ec', 'c', 'st', 'lg', 'sp', 'cx']);
  assert.deepEqual(m.get('x'), { kind: 'numeric', class: 'double', dims: [1, 3], data: new Float64Array([-1, 300, 7]) });
  assert.deepEqual(m.get('u'), { kind: 'numeric', class: 'uint8', dims: [1, 2], data: new Float64Array([5, 250]) });
  const i64 = m.get('i64');
  assert.ok(i64?.kind === 'numeric' && i64.class === 'int64');
  assert.equal(i64.big?.[0], 2n ** 60n + 1n);
  assert.deepEqual(m.get('s16'), { kind: 'char', dims: [1, 3], text: 'a😀' });
  const mat2 = m.get('mat2');
  assert.ok(mat2?.kind === 'char');
  assert.deepEqual(charRows(mat2), ['ab', 'cd']);
  assert.deepEqual(m.get('u8'), { kind: 'char', dims: [1, 1], text: 'é' });
  assert.deepEqual(m.get('ec'), { kind: 'cell', dims: [0, 0], items: [] });
  assert.deepEqual(m.get('c'), {
    kind: 'cell', dims: [1, 2], items: [
      { kind: 'numeric', class: 'double', dims: [0, 0], data: new Float64Array(0) },
      { kind: 'char', dims: [1, 2], text: 'hi' },
    ],
  });
  assert.deepEqual(m.get('st'), {
    kind: 'struct', dims: [1, 2], fields: ['a', 'bb'], items: [
      { a: { kind: 'numeric', class: 'double', dims: [1, 1], data: new Float64Array([1.5]) }, bb: { kind: 'char', dims: [1, 1], text: 'p' } },
      { a: { kind: 'numeric', class: 'double', dims: [0, 0], data: new Float64Array(0) }, bb: { kind: 'char', dims: [0, 0], text: '' } },
    ],
  });
  assert.deepEqual(m.get('lg'), { kind: 'logical', dims: [1, 3], data: new Uint8Array([1, 0, 1]) });
  assert.deepEqual(m.get('sp'), { kind: 'numeric', class: 'double', dims: [1, 3], data: new Float64Array([-Infinity, NaN, 2.5]) });
  assert.deepEqual(m.get('cx'), { kind: 'numeric', class: 'double', dims: [1, 1], data: new Float64Array([1]), imag: new Float64Array([-2]) });
}

test('reads a hand-made little-endian file (narrow storage, small elements, UTF-16/UTF-8 chars, empty cell, struct array)', () => {
  checkHandMade(readMat(Buffer.concat([header('le'), ...handMadeVars('le')]), 'hand.mat'));
});

test('reads the same variables when each is zlib-compressed (miCOMPRESSED)', () => {
  checkHandMade(readMat(Buffer.concat([header('le'), ...handMadeVars('le').map((v) => compressed('le', v))]), 'handz.mat'));
});

test('reads a big-endian ("MI") file', () => {
  checkHandMade(readMat(Buffer.concat([header('be'), ...handMadeVars('be')]), 'hand-be.mat'));
  checkHandMade(readMat(Buffer.concat([header('be'), ...handMadeVars('be').map((v) => compressed('be', v))]), 'hand-bez.mat'));
});

// ---------------------------------------------------------------- round trips

function sampleVars(): Record<string, MatValue> {
  return {
    d: matDouble([1, -2.5, NaN, -Infinity, Infinity, 0, 1e300], [1, 7]),
    years: matDouble([1940, 2015, 2009]),
    neg: matDouble([-1, -200, 70000]),
    scalar: matDouble(3),
    m23: matDouble([1, 2, 3, 4, 5, 6], [2, 3]),
    nd: matDouble([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]),
    empty: matDouble([], [0, 0]),
    i8: matNumeric('int8', [-128, 0, 127]),
    u16: matNumeric('uint16', [0, 65535]),
    i32: matNumeric('int32', [-2147483648, 2147483647]),
    u32: matNumeric('uint32', [4294967295]),
    f32: matNumeric('single', [0.5, -1.25, NaN]),
    i64: { kind: 'numeric', class: 'int64', dims: [1, 2], data: new Float64Array([-(2 ** 62), 5]), big: new BigInt64Array([-(2n ** 62n) - 3n, 5n]) },
    u64: matNumeric('uint64', [2 ** 53, 7]),
    cx: { kind: 'numeric', class: 'double', dims: [1, 2], data: new Float64Array([1, 2]), imag: new Float64Array([0.5, -3]) },
    lg: matLogical([true, false, true, true]),
    ascii: matChar('hello world'),
    uni: matChar('Sami Jauhojärvi – Ωμέγα 😀'),
    blank: matChar(''),
    chm: { kind: 'char', dims: [2, 3], text: 'adbecf' },
    ec: matCell([], [0, 0]),
    c: matCell([matChar('x'), matDouble([1, 2, 3, 4], [1, 4]), matCell([]), matChar('')]),
    c22: matCell([matDouble(1), matDouble(2), matDouble(3), matDouble(4)], [2, 2]),
    s: matStruct({ a: matDouble(1), long_field_name_over_thirty_two_chars: matChar('y'), inner: matStruct({ z: matCell([matChar('deep')]) }) }),
    sa: {
      kind: 'struct', dims: [2, 1], fields: ['k', 'v'], items: [
        { k: matChar('one'), v: matDouble(1) },
        { k: matChar('two'), v: matLogical([false]) },
      ],
    },
    es: { kind: 'struct', dims: [0, 0], fields: ['q'], items: [] },
    nofields: { kind: 'struct', dims: [1, 1], fields: [], items: [{}] },
  };
}

/** What the reader gives back for a written value (only 64-bit ints gain `big`). */
function expected(v: MatValue): MatValue {
  switch (v.kind) {
    case 'numeric':
      if ((v.class === 'int64' || v.class === 'uint64') && !v.big) {
        const big = v.class === 'int64' ? BigInt64Array.from(v.data, (x) => BigInt(x)) : BigUint64Array.from(v.data, (x) => BigInt(x));
        return { ...v, big };
      }
      if (v.big) return { ...v, data: Float64Array.from(v.big, (x) => Number(x)) };
      return v;
    case 'cell': return { ...v, items: v.items.map(expected) };
    case 'struct': return { ...v, items: v.items.map((it) => Object.fromEntries(Object.entries(it).map(([k, x]) => [k, expected(x)]))) };
    default: return v;
  }
}

for (const compress of [true, false]) {
  for (const narrow of [false, true]) {
    test(`writeMat -> readMat round trip (compress=${compress}, narrow=${narrow})`, () => {
      const vars = sampleVars();
      const buf = writeMat(vars, { compress, narrow });
      assert.equal(buf.toString('latin1', 126, 128), 'IM');
      assert.equal(buf.readUInt16LE(124), 0x0100);
      const back = readMat(buf, 'rt.mat');
      assert.deepEqual([...back.keys()], Object.keys(vars));
      for (const [k, v] of Object.entries(vars)) assert.deepEqual(back.get(k), expected(v), `variable ${k}`);
      // Output is deterministic (no date in the header), so content hashes are stable.
      assert.ok(writeMat(vars, { compress, narrow }).equals(buf));
    });
  }
}

test('writer output buffer growth in the middle of a name / field-name element', () => {
  // The writer's buffer starts at 64 KiB; slide the second variable across that boundary.
  for (let len = 65304 - 96; len <= 65304 + 96; len += 8) {
    const vars: Record<string, MatValue> = {
      pad: matNumeric('uint8', new Uint8Array(len)),
      abcdefghij: matStruct({ a_rather_long_field_name: matDouble(1), b: matChar('x') }),
    };
    for (const compress of [false, true]) {
      const back = readMat(writeMat(vars, { compress }), `grow-${len}.mat`);
      assert.deepEqual(back.get('abcdefghij'), vars['abcdefghij'], `len ${len}`);
    }
  }
});

test('narrow storage makes integer-valued doubles smaller, keeps -0 and fractions exact', () => {
  const big = matDouble(Array.from({ length: 1000 }, (_, i) => 1900 + (i % 100)));
  const wide = writeMat({ big }, { compress: false });
  const slim = writeMat({ big }, { compress: false, narrow: true });
  assert.ok(slim.length < wide.length / 3, `${slim.length} vs ${wide.length}`);
  const tricky = matDouble([-0, 0.5, 3]);
  const back = readMat(writeMat({ tricky }, { narrow: true })).get('tricky');
  assert.ok(back?.kind === 'numeric');
  assert.ok(Object.is(back.data[0], -0));
  assert.deepEqual([...back.data].slice(1), [0.5, 3]);
});

// ---------------------------------------------------------------- errors

test('truncated compressed file: error names the file, the variable / cell and the byte offset', () => {
  const names = Array.from({ length: 400 }, (_, i) => matChar(`person number ${i} ${'x'.repeat(i % 37)}`));
  const buf = writeMat({ a: matDouble([1, 2, 3]), big: matCell(names) });
  // Cut in the middle of the second variable's zlib stream.
  const cut = buf.subarray(0, Math.floor(buf.length * 0.6));
  assert.throws(() => readMat(cut, 'cut.mat'), (e: unknown) => {
    assert.ok(e instanceof MatFileError);
    assert.match(e.message, /^cut\.mat: variable big\{\d+\}: truncated: /);
    assert.match(e.message, /at byte \d+ of the zlib stream of variable #2 at file byte \d+, which is cut short: compressed variable #2 declares \d+ bytes but only \d+ remain in the file\)$/);
    assert.equal(e.where.startsWith('big{'), true);
    return true;
  });
  // Cut inside the trailing checksum: everything decodes but the file is still reported.
  assert.throws(() => readMat(buf.subarray(0, buf.length - 3), 'tail.mat'),
    /^MatFileError: tail\.mat: .*truncated: .*compressed variable #2 declares \d+ bytes but only \d+ remain/);
});

test('truncated uncompressed file: error names the variable path and the byte offset', () => {
  const buf = writeMat({ meta: matStruct({ names: matCell([matChar('anna'), matChar('bob'), matChar('carl')]) }) }, { compress: false });
  const cut = buf.subarray(0, buf.length - 20);
  assert.throws(() => readMat(cut, 'meta.mat'), /^MatFileError: meta\.mat: variable meta\.names\{3\}: truncated: .*\(at file byte \d+\)$/);
  const zbad = Buffer.from(writeMat({ meta: matStruct({ x: matDouble([1, 2]) }) }));
  assert.throws(() => readMat(zbad.subarray(0, 130), 'short.mat'), /short\.mat: truncated: variable #1 tag needs 8 bytes but only 2 remain \(at file byte 128\)/);
  assert.throws(() => readMat(Buffer.alloc(60), 'tiny.mat'), /tiny\.mat: truncated: MAT-file header needs 128 bytes, file has 60/);
});

test('corrupt zlib data, unsupported classes and versions give clear errors', () => {
  const buf = Buffer.from(writeMat({ a: matDouble([1, 2, 3]) }));
  buf[140] ^= 0xff;
  buf[141] ^= 0xff;
  assert.throws(() => readMat(buf, 'bad.mat'), /bad\.mat: compressed variable #1 cannot be decompressed: .* \(at file byte 128\)/);

  const sparse = Buffer.concat([header('le'), matrix('le', 5, 0, [2, 2], 'sp')]);
  assert.throws(() => readMat(sparse, 'sparse.mat'), /sparse\.mat: variable sp: unsupported array class 'sparse'.*\(at file byte 128\)/);

  const v73 = Buffer.from(header('le'));
  v73.write('MATLAB 7.3 MAT-file', 0, 'latin1');
  v73.writeUInt16LE(0x0200, 124);
  assert.throws(() => readMat(v73, 'v73.mat'), /v73\.mat: MATLAB v7\.3 \(HDF5\) MAT-files are not supported/);

  const notMat = Buffer.alloc(200, 0x41);
  assert.throws(() => readMat(notMat, 'junk.bin'), /junk\.bin: not a level-5 MAT-file/);

  const badCount = Buffer.concat([header('le'), matrix('le', 6, 0, [1, 3], 'q', el('le', 9, f64s('le', 1, 2)))]);
  assert.throws(() => readMat(badCount, 'count.mat'), /count\.mat: variable q: real part has 2 values but dimensions need 3 \(at file byte \d+\)/);
});

test('writer rejects inconsistent values with the variable path', () => {
  assert.throws(() => writeMat({ a: matDouble([1, 2], [1, 3]) }), /writeMat: a: dims 1x3 need 3 elements but 2 were given/);
  assert.throws(() => writeMat({ s: matStruct({ c: matCell([matNumeric('uint8', [300])]) }) }), /writeMat: s\.c\{1\}: value 300 at index 0 does not fit class uint8/);
  assert.throws(() => writeMat({ '1bad': matDouble(1) }), /invalid variable name/);
  assert.throws(() => writeMat({ s: { kind: 'struct', dims: [1, 1], fields: ['a b'], items: [{}] } }), /invalid struct field name/);
});

// ---------------------------------------------------------------- independent check with scipy

const scipyOk = scipyPython !== undefined;
const SCIPY_SKIP = 'python3 with scipy is not available (install python3-scipy) - scipy cross-check skipped';

// Dumps a .mat file as JSON; numbers as strings so NaN/Inf and 64-bit ints survive.
const PY_DUMP = `
import sys, json, numpy as np, scipy.io as sio
def num(v):
    if isinstance(v, (np.integer, int)): return str(int(v))
    return repr(float(v))
def conv(x):
    if x.dtype.names:
        return {'struct': list(x.dtype.names), 'shape': list(x.shape),
                'items': [{n: conv(e[n]) for n in x.dtype.names} for e in x.flatten(order='F')]}
    if x.dtype == object:
        return {'cell': [conv(e) for e in x.flatten(order='F')], 'shape': list(x.shape)}
    if x.dtype.kind == 'U':
        return {'char': ''.join(str(c) for c in x.flatten(order='F')), 'shape': list(x.shape)}
    if x.dtype.kind == 'c':
        return {'re': [num(v.real) for v in x.flatten(order='F')], 'im': [num(v.imag) for v in x.flatten(order='F')], 'shape': list(x.shape)}
    return {'num': [num(v) for v in x.flatten(order='F')], 'dtype': str(x.dtype), 'shape': list(x.shape)}
m = sio.loadmat(sys.argv[1], chars_as_strings=False)
cls = sio.loadmat(sys.argv[1], chars_as_strings=False, mat_dtype=True)
out = {}
for k, v in m.items():
    if k.startswith('__'): continue
    d = conv(v)
    if 'num' in d: d['class'] = str(cls[k].dtype)
    out[k] = d
print(json.dumps(out))
`;

const pyNum = (s: string): number => (s === 'nan' ? NaN : s === 'inf' ? Infinity : s === '-inf' ? -Infinity : Number(s));

/** Compares scipy's view of a value with what we wrote. */
function compareWithScipy(py: any, v: MatValue, where: string): void {
  assert.deepEqual(py.shape, v.dims, `${where}: shape`);
  switch (v.kind) {
    case 'numeric':
      if (v.imag) {
        assert.deepEqual(py.re.map(pyNum), [...v.data], `${where}: real`);
        assert.deepEqual(py.im.map(pyNum), [...v.imag], `${where}: imag`);
      } else if (v.big) {
        assert.deepEqual(py.num.map((s: string) => BigInt(s)), [...v.big], `${where}: values`);
      } else {
        assert.deepEqual(py.num.map(pyNum), [...v.data], `${where}: values`);
        const cls = v.class === 'single' ? 'float32' : v.class === 'double' ? 'float64' : v.class;
        if (py.class !== undefined) assert.equal(py.class, cls, `${where}: class`);
      }
      break;
    case 'logical':
      assert.deepEqual(py.num.map(pyNum), [...v.data], `${where}: values`);
      break;
    case 'char':
      assert.equal(py.char, v.text, `${where}: text`);
      break;
    case 'cell':
      assert.equal(py.cell.length, v.items.length, `${where}: cell length`);
      v.items.forEach((it, i) => compareWithScipy(py.cell[i], it, `${where}{${i + 1}}`));
      break;
    case 'struct':
      assert.deepEqual(py.struct, v.fields, `${where}: fields`);
      v.items.forEach((it, i) => v.fields.forEach((f) => compareWithScipy(py.items[i][f], it[f]!, `${where}(${i + 1}).${f}`)));
      break;
  }
}

test('scipy.io.loadmat reads files written by writeMat (compressed and not, narrow and not)', (t) => {
  if (!scipyOk) { t.skip(SCIPY_SKIP); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matfile-test-'));
  try {
    const vars = sampleVars();
    // scipy cannot represent a 1x1 struct with no fields or a 0x0 struct with fields the same way; compare the rest.
    delete vars['nofields'];
    delete vars['es'];
    // scipy cannot read characters outside the BMP stored MATLAB-style (UTF-16 code units); keep to the BMP here.
    vars['uni'] = matChar('Sami Jauhojärvi – Ωμέγα 東京');
    for (const opts of [{ compress: true, narrow: true }, { compress: false, narrow: false }]) {
      const file = path.join(dir, `w-${opts.compress}.mat`);
      fs.writeFileSync(file, writeMat(vars, opts));
      const r = spawnSync(scipyPython!, ['-c', PY_DUMP, file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const py = JSON.parse(r.stdout);
      assert.deepEqual(Object.keys(py).sort(), Object.keys(vars).sort());
      for (const [k, v] of Object.entries(vars)) compareWithScipy(py[k], expected(v), k);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('readMat reads files written by scipy.io.savemat', (t) => {
  if (!scipyOk) { t.skip(SCIPY_SKIP); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matfile-test-'));
  try {
    const py = `
import sys, numpy as np, scipy.io as sio
d = {
  'a': np.array([[1, 2, 3]], dtype=np.int16),
  'dbl': np.array([[1.5, np.nan], [-np.inf, 4]]),
  'txt': 'Zoë and 東京',
  'emoji': 'a😀b',
  'cel': np.array([['x', np.zeros((0, 0)), np.array([[1, 2, 3, 4]], dtype=float)]], dtype=object),
  'b': np.array([[True, False]]),
  'st': {'f1': 1.0, 'f2': 'abc'},
  'u64': np.array([[2**63 + 5]], dtype=np.uint64),
}
sio.savemat(sys.argv[1], d, do_compression=sys.argv[2] == '1')
`;
    for (const z of ['0', '1']) {
      const file = path.join(dir, `scipy-${z}.mat`);
      const r = spawnSync(scipyPython!, ['-c', py, file, z], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const m = readMat(fs.readFileSync(file), file);
      assert.deepEqual(m.get('a'), { kind: 'numeric', class: 'int16', dims: [1, 3], data: new Float64Array([1, 2, 3]) });
      assert.deepEqual(m.get('dbl'), { kind: 'numeric', class: 'double', dims: [2, 2], data: new Float64Array([1.5, -Infinity, NaN, 4]) });
      assert.deepEqual(m.get('txt'), { kind: 'char', dims: [1, 10], text: 'Zoë and 東京' });
      // scipy sizes UTF-8 text in code points; MATLAB (and we) count UTF-16 code units.
      assert.deepEqual(m.get('emoji'), { kind: 'char', dims: [1, 4], text: 'a😀b' });
      const cel = m.get('cel');
      assert.ok(cel?.kind === 'cell');
      assert.deepEqual(cel.dims, [1, 3]);
      assert.deepEqual(cel.items[0], { kind: 'char', dims: [1, 1], text: 'x' });
      assert.deepEqual(cel.items[1], { kind: 'numeric', class: 'double', dims: [0, 0], data: new Float64Array(0) });
      assert.deepEqual(cel.items[2], { kind: 'numeric', class: 'double', dims: [1, 4], data: new Float64Array([1, 2, 3, 4]) });
      assert.deepEqual(m.get('b'), { kind: 'logical', dims: [1, 2], data: new Uint8Array([1, 0]) });
      const st = m.get('st');
      assert.ok(st?.kind === 'struct');
      assert.deepEqual(st.fields, ['f1', 'f2']);
      assert.deepEqual(st.items[0]!['f2'], { kind: 'char', dims: [1, 3], text: 'abc' });
      const u64 = m.get('u64');
      assert.ok(u64?.kind === 'numeric' && u64.class === 'uint64');
      assert.equal(u64.big?.[0], 2n ** 63n + 5n);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
