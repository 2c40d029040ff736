// TFRecord framing + tf.train.Example encoding.
// Checked against things other than our own code: `protoc --decode` (protobuf-compiler) reads the
// payloads using TensorFlow's .proto definitions, and a table-based CRC32C written here checks the
// framing independently of @node-rs/crc32.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

import {
  TFRecordError,
  TFRecordWriter,
  frameRecord,
  maskedCrc32c,
  parseTFRecords,
  readAllTFRecords,
  readTFRecords,
} from '../stages/lib/tfrecord.js';
import { decodeExample, encodeExample, type ExampleFeatures } from '../stages/lib/tf-example.js';

const tmpDirs: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'pipe-tfrecord-'));
  tmpDirs.push(d);
  return d;
}
after(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const r of it) out.push(r);
  return out;
}

async function writeFile(file: string, payloads: Uint8Array[]): Promise<void> {
  const w = await TFRecordWriter.open(file);
  for (const p of payloads) await w.write(p);
  await w.close();
  assert.equal(w.records, payloads.length);
}

// Deterministic pseudo-random bytes (xorshift32) so failures reproduce.
function pseudoRandomBytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// Independent CRC32C (Castagnoli, reflected polynomial 0x82F63B78), one table, byte at a time.
const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function refCrc32c(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC32C_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function refMasked(buf: Uint8Array): number {
  const c = refCrc32c(buf);
  // TF's crc32c::Mask: rotate right by 15, add kMaskDelta, all mod 2^32.
  return (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
}

/** Split a TFRecord file by hand, checking every field with the reference CRC. */
function refSplit(file: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < file.length) {
    assert.ok(file.length - pos >= 16, `record ${out.length}: at least 16 framing bytes`);
    const lenBytes = file.subarray(pos, pos + 8);
    const len = Number(file.readBigUInt64LE(pos));
    assert.equal(file.readUInt32LE(pos + 8), refMasked(lenBytes), `record ${out.length}: length CRC`);
    const payload = file.subarray(pos + 12, pos + 12 + len);
    assert.equal(payload.length, len, `record ${out.length}: payload complete`);
    assert.equal(file.readUInt32LE(pos + 12 + len), refMasked(payload), `record ${out.length}: data CRC`);
    out.push(payload);
    pos += 16 + len;
  }
  assert.equal(pos, file.length);
  return out;
}

test('reference CRC32C matches the standard test vector, and the library agrees', () => {
  assert.equal(refCrc32c(Buffer.from('123456789')), 0xe3069283);
  assert.equal(refCrc32c(new Uint8Array(0)), 0);
  // RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA, 32 bytes of 0xFF -> 0x62A8AB43.
  assert.equal(refCrc32c(new Uint8Array(32)), 0x8a9136aa);
  assert.equal(refCrc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
  for (const n of [0, 1, 7, 8, 9, 100, 4096, 70000]) {
    const b = pseudoRandomBytes(n, n + 3);
    assert.equal(maskedCrc32c(b), refMasked(b), `masked CRC of ${n} bytes`);
  }
});

test('frameRecord layout: LE length, masked length CRC, payload, masked payload CRC', () => {
  const payload = Buffer.from('hello tfrecord');
  const f = frameRecord(payload);
  assert.equal(f.length, 8 + 4 + payload.length + 4);
  assert.equal(f.readBigUInt64LE(0), BigInt(payload.length));
  assert.deepEqual(refSplit(f), [payload]);
  // Empty record: the length field is 8 zero bytes, then both CRCs per the reference.
  const empty = frameRecord(new Uint8Array(0));
  assert.equal(empty.length, 16);
  assert.equal(empty.readUInt32LE(8), refMasked(new Uint8Array(8)));
  assert.equal(empty.readUInt32LE(12), refMasked(new Uint8Array(0)));
});

// ---------------------------------------------------------------------------------------------
// TensorFlow's definitions (tensorflow/core/example/feature.proto and example.proto), restated.
const FEATURE_PROTO = `syntax = "proto3";

package tensorflow;

option cc_enable_arenas = true;
option java_outer_classname = "FeatureProtos";
option java_multiple_files = true;
option java_package = "org.tensorflow.example";

message BytesList {
  repeated bytes value = 1;
}

message FloatList {
  repeated float value = 1 [packed = true];
}

message Int64List {
  repeated int64 value = 1 [packed = true];
}

message Feature {
  oneof kind {
    BytesList bytes_list = 1;
    FloatList float_list = 2;
    Int64List int64_list = 3;
  }
}

message Features {
  map<string, Feature> feature = 1;
}

message FeatureList {
  repeated Feature feature = 1;
}

message FeatureLists {
  map<string, FeatureList> feature_list = 1;
}
`;

const EXAMPLE_PROTO = `syntax = "proto3";

package tensorflow;

import "feature.proto";

option cc_enable_arenas = true;
option java_outer_classname = "ExampleProtos";
option java_multiple_files = true;
option java_package = "org.tensorflow.example";

message Example {
  Features features = 1;
}

message SequenceExample {
  Features context = 1;
  FeatureLists feature_lists = 2;
}
`;

function protocAvailable(): boolean {
  const r = spawnSync('protoc', ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

/** Undo protobuf text-format string escaping (C-style: \\, \", \', \n, \r, \t, octal \NNN, \xHH). */
function unescapeText(s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch !== '\\') {
      out.push(...Buffer.from(ch, 'utf8'));
      continue;
    }
    const n = s[++i]!;
    if (/[0-7]/.test(n)) {
      let oct = n;
      while (oct.length < 3 && /[0-7]/.test(s[i + 1] ?? '')) oct += s[++i];
      out.push(parseInt(oct, 8));
    } else if (n === 'x') {
      let h = '';
      while (h.length < 2 && /[0-9a-fA-F]/.test(s[i + 1] ?? '')) h += s[++i];
      out.push(parseInt(h, 16));
    } else {
      const simple: Record<string, number> = { n: 10, r: 13, t: 9, '\\': 92, '"': 34, "'": 39, a: 7, b: 8, f: 12, v: 11 };
      assert.ok(n in simple, `unknown escape \\${n}`);
      out.push(simple[n]!);
    }
  }
  return Buffer.from(out);
}

type ProtocFeature = { key: string; kind: string; values: string[] };

/** Read protoc's text output for an Example into [{key, kind, values(as printed)}] in output order. */
function parseProtocText(text: string): ProtocFeature[] {
  const feats: ProtocFeature[] = [];
  let cur: ProtocFeature | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let m: RegExpMatchArray | null;
    if ((m = line.match(/^key: "(.*)"$/))) {
      cur = { key: m[1]!, kind: '', values: [] };
      feats.push(cur);
    } else if ((m = line.match(/^(bytes_list|float_list|int64_list) \{$/))) {
      assert.ok(cur, 'list before key');
      cur.kind = m[1]!;
    } else if ((m = line.match(/^value: (.*)$/))) {
      assert.ok(cur, 'value before key');
      cur.values.push(m[1]!);
    }
  }
  return feats;
}

test('protoc --decode=tensorflow.Example reads our records (bytes, floats, int64)', (t) => {
  if (!protocAvailable()) {
    t.skip('protoc not found: install Debian package protobuf-compiler to run this independent check');
    return;
  }
  const dir = tmpDir();
  const protoDir = path.join(dir, 'proto');
  fs.mkdirSync(protoDir);
  fs.writeFileSync(path.join(protoDir, 'feature.proto'), FEATURE_PROTO);
  fs.writeFileSync(path.join(protoDir, 'example.proto'), EXAMPLE_PROTO);

  const binary = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x22, 0x5c, 0x0a]);
  const examples: ExampleFeatures[] = [
    {
      // inserted out of order on purpose (protoc prints map entries sorted either way; wire order is checked below)
      label: { int64: [-1, 0, 7, 2 ** 32 + 5, -(2 ** 40), 9007199254740993n, -9223372036854775808n, 9223372036854775807n] },
      image: { bytes: [binary, Buffer.from('héllo "world"', 'utf8'), new Uint8Array(0)] },
      score: { float: [1.5, -2.25, 0, 1024, 0.1] },
      '10': { int64: [10] },
      '9': { int64: [9] },
    },
    { empty_bytes: { bytes: [] }, empty_float: { float: [] }, empty_int: { int64: [] } },
    {},
  ];

  return (async () => {
    const file = path.join(dir, 'ex.tfrecord');
    await writeFile(file, examples.map((e) => encodeExample(e)));
    const payloads = refSplit(fs.readFileSync(file));
    assert.equal(payloads.length, examples.length);

    const decoded = payloads.map((p, i) => {
      const r = spawnSync('protoc', ['--decode=tensorflow.Example', `--proto_path=${protoDir}`, 'example.proto'], {
        input: p,
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, `protoc failed on record ${i}: ${r.stderr}`);
      return parseProtocText(r.stdout);
    });

    // Record 0: every kind, sorted keys ("10" < "9" < "image" < "label" < "score" bytewise).
    const r0 = decoded[0]!;
    assert.deepEqual(r0.map((f) => f.key), ['10', '9', 'image', 'label', 'score']);
    const byKey = Object.fromEntries(r0.map((f) => [f.key, f]));
    assert.equal(byKey['label']!.kind, 'int64_list');
    assert.deepEqual(byKey['label']!.values, [
      '-1', '0', '7', '4294967301', '-1099511627776', '9007199254740993', '-9223372036854775808', '9223372036854775807',
    ]);
    assert.equal(byKey['score']!.kind, 'float_list');
    for (const [i, v] of byKey['score']!.values.entries()) {
      assert.equal(Math.fround(Number(v)), Math.fround([1.5, -2.25, 0, 1024, 0.1][i]!), `float ${i} printed as ${v}`);
    }
    assert.equal(byKey['image']!.kind, 'bytes_list');
    assert.equal(byKey['image']!.values.length, 3);
    const bytesVals = byKey['image']!.values.map((v) => unescapeText(v.replace(/^"|"$/g, '')));
    assert.deepEqual(bytesVals[0], binary);
    assert.equal(bytesVals[1]!.toString('utf8'), 'héllo "world"');
    assert.equal(bytesVals[2]!.length, 0);
    assert.deepEqual(byKey['9']!.values, ['9']);
    assert.deepEqual(byKey['10']!.values, ['10']);

    // Record 1: empty lists still name their kind.
    assert.deepEqual(
      decoded[1]!.map((f) => [f.key, f.kind, f.values.length]),
      [['empty_bytes', 'bytes_list', 0], ['empty_float', 'float_list', 0], ['empty_int', 'int64_list', 0]],
    );
    // Record 2: no features at all.
    assert.deepEqual(decoded[2], []);
  })();
});

test('protoc --encode output decodes with decodeExample (other direction)', (t) => {
  if (!protocAvailable()) {
    t.skip('protoc not found: install Debian package protobuf-compiler to run this independent check');
    return;
  }
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'feature.proto'), FEATURE_PROTO);
  fs.writeFileSync(path.join(dir, 'example.proto'), EXAMPLE_PROTO);
  const text = `features {
    feature { key: "b" value { bytes_list { value: "ab\\000\\377" value: "" } } }
    feature { key: "f" value { float_list { value: 0.5 value: -3 } } }
    feature { key: "i" value { int64_list { value: -5 value: 5000000000 value: 9007199254740993 value: -9223372036854775808 } } }
    feature { key: "none" value { } }
  }`;
  const r = spawnSync('protoc', ['--encode=tensorflow.Example', `--proto_path=${dir}`, 'example.proto'], { input: text });
  assert.equal(r.status, 0, `protoc --encode failed: ${r.stderr}`);
  const d = decodeExample(r.stdout);
  assert.deepEqual(d, {
    b: { bytes: [new Uint8Array([0x61, 0x62, 0, 0xff]), new Uint8Array(0)] },
    f: { float: [0.5, -3] },
    i: { int64: [-5, 5000000000, 9007199254740993n, -9223372036854775808n] },
  });
});

// ---------------------------------------------------------------------------------------------

test('encodeExample/decodeExample round trip and validation', () => {
  const feats: ExampleFeatures = {
    z: { float: [0.5, -1, 3.25, Math.fround(0.1)] },
    a: { bytes: [Buffer.from('x'), new Uint8Array([0, 255])] },
    m: { int64: [0, -1, 2 ** 53 - 1, -(2 ** 53 - 1), -(2n ** 53n), 2n ** 62n + 1n, -(2n ** 63n)] },
    e: { int64: [] },
  };
  const bytes = encodeExample(feats);
  const back = decodeExample(bytes);
  assert.deepEqual(Object.keys(back), ['a', 'e', 'm', 'z']);
  assert.deepEqual(back['z'], { float: [0.5, -1, 3.25, Math.fround(0.1)] });
  assert.deepEqual(back['a'], { bytes: [new Uint8Array([0x78]), new Uint8Array([0, 255])] });
  // safe integers come back as numbers, anything wider as bigint
  assert.deepEqual(back['m'], { int64: [0, -1, 2 ** 53 - 1, -(2 ** 53 - 1), -(2n ** 53n), 2n ** 62n + 1n, -(2n ** 63n)] });
  assert.deepEqual(back['e'], { int64: [] });
  // bigint mode
  assert.deepEqual(decodeExample(bytes, { int64: 'bigint' })['m'], {
    int64: [0n, -1n, 2n ** 53n - 1n, -(2n ** 53n - 1n), -(2n ** 53n), 2n ** 62n + 1n, -(2n ** 63n)],
  });
  // an exact double above 2^53 is encoded without rounding (2^60 is exact)
  assert.deepEqual(decodeExample(encodeExample({ n: { int64: [2 ** 60] } })), { n: { int64: [2n ** 60n] } });

  assert.throws(() => encodeExample({ bad: { int64: [1.5] } }), /feature "bad": int64 value \[0\] = 1.5 is not an integer/);
  assert.throws(() => encodeExample({ big: { int64: [2n ** 63n] } }), /feature "big".*outside the int64 range/);
  assert.throws(() => encodeExample({ two: { int64: [1], float: [1] } as never }), /feature "two": must have exactly one/);
  assert.throws(() => encodeExample({ s: { bytes: ['str' as never] } }), /feature "s": bytes value \[0\] is not a Uint8Array/);
  assert.throws(() => decodeExample(new Uint8Array([0x0a, 0x05, 0x0a])), /not a valid tf.train.Example/);
});

test('encodeExample is deterministic regardless of key insertion order', () => {
  const a = encodeExample({ b: { int64: [1] }, a: { float: [2] }, '2': { bytes: [] }, '10': { int64: [3] }, é: { int64: [4] } });
  const b = encodeExample({ é: { int64: [4] }, '10': { int64: [3] }, a: { float: [2] }, '2': { bytes: [] }, b: { int64: [1] } });
  assert.deepEqual(Buffer.from(a), Buffer.from(b));
  // entries are in UTF-8 byte order on the wire ("10" < "2" < "a" < "b" < "é"); JS object key
  // order cannot show this (integer-like keys always come first), so look at the bytes
  const at = (k: string) => Buffer.from(a).indexOf(Buffer.from([0x0a, Buffer.byteLength(k), ...Buffer.from(k)]));
  const positions = ['10', '2', 'a', 'b', 'é'].map(at);
  assert.ok(positions.every((p) => p >= 0), `all keys found: ${positions}`);
  assert.deepEqual([...positions].sort((x, y) => x - y), positions);
  assert.deepEqual(Object.keys(decodeExample(a)).sort(), ['10', '2', 'a', 'b', 'é']);
});

test('round trip many records incl. empty and 1 MB payloads; stream and sync readers agree', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'many.tfrecord');
  const payloads: Buffer[] = [Buffer.alloc(0)];
  for (let i = 0; i < 2000; i++) payloads.push(pseudoRandomBytes((i * 37) % 300, i + 1));
  payloads.push(Buffer.alloc(0));
  payloads.push(pseudoRandomBytes(1 << 20, 42)); // 1 MiB
  payloads.push(pseudoRandomBytes(70001, 43)); // crosses the 64 KiB read chunk
  payloads.push(Buffer.alloc(0));
  await writeFile(file, payloads);

  const raw = fs.readFileSync(file);
  assert.equal(raw.length, payloads.reduce((s, p) => s + p.length + 16, 0));
  assert.deepEqual(refSplit(raw), payloads);
  assert.deepEqual(await collect(readTFRecords(file)), payloads);
  assert.deepEqual(readAllTFRecords(file), payloads);
  assert.deepEqual(await collect(readTFRecords(file, { verify: false })), payloads);
});

test('writer: un-awaited writes keep order; records/bytes counters; write after close fails', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'w.tfrecord');
  const w = await TFRecordWriter.open(file);
  const ps: Promise<void>[] = [];
  const payloads: Buffer[] = [];
  for (let i = 0; i < 300; i++) {
    const p = pseudoRandomBytes(10000 + i, i + 7); // ~3 MB total: several flushes
    payloads.push(p);
    ps.push(w.write(p));
  }
  await Promise.all(ps);
  await w.close();
  await w.close(); // second close is a no-op
  assert.equal(w.records, 300);
  assert.equal(w.bytes, fs.statSync(file).size);
  assert.deepEqual(readAllTFRecords(file), payloads);
  await assert.rejects(w.write(Buffer.from('late')), /write after close/);
});

test('same records written twice give byte-identical files', async () => {
  const dir = tmpDir();
  const mk = (order: number) =>
    Array.from({ length: 50 }, (_, i) => {
      const f: ExampleFeatures =
        order === 0
          ? { id: { int64: [i, -i, 2n ** 40n + BigInt(i)] }, x: { float: [i / 4] }, name: { bytes: [Buffer.from(`r${i}`)] } }
          : { name: { bytes: [Buffer.from(`r${i}`)] }, x: { float: [i / 4] }, id: { int64: [i, -i, 2n ** 40n + BigInt(i)] } };
      return encodeExample(f);
    });
  await writeFile(path.join(dir, 'a.tfrecord'), mk(0));
  await writeFile(path.join(dir, 'b.tfrecord'), mk(1));
  const a = fs.readFileSync(path.join(dir, 'a.tfrecord'));
  const b = fs.readFileSync(path.join(dir, 'b.tfrecord'));
  assert.ok(a.length > 0);
  assert.ok(a.equals(b), 'files differ');
  // and the records decode back to what was written
  assert.deepEqual(decodeExample(readAllTFRecords(path.join(dir, 'a.tfrecord'))[3]!), {
    id: { int64: [3, -3, 2 ** 40 + 3] },
    name: { bytes: [new Uint8Array(Buffer.from('r3'))] },
    x: { float: [0.75] },
  });
});

/** Offset where record `k` starts in a file of the given payloads. */
function recordOffset(payloads: Buffer[], k: number): number {
  return payloads.slice(0, k).reduce((s, p) => s + p.length + 16, 0);
}

async function expectError(
  file: string,
  check: (e: TFRecordError) => void,
): Promise<void> {
  let streamErr: unknown;
  try {
    await collect(readTFRecords(file));
  } catch (e) {
    streamErr = e;
  }
  assert.ok(streamErr instanceof TFRecordError, `stream reader should throw TFRecordError, got ${String(streamErr)}`);
  check(streamErr);
  let syncErr: unknown;
  try {
    readAllTFRecords(file);
  } catch (e) {
    syncErr = e;
  }
  assert.ok(syncErr instanceof TFRecordError, `sync reader should throw TFRecordError, got ${String(syncErr)}`);
  check(syncErr);
}

test('a corrupted payload byte is reported with file, record index, offset and data CRC', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'corrupt-data.tfrecord');
  const payloads = Array.from({ length: 10 }, (_, i) => pseudoRandomBytes(100 + i, i + 1));
  await writeFile(file, payloads);
  const raw = fs.readFileSync(file);
  const off = recordOffset(payloads, 6);
  raw[off + 12 + 50]! ^= 0x01;
  fs.writeFileSync(file, raw);
  await expectError(file, (e) => {
    assert.equal(e.file, file);
    assert.equal(e.recordIndex, 6);
    assert.equal(e.offset, off);
    assert.equal(e.kind, 'data-crc');
    assert.ok(e.message.includes(file), e.message);
    assert.match(e.message, /record 6 at byte offset \d+: data CRC mismatch/);
  });
  // records before the bad one are still delivered by the stream
  const seen: Buffer[] = [];
  await assert.rejects(async () => {
    for await (const r of readTFRecords(file)) seen.push(r);
  }, TFRecordError);
  assert.deepEqual(seen, payloads.slice(0, 6));
  // without verification the flipped byte goes through unnoticed
  const unchecked = await collect(readTFRecords(file, { verify: false }));
  assert.equal(unchecked.length, 10);
  assert.notDeepEqual(unchecked[6], payloads[6]);
});

test('a corrupted length byte is reported as a length CRC failure', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'corrupt-len.tfrecord');
  const payloads = Array.from({ length: 5 }, (_, i) => pseudoRandomBytes(64, i + 9));
  await writeFile(file, payloads);
  const raw = fs.readFileSync(file);
  const off = recordOffset(payloads, 3);
  raw[off]! ^= 0x04; // length 64 -> 68
  fs.writeFileSync(file, raw);
  await expectError(file, (e) => {
    assert.equal(e.recordIndex, 3);
    assert.equal(e.offset, off);
    assert.equal(e.kind, 'length-crc');
    assert.ok(e.message.includes(file));
    assert.match(e.message, /record 3 .*length CRC mismatch/);
  });
  // a huge corrupt length with verification off is reported as truncation, never allocated
  raw[off + 7] = 0x7f;
  fs.writeFileSync(file, raw);
  await assert.rejects(collect(readTFRecords(file, { verify: false })), (e: unknown) => {
    assert.ok(e instanceof TFRecordError);
    assert.equal(e.kind, 'truncated');
    assert.equal(e.recordIndex, 3);
    return true;
  });
});

test('truncated files are detected (inside payload, inside header, inside footer)', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'trunc.tfrecord');
  const payloads = Array.from({ length: 4 }, (_, i) => pseudoRandomBytes(200, i + 20));
  await writeFile(file, payloads);
  const full = fs.readFileSync(file);
  const lastOff = recordOffset(payloads, 3);
  for (const [cut, what] of [
    [full.length - 1, 'footer'],
    [full.length - 100, 'payload'],
    [lastOff + 5, 'header'],
  ] as const) {
    fs.writeFileSync(file, full.subarray(0, cut));
    await expectError(file, (e) => {
      assert.equal(e.kind, 'truncated', `cut in ${what}`);
      assert.equal(e.recordIndex, 3, `cut in ${what}`);
      assert.equal(e.offset, lastOff);
      assert.match(e.message, /truncated/);
      assert.ok(e.message.includes(file));
    });
  }
  // cutting exactly at a record boundary is a valid, shorter file
  fs.writeFileSync(file, full.subarray(0, lastOff));
  assert.equal((await collect(readTFRecords(file))).length, 3);
  // an empty file has no records
  fs.writeFileSync(file, Buffer.alloc(0));
  assert.deepEqual(await collect(readTFRecords(file)), []);
  assert.deepEqual(parseTFRecords(Buffer.alloc(0)), []);
});

test('abort signal stops the stream between records', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'abort.tfrecord');
  await writeFile(file, Array.from({ length: 20 }, (_, i) => Buffer.from(`rec ${i}`)));
  const ac = new AbortController();
  let n = 0;
  await assert.rejects(async () => {
    for await (const _ of readTFRecords(file, { signal: ac.signal })) {
      if (++n === 5) ac.abort();
    }
  }, { name: 'AbortError' });
  assert.equal(n, 5);
  // stopping early (break) closes the file cleanly; reading again works
  for await (const _ of readTFRecords(file)) break;
  assert.equal((await collect(readTFRecords(file))).length, 20);
});
