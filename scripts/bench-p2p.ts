/**
 * Throughput of acknowledged messages between two transports on 127.0.0.1: 20,000 sends issued
 * at once (pipelined on one stream), timed until the last ack; one warm-up run, then the median
 * of three.
 *
 *   npx tsx scripts/bench-p2p.ts [messages]
 */
import "../src/p2p/polyfill.js";
import { keccak256 } from "../src/protocol/keccak.js";
import { createTransport } from "../src/p2p/index.js";
import { loadBackend } from "../src/signer/index.js";

const MESSAGES = Number(process.argv[2] ?? 20_000);
const RUNS = 3;

const utf8 = new TextEncoder();
const key = (label: string): Uint8Array => keccak256(utf8.encode(label));
const hex = (bytes: number, seed: number): string => "0x" + Buffer.from(keccak256(utf8.encode(String(seed)))).toString("hex").repeat(Math.ceil(bytes / 32)).slice(0, bytes * 2);

// Shaped like a channel update: a few bigints and hex strings, ~450 bytes of JSON.
function message(i: number): unknown {
  return {
    type: "update",
    channelId: hex(32, 1),
    nonce: BigInt(i),
    balances: [10n ** 21n - BigInt(i), 10n ** 18n + BigInt(i)],
    locksRoot: hex(32, 2),
    signature: hex(65, i),
  };
}

const backend = await loadBackend("auto");
const make = (label: string) =>
  createTransport({
    signer: backend.createSigner(key(`bench-eth-${label}`)),
    verifier: backend.verifier,
    privateKey: key(`bench-peer-${label}`),
    sendTimeoutMs: 120_000,
  });

const sender = make("a");
const receiver = make("b");
await sender.start();
await receiver.start();
try {
  let received = 0;
  receiver.onMessage(async () => {
    received++;
  });
  await sender.dial(receiver.multiaddrs[0]!);

  const frameBytes = JSON.stringify(message(0), (_k, v: unknown) => (typeof v === "bigint" ? { $n: v.toString() } : v)).length;
  console.log(`p2p bench: ${MESSAGES} acked messages (~${frameBytes} B body), signer backend ${backend.name}, node ${process.version}`);

  const rates: number[] = [];
  for (let run = 0; run <= RUNS; run++) {
    const bodies = Array.from({ length: MESSAGES }, (_, i) => message(i));
    const before = received;
    const t0 = performance.now();
    await Promise.all(bodies.map((body) => sender.send(receiver.address, body)));
    const ms = performance.now() - t0;
    if (received - before !== MESSAGES) throw new Error(`receiver saw ${received - before} of ${MESSAGES}`);
    const rate = (MESSAGES / ms) * 1000;
    console.log(`  ${run === 0 ? "warm-up" : `run ${run}  `}  ${ms.toFixed(0).padStart(6)} ms  ${rate.toFixed(0).padStart(7)} msg/s`);
    if (run > 0) rates.push(rate);
  }
  rates.sort((x, y) => x - y);
  console.log(`median of ${RUNS}: ${rates[Math.floor(RUNS / 2)]!.toFixed(0)} msg/s`);
} finally {
  await sender.stop();
  await receiver.stop();
}
