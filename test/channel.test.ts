/**
 * Unit tests of every transition of the channel state machine (src/protocol/channel.ts), with two
 * parties holding real keys. Every rejection must come back as a typed error and leave the
 * channel exactly as it was; refusing an authentic proposal changes nothing but its burnt nonce
 * (and side 2's backoff after a conflict), and answers with a Reject.
 */
import { expect } from "chai";
import {
  CLOSE_RESEND_SECONDS,
  CONFLICT_BACKOFF_SECONDS,
  available,
  balances,
  capacity,
  disputeKit,
  nextNonce,
  share,
  transition,
  type ChannelData,
  type ChannelEffect,
  type ChannelErrorCode,
  type ChannelInput,
  type ChannelMessage,
  type Funding,
  type Op,
  type Side,
  type StateSignature,
} from "../src/protocol/channel.js";
import {
  ZERO_HASH,
  bytesToHex,
  channelId as makeChannelId,
  cooperativeCloseDigestBytes,
  hashState,
  hexToBytes,
  locksRoot,
  withdrawDigestBytes,
  type ChannelState,
  type Hex,
  type WithdrawRequest,
} from "../src/protocol/eip712.js";
import { DOMAIN, isUpdateSignatureBy, makePair, restored, signUpdateAs, testSecret, type Pair } from "./helpers/two-party.js";

const T0 = 1_700_000_000n;
const HOUR = 3600n;
const PID = (n: number): Hex => `0x${n.toString(16).padStart(64, "0")}`;

let pair: Pair;

// ------------------------------------------------------------------ driving helpers

type Ok = { channel: ChannelData; effects: ChannelEffect[] };

function run(c: ChannelData, input: ChannelInput, now = T0, p: Pair = pair) {
  const snapshot = structuredClone(c);
  const result = transition(c, input, p.deps(c.config.me, now));
  expect(c, "the input channel is never mutated").to.deep.equal(snapshot);
  return result;
}

function ok(c: ChannelData, input: ChannelInput, now = T0, p: Pair = pair): Ok {
  const result = run(c, input, now, p);
  if (!result.ok) expect.fail(`${input.type} failed: ${result.error.code} ${result.error.message}`);
  return result;
}

/** Asserts a typed rejection, and that the channel is deep-equal to what it was. */
function rejected(c: ChannelData, input: ChannelInput, code: ChannelErrorCode, now = T0, p: Pair = pair): void {
  const before = structuredClone(c);
  const result = run(c, input, now, p);
  if (result.ok) expect.fail(`${input.type} was accepted, expected ${code}`);
  expect(result.error.code).to.equal(code);
  expect(result.error.message).to.be.a("string").and.not.empty;
  expect(c).to.deep.equal(before);
}

const receive = (message: ChannelMessage): ChannelInput => ({ type: "receive", message });

type RejectMessage = Extract<ChannelMessage, { type: "Reject" }>;

/**
 * Asserts that an authentic proposal (`input` receives a Propose) is refused: accepted as a
 * transition whose only effect is one Reject with `code` and the proposal's nonce, and whose
 * channel is deep-equal to the input except that the nonce is burnt (and, for side 2 on a
 * conflict, the backoff set). Nothing is signed.
 */
function refused(c: ChannelData, input: ChannelInput, code: ChannelErrorCode, now = T0, p: Pair = pair): { channel: ChannelData; reject: RejectMessage } {
  if (input.type !== "receive" || input.message.type !== "Propose") throw new Error("refused() takes a received Propose");
  const nonce = input.message.state.nonce;
  expect(nonce, "a refused proposal carries the next nonce").to.equal(nextNonce(c));
  const before = structuredClone(c);
  const result = run(c, input, now, p);
  if (!result.ok) return expect.fail(`expected a refusal with ${code}, got the rejection ${result.error.code} ${result.error.message}`);
  // Side 1 in a conflict also drops its own proposal at once (side 2 refuses it in turn).
  const side1Conflict = code === "CONFLICT" && c.config.me === 1 && c.inflight !== null;
  expect(result.effects).to.have.length(side1Conflict ? 2 : 1);
  const reject = messageOf(result.effects.filter((e) => e.type === "send"), "Reject");
  expect(reject).to.deep.include({ type: "Reject", channelId: p.channelId, nonce, code });
  expect(reject.reason).to.be.a("string").and.not.empty;
  if (side1Conflict) {
    expect(result.effects[1]).to.deep.include({ type: "proposalRejected", ops: c.inflight!.ops });
    const backoffUntil = c.backoffUntil >= now ? now + 1n : now;
    expect(result.channel).to.deep.equal({ ...before, burnt: nonce, inflight: null, backoffUntil });
    expect(c).to.deep.equal(before);
    return { channel: result.channel, reject };
  }
  const backoffUntil = code === "CONFLICT" && c.config.me === 2 ? now + CONFLICT_BACKOFF_SECONDS : c.backoffUntil;
  expect(result.channel).to.deep.equal({ ...before, burnt: nonce, backoffUntil });
  expect(c).to.deep.equal(before);
  return { channel: result.channel, reject };
}

/**
 * The proposer's side of a refusal: the Reject drops its proposal and burns the nonce. Side 1 of
 * a conflict dropped its proposal already: the Reject then changes nothing.
 */
function dropsOnReject(c: ChannelData, reject: RejectMessage, now = T0): ChannelData {
  if (c.inflight === null && c.config.me === 1 && reject.code === "CONFLICT") {
    const r = ok(c, receive(reject), now);
    expect(r.effects).to.deep.equal([]);
    expect(r.channel).to.equal(c);
    return c;
  }
  const inflight = c.inflight;
  expect(inflight?.next.state.nonce).to.equal(reject.nonce);
  const r = ok(c, receive(reject), now);
  expect(r.effects).to.have.length(1);
  const e = r.effects[0]!;
  if (e.type !== "proposalRejected") return expect.fail(`expected proposalRejected, got ${e.type}`);
  expect(e.ops).to.deep.equal(inflight!.ops);
  expect(e.error.code).to.equal(reject.code);
  expect(e.error.message).to.be.a("string").and.not.empty;
  expect(r.channel).to.deep.equal({ ...c, inflight: null, burnt: reject.nonce });
  return r.channel;
}

/** The one message in `effects`. */
function sentIn(effects: ChannelEffect[]): ChannelMessage {
  const sends = effects.flatMap((e) => (e.type === "send" ? [e.message] : []));
  expect(sends).to.have.length(1);
  return sends[0]!;
}

function messageOf<T extends ChannelMessage["type"]>(effects: ChannelEffect[], type: T): Extract<ChannelMessage, { type: T }> {
  const m = sentIn(effects);
  expect(m.type).to.equal(type);
  return m as Extract<ChannelMessage, { type: T }>;
}

interface Chans {
  1: ChannelData;
  2: ChannelData;
}

const otherSide = (s: Side): Side => (s === 1 ? 2 : 1);

/** The full three-step update: propose, receive Propose (countersign), receive Countersign. */
function update(
  ch: Chans,
  proposer: Side,
  ops: Op[],
  now = T0,
  p: Pair = pair,
): Chans & { propose: Extract<ChannelMessage, { type: "Propose" }> } {
  const q = otherSide(proposer);
  const p1 = ok(ch[proposer], { type: "propose", ops }, now, p);
  const propose = messageOf(p1.effects, "Propose");
  const q1 = ok(ch[q], receive(propose), now, p);
  const countersign = messageOf(q1.effects, "Countersign");
  const p2 = ok(p1.channel, receive(countersign), now, p);
  const next = { [proposer]: p2.channel, [q]: q1.channel } as unknown as Chans;
  return { ...next, propose };
}

function fresh(p: Pair = pair): Chans {
  return { 1: p.initial[1], 2: p.initial[2] };
}

const address = (side: Side): Hex => pair.configs[side][side === 1 ? "participant1" : "participant2"];

/** A Propose from `from` carrying any state and ops, signed by `signer` (the proposer's key by default). */
function forgedPropose(
  from: Side,
  state: ChannelState,
  ops: Op[],
  opts: { revokedBelow?: bigint; signature?: StateSignature; signer?: Pair["mallory"] } = {},
): Extract<ChannelMessage, { type: "Propose" }> {
  const signature =
    opts.signature ?? signUpdateAs(opts.signer ?? pair.signers[from], pair.channelId, state, opts.revokedBelow ?? state.nonce - 1n);
  return { type: "Propose", channelId: pair.channelId, state, ops, signature };
}

/** The state `ops` by `proposer` would produce from `base` (computed by hand, not by the code under test). */
function nextState(base: ChannelState, delta: Partial<ChannelState>): ChannelState {
  return { ...base, nonce: base.nonce + 1n, ...delta };
}

const pay = (amount: bigint, id = 1): Op => ({ type: "pay", amount, paymentId: PID(id) });
const lock = (amount: bigint, secretIndex: number, expiry = T0 + HOUR, id = 100 + secretIndex): Op => ({
  type: "lock",
  amount,
  expiry,
  secretHash: testSecret(secretIndex).hash,
  paymentId: PID(id),
});
const unlock = (secretIndex: number): Op => ({ type: "unlock", secret: testSecret(secretIndex).secret });
const expire = (secretIndex: number): Op => ({ type: "expire", secretHash: testSecret(secretIndex).hash });

function randomSignature(seed: number): Hex {
  const bytes = new Uint8Array(65);
  for (let i = 0; i < 65; i++) bytes[i] = (seed * 131 + i * 7919) & 0xff;
  bytes[64] = 27;
  return bytesToHex(bytes);
}

/** Asserts both parties hold the same fully signed state, each signature valid. */
function expectAgreed(ch: Chans, nonce: bigint): void {
  expect(ch[1].latest).to.deep.equal(ch[2].latest);
  expect(ch[1].inflight).to.equal(null);
  expect(ch[2].inflight).to.equal(null);
  const l = ch[1].latest;
  expect(l.state.nonce).to.equal(nonce);
  const h = hashState(l.state);
  expect(isUpdateSignatureBy(pair.backend, pair.channelId, h, l.sig1!, address(1))).to.equal(true);
  expect(isUpdateSignatureBy(pair.backend, pair.channelId, h, l.sig2!, address(2))).to.equal(true);
  expect(l.state.locksRoot).to.equal(locksRoot(l.locks));
  for (const c of [ch[1], ch[2]]) {
    const s = c.latest.state;
    expect(share(c.funding, s, 1) + share(c.funding, s, 2) + s.locked1 + s.locked2).to.equal(capacity(c.funding));
  }
}

// ------------------------------------------------------------------ tests

describe("channel state machine", function () {
  before(async function () {
    pair = await makePair();
  });

  describe("a new channel", function () {
    it("starts at nonce 0 with the deposits as shares and nothing signed", function () {
      const c = pair.initial[1];
      expect(c.status).to.equal("open");
      expect(c.latest.state).to.deep.equal({
        channelId: pair.channelId,
        nonce: 0n,
        sent1: 0n,
        sent2: 0n,
        locked1: 0n,
        locked2: 0n,
        locksRoot: ZERO_HASH,
      });
      expect(c.latest.sig1).to.equal(null);
      expect(c.latest.sig2).to.equal(null);
      expect(c.burnt).to.equal(0n);
      expect(c.backoffUntil).to.equal(0n);
      expect(nextNonce(c)).to.equal(1n);
      expect(balances(c)).to.deep.equal({ mine: 1000n, partner: 1000n, lockedMine: 0n, lockedPartner: 0n, availableMine: 1000n });
      expect(disputeKit(c)).to.deep.equal({ latest: c.latest, partnerSignature: null, revocation: null });
    });
  });

  describe("the three-step update", function () {
    it("pay: propose, countersign with a revocation, complete", function () {
      const ch = fresh();
      const p = ok(ch[1], { type: "propose", ops: [pay(100n)] });
      const propose = messageOf(p.effects, "Propose");
      expect(p.effects).to.have.length(1);
      expect(propose.state).to.deep.equal(nextState(ch[1].latest.state, { sent1: 100n }));
      expect(propose.signature.revokedBelow, "nothing to revoke before the first state").to.equal(0n);
      expect(isUpdateSignatureBy(pair.backend, pair.channelId, hashState(propose.state), propose.signature, address(1))).to.equal(true);
      expect(p.channel.inflight?.next.state).to.deep.equal(propose.state);
      expect(p.channel.latest).to.deep.equal(ch[1].latest, "latest waits for the countersignature");

      const q = ok(ch[2], receive(propose));
      const countersign = messageOf(q.effects, "Countersign");
      expect(countersign.nonce).to.equal(1n);
      expect(countersign.signature.revokedBelow, "countersigning n+1 revokes n").to.equal(1n);
      expect(isUpdateSignatureBy(pair.backend, pair.channelId, hashState(propose.state), countersign.signature, address(2))).to.equal(true);
      expect(q.effects).to.deep.include({ type: "updated", nonce: 1n, proposer: 1, ops: [pay(100n)] });
      expect(q.channel.latest.state).to.deep.equal(propose.state);
      expect(q.channel.myRevokedBelow).to.equal(1n);
      expect(q.channel.partnerRevocation, "a revokedBelow of 0 revokes nothing").to.equal(null);
      expect(q.channel.burnt, "an accepted proposal burns nothing").to.equal(0n);

      const done = ok(p.channel, receive(countersign));
      expect(done.effects).to.deep.equal([{ type: "updated", nonce: 1n, proposer: 1, ops: [pay(100n)] }]);
      expect(done.channel.inflight).to.equal(null);
      expect(done.channel.partnerRevocation).to.deep.equal({
        revokedBelow: 1n,
        stateHash: hashState(propose.state),
        signature: countersign.signature.signature,
      });
      const after = { 1: done.channel, 2: q.channel };
      expectAgreed(after, 1n);
      expect(balances(after[1])).to.deep.include({ mine: 900n, partner: 1100n, availableMine: 900n });
      expect(balances(after[2])).to.deep.include({ mine: 1100n, partner: 900n, availableMine: 1100n });
      expect(disputeKit(after[1]).partnerSignature).to.deep.equal(countersign.signature);
    });

    it("the next proposer revokes every state below its newest one", function () {
      let ch: Chans = fresh();
      ch = update(ch, 1, [pay(100n)]);
      const r = update(ch, 2, [pay(30n)]);
      expect(r.propose.signature.revokedBelow).to.equal(1n);
      expect(r.propose.state).to.deep.include({ nonce: 2n, sent1: 100n, sent2: 30n });
      expectAgreed(r, 2n);
      expect(r[2].partnerRevocation?.revokedBelow).to.equal(2n);
      expect(r[1].partnerRevocation?.revokedBelow).to.equal(1n);
      expect(r[1].myRevokedBelow).to.equal(2n);
      expect(r[2].myRevokedBelow).to.equal(1n);
      expect(balances(r[1]).mine).to.equal(930n);
    });

    describe("a countersignature carrying the next proposal", function () {
      /** Side 1 proposes pay(100); side 2 countersigns it and proposes `ops` in the same message. */
      function joined(ops: Op[] = [pay(30n, 2)], overdrawn = false) {
        const ch = fresh();
        const p = ok(ch[1], { type: "propose", ops: [pay(100n)] });
        const q = ok(ch[2], receive(messageOf(p.effects, "Propose")));
        const q2 = ok(q.channel, { type: "propose", ops: [pay(30n, 2)] });
        // An overdrawn proposal is one side 2 would never make, signed with its key all the same.
        const { state, signature } = overdrawn
          ? forgedPropose(2, nextState(q.channel.latest.state, { sent2: 5_000n }), ops)
          : messageOf(q2.effects, "Propose");
        const message: ChannelMessage = { ...messageOf(q.effects, "Countersign"), next: { state, ops, signature } };
        return { p, q2, message };
      }

      it("completes one update and answers the next in one step", function () {
        const { p, q2, message } = joined();
        const r = ok(p.channel, receive(message));
        expect(r.effects.filter((e) => e.type === "updated")).to.deep.equal([
          { type: "updated", nonce: 1n, proposer: 1, ops: [pay(100n)] },
          { type: "updated", nonce: 2n, proposer: 2, ops: [pay(30n, 2)] },
        ]);
        const countersign = messageOf(r.effects, "Countersign");
        expect(countersign.nonce).to.equal(2n);
        const done = ok(q2.channel, receive(countersign));
        expectAgreed({ 1: r.channel, 2: done.channel }, 2n);
        expect(balances(r.channel)).to.deep.include({ mine: 930n, partner: 1070n });
        // Delivered twice: the countersignature part is stale, the proposal is answered again.
        const again = ok(r.channel, receive(message));
        expect(again.channel).to.equal(r.channel);
        expect(again.effects).to.deep.equal([{ type: "send", message: countersign }]);
      });

      it("a refused next proposal is answered with a Reject; the countersignature still counts", function () {
        const { p, message } = joined([pay(5_000n, 2)], true);
        const r = ok(p.channel, receive(message));
        expect(r.channel.latest.state.nonce).to.equal(1n);
        expect(r.channel.inflight).to.equal(null);
        expect(r.channel.burnt).to.equal(2n);
        const reject = messageOf(r.effects, "Reject");
        expect(reject).to.deep.include({ nonce: 2n, code: "INSUFFICIENT_BALANCE" });
      });

      it("a forged or malformed next proposal is reported; the countersignature still counts", function () {
        const { p, message } = joined();
        if (message.type !== "Countersign" || !message.next) throw new Error("unreachable");
        const forged = { ...message, next: { ...message.next, signature: { ...message.next.signature, signature: randomSignature(7) } } };
        for (const m of [forged, { ...message, next: null as unknown as undefined }, { ...message, next: { state: 5 } as never }]) {
          const r = run(p.channel, receive(m), T0);
          if (!r.ok) return expect.fail(`refused whole: ${r.error.code}`);
          expect(r.channel.latest.state.nonce).to.equal(1n);
          expect(r.channel.inflight).to.equal(null);
          expect(r.effects).to.deep.equal([{ type: "updated", nonce: 1n, proposer: 1, ops: [pay(100n)] }]);
          expect(r.refused?.code).to.be.oneOf(["BAD_SIGNATURE", "STATE_MISMATCH", "BAD_NONCE"]);
        }
      });

      it("a bad countersignature refuses the whole message", function () {
        const { p, message } = joined();
        if (message.type !== "Countersign") throw new Error("unreachable");
        const bad = { ...message, signature: { ...message.signature, signature: randomSignature(9) } };
        rejected(p.channel, receive(bad), "BAD_SIGNATURE");
      });
    });

    it("lock: the amount leaves the sender's share and enters the locks root", function () {
      const r = update(fresh(), 1, [lock(200n, 1)]);
      expectAgreed(r, 1n);
      const expected = [{ sender: 1 as const, amount: 200n, expiry: T0 + HOUR, secretHash: testSecret(1).hash }];
      expect(r[1].latest.locks).to.deep.equal(expected);
      expect(r[1].latest.state).to.deep.include({ locked1: 200n, sent1: 0n, locksRoot: locksRoot(expected) });
      expect(balances(r[1])).to.deep.include({ mine: 800n, partner: 1000n, lockedMine: 200n, availableMine: 800n });
      expect(balances(r[2])).to.deep.include({ mine: 1000n, lockedPartner: 200n });
    });

    it("unlock: the receiver settles a lock with its secret", function () {
      let ch: Chans = update(fresh(), 1, [lock(200n, 1)]);
      ch = update(ch, 2, [unlock(1)], T0 + HOUR);
      expectAgreed(ch, 2n);
      expect(ch[1].latest.state).to.deep.include({ locked1: 0n, sent1: 200n, locksRoot: ZERO_HASH });
      expect(ch[1].latest.locks).to.deep.equal([]);
      expect(balances(ch[2]).mine).to.equal(1200n);
      expect(balances(ch[1]).mine).to.equal(800n);
    });

    it("expire: the sender takes an expired lock back", function () {
      let ch: Chans = update(fresh(), 2, [lock(300n, 2)]);
      expect(balances(ch[2]).availableMine).to.equal(700n);
      ch = update(ch, 2, [expire(2)], T0 + HOUR + 1n);
      expectAgreed(ch, 2n);
      expect(ch[2].latest.state).to.deep.include({ locked2: 0n, sent2: 0n, locksRoot: ZERO_HASH });
      expect(balances(ch[2]).availableMine).to.equal(1000n);
      expect(balances(ch[1]).mine).to.equal(1000n);
    });

    it("a batch of several operations is one update", function () {
      let ch: Chans = update(fresh(), 1, [pay(10n, 1), lock(50n, 1, T0 + HOUR), lock(60n, 2, T0 + 2n * HOUR), lock(70n, 3, T0 + HOUR)]);
      expectAgreed(ch, 1n);
      expect(ch[1].latest.state).to.deep.include({ sent1: 10n, locked1: 180n });
      expect(ch[1].latest.locks.map((l) => l.amount)).to.deep.equal([50n, 60n, 70n]);
      // Receiver settles one lock and pays back in the same update.
      const r = update(ch, 2, [unlock(1), pay(5n, 2), lock(20n, 4, T0 + HOUR)], T0 + 60n);
      expectAgreed(r, 2n);
      expect(r[1].latest.state).to.deep.include({ sent1: 60n, locked1: 130n, sent2: 5n, locked2: 20n });
      // After the expiries the sender removes two of its locks, the receiver unlocks nothing.
      const t = T0 + HOUR + 1n;
      const e = update(r, 1, [expire(3), pay(1n, 3)], t);
      expectAgreed(e, 3n);
      expect(e[1].latest.locks.map((l) => l.secretHash)).to.deep.equal([testSecret(2).hash, testSecret(4).hash]);
      expect(e[1].latest.state).to.deep.include({ sent1: 61n, locked1: 60n, sent2: 5n, locked2: 20n });
      expect(balances(e[1])).to.deep.include({ mine: 1000n - 61n - 60n + 5n, availableMine: 884n });
    });

    it("an expired lock taken back in a batch funds the rest of the batch", function () {
      let ch: Chans = update(fresh(), 1, [lock(1000n, 1)]);
      expect(balances(ch[1]).availableMine).to.equal(0n);
      rejected(ch[1], { type: "propose", ops: [expire(1), pay(1001n)] }, "INSUFFICIENT_BALANCE", T0 + HOUR + 1n);
      ch = update(ch, 1, [expire(1), pay(1000n)], T0 + HOUR + 1n);
      expect(ch[1].latest.state).to.deep.include({ sent1: 1000n, locked1: 0n });
    });

    it("survives a store round trip at every step", function () {
      const ch = fresh();
      const p = ok(restored(ch[1]), { type: "propose", ops: [lock(10n, 1)] });
      const q = ok(restored(ch[2]), receive(messageOf(p.effects, "Propose")));
      const done = ok(restored(p.channel), receive(messageOf(q.effects, "Countersign")));
      expect(restored(done.channel)).to.deep.equal(done.channel);
      expectAgreed({ 1: restored(done.channel), 2: restored(q.channel) }, 1n);
    });
  });

  describe("rejections are typed and change nothing", function () {
    let base: Chans;
    before(function () {
      // Nonce 2: side 1 locked 100 (secret 1) and paid 50; side 2 locked 100 (secret 2).
      base = update(update(fresh(), 1, [lock(100n, 1), pay(50n)]), 2, [lock(100n, 2)]);
    });

    it("a message for another channel", function () {
      const otherId = makeChannelId(DOMAIN.chainId, DOMAIN.verifyingContract, pair.configs[1].participant1, pair.configs[1].participant2, 2);
      const p = ok(base[1], { type: "propose", ops: [pay(1n)] });
      const propose = messageOf(p.effects, "Propose");
      rejected(base[2], receive({ ...propose, channelId: otherId }), "WRONG_CHANNEL");
      const q = ok(base[2], receive(propose));
      const countersign = messageOf(q.effects, "Countersign");
      rejected(p.channel, receive({ ...countersign, channelId: otherId }), "WRONG_CHANNEL");
      for (const m of [
        { type: "Revoke", channelId: otherId, nonce: 2n, signature: countersign.signature },
        { type: "WithdrawRequest", channelId: otherId, request: withdrawOf(1, 1n), signature: randomSignature(1) },
        { type: "CloseRequest", channelId: otherId, terms: { channelId: otherId, balance1: 1n, balance2: 1n }, signature: randomSignature(2) },
      ] satisfies ChannelMessage[]) {
        rejected(base[2], receive(m), "WRONG_CHANNEL");
      }
      // A state of another channel inside a message of this one, even signed by the partner.
      const state = { ...propose.state, channelId: otherId };
      rejected(base[2], receive(forgedPropose(1, state, [pay(1n)])), "WRONG_CHANNEL");
    });

    it("a proposal whose nonce is not exactly the next one", function () {
      const ops = [pay(1n)];
      const good = nextState(base[2].latest.state, { sent1: base[2].latest.state.sent1 + 1n });
      rejected(base[2], receive(forgedPropose(1, { ...good, nonce: good.nonce + 1n }, ops)), "BAD_NONCE");
      rejected(base[2], receive(forgedPropose(1, { ...good, nonce: good.nonce + 100n }, ops)), "BAD_NONCE");
      rejected(base[2], receive(forgedPropose(1, { ...good, nonce: good.nonce - 1n }, ops, { revokedBelow: 0n })), "BAD_NONCE");
    });

    it("a stale proposal or countersignature (replayed)", function () {
      const p = ok(base[1], { type: "propose", ops: [pay(1n)] });
      const propose = messageOf(p.effects, "Propose");
      const q = ok(base[2], receive(propose));
      const countersign = messageOf(q.effects, "Countersign");
      const done = ok(p.channel, receive(countersign));
      // The proposal again: its Countersign was lost, so the same Countersign goes out again.
      const repeat = ok(q.channel, receive(propose));
      expect(repeat.channel).to.equal(q.channel);
      expect(repeat.effects).to.deep.equal([{ type: "send", message: countersign }]);
      rejected(done.channel, receive(countersign), "UNEXPECTED_MESSAGE");
      // An old proposal of this channel, replayed much later.
      rejected(done.channel, receive({ ...propose, state: base[1].latest.state }), "BAD_NONCE");
      // A countersignature nobody asked for, or for another nonce.
      rejected(base[1], receive(countersign), "UNEXPECTED_MESSAGE");
      rejected(p.channel, receive({ ...countersign, nonce: countersign.nonce + 1n }), "UNEXPECTED_MESSAGE");
    });

    it("a forged signature (a third key, random bytes, malformed)", function () {
      const ops = [pay(1n)];
      const state = nextState(base[2].latest.state, { sent1: base[2].latest.state.sent1 + 1n });
      rejected(base[2], receive(forgedPropose(1, state, ops, { signer: pair.mallory })), "BAD_SIGNATURE");
      rejected(base[2], receive(forgedPropose(1, state, ops, { signer: pair.signers[2] })), "BAD_SIGNATURE");
      for (const signature of [randomSignature(3), "0x1234" as Hex, `0x${"zz".repeat(65)}` as Hex, `0x${"00".repeat(65)}` as Hex]) {
        rejected(base[2], receive(forgedPropose(1, state, ops, { signature: { revokedBelow: 1n, signature } })), "BAD_SIGNATURE");
      }
      for (const revokedBelow of [-1n, 1n << 64n]) {
        const real = signUpdateAs(pair.signers[1], pair.channelId, state, 0n);
        rejected(base[2], receive(forgedPropose(1, state, ops, { signature: { ...real, revokedBelow } })), "BAD_SIGNATURE");
      }
      // Signed for another chain: no replay across domains.
      const elsewhere = bytesToHex(
        pair.signers[1].signDigest(
          cooperativeCloseDigestBytes({ ...DOMAIN, chainId: 1n }, { channelId: pair.channelId, balance1: 0n, balance2: 0n }),
        ),
      );
      rejected(base[2], receive(forgedPropose(1, state, ops, { signature: { revokedBelow: 1n, signature: elsewhere } })), "BAD_SIGNATURE");

      const p = ok(base[1], { type: "propose", ops });
      const pending = p.channel.inflight!.next.state;
      const bySomeoneElse = signUpdateAs(pair.mallory, pair.channelId, pending, pending.nonce);
      rejected(p.channel, receive({ type: "Countersign", channelId: pair.channelId, nonce: pending.nonce, signature: bySomeoneElse }), "BAD_SIGNATURE");
      const bySelf = signUpdateAs(pair.signers[1], pair.channelId, pending, pending.nonce);
      rejected(p.channel, receive({ type: "Countersign", channelId: pair.channelId, nonce: pending.nonce, signature: bySelf }), "BAD_SIGNATURE");
      rejected(
        p.channel,
        receive({
          type: "Countersign",
          channelId: pair.channelId,
          nonce: pending.nonce,
          signature: { revokedBelow: pending.nonce, signature: randomSignature(4) },
        }),
        "BAD_SIGNATURE",
      );
    });

    it("the right key's signature over a different state", function () {
      const ops = [pay(1n)];
      const state = nextState(base[2].latest.state, { sent1: base[2].latest.state.sent1 + 1n });
      const onOther = signUpdateAs(pair.signers[1], pair.channelId, { ...state, sent1: state.sent1 + 1n }, 1n);
      rejected(base[2], receive(forgedPropose(1, state, ops, { signature: onOther })), "BAD_SIGNATURE");
      // The proposer's genuine signature with its revokedBelow changed.
      const real = signUpdateAs(pair.signers[1], pair.channelId, state, 1n);
      rejected(base[2], receive(forgedPropose(1, state, ops, { signature: { ...real, revokedBelow: 2n } })), "BAD_SIGNATURE");

      const p = ok(base[1], { type: "propose", ops });
      const pending = p.channel.inflight!.next.state;
      const wrongState = signUpdateAs(pair.signers[2], pair.channelId, { ...pending, sent1: pending.sent1 + 1n }, pending.nonce);
      rejected(p.channel, receive({ type: "Countersign", channelId: pair.channelId, nonce: pending.nonce, signature: wrongState }), "BAD_SIGNATURE");
      // Agrees to the state but does not revoke the previous one.
      const noRevocation = signUpdateAs(pair.signers[2], pair.channelId, pending, pending.nonce - 1n);
      rejected(p.channel, receive({ type: "Countersign", channelId: pair.channelId, nonce: pending.nonce, signature: noRevocation }), "BAD_SIGNATURE");
      // Signed for another channel id.
      const digestElsewhere = signUpdateAs(pair.signers[2], PID(7), pending, pending.nonce);
      rejected(p.channel, receive({ type: "Countersign", channelId: pair.channelId, nonce: pending.nonce, signature: digestElsewhere }), "BAD_SIGNATURE");
    });

    it("a state that is not what its operations produce", function () {
      const s = base[2].latest.state;
      refused(base[2], receive(forgedPropose(1, nextState(s, { sent1: s.sent1 + 2n }), [pay(1n)])), "STATE_MISMATCH");
      refused(base[2], receive(forgedPropose(1, nextState(s, { sent2: s.sent2 + 1n }), [pay(1n)])), "STATE_MISMATCH");
      refused(base[2], receive(forgedPropose(1, nextState(s, { sent1: s.sent1 + 1n, locksRoot: ZERO_HASH }), [pay(1n)])), "STATE_MISMATCH");
      refused(base[2], receive(forgedPropose(1, nextState(s, {}), [pay(1n)])), "STATE_MISMATCH");
      refused(base[1], receive(forgedPropose(2, nextState(s, { sent1: s.sent1 + 1n }), [pay(1n)])), "STATE_MISMATCH");
      // Not signed by the partner: no nonce is burnt for it.
      rejected(base[2], receive(forgedPropose(1, nextState(s, {}), [pay(1n)], { signer: pair.mallory })), "BAD_SIGNATURE");
      // A state whose fields don't hash is refused before anything else is looked at.
      rejected(base[2], receive(forgedPropose(1, nextState(s, { sent1: -1n }), [pay(1n)], { signature: { revokedBelow: 2n, signature: randomSignature(8) } })), "STATE_MISMATCH");
    });

    it("amounts of zero or less", function () {
      for (const amount of [0n, -1n, -1000n]) {
        rejected(base[1], { type: "propose", ops: [pay(amount)] }, "BAD_AMOUNT");
        rejected(base[1], { type: "propose", ops: [lock(amount, 9)] }, "BAD_AMOUNT");
        rejected(base[1], { type: "propose", ops: [pay(5n), pay(amount)] }, "BAD_AMOUNT");
        refused(base[2], receive(forgedPropose(1, nextState(base[2].latest.state, {}), [pay(amount)])), "BAD_AMOUNT");
        refused(base[2], receive(forgedPropose(1, nextState(base[2].latest.state, {}), [lock(amount, 9)])), "BAD_AMOUNT");
      }
    });

    it("amounts above what the proposer has available", function () {
      // Side 1: 1000 - 100 locked - 50 paid = 850, side 2's lock is not its to spend.
      expect(balances(base[1]).availableMine).to.equal(850n);
      rejected(base[1], { type: "propose", ops: [pay(851n)] }, "INSUFFICIENT_BALANCE");
      rejected(base[1], { type: "propose", ops: [lock(851n, 9)] }, "INSUFFICIENT_BALANCE");
      rejected(base[1], { type: "propose", ops: [pay(800n), lock(51n, 9)] }, "INSUFFICIENT_BALANCE");
      rejected(base[1], { type: "propose", ops: [pay(1n << 300n)] }, "INSUFFICIENT_BALANCE");
      ok(base[1], { type: "propose", ops: [pay(800n), lock(50n, 9)] });
      const s = base[2].latest.state;
      refused(base[2], receive(forgedPropose(1, nextState(s, { sent1: s.sent1 + 851n }), [pay(851n)])), "INSUFFICIENT_BALANCE");
      refused(base[1], receive(forgedPropose(2, nextState(s, { sent2: s.sent2 + 951n }), [pay(951n)])), "INSUFFICIENT_BALANCE");
    });

    it("a lock expiry outside the policy's bounds", function () {
      const { minLockSeconds, maxLockSeconds } = pair.policy;
      rejected(base[1], { type: "propose", ops: [lock(1n, 9, T0 + minLockSeconds - 1n)] }, "LOCK_EXPIRY_OUT_OF_BOUNDS");
      rejected(base[1], { type: "propose", ops: [lock(1n, 9, T0)] }, "LOCK_EXPIRY_OUT_OF_BOUNDS");
      rejected(base[1], { type: "propose", ops: [lock(1n, 9, T0 - 1n)] }, "LOCK_EXPIRY_OUT_OF_BOUNDS");
      rejected(base[1], { type: "propose", ops: [lock(1n, 9, T0 + maxLockSeconds + 1n)] }, "LOCK_EXPIRY_OUT_OF_BOUNDS");
      ok(base[1], { type: "propose", ops: [lock(1n, 9, T0 + minLockSeconds)] });
      ok(base[1], { type: "propose", ops: [lock(1n, 9, T0 + maxLockSeconds)] });
      // The receiver checks against its own clock: a proposal that arrives too late is refused.
      const p = ok(base[1], { type: "propose", ops: [lock(1n, 9, T0 + minLockSeconds)] });
      refused(base[2], receive(messageOf(p.effects, "Propose")), "LOCK_EXPIRY_OUT_OF_BOUNDS", T0 + 1n);
    });

    it("a secret hash that is already locked", function () {
      rejected(base[1], { type: "propose", ops: [lock(1n, 1)] }, "DUPLICATE_SECRET_HASH");
      rejected(base[1], { type: "propose", ops: [lock(1n, 2)] }, "DUPLICATE_SECRET_HASH");
      rejected(base[1], { type: "propose", ops: [lock(1n, 9), lock(2n, 9)] }, "DUPLICATE_SECRET_HASH");
      const s = base[2].latest.state;
      const locks = [...base[2].latest.locks, { sender: 1 as const, amount: 1n, expiry: T0 + HOUR, secretHash: testSecret(2).hash }];
      const state = nextState(s, { locked1: s.locked1 + 1n, locksRoot: locksRoot(locks) });
      refused(base[2], receive(forgedPropose(1, state, [lock(1n, 2)])), "DUPLICATE_SECRET_HASH");
    });

    it("a secret hash that is not 32 bytes of lowercase hex", function () {
      // The same hash in capitals would slip past the duplicate check, and no unlock (which hashes
      // to lowercase) could ever find it.
      const upper = `0x${testSecret(9).hash.slice(2).toUpperCase()}` as Hex;
      const existing = `0x${testSecret(1).hash.slice(2).toUpperCase()}` as Hex;
      for (const secretHash of [upper, existing, "0x12" as Hex, `0x${"gg".repeat(32)}` as Hex, `${testSecret(9).hash}00` as Hex]) {
        const op: Op = { type: "lock", amount: 1n, expiry: T0 + HOUR, secretHash, paymentId: PID(1) };
        rejected(base[1], { type: "propose", ops: [op] }, "BAD_SECRET_HASH");
        refused(base[2], receive(forgedPropose(1, nextState(base[2].latest.state, {}), [op])), "BAD_SECRET_HASH");
      }
    });

    it("unlock with a wrong secret or after expiry; by either side", function () {
      // Side 2 receives side 1's lock (secret 1).
      rejected(base[2], { type: "propose", ops: [unlock(3)] }, "UNKNOWN_LOCK");
      rejected(base[2], { type: "propose", ops: [{ type: "unlock", secret: "0x1234" }] }, "WRONG_SECRET");
      rejected(base[2], { type: "propose", ops: [{ type: "unlock", secret: testSecret(1).hash }] }, "UNKNOWN_LOCK");
      // The sender settles its own lock once shown the secret: the same state as the receiver's claim.
      const bySenderOwn = ok(base[1], { type: "propose", ops: [unlock(1)] }, T0 + HOUR);
      const byReceiverOwn = ok(base[2], { type: "propose", ops: [unlock(1)] }, T0 + HOUR);
      expect(messageOf(bySenderOwn.effects, "Propose").state).to.deep.equal(messageOf(byReceiverOwn.effects, "Propose").state);
      rejected(base[1], { type: "propose", ops: [unlock(1)] }, "LOCK_EXPIRED", T0 + HOUR + 1n);
      ok(base[2], { type: "propose", ops: [unlock(2)] }, T0 + HOUR);
      rejected(base[2], { type: "propose", ops: [unlock(1)] }, "LOCK_EXPIRED", T0 + HOUR + 1n);
      ok(base[2], { type: "propose", ops: [unlock(1)] }, T0 + HOUR);
      rejected(base[2], { type: "propose", ops: [unlock(1), unlock(1)] }, "UNKNOWN_LOCK");
      // The same checks on the receiving side, against a correctly signed proposal.
      const s = base[1].latest.state;
      const settled = nextState(s, {
        locked1: s.locked1 - 100n,
        sent1: s.sent1 + 100n,
        locksRoot: locksRoot(base[1].latest.locks.filter((l) => l.secretHash !== testSecret(1).hash)),
      });
      const fromReceiver = forgedPropose(2, settled, [unlock(1)]);
      ok(base[1], receive(fromReceiver), T0 + HOUR);
      refused(base[1], receive(fromReceiver), "LOCK_EXPIRED", T0 + HOUR + 1n);
      const s2 = base[2].latest.state;
      const wrongSecret = forgedPropose(1, nextState(s2, {}), [unlock(5)]);
      refused(base[2], receive(wrongSecret), "UNKNOWN_LOCK");
      const bySender = forgedPropose(1, nextState(s2, {}), [unlock(1)]);
      refused(base[2], receive(bySender), "STATE_MISMATCH");
      const bySenderSettled = nextState(s2, {
        locked1: s2.locked1 - 100n,
        sent1: s2.sent1 + 100n,
        locksRoot: locksRoot(base[2].latest.locks.filter((l) => l.secretHash !== testSecret(1).hash)),
      });
      ok(base[2], receive(forgedPropose(1, bySenderSettled, [unlock(1)])), T0 + HOUR);
      refused(base[2], receive(forgedPropose(1, bySenderSettled, [unlock(1)])), "LOCK_EXPIRED", T0 + HOUR + 1n);
      refused(base[2], receive(forgedPropose(1, nextState(s2, {}), [{ type: "unlock", secret: "0x1234" }])), "WRONG_SECRET");
    });

    it("expire before the expiry, by the receiver, or of an unknown lock", function () {
      rejected(base[1], { type: "propose", ops: [expire(1)] }, "LOCK_NOT_EXPIRED");
      rejected(base[1], { type: "propose", ops: [expire(1)] }, "LOCK_NOT_EXPIRED", T0 + HOUR);
      rejected(base[2], { type: "propose", ops: [expire(1)] }, "NOT_LOCK_SENDER", T0 + HOUR + 1n);
      rejected(base[1], { type: "propose", ops: [expire(2)] }, "NOT_LOCK_SENDER", T0 + HOUR + 1n);
      rejected(base[1], { type: "propose", ops: [expire(7)] }, "UNKNOWN_LOCK", T0 + HOUR + 1n);
      ok(base[1], { type: "propose", ops: [expire(1)] }, T0 + HOUR + 1n);
      const s = base[2].latest.state;
      const early = forgedPropose(1, nextState(s, { locked1: 0n, locksRoot: locksRoot(base[2].latest.locks.slice(1)) }), [expire(1)]);
      refused(base[2], receive(early), "LOCK_NOT_EXPIRED", T0 + HOUR);
      ok(base[2], receive(early), T0 + HOUR + 1n);
      const byReceiver = forgedPropose(2, nextState(s, {}), [expire(1)]);
      refused(base[1], receive(byReceiver), "NOT_LOCK_SENDER", T0 + HOUR + 1n);
    });

    it("more locks than the policy allows", async function () {
      const small = await makePair({ policy: { ...pair.policy, maxLocks: 2 } });
      const ch = fresh(small);
      rejected(ch[1], { type: "propose", ops: [lock(1n, 1), lock(1n, 2), lock(1n, 3)] }, "TOO_MANY_LOCKS", T0, small);
      // Two pending, then a third from either side.
      const two = update(ch, 1, [lock(1n, 1), lock(1n, 2)], T0, small);
      rejected(two[1], { type: "propose", ops: [lock(1n, 3)] }, "TOO_MANY_LOCKS", T0, small);
      rejected(two[2], { type: "propose", ops: [lock(1n, 3)] }, "TOO_MANY_LOCKS", T0, small);
      const s = two[2].latest.state;
      const locks = [...two[2].latest.locks, { sender: 1 as const, amount: 1n, expiry: T0 + HOUR, secretHash: testSecret(3).hash }];
      const third = forgedPropose(1, nextState(s, { locked1: s.locked1 + 1n, locksRoot: locksRoot(locks) }), [lock(1n, 3)]);
      refused(two[2], receive(third), "TOO_MANY_LOCKS", T0, small);
      // Removing one in the same batch makes room.
      ok(two[1], { type: "propose", ops: [expire(1), lock(1n, 3, T0 + 2n * HOUR)] }, T0 + HOUR + 1n, small);
    });

    it("an update with no operations", function () {
      rejected(base[1], { type: "propose", ops: [] }, "NO_OPS");
      refused(base[2], receive(forgedPropose(1, nextState(base[2].latest.state, {}), [])), "NO_OPS");
    });

    it("a proposal while one is waiting", function () {
      const p = ok(base[1], { type: "propose", ops: [pay(1n)] });
      rejected(p.channel, { type: "propose", ops: [pay(1n)] }, "BUSY");
      rejected(p.channel, { type: "requestCooperativeClose" }, "BUSY");
    });
  });

  describe("concurrent proposals for the same nonce", function () {
    /** At nonce 1, both sides propose nonce 2. */
    function crossing() {
      const base = update(fresh(), 1, [pay(5n, 9)]);
      const p1 = ok(base[1], { type: "propose", ops: [pay(10n, 1)] });
      const p2 = ok(base[2], { type: "propose", ops: [pay(20n, 2)] });
      return { base, p1, p2, m1: messageOf(p1.effects, "Propose"), m2: messageOf(p2.effects, "Propose") };
    }

    it("each side refuses the other's and drops its own on the Reject; side 1 goes first, then side 2", function () {
      const { base, p1, p2, m1, m2 } = crossing();
      const n = base[1].latest.state.nonce;
      expect(m1.state.nonce).to.equal(n + 1n);
      expect(m2.state.nonce).to.equal(n + 1n);
      // Neither countersigns: each has already signed its own state with this nonce.
      const r1 = refused(p1.channel, receive(m2), "CONFLICT");
      const r2 = refused(p2.channel, receive(m1), "CONFLICT");
      expect(r1.channel.backoffUntil, "side 1 does not wait (it notes the second of the conflict)").to.equal(T0);
      expect(r2.channel.backoffUntil).to.equal(T0 + CONFLICT_BACKOFF_SECONDS);
      expect(r1.channel.inflight, "side 1 drops its own proposal at once").to.equal(null);
      expect(r2.channel.inflight, "side 2's waits for side 1's answer").to.deep.equal(p2.channel.inflight);
      rejected(r2.channel, { type: "propose", ops: [pay(1n)] }, "BUSY");
      // Each drops its own proposal on the partner's Reject.
      const d1 = dropsOnReject(r1.channel, r2.reject);
      const d2 = dropsOnReject(r2.channel, r1.reject);
      for (const c of [d1, d2]) {
        expect(c.burnt).to.equal(n + 1n);
        expect(c.latest).to.deep.equal(base[1].latest);
        expect(nextNonce(c)).to.equal(n + 2n);
      }
      // Side 2 yields until the backoff is over.
      rejected(d2, { type: "propose", ops: [pay(20n, 2)] }, "BUSY");
      rejected(d2, { type: "propose", ops: [pay(20n, 2)] }, "BUSY", T0 + CONFLICT_BACKOFF_SECONDS - 1n);
      ok(d2, { type: "propose", ops: [pay(20n, 2)] }, T0 + CONFLICT_BACKOFF_SECONDS);
      // A clock set back after the conflict (a restart with a corrected clock) does not stall it.
      ok(d2, { type: "propose", ops: [pay(20n, 2)] }, T0 - 500n);
      // Side 1 proposes again at once, above the burnt nonce; side 2 countersigns it.
      const again = ok(d1, { type: "propose", ops: [pay(10n, 1)] }, T0 + 1n);
      const m3 = messageOf(again.effects, "Propose");
      expect(m3.state).to.deep.equal(nextState(base[1].latest.state, { nonce: n + 2n, sent1: 15n }));
      expect(m3.signature.revokedBelow).to.equal(n);
      const q = ok(d2, receive(m3), T0 + 1n);
      const countersign = messageOf(q.effects, "Countersign");
      expect(countersign.signature.revokedBelow, "countersigning n+2 revokes everything below it").to.equal(n + 2n);
      expect(q.effects).to.deep.include({ type: "updated", nonce: n + 2n, proposer: 1, ops: [pay(10n, 1)] });
      expect(q.channel.backoffUntil, "accepting side 1's proposal ends the wait").to.equal(0n);
      const done = ok(again.channel, receive(countersign), T0 + 1n);
      let after: Chans = { 1: done.channel, 2: q.channel };
      expectAgreed(after, n + 2n);
      // Side 2 proposes its payment right away, on top of side 1's.
      after = update(after, 2, [pay(20n, 2)], T0 + 1n);
      expectAgreed(after, n + 3n);
      expect(after[1].latest.state).to.deep.include({ sent1: 15n, sent2: 20n });
      // Neither side holds a revocation of the other's newest state.
      for (const side of [1, 2] as const) {
        expect(after[otherSide(side)].partnerRevocation!.revokedBelow <= after[side].latest.state.nonce).to.equal(true);
      }
    });

    it("the order of arrival does not matter: side 2's proposal reaching side 1 first is refused too", function () {
      const ch = update(fresh(), 2, [pay(1n)]);
      const p1 = ok(ch[1], { type: "propose", ops: [pay(10n)] });
      const p2 = ok(ch[2], { type: "propose", ops: [lock(5n, 1)] });
      const r1 = refused(p1.channel, receive(messageOf(p2.effects, "Propose")), "CONFLICT", T0 + 1n);
      const r2 = refused(p2.channel, receive(messageOf(p1.effects, "Propose")), "CONFLICT", T0 + 3n);
      expect(r1.channel.backoffUntil).to.equal(T0 + 1n);
      expect(r2.channel.backoffUntil, "side 2 yields from when it saw the conflict").to.equal(T0 + 3n + CONFLICT_BACKOFF_SECONDS);
      const d2 = dropsOnReject(r2.channel, r1.reject, T0 + 3n);
      const d1 = dropsOnReject(r1.channel, r2.reject, T0 + 3n);
      expectAgreed(update({ 1: d1, 2: d2 }, 1, [pay(10n)], T0 + 3n), 3n);
    });

    it("no party signs two states with one nonce, however often the proposals arrive", function () {
      const { base, p1, p2, m1, m2 } = crossing();
      const n = base[1].latest.state.nonce;
      const r1 = refused(p1.channel, receive(m2), "CONFLICT");
      const r2 = refused(p2.channel, receive(m1), "CONFLICT");
      const d1 = dropsOnReject(r1.channel, r2.reject);
      const d2 = dropsOnReject(r2.channel, r1.reject);
      // Before and after the Rejects, a proposal arriving again is only answered with its Reject:
      // neither side countersigns the partner's state at the nonce of its own.
      for (const [c, m] of [
        [r1.channel, m2],
        [d1, m2],
        [r2.channel, m1],
        [d2, m1],
      ] as const) {
        const again = ok(c, receive(m), T0 + 1n);
        expect(again.channel).to.deep.equal(c);
        expect(again.effects).to.have.length(1);
        expect(messageOf(again.effects, "Reject")).to.deep.include({ channelId: pair.channelId, nonce: n + 1n, code: "CONFLICT" });
      }
      // A Reject of a proposal already dropped changes nothing.
      expect(ok(d1, receive(r2.reject)).channel).to.equal(d1);
      expect(ok(d2, receive(r1.reject)).channel).to.equal(d2);
      // Each party's signatures at n+1 are over its own state only; none is fully signed.
      for (const [side, c, m] of [
        [1, d1, m1],
        [2, d2, m2],
      ] as const) {
        expect(isUpdateSignatureBy(pair.backend, pair.channelId, hashState(m.state), m.signature, address(side))).to.equal(true);
        expect(c.latest.state.nonce).to.equal(n);
      }
    });

    it("side 1 in a second conflict within a second yields until the next second, so the two never loop", function () {
      const { p1, p2, m2 } = crossing();
      const r1 = refused(p1.channel, receive(m2), "CONFLICT");
      expect(r1.channel.backoffUntil).to.equal(T0);
      // Side 2 never saw side 1's proposals and proposes again above the burnt nonce, as does side 1.
      const again1 = ok(r1.channel, { type: "propose", ops: [pay(10n, 1)] });
      const d2 = dropsOnReject(p2.channel, r1.reject);
      const again2 = ok(d2, { type: "propose", ops: [pay(20n, 2)] });
      const second = refused(again1.channel, receive(messageOf(again2.effects, "Propose")), "CONFLICT");
      expect(second.channel.backoffUntil).to.equal(T0 + 1n);
      rejected(second.channel, { type: "propose", ops: [pay(10n, 1)] }, "BUSY");
      ok(second.channel, { type: "propose", ops: [pay(10n, 1)] }, T0 + 1n);
    });

    // (Side 1 is never stuck so: it drops its own proposal as soon as it sees the conflict.)
    for (const stuck of [2] as const) {
      it(`side ${stuck}, whose Reject was lost, drops its proposal when the partner proposes above it`, function () {
        const { base, p1, p2, m1, m2 } = crossing();
        const n = base[1].latest.state.nonce;
        const r1 = refused(p1.channel, receive(m2), "CONFLICT");
        const r2 = refused(p2.channel, receive(m1), "CONFLICT");
        const refusedHere: Record<Side, ChannelData> = { 1: r1.channel, 2: r2.channel };
        const rejectOfOwn: Record<Side, RejectMessage> = { 1: r2.reject, 2: r1.reject };
        const mover = otherSide(stuck);
        const now = T0 + CONFLICT_BACKOFF_SECONDS;
        const moved = dropsOnReject(refusedHere[mover], rejectOfOwn[mover], now);
        const p = ok(moved, { type: "propose", ops: [pay(30n, 3)] }, now);
        const m = messageOf(p.effects, "Propose");
        expect(m.state.nonce).to.equal(n + 2n);
        const waiting = refusedHere[stuck];
        const ownOps = waiting.inflight!.ops;
        expect(waiting.inflight!.next.state.nonce).to.equal(n + 1n);
        rejected(waiting, { type: "propose", ops: [pay(1n)] }, "BUSY", now);
        // The partner signed n+2, so it will never sign n+1: the waiting proposal goes, n+2 is signed.
        const q = ok(waiting, receive(m), now);
        expect(q.effects.map((e) => e.type)).to.deep.equal(["proposalRejected", "send", "updated"]);
        const dropped = q.effects[0]!;
        if (dropped.type !== "proposalRejected") return expect.fail("expected proposalRejected");
        expect(dropped.ops).to.deep.equal(ownOps);
        expect(dropped.error.code).to.equal("CONFLICT");
        const countersign = messageOf(q.effects, "Countersign");
        expect(countersign.signature.revokedBelow).to.equal(n + 2n);
        expect(q.channel.inflight).to.equal(null);
        expect(q.channel.backoffUntil).to.equal(0n);
        const done = ok(p.channel, receive(countersign), now);
        let after = { [mover]: done.channel, [stuck]: q.channel } as unknown as Chans;
        expectAgreed(after, n + 2n);
        // The lost Reject, arriving late after all, changes nothing.
        rejected(q.channel, receive(rejectOfOwn[stuck]), "UNEXPECTED_MESSAGE", now);
        // The dropped operations are proposed again, above.
        after = update(after, stuck, ownOps, now);
        expectAgreed(after, n + 3n);
        // Side 1's 30, then side 2's own 20.
        expect(after[1].latest.state).to.deep.include({ sent1: 35n, sent2: 20n });
      });
    }

    it("a proposal above the waiting one that is itself invalid is refused, and the waiting one still goes", function () {
      const { p1, p2, m1, m2 } = crossing();
      const r1 = refused(p1.channel, receive(m2), "CONFLICT");
      const r2 = refused(p2.channel, receive(m1), "CONFLICT");
      // Side 1's Reject of side 2's proposal is lost; side 1 proposes more than it has.
      const d1 = dropsOnReject(r1.channel, r2.reject);
      const s = d1.latest.state;
      const tooMuch = forgedPropose(1, nextState(s, { nonce: s.nonce + 2n, sent1: s.sent1 + 996n }), [pay(996n)]);
      const r = run(r2.channel, receive(tooMuch));
      if (!r.ok) return expect.fail(`refused with ${r.error.code}`);
      expect(r.effects.map((e) => e.type)).to.deep.equal(["proposalRejected", "send"]);
      expect(r.effects[0]).to.deep.include({ type: "proposalRejected", ops: [pay(20n, 2)] });
      expect(messageOf(r.effects, "Reject")).to.deep.include({ nonce: s.nonce + 2n, code: "INSUFFICIENT_BALANCE" });
      expect(r.channel).to.deep.equal({ ...r2.channel, inflight: null, burnt: s.nonce + 2n });
    });
  });

  describe("refused proposals", function () {
    const reject = (nonce: bigint, code: ChannelErrorCode = "INSUFFICIENT_BALANCE"): RejectMessage => ({
      type: "Reject",
      channelId: pair.channelId,
      nonce,
      code,
      reason: "refused",
    });

    it("unblock their proposer, which proposes again above the burnt nonce", function () {
      const ch = update(fresh(), 2, [pay(7n)]);
      const p = ok(ch[1], { type: "propose", ops: [lock(10n, 1, T0 + pair.policy.minLockSeconds)] });
      const m = messageOf(p.effects, "Propose");
      expect(m.state.nonce).to.equal(2n);
      rejected(p.channel, { type: "propose", ops: [pay(1n)] }, "BUSY");
      // It arrives a second late: the lock's expiry is now too close for side 2.
      const r = refused(ch[2], receive(m), "LOCK_EXPIRY_OUT_OF_BOUNDS", T0 + 1n);
      expect(r.channel.backoffUntil, "only a conflict makes side 2 wait").to.equal(0n);
      const d = dropsOnReject(p.channel, r.reject, T0 + 1n);
      expect(d.latest).to.deep.equal(ch[1].latest);
      expect(d.burnt).to.equal(2n);
      expect(nextNonce(d)).to.equal(3n);
      expect(nextNonce(r.channel)).to.equal(3n);
      // Both keep the burnt nonce across a restart.
      expect(restored(d)).to.deep.equal(d);
      expect(restored(r.channel)).to.deep.equal(r.channel);
      // The proposer is free again; its next proposal skips the burnt nonce and the partner signs it.
      const again = ok(restored(d), { type: "propose", ops: [lock(10n, 1, T0 + HOUR)] }, T0 + 1n);
      const m2 = messageOf(again.effects, "Propose");
      expect(m2.state).to.deep.include({ nonce: 3n, sent2: 7n, locked1: 10n });
      expect(m2.signature.revokedBelow).to.equal(1n);
      const q = ok(restored(r.channel), receive(m2), T0 + 1n);
      const countersign = messageOf(q.effects, "Countersign");
      expect(countersign.signature.revokedBelow).to.equal(3n);
      const done = ok(again.channel, receive(countersign), T0 + 1n);
      const after: Chans = { 1: done.channel, 2: q.channel };
      expectAgreed(after, 3n);
      expect(after[1].partnerRevocation?.revokedBelow).to.equal(3n);
      expectAgreed(update(after, 2, [pay(1n)], T0 + 1n), 4n);
    });

    it("a proposal sent again after its Reject was lost is answered with the Reject again", function () {
      const ch = fresh();
      const p = ok(ch[1], { type: "propose", ops: [lock(10n, 1, T0 + pair.policy.minLockSeconds)] });
      const m = messageOf(p.effects, "Propose");
      const r = refused(ch[2], receive(m), "LOCK_EXPIRY_OUT_OF_BOUNDS", T0 + 1n);
      // The Reject is lost: the proposer can neither update nor close; it sends its proposal again.
      rejected(p.channel, { type: "propose", ops: [pay(1n)] }, "BUSY", T0 + 10n);
      rejected(p.channel, { type: "requestCooperativeClose" }, "BUSY", T0 + 10n);
      const again = ok(r.channel, receive(m), T0 + 10n);
      expect(again.channel, "nothing changes, nothing is signed").to.deep.equal(r.channel);
      expect(again.effects).to.have.length(1);
      const answer = messageOf(again.effects, "Reject");
      expect(answer).to.deep.include({ channelId: pair.channelId, nonce: 1n, code: "CONFLICT" });
      expect(answer.reason).to.be.a("string").and.not.empty;
      // Only the partner's own signature on a burnt nonce is answered; other nonces are still wrong.
      rejected(r.channel, receive(forgedPropose(1, m.state, m.ops, { signer: pair.mallory })), "BAD_SIGNATURE");
      rejected(r.channel, receive({ ...m, state: { ...m.state, locked1: m.state.locked1 + 1n } }), "BAD_SIGNATURE");
      rejected(r.channel, receive(forgedPropose(1, { ...m.state, nonce: 3n }, m.ops)), "BAD_NONCE");
      rejected(r.channel, receive(forgedPropose(1, { ...m.state, nonce: 0n }, m.ops, { revokedBelow: 0n })), "BAD_NONCE");
      // The proposer drops it, and proposes again above the burnt nonce.
      const d = dropsOnReject(p.channel, answer, T0 + 10n);
      const after = update({ 1: d, 2: r.channel }, 1, [lock(10n, 1, T0 + HOUR)], T0 + 10n);
      expectAgreed(after, 2n);
      // Late copies of either Reject, and the old proposal below the newest state, change nothing.
      rejected(after[1], receive(r.reject), "UNEXPECTED_MESSAGE");
      rejected(after[1], receive(answer), "UNEXPECTED_MESSAGE");
      rejected(after[2], receive(m), "BAD_NONCE");
    });

    it("a Reject of no waiting proposal changes nothing", function () {
      const ch = update(fresh(), 1, [pay(1n)]);
      const p = ok(ch[2], { type: "propose", ops: [pay(2n)] });
      const nonce = p.channel.inflight!.next.state.nonce;
      for (const n of [0n, 1n, nonce + 1n, 100n]) rejected(p.channel, receive(reject(n)), "UNEXPECTED_MESSAGE");
      rejected(ch[2], receive(reject(nonce)), "UNEXPECTED_MESSAGE");
      rejected(p.channel, receive({ ...reject(nonce), nonce: Number(nonce) as unknown as bigint }), "UNEXPECTED_MESSAGE");
      const otherId = makeChannelId(DOMAIN.chainId, DOMAIN.verifyingContract, pair.configs[1].participant1, pair.configs[1].participant2, 2);
      rejected(p.channel, receive({ ...reject(nonce), channelId: otherId }), "WRONG_CHANNEL");
      // Once countersigned, a Reject of that nonce has nothing to drop.
      const q = ok(ch[1], receive(messageOf(p.effects, "Propose")));
      const done = ok(p.channel, receive(messageOf(q.effects, "Countersign")));
      rejected(done.channel, receive(reject(nonce)), "UNEXPECTED_MESSAGE");
      // A matching one drops the proposal once; a duplicate then changes nothing.
      const d = dropsOnReject(p.channel, reject(nonce));
      const dup = ok(d, receive(reject(nonce)));
      expect(dup.channel).to.equal(d);
      expect(dup.effects).to.deep.equal([]);
      // Closed on chain: nothing waits any more.
      rejected(ok(p.channel, { type: "closedOnChain" }).channel, receive(reject(nonce)), "UNEXPECTED_MESSAGE");
    });

    it("a Reject's code and reason are taken with care", function () {
      const p = ok(pair.initial[1], { type: "propose", ops: [pay(2n)] });
      const long = ok(p.channel, receive({ ...reject(1n, "NOT_OPEN"), reason: "x".repeat(10_000) }));
      const e = long.effects[0]!;
      if (e.type !== "proposalRejected") return expect.fail("expected proposalRejected");
      expect(e.error.code).to.equal("NOT_OPEN");
      expect(e.error.message.length).to.be.below(600);
      const odd = ok(p.channel, receive({ ...reject(1n), code: 7 as unknown as ChannelErrorCode, reason: null as unknown as string }));
      expect(odd.effects).to.deep.equal([
        { type: "proposalRejected", ops: [pay(2n)], error: { code: "STATE_MISMATCH", message: "the partner refused: " } },
      ]);
      expect(odd.channel).to.deep.equal(long.channel);
    });
  });

  describe("revocation", function () {
    it("an explicit Revoke revokes the state before the newest, once", function () {
      const ch = update(fresh(), 1, [pay(100n)]);
      expect(ch[1].myRevokedBelow).to.equal(0n);
      const r = ok(ch[1], { type: "revoke" });
      const m = messageOf(r.effects, "Revoke");
      expect(m.nonce).to.equal(1n);
      expect(m.signature.revokedBelow).to.equal(1n);
      expect(isUpdateSignatureBy(pair.backend, pair.channelId, hashState(ch[1].latest.state), m.signature, address(1))).to.equal(true);
      expect(r.channel.myRevokedBelow).to.equal(1n);
      expect(r.channel.latest).to.deep.equal(ch[1].latest);

      const q = ok(ch[2], receive(m));
      expect(q.effects).to.deep.equal([]);
      expect(q.channel.partnerRevocation).to.deep.equal({ revokedBelow: 1n, stateHash: hashState(ch[1].latest.state), signature: m.signature.signature });
      // Nothing more to revoke, on either side; a repeated Revoke changes nothing.
      const again = ok(r.channel, { type: "revoke" });
      expect(again.effects).to.deep.equal([]);
      expect(again.channel).to.deep.equal(r.channel);
      const countersigner = ok(ch[2], { type: "revoke" });
      expect(countersigner.effects).to.deep.equal([]);
      const dup = ok(q.channel, receive(m));
      expect(dup.channel).to.deep.equal(q.channel);
      // The next proposal keeps revoking below 1, never more than the fully signed newest state.
      const next = ok(r.channel, { type: "propose", ops: [pay(1n)] });
      expect(messageOf(next.effects, "Propose").signature.revokedBelow).to.equal(1n);
    });

    it("nothing to revoke at nonce 0", function () {
      const r = ok(pair.initial[1], { type: "revoke" });
      expect(r.effects).to.deep.equal([]);
      expect(r.channel).to.deep.equal(pair.initial[1]);
    });

    it("a stale Revoke is ignored; a forged one is refused", function () {
      const ch1 = update(fresh(), 1, [pay(100n)]);
      const r = ok(ch1[1], { type: "revoke" });
      const m = messageOf(r.effects, "Revoke");
      const ch2 = update({ 1: r.channel, 2: ch1[2] }, 2, [pay(1n)]);
      const stale = ok(ch2[2], receive(m));
      expect(stale.effects).to.deep.equal([]);
      expect(stale.channel).to.deep.equal(ch2[2]);
      const latest = ch2[2].latest.state;
      const random = { revokedBelow: latest.nonce, signature: randomSignature(5) };
      rejected(ch2[2], receive({ type: "Revoke", channelId: pair.channelId, nonce: latest.nonce, signature: random }), "BAD_SIGNATURE");
      const byMallory = signUpdateAs(pair.mallory, pair.channelId, latest, latest.nonce);
      rejected(ch2[2], receive({ type: "Revoke", channelId: pair.channelId, nonce: latest.nonce, signature: byMallory }), "BAD_SIGNATURE");
      const onOtherState = signUpdateAs(pair.signers[1], pair.channelId, ch1[1].latest.state, latest.nonce);
      rejected(ch2[2], receive({ type: "Revoke", channelId: pair.channelId, nonce: latest.nonce, signature: onOtherState }), "BAD_SIGNATURE");
    });
  });

  describe("withdraw while open", function () {
    const EXPIRY = T0 + 600n;

    function requestAndConfirm(ch: Chans, side: Side, amount: bigint, expiry = EXPIRY) {
      const q = otherSide(side);
      const r = ok(ch[side], { type: "requestWithdraw", amount, expiry });
      const request = messageOf(r.effects, "WithdrawRequest");
      const c = ok(ch[q], receive(request));
      const confirm = messageOf(c.effects, "WithdrawConfirm");
      const done = ok(r.channel, receive(confirm));
      return { chans: { [side]: done.channel, [q]: c.channel } as unknown as Chans, request, confirm, done, r };
    }

    it("request, confirm: both signatures on the request, ready to submit", function () {
      const { chans, request, confirm, done } = requestAndConfirm(fresh(), 1, 300n);
      expect(request.request).to.deep.equal({ channelId: pair.channelId, participant: address(1), totalWithdraw: 300n, expiry: EXPIRY });
      const digest = withdrawDigestBytes(DOMAIN, request.request);
      expect(pair.backend.verifier.recoverAddress(digest, hexToBytes(request.signature))).to.equal(address(1));
      expect(pair.backend.verifier.recoverAddress(digest, hexToBytes(confirm.signature))).to.equal(address(2));
      const ready = done.effects.find((e) => e.type === "withdrawReady");
      expect(ready).to.deep.equal({
        type: "withdrawReady",
        withdraw: { side: 1, request: request.request, sig1: request.signature, sig2: confirm.signature },
      });
      expect(chans[1].withdraws).to.deep.equal(chans[2].withdraws);
    });

    it("a pending withdrawal reduces what can be paid, on both sides", function () {
      const { chans } = requestAndConfirm(fresh(), 1, 700n);
      expect(balances(chans[1])).to.deep.include({ mine: 1000n, availableMine: 300n });
      expect(available(chans[2], 1)).to.equal(300n);
      rejected(chans[1], { type: "propose", ops: [pay(301n)] }, "INSUFFICIENT_BALANCE");
      rejected(chans[1], { type: "requestWithdraw", amount: 1n, expiry: EXPIRY }, "WITHDRAW_PENDING");
      const s = chans[2].latest.state;
      refused(chans[2], receive(forgedPropose(1, nextState(s, { sent1: 301n }), [pay(301n)])), "INSUFFICIENT_BALANCE");
      const after = update(chans, 1, [pay(300n)]);
      expect(balances(after[1]).availableMine).to.equal(0n);
      // The partner may still withdraw its own share.
      const theirs = requestAndConfirm(after, 2, 1300n);
      expect(balances(theirs.chans[2]).availableMine).to.equal(0n);
    });

    it("a withdrawal that expired unexecuted is released only after the margin", function () {
      const { chans } = requestAndConfirm(fresh(), 1, 700n);
      const margin = pair.policy.withdrawExpiryMargin;
      for (const side of [1, 2] as const) {
        const still = ok(chans[side], { type: "tick" }, EXPIRY + margin);
        expect(still.channel).to.deep.equal(chans[side]);
        const gone = ok(chans[side], { type: "tick" }, EXPIRY + margin + 1n);
        expect(gone.channel.withdraws).to.deep.equal([]);
        expect(available(gone.channel, 1)).to.equal(1000n);
      }
    });

    it("the executed withdrawal, once seen on chain, clears the pending one", function () {
      const { chans } = requestAndConfirm(fresh(), 2, 400n);
      const executed: Funding = { ...pair.funding, withdrawn2: 400n };
      for (const side of [1, 2] as const) {
        const f = ok(chans[side], { type: "fundingChanged", funding: executed });
        expect(f.channel.withdraws).to.deep.equal([]);
        expect(f.channel.funding).to.deep.equal(executed);
        expect(available(f.channel, 2)).to.equal(600n);
        expect(share(f.channel.funding, f.channel.latest.state, 2)).to.equal(600n);
        expect(capacity(f.channel.funding)).to.equal(1600n);
      }
      // A later withdrawal counts from the new on-chain total.
      const f2 = ok(chans[2], { type: "fundingChanged", funding: executed });
      const again = ok(f2.channel, { type: "requestWithdraw", amount: 100n, expiry: EXPIRY });
      expect(messageOf(again.effects, "WithdrawRequest").request.totalWithdraw).to.equal(500n);
    });

    it("a proposal in flight counts against the withdrawable amount", function () {
      const ch = fresh();
      const p = ok(ch[1], { type: "propose", ops: [pay(600n)] });
      rejected(p.channel, { type: "requestWithdraw", amount: 401n, expiry: EXPIRY }, "INSUFFICIENT_BALANCE");
      ok(p.channel, { type: "requestWithdraw", amount: 400n, expiry: EXPIRY });
    });

    it("bad requests are refused by the requester", function () {
      const c = pair.initial[1];
      rejected(c, { type: "requestWithdraw", amount: 0n, expiry: EXPIRY }, "BAD_AMOUNT");
      rejected(c, { type: "requestWithdraw", amount: -5n, expiry: EXPIRY }, "BAD_AMOUNT");
      rejected(c, { type: "requestWithdraw", amount: 1001n, expiry: EXPIRY }, "INSUFFICIENT_BALANCE");
      rejected(c, { type: "requestWithdraw", amount: 1n, expiry: T0 }, "BAD_EXPIRY");
      rejected(c, { type: "requestWithdraw", amount: 1n, expiry: T0 + pair.policy.maxWithdrawSeconds + 1n }, "BAD_EXPIRY");
      ok(c, { type: "requestWithdraw", amount: 1000n, expiry: T0 + pair.policy.maxWithdrawSeconds });
    });

    it("bad requests and confirmations are refused by the partner", function () {
      const c2 = pair.initial[2];
      const good = withdrawOf(1, 300n);
      const sign = (w: WithdrawRequest, signer = pair.signers[1]) => bytesToHex(signer.signDigest(withdrawDigestBytes(DOMAIN, w)));
      const msg = (w: WithdrawRequest, signature = sign(w)): ChannelMessage => ({
        type: "WithdrawRequest",
        channelId: pair.channelId,
        request: w,
        signature,
      });
      rejected(c2, receive(msg({ ...good, participant: address(2) })), "WRONG_CHANNEL");
      rejected(c2, receive(msg({ ...good, channelId: PID(9) })), "WRONG_CHANNEL");
      rejected(c2, receive(msg({ ...good, expiry: T0 })), "BAD_EXPIRY");
      rejected(c2, receive(msg({ ...good, totalWithdraw: 0n })), "BAD_AMOUNT");
      rejected(c2, receive(msg({ ...good, totalWithdraw: 1001n })), "INSUFFICIENT_BALANCE");
      rejected(c2, receive(msg(good, sign(good, pair.mallory))), "BAD_SIGNATURE");
      rejected(c2, receive(msg(good, sign({ ...good, totalWithdraw: 299n }))), "BAD_SIGNATURE");
      rejected(c2, receive(msg(good, randomSignature(6))), "BAD_SIGNATURE");
      const accepted = ok(c2, receive(msg(good)));
      rejected(accepted.channel, receive(msg({ ...good, totalWithdraw: 100n })), "WITHDRAW_PENDING");
      rejected(accepted.channel, receive(msg(good)), "WITHDRAW_PENDING");

      const r = ok(pair.initial[1], { type: "requestWithdraw", amount: 300n, expiry: EXPIRY });
      const req = messageOf(r.effects, "WithdrawRequest").request;
      const confirm = (w: WithdrawRequest, signer = pair.signers[2]): ChannelMessage => ({
        type: "WithdrawConfirm",
        channelId: pair.channelId,
        request: w,
        signature: bytesToHex(signer.signDigest(withdrawDigestBytes(DOMAIN, w))),
      });
      rejected(r.channel, receive(confirm(req, pair.mallory)), "BAD_SIGNATURE");
      rejected(r.channel, receive(confirm(req, pair.signers[1])), "BAD_SIGNATURE");
      rejected(r.channel, receive(confirm({ ...req, totalWithdraw: 301n })), "UNEXPECTED_MESSAGE");
      rejected(pair.initial[1], receive(confirm(req)), "UNEXPECTED_MESSAGE");
    });
  });

  describe("cooperative close", function () {
    function closeBoth(ch: Chans, requester: Side) {
      const q = otherSide(requester);
      const r = ok(ch[requester], { type: "requestCooperativeClose" });
      const request = messageOf(r.effects, "CloseRequest");
      const c = ok(ch[q], receive(request));
      const confirm = messageOf(c.effects, "CloseConfirm");
      const done = ok(r.channel, receive(confirm));
      return { r, c, done, request, confirm };
    }

    it("both sign the newest balances; then no update is accepted", function () {
      const ch = update(fresh(), 1, [pay(250n)]);
      const { r, c, done, request, confirm } = closeBoth(ch, 2);
      const terms = { channelId: pair.channelId, balance1: 750n, balance2: 1250n };
      expect(request.terms).to.deep.equal(terms);
      const digest = cooperativeCloseDigestBytes(DOMAIN, terms);
      expect(pair.backend.verifier.recoverAddress(digest, hexToBytes(request.signature))).to.equal(address(2));
      expect(pair.backend.verifier.recoverAddress(digest, hexToBytes(confirm.signature))).to.equal(address(1));
      const ready = { type: "cooperativeCloseReady", terms, sig1: confirm.signature, sig2: request.signature };
      expect(c.effects).to.deep.include(ready);
      expect(done.effects).to.deep.equal([ready]);
      for (const closing of [r.channel, c.channel, done.channel]) {
        expect(closing.status).to.equal("closing");
        rejected(closing, { type: "propose", ops: [pay(1n)] }, "NOT_OPEN");
        rejected(closing, { type: "requestWithdraw", amount: 1n, expiry: T0 + 60n }, "NOT_OPEN");
        rejected(closing, { type: "requestCooperativeClose" }, "NOT_OPEN");
      }
      // A proposal made before the partner saw the close is refused by the closing side.
      refused(r.channel, receive(forgedPropose(1, nextState(ch[2].latest.state, { sent1: 251n }), [pay(1n)])), "NOT_OPEN");
      refused(c.channel, receive(forgedPropose(2, nextState(ch[1].latest.state, { sent2: 1n }), [pay(1n)])), "NOT_OPEN");
      refused(done.channel, receive(forgedPropose(1, nextState(ch[2].latest.state, { sent1: 251n }), [pay(1n)])), "NOT_OPEN");
      // A repeated confirmation is harmless.
      const again = ok(done.channel, receive(confirm));
      expect(again.channel).to.deep.equal(done.channel);
    });

    it("is refused with pending locks, a proposal in flight or a pending withdrawal", function () {
      const locked = update(fresh(), 1, [lock(10n, 1)]);
      rejected(locked[1], { type: "requestCooperativeClose" }, "LOCKS_PENDING");
      rejected(locked[2], { type: "requestCooperativeClose" }, "LOCKS_PENDING");

      const ch = fresh();
      const terms = { channelId: pair.channelId, balance1: 1000n, balance2: 1000n };
      const closeRequest: ChannelMessage = {
        type: "CloseRequest",
        channelId: pair.channelId,
        terms,
        signature: bytesToHex(pair.signers[1].signDigest(cooperativeCloseDigestBytes(DOMAIN, terms))),
      };
      const inflight = ok(ch[2], { type: "propose", ops: [pay(1n)] });
      rejected(inflight.channel, { type: "requestCooperativeClose" }, "BUSY");
      rejected(inflight.channel, receive(closeRequest), "BUSY");

      const w = ok(ch[2], { type: "requestWithdraw", amount: 1n, expiry: T0 + 60n });
      rejected(w.channel, { type: "requestCooperativeClose" }, "WITHDRAW_PENDING");
      rejected(w.channel, receive(closeRequest), "WITHDRAW_PENDING");

      const lockedTerms = { channelId: pair.channelId, balance1: 990n, balance2: 1000n };
      const lockedRequest: ChannelMessage = {
        type: "CloseRequest",
        channelId: pair.channelId,
        terms: lockedTerms,
        signature: bytesToHex(pair.signers[1].signDigest(cooperativeCloseDigestBytes(DOMAIN, lockedTerms))),
      };
      rejected(locked[2], receive(lockedRequest), "LOCKS_PENDING");
      ok(ch[2], receive(closeRequest));
    });

    it("refuses terms that differ from the newest state, or signed by someone else", function () {
      const ch = update(fresh(), 1, [pay(250n)]);
      const sign = (terms: { channelId: Hex; balance1: bigint; balance2: bigint }, signer = pair.signers[1]) => ({
        type: "CloseRequest" as const,
        channelId: pair.channelId,
        terms,
        signature: bytesToHex(signer.signDigest(cooperativeCloseDigestBytes(DOMAIN, terms))),
      });
      rejected(ch[2], receive(sign({ channelId: pair.channelId, balance1: 1000n, balance2: 1000n })), "STATE_MISMATCH");
      rejected(ch[2], receive(sign({ channelId: pair.channelId, balance1: 751n, balance2: 1249n })), "STATE_MISMATCH");
      rejected(ch[2], receive(sign({ channelId: PID(5), balance1: 750n, balance2: 1250n })), "STATE_MISMATCH");
      rejected(ch[2], receive(sign({ channelId: pair.channelId, balance1: 750n, balance2: 1250n }, pair.mallory)), "BAD_SIGNATURE");
      rejected(ch[2], receive(sign({ channelId: pair.channelId, balance1: 750n, balance2: 1250n }, pair.signers[2])), "BAD_SIGNATURE");
      const r = ok(ch[1], { type: "requestCooperativeClose" });
      const terms = messageOf(r.effects, "CloseRequest").terms;
      const confirm = (t: typeof terms, signer = pair.signers[2]): ChannelMessage => ({
        type: "CloseConfirm",
        channelId: pair.channelId,
        terms: t,
        signature: bytesToHex(signer.signDigest(cooperativeCloseDigestBytes(DOMAIN, t))),
      });
      rejected(r.channel, receive(confirm(terms, pair.mallory)), "BAD_SIGNATURE");
      rejected(r.channel, receive(confirm({ ...terms, balance1: 1n })), "UNEXPECTED_MESSAGE");
      rejected(ch[1], receive(confirm(terms)), "UNEXPECTED_MESSAGE");
    });

    it("completes when both sides ask at the same time", function () {
      const ch = update(fresh(), 1, [pay(1n)]);
      const r1 = ok(ch[1], { type: "requestCooperativeClose" });
      const r2 = ok(ch[2], { type: "requestCooperativeClose" });
      const m1 = messageOf(r1.effects, "CloseRequest");
      const m2 = messageOf(r2.effects, "CloseRequest");
      expect(m1.terms).to.deep.equal(m2.terms);
      const a = ok(r1.channel, receive(m2));
      const b = ok(r2.channel, receive(m1));
      const ready = { type: "cooperativeCloseReady", terms: m1.terms, sig1: m1.signature, sig2: m2.signature };
      expect(a.effects).to.deep.include(ready);
      expect(b.effects).to.deep.include(ready);
      expect(a.channel.closeTerms).to.deep.equal({ terms: m1.terms, sig1: m1.signature, sig2: m2.signature, sentAt: T0 });
      expect(b.channel.closeTerms).to.deep.equal(a.channel.closeTerms);
      // ... but only with the partner's own signature on the same terms.
      const forged = { ...m2, signature: bytesToHex(pair.mallory.signDigest(cooperativeCloseDigestBytes(DOMAIN, m2.terms))) };
      rejected(r1.channel, receive(forged), "BAD_SIGNATURE");
      const otherTerms = { ...m2.terms, balance1: m2.terms.balance1 - 1n, balance2: m2.terms.balance2 + 1n };
      const different = { ...m2, terms: otherTerms, signature: bytesToHex(pair.signers[2].signDigest(cooperativeCloseDigestBytes(DOMAIN, otherTerms))) };
      rejected(r1.channel, receive(different), "UNEXPECTED_MESSAGE");
      // Once complete, a repeated request changes nothing and is answered with this side's signature.
      const again = ok(a.channel, receive(m2));
      expect(again.channel).to.equal(a.channel);
      expect(again.effects).to.deep.equal([{ type: "send", message: { type: "CloseConfirm", channelId: m1.terms.channelId, terms: m1.terms, signature: m1.signature } }]);
      rejected(a.channel, receive(forged), "BAD_SIGNATURE");
    });

    it("completes when both sides ask at the same time and one request is lost", function () {
      const ch = update(fresh(), 1, [pay(1n)]);
      const r1 = ok(ch[1], { type: "requestCooperativeClose" });
      const r2 = ok(ch[2], { type: "requestCooperativeClose" });
      const m2 = messageOf(r2.effects, "CloseRequest");
      // Side 1's request never arrives; side 2's completes side 1, which side 2 cannot know.
      const a = ok(r1.channel, receive(m2));
      expect(a.channel.closeTerms?.sig1 && a.channel.closeTerms.sig2).to.be.a("string");
      // Side 2 asks again; side 1's answer completes side 2.
      const t = ok(r2.channel, { type: "tick" }, T0 + CLOSE_RESEND_SECONDS);
      const resent = messageOf(t.effects, "CloseRequest");
      const answer = messageOf(ok(a.channel, receive(resent)).effects, "CloseConfirm");
      const b = ok(t.channel, receive(answer));
      expect(b.effects).to.deep.include({ type: "cooperativeCloseReady", terms: m2.terms, sig1: a.channel.closeTerms!.sig1, sig2: a.channel.closeTerms!.sig2 });
    });

    it("a close request crossing a proposal: the proposal is refused, the request asked again succeeds", function () {
      const ch = update(fresh(), 1, [pay(100n)]);
      const p = ok(ch[1], { type: "propose", ops: [pay(5n)] });
      const propose = messageOf(p.effects, "Propose");
      const c = ok(ch[2], { type: "requestCooperativeClose" });
      const request = messageOf(c.effects, "CloseRequest");
      const terms = { channelId: pair.channelId, balance1: 900n, balance2: 1100n };
      expect(request.terms).to.deep.equal(terms);
      expect(c.channel.closeTerms).to.deep.equal({ terms, sig1: null, sig2: request.signature, sentAt: T0 });
      // Each receives the other's message: the closing side refuses the proposal, the proposer is busy.
      const r = refused(c.channel, receive(propose), "NOT_OPEN", T0 + 1n);
      rejected(p.channel, receive(request), "BUSY", T0 + 1n);
      const d = dropsOnReject(p.channel, r.reject, T0 + 1n);
      // Not asked again before its time ...
      const early = ok(r.channel, { type: "tick" }, T0 + CLOSE_RESEND_SECONDS - 1n);
      expect(early.effects).to.deep.equal([]);
      expect(early.channel).to.deep.equal(r.channel);
      // ... then asked again, and confirmed by the now idle proposer.
      const t = T0 + CLOSE_RESEND_SECONDS;
      const resent = ok(r.channel, { type: "tick" }, t);
      expect(resent.effects).to.deep.equal([{ type: "send", message: request }]);
      expect(resent.channel).to.deep.equal({ ...r.channel, closeTerms: { ...r.channel.closeTerms!, sentAt: t } });
      const confirmed = ok(d, receive(request), t);
      const confirm = messageOf(confirmed.effects, "CloseConfirm");
      const ready = { type: "cooperativeCloseReady", terms, sig1: confirm.signature, sig2: request.signature };
      expect(confirmed.effects).to.deep.include(ready);
      const done = ok(resent.channel, receive(confirm), t);
      expect(done.effects).to.deep.equal([ready]);
      // The refused payment is in neither copy: both close with the newest fully signed state.
      for (const x of [confirmed.channel, done.channel]) {
        expect(x.status).to.equal("closing");
        expect(x.closeTerms).to.deep.include({ terms, sig1: confirm.signature, sig2: request.signature });
        expect(x.latest).to.deep.equal(ch[1].latest);
        expect(x.inflight).to.equal(null);
        const later = ok(x, { type: "tick" }, t + 10n * CLOSE_RESEND_SECONDS);
        expect(later.effects, "nothing more to ask").to.deep.equal([]);
      }
    });

    it("an unanswered close request is asked again every CLOSE_RESEND_SECONDS, until answered", function () {
      const ch = fresh();
      const r = ok(ch[1], { type: "requestCooperativeClose" });
      const request = messageOf(r.effects, "CloseRequest");
      let c = r.channel;
      for (const t of [T0, T0 + 1n, T0 + CLOSE_RESEND_SECONDS - 1n]) {
        const quiet = ok(c, { type: "tick" }, t);
        expect(quiet.effects).to.deep.equal([]);
        expect(quiet.channel).to.deep.equal(c);
      }
      // A late tick asks once, and the next wait counts from then.
      let last = T0;
      for (const late of [0n, 7n, 0n]) {
        const at = last + CLOSE_RESEND_SECONDS + late;
        const again = ok(c, { type: "tick" }, at);
        expect(again.effects).to.deep.equal([{ type: "send", message: request }]);
        expect(again.channel).to.deep.equal({ ...c, closeTerms: { ...c.closeTerms!, sentAt: at } });
        expect(ok(again.channel, { type: "tick" }, at + CLOSE_RESEND_SECONDS - 1n).effects).to.deep.equal([]);
        c = restored(again.channel);
        expect(c).to.deep.equal(again.channel);
        last = at;
      }
      // Answered: the requester, and the side that confirmed, never ask again.
      const q = ok(ch[2], receive(request), last + 1n);
      const done = ok(c, receive(messageOf(q.effects, "CloseConfirm")), last + 1n);
      for (const x of [done.channel, q.channel]) {
        expect(ok(x, { type: "tick" }, last + 100n * CLOSE_RESEND_SECONDS).effects).to.deep.equal([]);
      }
      // Closed on chain meanwhile: nothing to ask either.
      const closed = ok(c, { type: "closedOnChain" });
      expect(ok(closed.channel, { type: "tick" }, last + 100n * CLOSE_RESEND_SECONDS).effects).to.deep.equal([]);
      // Both asked at once and each confirmed the other: nothing to ask.
      const both = [ok(ch[1], { type: "requestCooperativeClose" }), ok(ch[2], { type: "requestCooperativeClose" })] as const;
      const a = ok(both[0].channel, receive(messageOf(both[1].effects, "CloseRequest")));
      expect(ok(a.channel, { type: "tick" }, T0 + 100n * CLOSE_RESEND_SECONDS).effects).to.deep.equal([]);
    });
  });

  describe("funding and chain events", function () {
    it("a deposit seen on chain increases what can be paid", function () {
      const c = pair.initial[1];
      rejected(c, { type: "propose", ops: [pay(1200n)] }, "INSUFFICIENT_BALANCE");
      const f = ok(c, { type: "fundingChanged", funding: { ...pair.funding, deposit1: 1500n } });
      expect(f.effects).to.deep.equal([]);
      expect(balances(f.channel)).to.deep.include({ mine: 1500n, availableMine: 1500n });
      ok(f.channel, { type: "propose", ops: [pay(1200n)] });
      // Totals only grow: an older event arriving late changes nothing.
      const late = ok(f.channel, { type: "fundingChanged", funding: pair.funding });
      expect(late.channel.funding).to.deep.equal(f.channel.funding);
      // The partner accepts a payment the new deposit covers once it has seen it too.
      const p = ok(f.channel, { type: "propose", ops: [pay(1200n)] });
      const m = messageOf(p.effects, "Propose");
      const early = refused(pair.initial[2], receive(m), "INSUFFICIENT_BALANCE");
      const f2 = ok(pair.initial[2], { type: "fundingChanged", funding: { ...pair.funding, deposit1: 1500n } });
      ok(f2.channel, receive(m));
      // Once refused, the same proposal is never signed, even where it has become valid since.
      const seen = ok(early.channel, { type: "fundingChanged", funding: { ...pair.funding, deposit1: 1500n } });
      const again = ok(seen.channel, receive(m));
      expect(again.channel).to.deep.equal(seen.channel);
      expect(messageOf(again.effects, "Reject").nonce).to.equal(m.state.nonce);
    });

    it("a credit line counts for its side", function () {
      const credit: Funding = { ...pair.funding, deposit2: 0n, credit: 5000n, creditSide: 2 };
      const f = ok(pair.initial[2], { type: "fundingChanged", funding: credit });
      expect(f.channel.funding.deposit2, "a deposit total never goes down").to.equal(1000n);
      expect(balances(f.channel).availableMine).to.equal(6000n);
      expect(capacity(f.channel.funding)).to.equal(7000n);
    });

    it("closed on chain: nothing more is proposed, a waiting proposal is forgotten", function () {
      const p = ok(pair.initial[1], { type: "propose", ops: [pay(1n)] });
      const closed = ok(p.channel, { type: "closedOnChain" });
      expect(closed.channel.status).to.equal("closed");
      expect(closed.channel.inflight).to.equal(null);
      rejected(closed.channel, { type: "propose", ops: [pay(1n)] }, "NOT_OPEN");
      rejected(closed.channel, { type: "requestWithdraw", amount: 1n, expiry: T0 + 60n }, "NOT_OPEN");
      rejected(closed.channel, { type: "requestCooperativeClose" }, "NOT_OPEN");
      // The partner's proposal after the close is refused; the proposer drops it.
      const q = ok(pair.initial[2], { type: "propose", ops: [pay(2n)] });
      const r = refused(closed.channel, receive(messageOf(q.effects, "Propose")), "NOT_OPEN");
      dropsOnReject(q.channel, r.reject);
    });
  });
});

function withdrawOf(side: Side, totalWithdraw: bigint): WithdrawRequest {
  return { channelId: pair.channelId, participant: address(side), totalWithdraw, expiry: T0 + 600n };
}
