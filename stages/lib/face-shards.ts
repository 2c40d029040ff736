// Which shard a record goes to, and the shard files' names. shard and crop both use this, so
// an image is a test image for the detector exactly when its face crops are test crops.
//
// shardOf(key, count) = (first 4 bytes of sha256(key), big-endian) mod count. Shards
// count-test_shards … count-1 are test shards, the others train shards; files are named
//   train-00000-of-00010.tfrecord … test-00009-of-00010.tfrecord

import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { TFRecordWriter } from './tfrecord.js';

export type Split = 'train' | 'test';

export function shardOf(key: string, count: number): number {
  if (!Number.isInteger(count) || count < 1) throw new Error(`shardOf: shard count must be a positive integer, got ${count}`);
  return createHash('sha256').update(key, 'utf8').digest().readUInt32BE(0) % count;
}

export function splitOfShard(index: number, count: number, testShards: number): Split {
  return index >= count - testShards ? 'test' : 'train';
}

export function shardFileName(index: number, count: number, testShards: number): string {
  const pad = (n: number) => String(n).padStart(5, '0');
  return `${splitOfShard(index, count, testShards)}-${pad(index)}-of-${pad(count)}.tfrecord`;
}

/** Clear error for impossible shard settings (names the stage). */
export function checkShardSettings(stage: string, count: number, testShards: number): void {
  if (testShards > count) {
    throw new Error(`${stage}: test_shards (${testShards}) is larger than count (${count})`);
  }
}

/** All `count` shard files of a stage's output, open for appending records (empty ones too). */
export class ShardSet {
  private constructor(
    readonly count: number,
    readonly testShards: number,
    private readonly writers: TFRecordWriter[],
  ) {}

  static async open(dir: string, count: number, testShards: number): Promise<ShardSet> {
    const writers: TFRecordWriter[] = [];
    try {
      for (let i = 0; i < count; i++) writers.push(await TFRecordWriter.open(path.join(dir, shardFileName(i, count, testShards))));
    } catch (err) {
      await Promise.allSettled(writers.map((w) => w.close()));
      throw err;
    }
    return new ShardSet(count, testShards, writers);
  }

  /** Append one record to the shard its key hashes to; says which split it went to. */
  async write(key: string, payload: Uint8Array): Promise<Split> {
    const i = shardOf(key, this.count);
    await this.writers[i]!.write(payload);
    return splitOfShard(i, this.count, this.testShards);
  }

  /** Close every file; records per file name. */
  async close(): Promise<Record<string, number>> {
    const results = await Promise.allSettled(this.writers.map((w) => w.close()));
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
    return Object.fromEntries(this.writers.map((w) => [path.basename(w.path), w.records]));
  }
}

/** Totals of a records-per-file map: all, train, test. */
export function shardTotals(perFile: Record<string, number>): { records: number; train: number; test: number } {
  let train = 0;
  let test = 0;
  for (const [name, n] of Object.entries(perFile)) {
    if (name.startsWith('test-')) test += n;
    else train += n;
  }
  return { records: train + test, train, test };
}

/** The record counts both shard-writing stages report: per file, in all, per split. */
export function shardMetrics(perFile: Record<string, number>) {
  const t = shardTotals(perFile);
  return { records: perFile, total_records: t.records, train_records: t.train, test_records: t.test };
}
