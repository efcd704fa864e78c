/**
 * Property tests of the channel state machine: two parties exchange generated updates over
 * queues that reorder, duplicate and lose messages (a lost message is sent again later, except a
 * Reject or CloseRequest, which only the protocol asks for again), with forged messages injected,
 * a clock that jumps, withdrawals executed on chain, cooperative closes and restarts from the
 * store. After every step the safety invariants must hold, above all that no party ever signs two
 * different states with one nonce. Every run must then settle: with the queues drained and time
 * past the backoffs, both hold the same newest state and neither waits on a proposal.
 */
import { expect } from "chai";
import fc from "fast-check";
import {
  CLOSE_RESEND_SECONDS,
  CONFLICT_BACKOFF_SECONDS,
  applyOps,
  available,
  capacity,
  nextNonce,
  other,
  share,
  transition,
  type ChannelData,
  type ChannelErrorCode,
  type ChannelMessage,
  type Funding,
  type Op,
  type PendingWithdraw,
  type Policy,
  type Side,
  type Transition,
} from "../src/protocol/channel.js";
import {
  bytesToHex,
  channelId as makeChannelId,
  cooperativeCloseDigestBytes,
  hashState,
  hexToBytes,
  locksRoot,
  withdrawDigestBytes,
  type ChannelState,
  type Hex,
} from "../src/protocol/eip712.js";
import {
  DOMAIN,
  TwoParty,
  decodeJson,
  encodeJson,
  isUpdateSignatureBy,
  makePair,
  signUpdateAs,
  testSecret,
  type Delivery,
  type Pair,
} from "./helpers/two-party.js";

const T0 = 1_700_000_000n;
const DEPOSIT = 1_000_000n;
const POLICY: Policy = {
  minLockSeconds: 30n,
  maxLockSeconds: 3600n,
  maxLocks: 6,
  maxWithdrawSeconds: 600n,
  withdrawExpiryMargin: 60n,
};
const NUM_RUNS = Number(process.env.STARLING_PROPERTY_RUNS ?? 300);
/** Replays a failure: STARLING_PROPERTY_SEED and STARLING_PROPERTY_PATH as fast-check printed them. */
const REPLAY = process.env.STARLING_PROPERTY_SEED
  ? { seed: Number(process.env.STARLING_PROPERTY_SEED), ...(process.env.STARLING_PROPERTY_PATH ? { path: process.env.STARLING_PROPERTY_PATH } : {}) }
  : {};

// ------------------------------------------------------------------ commands

type OpSpec =
  | { t: "pay"; permille: number }
  | { t: "lock"; permille: number; expiresIn: number; secret: number }
  | { t: "unlock"; pick: number; wrong: boolean }
  | { t: "expire"; pick: number };

const FORGERIES = [
  "mallory",
  "randomBytes",
  "wrongNonce",
  "tampered",
  "otherSignature",
  "countersign",
  "revoke",
  "withdraw",
  "wrongChannel",
  "staleReject",
] as const;
type Forgery = (typeof FORGERIES)[number];

type Cmd =
  /** `ofShare`: amounts are a fraction of the share, ignoring pending withdrawals (to test them). */
  | { k: "propose"; side: Side; ops: OpSpec[]; ofShare: boolean }
  | { k: "deliver"; to: Side }
  | { k: "deliverAt"; to: Side; index: number }
  | { k: "duplicate"; to: Side; index: number }
  | { k: "drop"; to: Side }
  /** A Reject or CloseRequest on its way to `to` is lost for good (anything else: nothing happens). */
  | { k: "lose"; to: Side; index: number }
  | { k: "forge"; to: Side; kind: Forgery; bytes: Uint8Array; pick: number }
  | { k: "advance"; seconds: number }
  | { k: "withdraw"; side: Side; permille: number; expiresIn: number }
  | { k: "executeWithdraw"; side: Side; pick: number }
  | { k: "deposit"; side: Side; amount: number }
  | { k: "revoke"; side: Side }
  | { k: "restart"; side: Side }
  /** Cooperative close in the middle of a run, asked only when `now` (rarely: it ends the updates). */
  | { k: "close"; side: Side; now: boolean }
  | { k: "drain" };

const side = fc.constantFrom<Side>(1, 2);
const pick = fc.nat({ max: 1000 });

const opSpec: fc.Arbitrary<OpSpec> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("pay" as const),
      // Sometimes more than is left, or nothing.
      permille: fc.oneof(
        { weight: 8, arbitrary: fc.integer({ min: 1, max: 300 }) },
        { weight: 1, arbitrary: fc.integer({ min: 900, max: 1300 }) },
        { weight: 1, arbitrary: fc.constant(0) },
      ),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("lock" as const),
      permille: fc.integer({ min: 0, max: 300 }),
      // Mostly inside the policy's bounds with room for delivery, sometimes outside them.
      expiresIn: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 60, max: 3000 }) }, { weight: 1, arbitrary: fc.integer({ min: -10, max: 5000 }) }),
      secret: fc.nat({ max: 24 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("unlock" as const), pick, wrong: fc.nat({ max: 9 }).map((n) => n === 0) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("expire" as const), pick }) },
);

const command: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant("propose" as const),
      side,
      ops: fc.array(opSpec, { minLength: 1, maxLength: 3 }),
      ofShare: fc.nat({ max: 9 }).map((n) => n === 0),
    }),
  },
  { weight: 14, arbitrary: fc.record({ k: fc.constant("deliver" as const), to: side }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("deliverAt" as const), to: side, index: pick }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("duplicate" as const), to: side, index: pick }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("drop" as const), to: side }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant("lose" as const), to: side, index: pick }) },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("forge" as const),
      to: side,
      kind: fc.constantFrom(...FORGERIES),
      bytes: fc.uint8Array({ minLength: 65, maxLength: 65 }),
      pick,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant("advance" as const),
      seconds: fc.oneof(
        { weight: 4, arbitrary: fc.integer({ min: 1, max: 30 }) },
        { weight: 2, arbitrary: fc.integer({ min: 30, max: 700 }) },
        { weight: 1, arbitrary: fc.integer({ min: 700, max: 4000 }) },
      ),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant("withdraw" as const),
      side,
      permille: fc.integer({ min: 0, max: 1100 }),
      expiresIn: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 30, max: 300 }) }, { weight: 1, arbitrary: fc.integer({ min: -5, max: 700 }) }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("executeWithdraw" as const), side, pick }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("deposit" as const), side, amount: fc.integer({ min: 1, max: 500_000 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("revoke" as const), side }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("restart" as const), side }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("close" as const), side, now: fc.nat({ max: 7 }).map((n) => n === 0) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("drain" as const) }) },
);

// ------------------------------------------------------------------ the model run

interface Stats {
  updates: number;
  /** Proposals refused because both sides proposed the same nonce. */
  conflicts: number;
  /** Authentic proposals refused: a Reject sent, the nonce burnt. */
  refusals: number;
  /** Rejects that dropped the waiting proposal they named. */
  rejectsApplied: number;
  /** A proposal at a nonce already burnt, answered with its Reject again. */
  answeredAgain: number;
  /** Proposals that arrived riding on a Countersign. */
  joined: number;
  /** A waiting proposal dropped because the partner proposed above its nonce. */
  droppedBelow: number;
  /** Operations proposed again after a conflict. */
  retried: number;
  lost: number;
  midRunCloses: number;
  /** Runs whose newest state has a nonce above a burnt one (nonces skipped). */
  skipped: number;
  settleRounds: number;
  forgedRejected: number;
  withdrawsExecuted: number;
  restarts: number;
  drainsChecked: number;
  duplicatesDelivered: number;
  maxNonce: bigint;
  closes: number;
  codes: Record<string, number>;
}

const PID = (n: number): Hex => `0x${n.toString(16).padStart(64, "0")}`;

/** Counts outcomes by kind, printed with STARLING_PROPERTY_STATS=1. */
function tally(stats: Stats, key: string): void {
  stats.codes[key] = (stats.codes[key] ?? 0) + 1;
}

/** Rounds of "move the clock, tick, re-send" a run may take to come to rest. */
const MAX_SETTLE_ROUNDS = 60;

class Run {
  readonly sim: TwoParty;
  readonly chain: Funding;
  readonly prevNonce: Record<Side, bigint> = { 1: 0n, 2: 0n };
  readonly prevBurnt: Record<Side, bigint> = { 1: 0n, 2: 0n };
  /** Operations a side will propose again once it can (after a conflict): the engine's queue. */
  readonly retry: Record<Side, Op[][]> = { 1: [], 2: [] };
  private readonly signedWithdraws = new Map<string, PendingWithdraw>();
  private payments = 0;

  constructor(
    readonly pair: Pair,
    readonly stats: Stats,
    join: boolean,
  ) {
    this.sim = new TwoParty(pair, T0);
    this.sim.joinProposals = join;
    this.chain = { ...pair.funding };
    this.sim.onDelivery = (d) => this.afterDelivery(d);
  }

  private afterDelivery(d: Delivery): void {
    const { result, envelope, to, before } = d;
    this.collectSigned();
    const m = envelope.message;
    tally(this.stats, `${m.type}:${result.ok ? "ok" : result.error.code}`);
    if (!result.ok) {
      // A rejected message changes nothing.
      expect(this.sim.channels[to] === before, `rejected ${m.type} changed the channel`).to.equal(true);
      return;
    }
    if (m.type === "Propose") {
      // A countersigner's definite share never goes down (the contract pays the non-closer early).
      const after = result.channel;
      expect(share(after.funding, after.latest.state, to) >= share(before.funding, before.latest.state, to), "countersigner's share went down").to.equal(
        true,
      );
      this.checkAnswer(to, m, before, result);
    }
    if (m.type === "Countersign" && m.next !== undefined && result.refused === undefined) {
      // The proposal riding on it is answered as a Propose would be, on the state the
      // countersignature completed (or, delivered twice, on the channel as it was).
      const { next, ...countersign } = m;
      const mid = transition(before, { type: "receive", message: countersign }, this.pair.deps(to, this.sim.now));
      this.stats.joined++;
      this.checkAnswer(to, { type: "Propose", channelId: m.channelId, ...next }, mid.ok ? mid.channel : before, result, mid.ok ? 1 : 0);
    }
    if (m.type === "Reject" && result.channel === before) {
      // Side 1 dropped its side of a conflict already: a burnt nonce, nothing waits for it.
      expect(result.effects).to.deep.equal([]);
      expect(m.nonce <= before.burnt && before.inflight?.next.state.nonce !== m.nonce).to.equal(true);
    } else if (m.type === "Reject") {
      // It drops the proposal it names, and nothing else changes.
      this.stats.rejectsApplied++;
      expect(result.effects.map((e) => e.type)).to.deep.equal(["proposalRejected"]);
      expect(before.inflight?.next.state.nonce).to.equal(m.nonce);
      const burnt = m.nonce > before.burnt ? m.nonce : before.burnt;
      expect(encodeJson(result.channel)).to.equal(encodeJson({ ...before, inflight: null, burnt }));
    }
    for (const e of result.effects) {
      if (e.type === "updated") this.stats.updates++;
      if (e.type === "proposalRejected") {
        tally(this.stats, `proposalRejected:${e.error.code}`);
        // The engine proposes the operations again after a conflict; any other refusal fails them.
        if (e.error.code === "CONFLICT") this.retry[to].push(e.ops);
      }
    }
    this.flushRetries(to);
  }

  /** How a node answered a proposal it took: countersigned, refused, or refused again. */
  private checkAnswer(
    to: Side,
    m: Extract<ChannelMessage, { type: "Propose" }>,
    before: ChannelData,
    result: Extract<Transition, { ok: true }>,
    completed = 0,
  ): void {
    const sends = result.effects.flatMap((e) => (e.type === "send" ? [e.message] : []));
    expect(sends).to.have.length(1);
    expect(result.effects.filter((e) => e.type === "updated").length - completed).to.be.oneOf([0, 1]);
    const answer = sends[0]!;
    const nonce = m.state.nonce;
    const dropped = result.effects.filter((e) => e.type === "proposalRejected");
    expect(dropped.length <= 1).to.equal(true);
    // Side 1 refusing a proposal with the nonce of its own drops its own at once (side 2 refuses it).
    const side1Conflict = to === 1 && answer.type === "Reject" && answer.code === "CONFLICT" && before.inflight?.next.state.nonce === nonce;
    if (dropped.length > 0 && !side1Conflict) {
      // Only a proposal above this node's own, which the partner can then never sign.
      expect(before.inflight !== null && before.inflight.next.state.nonce < nonce).to.equal(true);
      this.stats.droppedBelow++;
    }
    if (answer.type === "Countersign" && result.channel === before) {
      // A proposal of the state this node countersigned already: its Countersign was lost.
      expect(answer.nonce).to.equal(nonce);
      expect(hashState(before.latest.state)).to.equal(hashState(m.state));
      this.stats.answeredAgain++;
      return;
    }
    if (answer.type === "Countersign") {
      expect(answer.nonce).to.equal(nonce);
      expect(hashState(result.channel.latest.state)).to.equal(hashState(m.state));
      expect(result.channel.burnt).to.equal(before.burnt);
      expect(result.channel.inflight).to.equal(null);
      return;
    }
    if (answer.type !== "Reject") return expect.fail(`a proposal answered with ${answer.type}`);
    expect(answer.nonce).to.equal(nonce);
    if (nonce <= before.burnt) {
      // Sent again after its Reject: answered again, nothing changes.
      expect(result.channel === before, "a proposal answered again changed the channel").to.equal(true);
      expect(dropped).to.deep.equal([]);
      this.stats.answeredAgain++;
      return;
    }
    // Refused: the nonce is burnt, side 2 yields after a conflict, nothing else changes.
    this.stats.refusals++;
    expect(nonce).to.equal(nextNonce(before));
    const code: ChannelErrorCode = answer.code;
    if (code === "CONFLICT") {
      expect(before.inflight?.next.state.nonce).to.equal(nonce);
      this.stats.conflicts++;
    }
    const now = this.sim.now;
    const backoffUntil = side1Conflict
      ? before.backoffUntil >= now
        ? now + 1n
        : now
      : code === "CONFLICT" && to === 2
        ? now + CONFLICT_BACKOFF_SECONDS
        : before.backoffUntil;
    if (side1Conflict) {
      expect(dropped).to.have.length(1);
      expect(dropped[0]).to.deep.include({ ops: before.inflight!.ops });
    }
    const expected: ChannelData = { ...before, burnt: nonce, backoffUntil, inflight: dropped.length > 0 ? null : before.inflight };
    expect(encodeJson(result.channel), `refusal ${code} changed more than the burnt nonce`).to.equal(encodeJson(expected));
  }

  /** Proposes what waits in `side`'s retry queue, as far as the channel lets it now. */
  private flushRetries(side: Side): void {
    const queue = this.retry[side];
    while (queue.length > 0) {
      const c = this.sim.channels[side];
      if (c.status !== "open" || c.closeTerms) {
        queue.length = 0;
        return;
      }
      if (c.inflight || this.sim.now < c.backoffUntil) return;
      const ops = queue.shift()!;
      const r = this.sim.apply(side, { type: "propose", ops });
      tally(this.stats, `retry:${r.ok ? "ok" : r.error.code}`);
      if (r.ok) this.stats.retried++;
    }
  }

  /** What a node does on its timer besides the channel's tick: asks again what nobody answered. */
  private nodeTick(): void {
    for (const s of [1, 2] as const) {
      expect(this.sim.apply(s, { type: "tick" }).ok).to.equal(true);
      this.sim.resendProposal(s);
    }
    for (const s of [1, 2] as const) this.flushRetries(s);
  }

  exec(cmd: Cmd): void {
    const sim = this.sim;
    switch (cmd.k) {
      case "propose": {
        const c = sim.channels[cmd.side];
        const budget = { left: cmd.ofShare ? share(c.funding, c.latest.state, cmd.side) : available(c, cmd.side) };
        const ops = cmd.ops.map((spec) => this.op(cmd.side, spec, budget));
        const r = sim.apply(cmd.side, { type: "propose", ops });
        tally(this.stats, `propose:${r.ok ? "ok" : r.error.code}`);
        break;
      }
      case "deliver":
        sim.deliver(cmd.to, 0);
        break;
      case "deliverAt":
        sim.deliver(cmd.to, cmd.index);
        break;
      case "duplicate":
        if (sim.deliver(cmd.to, cmd.index, true)) this.stats.duplicatesDelivered++;
        break;
      case "drop":
        sim.drop(cmd.to);
        break;
      case "lose": {
        const queue = sim.inbox[cmd.to];
        const e = queue[cmd.index % Math.max(queue.length, 1)];
        if (e && (e.message.type === "Reject" || e.message.type === "CloseRequest")) {
          sim.lose(cmd.to, cmd.index);
          this.stats.lost++;
        }
        break;
      }
      case "forge":
        this.forge(cmd.to, cmd.kind, cmd.bytes, cmd.pick);
        break;
      case "advance":
        sim.now += BigInt(cmd.seconds);
        this.nodeTick();
        break;
      case "withdraw": {
        const c = sim.channels[cmd.side];
        const free = minBig(available(c, cmd.side), available(c, cmd.side, c.inflight?.next.state ?? c.latest.state));
        const amount = (free * BigInt(cmd.permille)) / 1000n;
        sim.apply(cmd.side, { type: "requestWithdraw", amount, expiry: sim.now + BigInt(cmd.expiresIn) });
        break;
      }
      case "executeWithdraw":
        this.executeWithdraw(cmd.side, cmd.pick);
        break;
      case "deposit": {
        // Close terms are fixed when asked: a deposit seen after that leaves them stale for good,
        // and the channel is then closed on chain, which is not modelled here.
        if (sim.channels[1].closeTerms || sim.channels[2].closeTerms) break;
        if (cmd.side === 1) this.chain.deposit1 += BigInt(cmd.amount);
        else this.chain.deposit2 += BigInt(cmd.amount);
        for (const s of [1, 2] as const) expect(sim.apply(s, { type: "fundingChanged", funding: { ...this.chain } }).ok).to.equal(true);
        break;
      }
      case "revoke":
        expect(sim.apply(cmd.side, { type: "revoke" }).ok).to.equal(true);
        break;
      case "restart": {
        const before = sim.channels[cmd.side];
        const text = encodeJson(before);
        const copy = decodeJson(text) as ChannelData;
        expect(copy).to.deep.equal(before);
        expect(encodeJson(copy)).to.equal(text);
        sim.restart(cmd.side);
        this.stats.restarts++;
        break;
      }
      case "close":
        if (cmd.now) {
          const r = sim.apply(cmd.side, { type: "requestCooperativeClose" });
          tally(this.stats, `close:${r.ok ? "ok" : r.error.code}`);
          if (r.ok) this.stats.midRunCloses++;
        }
        break;
      case "drain":
        this.drainAndCheck();
        break;
    }
  }

  /**
   * Turns a generated operation into one against `side`'s current view; amounts are fractions of
   * what is left of `budget` in the batch. Mostly valid: an unlock or expire with no lock to apply
   * to becomes a small payment, except for one in ten, kept to exercise the refusals.
   */
  private op(side: Side, spec: OpSpec, budget: { left: bigint }): Op {
    const c = this.sim.channels[side];
    const now = this.sim.now;
    const locks = c.latest.locks;
    const keepInvalid = spec.t !== "pay" && spec.t !== "lock" && spec.pick % 10 === 0;
    switch (spec.t) {
      case "pay":
      case "lock": {
        const amount = budget.left > 0n ? (budget.left * BigInt(spec.permille)) / 1000n : BigInt(spec.permille % 3) - 1n;
        if (amount > 0n) budget.left -= amount;
        const paymentId = PID(++this.payments);
        if (spec.t === "pay") return { type: "pay", amount, paymentId };
        const secret = testSecret(spec.secret);
        this.sim.secrets.set(secret.hash, secret.secret);
        return { type: "lock", amount, expiry: now + BigInt(spec.expiresIn), secretHash: secret.hash, paymentId };
      }
      case "unlock": {
        // Either side: the receiver claims a lock, or its sender settles it.
        const pool = keepInvalid ? locks : locks.filter((l) => l.expiry >= now);
        const lock = pool[spec.pick % Math.max(pool.length, 1)];
        const known = lock ? this.sim.secrets.get(lock.secretHash) : undefined;
        if (keepInvalid || spec.wrong) return { type: "unlock", secret: known && !spec.wrong ? known : testSecret(1000 + spec.pick).secret };
        if (!known) return this.op(side, { t: "pay", permille: spec.pick % 100 }, budget);
        return { type: "unlock", secret: known };
      }
      case "expire": {
        const pool = keepInvalid ? locks : locks.filter((l) => l.sender === side && l.expiry < now);
        const lock = pool[spec.pick % Math.max(pool.length, 1)];
        if (!lock && !keepInvalid) return this.op(side, { t: "pay", permille: spec.pick % 100 }, budget);
        if (lock && lock.sender === side) budget.left += lock.amount;
        return { type: "expire", secretHash: lock ? lock.secretHash : testSecret(1000 + spec.pick).hash };
      }
    }
  }

  /** Every withdrawal either side ever held with both signatures: the chain executes any of them. */
  private collectSigned(): void {
    for (const x of [1, 2] as const) {
      for (const w of this.sim.channels[x].withdraws) {
        if (!w.sig1 || !w.sig2) continue;
        const key = encodeJson(w.request);
        if (!this.signedWithdraws.has(key)) this.signedWithdraws.set(key, w);
      }
    }
  }

  private executeWithdraw(side: Side, n: number): void {
    this.collectSigned();
    const f = this.chain;
    const onChain = side === 1 ? f.withdrawn1 : f.withdrawn2;
    const candidates = [...this.signedWithdraws.values()].filter(
      (w) => w.side === side && this.sim.now <= w.request.expiry && w.request.totalWithdraw > onChain,
    );
    const w = candidates[n % Math.max(candidates.length, 1)];
    if (!w || !w.sig1 || !w.sig2) return;
    const listed = this.sim.channels[side].withdraws.some((x) => encodeJson(x.request) === encodeJson(w.request));
    tally(this.stats, listed ? "execute:pending" : "execute:released");
    // What the contract checks: both signatures, expiry, a growing total, funds.
    const digest = withdrawDigestBytes(DOMAIN, w.request);
    const verifier = this.pair.backend.verifier;
    expect(verifier.recoverAddress(digest, hexToBytes(w.sig1))).to.equal(this.pair.configs[1].participant1);
    expect(verifier.recoverAddress(digest, hexToBytes(w.sig2))).to.equal(this.pair.configs[1].participant2);
    const withdrawn1 = side === 1 ? w.request.totalWithdraw : f.withdrawn1;
    const withdrawn2 = side === 2 ? w.request.totalWithdraw : f.withdrawn2;
    expect(withdrawn1 + withdrawn2 <= f.deposit1 + f.deposit2 + f.credit, "withdrawals exceed the channel").to.equal(true);
    f.withdrawn1 = withdrawn1;
    f.withdrawn2 = withdrawn2;
    for (const s of [1, 2] as const) expect(this.sim.apply(s, { type: "fundingChanged", funding: { ...f } }).ok).to.equal(true);
    this.stats.withdrawsExecuted++;
  }

  // ---------------------------------------------------------------- forgeries

  private forge(to: Side, kind: Forgery, bytes: Uint8Array, n: number): void {
    const sim = this.sim;
    const from = other(to);
    const c = sim.channels[to];
    const id = this.pair.channelId;
    const latest = c.latest.state;
    const next = this.validNext(c, from);
    const random = bytesToHex(bytes);
    let message: ChannelMessage | null = null;
    switch (kind) {
      case "mallory":
        message = { type: "Propose", channelId: id, ...next, signature: signUpdateAs(this.pair.mallory, id, next.state, latest.nonce) };
        break;
      case "randomBytes":
        message = { type: "Propose", channelId: id, ...next, signature: { revokedBelow: latest.nonce, signature: random } };
        break;
      case "wrongNonce": {
        const nonce = n % 2 === 0 ? latest.nonce + 2n + BigInt(n % 7) : latest.nonce;
        const state = { ...next.state, nonce };
        message = { type: "Propose", channelId: id, state, ops: next.ops, signature: signUpdateAs(this.pair.mallory, id, state, 0n) };
        break;
      }
      case "tampered": {
        // A genuine proposal by the partner with one field of its state changed.
        const genuine = [...sim.inbox[to]].reverse().find((e) => e.message.type === "Propose")?.message;
        const base =
          genuine?.type === "Propose"
            ? genuine
            : { type: "Propose" as const, channelId: id, ...next, signature: signUpdateAs(this.pair.mallory, id, next.state, 0n) };
        const fields: (keyof ChannelState)[] = ["sent1", "sent2", "locked1", "locked2"];
        const field = fields[n % fields.length]!;
        const state: ChannelState =
          n % 5 === 4 ? { ...base.state, locksRoot: bytesToHex(bytes.subarray(0, 32)) } : { ...base.state, [field]: (base.state[field] as bigint) + 1n };
        message = { ...base, state };
        break;
      }
      case "otherSignature": {
        // The partner's real signature, on some other state.
        const sigs = sim.emitted[from];
        const sig = sigs[n % Math.max(sigs.length, 1)];
        if (!sig || sig.stateHash === hashState(next.state)) return;
        message = { type: "Propose", channelId: id, ...next, signature: { revokedBelow: sig.revokedBelow, signature: sig.signature } };
        break;
      }
      case "countersign": {
        const target = c.inflight?.next.state ?? next.state;
        const signature = n % 2 === 0 ? { revokedBelow: target.nonce, signature: random } : signUpdateAs(this.pair.mallory, id, target, target.nonce);
        message = { type: "Countersign", channelId: id, nonce: target.nonce, signature };
        break;
      }
      case "revoke": {
        const signature =
          n % 2 === 0
            ? { revokedBelow: latest.nonce + BigInt(n % 3), signature: random }
            : signUpdateAs(this.pair.mallory, id, latest, latest.nonce + 5n);
        message = { type: "Revoke", channelId: id, nonce: latest.nonce, signature };
        break;
      }
      case "withdraw": {
        const mine = c.withdraws.find((w) => w.side === to);
        const participant = from === 1 ? this.pair.configs[1].participant1 : this.pair.configs[1].participant2;
        const request = mine && n % 2 === 0 ? mine.request : { channelId: id, participant, totalWithdraw: 1n + BigInt(n), expiry: sim.now + 60n };
        const signature = bytesToHex(this.pair.mallory.signDigest(withdrawDigestBytes(DOMAIN, request)));
        message =
          mine && n % 2 === 0
            ? { type: "WithdrawConfirm", channelId: id, request, signature }
            : { type: "WithdrawRequest", channelId: id, request, signature };
        break;
      }
      case "staleReject": {
        // Rejects are unsigned (the transport authenticates the peer): one that names no waiting
        // proposal must change nothing.
        let nonce = latest.nonce + BigInt(n % 5) - 2n;
        if (nonce === c.inflight?.next.state.nonce) nonce += 5n;
        message = { type: "Reject", channelId: id, nonce, code: "INSUFFICIENT_BALANCE", reason: random };
        break;
      }
      case "wrongChannel": {
        const queued = sim.inbox[to];
        const copy = queued[n % Math.max(queued.length, 1)]?.message;
        if (!copy) return;
        const { participant1, participant2 } = this.pair.configs[1];
        const otherId = makeChannelId(DOMAIN.chainId, DOMAIN.verifyingContract, participant1, participant2, 2 + (n % 5));
        message = { ...copy, channelId: otherId };
        break;
      }
    }
    const before = encodeJson(c);
    const result: Transition = sim.apply(to, { type: "receive", message });
    if (result.ok) {
      expect(encodeJson(result.channel), `forged ${kind} changed the channel`).to.equal(before);
      expect(result.effects, `forged ${kind} had effects`).to.deep.equal([]);
    } else {
      this.stats.forgedRejected++;
      if (kind === "wrongChannel") expect(result.error.code).to.equal("WRONG_CHANNEL");
      if (kind === "staleReject") expect(result.error.code).to.equal("UNEXPECTED_MESSAGE");
    }
    expect(encodeJson(sim.channels[to])).to.equal(before);
  }

  /** A next state `from` could propose to `to`'s view, by applying a small payment (or nothing). */
  private validNext(c: ChannelData, from: Side): { state: ChannelState; ops: Op[] } {
    const ops: Op[] = [{ type: "pay", amount: 1n, paymentId: PID(0) }];
    const applied = applyOps(c, ops, from, this.sim.pair.deps(c.config.me, this.sim.now));
    if (applied.ok) return { state: applied.state, ops };
    return { state: { ...c.latest.state, nonce: nextNonce(c) }, ops };
  }

  // ---------------------------------------------------------------- invariants

  check(): void {
    this.collectSigned();
    const sim = this.sim;
    const backend = this.pair.backend;
    const id = this.pair.channelId;
    const addr: Record<Side, Hex> = { 1: this.pair.configs[1].participant1, 2: this.pair.configs[1].participant2 };
    for (const x of [1, 2] as const) {
      const p = other(x);
      const c = sim.channels[x];
      const l = c.latest;
      const s = l.state;
      // No party has signed two different states with one nonce (the simulator also checks every
      // signature sent); here, what each channel holds.
      sim.noteHeld(c);
      // Nonces never decrease, nor burnt ones; the newest state is fully signed.
      expect(s.nonce >= this.prevNonce[x], `side ${x} nonce went down`).to.equal(true);
      this.prevNonce[x] = s.nonce;
      expect(c.burnt >= this.prevBurnt[x], `side ${x} burnt nonce went down`).to.equal(true);
      this.prevBurnt[x] = c.burnt;
      // Side 1 yields at most until the next second (after a second conflict in one second).
      if (x === 1) expect(c.backoffUntil <= sim.now + 1n).to.equal(true);
      expect(c.backoffUntil <= sim.now + CONFLICT_BACKOFF_SECONDS).to.equal(true);
      if (s.nonce > this.stats.maxNonce) this.stats.maxNonce = s.nonce;
      if (s.nonce > 0n) {
        const h = hashState(s);
        expect(l.sig1 && isUpdateSignatureBy(backend, id, h, l.sig1, addr[1]), `side ${x}: sig1 of latest`).to.equal(true);
        expect(l.sig2 && isUpdateSignatureBy(backend, id, h, l.sig2, addr[2]), `side ${x}: sig2 of latest`).to.equal(true);
      }
      // Locks match the state.
      expect(s.locksRoot).to.equal(locksRoot(l.locks));
      expect(s.locked1).to.equal(sum(l.locks.filter((k) => k.sender === 1).map((k) => k.amount)));
      expect(s.locked2).to.equal(sum(l.locks.filter((k) => k.sender === 2).map((k) => k.amount)));
      expect(l.locks.every((k) => k.amount > 0n)).to.equal(true);
      // Conservation, and no share ever below what is pending out of it.
      for (const state of c.inflight ? [s, c.inflight.next.state] : [s]) {
        const s1 = share(c.funding, state, 1);
        const s2 = share(c.funding, state, 2);
        expect(s1 + s2 + state.locked1 + state.locked2).to.equal(capacity(c.funding));
        for (const side of [1, 2] as const) {
          expect(available(c, side, state) >= 0n, `side ${x}'s view: side ${side} available ${available(c, side, state)}`).to.equal(true);
        }
      }
      if (c.inflight) {
        // A proposal carries the next nonce; only a conflict at that very nonce burns it meanwhile.
        const n = c.inflight.next.state.nonce;
        expect(n > s.nonce).to.equal(true);
        expect(n === nextNonce(c) || n === c.burnt, `side ${x}'s proposal ${n}: latest ${s.nonce}, burnt ${c.burnt}`).to.equal(true);
        const mine = x === 1 ? c.inflight.next.sig1 : c.inflight.next.sig2;
        expect(mine && isUpdateSignatureBy(backend, id, hashState(c.inflight.next.state), mine, addr[x])).to.equal(true);
      }
      // An honest party is never penalisable: whatever it has signed (and the partner may hold)
      // revokes nothing at or above its own newest fully signed state.
      expect(sim.deliveredRevocation[x] <= s.nonce, `side ${p} holds side ${x}'s revocation of its latest ${s.nonce}`).to.equal(true);
      expect(sim.emittedRevocation[x] <= s.nonce, `side ${x} signed a revocation of its latest ${s.nonce}`).to.equal(true);
      expect(c.myRevokedBelow <= s.nonce).to.equal(true);
      // What the partner keeps as this side's strongest revocation is a valid signature by it.
      const rev = sim.channels[p].partnerRevocation;
      if (rev) {
        expect(isUpdateSignatureBy(backend, id, rev.stateHash, rev, addr[x]), `side ${p}'s partnerRevocation`).to.equal(true);
        expect(rev.revokedBelow <= sim.deliveredRevocation[x]).to.equal(true);
      }
      // If this side closes with its latest, a newer state the partner holds never lowers the
      // partner's share (the contract refuses such an update and would have paid it already). The
      // partner can only be ahead by this side's own proposal, countersigned.
      const pl = sim.channels[p].latest.state;
      if (pl.nonce > s.nonce) {
        expect(c.inflight && hashState(c.inflight.next.state), `side ${p} is ahead of side ${x} by a state it did not propose`).to.equal(hashState(pl));
        expect(share(c.funding, pl, p) >= share(c.funding, s, p), "partner's newer state lowers its share").to.equal(true);
      }
    }
    if (sim.inbox[1].length === 0 && sim.inbox[2].length === 0) this.checkAgreement();
  }

  /**
   * Cooperative close at the end of a run, asked by one side or by both at once: whatever
   * completes pays exactly the newest state's shares, signed by both.
   */
  closeAndCheck(who: "1" | "2" | "both"): void {
    const sim = this.sim;
    const askers: Side[] = who === "both" ? [1, 2] : [who === "1" ? 1 : 2];
    const asked = askers.filter((x) => sim.apply(x, { type: "requestCooperativeClose" }).ok);
    this.settle();
    const verifier = this.pair.backend.verifier;
    for (const x of [1, 2] as const) {
      const c = sim.channels[x];
      const t = c.closeTerms;
      if (!t || !t.sig1 || !t.sig2) continue;
      this.stats.closes++;
      expect(c.status).to.equal("closing");
      expect(c.latest.locks).to.deep.equal([]);
      expect(t.terms).to.deep.equal({
        channelId: this.pair.channelId,
        balance1: share(c.funding, c.latest.state, 1),
        balance2: share(c.funding, c.latest.state, 2),
      });
      expect(t.terms.balance1 + t.terms.balance2).to.equal(capacity(c.funding));
      const digest = cooperativeCloseDigestBytes(DOMAIN, t.terms);
      expect(verifier.recoverAddress(digest, hexToBytes(t.sig1))).to.equal(this.pair.configs[1].participant1);
      expect(verifier.recoverAddress(digest, hexToBytes(t.sig2))).to.equal(this.pair.configs[1].participant2);
      expect(hashState(sim.channels[other(x)].latest.state)).to.equal(hashState(c.latest.state));
    }
    // Whoever asked (one side or both at once) had no reason to refuse, nor has the partner once
    // at rest: both end up with the signed terms.
    if (asked.length > 0) {
      for (const x of [1, 2] as const) {
        const t = sim.channels[x].closeTerms;
        expect(t !== null && t.sig1 !== null && t.sig2 !== null, `side ${x} has both close signatures`).to.equal(true);
      }
    }
  }

  /** A close request still unanswered. */
  private closeWaiting(): boolean {
    return ([1, 2] as const).some((x) => {
      const t = this.sim.channels[x].closeTerms;
      return t !== null && (!t.sig1 || !t.sig2);
    });
  }

  private atRest(): boolean {
    const sim = this.sim;
    return (
      sim.inbox[1].length === 0 &&
      sim.inbox[2].length === 0 &&
      !sim.channels[1].inflight &&
      !sim.channels[2].inflight &&
      this.retry[1].length === 0 &&
      this.retry[2].length === 0 &&
      !this.closeWaiting()
    );
  }

  /**
   * Lets the run come to rest: delivers everything, then moves the clock on (past side 2's
   * backoff, a close request's re-send, a pending withdrawal's expiry) with the ticks and re-sends
   * of a node, until nothing waits. Then both hold the same newest state, and neither waits on a
   * proposal: none is ever stuck, refused or not.
   */
  settle(): void {
    const sim = this.sim;
    for (let round = 0; ; round++) {
      sim.drain();
      for (const s of [1, 2] as const) this.flushRetries(s);
      sim.drain();
      this.check();
      if (this.atRest()) {
        if (round > this.stats.settleRounds) this.stats.settleRounds = round;
        break;
      }
      if (round >= MAX_SETTLE_ROUNDS) {
        const state = ([1, 2] as const).map((x) => {
          const c = sim.channels[x];
          return `side ${x}: latest ${c.latest.state.nonce} burnt ${c.burnt} inflight ${c.inflight?.next.state.nonce ?? "-"} retry ${this.retry[x].length} close ${c.closeTerms ? "yes" : "no"}`;
        });
        expect.fail(`no rest after ${round} rounds: ${state.join("; ")}`);
      }
      const busy = sim.channels[1].inflight || sim.channels[2].inflight || this.retry[1].length > 0 || this.retry[2].length > 0;
      sim.now += busy ? CONFLICT_BACKOFF_SECONDS : 6n * CLOSE_RESEND_SECONDS;
      this.nodeTick();
    }
    for (const x of [1, 2] as const) {
      expect(sim.channels[x].inflight, `side ${x} still waits on a proposal`).to.equal(null);
      expect(this.retry[x], `side ${x} still has operations to propose`).to.deep.equal([]);
    }
    const [a, b] = [sim.channels[1], sim.channels[2]];
    expect(hashState(a.latest.state), "both hold the same newest state").to.equal(hashState(b.latest.state));
    expect(a.latest.locks).to.deep.equal(b.latest.locks);
    if (a.latest.state.nonce > 0n && (a.burnt > 0n || b.burnt > 0n)) this.stats.skipped++;
  }

  drainAndCheck(): void {
    this.sim.drain();
    this.check();
    this.checkAgreement();
    this.stats.drainsChecked++;
  }

  /**
   * With nothing in flight, both hold the same newest state, or one is a single update behind:
   * its own proposal, which the other has countersigned.
   */
  private checkAgreement(): void {
    const a = this.sim.channels[1];
    const b = this.sim.channels[2];
    const na = a.latest.state.nonce;
    const nb = b.latest.state.nonce;
    if (na === nb) {
      expect(hashState(a.latest.state)).to.equal(hashState(b.latest.state));
      expect(a.latest.locks).to.deep.equal(b.latest.locks);
      return;
    }
    const [ahead, behind] = na > nb ? [a, b] : [b, a];
    expect(behind.inflight && hashState(behind.inflight.next.state)).to.equal(hashState(ahead.latest.state));
  }
}

function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function sum(xs: bigint[]): bigint {
  return xs.reduce((acc, x) => acc + x, 0n);
}

// ------------------------------------------------------------------ the property

describe("channel state machine properties", function () {
  this.timeout(120_000);
  let pair: Pair;

  before(async function () {
    pair = await makePair({ deposit1: DEPOSIT, deposit2: DEPOSIT, policy: POLICY });
  });

  it("keeps every safety invariant under reordering, loss, duplication, forgery, time and restarts, and always comes to rest", function () {
    const stats: Stats = {
      updates: 0,
      conflicts: 0,
      refusals: 0,
      rejectsApplied: 0,
      answeredAgain: 0,
      joined: 0,
      droppedBelow: 0,
      retried: 0,
      lost: 0,
      midRunCloses: 0,
      skipped: 0,
      settleRounds: 0,
      forgedRejected: 0,
      withdrawsExecuted: 0,
      restarts: 0,
      drainsChecked: 0,
      duplicatesDelivered: 0,
      maxNonce: 0n,
      closes: 0,
      codes: {},
    };
    fc.assert(
      fc.property(fc.array(command, { minLength: 1, maxLength: 60, size: "max" }), fc.constantFrom("1", "2", "both"), fc.boolean(), (cmds, closer, join) => {
        const run = new Run(pair, stats, join);
        try {
          for (const cmd of cmds) {
            run.exec(cmd);
            run.check();
          }
          run.drainAndCheck();
          run.settle();
          run.closeAndCheck(closer);
        } catch (err) {
          const tail = run.sim.log.slice(-12).join("\n  ");
          if (err instanceof Error) err.message += `\n  last deliveries:\n  ${tail}`;
          throw err;
        }
      }),
      { numRuns: NUM_RUNS, ...REPLAY },
    );
    if (process.env.STARLING_PROPERTY_STATS) console.log("    ", stats);
    // The generator must actually exercise the protocol, not only its error paths.
    if (NUM_RUNS >= 100 && !process.env.STARLING_PROPERTY_SEED) {
      expect(stats.updates).to.be.greaterThan(NUM_RUNS * 2);
      expect(stats.conflicts).to.be.greaterThan(0);
      expect(stats.refusals).to.be.greaterThan(stats.conflicts);
      expect(stats.rejectsApplied).to.be.greaterThan(0);
      expect(stats.retried).to.be.greaterThan(0);
      expect(stats.skipped).to.be.greaterThan(0);
      expect(stats.withdrawsExecuted).to.be.greaterThan(0);
      expect(stats.forgedRejected).to.be.greaterThan(NUM_RUNS / 2);
      expect(stats.restarts).to.be.greaterThan(0);
      expect(stats.closes).to.be.greaterThan(0);
      expect(stats.joined).to.be.greaterThan(0);
    }
    // Rarer paths: a lost Reject, a proposal answered again or overtaken, a close mid-run.
    if (NUM_RUNS >= 300) {
      expect(stats.lost).to.be.greaterThan(0);
      expect(stats.answeredAgain).to.be.greaterThan(0);
      expect(stats.droppedBelow).to.be.greaterThan(0);
      expect(stats.midRunCloses).to.be.greaterThan(0);
    }
  });
});
