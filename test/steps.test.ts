import { expect } from "chai";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalNetwork, openLocalChannel, type Wire } from "../src/engine/local-network.js";
import { NodeCore, type StepResult } from "../src/engine/node-core.js";
import { bytesToHex, secretHash } from "../src/protocol/eip712.js";
import type { Domain, Hex } from "../src/protocol/types.js";
import { storedTransferEntry, transferStateFromEntries } from "../src/node/persist.js";
import { StepRunner } from "../src/node/steps.js";
import { loadBackend } from "../src/signer/index.js";
import { encode } from "../src/store/codec.js";
import { LevelStore } from "../src/store/store.js";

const DOMAIN: Domain = { chainId: 31337n, verifyingContract: `0x${"11".repeat(20)}` };
const backend = await loadBackend("auto");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const id32 = (n: number): Hex => bytesToHex(new Uint8Array(32).fill(n));

describe("step runner", function () {
  let dir: string;
  let store: LevelStore;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "starling-steps-"));
    store = new LevelStore(join(dir, "db"));
    await store.open();
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A pays B's invoice through the hub in memory, up to the hub's SecretReveal to A (not delivered). */
  function upToReveal(): { net: LocalNetwork; a: NodeCore; reveal: Wire } {
    const net = new LocalNetwork();
    const make = (n: number) => net.add(new NodeCore({ signer: backend.createSigner(new Uint8Array(32).fill(n)), verifier: backend.verifier, clock: net.clock }));
    const [a, hub, b] = [make(1), make(2), make(3)];
    openLocalChannel({ domain: DOMAIN, a, b: hub, depositA: 1000n, depositB: 1000n });
    openLocalChannel({ domain: DOMAIN, a: hub, b, depositA: 1000n, depositB: 1000n });
    const secret = id32(7);
    expect(net.submit(b.address, { type: "invoice", secret, amount: 10n, expiresAt: net.now + 3600n }).ok).to.equal(true);
    expect(net.submit(a.address, { type: "pay", paymentId: id32(8), target: b.address, amount: 10n, secretHash: secretHash(secret) }).ok).to.equal(true);
    let reveal: Wire | undefined;
    net.dropIf = (w) => {
      if (w.to === a.address && w.envelope.kind === "transfer" && w.envelope.message.type === "SecretReveal") reveal = w;
      return w === reveal;
    };
    while (net.step());
    expect(reveal, "the hub showed A the secret").to.not.equal(undefined);
    return { net, a, reveal: reveal! };
  }

  /** A step runner around `core` on the test's store; `dispatched` collects each step it dispatches. */
  function runnerOf(core: NodeCore, settleBatchMs: number): { runner: StepRunner; dispatched: StepResult[] } {
    const dispatched: StepResult[] = [];
    const runner = new StepRunner({
      core,
      store,
      keys: { transfers: "t!", outboxPeer: (to) => to, payment: (p) => `${p.direction}:${p.paymentId}` },
      dispatch: (r) => void dispatched.push(r),
      settleBatchMs,
    });
    return { runner, dispatched };
  }

  it("proposes a held settle (input flushSettles) once the settle batching interval has passed", async () => {
    const { a, reveal } = upToReveal();
    const { runner, dispatched } = runnerOf(a, 30);
    const completed = await runner.step({ type: "deliver", from: reveal.from, envelope: reveal.envelope });
    expect(completed.events.some((e) => e.type === "paymentSent")).to.equal(true);
    expect(completed.settlesHeld).to.equal(true);
    expect(completed.send).to.deep.equal([]);
    await sleep(10);
    expect(dispatched.length, "nothing proposed before the interval").to.equal(1);
    await sleep(60);
    await runner.idle();
    expect(dispatched.length).to.equal(2);
    const [proposal] = dispatched[1]!.send;
    expect(proposal?.envelope.kind === "channel" && proposal.envelope.message.type === "Propose" ? proposal.envelope.message.ops.map((op) => op.type) : []).to.deep.equal(["unlock"]);
    // The proposal went through the store like any step's messages.
    expect((await store.listOutbox()).length).to.equal(1);
    runner.stop();
  });

  it("stop proposes a held settle at once; until then it is held in the stored queue", async () => {
    const { a, reveal } = upToReveal();
    const { runner, dispatched } = runnerOf(a, 60_000);
    expect((await runner.step({ type: "deliver", from: reveal.from, envelope: reveal.envelope })).settlesHeld).to.equal(true);
    // Held: persisted in the transfer state's queue (as a restart would find it), nothing sent.
    expect((await store.listMeta("t!queues!")).length).to.equal(1);
    const copy = a.transfers;
    expect([...copy.queues.values()].flat().map((op) => op.type)).to.deep.equal(["unlock"]);
    runner.stop();
    await runner.idle();
    expect(dispatched.length).to.equal(2);
    expect(dispatched[1]!.send.map((o) => (o.envelope.kind === "channel" ? o.envelope.message.type : ""))).to.deep.equal(["Propose"]);
    expect((await store.listMeta("t!queues!")).length).to.equal(0);
    expect((await store.listOutbox()).length).to.equal(1);
  });
});

describe("stored transfer entries", function () {
  const lock = {
    channelId: id32(1),
    secretHash: id32(2),
    amount: 7n,
    expiry: 1_000n,
    paymentId: id32(3),
    stage: "locked",
    upstream: null,
    meta: { type: "LockedTransfer", channelId: id32(1), paymentId: id32(3), initiator: `0x${"aa".repeat(20)}`, target: `0x${"bb".repeat(20)}`, amount: 7n, secretHash: id32(2), expiry: 1_000n },
    metaSentAt: 5n,
  };

  const key = `${id32(1)}:${id32(2)}`;

  it("a lock leaves out what its key and its own fields say already, and loads back whole", function () {
    const stored = storedTransferEntry("sent", key, lock) as Partial<typeof lock>;
    expect(stored.meta).to.deep.equal({ initiator: lock.meta.initiator, target: lock.meta.target });
    expect(stored).to.not.have.property("channelId");
    expect(stored).to.not.have.property("secretHash");
    expect(encode(stored).length).to.be.below(encode(lock).length * 0.5);
    const loaded = transferStateFromEntries([[`t!sent!${key}`, stored], [`t!received!${key}`, storedTransferEntry("received", key, lock)]], "t!");
    expect(loaded.sent.get(key)).to.deep.equal(lock);
    expect(loaded.received.get(key)).to.deep.equal(lock);
    // Field for field as written, so a loaded lock encodes alike and its LockedTransfer is re-sent byte for byte alike.
    expect(encode(loaded.sent.get(key))).to.equal(encode(lock));
    expect(encode(loaded.received.get(key))).to.equal(encode(lock));
  });

  it("a field that differs from what the key or lock says is kept; records stored whole and other tables load unchanged", function () {
    const odd = { ...lock, meta: { ...lock.meta, expiry: 900n } };
    expect((storedTransferEntry("received", key, odd) as typeof lock).meta).to.deep.equal({ initiator: lock.meta.initiator, target: lock.meta.target, expiry: 900n });
    // Under another key (not as the engine stores it) the lock keeps its channel id and hash.
    expect(storedTransferEntry("sent", "other", lock)).to.include({ channelId: id32(1), secretHash: id32(2) });
    const waiting = { ...lock, meta: null };
    expect(storedTransferEntry("received", "other", waiting)).to.equal(waiting);
    expect(storedTransferEntry("received", key, waiting)).to.deep.equal({ amount: 7n, expiry: 1_000n, paymentId: id32(3), stage: "locked", upstream: null, meta: null, metaSentAt: 5n });
    const payment = { paymentId: id32(3), meta: lock.meta };
    expect(storedTransferEntry("payments", id32(3), payment)).to.equal(payment);
    const loaded = transferStateFromEntries(
      [
        [`t!sent!${key}`, lock],
        ["t!received!odd", storedTransferEntry("received", "odd", odd)],
        [`t!received!${key}`, storedTransferEntry("received", key, waiting)],
      ],
      "t!",
    );
    expect(loaded.sent.get(key)).to.deep.equal(lock);
    expect(loaded.received.get("odd")).to.deep.equal(odd);
    expect(loaded.received.get(key)).to.deep.equal(waiting);
    expect(() => transferStateFromEntries([["t!sent!nokey", storedTransferEntry("sent", key, lock)]], "t!")).to.throw(/names none/);
  });
});
