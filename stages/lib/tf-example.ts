// tf.train.Example encode/decode, wire-compatible with tensorflow/core/example/{example,feature}.proto.
//
// The message types are built in code with protobufjs reflection so nothing has to locate a
// .proto file at run time. One deliberate difference from the .proto: `Features.feature` is
// declared as `repeated FeatureEntry` instead of `map<string, Feature>`. On the wire a map *is*
// a repeated {key = 1, value = 2} message, so the bytes are identical, but the repeated form lets
// us choose the entry order ourselves (sorted by UTF-8 bytes, as TF's deterministic C++
// serializer does) instead of relying on JS object key order, which puts integer-like keys first.

import protobuf from 'protobufjs';

export type FeatureValue = { bytes: Uint8Array[] } | { float: number[] } | { int64: (number | bigint)[] };
export type ExampleFeatures = Record<string, FeatureValue>;

export interface DecodeExampleOptions {
  /**
   * How int64 values come back. 'auto' (default): a `number` when it is a safe integer,
   * else a `bigint`. 'bigint': always `bigint`.
   */
  int64?: 'auto' | 'bigint';
}

export class TFExampleError extends Error {
  /** Feature name the problem is about, when there is one. */
  readonly feature: string | undefined;
  constructor(message: string, feature?: string) {
    super(message);
    this.name = 'TFExampleError';
    this.feature = feature;
  }
}

const root = protobuf.Root.fromJSON({
  nested: {
    tensorflow: {
      nested: {
        BytesList: { fields: { value: { rule: 'repeated', type: 'bytes', id: 1 } } },
        FloatList: { fields: { value: { rule: 'repeated', type: 'float', id: 1, options: { packed: true } } } },
        Int64List: { fields: { value: { rule: 'repeated', type: 'int64', id: 1, options: { packed: true } } } },
        Feature: {
          oneofs: { kind: { oneof: ['bytesList', 'floatList', 'int64List'] } },
          fields: {
            bytesList: { type: 'BytesList', id: 1 },
            floatList: { type: 'FloatList', id: 2 },
            int64List: { type: 'Int64List', id: 3 },
          },
        },
        // Wire form of map<string, Feature>; see the header comment.
        FeatureEntry: {
          fields: {
            key: { type: 'string', id: 1 },
            value: { type: 'Feature', id: 2 },
          },
        },
        Features: { fields: { feature: { rule: 'repeated', type: 'FeatureEntry', id: 1 } } },
        Example: { fields: { features: { type: 'Features', id: 1 } } },
      },
    },
  },
});

const ExampleType = root.lookupType('tensorflow.Example');

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** Long-like {low, high} pair as protobufjs' writer accepts it (no dependency on the `long` package). */
interface LongBitsLike {
  low: number;
  high: number;
  unsigned: boolean;
}

function toLongBits(v: bigint): LongBitsLike {
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned: false };
}

function int64ToWire(name: string, i: number, v: unknown): number | LongBitsLike {
  if (typeof v === 'bigint') {
    if (v < INT64_MIN || v > INT64_MAX) {
      throw new TFExampleError(`feature "${name}": int64 value [${i}] = ${v} is outside the int64 range`, name);
    }
    return toLongBits(v);
  }
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) {
      throw new TFExampleError(`feature "${name}": int64 value [${i}] = ${v} is not an integer`, name);
    }
    // Doubles beyond 2^53 are still exact integers; go through bigint so nothing is rounded again.
    return Number.isSafeInteger(v) ? v : int64ToWire(name, i, BigInt(v));
  }
  throw new TFExampleError(`feature "${name}": int64 value [${i}] is ${typeof v}, expected number or bigint`, name);
}

function compareUtf8(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

function featureToMessage(name: string, value: FeatureValue): Record<string, unknown> {
  if (value === null || typeof value !== 'object') {
    throw new TFExampleError(`feature "${name}": expected {bytes}|{float}|{int64}, got ${value === null ? 'null' : typeof value}`, name);
  }
  const kinds = (['bytes', 'float', 'int64'] as const).filter((k) => k in value);
  if (kinds.length !== 1) {
    throw new TFExampleError(
      `feature "${name}": must have exactly one of "bytes", "float", "int64" (has ${kinds.length ? kinds.join(', ') : 'none'})`,
      name,
    );
  }
  const kind = kinds[0]!;
  const list = (value as Record<string, unknown>)[kind];
  if (!Array.isArray(list)) {
    throw new TFExampleError(`feature "${name}": "${kind}" must be an array`, name);
  }
  switch (kind) {
    case 'bytes':
      list.forEach((b, i) => {
        if (!(b instanceof Uint8Array)) {
          throw new TFExampleError(`feature "${name}": bytes value [${i}] is not a Uint8Array`, name);
        }
      });
      return { bytesList: { value: list } };
    case 'float':
      list.forEach((f, i) => {
        if (typeof f !== 'number') {
          throw new TFExampleError(`feature "${name}": float value [${i}] is ${typeof f}, expected number`, name);
        }
      });
      return { floatList: { value: list } };
    case 'int64':
      return { int64List: { value: list.map((v, i) => int64ToWire(name, i, v)) } };
  }
}

/**
 * Serialize a tf.train.Example. Deterministic: the same features always give the same bytes,
 * whatever order the keys were inserted in (entries are sorted by the UTF-8 bytes of the name).
 * Floats are stored as float32, so they come back rounded to float32 precision.
 */
export function encodeExample(features: ExampleFeatures): Uint8Array {
  if (features === null || typeof features !== 'object') {
    throw new TFExampleError(`encodeExample: expected an object of features, got ${features === null ? 'null' : typeof features}`);
  }
  const names = Object.keys(features).map((k) => ({ k, utf8: Buffer.from(k, 'utf8') }));
  names.sort((a, b) => compareUtf8(a.utf8, b.utf8));
  const entries = names.map(({ k }) => ({ key: k, value: featureToMessage(k, features[k]!) }));
  // fromObject is skipped on purpose: it would re-parse int64 values through `long`; the
  // objects built above already have exactly the shape the encoder reads.
  return ExampleType.encode({ features: { feature: entries } }).finish();
}

function longToBigint(v: unknown): bigint {
  if (typeof v === 'number') {
    // protobufjs only hands back plain numbers for int64 when its `long` dependency is missing;
    // then wide values have already been rounded, and silently returning them would be wrong.
    if (!Number.isSafeInteger(v)) {
      throw new TFExampleError(`decodeExample: int64 value ${v} lost precision (protobufjs has no 'long' support)`);
    }
    return BigInt(v);
  }
  if (v !== null && typeof v === 'object' && 'low' in v && 'high' in v) {
    const { low, high } = v as { low: number; high: number };
    return BigInt.asIntN(64, (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0));
  }
  throw new TFExampleError(`decodeExample: unexpected int64 representation ${String(v)}`);
}

interface DecodedEntry {
  key?: string;
  value?: {
    bytesList?: { value?: Uint8Array[] };
    floatList?: { value?: number[] };
    int64List?: { value?: unknown[] };
  };
}

/**
 * Parse a serialized tf.train.Example. Like protobuf map parsing, a repeated feature name keeps
 * the last entry. A feature whose `kind` is unset (legal protobuf, carries no data) is left out.
 * Returned bytes values are plain Uint8Array copies (not views of `bytes`).
 */
export function decodeExample(bytes: Uint8Array, opts: DecodeExampleOptions = {}): ExampleFeatures {
  const asBigint = opts.int64 === 'bigint';
  let msg: { features?: { feature?: DecodedEntry[] } };
  try {
    msg = ExampleType.decode(bytes) as unknown as typeof msg;
  } catch (err) {
    throw new TFExampleError(`decodeExample: not a valid tf.train.Example (${(err as Error).message})`);
  }
  const out: ExampleFeatures = {};
  for (const entry of msg.features?.feature ?? []) {
    const name = entry.key ?? '';
    const f = entry.value;
    if (f?.bytesList) {
      out[name] = { bytes: (f.bytesList.value ?? []).map((b) => new Uint8Array(b)) };
    } else if (f?.floatList) {
      out[name] = { float: [...(f.floatList.value ?? [])] };
    } else if (f?.int64List) {
      out[name] = {
        int64: (f.int64List.value ?? []).map((v) => {
          const b = longToBigint(v);
          if (asBigint) return b;
          const n = Number(b);
          return Number.isSafeInteger(n) ? n : b;
        }),
      };
    } else {
      delete out[name]; // later entry with no kind still overrides an earlier one, as map parsing would
    }
  }
  return out;
}
