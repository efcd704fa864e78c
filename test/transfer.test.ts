import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { LocalNetwork, openLocalChannel, type Wire } from "../src/engine/local-network.js";
import { IN_A_BUNDLE, MAX_BUNDLE_MESSAGES, NodeCore, REVOKE_IDLE_SECONDS, bundleByPeer, tickSliceOf, type Envelope } from "../src/engine/node-core.js";
import { capacity, sameState, share, type ChannelData, type ChannelMessage } from "../src/protocol/channel.js";
import { bytesToHex, secretHash } from "../src/protocol/eip712.js";
import { TransferLedger, lockKey, newTransferState, signSecretRequest, type LockedTransfer, type SecretRequest, type SecretReveal, type TransferState } from "../src/protocol/transfer.js";
import type { Address, Domain, Hex } from "../src/protocol/types.js";
import { loadedChannel, storedChannel, storedTransferEntry, transferStateEntries, transferStateFromEntries } from "../src/node/persist.js";
import { decode, encode } from "../src/store/codec.js";
import { loadBackend, type Secp256k1Backend, type Signer } from "../src/signer/index.js";

const DOMAIN: Domain = { chainId: 31337n, verifyingContract: `0x${"11".repeat(20)}` };
const DEPOSIT = 1_000n;

let backend: Secp256k1Backend;

before(async () => {
  backend = await loadBackend("noble");
});

const rand32 = (): Hex => bytesToHex(randomBytes(32));

/** Seeded (mulberry32) so a failing interleaving can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class World {
  readonly net = new LocalNetwork();
  readonly signers = new Map<Address, Signer>();
  #next = 1;

  node(): NodeCore {
    const key = new Uint8Array(32).fill(this.#next++);
    const signer = backend.createSigner(key);
    this.signers.set(signer.address, signer);
    return this.net.add(new NodeCore({ signer, verifier: backend.verifier, clock: this.net.clock }));
  }

  open(a: NodeCore, b: NodeCore, depositA = DEPOSIT, depositB = DEPOSIT): Hex {
    return openLocalChannel({ domain: DOMAIN, a, b, depositA, depositB }).channelId;
  }

  pay(from: NodeCore, to: NodeCore, amount: bigint, paymentId: Hex = rand32(), secret: Hex = rand32()) {
    return this.net.submit(from.address, { type: "pay", paymentId, target: to.address, amount, secret });
  }
}

/** A hub and `n` users, each with a channel to it (100,000 on each side). */
function star(n: number): { w: World; hub: NodeCore; users: NodeCore[] } {
  const w = new World();
  const hub = w.node();
  const users = Array.from({ length: n }, () => w.node());
  for (const u of users) w.open(u, hub, 100_000n, 100_000n);
  return { w, hub, users };
}

function mine(node: NodeCore, channelId: Hex): bigint {
  const c = node.channel(channelId)!;
  return share(c.funding, c.latest.state, c.config.me);
}

function conserved(c: ChannelData): boolean {
  const s = c.latest.state;
  return share(c.funding, s, 1) + share(c.funding, s, 2) + s.locked1 + s.locked2 === capacity(c.funding);
}

/** Both copies hold the same fully signed state, nothing in flight, and the funds add up. */
function expectAgreement(a: NodeCore, b: NodeCore, channelId: Hex): void {
  const ca = a.channel(channelId)!;
  const cb = b.channel(channelId)!;
  expect(sameState(ca.latest.state, cb.latest.state), "same latest state").to.equal(true);
  expect(ca.latest.sig1?.signature).to.equal(cb.latest.sig1?.signature);
  expect(ca.latest.sig2?.signature).to.equal(cb.latest.sig2?.signature);
  expect(ca.inflight).to.equal(null);
  expect(cb.inflight).to.equal(null);
  expect(conserved(ca)).to.equal(true);
  expect(conserved(cb)).to.equal(true);
}

function expectNoLocks(...copies: ChannelData[]): void {
  for (const c of copies) {
    expect(c.latest.locks).to.deep.equal([]);
    expect(c.latest.state.locked1 + c.latest.state.locked2).to.equal(0n);
  }
}

function expectIdle(...nodes: NodeCore[]): void {
  for (const n of nodes) {
    expect(n.transfers.sent.size, "sent locks").to.equal(0);
    expect(n.transfers.received.size, "received locks").to.equal(0);
    expect(n.transfers.queues.size, "queued ops").to.equal(0);
  }
}

/** A has paid B `amount` in all through the hub: both channels agree and are idle, nothing was refused. */
function expectPaidThrough(w: World, [a, hub, b]: [NodeCore, NodeCore, NodeCore], [ah, hb]: [Hex, Hex], amount: bigint): void {
  expectAgreement(a, hub, ah);
  expectAgreement(hub, b, hb);
  expect(mine(a, ah)).to.equal(DEPOSIT - amount);
  expect(mine(b, hb)).to.equal(DEPOSIT + amount);
  expectIdle(a, hub, b);
  expect(w.net.rejected).to.deep.equal([]);
}

/** Delivers everything, lets a second pass with a tick each, and delivers what that caused. */
function runToRest(w: World, random: () => number): void {
  w.net.run({ random });
  w.net.advance(1n);
  w.net.tickAll();
  w.net.run({ random });
}

function expectAllPaid(ids: readonly { from: NodeCore; to: NodeCore; paymentId: Hex }[]): void {
  for (const { from, to, paymentId } of ids) {
    expect(from.payment(paymentId)?.status, "sender status").to.equal("completed");
    expect(to.incoming(paymentId).map((p) => p.status)).to.deep.equal(["received"]);
  }
}

const isChannelMessage = (w: Wire, type: string): boolean => w.envelope.kind === "channel" && w.envelope.message.type === type;
const isTransferMessage = (w: Wire, type: string): boolean => w.envelope.kind === "transfer" && w.envelope.message.type === type;

describe("transfers A -> hub -> B", function () {
  it("completes: all copies agree, statuses final, no locks, nonces advanced", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    const paymentId = rand32();
    const r = w.pay(a, b, 100n, paymentId);
    expect(r.ok, JSON.stringify(r.error)).to.equal(true);
    expect(r.payment?.status).to.equal("pending");
    w.net.run();

    expect(a.payment(paymentId)?.status).to.equal("completed");
    const incoming = b.incoming(paymentId);
    expect(incoming).to.have.length(1);
    expect(incoming[0]!.status).to.equal("received");
    expect(incoming[0]!.initiator).to.equal(a.address);
    expect(w.net.events.get(a.address)!.some((e) => e.type === "paymentSent")).to.equal(true);
    expect(w.net.events.get(b.address)!.some((e) => e.type === "paymentReceived")).to.equal(true);

    expectAgreement(a, hub, ah);
    expectAgreement(hub, b, hb);
    expectNoLocks(a.channel(ah)!, hub.channel(ah)!, hub.channel(hb)!, b.channel(hb)!);
    expect(mine(a, ah)).to.equal(DEPOSIT - 100n);
    expect(mine(hub, ah)).to.equal(DEPOSIT + 100n);
    expect(mine(hub, hb)).to.equal(DEPOSIT - 100n);
    expect(mine(b, hb)).to.equal(DEPOSIT + 100n);
    // A lock and an unlock on each channel.
    expect(a.channel(ah)!.latest.state.nonce).to.equal(2n);
    expect(b.channel(hb)!.latest.state.nonce).to.equal(2n);
    expectIdle(a, hub, b);
    expect(w.net.rejected).to.deep.equal([]);
  });

  it("a lost countersignature is recovered by re-sending the proposal", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    let lost = false;
    w.net.dropIf = (wire) => {
      if (!lost && wire.to === a.address && isChannelMessage(wire, "Countersign")) return (lost = true);
      return false;
    };
    const paymentId = rand32();
    w.pay(a, b, 10n, paymentId);
    w.net.run();
    expect(lost).to.equal(true);
    // The hub holds the lock fully signed and forwards it; A only has its proposal in flight.
    expect(a.channel(ah)!.inflight).to.not.equal(null);
    // A revealed the secret meanwhile, through the hub: it settles once its lock is signed on its
    // side too, after its proposal is re-sent (every 10 s) and answered again.
    for (let round = 0; round < 2; round++) {
      w.net.advance(15n);
      w.net.tickAll();
      w.net.run();
    }
    expect(a.payment(paymentId)?.status).to.equal("completed");
    expectAgreement(a, hub, ah);
    expectAgreement(hub, b, hb);
  });

  it("rejects bad payments and changes nothing", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    w.open(a, hub);
    w.open(hub, b);
    const before = a.transfers;
    const tooMuch = w.pay(a, b, DEPOSIT + 1n);
    expect(tooMuch.ok).to.equal(false);
    expect(tooMuch.error?.code).to.equal("INSUFFICIENT_BALANCE");
    expect(tooMuch.send).to.deep.equal([]);
    expect(tooMuch.persist.transfers).to.equal(null);
    expect(w.pay(a, a, 1n).error?.code).to.equal("SELF_PAYMENT");
    expect(w.pay(a, b, 0n).error?.code).to.equal("BAD_INPUT");
    const secret = rand32();
    expect(w.pay(a, b, 1n, rand32(), secret).ok).to.equal(true);
    expect(w.pay(a, b, 1n, rand32(), secret).error?.code).to.equal("DUPLICATE_SECRET");
    expect(before.payments.size).to.equal(0);
  });

  it("refuses malformed peer messages without changing anything", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    w.open(hub, b);
    const before = a.channel(ah);
    const garbage = {
      type: "Propose",
      channelId: ah,
      state: { channelId: ah, nonce: 1n, sent1: "lots", sent2: 0n, locked1: 0n, locked2: 0n, locksRoot: "0x" },
      ops: [{ type: "pay", amount: 1n, paymentId: rand32() }],
      signature: { revokedBelow: 0n, signature: "0x00" },
    } as unknown as ChannelMessage;
    const r = a.handle({ type: "deliver", from: hub.address, envelope: { kind: "channel", message: garbage } });
    expect(r.ok).to.equal(false);
    expect(r.send).to.deep.equal([]);
    expect(a.channel(ah)).to.equal(before);
    const noId = a.handle({ type: "deliver", from: hub.address, envelope: { kind: "channel", message: { ...garbage, channelId: 42 } as unknown as ChannelMessage } });
    expect(noId.error?.code).to.equal("BAD_INPUT");
    expect(a.channel(ah)).to.equal(before);

    const stranger = w.node();
    const notPartner = a.handle({ type: "deliver", from: stranger.address, envelope: { kind: "channel", message: garbage } });
    expect(notPartner.error?.code).to.equal("NOT_PARTNER");

    const badRelay = hub.handle({
      type: "deliver",
      from: a.address,
      envelope: { kind: "transfer", origin: a.address, to: b.address, ttl: 8, message: { type: "SecretReveal", paymentId: rand32(), secret: "0x12" } as SecretReveal },
    });
    expect(badRelay.error?.code).to.equal("BAD_INPUT");
    expect(badRelay.send).to.deep.equal([]);
  });
});

describe("issuance and payment ids", function () {
  it("hub -> user issuance is a plain update; the same id issues once", () => {
    const w = new World();
    const [a, hub] = [w.node(), w.node()];
    const ah = w.open(a, hub, 0n, DEPOSIT);
    const paymentId = rand32();
    const first = w.net.submit(hub.address, { type: "issue", paymentId, target: a.address, amount: 250n });
    expect(first.ok, JSON.stringify(first.error)).to.equal(true);
    const again = w.net.submit(hub.address, { type: "issue", paymentId, target: a.address, amount: 250n });
    expect(again.ok).to.equal(true);
    expect(again.send).to.deep.equal([]);
    expect(again.payment?.paymentId).to.equal(paymentId);
    w.net.run();
    const later = w.net.submit(hub.address, { type: "issue", paymentId, target: a.address, amount: 250n });
    expect(later.send).to.deep.equal([]);
    expect(later.payment?.status).to.equal("completed");
    const conflicting = w.net.submit(hub.address, { type: "issue", paymentId, target: a.address, amount: 251n });
    expect(conflicting.error?.code).to.equal("PAYMENT_ID_CONFLICT");
    w.net.run();

    expect(hub.payment(paymentId)?.status).to.equal("completed");
    expect(a.incoming(paymentId).map((p) => [p.status, p.amount])).to.deep.equal([["received", 250n]]);
    expect(mine(a, ah)).to.equal(250n);
    expect(a.channel(ah)!.latest.state.nonce).to.equal(1n);
    expectAgreement(a, hub, ah);
    expect(w.net.events.get(a.address)!.filter((e) => e.type === "paymentReceived")).to.have.length(1);
  });

  it("paying twice with one id pays once, even with a fresh secret", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    const paymentId = rand32();
    expect(w.pay(a, b, 70n, paymentId).ok).to.equal(true);
    const again = w.pay(a, b, 70n, paymentId);
    expect(again.ok).to.equal(true);
    expect(again.send).to.deep.equal([]);
    w.net.run();
    const afterwards = w.pay(a, b, 70n, paymentId);
    expect(afterwards.payment?.status).to.equal("completed");
    expect(afterwards.send).to.deep.equal([]);
    expect(w.pay(a, b, 71n, paymentId).error?.code).to.equal("PAYMENT_ID_CONFLICT");
    w.net.run();
    expect(mine(a, ah)).to.equal(DEPOSIT - 70n);
    expect(mine(b, hb)).to.equal(DEPOSIT + 70n);
    expect(b.incoming(paymentId)).to.have.length(1);
  });
});

describe("expiry and refunds", function () {
  describe("invoices", function () {
    /** Every message put on the wire while `run` runs. */
    function wireLog(w: World): Wire[] {
      const seen: Wire[] = [];
      w.net.dropIf = (wire) => {
        seen.push(wire);
        return false;
      };
      return seen;
    }

    it("B's invoice is unlocked on arrival: no SecretRequest, fewer messages, and A gets the secret as a receipt", () => {
      const w = new World();
      const [a, hub, b] = [w.node(), w.node(), w.node()];
      const ah = w.open(a, hub);
      const hb = w.open(hub, b);
      // A payment the usual way first, for the message count.
      const usual = wireLog(w);
      w.pay(a, b, 10n);
      w.net.run();
      const secret = rand32();
      const inv = w.net.submit(b.address, { type: "invoice", secret, amount: 100n, expiresAt: w.net.now + 3600n });
      expect(inv.ok, JSON.stringify(inv.error)).to.equal(true);
      expect(b.transfers.invoices.get(secretHash(secret))?.amount).to.equal(100n);

      const seen = wireLog(w);
      const paymentId = rand32();
      const r = w.net.submit(a.address, { type: "pay", paymentId, target: b.address, amount: 100n, secretHash: secretHash(secret) });
      expect(r.ok, JSON.stringify(r.error)).to.equal(true);
      expect(r.payment?.secret).to.equal(null);
      w.net.run();

      const done = w.net.events.get(a.address)!.find((e) => e.type === "paymentSent" && e.payment.paymentId === paymentId);
      expect(done?.type === "paymentSent" && done.payment.secret).to.equal(secret);
      const incoming = b.incoming(paymentId);
      expect(incoming.map((p) => [p.status, p.amount, p.initiator])).to.deep.equal([["received", 100n, a.address]]);
      // No request; one reveal: the hub shows A the secret, and A settles its lock.
      expect(seen.some((x) => isTransferMessage(x, "SecretRequest"))).to.equal(false);
      expect(seen.filter((x) => isTransferMessage(x, "SecretReveal")).map((x) => [x.from, x.to])).to.deep.equal([[hub.address, a.address]]);
      // The usual way: the request and the reveal each cross two hops (relayed by the hub).
      expect(usual.filter((x) => isTransferMessage(x, "SecretRequest") || isTransferMessage(x, "SecretReveal")).length).to.equal(4);
      // Four fewer transfer messages, one more (the reveal), and the channel messages as before.
      expect(seen.length, `${seen.length} messages against ${usual.length}`).to.be.at.most(usual.length - 3);
      // B countersigned the hub's lock and proposed its unlock in one message.
      expect(seen.some((x) => x.to === hub.address && x.envelope.kind === "channel" && x.envelope.message.type === "Countersign" && x.envelope.message.next !== undefined)).to.equal(true);
      expect(b.transfers.invoices.size).to.equal(0);
      expectPaidThrough(w, [a, hub, b], [ah, hb], 110n);
    });

    it("a lock below the invoice's amount is not claimed: the invoice stays open and A is refunded at expiry", () => {
      const w = new World();
      const [a, hub, b] = [w.node(), w.node(), w.node()];
      const ah = w.open(a, hub);
      w.open(hub, b);
      const secret = rand32();
      w.net.submit(b.address, { type: "invoice", secret, amount: 100n, expiresAt: w.net.now + 7200n });
      const paymentId = rand32();
      w.net.submit(a.address, { type: "pay", paymentId, target: b.address, amount: 99n, secretHash: secretHash(secret) });
      w.net.run();
      expect(a.payment(paymentId)?.status).to.equal("pending");
      expect(b.incoming(paymentId)[0]?.status).to.equal("pending");
      expect(b.transfers.invoices.has(secretHash(secret))).to.equal(true);
      // B asked the way it asks any payer; A does not know the secret and cannot answer.
      expect(w.net.rejected.map((x) => x.error.code)).to.include("UNKNOWN_PAYMENT");
      w.net.advance(601n);
      w.net.tickAll();
      w.net.run();
      expect(a.payment(paymentId)?.status).to.equal("failed");
      expect(mine(a, ah)).to.equal(DEPOSIT);
      // Still open: the right payment is taken later.
      expect(b.transfers.invoices.has(secretHash(secret))).to.equal(true);
    });

    it("an expired invoice is dropped and no longer unlocks anything", () => {
      const w = new World();
      const [a, hub, b] = [w.node(), w.node(), w.node()];
      w.open(a, hub);
      w.open(hub, b);
      const secret = rand32();
      w.net.submit(b.address, { type: "invoice", secret, amount: 5n, expiresAt: w.net.now + 10n });
      w.net.advance(11n);
      w.net.tickAll();
      w.net.run();
      expect(b.transfers.invoices.size).to.equal(0);
      const paymentId = rand32();
      w.net.submit(a.address, { type: "pay", paymentId, target: b.address, amount: 5n, secretHash: secretHash(secret) });
      w.net.run();
      expect(b.incoming(paymentId)[0]?.status).to.equal("pending");
      expect(a.payment(paymentId)?.status).to.equal("pending");
    });

    it("bad invoices and invoice payments are refused and change nothing", () => {
      const w = new World();
      const [a, hub, b] = [w.node(), w.node(), w.node()];
      w.open(a, hub);
      w.open(hub, b);
      const secret = rand32();
      const before = structuredClone(b.transfers);
      const bad = (at: NodeCore, input: Parameters<LocalNetwork["submit"]>[1], code: string) => {
        const r = w.net.submit(at.address, input);
        expect(r.ok, `${input.type} accepted`).to.equal(false);
        expect(r.error?.code).to.equal(code);
      };
      const now = w.net.now;
      bad(b, { type: "invoice", secret, amount: 0n, expiresAt: now + 60n }, "BAD_INPUT");
      bad(b, { type: "invoice", secret, amount: 1n, expiresAt: now }, "BAD_INPUT");
      bad(b, { type: "invoice", secret: "0x1234", amount: 1n, expiresAt: now + 60n }, "BAD_INPUT");
      expect(b.transfers).to.deep.equal(before);
      expect(w.net.submit(b.address, { type: "invoice", secret, amount: 1n, expiresAt: now + 60n }).ok).to.equal(true);
      bad(b, { type: "invoice", secret, amount: 2n, expiresAt: now + 60n }, "DUPLICATE_SECRET");
      const pay = { type: "pay" as const, paymentId: rand32(), target: b.address, amount: 1n };
      bad(a, { ...pay, secret, secretHash: secretHash(secret) }, "BAD_INPUT");
      bad(a, pay, "BAD_INPUT");
      bad(a, { ...pay, secretHash: "0xabc" as Hex }, "BAD_INPUT");
      expect(a.transfers.payments.size).to.equal(0);
      expect(w.net.inflight).to.deep.equal([]);
    });
  });

  it("B offline: after the lock expires A is refunded and the payment fails", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    w.net.dropIf = (wire) => wire.to === b.address;
    const paymentId = rand32();
    w.pay(a, b, 100n, paymentId);
    w.net.run();
    expect(a.payment(paymentId)?.status).to.equal("pending");
    expect(a.channel(ah)!.latest.locks).to.have.length(1);
    expect(hub.channel(ah)!.latest.locks).to.have.length(1);

    // Not yet: the lock is still live at its expiry second.
    w.net.advance(600n);
    w.net.tickAll();
    w.net.run();
    expect(a.payment(paymentId)?.status).to.equal("pending");

    w.net.advance(1n);
    w.net.tickAll();
    w.net.run();
    const p = a.payment(paymentId)!;
    expect(p.status).to.equal("failed");
    expect(w.net.events.get(a.address)!.some((e) => e.type === "paymentFailed")).to.equal(true);
    expectAgreement(a, hub, ah);
    expectNoLocks(a.channel(ah)!, hub.channel(ah)!);
    expect(mine(a, ah)).to.equal(DEPOSIT);
    expect(mine(hub, ah)).to.equal(DEPOSIT);
    expect(a.channel(ah)!.latest.state.nonce).to.equal(2n);
    expect(hub.transfers.received.size).to.equal(0);
    // B never signed anything: its copy is untouched and no lock of the hub's is signed there.
    expect(b.channel(hb)!.latest.state.nonce).to.equal(0n);
    expect(hub.channel(hb)!.latest.locks).to.deep.equal([]);
  });

  it("the hub cannot forge the target's SecretRequest", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    w.open(a, hub);
    w.open(hub, b);
    // B's own request never reaches A.
    w.net.dropIf = (wire) => isTransferMessage(wire, "SecretRequest");
    const paymentId = rand32();
    const secret = rand32();
    w.pay(a, b, 100n, paymentId, secret);
    w.net.run();
    const incoming = b.incoming(paymentId)[0]!;
    expect(incoming.status).to.equal("pending");
    w.net.dropIf = null;

    const fields = { paymentId, secretHash: secretHash(secret), amount: 100n, expiry: incoming.expiry! };
    const forged: SecretRequest = signSecretRequest(fields, w.signers.get(hub.address)!);
    const refused = a.handle({ type: "deliver", from: hub.address, envelope: { kind: "transfer", origin: b.address, to: a.address, ttl: 8, message: forged } });
    expect(refused.ok).to.equal(false);
    expect(refused.error?.code).to.equal("NOT_FROM_TARGET");
    expect(refused.send).to.deep.equal([]);
    expect(refused.persist.transfers).to.equal(null);

    // The same request signed by B is answered, and the payment goes through.
    const genuine = signSecretRequest(fields, w.signers.get(b.address)!);
    const answered = w.net.submit(a.address, { type: "deliver", from: hub.address, envelope: { kind: "transfer", origin: b.address, to: a.address, ttl: 8, message: genuine } });
    expect(answered.ok).to.equal(true);
    // The hub passes the secret on, so it can claim A's lock: A settles it, held back for its
    // next update until the shell's batching interval ends (run() flushes it).
    expect(answered.send.map((o) => o.envelope.message.type)).to.deep.equal(["SecretReveal"]);
    expect(answered.settlesHeld).to.equal(true);
    w.net.run();
    expect(a.payment(paymentId)?.status).to.equal("completed");
    expect(b.incoming(paymentId)[0]!.status).to.equal("received");
  });

  it("danger zone: the hub registers a secret once when the payer neither settles nor takes the unlock", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    w.open(hub, b);
    // A answers the secret request, but its settle never reaches the hub and the hub's own unlock
    // (after settleSeconds) never reaches A.
    const unlocks = (wire: Wire): boolean =>
      wire.envelope.kind === "channel" && wire.envelope.message.type === "Propose" && wire.envelope.message.ops.some((op) => op.type === "unlock");
    w.net.dropIf = (wire) => unlocks(wire) && (wire.to === a.address || (wire.from === a.address && wire.to === hub.address));
    const paymentId = rand32();
    const secret = rand32();
    w.pay(a, b, 100n, paymentId, secret);
    w.net.run();
    expect(b.incoming(paymentId)[0]!.status).to.equal("received");
    expect(hub.channel(ah)!.latest.locks).to.have.length(1);
    const expiry = hub.transfers.received.get(lockKey(ah, secretHash(secret)))!.expiry;

    w.net.now = expiry - 61n;
    w.net.tick(hub.address);
    expect(w.net.chain.get(hub.address)).to.deep.equal([]);

    w.net.now = expiry - 60n;
    w.net.tick(hub.address);
    w.net.advance(5n);
    w.net.tick(hub.address);
    w.net.run();
    w.net.advance(20n);
    w.net.tick(hub.address);
    expect(w.net.chain.get(hub.address)).to.deep.equal([{ type: "registerSecret", secret, secretHash: secretHash(secret) }]);
  });
});

describe("locks whose secret reached the chain in time", function () {
  /** Reject codes seen on the wire; the wrapped filter decides what is dropped. */
  function spyRejects(w: World, drop: (wire: Wire) => boolean): string[] {
    const codes: string[] = [];
    w.net.dropIf = (wire) => {
      if (wire.envelope.kind === "channel" && wire.envelope.message.type === "Reject") codes.push(wire.envelope.message.code);
      return drop(wire);
    };
    return codes;
  }

  function settle(w: World, rounds = 4): void {
    for (let i = 0; i < rounds; i++) {
      w.net.advance(11n);
      w.net.tickAll();
      w.net.run();
    }
  }

  it("are the receiver's after their expiry: the sender's removal is refused, the late unlock taken", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    // B's SecretRequest never reaches A, so the secret does not travel off chain; and once B
    // learns it, the hub takes neither B's reveal nor its proposals: as if it were down.
    let hubDown = false;
    const fromB = (wire: Wire): boolean =>
      wire.from === b.address && wire.to === hub.address && (isTransferMessage(wire, "SecretReveal") || isChannelMessage(wire, "Propose"));
    const rejects = spyRejects(w, (wire) => isTransferMessage(wire, "SecretRequest") || (hubDown && fromB(wire)));
    const paymentId = rand32();
    const secret = rand32();
    w.pay(a, b, 100n, paymentId, secret);
    w.net.run();
    expect(hub.channel(hb)!.latest.locks).to.have.length(1);
    const expiry = b.incoming(paymentId)[0]!.expiry!;

    // The secret reaches the chain before the expiry (A registered it), and B sees it there; the
    // hub does not. Too close to the expiry to wait for the hub to settle, B unlocks at once: lost.
    hubDown = true;
    w.net.now = expiry - 25n;
    w.net.submit(b.address, { type: "secretRevealed", secret, revealedAt: expiry - 29n });
    w.net.run();
    expect(b.channel(hb)!.inflight?.ops).to.deep.equal([{ type: "unlock", secret }]);

    // Past the expiry, the hub (not knowing of the reveal) tries to take the lock back: refused.
    w.net.now = expiry + 1n;
    settle(w);
    expect(rejects).to.include("LOCK_CLAIMED");
    expect(hub.channel(hb)!.latest.locks).to.have.length(1);
    expect(b.channel(hb)!.latest.locks).to.have.length(1);
    expect(b.incoming(paymentId)[0]!.status).to.equal("pending");

    // Once the hub sees the reveal too, B's late unlock goes through.
    hubDown = false;
    w.net.submit(hub.address, { type: "secretRevealed", secret, revealedAt: expiry - 29n });
    settle(w);
    expect(w.net.events.get(b.address)!.some((e) => e.type === "paymentReceived" && e.payment.paymentId === paymentId)).to.equal(true);
    expectAgreement(hub, b, hb);
    expectNoLocks(hub.channel(hb)!, b.channel(hb)!);
    expect(mine(b, hb)).to.equal(DEPOSIT + 100n);
    expect(mine(hub, ah) + mine(hub, hb)).to.equal(2n * DEPOSIT);
    expectIdle(a, hub, b);
  });

  it("a reveal after the expiry changes nothing: the sender takes the lock back", () => {
    const w = new World();
    const [a, b] = [w.node(), w.node()];
    const ab = w.open(a, b);
    // B never gets the secret off chain.
    w.net.dropIf = (wire) => isTransferMessage(wire, "SecretRequest");
    const paymentId = rand32();
    const secret = rand32();
    w.pay(a, b, 100n, paymentId, secret);
    w.net.run();
    const expiry = a.payment(paymentId)!.expiry!;
    w.net.now = expiry + 1n;
    for (const n of [a, b]) w.net.submit(n.address, { type: "secretRevealed", secret, revealedAt: expiry + 1n });
    settle(w);
    expect(a.payment(paymentId)?.status).to.equal("failed");
    expectAgreement(a, b, ab);
    expectNoLocks(a.channel(ab)!, b.channel(ab)!);
    expect(mine(a, ab)).to.equal(DEPOSIT);
    expectIdle(a, b);
  });
});

describe("a payer's settle rides with its next update", function () {
  /** Delivers until the wire is empty, without the shell's settle flush that `run` adds. */
  function deliverAll(w: World): void {
    while (w.net.step());
  }

  /** A pays B an invoice of `amount`; everything delivered, the payer's settle not flushed. */
  function payInvoice(w: World, a: NodeCore, b: NodeCore, amount: bigint): { paymentId: Hex; secret: Hex; proposed: Wire[] } {
    const secret = rand32();
    expect(w.net.submit(b.address, { type: "invoice", secret, amount, expiresAt: w.net.now + 3600n }).ok).to.equal(true);
    const paymentId = rand32();
    const proposed: Wire[] = [];
    w.net.dropIf = (wire) => {
      if (wire.from === a.address && isChannelMessage(wire, "Propose")) proposed.push(wire);
      return false;
    };
    const r = w.net.submit(a.address, { type: "pay", paymentId, target: b.address, amount, secretHash: secretHash(secret) });
    expect(r.ok, JSON.stringify(r.error)).to.equal(true);
    deliverAll(w);
    w.net.dropIf = null;
    return { paymentId, secret, proposed };
  }

  const opsOf = (wire: Wire): string[] =>
    wire.envelope.kind === "channel" && wire.envelope.message.type === "Propose" ? wire.envelope.message.ops.map((op) => op.type) : [];

  it("is held once the payment completes, and goes in the same update as the payer's next lock", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    const ah = w.open(a, hub);
    const hb = w.open(hub, b);
    const first = payInvoice(w, a, b, 10n);
    expect(a.payment(first.paymentId)?.status).to.equal("completed");
    expect(b.incoming(first.paymentId)[0]?.status).to.equal("received");
    // Only the lock was proposed by A; its settle waits, and A said so.
    expect(first.proposed.map(opsOf)).to.deep.equal([["lock"]]);
    expect(w.net.settlesHeld.has(a.address)).to.equal(true);
    expect(a.channel(ah)!.latest.state.locked1 + a.channel(ah)!.latest.state.locked2).to.equal(10n);

    w.net.settlesHeld.clear();
    const second = payInvoice(w, a, b, 20n);
    // The next lock's update carries the settle: one proposal, no round trip of its own.
    expect(second.proposed.map(opsOf)).to.deep.equal([["unlock", "lock"]]);
    expect(a.payment(second.paymentId)?.status).to.equal("completed");
    w.net.run();
    expectPaidThrough(w, [a, hub, b], [ah, hb], 30n);
  });

  for (const input of ["flushSettles", "tick"] as const) {
    it(`goes alone on ${input} when no other proposal comes`, () => {
      const w = new World();
      const [a, hub, b] = [w.node(), w.node(), w.node()];
      const ah = w.open(a, hub);
      w.open(hub, b);
      payInvoice(w, a, b, 10n);
      // Other inputs leave it held.
      const other = w.net.submit(a.address, { type: "secretRevealed", secret: rand32() });
      expect(other.send).to.deep.equal([]);
      expect(other.settlesHeld).to.equal(true);
      const r = w.net.submit(a.address, { type: input });
      expect(r.ok).to.equal(true);
      expect(r.settlesHeld).to.equal(false);
      const proposals = r.send.map((o) => ({ id: 0, from: a.address, ...o })).filter((x) => isChannelMessage(x, "Propose"));
      expect(proposals.map(opsOf)).to.deep.equal([["unlock"]]);
      deliverAll(w);
      expectAgreement(a, hub, ah);
      expect(mine(a, ah)).to.equal(DEPOSIT - 10n);
      expectIdle(a, hub, b);
    });
  }

  it("a hub passing the secret on settles at once: only the payer's own settle is held", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    w.open(a, hub);
    const hb = w.open(hub, b);
    // A's own secret: B asks A for it, and A reveals it to B through the hub.
    const paymentId = rand32();
    w.pay(a, b, 10n, paymentId);
    let reveal: Wire | undefined;
    w.net.dropIf = (wire) => {
      if (wire.from === a.address && isTransferMessage(wire, "SecretReveal")) reveal = wire;
      return wire === reveal;
    };
    deliverAll(w);
    w.net.dropIf = null;
    expect(reveal, "A revealed its secret towards B").to.not.equal(undefined);
    expect(w.net.settlesHeld.has(a.address)).to.equal(true);
    const r = w.net.submit(hub.address, { type: "deliver", from: a.address, envelope: reveal!.envelope });
    expect(r.ok, JSON.stringify(r.error)).to.equal(true);
    // The hub proposes its unlock to B in the step that passes the secret on.
    const unlockToB = r.send.filter((o) => o.to === b.address && o.envelope.kind === "channel" && o.envelope.message.type === "Propose");
    expect(unlockToB.map((o) => ({ id: 0, from: hub.address, ...o })).map(opsOf)).to.deep.equal([["unlock"]]);
    expect(r.settlesHeld).to.equal(false);
    deliverAll(w);
    expect(b.incoming(paymentId)[0]?.status).to.equal("received");
    expectAgreement(hub, b, hb);
    expect(mine(b, hb)).to.equal(DEPOSIT + 10n);
  });
});

describe("bundles: a step's messages for one peer as one", function () {
  /** Delivers the oldest link's queued messages as one bundle (or alone), until the wire is empty. */
  function runBundled(w: World): void {
    for (;;) {
      if (w.net.inflight.length === 0) w.net.flushHeldSettles();
      const first = w.net.inflight[0];
      if (!first) return;
      const link = w.net.inflight.filter((x) => x.from === first.from && x.to === first.to).slice(0, MAX_BUNDLE_MESSAGES);
      for (const x of link) w.net.inflight.splice(w.net.inflight.indexOf(x), 1);
      const envelope = link.length === 1 ? link[0]!.envelope : { kind: "bundle" as const, messages: link.map((x) => x.envelope) };
      w.net.submit(first.to, { type: "deliver", from: first.from, envelope });
    }
  }

  /** A, the hub and B, with a channel A-hub and one hub-B. */
  function aHubB(): { w: World; a: NodeCore; hub: NodeCore; b: NodeCore } {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    w.open(a, hub);
    w.open(hub, b);
    return { w, a, hub, b };
  }

  /** Two payers paying two payees' invoices, several in flight; returns the channels' balances and statuses. */
  function scenario(deliver: (w: World) => void): { balances: bigint[]; statuses: string[]; rejected: number } {
    const w = new World();
    const hub = w.node();
    const users = [w.node(), w.node(), w.node(), w.node()];
    const channels = users.map((u) => w.open(u, hub));
    const ids: { from: NodeCore; to: NodeCore; paymentId: Hex }[] = [];
    for (let round = 0; round < 3; round++) {
      for (let k = 0; k < 6; k++) {
        const from = users[k % 2]!;
        const to = users[2 + (k % 2)]!;
        const secret = bytesToHex(new Uint8Array(32).fill(1 + round * 16 + k));
        w.net.submit(to.address, { type: "invoice", secret, amount: 5n, expiresAt: w.net.now + 3600n });
        const paymentId = bytesToHex(new Uint8Array(32).fill(101 + round * 16 + k));
        w.net.submit(from.address, { type: "pay", paymentId, target: to.address, amount: 5n, secretHash: secretHash(secret) });
        ids.push({ from, to, paymentId });
      }
      deliver(w);
    }
    return {
      balances: users.map((u, i) => mine(u, channels[i]!)),
      statuses: ids.flatMap(({ from, to, paymentId }) => [from.payment(paymentId)?.status ?? "none", to.incoming(paymentId)[0]?.status ?? "none"]),
      rejected: w.net.rejected.length,
    };
  }

  it("delivered as bundles, messages have the same effect as one by one", () => {
    const single = scenario((w) => w.net.run());
    const bundled = scenario(runBundled);
    expect(single.statuses.every((st) => st === "completed" || st === "received")).to.equal(true);
    expect(bundled).to.deep.equal(single);
    expect(bundled.rejected).to.equal(0);
  });

  it("a refused message in a bundle is refused alone; the others are applied", () => {
    const { w, a, hub, b } = aHubB();
    const secret = rand32();
    w.net.submit(b.address, { type: "invoice", secret, amount: 10n, expiresAt: w.net.now + 3600n });
    const r = a.handle({ type: "pay", paymentId: rand32(), target: b.address, amount: 10n, secretHash: secretHash(secret) });
    expect(r.send.map((o) => o.envelope.message.type)).to.deep.equal(["LockedTransfer", "Propose"]);
    const propose = r.send[1]!.envelope;
    const stranger: Envelope = propose.kind === "channel" ? { kind: "channel", message: { ...propose.message, channelId: rand32() } } : propose;
    const got = w.net.submit(hub.address, { type: "deliver", from: a.address, envelope: { kind: "bundle", messages: [stranger, ...r.send.map((o) => o.envelope)] } });
    expect(got.ok).to.equal(true);
    expect(got.rejected.map((x) => [x.error.code, x.during.endsWith(IN_A_BUNDLE)])).to.deep.equal([["UNKNOWN_CHANNEL", true]]);
    // The lock was taken: countersigned to A, forwarded to B.
    expect(got.send.filter((o) => o.to === a.address).map((o) => o.envelope.message.type)).to.deep.equal(["Countersign"]);
    expect(got.send.filter((o) => o.to === b.address).map((o) => o.envelope.message.type)).to.deep.equal(["LockedTransfer", "Propose"]);
  });

  it("an empty, oversized or nested bundle is refused whole and changes nothing", () => {
    const { w, a, hub, b } = aHubB();
    const r = a.handle({ type: "pay", paymentId: rand32(), target: b.address, amount: 10n, secret: rand32() });
    const messages = r.send.map((o) => o.envelope);
    const bad: unknown[] = [
      { kind: "bundle", messages: [] },
      { kind: "bundle", messages: Array.from({ length: MAX_BUNDLE_MESSAGES + 1 }, () => messages[0]) },
      { kind: "bundle", messages: [...messages, { kind: "bundle", messages }] },
      { kind: "bundle", messages: "not a list" },
      { kind: "bundle", messages: [null] },
    ];
    for (const [i, envelope] of bad.entries()) {
      const got = hub.handle({ type: "deliver", from: a.address, envelope: envelope as Envelope });
      expect(got.ok, `bad bundle ${i}`).to.equal(false);
      expect(got.error?.code).to.equal("BAD_INPUT");
      expect(got.send).to.deep.equal([]);
      expect(got.persist.channels).to.deep.equal([]);
      expect(got.persist.transfers).to.equal(null);
    }
  });

  it("bundleByPeer keeps each peer's order, leaves a lone message as it is and splits at the limit", () => {
    const { w, a, hub, b } = aHubB();
    const r = a.handle({ type: "pay", paymentId: rand32(), target: b.address, amount: 10n, secret: rand32() });
    const [lt, propose] = r.send.map((o) => o.envelope) as [Envelope, Envelope];
    expect(bundleByPeer([{ to: hub.address, envelope: lt }])).to.deep.equal([{ to: hub.address, envelope: lt }]);
    expect(bundleByPeer([])).to.deep.equal([]);
    const mixed = bundleByPeer([
      { to: hub.address, envelope: lt },
      { to: b.address, envelope: propose },
      { to: hub.address, envelope: propose },
    ]);
    expect(mixed).to.deep.equal([
      { to: hub.address, envelope: { kind: "bundle", messages: [lt, propose] } },
      { to: b.address, envelope: propose },
    ]);
    const many = bundleByPeer(Array.from({ length: MAX_BUNDLE_MESSAGES + 1 }, () => ({ to: hub.address, envelope: lt })));
    expect(many.map((m) => (m.envelope.kind === "bundle" ? m.envelope.messages.length : 1))).to.deep.equal([MAX_BUNDLE_MESSAGES, 1]);
  });
});

describe("multi-hop and load", function () {
  it("A -> H1 -> H2 -> B completes, each hop's lock expiring earlier", () => {
    const w = new World();
    const [a, h1, h2, b] = [w.node(), w.node(), w.node(), w.node()];
    const a1 = w.open(a, h1);
    const hh = w.open(h1, h2);
    const h2b = w.open(h2, b);
    h1.setRoute(b.address, hh);
    h2.setRoute(a.address, hh);
    const paymentId = rand32();
    w.pay(a, b, 40n, paymentId);
    w.net.run();

    const sent = a.payment(paymentId)!;
    expect(sent.status).to.equal("completed");
    const got = b.incoming(paymentId)[0]!;
    expect(got.status).to.equal("received");
    expect(got.expiry).to.equal(sent.expiry! - 2n * 120n);
    expectAgreement(a, h1, a1);
    expectAgreement(h1, h2, hh);
    expectAgreement(h2, b, h2b);
    expect(mine(a, a1)).to.equal(DEPOSIT - 40n);
    expect(mine(h1, hh)).to.equal(DEPOSIT - 40n);
    expect(mine(h2, hh)).to.equal(DEPOSIT + 40n);
    expect(mine(b, h2b)).to.equal(DEPOSIT + 40n);
    expectIdle(a, h1, h2, b);
    expect(w.net.rejected).to.deep.equal([]);
  });

  it("the ledger reports no change for an entry added and removed again before its changes are taken", function () {
    const state = newTransferState();
    const meta = (n: number): LockedTransfer => ({
      type: "LockedTransfer",
      channelId: `0x${"11".repeat(32)}`,
      paymentId: `0x${n.toString(16).padStart(64, "0")}`,
      initiator: `0x${"22".repeat(20)}`,
      target: `0x${"33".repeat(20)}`,
      amount: 5n,
      secretHash: `0x${"44".repeat(32)}`,
      expiry: 1000n,
    });
    (state.metadata as Map<string, LockedTransfer>).set("stored", meta(1));
    const ledger = new TransferLedger(state);
    const metadata = ledger.writer(state, "metadata");
    metadata.set("passing", meta(2));
    metadata.delete("passing");
    metadata.delete("stored");
    metadata.set("kept", meta(3));
    expect(ledger.takeChanges()).to.deep.equal(new Map([["metadata", new Set(["stored", "kept"])]]));
    // Re-added after being stored: the new value is written.
    metadata.set("stored", meta(4));
    metadata.delete("kept");
    metadata.set("kept", meta(5));
    expect(ledger.takeChanges()).to.deep.equal(new Map([["metadata", new Set(["stored", "kept"])]]));
    metadata.set("gone", meta(6));
    metadata.delete("gone");
    expect(ledger.takeChanges(), "dirty, but nothing to write").to.deep.equal(new Map());
    expect(ledger.takeChanges(), "nothing changed since").to.equal(null);
  });

  it("each step reports exactly the transfer-state entries it changed; snapshots stay as they were", function () {
    this.timeout(60_000);
    const { w, hub, users } = star(3);
    // Mirror the hub's state from the per-entry changes alone, as the store does.
    const mirror = new Map<string, unknown>();
    const handle = hub.handle.bind(hub);
    hub.handle = (input) => {
      const r = handle(input);
      if (r.persist.transfers) expect(r.persist.transferChanges, "changes reported with the state").to.not.equal(null);
      for (const [table, keys] of r.persist.transferChanges ?? []) {
        for (const key of keys) {
          const value = (r.persist.transfers![table] as ReadonlyMap<string, unknown>).get(key);
          if (value === undefined) mirror.delete(`${table}!${key}`);
          else mirror.set(`${table}!${key}`, storedTransferEntry(table, key, value));
        }
      }
      return r;
    };
    let unstored = 0;
    const expectMirrored = (): void => {
      const actual = new Map(transferStateEntries(hub.transfers, "").map((e) => [e.key, e.value]));
      // A lock's metaSentAt is stored with its next stage (setUnstored): until then the stored
      // lock, still proposing, has none.
      for (const [key, value] of actual) {
        const stored = mirror.get(key) as { metaSentAt?: bigint | null } | undefined;
        const lock = value as { stage?: string; metaSentAt?: bigint | null };
        if (key.startsWith("sent!") && stored?.metaSentAt === null && lock.metaSentAt !== null && lock.stage === "proposing") {
          actual.set(key, { ...lock, metaSentAt: null });
          unstored++;
        }
      }
      expect(mirror).to.deep.equal(actual);
      // What is stored loads back as the state it was written from.
      const loaded = transferStateFromEntries(mirror, "");
      const proposedAt = (lock: { metaSentAt: bigint | null; stage: string }): unknown => (lock.stage === "proposing" ? null : lock.metaSentAt);
      for (const table of ["sent", "received", "payments", "incoming", "queues"] as const) {
        if (table !== "sent") expect(loaded[table], table).to.deep.equal(hub.transfers[table]);
      }
      const sent = (m: TransferState["sent"]): unknown[] => [...m].map(([k, l]) => [k, { ...l, metaSentAt: proposedAt(l) }]);
      expect(sent(loaded.sent), "sent").to.deep.equal(sent(hub.transfers.sent));
    };
    const random = rng(11);
    let snapshot = hub.transfers;
    let snapshotSize = -1;
    for (let k = 0; k < 15; k++) {
      for (const from of users) {
        for (const to of users) if (from !== to) expect(w.pay(from, to, BigInt(1 + Math.floor(random() * 9))).ok).to.equal(true);
      }
      for (let i = 0; i < 25; i++) {
        w.net.step(random);
        if (i % 5 === 0) expectMirrored();
      }
      // A snapshot taken earlier is not changed by the steps since.
      if (snapshotSize >= 0) expect(snapshot.sent.size + snapshot.received.size).to.equal(snapshotSize);
      snapshot = hub.transfers;
      snapshotSize = snapshot.sent.size + snapshot.received.size;
    }
    runToRest(w, random);
    expectMirrored();
    expect(mirror.size).to.equal(0);
    expect(unstored, "proposals seen with their metaSentAt not yet stored").to.be.greaterThan(0);
    expectIdle(hub, ...users);
  });

  it("channel records round-trip through their stored form, which leaves out what repeats", function () {
    this.timeout(60_000);
    const { w, hub, users } = star(3);
    const seen = { checked: 0, revocation: 0, lockDrops: 0, dropped: 0, whole: 0 };
    const check = (): void => {
      for (const node of [hub, ...users]) {
        for (const c of node.channels()) {
          const stored = storedChannel(c) as { partnerRevocation: object | null; inflight: { next: object } | null };
          const text = encode(stored);
          expect(loadedChannel(decode(text)), "loads back as it was").to.deep.equal(c);
          // The config and funding stay the very objects (the store writes them apart by identity).
          expect((stored as ChannelData).config).to.equal(c.config);
          expect((stored as ChannelData).funding).to.equal(c.funding);
          seen.checked++;
          if (stored.partnerRevocation && !("signature" in stored.partnerRevocation)) seen.revocation++;
          if (stored.inflight && "lockDrops" in stored.inflight.next) {
            seen.lockDrops++;
            if ((stored.inflight.next as { lockDrops: number[] }).lockDrops.length > 0) seen.dropped++;
          }
          if (stored === c) seen.whole++;
        }
      }
    };
    const random = rng(5);
    for (let k = 0; k < 8; k++) {
      for (const from of users) for (const to of users) if (from !== to) expect(w.pay(from, to, BigInt(1 + k)).ok).to.equal(true);
      for (let i = 0; i < 20; i++) {
        w.net.step(random);
        check();
      }
    }
    runToRest(w, random);
    check();
    expect(seen.revocation, "revocations stored by their state hash").to.be.greaterThan(0);
    expect(seen.lockDrops, "proposals stored without their locks").to.be.greaterThan(0);
    expect(seen.dropped, "proposals removing locks").to.be.greaterThan(0);
    expect(seen.whole, "channels with nothing to leave out").to.be.greaterThan(0);
    // A proposal whose locks are not latest's plus its own is stored as it is.
    const c = users[0]!.channels()[0]!;
    const lock = { sender: c.config.me, amount: 3n, expiry: 10_000n, secretHash: `0x${"ab".repeat(32)}` as Hex };
    const odd: ChannelData = { ...c, inflight: { ops: [{ type: "pay", amount: 1n, paymentId: rand32() }], next: { ...c.latest, locks: [lock] } } };
    const stored = storedChannel(odd) as ChannelData;
    expect(stored.inflight).to.equal(odd.inflight);
    expect(loadedChannel(decode(encode(stored)))).to.deep.equal(odd);
    // A revocation by a signature other than latest's is stored whole.
    const other: ChannelData = { ...c, partnerRevocation: { revokedBelow: 1n, stateHash: `0x${"cd".repeat(32)}`, signature: `0x${"ef".repeat(65)}` } };
    expect((storedChannel(other) as ChannelData).partnerRevocation).to.equal(other.partnerRevocation);
  });

  it("the ledger's setUnstored changes an entry without reporting it; the next reported change stores it; a rollback undoes it", function () {
    const state = newTransferState();
    const ledger = new TransferLedger(state);
    const queues = ledger.writer(state, "queues");
    const C: Hex = `0x${"0c".repeat(32)}`;
    const D: Hex = `0x${"0d".repeat(32)}`;
    const op = (n: bigint) => [{ type: "pay" as const, amount: n, paymentId: `0x${"aa".repeat(32)}` as const }];
    queues.set(C, op(1n));
    expect(ledger.takeChanges()).to.deep.equal(new Map([["queues", new Set([C])]]));
    queues.setUnstored(C, op(2n));
    expect(ledger.takeChanges(), "not reported").to.equal(null);
    expect(state.queues.get(C)).to.deep.equal(op(2n));
    const mark = ledger.mark();
    queues.setUnstored(C, op(3n));
    ledger.rollback(mark);
    expect(state.queues.get(C), "rolled back").to.deep.equal(op(2n));
    queues.set(D, op(4n));
    queues.setUnstored(C, op(5n));
    expect(ledger.takeChanges()).to.deep.equal(new Map([["queues", new Set([D])]]));
  });

  it("payers paying invoices, many in flight: only the paying side proposes on each channel, nothing is refused", function () {
    this.timeout(120_000);
    const w = new World();
    const hub = w.node();
    const payers = [w.node(), w.node(), w.node()];
    const payees = [w.node(), w.node(), w.node()];
    const payerChannels = payers.map((u) => w.open(u, hub));
    const payeeChannels = payees.map((u) => w.open(hub, u));
    const wires: Wire[] = [];
    w.net.dropIf = (wire) => {
      wires.push(wire);
      return false;
    };
    const random = rng(11);
    const ids: { from: NodeCore; to: NodeCore; paymentId: Hex }[] = [];
    for (let k = 0; k < 30; k++) {
      payers.forEach((from, i) => {
        const to = payees[i]!;
        const secret = rand32();
        expect(w.net.submit(to.address, { type: "invoice", secret, amount: 3n, expiresAt: w.net.now + 3600n }).ok).to.equal(true);
        const paymentId = rand32();
        const r = w.net.submit(from.address, { type: "pay", paymentId, target: to.address, amount: 3n, secretHash: secretHash(secret) });
        expect(r.ok, JSON.stringify(r.error)).to.equal(true);
        ids.push({ from, to, paymentId });
      });
      for (let i = 0; i < 4; i++) w.net.step(random);
    }
    runToRest(w, random);

    expectAllPaid(ids);
    const proposers = new Map<Hex, Set<Address>>();
    for (const wire of wires) {
      if (wire.envelope.kind !== "channel") continue;
      const m = wire.envelope.message;
      expect(m.type, "a refused proposal").to.not.equal("Reject");
      // A payee's unlock rides on its countersignature; any other proposal is a Propose.
      const proposes = m.type === "Propose" || (m.type === "Countersign" && m.next !== undefined && !payees.some((u) => u.address === wire.from));
      if (!proposes) continue;
      const id = m.channelId.toLowerCase() as Hex;
      proposers.set(id, (proposers.get(id) ?? new Set()).add(wire.from));
    }
    payerChannels.forEach((id, i) => expect([...(proposers.get(id) ?? [])], "payer's channel").to.deep.equal([payers[i]!.address]));
    payeeChannels.forEach((id) => expect([...(proposers.get(id) ?? [])], "payee's channel").to.deep.equal([hub.address]));
    payers.forEach((u, i) => {
      expectAgreement(u, hub, payerChannels[i]!);
      expect(mine(u, payerChannels[i]!)).to.equal(DEPOSIT - 90n);
    });
    payees.forEach((u, i) => expect(mine(u, payeeChannels[i]!)).to.equal(DEPOSIT + 90n));
    expect(w.net.rejected).to.deep.equal([]);
    expectIdle(hub, ...payers, ...payees);
  });

  it("many concurrent payments in both directions all complete, batched, and the funds add up", function () {
    this.timeout(120_000);
    const w = new World();
    const hub = w.node();
    const users = [w.node(), w.node(), w.node()];
    const deposit = 100_000n;
    const channels = users.map((u) => w.open(u, hub, deposit, deposit));
    const random = rng(7);
    const perDirection = 50;
    const net = new Map<Address, bigint>(users.map((u) => [u.address, 0n]));
    const ids: { from: NodeCore; to: NodeCore; paymentId: Hex }[] = [];
    for (let k = 0; k < perDirection; k++) {
      for (const from of users) {
        for (const to of users) {
          if (from === to) continue;
          const amount = BigInt(1 + Math.floor(random() * 20));
          const paymentId = rand32();
          const r = w.pay(from, to, amount, paymentId);
          expect(r.ok, JSON.stringify(r.error)).to.equal(true);
          ids.push({ from, to, paymentId });
          net.set(from.address, net.get(from.address)! - amount);
          net.set(to.address, net.get(to.address)! + amount);
        }
      }
      // Let some traffic through between submissions, in a random interleaving.
      for (let i = 0; i < 5; i++) w.net.step(random);
    }
    runToRest(w, random);

    expectAllPaid(ids);
    users.forEach((u, i) => {
      const id = channels[i]!;
      expectAgreement(u, hub, id);
      expectNoLocks(u.channel(id)!, hub.channel(id)!);
      expect(mine(u, id)).to.equal(deposit + net.get(u.address)!);
      // 200 payments touch each channel (100 out, 100 in), each needing a lock and an unlock.
      expect(u.channel(id)!.latest.state.nonce < 100n, "updates were batched").to.equal(true);
    });
    const hubTotal = channels.reduce((sum, id) => sum + mine(hub, id), 0n);
    expect(hubTotal).to.equal(3n * deposit);
    expectIdle(hub, ...users);
    // Crossing proposals are expected and resolved; nothing else may be refused.
    expect(w.net.rejected.filter((r) => r.error.code !== "CONFLICT")).to.deep.equal([]);
  });
});

/** The channels whose explicit Revoke is among `sends`. */
const revoked = (sends: readonly { envelope: Envelope }[]): Hex[] =>
  sends.flatMap((s) => (s.envelope.kind === "channel" && s.envelope.message.type === "Revoke" ? [s.envelope.message.channelId] : []));

describe("explicit revocations: only for a channel left idle", function () {
  it("a channel in use revokes on its next proposal; one idle for REVOKE_IDLE_SECONDS gets a Revoke, once", () => {
    const w = new World();
    const [hub, u] = [w.node(), w.node()];
    const id = w.open(hub, u);
    const issue = () => expect(w.net.submit(hub.address, { type: "issue", paymentId: rand32(), target: u.address, amount: 1n }).ok).to.equal(true);
    issue();
    w.net.run();
    // The hub's revocation of the state before its proposal is still owed.
    expect(hub.channel(id)!.myRevokedBelow < hub.channel(id)!.latest.state.nonce).to.equal(true);
    for (let s = 1n; s < REVOKE_IDLE_SECONDS; s++) {
      w.net.advance(1n);
      expect(revoked(w.net.tick(hub.address).send), `no Revoke ${s} s after the update`).to.deep.equal([]);
    }
    // Used again within the window: the next proposal revokes below the newest state itself.
    const before = hub.channel(id)!.latest.state.nonce;
    issue();
    w.net.run();
    expect(hub.channel(id)!.myRevokedBelow).to.equal(before);
    expect(w.net.tick(hub.address).send, "nothing owed that has waited long enough").to.deep.equal([]);
    // Left idle: one explicit Revoke of everything below the newest state, then none.
    w.net.advance(REVOKE_IDLE_SECONDS);
    const r = w.net.tick(hub.address);
    expect(revoked(r.send)).to.deep.equal([id]);
    w.net.run();
    expect(hub.channel(id)!.myRevokedBelow).to.equal(hub.channel(id)!.latest.state.nonce);
    expect(u.channel(id)!.partnerRevocation?.revokedBelow).to.equal(hub.channel(id)!.latest.state.nonce);
    w.net.advance(REVOKE_IDLE_SECONDS);
    expect(revoked(w.net.tick(hub.address).send)).to.deep.equal([]);
    expect(w.net.rejected).to.deep.equal([]);
  });

  it("after a restart a channel with a revocation owed counts as idle", () => {
    const w = new World();
    const [hub, u] = [w.node(), w.node()];
    const id = w.open(hub, u);
    expect(w.net.submit(hub.address, { type: "issue", paymentId: rand32(), target: u.address, amount: 1n }).ok).to.equal(true);
    w.net.run();
    const signer = w.signers.get(hub.address)!;
    const restarted = new NodeCore({ signer, verifier: backend.verifier, clock: w.net.clock, channels: [hub.channel(id)!] });
    expect(revoked(restarted.handle({ type: "tick" }).send)).to.deep.equal([id]);
  });
});

describe("tick slices: the once-a-second tick in shorter steps", function () {
  it("covers each channel in exactly one slice and sends what one whole tick sends", () => {
    const build = () => {
      const w = new World();
      const hub = w.node();
      const users = Array.from({ length: 12 }, () => w.node());
      const ids = users.map((u) => w.open(hub, u));
      // The hub pays each user (its proposals); once countersigned each channel is idle with
      // its previous state not yet revoked by the hub.
      for (const u of users) expect(w.net.submit(hub.address, { type: "issue", paymentId: rand32(), target: u.address, amount: 1n }).ok).to.equal(true);
      w.net.run();
      w.net.advance(REVOKE_IDLE_SECONDS);
      return { w, hub, ids };
    };

    const whole = build();
    const all = revoked(whole.w.net.submit(whole.hub.address, { type: "tick" }).send);
    expect([...all].sort()).to.deep.equal([...whole.ids].sort());

    const sliced = build();
    const of = 4;
    const seen: Hex[] = [];
    for (let index = 0; index < of; index++) {
      const r = sliced.w.net.submit(sliced.hub.address, { type: "tick", slice: { index, of } });
      expect(r.ok).to.equal(true);
      const these = revoked(r.send);
      for (const id of these) expect(tickSliceOf(id, of)).to.equal(index);
      seen.push(...these);
    }
    expect([...seen].sort(), "each channel revoked once over the slices").to.deep.equal([...sliced.ids].sort());
    expect(revoked(sliced.w.net.submit(sliced.hub.address, { type: "tick" }).send), "nothing left for a whole tick").to.deep.equal([]);
  });

  it("expires an unanswered lock from slice 0 only", () => {
    const w = new World();
    const [a, hub, b] = [w.node(), w.node(), w.node()];
    w.open(a, hub);
    w.open(hub, b);
    // B never answers: the hub's lock towards B stays until it expires.
    w.net.dropIf = (wire) => wire.from === b.address || wire.to === b.address;
    expect(w.pay(a, b, 5n).ok).to.equal(true);
    w.net.run();
    const payment = () => [...(w.net.events.get(a.address) ?? [])].filter((e) => e.type === "paymentFailed");
    w.net.advance(48n * 3600n);
    for (let index = 1; index < 4; index++) w.net.submit(a.address, { type: "tick", slice: { index, of: 4 } });
    w.net.run();
    expect(payment(), "no transfer timers outside slice 0").to.deep.equal([]);
    w.net.submit(a.address, { type: "tick", slice: { index: 0, of: 4 } });
    w.net.run();
    expect(payment().length).to.equal(1);
  });

  it("refuses a slice that is not an index into a whole number of slices", () => {
    const w = new World();
    const hub = w.node();
    for (const slice of [{ index: 4, of: 4 }, { index: -1, of: 4 }, { index: 0, of: 0 }, { index: 0.5, of: 2 }]) {
      const r = w.net.submit(hub.address, { type: "tick", slice });
      expect(r.ok, JSON.stringify(slice)).to.equal(false);
      expect(r.error?.code).to.equal("BAD_INPUT");
    }
  });
});
