/**
 * HTLC transfers over RSMC channels: one pure state machine per node covering the three roles.
 *
 *   initiator  pay -> lock in its channel with the hub (+ LockedTransfer to the hub); answers the
 *              target's signed SecretRequest with a SecretReveal; completed when the hub shows it
 *              the secret (it then settles its lock) or unlocks the lock itself.
 *   mediator   a lock from a partner, fully signed, whose LockedTransfer names another target ->
 *              the same lock (hash, amount) one hop on, expiring `revealTimeout` earlier; learns the
 *              secret from the downstream unlock or a SecretReveal, and shows it upstream.
 *   target     a lock naming it -> SecretRequest to the initiator; SecretReveal -> claims it. With an
 *              invoice it knows the secret already and unlocks as it countersigns the lock.
 *
 * The roles fall out of a few rules over the locks this node sent and received, so a node can be
 * all three at once (a hub receiving payments, forwarding others, and issuing):
 *   - a received lock whose secret is known when it is countersigned is unlocked in the same
 *     message (the unlock rides on the countersignature); one whose secret comes later is shown to
 *     its sender (a SecretReveal), which settles it: so on a channel where only one side pays,
 *     only that side ever proposes, and the two sides never propose at once. If the sender has not
 *     settled after `settleSeconds`, the receiver unlocks it itself; and if the unlock has not
 *     landed when its expiry is near, the secret is registered on chain, once;
 *   - a sent lock whose receiver showed its secret is settled (unlocked by the sender); one past
 *     its expiry is removed;
 *   - a received lock with routing metadata is claimed (target) or forwarded (mediator).
 *
 * Channel operations are queued per channel and leave as ONE proposal when the channel is idle
 * (a channel has at most one proposal in flight): under load, each update carries a batch.
 * Queued operations are checked against the channel first, so a single bad one (an expired lock,
 * a payment above the balance) is failed alone instead of sinking its batch.
 *
 * `transferTransition(state, input, ctx)` is pure: time, signing and the channel copies come in
 * through `ctx`; the result is a new state and effects for the engine, or an error (nothing changed).
 */
import { DEFAULT_POLICY, available, checkOps, type ChannelData, type ChannelError, type Deps, type Op, type Policy } from "./channel.js";
import { normalizeAddress, secretHash as hashSecret } from "./eip712.js";
import {
  isAddress,
  isHexOf,
  secretRequestSigner,
  signSecretRequest,
  transferMessageProblem,
  type LockedTransfer,
  type SecretRequest,
  type SecretReveal,
  type TransferMessage,
} from "./transfer-messages.js";
import type { Address, Hex } from "./types.js";
import type { Signer, Verifier } from "../signer/types.js";

export * from "./transfer-messages.js";

// ------------------------------------------------------------------ policy

export interface TransferPolicy {
  /** Lifetime of the payer's own lock. */
  initiatorLockSeconds: bigint;
  /** How much earlier each forwarded lock expires than the one it forwards. */
  revealTimeout: bigint;
  /** How long before a received lock's expiry its known secret goes on chain if still not unlocked. */
  dangerZoneSeconds: bigint;
  /** A lock is only forwarded (or claimed) if it leaves at least this long. */
  minLockSeconds: bigint;
  /** Interval for re-sending LockedTransfer and SecretRequest while a lock waits. */
  retrySeconds: bigint;
  /**
   * How long a receiver that showed a lock's secret to its sender waits for the sender to settle
   * it before unlocking it itself. Longer than payments queue under load (or both sides propose
   * at once, the conflict this avoids); far shorter than a lock's life.
   */
  settleSeconds: bigint;
  /** Most operations in one channel update. */
  maxOpsPerUpdate: number;
}

/**
 * The margins, from the mediator's side of one hop (incoming lock expires at T, outgoing T - 120):
 *   - The mediator learns the secret by T - 120 at the latest (the payee must unlock before its
 *     lock expires). It then has until T - 60 to get the upstream unlock signed, and if that
 *     fails, the danger zone's 60 s to get the secret registered on chain before T (the contract
 *     pays a lock after settle iff its secret was registered before the lock expired).
 *   - 600 s for the payer leaves room for 4 forwarding hops (600 - 4 * 120 = 120 >= 60).
 *   - 60 s minimum, twice the channel's 30 s `minLockSeconds`, so a lock that passes here is not
 *     refused by the partner for a few seconds of latency or clock skew.
 */
export const DEFAULT_TRANSFER_POLICY: TransferPolicy = {
  initiatorLockSeconds: 600n,
  revealTimeout: 120n,
  dangerZoneSeconds: 60n,
  minLockSeconds: 60n,
  retrySeconds: 10n,
  settleSeconds: 60n,
  maxOpsPerUpdate: 100,
};

/** What is inconsistent in a transfer policy given the channel policy; empty if nothing. */
export function transferPolicyProblems(p: TransferPolicy, channel: Policy = DEFAULT_POLICY): string[] {
  const problems: string[] = [];
  if (p.minLockSeconds < channel.minLockSeconds) {
    problems.push(`minLockSeconds ${p.minLockSeconds} is below the channel's ${channel.minLockSeconds}`);
  }
  if (p.initiatorLockSeconds > channel.maxLockSeconds) {
    problems.push(`initiatorLockSeconds ${p.initiatorLockSeconds} exceeds the channel's maxLockSeconds ${channel.maxLockSeconds}`);
  }
  if (p.initiatorLockSeconds < p.minLockSeconds + p.revealTimeout) {
    problems.push("initiatorLockSeconds leaves no room for a single forwarding hop");
  }
  if (p.dangerZoneSeconds <= 0n || p.dangerZoneSeconds >= p.revealTimeout) {
    problems.push("dangerZoneSeconds must be positive and below revealTimeout, or a mediator cannot unlock upstream in time");
  }
  if (p.retrySeconds <= 0n) problems.push("retrySeconds must be positive");
  if (p.settleSeconds <= 0n) problems.push("settleSeconds must be positive");
  if (!Number.isInteger(p.maxOpsPerUpdate) || p.maxOpsPerUpdate < 1) problems.push("maxOpsPerUpdate must be a positive integer");
  return problems;
}

// ------------------------------------------------------------------ state

/** Identifies a lock: a channel never holds two pending locks with one secret hash. */
export type LockKey = string;

export const lockKey = (channelId: Hex, secretHash: Hex): LockKey => `${channelId.toLowerCase()}:${secretHash.toLowerCase()}`;

const lower = (h: Hex): Hex => h.toLowerCase() as Hex;

export interface OutgoingPayment {
  direction: "out";
  /** transfer: HTLC payment to any target; issue: plain payment to the channel partner. */
  kind: "transfer" | "issue";
  paymentId: Hex;
  target: Address;
  amount: bigint;
  channelId: Hex;
  secretHash: Hex | null;
  /** The payer's own secret, kept as proof of payment. */
  secret: Hex | null;
  expiry: bigint | null;
  status: "pending" | "completed" | "failed";
  reason: string | null;
}

export interface IncomingPayment {
  direction: "in";
  kind: "transfer" | "issue";
  paymentId: Hex;
  /** For a transfer, as its routing metadata claims (relayed, so not authenticated). */
  initiator: Address;
  amount: bigint;
  channelId: Hex;
  secretHash: Hex | null;
  expiry: bigint | null;
  status: "pending" | "received" | "failed";
  reason: string | null;
}

export type Payment = OutgoingPayment | IncomingPayment;

/** A lock this node sends (as payer or mediator). */
export interface SentLock {
  channelId: Hex;
  secretHash: Hex;
  amount: bigint;
  expiry: bigint;
  paymentId: Hex;
  /**
   * proposing: queued or in an unanswered proposal; locked: fully signed; settling: its receiver
   * showed the secret and this node's unlock is queued or proposed; expiring: removal queued or proposed.
   */
  stage: "proposing" | "locked" | "settling" | "expiring";
  /** The received lock this one forwards, or null for the payer's own lock. */
  upstream: LockKey | null;
  meta: LockedTransfer;
  metaSentAt: bigint | null;
  /** Chain time its secret was registered on chain, once seen: at or before `expiry`, the lock is the receiver's. */
  revealedAt?: bigint;
  /** The secret, shown by the receiver while this node's proposal of the lock was unanswered: settled once signed. */
  shownSecret?: Hex;
}

/** A fully signed lock this node receives (as mediator or target). */
export interface ReceivedLock {
  channelId: Hex;
  secretHash: Hex;
  amount: bigint;
  expiry: bigint;
  paymentId: Hex;
  /**
   * unlocking: unlock queued or proposed; asked: the secret was shown to the sender, which settles
   * (at `askedAt`); lost: the unlock was refused (too late), the partner will expire it.
   */
  stage: "locked" | "unlocking" | "asked" | "lost";
  askedAt?: bigint;
  meta: LockedTransfer | null;
  /** waiting: no routing metadata yet; refused: not forwarded, left to expire upstream. */
  role: "waiting" | "target" | "mediator" | "refused";
  downstream: LockKey | null;
  requestedAt: bigint | null;
  /** Chain time its secret was registered on chain, once seen: at or before `expiry`, the lock is this node's. */
  revealedAt?: bigint;
}

export interface TransferState {
  /**
   * Outgoing payments in flight, by payment id. A finished one leaves with its paymentSent or
   * paymentFailed effect; the shell keeps it by id, so that a repeated id pays once.
   */
  readonly payments: ReadonlyMap<Hex, OutgoingPayment>;
  /** Incoming transfers in flight, by lock key; finished ones leave with their effect. */
  readonly incoming: ReadonlyMap<string, IncomingPayment>;
  /** Known secrets by secret hash, while a pending lock needs them. */
  readonly secrets: ReadonlyMap<Hex, Hex>;
  readonly sent: ReadonlyMap<LockKey, SentLock>;
  readonly received: ReadonlyMap<LockKey, ReceivedLock>;
  /** Routing metadata that arrived before its lock was signed. */
  readonly metadata: ReadonlyMap<LockKey, LockedTransfer>;
  /** Operations waiting for their channel to be idle, by channel id. */
  readonly queues: ReadonlyMap<Hex, readonly Op[]>;
  /** Secret hashes already handed to the chain (danger zone), with when. */
  readonly registered: ReadonlyMap<Hex, bigint>;
  /** This node's open invoices by secret hash: a lock for one is claimed without asking its payer. */
  readonly invoices: ReadonlyMap<Hex, Invoice>;
}

/**
 * A payment this node asks for: it made the secret and hands out its hash. A lock with that hash,
 * of at least `amount`, addressed to this node, is unlocked at once: no SecretRequest/SecretReveal
 * round with the payer, and the unlock the payer receives is its receipt (it carries the secret).
 */
export interface Invoice {
  secretHash: Hex;
  secret: Hex;
  amount: bigint;
  /** Unix seconds after which a lock for it is no longer claimed this way (the invoice is dropped). */
  expiresAt: bigint;
}

export function newTransferState(): TransferState {
  return {
    payments: new Map(),
    incoming: new Map(),
    secrets: new Map(),
    sent: new Map(),
    received: new Map(),
    metadata: new Map(),
    queues: new Map(),
    registered: new Map(),
    invoices: new Map(),
  };
}

/** Incoming payments carrying `paymentId` (ids are the payer's choice, so several may share one). */
export function incomingByPaymentId(state: TransferState, paymentId: Hex): IncomingPayment[] {
  const id = lower(paymentId);
  return [...state.incoming.values()].filter((p) => p.paymentId === id);
}

// ------------------------------------------------------------------ inputs, effects, context

export interface TransferContext {
  /** Unix seconds. */
  now: bigint;
  signer: Signer;
  verifier: Verifier;
  policy: TransferPolicy;
  channelPolicy: Policy;
  /** This node's copy of a channel. */
  channel(channelId: Hex): ChannelData | undefined;
  /** The channel to forward a lock for `target` into: the one with `target`, or towards its hub. */
  routeFor(target: Address): Hex | null;
  /** The peer a transfer message for `to` is handed to first (as `sendTransfer` is routed), or null. */
  nextHop(to: Address): Address | null;
  /** Change the state in place, logged by this ledger (see {@link TransferLedger}); copy on write without. */
  ledger?: TransferLedger;
}

export type TransferInput =
  /**
   * Pay `target` through `channelId` (with the hub). Either `secret`, 32 random bytes from the
   * caller (revealed to the target once it asks), or `secretHash`, from the target's invoice.
   */
  | { type: "pay"; paymentId: Hex; target: Address; amount: bigint; channelId: Hex; secret?: Hex; secretHash?: Hex }
  /** Ask for a payment: remember `secret` (32 random bytes from the caller) as an invoice. */
  | { type: "invoice"; secret: Hex; amount: bigint; expiresAt: bigint }
  /** Pay the channel partner directly (a hub's issuance): a plain RSMC update, no lock. */
  | { type: "issue"; paymentId: Hex; target: Address; amount: bigint; channelId: Hex }
  /** A channel `updated` effect: these operations are now in a fully signed state. */
  | { type: "channelUpdated"; channelId: Hex; nonce: bigint; byMe: boolean; ops: readonly Op[] }
  /** A channel `proposalDropped` effect: these operations must be proposed again. */
  | { type: "proposalDropped"; channelId: Hex; ops: readonly Op[] }
  /** The channel refused a `propose` effect. */
  | { type: "proposalFailed"; channelId: Hex; ops: readonly Op[]; error: ChannelError }
  /** A transfer message; `from` is the authenticated peer it came from, `to` its final recipient. */
  | { type: "receive"; from: Address; to: Address; message: TransferMessage }
  /** A secret seen in the chain's SecretRegistry (at chain time `revealedAt`): claim every received lock it opens. */
  | { type: "secretRevealed"; secret: Hex; revealedAt?: bigint }
  /** Propose the payer's settles held back for batching (see {@link TransferEffect} `settlesHeld`). */
  | { type: "flushSettles" }
  | { type: "tick" };

export type TransferEffect =
  | { type: "propose"; channelId: Hex; ops: Op[] }
  /** Deliver `message` to `to`, its final recipient (the engine picks the next hop). */
  | { type: "sendTransfer"; to: Address; message: TransferMessage }
  /** Register the secret on chain: a received lock is near expiry and not yet unlocked off chain. */
  | { type: "registerSecret"; secret: Hex; secretHash: Hex }
  | { type: "paymentSent"; payment: OutgoingPayment }
  | { type: "paymentReceived"; payment: IncomingPayment }
  | { type: "paymentFailed"; payment: Payment; reason: string }
  /**
   * A payer's settle (the unlock of the lock of its own completed payment) was held back to ride
   * with the channel's next proposal: input `flushSettles` soon (a tick proposes it too).
   */
  | { type: "settlesHeld" };

export type TransferErrorCode =
  | "BAD_INPUT"
  | "UNKNOWN_CHANNEL"
  | "CHANNEL_NOT_OPEN"
  | "NOT_PARTNER"
  | "SELF_PAYMENT"
  | "PAYMENT_ID_CONFLICT"
  | "DUPLICATE_SECRET"
  | "INSUFFICIENT_BALANCE"
  | "UNKNOWN_PAYMENT"
  | "PAYMENT_NOT_PENDING"
  | "REQUEST_MISMATCH"
  | "NOT_FROM_TARGET"
  | "TOO_LATE";

export interface TransferError {
  code: TransferErrorCode;
  message: string;
}

export type TransferResult =
  | { ok: true; state: TransferState; effects: TransferEffect[]; payment?: OutgoingPayment }
  | { ok: false; error: TransferError };

type Rejected = { ok: false; error: TransferError };

const reject = (code: TransferErrorCode, message: string): Rejected => ({ ok: false, error: { code, message } });

// ------------------------------------------------------------------ working copy

type Writable<M> = M extends ReadonlyMap<infer K, infer V> ? Map<K, V> : never;
type Tables = { [K in keyof TransferState]: Writable<TransferState[K]> };
type KeyOf<M> = M extends ReadonlyMap<infer K, unknown> ? K : never;
type ValueOf<M> = M extends ReadonlyMap<unknown, infer V> ? V : never;
/** What a transition does to a table: a Map (copy-on-write), or the ledger's in-place writer. */
interface TableWriter<K, V> {
  set(key: K, value: V): unknown;
  delete(key: K): unknown;
  /**
   * Sets `key` without reporting it changed: the value is stored with the entry's next reported
   * change, and a crash before then forgets it. Only for bookkeeping that nothing depends on
   * surviving a restart.
   */
  setUnstored(key: K, value: V): unknown;
}
type Writers = { [T in keyof TransferState]: TableWriter<KeyOf<TransferState[T]>, ValueOf<TransferState[T]>> };
export type TransferTable = keyof TransferState;
/** Entries a step changed, by table: the shell writes exactly these (an absent entry is a delete). */
export type TransferChanges = ReadonlyMap<TransferTable, ReadonlySet<string>>;

interface Change {
  map: Map<string, unknown>;
  table: TransferTable;
  key: string;
  had: boolean;
  old: unknown;
}

/**
 * In-place mode for an owner that only ever keeps the newest transfer state (NodeCore): with a
 * ledger in the context, a transition changes the state's tables in place instead of copying
 * each one it touches (a copy is O(payments in flight), paid on almost every input of a busy
 * hub). The ledger logs every change, so a refused input, or a step that fails later, is undone
 * exactly; collects the changed entries, so the shell persists only those; and indexes locks by
 * secret hash, so finding a secret's locks does not scan them all.
 *
 * Without a ledger a transition never touches the state it is given (copy on write), as before.
 */
export class TransferLedger {
  #log: Change[] = [];
  /** Per table: its map, and each changed key with whether it existed before its first change. */
  #dirty = new Map<TransferTable, { map: ReadonlyMap<string, unknown>; existed: Map<string, boolean> }>();
  readonly #byHash = { sent: new Map<string, Set<LockKey>>(), received: new Map<string, Set<LockKey>>() };

  /** Tracks `state`, whose tables (Maps) transitions with this ledger will change in place. */
  constructor(state: TransferState) {
    for (const table of ["sent", "received"] as const) {
      for (const [key, lock] of state[table]) this.#index(table, key, lock.secretHash, true);
    }
  }

  /** A point to roll back to. */
  mark(): number {
    return this.#log.length;
  }

  /** Undoes every change made since `mark`. */
  rollback(mark: number): void {
    while (this.#log.length > mark) {
      const c = this.#log.pop()!;
      this.#write(c.map, c.table, c.key, c.had, c.old);
    }
  }

  /** Forgets the undo log: what happened so far is final. */
  settle(): void {
    if (this.#log.length > 0) this.#log = [];
  }

  /**
   * The entries changed since the last call. An entry added and removed again in between is not
   * one: it was never stored, so there is nothing to delete (routing metadata that arrives with
   * its lock is such an entry).
   */
  takeChanges(): TransferChanges | null {
    if (this.#dirty.size === 0) return null;
    const changes = new Map<TransferTable, Set<string>>();
    for (const [table, { map, existed }] of this.#dirty) {
      const keys = new Set<string>();
      for (const [key, had] of existed) if (had || map.has(key)) keys.add(key);
      if (keys.size > 0) changes.set(table, keys);
    }
    this.#dirty = new Map();
    return changes;
  }

  /** Keys of the locks in `table` whose secret hash is `secretHash` (a copy: safe to change the table meanwhile). */
  withHash(table: "sent" | "received", secretHash: string): LockKey[] {
    const keys = this.#byHash[table].get(secretHash);
    return keys ? [...keys] : [];
  }

  hasHash(table: "sent" | "received", secretHash: string): boolean {
    return this.#byHash[table].has(secretHash);
  }

  writer<T extends TransferTable>(state: TransferState, table: T): Writers[T] {
    const map = state[table] as unknown as Map<string, unknown>;
    const w: TableWriter<string, unknown> = {
      set: (key, value) => this.#change(map, table, key, true, value),
      delete: (key) => this.#change(map, table, key, false, undefined),
      setUnstored: (key, value) => {
        this.#log.push({ map, table, key, had: map.has(key), old: map.get(key) });
        this.#write(map, table, key, true, value);
      },
    };
    return w as unknown as Writers[T];
  }

  #change(map: Map<string, unknown>, table: TransferTable, key: string, has: boolean, value: unknown): void {
    const had = map.has(key);
    if (!had && !has) return;
    this.#log.push({ map, table, key, had, old: map.get(key) });
    let dirty = this.#dirty.get(table);
    if (!dirty) this.#dirty.set(table, (dirty = { map, existed: new Map() }));
    if (!dirty.existed.has(key)) dirty.existed.set(key, had);
    this.#write(map, table, key, has, value);
  }

  #write(map: Map<string, unknown>, table: TransferTable, key: string, has: boolean, value: unknown): void {
    if (table === "sent" || table === "received") {
      const old = map.get(key) as { secretHash: string } | undefined;
      const hash = has ? (value as { secretHash: string }).secretHash : undefined;
      // A lock changing stage keeps its secret hash: its index entry stays as it is.
      if (old?.secretHash !== hash) {
        if (old) this.#index(table, key, old.secretHash, false);
        if (hash !== undefined) this.#index(table, key, hash, true);
      }
    }
    if (has) map.set(key, value);
    else map.delete(key);
  }

  #index(table: "sent" | "received", key: LockKey, secretHash: string, add: boolean): void {
    const index = this.#byHash[table];
    const keys = index.get(secretHash);
    if (add) {
      if (keys) keys.add(key);
      else index.set(secretHash, new Set([key]));
    } else if (keys) {
      keys.delete(key);
      if (keys.size === 0) index.delete(secretHash);
    }
  }
}

/** The transition's view of the state: copy-on-write (each table copied at most once), or in place through a ledger. */
class Work {
  readonly effects: TransferEffect[] = [];
  readonly me: Address;
  readonly now: bigint;
  private readonly copies: Partial<Tables> = {};
  private readonly ledger: TransferLedger | undefined;
  private readonly writers: Partial<Writers> = {};
  private changed = false;

  constructor(
    private readonly base: TransferState,
    readonly ctx: TransferContext,
  ) {
    this.me = normalizeAddress(ctx.signer.address);
    this.now = ctx.now;
    this.ledger = ctx.ledger;
  }

  get<K extends keyof TransferState>(key: K): TransferState[K] {
    return (this.copies[key] ?? this.base[key]) as TransferState[K];
  }

  mut<K extends keyof TransferState>(key: K): Writers[K] {
    if (this.ledger) {
      this.changed = true;
      return (this.writers[key] ??= this.ledger.writer(this.base, key));
    }
    const existing = this.copies[key];
    if (existing) return existing as unknown as Writers[K];
    const copy = new Map(this.base[key] as ReadonlyMap<unknown, unknown>) as Tables[K];
    this.copies[key] = copy;
    return copy as unknown as Writers[K];
  }

  /** Keys of the locks in `table` with this secret hash. */
  withHash(table: "sent" | "received", secretHash: Hex): LockKey[] {
    if (this.ledger) return this.ledger.withHash(table, secretHash);
    const keys: LockKey[] = [];
    for (const [key, l] of this.get(table)) if (l.secretHash === secretHash) keys.push(key);
    return keys;
  }

  hasHash(table: "sent" | "received", secretHash: Hex): boolean {
    if (this.ledger) return this.ledger.hasHash(table, secretHash);
    for (const l of this.get(table).values()) if (l.secretHash === secretHash) return true;
    return false;
  }

  emit(effect: TransferEffect): void {
    this.effects.push(effect);
  }

  finish(): TransferState {
    // In place the tables are the same objects: a new top-level object still says "changed".
    if (this.ledger) return this.changed ? { ...this.base } : this.base;
    return Object.keys(this.copies).length === 0 ? this.base : { ...this.base, ...this.copies };
  }
}

// ------------------------------------------------------------------ transition

export function transferTransition(state: TransferState, input: TransferInput, ctx: TransferContext): TransferResult {
  const ledger = ctx.ledger;
  if (!ledger) return transitionOnce(state, input, ctx);
  // In place: a refused input (or one that throws) must leave the state as it was.
  const mark = ledger.mark();
  try {
    const r = transitionOnce(state, input, ctx);
    if (!r.ok) ledger.rollback(mark);
    return r;
  } catch (err) {
    ledger.rollback(mark);
    throw err;
  }
}

function transitionOnce(state: TransferState, input: TransferInput, ctx: TransferContext): TransferResult {
  const w = new Work(state, ctx);
  let payment: OutgoingPayment | undefined;
  switch (input.type) {
    case "pay": {
      const r = pay(w, input);
      if (!r.ok) return r;
      payment = r.payment;
      break;
    }
    case "invoice": {
      const r = invoice(w, input);
      if (!r.ok) return r;
      break;
    }
    case "issue": {
      const r = issue(w, input);
      if (!r.ok) return r;
      payment = r.payment;
      break;
    }
    case "channelUpdated":
      for (const op of input.ops) {
        if (input.byMe) myOpSigned(w, input.channelId, op);
        else partnerOpSigned(w, input.channelId, op);
      }
      break;
    case "proposalDropped":
      requeue(w, input.channelId, input.ops);
      break;
    case "proposalFailed":
      if (input.error.code === "BUSY") requeue(w, input.channelId, input.ops);
      else for (const op of input.ops) rejectOp(w, input.channelId, op, input.error);
      break;
    case "receive": {
      const r = receive(w, input.from, input.to, input.message);
      if (!r.ok) return r;
      break;
    }
    case "secretRevealed": {
      if (!isHexOf(input.secret, 32)) return reject("BAD_INPUT", "secret must be 32 bytes of hex");
      const secret = lower(input.secret);
      const secretHash = hashSecret(secret);
      if (input.revealedAt !== undefined) markRevealed(w, secretHash, input.revealedAt);
      learnSecret(w, secret, secretHash, true);
      // Already on chain: the danger zone need not register it again.
      if (w.get("secrets").has(secretHash) && !w.get("registered").has(secretHash)) w.mut("registered").set(secretHash, w.now);
      break;
    }
    case "flushSettles":
      break;
    case "tick":
      tick(w);
      break;
  }
  // After a refusal the channel state that caused it has not changed: proposing again would loop.
  if (input.type !== "proposalFailed") flush(w, input.type === "flushSettles" || input.type === "tick");
  return payment ? { ok: true, state: w.finish(), effects: w.effects, payment } : { ok: true, state: w.finish(), effects: w.effects };
}

// ------------------------------------------------------------------ initiator

type Paid = { ok: true; payment: OutgoingPayment } | Rejected;

function openChannel(w: Work, channelId: Hex): { ok: true; channel: ChannelData } | Rejected {
  const c = w.ctx.channel(channelId);
  if (!c) return reject("UNKNOWN_CHANNEL", `no channel ${channelId}`);
  if (c.status !== "open" || c.closeTerms) return reject("CHANNEL_NOT_OPEN", `channel ${channelId} is ${c.status}`);
  return { ok: true, channel: c };
}

function checkNewPayment(i: { paymentId: unknown; target: unknown; amount: unknown; channelId: unknown }): Rejected | null {
  if (!isHexOf(i.paymentId, 32)) return reject("BAD_INPUT", "paymentId must be 32 bytes of hex");
  if (!isHexOf(i.channelId, 32)) return reject("BAD_INPUT", "channelId must be 32 bytes of hex");
  if (!isAddress(i.target)) return reject("BAD_INPUT", "target must be an address");
  if (typeof i.amount !== "bigint" || i.amount <= 0n) return reject("BAD_INPUT", "amount must be a positive integer");
  return null;
}

/** A repeated payment id is the same payment (pay once) if it asks for the same thing. */
function existingPayment(w: Work, paymentId: Hex, want: Pick<OutgoingPayment, "kind" | "target" | "amount" | "channelId">): Paid | null {
  const p = w.get("payments").get(paymentId);
  if (!p) return null;
  if (p.kind !== want.kind || p.target !== want.target || p.amount !== want.amount || p.channelId !== want.channelId) {
    return reject("PAYMENT_ID_CONFLICT", `payment ${paymentId} already exists with other parameters`);
  }
  return { ok: true, payment: p };
}

const outgoingAmount = (ops: readonly Op[]): bigint =>
  ops.reduce((sum, op) => (op.type === "lock" || op.type === "pay" ? sum + op.amount : sum), 0n);

/** What this node can still commit in a channel, counting operations queued or in flight. */
function spendable(w: Work, c: ChannelData): bigint {
  const queued = w.get("queues").get(lower(c.config.channelId)) ?? [];
  return available(c, c.config.me) - outgoingAmount(queued) - outgoingAmount(c.inflight?.ops ?? []);
}

function pay(w: Work, i: Extract<TransferInput, { type: "pay" }>): Paid {
  const bad = checkNewPayment(i);
  if (bad) return bad;
  if ((i.secret === undefined) === (i.secretHash === undefined)) {
    return reject("BAD_INPUT", "give either a secret or an invoice's secret hash");
  }
  if (i.secret !== undefined && !isHexOf(i.secret, 32)) return reject("BAD_INPUT", "secret must be 32 bytes of hex");
  if (i.secretHash !== undefined && !isHexOf(i.secretHash, 32)) return reject("BAD_INPUT", "secretHash must be 32 bytes of hex");
  const paymentId = lower(i.paymentId);
  const channelId = lower(i.channelId);
  const target = normalizeAddress(i.target);
  const seen = existingPayment(w, paymentId, { kind: "transfer", target, amount: i.amount, channelId });
  if (seen) return seen;
  const open = openChannel(w, channelId);
  if (!open.ok) return open;
  const c = open.channel;
  if (target === w.me) return reject("SELF_PAYMENT", "cannot pay oneself");
  // Paying an invoice, this node does not know the secret: the target does, and unlocks at once.
  const secret = i.secret === undefined ? null : lower(i.secret);
  const secretHash = secret === null ? lower(i.secretHash as Hex) : hashSecret(secret);
  const key = lockKey(channelId, secretHash);
  if (w.get("secrets").has(secretHash) || w.get("sent").has(key) || w.get("invoices").has(secretHash)) {
    return reject("DUPLICATE_SECRET", "this secret is already in use; every payment needs a fresh one");
  }
  const free = spendable(w, c);
  if (i.amount > free) return reject("INSUFFICIENT_BALANCE", `payment of ${i.amount} exceeds the available ${free}`);
  const expiry = w.now + w.ctx.policy.initiatorLockSeconds;
  const payment: OutgoingPayment = {
    direction: "out",
    kind: "transfer",
    paymentId,
    target,
    amount: i.amount,
    channelId,
    secretHash,
    secret,
    expiry,
    status: "pending",
    reason: null,
  };
  const amount = i.amount;
  const meta: LockedTransfer = { type: "LockedTransfer", channelId, paymentId, initiator: w.me, target, amount, secretHash, expiry };
  w.mut("payments").set(paymentId, payment);
  if (secret !== null) w.mut("secrets").set(secretHash, secret);
  w.mut("sent").set(key, { channelId, secretHash, amount, expiry, paymentId, stage: "proposing", upstream: null, meta, metaSentAt: null });
  enqueue(w, channelId, { type: "lock", amount, expiry, secretHash, paymentId });
  return { ok: true, payment };
}

function invoice(w: Work, i: Extract<TransferInput, { type: "invoice" }>): { ok: true } | Rejected {
  if (!isHexOf(i.secret, 32)) return reject("BAD_INPUT", "secret must be 32 bytes of hex");
  if (typeof i.amount !== "bigint" || i.amount <= 0n) return reject("BAD_INPUT", "amount must be a positive integer");
  if (typeof i.expiresAt !== "bigint" || i.expiresAt <= w.now) return reject("BAD_INPUT", "expiresAt must be in the future");
  const secret = lower(i.secret);
  const secretHash = hashSecret(secret);
  if (w.get("invoices").has(secretHash) || w.get("secrets").has(secretHash) || w.hasHash("received", secretHash) || w.hasHash("sent", secretHash)) {
    return reject("DUPLICATE_SECRET", "this secret is already in use; every invoice needs a fresh one");
  }
  w.mut("invoices").set(secretHash, { secretHash, secret, amount: i.amount, expiresAt: i.expiresAt });
  return { ok: true };
}

function issue(w: Work, i: Extract<TransferInput, { type: "issue" }>): Paid {
  const bad = checkNewPayment(i);
  if (bad) return bad;
  const paymentId = lower(i.paymentId);
  const channelId = lower(i.channelId);
  const target = normalizeAddress(i.target);
  const seen = existingPayment(w, paymentId, { kind: "issue", target, amount: i.amount, channelId });
  if (seen) return seen;
  const open = openChannel(w, channelId);
  if (!open.ok) return open;
  const c = open.channel;
  if (partnerOf(c) !== target) return reject("NOT_PARTNER", `${target} is not the partner in channel ${channelId}`);
  const free = spendable(w, c);
  if (i.amount > free) return reject("INSUFFICIENT_BALANCE", `payment of ${i.amount} exceeds the available ${free}`);
  const payment: OutgoingPayment = {
    direction: "out",
    kind: "issue",
    paymentId,
    target,
    amount: i.amount,
    channelId,
    secretHash: null,
    secret: null,
    expiry: null,
    status: "pending",
    reason: null,
  };
  w.mut("payments").set(paymentId, payment);
  enqueue(w, channelId, { type: "pay", amount: i.amount, paymentId });
  return { ok: true, payment };
}

function finishOutgoing(w: Work, paymentId: Hex, status: "completed" | "failed", reason: string | null, secret?: Hex): void {
  const p = w.get("payments").get(paymentId);
  if (!p || p.status !== "pending") return;
  // An invoice's payer learns the secret from the unlock: its proof of payment.
  const done: OutgoingPayment = { ...p, status, reason, ...(p.secret === null && secret !== undefined ? { secret } : {}) };
  // Finished payments leave the working state (kept O(in-flight)); the shell stores them by id.
  w.mut("payments").delete(paymentId);
  if (status === "completed") w.emit({ type: "paymentSent", payment: done });
  else w.emit({ type: "paymentFailed", payment: done, reason: reason ?? "failed" });
}

function finishIncoming(w: Work, key: string, status: "received" | "failed", reason: string | null): void {
  const p = w.get("incoming").get(key);
  if (!p || p.status !== "pending") return;
  const done: IncomingPayment = { ...p, status, reason };
  w.mut("incoming").delete(key);
  if (status === "received") w.emit({ type: "paymentReceived", payment: done });
  else w.emit({ type: "paymentFailed", payment: done, reason: reason ?? "failed" });
}

// ------------------------------------------------------------------ signed operations

/** An operation this node proposed is now fully signed. */
function myOpSigned(w: Work, channelId: Hex, op: Op): void {
  switch (op.type) {
    case "lock": {
      const key = lockKey(channelId, op.secretHash);
      const s = w.get("sent").get(key);
      if (!s || s.stage !== "proposing") return;
      const locked: SentLock = { ...s, stage: "locked" };
      w.mut("sent").set(key, locked);
      if (s.shownSecret !== undefined) settle(w, key, locked, s.shownSecret);
      return;
    }
    case "pay": {
      const p = w.get("payments").get(lower(op.paymentId));
      if (p && p.kind === "issue" && lower(p.channelId) === lower(channelId)) finishOutgoing(w, p.paymentId, "completed", null);
      return;
    }
    case "unlock":
      unlocked(w, channelId, lower(op.secret));
      return;
    case "expire": {
      const key = lockKey(channelId, op.secretHash);
      const s = w.get("sent").get(key);
      if (!s) return;
      w.mut("sent").delete(key);
      if (s.upstream === null) finishOutgoing(w, s.paymentId, "failed", "lock expired; refunded");
      pruneSecret(w, s.secretHash);
      return;
    }
  }
}

/** An operation the partner proposed is now fully signed (this node countersigned it). */
function partnerOpSigned(w: Work, channelId: Hex, op: Op): void {
  const c = w.ctx.channel(channelId);
  switch (op.type) {
    case "lock": {
      const secretHash = lower(op.secretHash);
      const key = lockKey(channelId, secretHash);
      if (w.get("received").has(key)) return;
      let lock: ReceivedLock = {
        channelId: lower(channelId),
        secretHash,
        amount: op.amount,
        expiry: op.expiry,
        paymentId: lower(op.paymentId),
        stage: "locked",
        meta: null,
        role: "waiting",
        downstream: null,
        requestedAt: null,
      };
      const meta = w.get("metadata").get(key);
      if (meta) {
        w.mut("metadata").delete(key);
        if (metaMatches(meta, lock)) lock = { ...lock, meta };
      }
      w.mut("received").set(key, lock);
      const secret = w.get("secrets").get(secretHash);
      // Known already: the unlock rides on this node's countersignature.
      if (secret !== undefined) learnSecret(w, secret, secretHash, false);
      else if (lock.meta) route(w, key);
      return;
    }
    case "pay": {
      if (!c) return;
      const paymentId = lower(op.paymentId);
      const payment: IncomingPayment = {
        direction: "in",
        kind: "issue",
        paymentId,
        initiator: partnerOf(c),
        amount: op.amount,
        channelId: lower(channelId),
        secretHash: null,
        expiry: null,
        status: "received",
        reason: null,
      };
      w.emit({ type: "paymentReceived", payment });
      return;
    }
    case "unlock":
      unlocked(w, channelId, lower(op.secret));
      return;
    case "expire": {
      const key = lockKey(channelId, op.secretHash);
      if (!w.get("received").has(key)) return;
      w.mut("received").delete(key);
      finishIncoming(w, key, "failed", "lock expired before it was unlocked");
      pruneSecret(w, lower(op.secretHash));
      return;
    }
  }
}

/** A lock's unlock is fully signed (whichever side proposed it): the lock is paid. */
function unlocked(w: Work, channelId: Hex, secret: Hex): void {
  const hash = hashSecret(secret);
  const key = lockKey(channelId, hash);
  const s = w.get("sent").get(key);
  if (s) {
    w.mut("sent").delete(key);
    if (s.upstream === null) finishOutgoing(w, s.paymentId, "completed", null, secret);
  }
  if (w.get("received").has(key)) {
    w.mut("received").delete(key);
    finishIncoming(w, key, "received", null);
  }
  // A mediator now holds the secret of its upstream lock.
  learnSecret(w, secret, hash, true);
  pruneSecret(w, hash);
}

const metaMatches = (m: LockedTransfer, l: ReceivedLock): boolean =>
  lower(m.channelId) === l.channelId &&
  lower(m.paymentId) === l.paymentId &&
  lower(m.secretHash) === l.secretHash &&
  m.amount === l.amount &&
  m.expiry === l.expiry;

// ------------------------------------------------------------------ secrets

/**
 * Claims every received lock with this hash that can still be claimed. With `askSender`, the
 * lock's sender is left to settle it (see the top of this file): shown the secret, unless
 * `knownTo` (a peer that sent or relayed it to this node) is that sender already; a lock too close
 * to its expiry to wait for that, and every lock without `askSender`, is unlocked by this node.
 */
function learnSecret(w: Work, secret: Hex, secretHash: Hex, askSender: boolean, knownTo: Address | null = null): void {
  let useful = false;
  const { settleSeconds, dangerZoneSeconds } = w.ctx.policy;
  for (const key of w.withHash("received", secretHash)) {
    const r = w.get("received").get(key);
    if (!r) continue;
    useful = true;
    if (r.stage !== "locked" || (w.now > r.expiry && !claimedOnChain(r))) continue;
    const c = askSender && w.now + settleSeconds + dangerZoneSeconds < r.expiry ? w.ctx.channel(r.channelId) : undefined;
    if (c) {
      w.mut("received").set(key, { ...r, stage: "asked", askedAt: w.now });
      const sender = partnerOf(c);
      if (sender !== knownTo) w.emit({ type: "sendTransfer", to: sender, message: { type: "SecretReveal", paymentId: r.paymentId, secret } });
    } else {
      unlockReceived(w, key, r, secret);
    }
  }
  if (useful && !w.get("secrets").has(secretHash)) w.mut("secrets").set(secretHash, secret);
}

function unlockReceived(w: Work, key: LockKey, r: ReceivedLock, secret: Hex): void {
  w.mut("received").set(key, { ...r, stage: "unlocking" });
  enqueue(w, r.channelId, { type: "unlock", secret });
}

/**
 * `knower`, the receiver of this node's locks with this hash in their channel, knows their secret
 * (it showed it, or this node is passing it on to it): it can claim them anyway, so this node pays
 * them now (proposing the unlock itself keeps a payer's channel one-sided). For the payer the
 * payment is done: the secret is its receipt.
 */
function settleSent(w: Work, knower: Address, secret: Hex, secretHash: Hex): void {
  for (const key of w.withHash("sent", secretHash)) {
    const s = w.get("sent").get(key);
    if (!s) continue;
    const c = w.ctx.channel(s.channelId);
    if (!c || partnerOf(c) !== knower) continue;
    if (s.stage === "locked") settle(w, key, s, secret);
    // The partner holds it signed, this node not yet (its countersignature is late): settle once it does.
    else if (s.stage === "proposing") w.mut("sent").set(key, { ...s, shownSecret: secret });
  }
}

/** This node sends the secret towards `to`: the first hop learns it, and can claim this node's locks to it. */
function settlePassingOn(w: Work, to: Address, secret: Hex, secretHash: Hex): void {
  const hop = w.ctx.nextHop(to);
  if (hop !== null) settleSent(w, hop, secret, secretHash);
}

function settle(w: Work, key: LockKey, s: SentLock, secret: Hex): void {
  // Too close to its expiry to settle off chain safely: the receiver's claim (off chain or on
  // chain in time) or the expiry decides.
  if (w.now + w.ctx.policy.dangerZoneSeconds >= s.expiry && !claimedOnChain(s)) return;
  w.mut("sent").set(key, { ...s, stage: "settling" });
  enqueue(w, s.channelId, { type: "unlock", secret });
  if (s.upstream === null) finishOutgoing(w, s.paymentId, "completed", null, secret);
}

/** Forgets a secret (and its registration) once no pending lock of this node uses its hash. */
function pruneSecret(w: Work, secretHash: Hex): void {
  if (w.hasHash("received", secretHash) || w.hasHash("sent", secretHash)) return;
  if (w.get("secrets").has(secretHash)) w.mut("secrets").delete(secretHash);
  if (w.get("registered").has(secretHash)) w.mut("registered").delete(secretHash);
}

/** Notes when a secret reached the chain on every lock, sent or received, with its hash. */
function markRevealed(w: Work, secretHash: Hex, at: bigint): void {
  const news = (l: SentLock | ReceivedLock | undefined): l is SentLock | ReceivedLock =>
    l !== undefined && l.secretHash === secretHash && (l.revealedAt === undefined || at < l.revealedAt);
  for (const key of w.withHash("sent", secretHash)) {
    const s = w.get("sent").get(key);
    if (news(s)) w.mut("sent").set(key, { ...s, revealedAt: at });
  }
  for (const key of w.withHash("received", secretHash)) {
    const r = w.get("received").get(key);
    if (news(r)) w.mut("received").set(key, { ...r, revealedAt: at });
  }
}

/** A lock whose secret was registered on chain at or before its expiry: its receiver's, as on chain. */
const claimedOnChain = (l: SentLock | ReceivedLock): boolean => l.revealedAt !== undefined && l.revealedAt <= l.expiry;

/** When the secret of the lock with this hash in this channel reached the chain, as far as this node knows. */
export function revealedAt(
  sent: ReadonlyMap<LockKey, SentLock>,
  received: ReadonlyMap<LockKey, ReceivedLock>,
  channelId: Hex,
  secretHash: Hex,
): bigint | undefined {
  const key = lockKey(channelId, secretHash);
  return sent.get(key)?.revealedAt ?? received.get(key)?.revealedAt;
}

// ------------------------------------------------------------------ target and mediator

/** A received lock has its routing metadata: claim it or forward it. */
function route(w: Work, key: LockKey): void {
  const r = w.get("received").get(key);
  if (!r || !r.meta || r.role !== "waiting") return;
  if (normalizeAddress(r.meta.target) === w.me) claim(w, key, r, r.meta);
  else forward(w, key, r, r.meta);
}

function claim(w: Work, key: LockKey, r: ReceivedLock, meta: LockedTransfer): void {
  const initiator = normalizeAddress(meta.initiator);
  if (!w.get("incoming").has(key)) {
    w.mut("incoming").set(key, {
      direction: "in",
      kind: "transfer",
      paymentId: r.paymentId,
      initiator,
      amount: r.amount,
      channelId: r.channelId,
      secretHash: r.secretHash,
      expiry: r.expiry,
      status: "pending",
      reason: null,
    });
  }
  // Too close to expiry to unlock safely: asking would only hand the hub a claim on the payer.
  const asked = w.now + w.ctx.policy.dangerZoneSeconds < r.expiry;
  const invoice = w.get("invoices").get(r.secretHash);
  if (asked && invoice && r.amount >= invoice.amount && w.now <= invoice.expiresAt) {
    // This node made the secret: unlock now (the invoice is paid once).
    w.mut("invoices").delete(r.secretHash);
    w.mut("received").set(key, { ...r, role: "target", requestedAt: null });
    learnSecret(w, invoice.secret, r.secretHash, false);
    return;
  }
  w.mut("received").set(key, { ...r, role: "target", requestedAt: asked ? w.now : null });
  if (asked) requestSecret(w, r, initiator);
}

function requestSecret(w: Work, r: ReceivedLock, initiator: Address): void {
  const message = signSecretRequest(
    { paymentId: r.paymentId, secretHash: r.secretHash, amount: r.amount, expiry: r.expiry },
    w.ctx.signer,
  );
  w.emit({ type: "sendTransfer", to: initiator, message });
}

function forward(w: Work, key: LockKey, r: ReceivedLock, meta: LockedTransfer): void {
  const refuse = (): void => {
    w.mut("received").set(key, { ...r, role: "refused" });
  };
  const out = w.ctx.routeFor(normalizeAddress(meta.target));
  if (out === null || lower(out) === r.channelId) return refuse();
  const c = w.ctx.channel(out);
  if (!c || c.status !== "open" || c.closeTerms) return refuse();
  const expiry = r.expiry - w.ctx.policy.revealTimeout;
  if (expiry < w.now + w.ctx.policy.minLockSeconds) return refuse();
  const channelId = lower(out);
  const outKey = lockKey(channelId, r.secretHash);
  if (w.get("sent").has(outKey)) return refuse();
  const outMeta: LockedTransfer = { ...meta, channelId, expiry };
  w.mut("sent").set(outKey, {
    channelId,
    secretHash: r.secretHash,
    amount: r.amount,
    expiry,
    paymentId: r.paymentId,
    stage: "proposing",
    upstream: key,
    meta: outMeta,
    metaSentAt: null,
  });
  w.mut("received").set(key, { ...r, role: "mediator", downstream: outKey });
  enqueue(w, channelId, { type: "lock", amount: r.amount, expiry, secretHash: r.secretHash, paymentId: r.paymentId });
}

// ------------------------------------------------------------------ messages

type Received = { ok: true } | Rejected;

function receive(w: Work, fromRaw: Address, toRaw: Address, message: TransferMessage): Received {
  const problem = transferMessageProblem(message);
  if (problem) return reject("BAD_INPUT", problem);
  if (!isAddress(fromRaw) || !isAddress(toRaw)) return reject("BAD_INPUT", "from and to must be addresses");
  const from = normalizeAddress(fromRaw);
  const forMe = normalizeAddress(toRaw) === w.me;
  switch (message.type) {
    case "LockedTransfer":
      return forMe ? receiveLockedTransfer(w, from, message) : { ok: true };
    case "SecretRequest":
      return forMe ? receiveSecretRequest(w, message) : { ok: true };
    case "SecretReveal":
      // A relaying mediator learns the secret too, and can claim upstream without waiting.
      return receiveSecretReveal(w, from, forMe ? null : normalizeAddress(toRaw), message);
  }
}

function receiveLockedTransfer(w: Work, from: Address, m: LockedTransfer): Received {
  const channelId = lower(m.channelId);
  const c = w.ctx.channel(channelId);
  if (!c) return reject("UNKNOWN_CHANNEL", `no channel ${channelId}`);
  // Only the lock's sender, the partner in that channel, can describe it.
  if (partnerOf(c) !== from) return reject("NOT_PARTNER", `${from} is not the partner in channel ${channelId}`);
  const meta: LockedTransfer = {
    ...m,
    channelId,
    paymentId: lower(m.paymentId),
    secretHash: lower(m.secretHash),
    initiator: normalizeAddress(m.initiator),
    target: normalizeAddress(m.target),
  };
  const key = lockKey(channelId, meta.secretHash);
  const r = w.get("received").get(key);
  if (r) {
    if (r.meta !== null) return { ok: true };
    if (!metaMatches(meta, r)) return reject("REQUEST_MISMATCH", "the metadata does not match the signed lock");
    w.mut("received").set(key, { ...r, meta });
    if (r.stage === "locked" && !w.get("secrets").has(r.secretHash)) route(w, key);
    return { ok: true };
  }
  // Usually it arrives just before the proposal it describes.
  if (!w.get("metadata").has(key) && meta.expiry >= w.now) w.mut("metadata").set(key, meta);
  return { ok: true };
}

function receiveSecretRequest(w: Work, m: SecretRequest): Received {
  const paymentId = lower(m.paymentId);
  const p = w.get("payments").get(paymentId);
  if (!p || p.kind !== "transfer" || p.secret === null || p.secretHash === null) {
    return reject("UNKNOWN_PAYMENT", `no outgoing transfer ${paymentId}`);
  }
  if (p.status === "failed") return reject("PAYMENT_NOT_PENDING", `payment ${paymentId} has failed`);
  if (lower(m.secretHash) !== p.secretHash || m.amount !== p.amount) {
    return reject("REQUEST_MISMATCH", "the request's amount or secret hash differs from the payment's");
  }
  // The hub relays the request: only the target's own signature shows the target holds its lock.
  if (secretRequestSigner(m, w.ctx.verifier) !== p.target) {
    return reject("NOT_FROM_TARGET", "the request is not signed by the payment's target");
  }
  if (p.status === "pending" && m.expiry <= w.now + w.ctx.policy.dangerZoneSeconds) {
    return reject("TOO_LATE", "the target's lock expires too soon to be unlocked safely");
  }
  const reveal: SecretReveal = { type: "SecretReveal", paymentId, secret: p.secret };
  w.emit({ type: "sendTransfer", to: p.target, message: reveal });
  settlePassingOn(w, p.target, p.secret, p.secretHash);
  return { ok: true };
}

/** `relayTo`: the reveal's final recipient when this node only passes it on. */
function receiveSecretReveal(w: Work, from: Address, relayTo: Address | null, m: SecretReveal): Received {
  const secret = lower(m.secret);
  const secretHash = hashSecret(secret);
  learnSecret(w, secret, secretHash, true, from);
  settleSent(w, from, secret, secretHash);
  if (relayTo !== null) settlePassingOn(w, relayTo, secret, secretHash);
  return { ok: true };
}

// ------------------------------------------------------------------ time

function tick(w: Work): void {
  const { policy } = w.ctx;
  const now = w.now;
  for (const [hash, inv] of w.get("invoices")) if (now > inv.expiresAt) w.mut("invoices").delete(hash);
  for (const [key, s] of w.get("sent")) {
    if (s.stage === "locked" && now > s.expiry && !claimedOnChain(s)) {
      w.mut("sent").set(key, { ...s, stage: "expiring" });
      enqueue(w, s.channelId, { type: "expire", secretHash: s.secretHash });
    } else if (s.stage === "locked" && s.metaSentAt !== null && now >= s.metaSentAt + policy.retrySeconds) {
      // The receiver may have lost the metadata; it ignores a copy it already has.
      const c = w.ctx.channel(s.channelId);
      if (c) {
        w.mut("sent").set(key, { ...s, metaSentAt: now });
        w.emit({ type: "sendTransfer", to: partnerOf(c), message: s.meta });
      }
    }
  }
  for (const [key, r] of w.get("received")) {
    const secret = w.get("secrets").get(r.secretHash);
    if (secret !== undefined) {
      // Unlocked here: a lock not yet claimed, one whose sender did not settle in time, and one
      // whose late unlock was refused, once its secret is known on chain in time.
      const claimed = claimedOnChain(r);
      const waited = r.stage === "asked" && now >= (r.askedAt ?? 0n) + policy.settleSeconds;
      if ((r.stage === "locked" || waited || (r.stage === "lost" && claimed)) && (now <= r.expiry || claimed)) {
        unlockReceived(w, key, r, secret);
      }
      // Not unlocked off chain and close to expiry: the chain must learn the secret in time.
      if (now >= r.expiry - policy.dangerZoneSeconds && now <= r.expiry && !w.get("registered").has(r.secretHash)) {
        w.mut("registered").set(r.secretHash, now);
        w.emit({ type: "registerSecret", secret, secretHash: r.secretHash });
      }
    } else if (r.role === "target" && r.meta && r.stage === "locked" && now + policy.dangerZoneSeconds < r.expiry) {
      if (r.requestedAt === null || now >= r.requestedAt + policy.retrySeconds) {
        w.mut("received").set(key, { ...r, requestedAt: now });
        requestSecret(w, r, normalizeAddress(r.meta.initiator));
      }
    }
  }
  for (const [key, m] of w.get("metadata")) if (m.expiry < now) w.mut("metadata").delete(key);
}

// ------------------------------------------------------------------ queues

const priority = (op: Op): number => (op.type === "expire" ? 0 : op.type === "unlock" ? 1 : 2);

function enqueue(w: Work, channelId: Hex, op: Op): void {
  const id = lower(channelId);
  w.mut("queues").set(id, [...(w.get("queues").get(id) ?? []), op]);
}

function requeue(w: Work, channelId: Hex, ops: readonly Op[]): void {
  const id = lower(channelId);
  w.mut("queues").set(id, [...ops, ...(w.get("queues").get(id) ?? [])]);
}

/**
 * A payer's settle: the unlock of a lock it sent for its own payment, which completed when the
 * payer was shown the secret. Nobody waits for it (the receiver knows the secret and holds the
 * payment), so it may wait briefly for the channel's next proposal instead of costing a round
 * trip of its own that the payer's next lock would queue behind.
 */
function isPayersSettle(w: Work, channelId: Hex, op: Op): boolean {
  if (op.type !== "unlock") return false;
  const s = w.get("sent").get(lockKey(channelId, hashSecret(op.secret)));
  return s !== undefined && s.upstream === null && s.stage === "settling";
}

/**
 * Proposes each idle channel's queue as one update, after failing the operations that cannot pass.
 * A queue of nothing but payer's settles is held back (`settlesHeld`) unless `settles` is set.
 */
function flush(w: Work, settles: boolean): void {
  const { ctx } = w;
  const deps: Deps = {
    signer: ctx.signer,
    verifier: ctx.verifier,
    now: w.now,
    policy: ctx.channelPolicy,
    revealedAt: (channelId, secretHash) => revealedAt(w.get("sent"), w.get("received"), channelId, secretHash),
  };
  for (const [channelId, queue] of [...w.get("queues")]) {
    if (queue.length === 0) continue;
    const c = ctx.channel(channelId);
    if (!c || c.status !== "open" || c.closeTerms) {
      w.mut("queues").delete(channelId);
      const error: ChannelError = { code: "NOT_OPEN", message: `channel ${channelId} is not open` };
      for (const op of queue) rejectOp(w, channelId, op, error);
      continue;
    }
    if (c.inflight) continue;
    if (!settles && queue.every((op) => isPayersSettle(w, channelId, op))) {
      w.emit({ type: "settlesHeld" });
      continue;
    }
    // Removals first: an expired lock frees the balance a new lock in the same batch may need.
    const ordered = [...queue].sort((a, b) => priority(a) - priority(b));
    const batch = ordered.slice(0, ctx.policy.maxOpsPerUpdate);
    const rest = ordered.slice(ctx.policy.maxOpsPerUpdate);
    const me = c.config.me;
    let accepted: Op[] = batch;
    if (checkOps(c, batch, me, deps) !== null) {
      accepted = [];
      for (const op of batch) {
        const error = checkOps(c, [...accepted, op], me, deps);
        if (error === null) accepted.push(op);
        else rejectOp(w, channelId, op, error);
      }
    }
    if (rest.length > 0) w.mut("queues").set(channelId, rest);
    else w.mut("queues").delete(channelId);
    if (accepted.length === 0) continue;
    const partner = partnerOf(c);
    for (const op of accepted) {
      if (op.type !== "lock") continue;
      const key = lockKey(channelId, op.secretHash);
      const s = w.get("sent").get(key);
      if (s && s.metaSentAt === null) {
        // The LockedTransfer goes out with this step's messages, from the outbox, which delivers
        // it after a crash too; metaSentAt only times the resend of a lock that stays locked
        // (tick), so it needs no write of its own: the lock's next stage carries it.
        w.mut("sent").setUnstored(key, { ...s, metaSentAt: w.now });
        w.emit({ type: "sendTransfer", to: partner, message: s.meta });
      }
    }
    w.emit({ type: "propose", channelId, ops: accepted });
  }
}

/** An operation the channel will not take: settle what depended on it. */
function rejectOp(w: Work, channelId: Hex, op: Op, error: ChannelError): void {
  const reason = `${error.code}: ${error.message}`;
  switch (op.type) {
    case "lock": {
      const key = lockKey(channelId, op.secretHash);
      const s = w.get("sent").get(key);
      if (!s) return;
      w.mut("sent").delete(key);
      if (s.upstream === null) {
        finishOutgoing(w, s.paymentId, "failed", reason);
      } else {
        // Nothing to undo upstream: that lock simply expires back to its payer.
        const up = w.get("received").get(s.upstream);
        if (up) w.mut("received").set(s.upstream, { ...up, role: "refused", downstream: null });
      }
      pruneSecret(w, s.secretHash);
      return;
    }
    case "pay": {
      const p = w.get("payments").get(lower(op.paymentId));
      if (p && p.kind === "issue") finishOutgoing(w, p.paymentId, "failed", reason);
      return;
    }
    case "unlock": {
      const key = lockKey(channelId, hashSecret(op.secret));
      const r = w.get("received").get(key);
      if (r) w.mut("received").set(key, { ...r, stage: "lost" });
      // A settle that did not pass (too late): the receiver's claim or the expiry decides.
      const s = w.get("sent").get(key);
      if (s && s.stage === "settling") w.mut("sent").set(key, { ...s, stage: "locked" });
      return;
    }
    case "expire": {
      const key = lockKey(channelId, op.secretHash);
      const s = w.get("sent").get(key);
      if (!s) return;
      if (error.code === "UNKNOWN_LOCK") {
        // The channel no longer holds it: nothing left to refund.
        w.mut("sent").delete(key);
        if (s.upstream === null) finishOutgoing(w, s.paymentId, "failed", reason);
        pruneSecret(w, s.secretHash);
      } else {
        w.mut("sent").set(key, { ...s, stage: "locked" });
      }
      return;
    }
  }
}

// ------------------------------------------------------------------ utilities

export function partnerOf(c: ChannelData): Address {
  return c.config.me === 1 ? c.config.participant2 : c.config.participant1;
}
