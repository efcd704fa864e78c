/**
 * What a payment costs in each layer below the network: A -> hub -> B with an invoice, the three
 * nodes in this one process, measured as CPU time per payment (all three nodes together), one
 * payment at a time and with 16 in flight. Not a test.
 *
 *   engine         three NodeCores joined in memory (src/engine/local-network.ts): the protocol
 *                  machines and the signatures, no store, no I/O
 *   steps, memory  + each node's StepRunner and a MemoryStore (codec, commit grouping); messages
 *                  handed over encoded and decoded, as the transport does
 *   steps, level   the same on LevelDB (one store per node, in a temp directory)
 *
 * `npm run bench` measures the whole system (separate processes, libp2p); the difference is the
 * network and the processes. Median of three runs after a warm-up.
 *
 * Last, what one engine step of a hub's once-a-second tick costs when it sends the revocations of
 * channels that went idle after an update (one signature and one message each): a step the
 * hub's event loop does nothing else during.
 *
 *   npx tsx scripts/bench-layers.ts [payments per run]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { LocalNetwork, openLocalChannel } from "../src/engine/local-network.js";
import { NodeCore, type WireEnvelope } from "../src/engine/node-core.js";
import { bytesToHex, secretHash } from "../src/protocol/eip712.js";
import type { Address, Domain, Hex } from "../src/protocol/types.js";
import { StepRunner } from "../src/node/steps.js";
import { countingSigner, countingVerifier, loadBackend, newCryptoCounts, type CryptoCounts } from "../src/signer/index.js";
import { decodeBytes } from "../src/store/codec.js";
import { LevelStore, MemoryStore, type Store } from "../src/store/store.js";

const PAYMENTS = Number(process.argv[2] ?? 2000);
const IN_FLIGHT = 16;
const RUNS = 3;
const DOMAIN: Domain = { chainId: 31337n, verifyingContract: `0x${"11".repeat(20)}` };
const backend = await loadBackend("auto");
const newId = (): Hex => bytesToHex(randomBytes(32));

interface Nodes {
  a: NodeCore;
  hub: NodeCore;
  b: NodeCore;
  crypto: CryptoCounts;
  clock: () => bigint;
}

function threeNodes(clock: () => bigint, net?: LocalNetwork): Nodes {
  const crypto = newCryptoCounts();
  const make = (n: number) => {
    const core = new NodeCore({ signer: countingSigner(backend.createSigner(new Uint8Array(32).fill(n)), crypto), verifier: countingVerifier(backend.verifier, crypto), clock });
    return net ? net.add(core) : core;
  };
  const [a, hub, b] = [make(1), make(2), make(3)];
  openLocalChannel({ domain: DOMAIN, a, b: hub, depositA: 10n ** 24n, depositB: 10n ** 24n });
  openLocalChannel({ domain: DOMAIN, a: hub, b, depositA: 10n ** 24n, depositB: 10n ** 24n });
  return { a, hub, b, crypto, clock };
}

/** A way of making `n` payments, `inFlight` at a time, with what it counted meanwhile. */
interface Layer {
  name: string;
  pay(n: number, inFlight: number): Promise<void>;
  crypto: CryptoCounts;
  close(): Promise<void>;
}

function engineLayer(): Layer {
  const net = new LocalNetwork();
  const nodes = threeNodes(net.clock, net);
  const { a, b } = nodes;
  return {
    name: "engine",
    crypto: nodes.crypto,
    async pay(n, inFlight) {
      for (let done = 0; done < n; done += inFlight) {
        for (let i = 0; i < Math.min(inFlight, n - done); i++) {
          const secret = newId();
          net.submit(b.address, { type: "invoice", secret, amount: 1n, expiresAt: net.now + 3600n });
          net.submit(a.address, { type: "pay", paymentId: newId(), target: b.address, amount: 1n, secretHash: secretHash(secret) });
        }
        // A held settle rides with the next payment's lock, as it does when the next payment
        // comes within the settle batching interval; the last ones are proposed at the end.
        while (net.step());
        for (const events of net.events.values()) events.length = 0;
      }
      net.run();
    },
    close: () => Promise.resolve(),
  };
}

async function stepsLayer(kind: "memory" | "level"): Promise<Layer> {
  const dir = mkdtempSync(join(tmpdir(), "starling-layers-"));
  const nodes = threeNodes(() => BigInt(Math.floor(Date.now() / 1000)));
  const stores: Store[] = [];
  const runners = new Map<Address, StepRunner>();
  const waiting = new Map<Hex, () => void>();
  let closing = false;
  for (const core of [nodes.a, nodes.hub, nodes.b]) {
    const store = kind === "memory" ? new MemoryStore() : new LevelStore(join(dir, `db-${stores.length}`));
    await store.open();
    stores.push(store);
    runners.set(
      core.address,
      new StepRunner({
        core,
        store,
        keys: { transfers: "t!", outboxPeer: (to) => to, payment: (p) => `${p.direction}:${p.paymentId}` },
        dispatch: (r, wire) => {
          for (const w of wire) {
            // As over the wire: the bytes a transport would carry, then the receiver's ack.
            const bytes = w.encoded.bytes;
            setImmediate(() => {
              if (closing) return;
              runners.get(w.to)!.step({ type: "deliver", from: core.address, envelope: decodeBytes(bytes) as WireEnvelope }).catch(() => undefined);
              store.ackLater(w.to, w.seq);
            });
          }
          for (const e of r.events) if (e.type === "paymentSent") waiting.get(e.payment.paymentId)?.();
        },
      }),
    );
  }
  const runner = (c: NodeCore) => runners.get(c.address)!;
  const payOnce = async (): Promise<void> => {
    const secret = newId();
    await runner(nodes.b).step({ type: "invoice", secret, amount: 1n, expiresAt: nodes.clock() + 3600n });
    const paymentId = newId();
    const done = new Promise<void>((resolve) => waiting.set(paymentId, resolve));
    await runner(nodes.a).step({ type: "pay", paymentId, target: nodes.b.address, amount: 1n, secretHash: secretHash(secret) });
    await done;
    waiting.delete(paymentId);
  };
  return {
    name: `steps, ${kind}`,
    crypto: nodes.crypto,
    async pay(n, inFlight) {
      let started = 0;
      await Promise.all(
        Array.from({ length: inFlight }, async () => {
          while (started < n) {
            started++;
            await payOnce();
          }
        }),
      );
    },
    async close() {
      closing = true;
      for (const r of runners.values()) r.stop();
      for (const r of runners.values()) await r.idle();
      for (const s of stores) await s.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

console.log(`layers below the network: ${PAYMENTS} payments per run, median of ${RUNS}; CPU of all three nodes per payment; signer ${backend.name}, node ${process.version}`);
console.log(`${"layer".padEnd(16)}${"one at a time".padStart(16)}${`${IN_FLIGHT} in flight`.padStart(16)}${"signs+recovers".padStart(18)}`);
for (const make of [() => Promise.resolve(engineLayer()), () => stepsLayer("memory"), () => stepsLayer("level")]) {
  const layer = await make();
  const cells: string[] = [];
  const crypto: string[] = [];
  for (const inFlight of [1, IN_FLIGHT]) {
    await layer.pay(Math.min(1000, PAYMENTS), inFlight); // warm-up: until V8 has optimised the path
    const costs: number[] = [];
    const c0 = layer.crypto.signatures + layer.crypto.recoveries;
    for (let run = 0; run < RUNS; run++) {
      const cpu0 = process.cpuUsage();
      await layer.pay(PAYMENTS, inFlight);
      const cpu = process.cpuUsage(cpu0);
      costs.push((cpu.user + cpu.system) / PAYMENTS);
    }
    cells.push(`${median(costs).toFixed(0)} us`);
    crypto.push(((layer.crypto.signatures + layer.crypto.recoveries - c0) / (RUNS * PAYMENTS)).toFixed(1));
  }
  console.log(`${layer.name.padEnd(16)}${cells[0]!.padStart(16)}${cells[1]!.padStart(16)}${crypto.join(" / ").padStart(18)}`);
  await layer.close();
}

// ---- a hub's tick revoking the channels that went idle after an update
{
  const net = new LocalNetwork();
  const key = (n: number): Uint8Array => {
    const k = new Uint8Array(32);
    k[0] = 1;
    k[30] = n >> 8;
    k[31] = n & 255;
    return k;
  };
  const node = (n: number) => net.add(new NodeCore({ signer: backend.createSigner(key(n)), verifier: backend.verifier, clock: net.clock }));
  const hub = node(0);
  const users = Array.from({ length: 1000 }, (_, i) => node(i + 1));
  for (const u of users) openLocalChannel({ domain: DOMAIN, a: u, b: hub, depositA: 10n ** 18n, depositB: 10n ** 18n });
  const row: string[] = [];
  for (const k of [100, 1000]) {
    const times: number[] = [];
    for (let run = 0; run < RUNS + 1; run++) {
      // The hub pays k users one unit each (its proposals), then a second passes.
      for (const u of users.slice(0, k)) net.submit(hub.address, { type: "issue", paymentId: newId(), target: u.address, amount: 1n });
      net.run();
      net.advance(1n);
      const t = performance.now();
      const r = net.submit(hub.address, { type: "tick" });
      const ms = performance.now() - t;
      if (r.send.length !== k) throw new Error(`the tick sent ${r.send.length} revocations, expected ${k}`);
      if (run > 0) times.push(ms); // the first run warms up
      net.inflight.length = 0;
    }
    row.push(`${k} channels ${median(times).toFixed(1)} ms`);
  }
  console.log(`hub tick revoking the channels idle after an update (engine step only, no store or sends): ${row.join(", ")}`);
}
