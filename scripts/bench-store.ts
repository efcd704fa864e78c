/**
 * Store throughput: commits/s for 10,000 single-channel commits (one channel record replaced and
 * one outbox message added, as a protocol transition does), awaited one at a time vs 100 in
 * flight, with sync false and true; the main-thread time LevelDB's two batch forms take per
 * operation (an array of operations vs a chained batch); a commit group's hand-over per record,
 * as bytes or as text; plus codec encode/decode rates. Not a test.
 * Usage: npx tsx scripts/bench-store.ts
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { Level } from "level";
import { decode, decodeBytes, encode, encodeBytes } from "../src/store/codec.js";
import { LevelStore } from "../src/store/store.js";

const COMMITS = 10_000;
const IN_FLIGHT = 100;
const CHANNELS = 100;

const HASH = `0x${"ab".repeat(32)}`;
const SIG = `0x${"cd".repeat(65)}`;

function channelRecord(id: number, nonce: bigint): unknown {
  return {
    id: `0x${id.toString(16).padStart(64, "0")}`,
    nonce,
    balances: [10n ** 24n - nonce, nonce],
    locks: Array.from({ length: 3 }, (_, i) => ({ hash: HASH, amount: 1000n + BigInt(i), expiry: 1_700_000_000 + i })),
    theirSig: SIG,
    phase: "open",
  };
}

function transition(i: number, channel: number): Parameters<LevelStore["commit"]>[0] {
  const nonce = BigInt(i);
  return {
    channels: [{ channelId: `ch${channel}`, record: channelRecord(channel, nonce) }],
    outboxAdd: [{ peer: `peer${channel}`, message: { kind: "update", channel, nonce, sig: SIG } }],
  };
}

async function run(sync: boolean, inFlight: number): Promise<{ rate: number; writes: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "starling-bench-"));
  const store = new LevelStore(dir, { sync });
  await store.open();
  try {
    let next = 0;
    const worker = async (w: number): Promise<void> => {
      // With one worker the commits cycle through the channels; with many, each worker is one channel.
      for (let i = next++; i < COMMITS; i = next++) await store.commit(transition(i, inFlight === 1 ? i % CHANNELS : w));
    };
    const start = performance.now();
    await Promise.all(Array.from({ length: inFlight }, (_, w) => worker(w)));
    const elapsed = performance.now() - start;
    return { rate: (COMMITS / elapsed) * 1000, writes: store.stats.writes };
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function codecRate(op: () => void): number {
  for (let i = 0; i < 2000; i++) op();
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < 500) for (let i = 0; i < 100; i++, n++) op();
  return (n / (performance.now() - start)) * 1000;
}

const fmt = (v: number): string => Math.round(v).toLocaleString("en-US").padStart(9);

console.log(`node ${process.version} ${process.platform}-${process.arch}; LevelDB in ${os.tmpdir()}; ${COMMITS.toLocaleString("en-US")} commits per row`);
await run(false, 1); // warm-up: JIT and the native addon
for (const sync of [false, true]) {
  for (const inFlight of [1, IN_FLIGHT]) {
    const { rate, writes } = await run(sync, inFlight);
    const mode = inFlight === 1 ? "sequential" : `${inFlight} in flight`;
    console.log(`sync ${String(sync).padEnd(5)} ${mode.padEnd(13)} ${fmt(rate)} commits/s   ${fmt(writes)} writes (${(COMMITS / writes).toFixed(1)} commits/write)`);
  }
}

/**
 * Main-thread microseconds per operation spent before a batch is handed to LevelDB's thread
 * (the part that blocks the event loop), for 200-operation batches of 1-2.5 KB values like a
 * hub's group writes. Median of 5 repetitions of 100 batches each.
 */
async function batchPrepMicros(form: "array" | "chained"): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "starling-bench-"));
  const db = new Level<string, Uint8Array>(dir, { keyEncoding: "utf8", valueEncoding: "view" });
  await db.open();
  try {
    const reps: number[] = [];
    for (let rep = 0; rep < 5; rep++) {
      let micros = 0;
      let ops = 0;
      for (let b = 0; b < 100; b++) {
        const batch = Array.from({ length: 200 }, (_, i) => ({
          type: "put" as const,
          key: `m!transfer!r${rep}-${b}-${i}-${HASH}`,
          value: encodeBytes({ ...(channelRecord(i, BigInt(b)) as object), pad: "x".repeat(i % 3 === 0 ? 2000 : 500) }),
        }));
        const start = performance.now();
        let written: Promise<void>;
        if (form === "array") written = db.batch(batch, { sync: false });
        else {
          const chained = db.batch();
          for (const op of batch) chained.put(op.key, op.value);
          written = chained.write({ sync: false });
        }
        micros += (performance.now() - start) * 1000;
        ops += batch.length;
        await written;
      }
      reps.push(micros / ops);
    }
    return reps.sort((a, b) => a - b)[2]!;
  } finally {
    await db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const arrayMicros = await batchPrepMicros("array");
const chainedMicros = await batchPrepMicros("chained");
console.log(
  `LevelDB batch, main-thread time per operation: array ${arrayMicros.toFixed(1)} us, chained ${chainedMicros.toFixed(1)} us (${(arrayMicros / chainedMicros).toFixed(1)}x; the store uses the chained form)`,
);

/**
 * Main-thread microseconds per record to hand a group of 12,000 encoded ~1-KB records to one
 * chained batch: as the codec's UTF-8 bytes (the store's way), or as the same JSON text in
 * strings, which LevelDB's binding converts to UTF-8 as each one is added. The records are
 * encoded before the clock starts (`encode`'s text is decoded from the bytes, so timing the
 * encoding would count that against the text). Median of 7 groups.
 */
async function groupMicros(form: "bytes" | "text"): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "starling-bench-"));
  const db = new Level<string, Uint8Array | string>(dir, { keyEncoding: "utf8", valueEncoding: form === "bytes" ? "view" : "utf8" });
  await db.open();
  try {
    const records = Array.from({ length: 12_000 }, (_, i) => ({ ...(channelRecord(i, BigInt(i)) as object), note: `r${i}`.repeat(20) }));
    const reps: number[] = [];
    for (let rep = 0; rep < 7; rep++) {
      const values = records.map((r) => (form === "bytes" ? encodeBytes(r) : encode(r)));
      const start = performance.now();
      const chained = db.batch();
      for (let i = 0; i < values.length; i++) chained.put(`c!${rep}-${i}`, values[i]!);
      reps.push(((performance.now() - start) * 1000) / values.length);
      await chained.write({ sync: false });
    }
    return reps.sort((a, b) => a - b)[3]!;
  } finally {
    await db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// One round of each first: the first groups run cold (JIT, the binding, the allocator) and cost several times more.
await groupMicros("bytes");
await groupMicros("text");
console.log(
  `hand-over of a 12,000-record group, main thread per record: bytes ${(await groupMicros("bytes")).toFixed(2)} us, text ${(await groupMicros("text")).toFixed(2)} us (the store hands over bytes)`,
);

const record = channelRecord(1, 123_456n);
const bytes = encodeBytes(record);
const text = encode(record);
const bigintToString = (_: string, v: unknown): unknown => (typeof v === "bigint" ? v.toString() : v);
console.log(`codec, ${bytes.length}-byte channel record:`);
console.log(`  encode ${fmt(codecRate(() => encodeBytes(record)))}/s   (JSON.stringify with a bigint replacer: ${fmt(codecRate(() => JSON.stringify(record, bigintToString)))}/s)`);
console.log(`  decode ${fmt(codecRate(() => decodeBytes(bytes)))}/s   (JSON.parse alone: ${fmt(codecRate(() => JSON.parse(text)))}/s)`);
