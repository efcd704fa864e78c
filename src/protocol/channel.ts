/**
 * The RSMC channel state machine: a pure function of (channel, input) -> channel + effects.
 *
 * Update of state n to n+1, proposed by P to Q (DESIGN "Off-chain protocol"):
 *   1. P -> Q  Propose: state n+1 and the operations that produce it, signed by P as
 *              Update(n+1, revokedBelow = n)  (P holds the fully signed n, so it may revoke < n).
 *   2. Q       checks every operation against its own copy of n, and that the result is exactly
 *              the proposed state; persists; replies Countersign: Update(n+1, revokedBelow = n+1),
 *              which both agrees to n+1 and revokes n.
 *   3. P       checks, persists: n+1 is fully signed. P's revocation of n rides on P's next
 *              signature (its next proposal revokes below n+1), or on an explicit Revoke message.
 * No one ever holds a revocation by the other side of a state that side can't yet replace with a
 * fully signed newer one, so an honest party can never be penalised.
 *
 * Every operation either moves value away from its proposer (pay, lock) or settles a lock in the
 * proposer's favour under the lock's own rules (unlock with the secret before expiry by the
 * receiver, removal after expiry by the sender). So a countersigner's definite share never goes
 * down, which is what makes the contract's "pay the non-closer at close" safe (docs/contracts.md).
 *
 * No party ever signs two different states with the same nonce. A proposal the partner refuses
 * is answered with `Reject`, which burns its nonce on both sides; the proposer drops it and may
 * propose again above it. When both sides propose the same nonce at once, each refuses the
 * other's (CONFLICT); side 1 proposes again at once, and side 2 yields until it has countersigned
 * that (or for a moment, if nothing comes), then proposes its own on the Countersign.
 */
import {
  cooperativeCloseDigestBytes,
  hashState,
  locksRoot,
  secretHash as hashSecret,
  updateDigestBytes,
  withdrawDigestBytes,
  bytesToHex,
  hexToBytes,
  normalizeAddress,
  ZERO_HASH,
} from "./eip712.js";
import type { Address, ChannelState, CooperativeCloseTerms, Domain, Hex, Lock, WithdrawRequest } from "./types.js";
import type { Signer, Verifier } from "../signer/types.js";

export type Side = 1 | 2;

export const other = (side: Side): Side => (side === 1 ? 2 : 1);

/** A participant's EIP-712 `Update` signature on a state. */
export interface StateSignature {
  /** The signer revokes every state of the channel with a lower nonce. */
  revokedBelow: bigint;
  signature: Hex;
}

/** On-chain totals of a channel, as the chain reported them. */
export interface Funding {
  deposit1: bigint;
  deposit2: bigint;
  withdrawn1: bigint;
  withdrawn2: bigint;
  credit: bigint;
  creditSide: 0 | 1 | 2;
}

export interface SignedState {
  state: ChannelState;
  /** The pending locks, whose root is `state.locksRoot`. */
  locks: Lock[];
  sig1: StateSignature | null;
  sig2: StateSignature | null;
}

/** The partner's strongest revocation: its `Update` signature with the highest `revokedBelow`. */
export interface Revocation {
  revokedBelow: bigint;
  stateHash: Hex;
  signature: Hex;
}

/** An operation of a state update. `paymentId` ties pay and lock to a payment. */
export type Op =
  | { type: "pay"; amount: bigint; paymentId: Hex }
  | { type: "lock"; amount: bigint; expiry: bigint; secretHash: Hex; paymentId: Hex }
  | { type: "unlock"; secret: Hex }
  | { type: "expire"; secretHash: Hex };

export interface PendingWithdraw {
  side: Side;
  request: WithdrawRequest;
  /** Signatures by side; the request is executable once both are present. */
  sig1: Hex | null;
  sig2: Hex | null;
}

export interface Inflight {
  ops: Op[];
  next: SignedState;
}

export type ChannelStatus = "open" | "closing" | "closed";

export interface ChannelConfig {
  channelId: Hex;
  domain: Domain;
  participant1: Address;
  participant2: Address;
  /** This node's side. */
  me: Side;
}

export interface ChannelData {
  config: ChannelConfig;
  funding: Funding;
  status: ChannelStatus;
  /** The newest fully signed state (nonce 0: the implicit initial state, no signatures). */
  latest: SignedState;
  /** Every nonce below this one is revoked by this node. */
  myRevokedBelow: bigint;
  partnerRevocation: Revocation | null;
  /** This node's proposal waiting for the partner's countersignature. */
  inflight: Inflight | null;
  withdraws: PendingWithdraw[];
  /** Cooperative close terms once this node has signed them: no further update is accepted. */
  closeTerms: { terms: CooperativeCloseTerms; sig1: Hex | null; sig2: Hex | null; sentAt: bigint } | null;
  /**
   * Highest nonce used by a proposal that was rejected. A nonce is never signed twice with
   * different content, so the next proposal goes above it (see `Reject`).
   */
  burnt: bigint;
  /**
   * No proposal before then. Side 2 waits after a conflict, so that side 1 goes first; side 1
   * notes the second of a conflict here, and waits only after a second one in that second.
   */
  backoffUntil: bigint;
}

/** Limits a node enforces on what it accepts. */
export interface Policy {
  /** A new lock must expire at least this many seconds from now. */
  minLockSeconds: bigint;
  /** ... and at most this many. */
  maxLockSeconds: bigint;
  /** Most pending locks per channel (the on-chain unlock takes all of them in one call). */
  maxLocks: number;
  /** Seconds a signed withdrawal may stay valid. */
  maxWithdrawSeconds: bigint;
  /** Seconds after a withdrawal's expiry before it is treated as void (chain clock drift). */
  withdrawExpiryMargin: bigint;
}

export const DEFAULT_POLICY: Policy = {
  minLockSeconds: 30n,
  maxLockSeconds: 7n * 24n * 3600n,
  maxLocks: 500,
  maxWithdrawSeconds: 3600n,
  withdrawExpiryMargin: 60n,
};

export interface Deps {
  signer: Signer;
  verifier: Verifier;
  /** Unix seconds. */
  now: bigint;
  policy: Policy;
  /**
   * Chain time at which a lock's secret was registered in the SecretRegistry, if this node has
   * seen it. A lock registered at or before its expiry is its receiver's (as `unlock` on chain
   * decides): it may still be unlocked off chain after its expiry, and is never removed as expired.
   */
  revealedAt?: (channelId: Hex, secretHash: Hex) => bigint | undefined;
}

function claimedOnChain(c: ChannelData, lock: Lock, deps: Deps): boolean {
  const at = deps.revealedAt?.(c.config.channelId, lock.secretHash);
  return at !== undefined && at <= lock.expiry;
}

// ------------------------------------------------------------------ messages

export type ChannelMessage =
  | { type: "Propose"; channelId: Hex; state: ChannelState; ops: Op[]; signature: StateSignature }
  /**
   * Agrees to the partner's proposal `nonce`. `next` is this node's own proposal of the state
   * after it, sent in the same message: a busy channel alternates between the two sides this way
   * (each message countersigns one update and proposes the next), and because the partner learns
   * of the next proposal in the same step as the countersignature, it never proposes the same
   * nonce at the same time.
   */
  | { type: "Countersign"; channelId: Hex; nonce: bigint; signature: StateSignature; next?: Proposal }
  | { type: "Revoke"; channelId: Hex; nonce: bigint; signature: StateSignature }
  /** A refused proposal: both sides burn its nonce; the proposer drops it and may propose again. */
  | { type: "Reject"; channelId: Hex; nonce: bigint; code: ChannelErrorCode; reason: string }
  | { type: "WithdrawRequest"; channelId: Hex; request: WithdrawRequest; signature: Hex }
  | { type: "WithdrawConfirm"; channelId: Hex; request: WithdrawRequest; signature: Hex }
  | { type: "CloseRequest"; channelId: Hex; terms: CooperativeCloseTerms; signature: Hex }
  | { type: "CloseConfirm"; channelId: Hex; terms: CooperativeCloseTerms; signature: Hex };

/** The body of a `Propose`, also carried as a `Countersign`'s `next`. */
export interface Proposal {
  state: ChannelState;
  ops: Op[];
  signature: StateSignature;
}

export type ChannelInput =
  | { type: "propose"; ops: Op[] }
  | { type: "receive"; message: ChannelMessage }
  /** Send an explicit revocation of the state before the latest (step 3), when idle. */
  | { type: "revoke" }
  | { type: "fundingChanged"; funding: Funding }
  | { type: "requestWithdraw"; amount: bigint; expiry: bigint }
  | { type: "requestCooperativeClose" }
  /** Time passed: drop withdrawals whose expiry is over. */
  | { type: "tick" }
  | { type: "closedOnChain" };

export type ChannelEffect =
  | { type: "send"; message: ChannelMessage }
  /** A state update completed (on either side): the operations are now in a fully signed state. */
  | { type: "updated"; nonce: bigint; proposer: Side; ops: Op[] }
  /** This node's proposal was dropped in favour of the partner's; its ops may be proposed again. */
  | { type: "proposalDropped"; ops: Op[] }
  /** The partner refused this node's proposal; `error.code` CONFLICT means "try again". */
  | { type: "proposalRejected"; ops: Op[]; error: ChannelError }
  | { type: "withdrawReady"; withdraw: PendingWithdraw }
  | { type: "cooperativeCloseReady"; terms: CooperativeCloseTerms; sig1: Hex; sig2: Hex };

export type ChannelErrorCode =
  | "WRONG_CHANNEL"
  | "NOT_OPEN"
  | "BUSY"
  | "CONFLICT"
  | "BAD_NONCE"
  | "BAD_SIGNATURE"
  | "STATE_MISMATCH"
  | "BAD_AMOUNT"
  | "INSUFFICIENT_BALANCE"
  | "LOCK_EXPIRY_OUT_OF_BOUNDS"
  | "BAD_SECRET_HASH"
  | "DUPLICATE_SECRET_HASH"
  | "TOO_MANY_LOCKS"
  | "UNKNOWN_LOCK"
  | "NOT_LOCK_SENDER"
  | "WRONG_SECRET"
  | "LOCK_EXPIRED"
  | "LOCK_NOT_EXPIRED"
  | "NO_OPS"
  | "UNEXPECTED_MESSAGE"
  | "WITHDRAW_PENDING"
  | "BAD_EXPIRY"
  | "LOCKS_PENDING"
  /** An expired lock whose secret reached the chain in time: its receiver's, not removable. */
  | "LOCK_CLAIMED";

export interface ChannelError {
  code: ChannelErrorCode;
  message: string;
}

export type Transition =
  /** `refused`: a part of the input that was refused while the rest applied (a `Countersign`'s `next`). */
  | { ok: true; channel: ChannelData; effects: ChannelEffect[]; refused?: ChannelError }
  | { ok: false; error: ChannelError };

const fail = (code: ChannelErrorCode, message: string): Transition => ({ ok: false, error: { code, message } });

// ------------------------------------------------------------------ creation

export function newChannel(config: ChannelConfig, funding: Funding): ChannelData {
  return {
    config: {
      ...config,
      participant1: normalizeAddress(config.participant1),
      participant2: normalizeAddress(config.participant2),
    },
    funding,
    status: "open",
    latest: {
      state: {
        channelId: config.channelId,
        nonce: 0n,
        sent1: 0n,
        sent2: 0n,
        locked1: 0n,
        locked2: 0n,
        locksRoot: ZERO_HASH,
      },
      locks: [],
      sig1: null,
      sig2: null,
    },
    myRevokedBelow: 0n,
    partnerRevocation: null,
    inflight: null,
    withdraws: [],
    closeTerms: null,
    burnt: 0n,
    backoffUntil: 0n,
  };
}

/** The pending lock a lock operation by `sender` adds. */
export function lockOf(op: Extract<Op, { type: "lock" }>, sender: Side): Lock {
  return { sender, amount: op.amount, expiry: op.expiry, secretHash: op.secretHash };
}

/** The nonce the next proposal of either side must carry. */
export function nextNonce(c: ChannelData): bigint {
  return (c.latest.state.nonce > c.burnt ? c.latest.state.nonce : c.burnt) + 1n;
}

/** Seconds side 2 yields to side 1 after both proposed the same nonce. */
export const CONFLICT_BACKOFF_SECONDS = 2n;
/** Seconds between re-sends of an unanswered cooperative close request. */
export const CLOSE_RESEND_SECONDS = 5n;

// ------------------------------------------------------------------ balances

/** Everything the channel holds: deposits plus credit minus withdrawals. */
export function capacity(f: Funding): bigint {
  return f.deposit1 + f.deposit2 + f.credit - f.withdrawn1 - f.withdrawn2;
}

/**
 * A side's definite share under `state` (the contract's formula, without clamping): deposits and
 * credit, minus withdrawals, minus what it sent and locked, plus what it received.
 */
export function share(f: Funding, s: ChannelState, side: Side): bigint {
  const credit = f.creditSide === side ? f.credit : 0n;
  return side === 1
    ? f.deposit1 + credit - f.withdrawn1 - s.sent1 - s.locked1 + s.sent2
    : f.deposit2 + credit - f.withdrawn2 - s.sent2 - s.locked2 + s.sent1;
}

/** Signed withdrawals not yet seen on chain still count as spent, until they expire. */
function pendingWithdrawn(c: ChannelData, side: Side): bigint {
  const onChain = side === 1 ? c.funding.withdrawn1 : c.funding.withdrawn2;
  let extra = 0n;
  for (const w of c.withdraws) {
    if (w.side === side && w.request.totalWithdraw > onChain + extra) extra = w.request.totalWithdraw - onChain;
  }
  return extra;
}

/** What `side` can still pay or lock in the newest signed state. */
export function available(c: ChannelData, side: Side, s: ChannelState = c.latest.state): bigint {
  return share(c.funding, s, side) - pendingWithdrawn(c, side);
}

export interface Balances {
  /** This node's definite share in the newest signed state. */
  mine: bigint;
  partner: bigint;
  lockedMine: bigint;
  lockedPartner: bigint;
  /** What this node can pay now. */
  availableMine: bigint;
}

export function balances(c: ChannelData): Balances {
  const me = c.config.me;
  const s = c.latest.state;
  return {
    mine: share(c.funding, s, me),
    partner: share(c.funding, s, other(me)),
    lockedMine: me === 1 ? s.locked1 : s.locked2,
    lockedPartner: me === 1 ? s.locked2 : s.locked1,
    availableMine: available(c, me),
  };
}

// ------------------------------------------------------------------ operations

type Applied = { ok: true; state: ChannelState; locks: Lock[] } | { ok: false; error: ChannelError };

const bad = (code: ChannelErrorCode, message: string): Applied => ({ ok: false, error: { code, message } });

/**
 * Applies `ops`, proposed by `proposer`, to the newest signed state; validates each one. The
 * result's nonce is `nextNonce(c)`. Pure; used by both the proposer and the countersigner, so both
 * compute the same state.
 */
export function applyOps(c: ChannelData, ops: readonly Op[], proposer: Side, deps: Deps): Applied {
  return applyOpsTo(c, ops, proposer, deps, true);
}

/** Whether `ops` by `proposer` would pass (`applyOps` without building the new state's locks root). */
export function checkOps(c: ChannelData, ops: readonly Op[], proposer: Side, deps: Deps): ChannelError | null {
  const r = applyOpsTo(c, ops, proposer, deps, false);
  return r.ok ? null : r.error;
}

function applyOpsTo(c: ChannelData, ops: readonly Op[], proposer: Side, deps: Deps, withRoot: boolean): Applied {
  if (ops.length === 0) return bad("NO_OPS", "an update needs at least one operation");
  const base = c.latest.state;
  let sent1 = base.sent1;
  let sent2 = base.sent2;
  let locked1 = base.locked1;
  let locked2 = base.locked2;
  const locks = [...c.latest.locks];
  const { now, policy } = deps;
  let spendable = available(c, proposer);
  for (const op of ops) {
    switch (op.type) {
      case "pay": {
        if (op.amount <= 0n) return bad("BAD_AMOUNT", `payment amount must be positive, got ${op.amount}`);
        if (op.amount > spendable) {
          return bad("INSUFFICIENT_BALANCE", `payment of ${op.amount} exceeds the available ${spendable}`);
        }
        spendable -= op.amount;
        if (proposer === 1) sent1 += op.amount;
        else sent2 += op.amount;
        break;
      }
      case "lock": {
        if (op.amount <= 0n) return bad("BAD_AMOUNT", `lock amount must be positive, got ${op.amount}`);
        if (op.amount > spendable) {
          return bad("INSUFFICIENT_BALANCE", `lock of ${op.amount} exceeds the available ${spendable}`);
        }
        // One spelling per hash, the one unlock computes: otherwise a lock could never be unlocked.
        if (typeof op.secretHash !== "string" || !/^0x[0-9a-f]{64}$/.test(op.secretHash)) {
          return bad("BAD_SECRET_HASH", "a secret hash is 32 bytes of lowercase hex");
        }
        if (op.expiry < now + policy.minLockSeconds || op.expiry > now + policy.maxLockSeconds) {
          return bad(
            "LOCK_EXPIRY_OUT_OF_BOUNDS",
            `lock expiry ${op.expiry} must be within [${now + policy.minLockSeconds}, ${now + policy.maxLockSeconds}]`,
          );
        }
        if (locks.some((l) => l.secretHash === op.secretHash)) {
          return bad("DUPLICATE_SECRET_HASH", `a lock with secret hash ${op.secretHash} is already pending`);
        }
        if (locks.length >= policy.maxLocks) return bad("TOO_MANY_LOCKS", `at most ${policy.maxLocks} pending locks`);
        spendable -= op.amount;
        locks.push(lockOf(op, proposer));
        if (proposer === 1) locked1 += op.amount;
        else locked2 += op.amount;
        break;
      }
      case "unlock": {
        let hash: Hex;
        try {
          hash = hashSecret(op.secret);
        } catch {
          return bad("WRONG_SECRET", "a secret is 32 bytes of hex");
        }
        const i = locks.findIndex((l) => l.secretHash === hash);
        const lock = locks[i];
        if (!lock) return bad("UNKNOWN_LOCK", `no pending lock has secret hash ${hash}`);
        // Either side may propose it: the receiver claims the lock with its secret, or the sender,
        // shown the secret by the receiver, settles it (the only side proposing on a payer's channel).
        if (now > lock.expiry && !claimedOnChain(c, lock, deps)) return bad("LOCK_EXPIRED", `lock ${hash} expired at ${lock.expiry}`);
        locks.splice(i, 1);
        if (lock.sender === 1) {
          locked1 -= lock.amount;
          sent1 += lock.amount;
        } else {
          locked2 -= lock.amount;
          sent2 += lock.amount;
        }
        break;
      }
      case "expire": {
        const i = locks.findIndex((l) => l.secretHash === op.secretHash);
        const lock = locks[i];
        if (!lock) return bad("UNKNOWN_LOCK", `no pending lock has secret hash ${op.secretHash}`);
        if (lock.sender !== proposer) return bad("NOT_LOCK_SENDER", "only a lock's sender removes it after expiry");
        if (now <= lock.expiry) return bad("LOCK_NOT_EXPIRED", `lock ${op.secretHash} expires at ${lock.expiry}`);
        if (claimedOnChain(c, lock, deps)) {
          return bad("LOCK_CLAIMED", `the secret of lock ${op.secretHash} was registered on chain before it expired`);
        }
        locks.splice(i, 1);
        if (lock.sender === 1) locked1 -= lock.amount;
        else locked2 -= lock.amount;
        spendable += lock.amount;
        break;
      }
    }
  }
  const state: ChannelState = {
    channelId: base.channelId,
    nonce: nextNonce(c),
    sent1,
    sent2,
    locked1,
    locked2,
    locksRoot: withRoot ? locksRoot(locks) : ZERO_HASH,
  };
  return { ok: true, state, locks };
}

// ------------------------------------------------------------------ signing helpers

function signUpdate(c: ChannelData, state: ChannelState, revokedBelow: bigint, deps: Deps): StateSignature {
  const digest = updateDigestBytes(c.config.domain, c.config.channelId, revokedBelow, hashState(state));
  return { revokedBelow, signature: bytesToHex(deps.signer.signDigest(digest)) };
}

function verifyUpdate(c: ChannelData, stateHash: Hex, sig: StateSignature, signer: Address, deps: Deps): boolean {
  let sigBytes: Uint8Array;
  try {
    sigBytes = hexToBytes(sig.signature, 65, "signature");
  } catch {
    return false;
  }
  if (typeof sig.revokedBelow !== "bigint" || sig.revokedBelow < 0n || sig.revokedBelow >= 1n << 64n) return false;
  const digest = updateDigestBytes(c.config.domain, c.config.channelId, sig.revokedBelow, stateHash);
  return deps.verifier.recoverAddress(digest, sigBytes) === signer;
}

function verifyDigest(digest: Uint8Array, signature: Hex, signer: Address, deps: Deps): boolean {
  let sigBytes: Uint8Array;
  try {
    sigBytes = hexToBytes(signature, 65, "signature");
  } catch {
    return false;
  }
  return deps.verifier.recoverAddress(digest, sigBytes) === signer;
}

const participant = (c: ChannelData, side: Side): Address =>
  side === 1 ? c.config.participant1 : c.config.participant2;

/** Side `side`'s signature on a state, if it has signed. */
export function sigOf(signed: SignedState, side: Side): StateSignature | null {
  return side === 1 ? signed.sig1 : signed.sig2;
}

function withSig(signed: SignedState, side: Side, sig: StateSignature): SignedState {
  return side === 1 ? { ...signed, sig1: sig } : { ...signed, sig2: sig };
}

function notePartnerRevocation(c: ChannelData, sig: StateSignature, stateHash: Hex): Revocation | null {
  const current = c.partnerRevocation;
  if (current && current.revokedBelow >= sig.revokedBelow) return current;
  if (sig.revokedBelow === 0n) return current;
  return { revokedBelow: sig.revokedBelow, stateHash, signature: sig.signature };
}

// ------------------------------------------------------------------ transition

export function transition(c: ChannelData, input: ChannelInput, deps: Deps): Transition {
  switch (input.type) {
    case "propose":
      return propose(c, input.ops, deps);
    case "receive":
      if (input.message.channelId !== c.config.channelId) {
        return fail("WRONG_CHANNEL", `message for channel ${input.message.channelId} sent to ${c.config.channelId}`);
      }
      return receive(c, input.message, deps);
    case "revoke":
      return revoke(c, deps);
    case "fundingChanged":
      return fundingChanged(c, input.funding);
    case "requestWithdraw":
      return requestWithdraw(c, input.amount, input.expiry, deps);
    case "requestCooperativeClose":
      return requestCooperativeClose(c, deps);
    case "tick":
      return tick(c, deps);
    case "closedOnChain":
      return { ok: true, channel: { ...c, status: "closed", inflight: null }, effects: [] };
  }
}

function propose(c: ChannelData, ops: Op[], deps: Deps): Transition {
  if (c.status !== "open" || c.closeTerms) return fail("NOT_OPEN", `channel is ${c.status}`);
  if (c.inflight) return fail("BUSY", "a proposal is already waiting for the partner");
  const me = c.config.me;
  // A backoff is never longer than CONFLICT_BACKOFF_SECONDS: one further ahead was set before the
  // clock went back (a restart with a corrected clock), and would stall the channel meanwhile.
  if (deps.now < c.backoffUntil && c.backoffUntil <= deps.now + CONFLICT_BACKOFF_SECONDS) {
    return fail("BUSY", "yielding to the partner after a conflict");
  }
  const applied = applyOps(c, ops, me, deps);
  if (!applied.ok) return applied;
  // Holding the fully signed latest, this node may revoke everything before it.
  const revokedBelow = c.latest.state.nonce > c.myRevokedBelow ? c.latest.state.nonce : c.myRevokedBelow;
  const sig = signUpdate(c, applied.state, revokedBelow, deps);
  const next = withSig({ state: applied.state, locks: applied.locks, sig1: null, sig2: null }, me, sig);
  return {
    ok: true,
    channel: { ...c, inflight: { ops, next }, myRevokedBelow: revokedBelow },
    effects: [{ type: "send", message: { type: "Propose", channelId: c.config.channelId, state: applied.state, ops, signature: sig } }],
  };
}

function receive(c: ChannelData, m: ChannelMessage, deps: Deps): Transition {
  switch (m.type) {
    case "Propose":
      return receivePropose(c, m, deps);
    case "Countersign":
      return receiveCountersign(c, m, deps);
    case "Revoke":
      return receiveRevoke(c, m, deps);
    case "Reject":
      return receiveReject(c, m);
    case "WithdrawRequest":
      return receiveWithdrawRequest(c, m, deps);
    case "WithdrawConfirm":
      return receiveWithdrawConfirm(c, m, deps);
    case "CloseRequest":
      return receiveCloseRequest(c, m, deps);
    case "CloseConfirm":
      return receiveCloseConfirm(c, m, deps);
  }
}

function receivePropose(c: ChannelData, m: Extract<ChannelMessage, { type: "Propose" }>, deps: Deps): Transition {
  const me = c.config.me;
  const them = other(me);
  const repeat = answerRepeat(c, m);
  if (repeat) return repeat;
  const expectedNonce = nextNonce(c);
  // A nonce this node has burnt (and will never sign): the proposer is still waiting for its Reject.
  const refusedBefore = m.state.nonce > c.latest.state.nonce && m.state.nonce <= c.burnt;
  if (m.state.nonce !== expectedNonce && !refusedBefore) {
    return fail("BAD_NONCE", `proposal nonce ${m.state.nonce}, expected ${expectedNonce}`);
  }
  if (m.state.channelId !== c.config.channelId) return fail("WRONG_CHANNEL", "the proposed state names another channel");
  let stateHash: Hex;
  try {
    stateHash = hashState(m.state);
  } catch {
    return fail("STATE_MISMATCH", "the proposed state is malformed");
  }
  if (!Array.isArray(m.ops) || !verifyUpdate(c, stateHash, m.signature, participant(c, them), deps)) {
    return fail("BAD_SIGNATURE", "the proposal is not signed by the partner");
  }
  if (refusedBefore) {
    // Sent again, so the Reject was lost (or overtaken): repeat it, changing nothing. The proposer
    // drops its proposal and proposes again above this nonce.
    const reason = `nonce ${m.state.nonce} was refused before; propose again above ${c.burnt}`;
    const again: ChannelMessage = { type: "Reject", channelId: c.config.channelId, nonce: m.state.nonce, code: "CONFLICT", reason };
    return { ok: true, channel: c, effects: [{ type: "send", message: again }] };
  }
  // From here on the proposal is authentic: refusing it burns its nonce on both sides, so that
  // neither ever signs two different states with one nonce.
  const dropped: ChannelEffect[] = [];
  if (c.inflight && c.inflight.next.state.nonce < m.state.nonce) {
    // The partner signed a proposal above this node's own: it has passed that nonce and will never
    // countersign it (its Reject was lost or is late). Drop it, and judge the new one on its merits.
    const error: ChannelError = { code: "CONFLICT", message: `the partner moved past nonce ${c.inflight.next.state.nonce}` };
    dropped.push({ type: "proposalRejected", ops: c.inflight.ops, error });
    c = { ...c, inflight: null };
  }
  const refuse = (code: ChannelErrorCode, reason: string): Transition => {
    const r = rejectProposal(c, m.state.nonce, code, reason, deps);
    return r.ok ? { ...r, effects: [...dropped, ...r.effects] } : r;
  };
  if (c.inflight) {
    if (me === 2) return refuse("CONFLICT", "both sides proposed the same nonce");
    // Side 1: side 2 refuses this node's proposal in turn (it holds its own with this nonce), so
    // it is dropped now and its operations go again above the burnt nonce, without waiting for
    // that Reject; side 2 yields until it sees them.
    // A second conflict within a second (side 2 keeps proposing without seeing this node's
    // proposals): yield until the next second instead, so the two never loop.
    const own = c.inflight;
    c = { ...c, inflight: null, backoffUntil: c.backoffUntil >= deps.now ? deps.now + 1n : deps.now };
    const r = refuse("CONFLICT", "both sides proposed the same nonce; side 1 proposes again");
    const error: ChannelError = { code: "CONFLICT", message: "both sides proposed the same nonce" };
    return r.ok ? { ...r, effects: [...r.effects, { type: "proposalRejected", ops: own.ops, error }] } : r;
  }
  if (c.status !== "open" || c.closeTerms) return refuse("NOT_OPEN", `channel is ${c.status}`);
  const applied = applyOps(c, m.ops, them, deps);
  if (!applied.ok) return refuse(applied.error.code, applied.error.message);
  if (!sameState(applied.state, m.state)) {
    return refuse("STATE_MISMATCH", "the proposed state is not what its operations produce");
  }
  // Countersign and revoke the previous state in one signature.
  const revokedBelow = m.state.nonce;
  const mySig = signUpdate(c, m.state, revokedBelow, deps);
  const signed = withSig(withSig({ state: m.state, locks: applied.locks, sig1: null, sig2: null }, them, m.signature), me, mySig);
  return {
    ok: true,
    channel: {
      ...c,
      latest: signed,
      myRevokedBelow: revokedBelow,
      partnerRevocation: notePartnerRevocation(c, m.signature, stateHash),
      backoffUntil: 0n,
    },
    effects: [
      ...dropped,
      { type: "send", message: { type: "Countersign", channelId: c.config.channelId, nonce: m.state.nonce, signature: mySig } },
      { type: "updated", nonce: m.state.nonce, proposer: them, ops: m.ops },
    ],
  };
}

/**
 * A repeated proposal of the state this node already countersigned means the Countersign was
 * lost: send it again (changing nothing) instead of refusing a stale nonce.
 */
function answerRepeat(c: ChannelData, m: Extract<ChannelMessage, { type: "Propose" }>): Transition | null {
  const latest = c.latest;
  if (typeof m.state !== "object" || m.state === null || m.state.nonce !== latest.state.nonce) return null;
  if (!sameState(m.state, latest.state)) return null;
  const mine = c.config.me === 1 ? latest.sig1 : latest.sig2;
  if (!mine || mine.revokedBelow < latest.state.nonce) return null;
  const message: ChannelMessage = { type: "Countersign", channelId: c.config.channelId, nonce: latest.state.nonce, signature: mine };
  return { ok: true, channel: c, effects: [{ type: "send", message }] };
}

/**
 * Refuses an authentic proposal: burns its nonce and tells the proposer. On a conflict (both
 * proposed this nonce) each side rejects the other's; side 2 then yields for a moment so that
 * side 1's retry goes first.
 */
function rejectProposal(c: ChannelData, nonce: bigint, code: ChannelErrorCode, reason: string, deps: Deps): Transition {
  const backoffUntil = code === "CONFLICT" && c.config.me === 2 ? deps.now + CONFLICT_BACKOFF_SECONDS : c.backoffUntil;
  return {
    ok: true,
    channel: { ...c, burnt: nonce > c.burnt ? nonce : c.burnt, backoffUntil },
    effects: [{ type: "send", message: { type: "Reject", channelId: c.config.channelId, nonce, code, reason } }],
  };
}

function receiveReject(c: ChannelData, m: Extract<ChannelMessage, { type: "Reject" }>): Transition {
  const inflight = c.inflight;
  if (!inflight || typeof m.nonce !== "bigint" || inflight.next.state.nonce !== m.nonce) {
    // Side 1 drops its side of a conflict before side 2's Reject comes: nothing left to do.
    if (typeof m.nonce === "bigint" && m.nonce <= c.burnt && m.nonce > c.latest.state.nonce) return { ok: true, channel: c, effects: [] };
    return fail("UNEXPECTED_MESSAGE", `no proposal with nonce ${String(m.nonce)} is waiting`);
  }
  const code: ChannelErrorCode = typeof m.code === "string" ? m.code : "STATE_MISMATCH";
  const reason = typeof m.reason === "string" ? m.reason.slice(0, 500) : "";
  return {
    ok: true,
    channel: { ...c, inflight: null, burnt: m.nonce > c.burnt ? m.nonce : c.burnt },
    effects: [{ type: "proposalRejected", ops: inflight.ops, error: { code, message: `the partner refused: ${reason}` } }],
  };
}

function receiveCountersign(c: ChannelData, m: Extract<ChannelMessage, { type: "Countersign" }>, deps: Deps): Transition {
  const { next, ...countersign } = m;
  const agreed = receiveCountersignOnly(c, countersign, deps);
  if (next === undefined) return agreed;
  // The partner's next proposal is judged on the state the countersignature completed. When that
  // part is a repeat (the message was delivered twice), the proposal is still answered.
  const proposed =
    typeof next === "object" && next !== null
      ? receivePropose(agreed.ok ? agreed.channel : c, { type: "Propose", channelId: m.channelId, state: next.state, ops: next.ops, signature: next.signature }, deps)
      : fail("STATE_MISMATCH", "the proposal after a countersignature is malformed");
  if (!proposed.ok) return agreed.ok ? { ...agreed, refused: proposed.error } : agreed;
  return { ok: true, channel: proposed.channel, effects: [...(agreed.ok ? agreed.effects : []), ...proposed.effects] };
}

function receiveCountersignOnly(c: ChannelData, m: Extract<ChannelMessage, { type: "Countersign" }>, deps: Deps): Transition {
  const inflight = c.inflight;
  if (!inflight || inflight.next.state.nonce !== m.nonce) {
    return fail("UNEXPECTED_MESSAGE", `no proposal with nonce ${m.nonce} is waiting`);
  }
  const me = c.config.me;
  const them = other(me);
  const stateHash = hashState(inflight.next.state);
  if (!verifyUpdate(c, stateHash, m.signature, participant(c, them), deps)) {
    return fail("BAD_SIGNATURE", "the countersignature is not the partner's");
  }
  if (m.signature.revokedBelow < m.nonce) {
    return fail("BAD_SIGNATURE", "a countersignature must revoke the previous state");
  }
  return {
    ok: true,
    channel: {
      ...c,
      latest: withSig(inflight.next, them, m.signature),
      inflight: null,
      partnerRevocation: notePartnerRevocation(c, m.signature, stateHash),
    },
    effects: [{ type: "updated", nonce: m.nonce, proposer: me, ops: inflight.ops }],
  };
}

function revoke(c: ChannelData, deps: Deps): Transition {
  const nonce = c.latest.state.nonce;
  if (nonce === 0n || c.myRevokedBelow >= nonce) return { ok: true, channel: c, effects: [] };
  const sig = signUpdate(c, c.latest.state, nonce, deps);
  return {
    ok: true,
    channel: { ...c, myRevokedBelow: nonce },
    effects: [{ type: "send", message: { type: "Revoke", channelId: c.config.channelId, nonce, signature: sig } }],
  };
}

function receiveRevoke(c: ChannelData, m: Extract<ChannelMessage, { type: "Revoke" }>, deps: Deps): Transition {
  // A revocation names a state this node holds fully signed; older ones carry no news.
  if (m.nonce !== c.latest.state.nonce) return { ok: true, channel: c, effects: [] };
  const stateHash = hashState(c.latest.state);
  if (!verifyUpdate(c, stateHash, m.signature, participant(c, other(c.config.me)), deps)) {
    return fail("BAD_SIGNATURE", "the revocation is not the partner's");
  }
  return { ok: true, channel: { ...c, partnerRevocation: notePartnerRevocation(c, m.signature, stateHash) }, effects: [] };
}

function fundingChanged(c: ChannelData, f: Funding): Transition {
  // Totals only grow on chain; keep the larger of each in case events arrive out of order.
  const max = (a: bigint, b: bigint) => (a > b ? a : b);
  const funding: Funding = {
    deposit1: max(c.funding.deposit1, f.deposit1),
    deposit2: max(c.funding.deposit2, f.deposit2),
    withdrawn1: max(c.funding.withdrawn1, f.withdrawn1),
    withdrawn2: max(c.funding.withdrawn2, f.withdrawn2),
    credit: max(c.funding.credit, f.credit),
    creditSide: f.creditSide !== 0 ? f.creditSide : c.funding.creditSide,
  };
  // A withdrawal the chain has executed is no longer pending.
  const withdraws = c.withdraws.filter(
    (w) => w.request.totalWithdraw > (w.side === 1 ? funding.withdrawn1 : funding.withdrawn2),
  );
  return { ok: true, channel: { ...c, funding, withdraws }, effects: [] };
}

function tick(c: ChannelData, deps: Deps): Transition {
  const cutoff = deps.now - deps.policy.withdrawExpiryMargin;
  const withdraws = c.withdraws.filter((w) => w.request.expiry >= cutoff);
  let next = withdraws.length === c.withdraws.length ? c : { ...c, withdraws };
  const effects: ChannelEffect[] = [];
  // A close request the partner could not answer yet (it was busy) is asked again.
  const close = c.closeTerms;
  const mine = close && (c.config.me === 1 ? close.sig1 : close.sig2);
  const theirs = close && (c.config.me === 1 ? close.sig2 : close.sig1);
  if (close && mine && !theirs && c.status === "closing" && deps.now >= close.sentAt + CLOSE_RESEND_SECONDS) {
    next = { ...next, closeTerms: { ...close, sentAt: deps.now } };
    effects.push({ type: "send", message: { type: "CloseRequest", channelId: c.config.channelId, terms: close.terms, signature: mine } });
  }
  return { ok: true, channel: next, effects };
}

// ------------------------------------------------------------------ withdraw

function requestWithdraw(c: ChannelData, amount: bigint, expiry: bigint, deps: Deps): Transition {
  if (c.status !== "open" || c.closeTerms) return fail("NOT_OPEN", `channel is ${c.status}`);
  const me = c.config.me;
  if (c.withdraws.some((w) => w.side === me)) return fail("WITHDRAW_PENDING", "a withdrawal is already pending");
  if (amount <= 0n) return fail("BAD_AMOUNT", `withdraw amount must be positive, got ${amount}`);
  const err = checkWithdrawExpiry(expiry, deps);
  if (err) return err;
  const avail = available(c, me, c.inflight?.next.state ?? c.latest.state);
  const free = avail < available(c, me) ? avail : available(c, me);
  if (amount > free) return fail("INSUFFICIENT_BALANCE", `withdraw of ${amount} exceeds the available ${free}`);
  const onChain = me === 1 ? c.funding.withdrawn1 : c.funding.withdrawn2;
  const request: WithdrawRequest = {
    channelId: c.config.channelId,
    participant: participant(c, me),
    totalWithdraw: onChain + amount,
    expiry,
  };
  const signature = bytesToHex(deps.signer.signDigest(withdrawDigestBytes(c.config.domain, request)));
  const pending: PendingWithdraw = { side: me, request, sig1: me === 1 ? signature : null, sig2: me === 2 ? signature : null };
  return {
    ok: true,
    channel: { ...c, withdraws: [...c.withdraws, pending] },
    effects: [{ type: "send", message: { type: "WithdrawRequest", channelId: c.config.channelId, request, signature } }],
  };
}

function checkWithdrawExpiry(expiry: bigint, deps: Deps): Transition | null {
  if (expiry <= deps.now || expiry > deps.now + deps.policy.maxWithdrawSeconds) {
    return fail("BAD_EXPIRY", `withdraw expiry must be within (${deps.now}, ${deps.now + deps.policy.maxWithdrawSeconds}]`);
  }
  return null;
}

function receiveWithdrawRequest(c: ChannelData, m: Extract<ChannelMessage, { type: "WithdrawRequest" }>, deps: Deps): Transition {
  if (c.status !== "open" || c.closeTerms) return fail("NOT_OPEN", `channel is ${c.status}`);
  const them = other(c.config.me);
  const r = m.request;
  if (r.channelId !== c.config.channelId || normalizeAddress(r.participant) !== participant(c, them)) {
    return fail("WRONG_CHANNEL", "the withdrawal is not for the partner in this channel");
  }
  if (c.withdraws.some((w) => w.side === them)) return fail("WITHDRAW_PENDING", "a withdrawal is already pending");
  const err = checkWithdrawExpiry(r.expiry, deps);
  if (err) return err;
  const onChain = them === 1 ? c.funding.withdrawn1 : c.funding.withdrawn2;
  const amount = r.totalWithdraw - onChain;
  if (amount <= 0n) return fail("BAD_AMOUNT", `withdraw total ${r.totalWithdraw} is not above ${onChain}`);
  // The partner's available balance must cover it in the newest state this node has signed,
  // including a proposal of its own still in flight (which may lock the partner's incoming funds).
  const free = available(c, them);
  if (amount > free) return fail("INSUFFICIENT_BALANCE", `withdraw of ${amount} exceeds the partner's available ${free}`);
  const digest = withdrawDigestBytes(c.config.domain, r);
  if (!verifyDigest(digest, m.signature, participant(c, them), deps)) {
    return fail("BAD_SIGNATURE", "the withdrawal is not signed by the partner");
  }
  const mine = bytesToHex(deps.signer.signDigest(digest));
  const pending: PendingWithdraw = {
    side: them,
    request: r,
    sig1: them === 1 ? m.signature : mine,
    sig2: them === 2 ? m.signature : mine,
  };
  return {
    ok: true,
    channel: { ...c, withdraws: [...c.withdraws, pending] },
    effects: [{ type: "send", message: { type: "WithdrawConfirm", channelId: c.config.channelId, request: r, signature: mine } }],
  };
}

function receiveWithdrawConfirm(c: ChannelData, m: Extract<ChannelMessage, { type: "WithdrawConfirm" }>, deps: Deps): Transition {
  const me = c.config.me;
  const i = c.withdraws.findIndex(
    (w) => w.side === me && w.request.totalWithdraw === m.request.totalWithdraw && w.request.expiry === m.request.expiry,
  );
  const pending = c.withdraws[i];
  if (!pending) return fail("UNEXPECTED_MESSAGE", "no such withdrawal is waiting");
  const digest = withdrawDigestBytes(c.config.domain, pending.request);
  if (!verifyDigest(digest, m.signature, participant(c, other(me)), deps)) {
    return fail("BAD_SIGNATURE", "the confirmation is not signed by the partner");
  }
  const done: PendingWithdraw = me === 1 ? { ...pending, sig2: m.signature } : { ...pending, sig1: m.signature };
  const withdraws = [...c.withdraws];
  withdraws[i] = done;
  return { ok: true, channel: { ...c, withdraws }, effects: [{ type: "withdrawReady", withdraw: done }] };
}

// ------------------------------------------------------------------ cooperative close

function closeTermsOf(c: ChannelData): CooperativeCloseTerms {
  return {
    channelId: c.config.channelId,
    balance1: share(c.funding, c.latest.state, 1),
    balance2: share(c.funding, c.latest.state, 2),
  };
}

const sameTerms = (a: CooperativeCloseTerms, b: CooperativeCloseTerms): boolean =>
  a.channelId === b.channelId && a.balance1 === b.balance1 && a.balance2 === b.balance2;

function closeBlocker(c: ChannelData): Transition | null {
  if (c.status !== "open") return fail("NOT_OPEN", `channel is ${c.status}`);
  if (c.inflight) return fail("BUSY", "a proposal is waiting for the partner");
  if (c.latest.locks.length > 0) return fail("LOCKS_PENDING", "pending locks must be settled or expired first");
  if (c.withdraws.length > 0) return fail("WITHDRAW_PENDING", "a withdrawal is pending");
  return null;
}

function requestCooperativeClose(c: ChannelData, deps: Deps): Transition {
  const blocked = closeBlocker(c);
  if (blocked) return blocked;
  const terms = closeTermsOf(c);
  const signature = bytesToHex(deps.signer.signDigest(cooperativeCloseDigestBytes(c.config.domain, terms)));
  const me = c.config.me;
  return {
    ok: true,
    channel: {
      ...c,
      status: "closing",
      closeTerms: { terms, sig1: me === 1 ? signature : null, sig2: me === 2 ? signature : null, sentAt: deps.now },
    },
    effects: [{ type: "send", message: { type: "CloseRequest", channelId: c.config.channelId, terms, signature } }],
  };
}

function receiveCloseRequest(c: ChannelData, m: Extract<ChannelMessage, { type: "CloseRequest" }>, deps: Deps): Transition {
  // Both sides asked at once: the partner's request confirms this node's own.
  if (c.status === "closing" && c.closeTerms && (!c.closeTerms.sig1 || !c.closeTerms.sig2)) {
    return receiveCloseConfirm(c, { ...m, type: "CloseConfirm" }, deps);
  }
  // Already agreed on these terms (say the partner's request confirmed this node's own, and this
  // node's request was lost): the partner still lacks this node's signature, so send it again.
  const agreed = c.closeTerms;
  if (c.status === "closing" && agreed?.sig1 && agreed.sig2 && sameTerms(agreed.terms, m.terms)) {
    const them = other(c.config.me);
    if (!verifyDigest(cooperativeCloseDigestBytes(c.config.domain, agreed.terms), m.signature, participant(c, them), deps)) {
      return fail("BAD_SIGNATURE", "the close request is not signed by the partner");
    }
    const mine = c.config.me === 1 ? agreed.sig1 : agreed.sig2;
    return { ok: true, channel: c, effects: [{ type: "send", message: { type: "CloseConfirm", channelId: c.config.channelId, terms: agreed.terms, signature: mine } }] };
  }
  const blocked = closeBlocker(c);
  if (blocked) return blocked;
  const terms = closeTermsOf(c);
  if (!sameTerms(m.terms, terms)) {
    return fail("STATE_MISMATCH", `close terms differ from the newest state (${terms.balance1}, ${terms.balance2})`);
  }
  const digest = cooperativeCloseDigestBytes(c.config.domain, terms);
  const them = other(c.config.me);
  if (!verifyDigest(digest, m.signature, participant(c, them), deps)) {
    return fail("BAD_SIGNATURE", "the close request is not signed by the partner");
  }
  const mine = bytesToHex(deps.signer.signDigest(digest));
  const sig1 = them === 1 ? m.signature : mine;
  const sig2 = them === 2 ? m.signature : mine;
  return {
    ok: true,
    channel: { ...c, status: "closing", closeTerms: { terms, sig1, sig2, sentAt: deps.now } },
    effects: [
      { type: "send", message: { type: "CloseConfirm", channelId: c.config.channelId, terms, signature: mine } },
      { type: "cooperativeCloseReady", terms, sig1, sig2 },
    ],
  };
}

function receiveCloseConfirm(c: ChannelData, m: Extract<ChannelMessage, { type: "CloseConfirm" }>, deps: Deps): Transition {
  const pending = c.closeTerms;
  if (!pending || pending.terms.balance1 !== m.terms.balance1 || pending.terms.balance2 !== m.terms.balance2) {
    return fail("UNEXPECTED_MESSAGE", "no such close request is waiting");
  }
  const them = other(c.config.me);
  const digest = cooperativeCloseDigestBytes(c.config.domain, pending.terms);
  if (!verifyDigest(digest, m.signature, participant(c, them), deps)) {
    return fail("BAD_SIGNATURE", "the close confirmation is not signed by the partner");
  }
  const sig1 = them === 1 ? m.signature : pending.sig1;
  const sig2 = them === 2 ? m.signature : pending.sig2;
  if (!sig1 || !sig2) return fail("UNEXPECTED_MESSAGE", "close signatures incomplete");
  return {
    ok: true,
    channel: { ...c, closeTerms: { terms: pending.terms, sig1, sig2, sentAt: pending.sentAt } },
    effects: [{ type: "cooperativeCloseReady", terms: pending.terms, sig1, sig2 }],
  };
}

// ------------------------------------------------------------------ utilities

export function sameState(a: ChannelState, b: ChannelState): boolean {
  return (
    a.channelId === b.channelId &&
    a.nonce === b.nonce &&
    a.sent1 === b.sent1 &&
    a.sent2 === b.sent2 &&
    a.locked1 === b.locked1 &&
    a.locked2 === b.locked2 &&
    a.locksRoot === b.locksRoot
  );
}

/**
 * What this node would close with, and what it holds against the partner: the newest fully
 * signed state with the partner's signature, and the partner's strongest revocation.
 */
export function disputeKit(c: ChannelData): { latest: SignedState; partnerSignature: StateSignature | null; revocation: Revocation | null } {
  const them = other(c.config.me);
  return {
    latest: c.latest,
    partnerSignature: sigOf(c.latest, them),
    revocation: c.partnerRevocation,
  };
}
