/**
 * Micro-benchmark of the crypto a payment does: the secp256k1 backends' signs/s and recovers/s,
 * and keccak-256 on the input sizes hashed per update (src/protocol/keccak.ts against
 * @noble/hashes' JavaScript keccak), median of 5 runs of ~1 s each.
 * Usage: npx tsx scripts/bench-signer.ts
 */
import { performance } from "node:perf_hooks";
import { keccak_256 as nobleKeccak } from "@noble/hashes/sha3.js";
import { keccak256 } from "../src/protocol/keccak.js";
import { loadBackend, type Secp256k1Backend } from "../src/signer/index.js";

const RUNS = 5;
const RUN_MS = 1000;
const BATCH = 32;

const DIGESTS: Uint8Array[] = Array.from({ length: 256 }, (_, i) => keccak256(Uint8Array.of(i, i >> 8)));
const KEY = keccak256(new TextEncoder().encode("starling bench key"));

/** Operations per second of `op`, median over RUNS timed runs after a short warm-up. */
function measure(op: (i: number) => void): number {
  const timed = (ms: number): number => {
    let n = 0;
    const start = performance.now();
    let elapsed = 0;
    do {
      for (let j = 0; j < BATCH; j++) op(n++);
      elapsed = performance.now() - start;
    } while (elapsed < ms);
    return (n / elapsed) * 1000;
  };
  timed(RUN_MS / 4);
  const rates = Array.from({ length: RUNS }, () => timed(RUN_MS)).sort((a, b) => a - b);
  return rates[Math.floor(RUNS / 2)]!;
}

function bench(backend: Secp256k1Backend): { sign: number; recover: number } {
  const signer = backend.createSigner(KEY);
  const signatures = DIGESTS.map((d) => signer.signDigest(d));
  const mask = DIGESTS.length - 1;
  const sign = measure((i) => {
    signer.signDigest(DIGESTS[i & mask]!);
  });
  const recover = measure((i) => {
    if (backend.verifier.recoverAddress(DIGESTS[i & mask]!, signatures[i & mask]!) !== signer.address) {
      throw new Error(`${backend.name}: recovery mismatch`);
    }
  });
  return { sign, recover };
}

const backends: Secp256k1Backend[] = [await loadBackend("noble")];
try {
  backends.push(await loadBackend("native"));
} catch (err) {
  console.log(`native: unavailable (${err instanceof Error ? err.message : String(err)})`);
}

console.log(`node ${process.version} ${process.platform}-${process.arch}; median of ${RUNS} runs of ~${RUN_MS} ms`);
for (const backend of backends) {
  const { sign, recover } = bench(backend);
  const fmt = (v: number): string => Math.round(v).toLocaleString("en-US").padStart(9);
  console.log(`${backend.name.padEnd(7)} sign ${fmt(sign)}/s   recover ${fmt(recover)}/s   (${backend.detail ?? ""})`);
}

// 64-192 bytes: an EIP-712 struct or digest; 1,344: the locks root of 10 locks.
for (const size of [64, 192, 1344]) {
  const data = Uint8Array.from({ length: size }, (_, i) => i);
  const fmt = (v: number): string => (1e6 / v).toFixed(2).padStart(6);
  const ours = measure(() => keccak256(data));
  const noble = measure(() => nobleKeccak(data));
  console.log(`keccak-256 of ${String(size).padStart(4)} bytes: ${fmt(ours)} us (@noble/hashes ${fmt(noble)} us, ${(ours / noble).toFixed(1)}x its rate)`);
}
