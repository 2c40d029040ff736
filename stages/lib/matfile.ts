// MATLAB level-5 MAT-file ("-v6"/"-v7") reader and writer.
//
// Supports numeric classes (double, single, int8..uint64, optionally complex),
// logical, char, cell and struct arrays. Everything is kept in MATLAB's
// column-major order; `dims` is the MATLAB size vector (always >= 2 entries).
// Not supported (clear error): sparse, objects, function handles, opaque
// classes (string, datetime, ...), v4 files and v7.3 (HDF5) files.
import { constants as zlibConstants, deflateSync, inflateSync } from 'node:zlib';
import { endianness } from 'node:os';

export type NumericClass =
  | 'double' | 'single'
  | 'int8' | 'uint8' | 'int16' | 'uint16'
  | 'int32' | 'uint32' | 'int64' | 'uint64';

export interface MatNumeric {
  kind: 'numeric';
  class: NumericClass;
  dims: number[];
  /** Real part, column-major. int64/uint64 values beyond 2^53 are rounded here; see `big`. */
  data: Float64Array;
  /** Imaginary part when the array is complex. */
  imag?: Float64Array;
  /** Exact values for int64/uint64 arrays (set by the reader; preferred by the writer). */
  big?: BigInt64Array | BigUint64Array;
}
export interface MatLogical { kind: 'logical'; dims: number[]; data: Uint8Array }
/** `text` holds the prod(dims) UTF-16 code units in column-major order (a row vector is just the string). */
export interface MatChar { kind: 'char'; dims: number[]; text: string }
export interface MatCell { kind: 'cell'; dims: number[]; items: MatValue[] }
export interface MatStruct { kind: 'struct'; dims: number[]; fields: string[]; items: Record<string, MatValue>[] }
export type MatValue = MatNumeric | MatLogical | MatChar | MatCell | MatStruct;

export interface WriteMatOptions {
  /** Wrap each variable in a zlib-compressed element (MAT v7). Default true. */
  compress?: boolean;
  /**
   * Store integer-valued numeric data in the smallest integer type that holds
   * it (as MATLAB does), e.g. a double row of years as miUINT16. Default false.
   */
  narrow?: boolean;
  /** Descriptive header text (max 116 ASCII chars). Default has no date, so output is reproducible. */
  headerText?: string;
}

// ---------------------------------------------------------------- constants

const miINT8 = 1, miUINT8 = 2, miINT16 = 3, miUINT16 = 4, miINT32 = 5, miUINT32 = 6,
  miSINGLE = 7, miDOUBLE = 9, miINT64 = 12, miUINT64 = 13, miMATRIX = 14,
  miCOMPRESSED = 15, miUTF8 = 16, miUTF16 = 17, miUTF32 = 18;

const mxCELL = 1, mxSTRUCT = 2, mxOBJECT = 3, mxCHAR = 4, mxSPARSE = 5;
const CLASS_BY_CODE: Record<number, NumericClass> = {
  6: 'double', 7: 'single', 8: 'int8', 9: 'uint8', 10: 'int16', 11: 'uint16',
  12: 'int32', 13: 'uint32', 14: 'int64', 15: 'uint64',
};
const CODE_BY_CLASS: Record<NumericClass, number> = {
  double: 6, single: 7, int8: 8, uint8: 9, int16: 10, uint16: 11,
  int32: 12, uint32: 13, int64: 14, uint64: 15,
};
const CLASS_NAMES: Record<number, string> = {
  1: 'cell', 2: 'struct', 3: 'object', 4: 'char', 5: 'sparse', 16: 'function_handle', 17: 'opaque',
};
const TYPE_NAMES: Record<number, string> = {
  1: 'miINT8', 2: 'miUINT8', 3: 'miINT16', 4: 'miUINT16', 5: 'miINT32', 6: 'miUINT32',
  7: 'miSINGLE', 9: 'miDOUBLE', 12: 'miINT64', 13: 'miUINT64', 14: 'miMATRIX',
  15: 'miCOMPRESSED', 16: 'miUTF8', 17: 'miUTF16', 18: 'miUTF32',
};
const TYPE_SIZE: Record<number, number> = {
  1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8,
};
// Natural storage type for each numeric class.
const STORAGE_BY_CLASS: Record<NumericClass, number> = {
  double: miDOUBLE, single: miSINGLE, int8: miINT8, uint8: miUINT8, int16: miINT16,
  uint16: miUINT16, int32: miINT32, uint32: miUINT32, int64: miINT64, uint64: miUINT64,
};
const FLAG_COMPLEX = 0x800, FLAG_LOGICAL = 0x200;
const HOST_LE = endianness() === 'LE';

const typeName = (t: number): string => TYPE_NAMES[t] ?? `type ${t}`;
const pad8 = (n: number): number => (n + 7) & ~7;

// ---------------------------------------------------------------- helpers

export function numel(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/** A double (or other numeric class) array; default dims is a 1xN row. */
export function matNumeric(cls: NumericClass, values: ArrayLike<number>, dims?: number[]): MatNumeric {
  return { kind: 'numeric', class: cls, dims: dims ?? [1, values.length], data: Float64Array.from(values) };
}
export function matDouble(values: ArrayLike<number> | number, dims?: number[]): MatNumeric {
  return typeof values === 'number' ? matNumeric('double', [values], dims ?? [1, 1]) : matNumeric('double', values, dims);
}
export function matLogical(values: ArrayLike<boolean | number>, dims?: number[]): MatLogical {
  const data = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) data[i] = values[i] ? 1 : 0;
  return { kind: 'logical', dims: dims ?? [1, values.length], data };
}
/** A char row vector (empty string gives a 0x0 char, as MATLAB's ''). */
export function matChar(text: string): MatChar {
  return { kind: 'char', dims: text.length === 0 ? [0, 0] : [1, text.length], text };
}
export function matCell(items: MatValue[], dims?: number[]): MatCell {
  return { kind: 'cell', dims: dims ?? [1, items.length], items };
}
/** A 1x1 struct from a record of fields (insertion order = field order). */
export function matStruct(fields: Record<string, MatValue>): MatStruct {
  return { kind: 'struct', dims: [1, 1], fields: Object.keys(fields), items: [fields] };
}
/** Rows of a char matrix (a 1xN char gives one row; 0x0 gives none). */
export function charRows(v: MatChar): string[] {
  const rows = v.dims[0] ?? 0;
  if (v.dims.length !== 2) throw new Error(`charRows: char array has ${v.dims.length} dimensions, expected 2`);
  const cols = v.dims[1] ?? 0;
  if (rows === 1) return [v.text];
  const out: string[] = [];
  for (let r = 0; r < rows; r++) {
    let s = '';
    for (let c = 0; c < cols; c++) s += v.text[c * rows + r];
    out.push(s);
  }
  return out;
}

// ---------------------------------------------------------------- errors

export class MatFileError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly where: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = 'MatFileError';
  }
}

// Linked path so that building error context costs nothing on the happy path.
// `seg` is the literal text of the segment ('wiki', '.name', '(3)'); null means cell index {index+1}.
interface PathNode { parent: PathNode | null; seg: string | null; index: number }

function formatPath(p: PathNode | null): string {
  let s = '';
  for (let n = p; n; n = n.parent) s = (n.seg ?? `{${n.index + 1}}`) + s;
  return s;
}

// ---------------------------------------------------------------- reader

/** Parses one byte stream (the file itself, or one decompressed element). */
class StreamReader {
  private readonly dv: DataView;
  // Fields of the last tag read (kept here to avoid allocating per tag).
  private tType = 0;
  private tBytes = 0;
  private tData = 0;
  private tNext = 0;
  /** Position after the last matrix parsed. */
  next = 0;
  /** Name of the last matrix parsed. */
  lastName = '';
  /**
   * The stream is known to be truncated: array sizes are not checked against
   * it, so parsing runs to where the data stops and the error can name the
   * variable, field or cell there.
   */
  cutShort = false;

  constructor(
    private readonly buf: Buffer,
    private readonly le: boolean,
    private readonly file: string,
    /** Describes where stream offsets live, e.g. "file" or "zlib stream of the element at file byte 128". */
    private readonly streamDesc: string,
    /** Added to stream offsets when the stream is the file itself. */
    private readonly fileBase: number,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  fail(msg: string, offset: number, path: PathNode | null): never {
    const where = formatPath(path);
    const at = this.streamDesc === 'file'
      ? `file byte ${offset + this.fileBase}`
      : `byte ${offset} of ${this.streamDesc}`;
    throw new MatFileError(
      `${this.file}: ${where ? `variable ${where}: ` : ''}${msg} (at ${at})`,
      this.file, where, this.streamDesc === 'file' ? offset + this.fileBase : offset,
    );
  }

  u32(off: number): number { return this.dv.getUint32(off, this.le); }
  i32(off: number): number { return this.dv.getInt32(off, this.le); }

  /** Reads the tag at `pos`; `limit` is the end of the enclosing element. */
  readTag(pos: number, limit: number, path: PathNode | null, what: string): number {
    if (pos + 8 > limit) {
      this.fail(`truncated: ${what} tag needs 8 bytes but only ${Math.max(0, limit - pos)} remain`, pos, path);
    }
    const w = this.u32(pos);
    if (w >>> 16 !== 0) {
      // Small data element: size and type packed into 4 bytes, data in the next 4.
      this.tType = w & 0xffff;
      this.tBytes = w >>> 16;
      if (this.tBytes > 4) this.fail(`${what}: small data element claims ${this.tBytes} bytes (max 4)`, pos, path);
      this.tData = pos + 4;
      this.tNext = pos + 8;
    } else {
      this.tType = w;
      this.tBytes = this.u32(pos + 4);
      this.tData = pos + 8;
      if (this.tData + this.tBytes > limit) {
        this.fail(`truncated: ${what} (${typeName(w)}) declares ${this.tBytes} bytes but only ${limit - this.tData} remain`, pos, path);
      }
      // Padding of the last element in a stream may be missing; tolerate that.
      this.tNext = Math.min(this.tData + pad8(this.tBytes), limit);
    }
    return this.tType;
  }

  /** Parses the miMATRIX element at `pos`. Sets `this.next` and `this.lastName`. */
  parseMatrix(pos: number, limit: number, path: PathNode): MatValue {
    const cutShort = this.cutShort;
    if (cutShort && pos + 8 > limit) this.readTag(pos, limit, path, 'array');
    const mt = this.readTag(pos, cutShort ? Number.MAX_SAFE_INTEGER : limit, path, 'array');
    if (mt !== miMATRIX) this.fail(`expected miMATRIX element, found ${typeName(mt)}`, pos, path);
    const end = Math.min(this.tData + this.tBytes, limit);
    const after = this.tNext;
    this.lastName = '';
    if (this.tBytes === 0) {
      // Zero-length miMATRIX: an empty 0x0 double (written by some tools for [] in cells).
      this.next = after;
      return { kind: 'numeric', class: 'double', dims: [0, 0], data: new Float64Array(0) };
    }
    let p = this.tData;

    const flagsType = this.readTag(p, end, path, 'array flags');
    if (flagsType !== miUINT32 || this.tBytes < 4) this.fail(`array flags must be miUINT32 (found ${typeName(flagsType)}, ${this.tBytes} bytes)`, p, path);
    const flags = this.u32(this.tData);
    const clsCode = flags & 0xff;
    const complex = (flags & FLAG_COMPLEX) !== 0;
    const logical = (flags & FLAG_LOGICAL) !== 0;
    p = this.tNext;

    const dimsPos = p;
    const dimsType = this.readTag(p, end, path, 'dimensions');
    if (dimsType !== miINT32 || this.tBytes % 4 !== 0 || this.tBytes < 8) {
      this.fail(`dimensions must be miINT32 with >= 2 entries (found ${typeName(dimsType)}, ${this.tBytes} bytes)`, p, path);
    }
    const nd = this.tBytes / 4;
    // Packed small arrays for the usual 2-D case: cheaper for millions of cell items.
    let dims: number[];
    if (nd === 2) dims = [this.i32(this.tData), this.i32(this.tData + 4)];
    else {
      dims = [];
      for (let i = 0; i < nd; i++) dims.push(this.i32(this.tData + 4 * i));
    }
    let count = 1;
    for (let i = 0; i < nd; i++) {
      const d = dims[i]!;
      if (d < 0) this.fail(`negative dimension ${d}`, dimsPos, path);
      count *= d;
    }
    p = this.tNext;

    this.readTag(p, end, path, 'array name');
    if (this.tType !== miINT8 && this.tType !== miUINT8 && this.tType !== miUTF8) {
      this.fail(`array name must be miINT8 (found ${typeName(this.tType)})`, p, path);
    }
    const name = this.tBytes === 0 ? '' : this.buf.toString('latin1', this.tData, this.tData + this.tBytes);
    p = this.tNext;
    if (path.parent === null && path.seg === '') path.seg = name;

    let value: MatValue;
    if (clsCode === mxCELL) {
      const items = new Array<MatValue>(count);
      for (let i = 0; i < count; i++) {
        items[i] = this.parseMatrix(p, end, { parent: path, seg: null, index: i });
        p = this.next;
      }
      value = { kind: 'cell', dims, items };
    } else if (clsCode === mxSTRUCT) {
      value = this.parseStruct(p, end, dims, count, path);
    } else if (clsCode === mxCHAR) {
      value = this.parseChar(p, end, dims, count, path);
    } else if (CLASS_BY_CODE[clsCode] !== undefined) {
      const cls = CLASS_BY_CODE[clsCode]!;
      const dataPos = p;
      this.readTag(p, end, path, 'real part');
      const data = this.decodeNumeric(this.tType, this.tData, this.tBytes, count, dataPos, path, 'real part');
      p = this.tNext;
      if (logical) {
        const b = new Uint8Array(count);
        for (let i = 0; i < count; i++) b[i] = data[i] !== 0 ? 1 : 0;
        value = { kind: 'logical', dims, data: b };
      } else {
        const v: MatNumeric = { kind: 'numeric', class: cls, dims, data };
        if (cls === 'int64' || cls === 'uint64') {
          v.big = this.decodeBig(cls, this.tType, this.tData, count, data);
        }
        if (complex) {
          const imPos = p;
          this.readTag(p, end, path, 'imaginary part');
          v.imag = this.decodeNumeric(this.tType, this.tData, this.tBytes, count, imPos, path, 'imaginary part');
        }
        value = v;
      }
    } else {
      const what = CLASS_NAMES[clsCode] ?? `unknown class code ${clsCode}`;
      const hint = clsCode === mxSPARSE ? ' (convert with full() before saving)'
        : clsCode === mxOBJECT || clsCode === 17 ? ' (MATLAB objects/strings/datetimes cannot be read; convert to char/double/cell/struct)' : '';
      this.fail(`unsupported array class '${what}'${hint}`, pos, path);
    }
    this.next = after;
    this.lastName = name;
    return value;
  }

  private parseStruct(p: number, end: number, dims: number[], count: number, path: PathNode): MatStruct {
    const lenPos = p;
    this.readTag(p, end, path, 'field name length');
    if (this.tType !== miINT32 || this.tBytes !== 4) this.fail(`struct field name length must be a 4-byte miINT32 (found ${typeName(this.tType)})`, lenPos, path);
    const fl = this.i32(this.tData);
    p = this.tNext;
    const namesPos = p;
    const namesType = this.readTag(p, end, path, 'field names');
    if (namesType !== miINT8 && namesType !== miUINT8) this.fail(`struct field names must be miINT8 (found ${typeName(namesType)})`, namesPos, path);
    if (fl <= 0 && this.tBytes > 0) this.fail(`struct field name length ${fl} is invalid`, lenPos, path);
    if (fl > 0 && this.tBytes % fl !== 0) this.fail(`struct field names take ${this.tBytes} bytes, not a multiple of field name length ${fl}`, namesPos, path);
    const nf = fl > 0 ? this.tBytes / fl : 0;
    const fields: string[] = [];
    for (let i = 0; i < nf; i++) {
      const s = this.tData + i * fl;
      let e = s;
      while (e < s + fl && this.buf[e] !== 0) e++;
      const f = this.buf.toString('latin1', s, e);
      if (f === '__proto__' || fields.includes(f)) this.fail(`invalid or duplicate struct field name '${f}'`, namesPos, path);
      fields.push(f);
    }
    p = this.tNext;
    const items = new Array<Record<string, MatValue>>(count);
    for (let i = 0; i < count; i++) {
      const rec: Record<string, MatValue> = {};
      const elemPath: PathNode = count === 1 ? path : { parent: path, seg: `(${i + 1})`, index: 0 };
      for (const f of fields) {
        rec[f] = this.parseMatrix(p, end, { parent: elemPath, seg: `.${f}`, index: 0 });
        p = this.next;
      }
      items[i] = rec;
    }
    return { kind: 'struct', dims, fields, items };
  }

  private parseChar(p: number, end: number, dims: number[], count: number, path: PathNode): MatChar {
    const dataPos = p;
    this.readTag(p, end, path, 'char data');
    const t = this.tType, s = this.tData, n = this.tBytes;
    let text: string;
    switch (t) {
      case miUTF8:
        text = this.buf.toString('utf8', s, s + n);
        break;
      case miUTF16: case miUINT16: case miINT16:
        if (n % 2 !== 0) this.fail(`UTF-16 char data has odd byte count ${n}`, dataPos, path);
        if (this.le) text = this.buf.toString('utf16le', s, s + n);
        else {
          const units = new Array<number>(n / 2);
          for (let i = 0; i < n / 2; i++) units[i] = this.dv.getUint16(s + 2 * i, false);
          text = codeUnitsToString(units);
        }
        break;
      case miUINT8: case miINT8:
        text = this.buf.toString('latin1', s, s + n);
        break;
      case miUTF32: case miUINT32: case miINT32: {
        if (n % 4 !== 0) this.fail(`UTF-32 char data has byte count ${n}, not a multiple of 4`, dataPos, path);
        let out = '';
        for (let i = 0; i < n / 4; i++) {
          const cp = this.dv.getUint32(s + 4 * i, this.le);
          if (cp > 0x10ffff) this.fail(`invalid code point ${cp} in char data`, dataPos, path);
          out += String.fromCodePoint(cp);
        }
        text = out;
        break;
      }
      default:
        this.fail(`char data stored as ${typeName(t)} is not supported`, dataPos, path);
    }
    if (text.length !== count) {
      // UTF-8/UTF-32 data can legitimately differ from the size in code units
      // when writers count bytes; a single row can be resized safely.
      if (dims.length === 2 && (dims[0] ?? 0) <= 1) {
        dims = text.length === 0 ? [0, 0] : [1, text.length];
      } else {
        this.fail(`char data has ${text.length} characters but dimensions ${dims.join('x')} need ${count}`, dataPos, path);
      }
    }
    return { kind: 'char', dims, text };
  }

  /** Converts stored numeric data of any integer/float storage type to doubles. */
  private decodeNumeric(t: number, s: number, n: number, count: number, tagPos: number, path: PathNode, what: string): Float64Array {
    const size = TYPE_SIZE[t];
    if (size === undefined) this.fail(`${what} stored as ${typeName(t)} is not a numeric type`, tagPos, path);
    if (n % size !== 0) this.fail(`${what}: ${n} bytes is not a multiple of the ${typeName(t)} size ${size}`, tagPos, path);
    const m = n / size;
    if (m !== count) this.fail(`${what} has ${m} values but dimensions need ${count}`, tagPos, path);
    const out = new Float64Array(count);
    if (count === 0) return out;
    // Typed-array views pay off for long data; tiny arrays (e.g. millions of
    // 1x4 face boxes) are faster through the DataView loop below.
    if (this.le && HOST_LE && m > 16) {
      const abs = this.buf.byteOffset + s;
      if (t === miDOUBLE) {
        new Uint8Array(out.buffer).set(this.buf.subarray(s, s + n));
        return out;
      }
      // Views need aligned offsets; copy into a fresh buffer when not aligned.
      const src = abs % size === 0 ? this.buf.buffer : new Uint8Array(this.buf.subarray(s, s + n)).buffer;
      const off = abs % size === 0 ? abs : 0;
      switch (t) {
        case miINT8: out.set(new Int8Array(src, off, m)); return out;
        case miUINT8: out.set(new Uint8Array(src, off, m)); return out;
        case miINT16: out.set(new Int16Array(src, off, m)); return out;
        case miUINT16: out.set(new Uint16Array(src, off, m)); return out;
        case miINT32: out.set(new Int32Array(src, off, m)); return out;
        case miUINT32: out.set(new Uint32Array(src, off, m)); return out;
        case miSINGLE: out.set(new Float32Array(src, off, m)); return out;
        default: break; // 64-bit ints: fall through to the generic loop
      }
    }
    const dv = this.dv, le = this.le;
    for (let i = 0; i < m; i++) {
      const o = s + i * size;
      switch (t) {
        case miINT8: out[i] = dv.getInt8(o); break;
        case miUINT8: out[i] = dv.getUint8(o); break;
        case miINT16: out[i] = dv.getInt16(o, le); break;
        case miUINT16: out[i] = dv.getUint16(o, le); break;
        case miINT32: out[i] = dv.getInt32(o, le); break;
        case miUINT32: out[i] = dv.getUint32(o, le); break;
        case miSINGLE: out[i] = dv.getFloat32(o, le); break;
        case miDOUBLE: out[i] = dv.getFloat64(o, le); break;
        case miINT64: out[i] = Number(dv.getBigInt64(o, le)); break;
        case miUINT64: out[i] = Number(dv.getBigUint64(o, le)); break;
      }
    }
    return out;
  }

  private decodeBig(cls: 'int64' | 'uint64', t: number, s: number, count: number, data: Float64Array): BigInt64Array | BigUint64Array {
    const out = cls === 'int64' ? new BigInt64Array(count) : new BigUint64Array(count);
    for (let i = 0; i < count; i++) {
      if (t === miINT64) out[i] = this.dv.getBigInt64(s + 8 * i, this.le);
      else if (t === miUINT64) out[i] = this.dv.getBigUint64(s + 8 * i, this.le);
      else out[i] = BigInt(Math.trunc(data[i]!)); // narrower integer storage: exact already
    }
    return out;
  }
}

function codeUnitsToString(units: number[]): string {
  let s = '';
  for (let i = 0; i < units.length; i += 8192) s += String.fromCharCode(...units.slice(i, i + 8192));
  return s;
}

/**
 * Reads all variables of a level-5 MAT-file. Errors (MatFileError) name the
 * file, the variable / field / cell index, and the byte offset.
 */
export function readMat(buf: Buffer, fileName = '<buffer>'): Map<string, MatValue> {
  function fail(msg: string, off: number): never {
    throw new MatFileError(`${fileName}: ${msg} (at file byte ${off})`, fileName, '', off);
  }
  if (buf.length < 128) fail(`truncated: MAT-file header needs 128 bytes, file has ${buf.length}`, buf.length);
  const head = buf.toString('latin1', 0, 116);
  const ind = buf.toString('latin1', 126, 128);
  let le: boolean;
  if (ind === 'IM') le = true;
  else if (ind === 'MI') le = false;
  else {
    if (buf[0] === 0 || buf[1] === 0 || buf[2] === 0 || buf[3] === 0) {
      fail('not a level-5 MAT-file (looks like a level-4 MAT-file, which is not supported)', 0);
    }
    fail(`not a level-5 MAT-file: endian indicator is ${JSON.stringify(ind)}, expected "IM" or "MI"`, 126);
  }
  const version = le ? buf.readUInt16LE(124) : buf.readUInt16BE(124);
  if (version === 0x0200 || head.startsWith('MATLAB 7.3')) {
    fail('MATLAB v7.3 (HDF5) MAT-files are not supported; save with -v7', 124);
  }
  if (version !== 0x0100) fail(`unsupported MAT-file version 0x${version.toString(16).padStart(4, '0')} (expected 0x0100)`, 124);

  const file = new StreamReader(buf, le, fileName, 'file', 0);
  const out = new Map<string, MatValue>();
  let pos = 128;
  let index = 0;
  while (pos < buf.length) {
    const start = pos;
    const root: PathNode = { parent: null, seg: '', index: 0 };
    const tagWord = buf.length - pos >= 4 ? (le ? buf.readUInt32LE(pos) : buf.readUInt32BE(pos)) : -1;
    let value: MatValue;
    let name: string;
    if (tagWord === miCOMPRESSED) {
      if (buf.length - pos < 8) fail(`truncated: tag of variable #${index + 1} needs 8 bytes, ${buf.length - pos} remain`, pos);
      const n = le ? buf.readUInt32LE(pos + 4) : buf.readUInt32BE(pos + 4);
      const avail = buf.length - pos - 8;
      const cut = n > avail;
      const cutMsg = `compressed variable #${index + 1} declares ${n} bytes but only ${avail} remain in the file`;
      let raw: Buffer;
      try {
        // A cut-short stream is inflated as far as it goes, to locate the damage.
        raw = inflateSync(buf.subarray(pos + 8, pos + 8 + Math.min(n, avail)),
          cut ? { finishFlush: zlibConstants.Z_SYNC_FLUSH } : {});
      } catch (e) {
        fail(cut ? `truncated: ${cutMsg}` : `compressed variable #${index + 1} cannot be decompressed: ${(e as Error).message}`, pos);
      }
      const desc = `the zlib stream of variable #${index + 1} at file byte ${pos}${cut ? `, which is cut short: ${cutMsg}` : ''}`;
      const sub = new StreamReader(raw!, le, fileName, desc, 0);
      sub.cutShort = cut;
      value = sub.parseMatrix(0, raw!.length, root);
      name = sub.lastName;
      if (cut) fail(`truncated: ${cutMsg} (variable '${name}')`, pos);
      pos += 8 + n;
    } else if (tagWord === miMATRIX) {
      const n = buf.length - pos >= 8 ? (le ? buf.readUInt32LE(pos + 4) : buf.readUInt32BE(pos + 4)) : 0;
      const cut = pos + 8 + n > buf.length;
      file.cutShort = cut;
      value = file.parseMatrix(pos, buf.length, root);
      name = file.lastName;
      if (cut) fail(`truncated: variable '${name}' declares ${n} bytes but only ${buf.length - pos - 8} remain`, pos);
      pos = file.next;
    } else {
      if (tagWord === 0 && buf.subarray(pos).every((b) => b === 0)) break; // trailing zero padding
      file.readTag(pos, buf.length, null, `variable #${index + 1}`);
      fail(`variable #${index + 1}: unexpected top-level element ${typeName(tagWord)} (expected miMATRIX or miCOMPRESSED)`, pos);
    }
    if (out.has(name)) fail(`duplicate variable name '${name}'`, start);
    out.set(name, value!);
    index++;
  }
  return out;
}

// ---------------------------------------------------------------- writer

/** Growable little-endian output buffer. Fresh space is zero-filled, so padding needs no writes. */
class ByteWriter {
  buf: Buffer = Buffer.alloc(1 << 16);
  dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  len = 0;

  ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const nb = Buffer.alloc(cap);
    this.buf.copy(nb, 0, 0, this.len);
    this.buf = nb;
    this.dv = new DataView(nb.buffer, nb.byteOffset, nb.byteLength);
  }
  u32(v: number): void { this.ensure(4); this.dv.setUint32(this.len, v >>> 0, true); this.len += 4; }
  bytes(b: Uint8Array): void { this.ensure(b.length); this.buf.set(b, this.len); this.len += b.length; }

  /**
   * Writes an element tag for `nbytes` of data (small format when it fits in
   * 4 bytes), reserves the padded space and returns where the data goes.
   */
  element(type: number, nbytes: number): number {
    if (nbytes > 0 && nbytes <= 4) {
      this.ensure(8);
      this.dv.setUint32(this.len, ((nbytes << 16) | type) >>> 0, true);
      const at = this.len + 4;
      this.len += 8;
      return at;
    }
    const total = 8 + pad8(nbytes);
    this.ensure(total);
    this.dv.setUint32(this.len, type, true);
    this.dv.setUint32(this.len + 4, nbytes, true);
    const at = this.len + 8;
    this.len += total;
    return at;
  }
  result(): Buffer { return this.buf.subarray(0, this.len); }
}

const NAME_RE = /^[A-Za-z][A-Za-z0-9_]*$/;

// Integer storage candidates for `narrow`, smallest first.
const NARROW: Array<[number, number, number]> = [
  [miUINT8, 0, 0xff], [miINT8, -0x80, 0x7f], [miUINT16, 0, 0xffff], [miINT16, -0x8000, 0x7fff],
  [miUINT32, 0, 0xffffffff], [miINT32, -0x80000000, 0x7fffffff],
];
const INT_RANGE: Partial<Record<NumericClass, [number, number]>> = {
  int8: [-0x80, 0x7f], uint8: [0, 0xff], int16: [-0x8000, 0x7fff], uint16: [0, 0xffff],
  int32: [-0x80000000, 0x7fffffff], uint32: [0, 0xffffffff],
};

function writeFail(path: PathNode, msg: string): never {
  throw new Error(`writeMat: ${formatPath(path)}: ${msg}`);
}

/** Writes `values` as storage type `t` (already checked to fit). */
function writeNumbers(w: ByteWriter, t: number, values: ArrayLike<number>): void {
  const n = values.length;
  const at = w.element(t, n * TYPE_SIZE[t]!);
  const dv = w.dv;
  for (let i = 0; i < n; i++) {
    const v = values[i]!;
    switch (t) {
      case miDOUBLE: dv.setFloat64(at + 8 * i, v, true); break;
      case miSINGLE: dv.setFloat32(at + 4 * i, v, true); break;
      case miINT8: dv.setInt8(at + i, v); break;
      case miUINT8: dv.setUint8(at + i, v); break;
      case miINT16: dv.setInt16(at + 2 * i, v, true); break;
      case miUINT16: dv.setUint16(at + 2 * i, v, true); break;
      case miINT32: dv.setInt32(at + 4 * i, v, true); break;
      case miUINT32: dv.setUint32(at + 4 * i, v, true); break;
      case miINT64: dv.setBigInt64(at + 8 * i, BigInt(v), true); break;
      case miUINT64: dv.setBigUint64(at + 8 * i, BigInt(v), true); break;
    }
  }
}

/** Picks the storage type for numeric data of class `cls`, checking integer classes' ranges. */
function storageType(cls: NumericClass, values: ArrayLike<number>, narrow: boolean, path: PathNode): number {
  const range = INT_RANGE[cls];
  if (range || cls === 'int64' || cls === 'uint64') {
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (!Number.isInteger(v) || (range && (v < range[0] || v > range[1])) || (cls === 'uint64' && v < 0)) {
        writeFail(path, `value ${v} at index ${i} does not fit class ${cls}`);
      }
    }
  }
  if (!narrow || cls === 'int64' || cls === 'uint64' || values.length === 0) return STORAGE_BY_CLASS[cls];
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    // v !== Math.floor(v) also catches NaN and +-Inf; 1/v catches -0.
    if (v !== Math.floor(v) || (v === 0 && 1 / v < 0)) return STORAGE_BY_CLASS[cls];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  for (let k = 0; k < NARROW.length; k++) {
    const c = NARROW[k]!;
    if (lo >= c[1] && hi <= c[2]) return c[0];
  }
  return STORAGE_BY_CLASS[cls];
}

function checkDims(dims: unknown, n: number, path: PathNode): number[] {
  if (!Array.isArray(dims) || dims.length < 2) writeFail(path, `dims must be an array of >= 2 non-negative integers, got ${JSON.stringify(dims)}`);
  let count = 1;
  for (const d of dims as unknown[]) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d > 0x7fffffff) {
      writeFail(path, `dims must be an array of >= 2 non-negative integers, got ${JSON.stringify(dims)}`);
    }
    count *= d;
  }
  if (count !== n) writeFail(path, `dims ${(dims as number[]).join('x')} need ${count} elements but ${n} were given`);
  return dims as number[];
}

function writeHeader(w: ByteWriter, classCode: number, flags: number, dims: number[], name: string): void {
  let at = w.element(miUINT32, 8);
  w.dv.setUint32(at, (classCode | flags) >>> 0, true);
  at = w.element(miINT32, 4 * dims.length);
  for (let i = 0; i < dims.length; i++) w.dv.setInt32(at + 4 * i, dims[i]!, true);
  if (name.length === 0) w.element(miINT8, 0);
  else {
    const nameAt = w.element(miINT8, name.length); // may grow w.buf, so call it first
    w.buf.write(name, nameAt, 'latin1');
  }
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

function writeMatrix(w: ByteWriter, v: MatValue, name: string, path: PathNode, narrow: boolean): void {
  const start = w.len;
  w.u32(miMATRIX);
  w.u32(0); // size patched below
  switch (v?.kind) {
    case 'numeric': {
      const code = CODE_BY_CLASS[v.class];
      if (code === undefined) writeFail(path, `unknown numeric class '${v.class}'`);
      const dims = checkDims(v.dims, v.data.length, path);
      if (v.imag && v.imag.length !== v.data.length) writeFail(path, `imag has ${v.imag.length} values, real part ${v.data.length}`);
      writeHeader(w, code, v.imag ? FLAG_COMPLEX : 0, dims, name);
      if (v.big && (v.class === 'int64' || v.class === 'uint64')) {
        if (v.big.length !== v.data.length) writeFail(path, `big has ${v.big.length} values, data ${v.data.length}`);
        const at = w.element(STORAGE_BY_CLASS[v.class], 8 * v.big.length);
        for (let i = 0; i < v.big.length; i++) {
          if (v.class === 'int64') w.dv.setBigInt64(at + 8 * i, v.big[i]!, true);
          else w.dv.setBigUint64(at + 8 * i, v.big[i]!, true);
        }
      } else {
        writeNumbers(w, storageType(v.class, v.data, narrow, path), v.data);
      }
      if (v.imag) writeNumbers(w, storageType(v.class, v.imag, narrow, path), v.imag);
      break;
    }
    case 'logical': {
      const dims = checkDims(v.dims, v.data.length, path);
      writeHeader(w, CODE_BY_CLASS.uint8, FLAG_LOGICAL, dims, name);
      const at = w.element(miUINT8, v.data.length);
      for (let i = 0; i < v.data.length; i++) w.buf[at + i] = v.data[i] ? 1 : 0;
      break;
    }
    case 'char': {
      const dims = checkDims(v.dims, v.text.length, path);
      writeHeader(w, mxCHAR, 0, dims, name);
      // ASCII goes out as miUTF8 (one byte per char), anything else as
      // miUTF16 code units: the same choice MATLAB makes.
      if (isAscii(v.text)) {
        const at = w.element(miUTF8, v.text.length);
        if (v.text.length) w.buf.write(v.text, at, 'latin1');
      } else {
        const at = w.element(miUTF16, 2 * v.text.length);
        for (let i = 0; i < v.text.length; i++) w.dv.setUint16(at + 2 * i, v.text.charCodeAt(i), true);
      }
      break;
    }
    case 'cell': {
      const dims = checkDims(v.dims, v.items.length, path);
      writeHeader(w, mxCELL, 0, dims, name);
      for (let i = 0; i < v.items.length; i++) {
        writeMatrix(w, v.items[i]!, '', { parent: path, seg: null, index: i }, narrow);
      }
      break;
    }
    case 'struct': {
      const dims = checkDims(v.dims, v.items.length, path);
      writeHeader(w, mxSTRUCT, 0, dims, name);
      let maxLen = 0;
      for (const f of v.fields) {
        if (!NAME_RE.test(f)) writeFail(path, `invalid struct field name ${JSON.stringify(f)}`);
        maxLen = Math.max(maxLen, f.length);
      }
      if (new Set(v.fields).size !== v.fields.length) writeFail(path, 'duplicate struct field names');
      // MATLAB uses 32; longer names need a longer (8-aligned) slot.
      const fl = Math.max(32, pad8(maxLen + 1));
      const flAt = w.element(miINT32, 4);
      w.dv.setInt32(flAt, fl, true);
      const at = w.element(miINT8, fl * v.fields.length);
      v.fields.forEach((f, i) => w.buf.write(f, at + i * fl, 'latin1'));
      for (let i = 0; i < v.items.length; i++) {
        const item = v.items[i]!;
        const ip: PathNode = v.items.length === 1 ? path : { parent: path, seg: `(${i + 1})`, index: 0 };
        for (const f of v.fields) {
          const fv = item[f];
          const fp: PathNode = { parent: ip, seg: `.${f}`, index: 0 };
          if (fv === undefined) writeFail(fp, 'field is missing');
          writeMatrix(w, fv, '', fp, narrow);
        }
      }
      break;
    }
    default:
      writeFail(path, `not a MatValue (kind ${JSON.stringify((v as { kind?: unknown } | undefined)?.kind)})`);
  }
  w.dv.setUint32(start + 4, w.len - start - 8, true);
}

/** Writes a level-5 MAT-file (little-endian, readable by MATLAB and scipy.io.loadmat). */
export function writeMat(vars: Record<string, MatValue>, opts: WriteMatOptions = {}): Buffer {
  const compress = opts.compress ?? true;
  const narrow = opts.narrow ?? false;
  const text = opts.headerText ?? 'MATLAB 5.0 MAT-file, written by pipe (stages/lib/matfile.ts)';
  if (text.length > 116 || !/^[\x20-\x7e]*$/.test(text)) throw new Error('writeMat: headerText must be at most 116 printable ASCII characters');
  const w = new ByteWriter();
  const head = Buffer.alloc(128, 0x20);
  head.write(text, 0, 'latin1');
  head.fill(0, 116, 124); // no subsystem data
  head.writeUInt16LE(0x0100, 124);
  head.write('IM', 126, 'latin1');
  w.bytes(head);
  const scratch = compress ? new ByteWriter() : w;
  for (const [name, value] of Object.entries(vars)) {
    if (!NAME_RE.test(name)) throw new Error(`writeMat: invalid variable name ${JSON.stringify(name)}`);
    const root: PathNode = { parent: null, seg: name, index: 0 };
    if (compress) {
      scratch.buf.fill(0, 0, scratch.len); // element() relies on zeroed space for padding
      scratch.len = 0;
      writeMatrix(scratch, value, name, root, narrow);
      const z = deflateSync(scratch.result());
      w.u32(miCOMPRESSED);
      w.u32(z.length);
      w.bytes(z);
    } else {
      writeMatrix(w, value, name, root, narrow);
    }
  }
  return Buffer.from(w.result());
}
