/**
 * One node's channels and transfers, in memory: applies an input, runs the channel and transfer
 * machines against each other, and returns what changed (to persist), what to send, and what
 * happened. No storage, network or chain here; a shell around it adds those.
 *
 * Each `handle` call is one atomic step: it runs to completion before the next input is looked
 * at, so the inputs of every channel are applied strictly in order. A shell must make the step's
 * `persist` durable before it sends `send` or acts on `events`/`chain`, and must do so in step
 * order (a step's messages can depend on the previous step's, e.g. a Countersign and the next
 * Propose of the same channel).
 *
 * Wiring:
 *   channel `send`             -> Outbound to the partner
 *   channel `updated`          -> transfer `channelUpdated`
 *   channel `proposalDropped`  -> transfer `proposalDropped`
 *   channel `proposalRejected` -> transfer `proposalFailed` (a CONFLICT: `proposalDropped`, retry)
 *   transfer `propose`         -> channel `propose` (refused -> transfer `proposalFailed`)
 *   transfer `sendTransfer`    -> Outbound to the next hop towards the final recipient
 * Messages addressed past this node are relayed (after the transfer layer has looked at them:
 * a relayed SecretReveal teaches a mediator the secret).
 */
import {
  DEFAULT_POLICY,
  transition,
  type ChannelData,
  type ChannelError,
  type ChannelErrorCode,
  type ChannelInput,
  type ChannelMessage,
  type Deps,
  type PendingWithdraw,
  type Policy,
} from "../protocol/channel.js";
import { normalizeAddress } from "../protocol/eip712.js";
import {
  DEFAULT_TRANSFER_POLICY,
  incomingByPaymentId,
  newTransferState,
  partnerOf,
  revealedAt,
  transferMessageProblem,
  transferPolicyProblems,
  transferTransition,
  TransferLedger,
  type TransferChanges,
  type IncomingPayment,
  type OutgoingPayment,
  type TransferContext,
  type TransferEffect,
  type TransferErrorCode,
  type TransferInput,
  type TransferMessage,
  type TransferPolicy,
  type TransferState,
} from "../protocol/transfer.js";
import type { Address, CooperativeCloseTerms, Hex } from "../protocol/types.js";
import type { Signer, Verifier } from "../signer/types.js";

// ------------------------------------------------------------------ wire

/** What travels between two nodes. */
export type Envelope =
  | { kind: "channel"; message: ChannelMessage }
  /** `origin` is informative only: a relayed message is not authenticated beyond its last hop. */
  | { kind: "transfer"; origin: Address; to: Address; ttl: number; message: TransferMessage };

/** A message for the peer `to` (the next hop, not necessarily the final recipient). */
export interface Outbound {
  to: Address;
  envelope: Envelope;
}

/** Most messages one bundle carries (so a bundle stays far below the transport's message size limit). */
export const MAX_BUNDLE_MESSAGES = 32;

/**
 * Several messages of one step for the same peer, sent as one: one outbox record, one frame, one
 * acknowledgement, one step at the receiver, which applies them in order as if they had come
 * one by one (a refused one is refused alone). Never nested.
 */
export interface Bundle {
  kind: "bundle";
  messages: Envelope[];
}

/** Ends the `during` of a rejection of a message that came in a bundle. */
export const IN_A_BUNDLE = " (in a bundle)";

/** What a peer sends: one message or a bundle. */
export type WireEnvelope = Envelope | Bundle;

/**
 * A step's messages as they go on the wire: the messages for each peer, in order, joined into
 * bundles of at most {@link MAX_BUNDLE_MESSAGES}; a lone message goes as itself.
 */
export function bundleByPeer(send: readonly Outbound[]): { to: Address; envelope: WireEnvelope }[] {
  if (send.length < 2) return [...send];
  const byPeer = new Map<Address, Envelope[]>();
  for (const o of send) {
    const list = byPeer.get(o.to);
    if (list) list.push(o.envelope);
    else byPeer.set(o.to, [o.envelope]);
  }
  const out: { to: Address; envelope: WireEnvelope }[] = [];
  for (const [to, envelopes] of byPeer) {
    for (let i = 0; i < envelopes.length; i += MAX_BUNDLE_MESSAGES) {
      const part = envelopes.slice(i, i + MAX_BUNDLE_MESSAGES);
      out.push({ to, envelope: part.length === 1 ? part[0]! : { kind: "bundle", messages: part } });
    }
  }
  return out;
}

// ------------------------------------------------------------------ inputs and outputs

/** One of `of` shares of a node's channels: those whose id falls in share `index`. */
export interface TickSlice {
  index: number;
  of: number;
}

/** Which tick slice a channel belongs to: a stable share by the channel id's last bytes. */
export function tickSliceOf(channelId: Hex, of: number): number {
  return Number.parseInt(channelId.slice(-6), 16) % of;
}

export type NodeInput =
  /** Without `channelId`, the channel towards `target` (for a user: its only channel). */
  /** With `secret` (the payer's, revealed when the target asks) or an invoice's `secretHash`. */
  | { type: "pay"; paymentId: Hex; target: Address; amount: bigint; secret?: Hex; secretHash?: Hex; channelId?: Hex }
  /** Ask for a payment of at least `amount` locked with `secret`'s hash, until `expiresAt`. */
  | { type: "invoice"; secret: Hex; amount: bigint; expiresAt: bigint }
  | { type: "issue"; paymentId: Hex; target: Address; amount: bigint; channelId?: Hex }
  /** A message from the authenticated peer `from`. */
  | { type: "deliver"; from: Address; envelope: WireEnvelope }
  /**
   * Time passed: expire locks, register secrets, retry what is unanswered, revoke idle channels.
   * With `slice`, only the channels of that slice (a fixed share of the channels by id; slice 0
   * also runs the transfers' timers): a node ticking slices 0 .. of-1 in turn covers everything
   * once per round, in steps `of` times shorter.
   */
  | { type: "tick"; slice?: TickSlice }
  /** Propose the payer's settles held back for batching (after a step reported `settlesHeld`). */
  | { type: "flushSettles" }
  /** A secret revealed in the chain's SecretRegistry, at chain time `revealedAt`. */
  | { type: "secretRevealed"; secret: Hex; revealedAt?: bigint }
  /** Channel inputs that are not updates (funding seen on chain, withdraw, close). */
  | { type: "channel"; channelId: Hex; input: Exclude<ChannelInput, { type: "propose" | "receive" }> };

export type NodeEvent =
  | Extract<TransferEffect, { type: "paymentSent" | "paymentReceived" | "paymentFailed" }>
  | { type: "channelUpdated"; channelId: Hex; nonce: bigint }
  | { type: "withdrawReady"; channelId: Hex; withdraw: PendingWithdraw }
  | { type: "cooperativeCloseReady"; channelId: Hex; terms: CooperativeCloseTerms; sig1: Hex; sig2: Hex };

/** Work for the chain client. */
export type ChainAction = { type: "registerSecret"; secret: Hex; secretHash: Hex };

export type EngineErrorCode = "UNKNOWN_CHANNEL" | "NOT_PARTNER" | "NO_ROUTE" | "TTL_EXCEEDED" | "BAD_INPUT";

export interface NodeError {
  code: EngineErrorCode | ChannelErrorCode | TransferErrorCode;
  message: string;
}

/** Something refused along the way of a step (a peer's message, an undeliverable effect). */
export interface Rejection {
  during: string;
  error: NodeError;
}

export interface StepResult {
  /** Whether the input itself was accepted; if not, nothing changed. */
  ok: boolean;
  error: NodeError | null;
  /** For pay and issue: the payment (the existing one if the id was seen before). */
  payment: OutgoingPayment | null;
  /** Write these before sending anything. */
  persist: {
    channels: ChannelData[];
    transfers: TransferState | null;
    /** Which entries of `transfers` the step changed (an entry now absent was deleted). */
    transferChanges: TransferChanges | null;
  };
  send: Outbound[];
  events: NodeEvent[];
  chain: ChainAction[];
  rejected: Rejection[];
  /**
   * A payer's settle waits to ride with its channel's next proposal: input `flushSettles` soon
   * (the shell's settle batching interval), or the next tick proposes it.
   */
  settlesHeld: boolean;
}

export interface NodeCoreOptions {
  signer: Signer;
  verifier: Verifier;
  /** Unix seconds. */
  clock: () => bigint;
  channels?: Iterable<ChannelData>;
  transfers?: TransferState;
  channelPolicy?: Policy;
  transferPolicy?: TransferPolicy;
  /** For addresses that are not direct partners: the channel towards them (hub-to-hub). */
  routes?: Iterable<readonly [Address, Hex]>;
  /** Hops a relayed message may still take. */
  maxHops?: number;
  /** Finished payments kept in memory for lookups (default 10,000); older ones live in the store. */
  recentPayments?: number;
}

/**
 * A channel's last revocation rides on this node's next signature in it; only a channel left
 * without an update this long gets an explicit Revoke at a tick. Until then the partner is safe
 * (it holds the newer state fully signed, which overrides the unrevoked one on chain: DESIGN,
 * "Off-chain protocol"); meanwhile a channel in use sends none, where a revocation per update
 * would be one more signature, message, acknowledgement and write on both sides for each
 * payment that does not share its update.
 */
export const REVOKE_IDLE_SECONDS = 5n;

class Step {
  readonly channels = new Set<Hex>();
  /** Each channel's copy before the step first changed it, to roll back a step that throws. */
  readonly before = new Map<Hex, ChannelData>();
  transfersChanged = false;
  payment: OutgoingPayment | null = null;
  readonly send: Outbound[] = [];
  readonly events: NodeEvent[] = [];
  readonly chain: ChainAction[] = [];
  readonly rejected: Rejection[] = [];
  settlesHeld = false;
  constructor(readonly now: bigint) {}
}

const lower = (h: Hex): Hex => h.toLowerCase() as Hex;

function copyTransferState(s: TransferState): TransferState {
  return {
    payments: new Map(s.payments),
    incoming: new Map(s.incoming),
    secrets: new Map(s.secrets),
    sent: new Map(s.sent),
    received: new Map(s.received),
    metadata: new Map(s.metadata),
    queues: new Map(s.queues),
    registered: new Map(s.registered),
    invoices: new Map(s.invoices),
  };
}

const engineError = (code: EngineErrorCode, message: string): NodeError => ({ code, message });

export class NodeCore {
  readonly address: Address;
  readonly #signer: Signer;
  readonly #verifier: Verifier;
  readonly #clock: () => bigint;
  readonly #channelPolicy: Policy;
  readonly #transferPolicy: TransferPolicy;
  readonly #maxHops: number;
  readonly #channels = new Map<Hex, ChannelData>();
  /** The channel ids of each tick slice, for the slice count last ticked with (channels are only ever added). */
  #tickSlices: { of: number; ids: Hex[][] } | null = null;
  /** Partner address -> channel id. */
  readonly #byPartner = new Map<Address, Hex>();
  readonly #routes = new Map<Address, Hex>();
  readonly #recentOut = new Map<Hex, OutgoingPayment>();
  readonly #recentIn = new Map<Hex, IncomingPayment[]>();
  readonly #recentLimit: number;
  /** A hub's channel to a partner hub, for targets it has no channel or route to. */
  #defaultRoute: Hex | null = null;
  /** When this node last sent the proposal now in flight, per channel (retries; not persisted). */
  readonly #proposedAt = new Map<Hex, bigint>();
  /** When each channel last had an update fully signed (explicit revocations; not persisted: after a restart every channel counts as idle). */
  readonly #updatedAt = new Map<Hex, bigint>();
  #transfers: TransferState;
  /** The transfer state is changed in place and its changes logged (see TransferLedger). */
  readonly #ledger: TransferLedger;
  #snapshot: { of: TransferState; copy: TransferState } | null = null;

  constructor(opts: NodeCoreOptions) {
    this.#signer = opts.signer;
    this.#verifier = opts.verifier;
    this.#clock = opts.clock;
    this.address = normalizeAddress(opts.signer.address);
    this.#channelPolicy = opts.channelPolicy ?? DEFAULT_POLICY;
    this.#transferPolicy = opts.transferPolicy ?? DEFAULT_TRANSFER_POLICY;
    const problems = transferPolicyProblems(this.#transferPolicy, this.#channelPolicy);
    if (problems.length > 0) throw new Error(`NodeCore: inconsistent transfer policy: ${problems.join("; ")}`);
    this.#maxHops = opts.maxHops ?? 8;
    this.#recentLimit = opts.recentPayments ?? 10_000;
    this.#transfers = opts.transfers ?? newTransferState();
    this.#ledger = new TransferLedger(this.#transfers);
    for (const c of opts.channels ?? []) this.addChannel(c);
    for (const [target, channelId] of opts.routes ?? []) this.setRoute(target, channelId);
  }

  // ---------------------------------------------------------------- setup and queries

  /** Adds (or replaces, e.g. when restoring) this node's copy of a channel. */
  addChannel(c: ChannelData): void {
    const me = c.config.me === 1 ? c.config.participant1 : c.config.participant2;
    if (normalizeAddress(me) !== this.address) throw new Error(`addChannel: this node is not side ${c.config.me} of ${c.config.channelId}`);
    const id = lower(c.config.channelId);
    if (!this.#channels.has(id)) this.#tickSlices?.ids[tickSliceOf(id, this.#tickSlices.of)]!.push(id);
    this.#channels.set(id, c);
    this.#byPartner.set(normalizeAddress(partnerOf(c)), id);
  }

  setRoute(target: Address, channelId: Hex): void {
    this.#routes.set(normalizeAddress(target), lower(channelId));
  }

  /** Sends payments for unknown targets through `channelId` (a hub's link to another hub). */
  setDefaultRoute(channelId: Hex | null): void {
    this.#defaultRoute = channelId === null ? null : lower(channelId);
  }

  channel(channelId: Hex): ChannelData | undefined {
    return this.#channels.get(lower(channelId));
  }

  /** The engine's clock, unix seconds (what its steps take as "now"). */
  now(): bigint {
    return this.#clock();
  }

  channels(): ChannelData[] {
    return [...this.#channels.values()];
  }

  channelWith(partner: Address): ChannelData | undefined {
    const id = this.#byPartner.get(normalizeAddress(partner));
    return id === undefined ? undefined : this.#channels.get(id);
  }

  /**
   * A snapshot of the transfer state: later steps do not change it. (The engine changes its own
   * state in place; the snapshot is copied on first read after a change.)
   */
  get transfers(): TransferState {
    if (this.#snapshot?.of !== this.#transfers) this.#snapshot = { of: this.#transfers, copy: copyTransferState(this.#transfers) };
    return this.#snapshot.copy;
  }

  /** An outgoing payment in flight, or recently finished (see `recentPayments`). */
  payment(paymentId: Hex): OutgoingPayment | undefined {
    const id = lower(paymentId);
    return this.#transfers.payments.get(id) ?? this.#recentOut.get(id);
  }

  incoming(paymentId: Hex): IncomingPayment[] {
    return [...incomingByPaymentId(this.#transfers, paymentId), ...(this.#recentIn.get(lower(paymentId)) ?? [])];
  }

  /**
   * Finished payments leave the transfer state (it stays O(in-flight)); the last few thousand are
   * kept here for quick lookups and so that a repeated payment id pays once at this level too.
   * The shell keeps every finished payment in its store, which stays the authority.
   */
  #remember(p: OutgoingPayment | IncomingPayment): void {
    const id = lower(p.paymentId);
    if (p.direction === "out") {
      this.#recentOut.delete(id);
      this.#recentOut.set(id, p);
    } else {
      this.#recentIn.set(id, [...(this.#recentIn.get(id) ?? []), p]);
    }
    for (const m of [this.#recentOut, this.#recentIn] as Map<Hex, unknown>[]) {
      while (m.size > this.#recentLimit) m.delete(m.keys().next().value as Hex);
    }
  }

  // ---------------------------------------------------------------- the step

  handle(input: NodeInput): StepResult {
    const step = new Step(this.#clock());
    const transfersBefore = this.#transfers;
    const mark = this.#ledger.mark();
    let error: NodeError | null;
    try {
      error = this.#dispatch(step, input);
    } catch (err) {
      // Malformed peer input can make the hashing code throw: undo the whole step, report it.
      for (const [id, c] of step.before) this.#channels.set(id, c);
      this.#ledger.rollback(mark);
      this.#ledger.settle();
      this.#transfers = transfersBefore;
      if (input.type !== "deliver") throw err;
      const failed = new Step(step.now);
      return this.#result(failed, engineError("BAD_INPUT", `malformed message: ${err instanceof Error ? err.message : String(err)}`));
    }
    this.#ledger.settle();
    return this.#result(step, error);
  }

  #result(step: Step, error: NodeError | null): StepResult {
    const transferChanges = this.#ledger.takeChanges();
    const persist = {
      channels: [...step.channels].map((id) => this.#channels.get(id)).filter((c): c is ChannelData => c !== undefined),
      transfers: step.transfersChanged ? this.#transfers : null,
      transferChanges: step.transfersChanged ? transferChanges : null,
    };
    return {
      ok: error === null,
      error,
      payment: step.payment,
      persist,
      send: step.send,
      events: step.events,
      chain: step.chain,
      rejected: step.rejected,
      settlesHeld: step.settlesHeld,
    };
  }

  #dispatch(step: Step, input: NodeInput): NodeError | null {
    switch (input.type) {
      case "pay":
      case "issue": {
        const channelId = input.channelId ?? this.#channelTowards(input.target);
        if (channelId === null) return engineError("NO_ROUTE", `no channel towards ${input.target}`);
        const recent = this.#recentOut.get(lower(input.paymentId));
        if (recent) {
          // Finished already: the same id pays once (if it asks for the same thing).
          if (recent.kind !== (input.type === "pay" ? "transfer" : "issue") || recent.amount !== input.amount || normalizeAddress(recent.target) !== normalizeAddress(input.target)) {
            return { code: "PAYMENT_ID_CONFLICT", message: `payment ${input.paymentId} already exists with other parameters` };
          }
          step.payment = recent;
          return null;
        }
        const t: TransferInput =
          input.type === "pay"
            ? {
                type: "pay",
                paymentId: input.paymentId,
                target: input.target,
                amount: input.amount,
                channelId,
                ...(input.secret !== undefined ? { secret: input.secret } : {}),
                ...(input.secretHash !== undefined ? { secretHash: input.secretHash } : {}),
              }
            : { type: "issue", paymentId: input.paymentId, target: input.target, amount: input.amount, channelId };
        return this.#transfer(step, t, true);
      }
      case "deliver":
        return this.#deliver(step, input.from, input.envelope);
      case "tick": {
        const slice = input.slice;
        if (slice && !(Number.isInteger(slice.of) && slice.of >= 1 && Number.isInteger(slice.index) && slice.index >= 0 && slice.index < slice.of)) {
          return engineError("BAD_INPUT", "a tick slice is an index in 0 .. of-1 of a whole number of slices");
        }
        this.#tick(step, slice);
        return null;
      }
      case "flushSettles":
        return this.#transfer(step, { type: "flushSettles" }, true);
      case "secretRevealed":
        return this.#transfer(step, { ...input, type: "secretRevealed" }, true);
      case "invoice":
        return this.#transfer(step, { type: "invoice", secret: input.secret, amount: input.amount, expiresAt: input.expiresAt }, true);
      case "channel":
        return this.#channel(step, input.channelId, input.input);
    }
  }

  #deps(now: bigint): Deps {
    const revealed = (channelId: Hex, secretHash: Hex) => revealedAt(this.#transfers.sent, this.#transfers.received, channelId, secretHash);
    return { signer: this.#signer, verifier: this.#verifier, now, policy: this.#channelPolicy, revealedAt: revealed };
  }

  #context(now: bigint): TransferContext {
    return {
      now,
      signer: this.#signer,
      verifier: this.#verifier,
      policy: this.#transferPolicy,
      channelPolicy: this.#channelPolicy,
      channel: (id) => this.#channels.get(lower(id)),
      routeFor: (target) => this.#lockRoute(target),
      nextHop: (to) => this.#nextHop(normalizeAddress(to)),
      ledger: this.#ledger,
    };
  }

  // ---------------------------------------------------------------- channel side

  #channel(step: Step, channelId: Hex, input: ChannelInput): NodeError | null {
    const c = this.#channels.get(lower(channelId));
    if (!c) return engineError("UNKNOWN_CHANNEL", `no channel ${channelId}`);
    return this.#applyChannel(step, c, input);
  }

  #applyChannel(step: Step, c: ChannelData, input: ChannelInput): ChannelError | null {
    const id = lower(c.config.channelId);
    const r = transition(c, input, this.#deps(step.now));
    if (!r.ok) return r.error;
    if (r.refused) step.rejected.push({ during: "channel proposal after a countersignature", error: r.refused });
    if (r.channel !== c) {
      if (!step.before.has(id)) step.before.set(id, c);
      this.#channels.set(id, r.channel);
      step.channels.add(id);
    }
    const partner = partnerOf(c);
    // Messages first: a transfer reaction below may propose again, and the partner must see this
    // step's Countersign before that next Propose.
    for (const e of r.effects) {
      switch (e.type) {
        case "send":
          if (e.message.type === "Propose") {
            this.#proposedAt.set(id, step.now);
            if (joinCountersign(step.send, e.message)) break;
          }
          step.send.push({ to: partner, envelope: { kind: "channel", message: e.message } });
          break;
        case "withdrawReady":
          step.events.push({ type: "withdrawReady", channelId: id, withdraw: e.withdraw });
          break;
        case "cooperativeCloseReady":
          step.events.push({ type: "cooperativeCloseReady", channelId: id, terms: e.terms, sig1: e.sig1, sig2: e.sig2 });
          break;
        default:
          break;
      }
    }
    for (const e of r.effects) {
      if (e.type === "updated") {
        this.#updatedAt.set(id, step.now);
        step.events.push({ type: "channelUpdated", channelId: id, nonce: e.nonce });
        this.#transfer(step, { type: "channelUpdated", channelId: id, nonce: e.nonce, byMe: e.proposer === c.config.me, ops: e.ops });
      } else if (e.type === "proposalDropped") {
        this.#transfer(step, { type: "proposalDropped", channelId: id, ops: e.ops });
      } else if (e.type === "proposalRejected") {
        // A conflict only means "not now": propose the same operations again.
        if (e.error.code === "CONFLICT") this.#transfer(step, { type: "proposalDropped", channelId: id, ops: e.ops });
        else this.#transfer(step, { type: "proposalFailed", channelId: id, ops: e.ops, error: e.error });
      }
    }
    return null;
  }

  // ---------------------------------------------------------------- transfer side

  #transfer(step: Step, input: TransferInput, primary = false): NodeError | null {
    const r = transferTransition(this.#transfers, input, this.#context(step.now));
    if (!r.ok) {
      if (!primary) step.rejected.push({ during: `transfer ${input.type}`, error: r.error });
      return r.error;
    }
    if (r.state !== this.#transfers) {
      this.#transfers = r.state;
      step.transfersChanged = true;
    }
    if (primary && r.payment) step.payment = r.payment;
    for (const e of r.effects) this.#transferEffect(step, e);
    return null;
  }

  #transferEffect(step: Step, e: TransferEffect): void {
    switch (e.type) {
      case "propose": {
        const c = this.#channels.get(lower(e.channelId));
        const error: ChannelError | null = c
          ? this.#applyChannel(step, c, { type: "propose", ops: e.ops })
          : { code: "NOT_OPEN", message: `no channel ${e.channelId}` };
        if (error) this.#transfer(step, { type: "proposalFailed", channelId: e.channelId, ops: e.ops, error });
        return;
      }
      case "sendTransfer": {
        const to = normalizeAddress(e.to);
        const hop = this.#nextHop(to);
        if (hop === null) {
          step.rejected.push({ during: `send ${e.message.type}`, error: engineError("NO_ROUTE", `no route to ${to}`) });
          return;
        }
        step.send.push({ to: hop, envelope: { kind: "transfer", origin: this.address, to, ttl: this.#maxHops, message: e.message } });
        return;
      }
      case "settlesHeld":
        step.settlesHeld = true;
        return;
      case "registerSecret":
        step.chain.push({ type: "registerSecret", secret: e.secret, secretHash: e.secretHash });
        return;
      case "paymentSent":
      case "paymentReceived":
      case "paymentFailed":
        this.#remember(e.payment);
        step.events.push(e);
        return;
    }
  }

  // ---------------------------------------------------------------- peers

  #deliver(step: Step, fromRaw: Address, envelope: WireEnvelope): NodeError | null {
    let from: Address;
    try {
      from = normalizeAddress(fromRaw);
    } catch {
      return engineError("BAD_INPUT", "sender is not an address");
    }
    if (envelope.kind === "bundle") {
      const { messages } = envelope;
      if (!Array.isArray(messages) || messages.length === 0 || messages.length > MAX_BUNDLE_MESSAGES) {
        return engineError("BAD_INPUT", `a bundle carries 1 to ${MAX_BUNDLE_MESSAGES} messages`);
      }
      if (messages.some((m: unknown) => typeof m !== "object" || m === null || (m as { kind?: unknown }).kind === "bundle")) {
        return engineError("BAD_INPUT", "a bundle carries messages, not bundles");
      }
      // Each as if it had come alone: a refused one is refused alone (its error is reported).
      for (const m of messages) {
        const error = this.#deliver(step, from, m);
        if (error) step.rejected.push({ during: `deliver ${m.kind === "channel" || m.kind === "transfer" ? m.message?.type : "message"}${IN_A_BUNDLE}`, error });
      }
      return null;
    }
    if (envelope.kind === "channel") {
      const m = envelope.message;
      const id = lower(m.channelId);
      const c = this.#channels.get(id);
      if (!c) return engineError("UNKNOWN_CHANNEL", `no channel ${m.channelId}`);
      // A peer speaks only for channels it is part of.
      if (normalizeAddress(partnerOf(c)) !== from) return engineError("NOT_PARTNER", `${from} is not the partner in ${id}`);
      return this.#applyChannel(step, c, { type: "receive", message: m });
    }
    let to: Address;
    try {
      to = normalizeAddress(envelope.to);
    } catch {
      return engineError("BAD_INPUT", "recipient is not an address");
    }
    if (to === this.address) {
      return this.#transfer(step, { type: "receive", from, to, message: envelope.message }, true);
    }
    const problem = transferMessageProblem(envelope.message);
    if (problem) return engineError("BAD_INPUT", problem);
    if (!(envelope.ttl > 1)) return engineError("TTL_EXCEEDED", `message for ${to} has travelled too far`);
    const hop = this.#nextHop(to);
    if (hop === null || hop === from) return engineError("NO_ROUTE", `no route to ${to}`);
    this.#transfer(step, { type: "receive", from, to, message: envelope.message });
    step.send.push({ to: hop, envelope: { ...envelope, to, ttl: envelope.ttl - 1 } });
    return null;
  }

  // ---------------------------------------------------------------- time

  #tick(step: Step, slice: TickSlice | undefined): void {
    const retry = this.#transferPolicy.retrySeconds;
    for (const id of slice ? this.#sliceIds(slice.of)[slice.index]! : this.#channels.keys()) {
      const before = this.#channels.get(id)!;
      // The channel's own tick only expires withdrawals and re-sends a close request; skipped
      // when there are none (it would change nothing), which is most channels of a hub.
      if (before.withdraws.length > 0 || before.closeTerms !== null) {
        const err = this.#channel(step, id, { type: "tick" });
        if (err) step.rejected.push({ during: "channel tick", error: err });
      }
      const c = this.#channels.get(id) ?? before;
      if (c.status !== "open") continue;
      const inflight = c.inflight;
      if (inflight) {
        // Unanswered: the proposal or its countersignature may have been lost.
        const sentAt = this.#proposedAt.get(id);
        if (sentAt === undefined || step.now >= sentAt + retry) {
          const signature = c.config.me === 1 ? inflight.next.sig1 : inflight.next.sig2;
          if (signature) {
            this.#proposedAt.set(id, step.now);
            const { state } = inflight.next;
            const message: ChannelMessage = { type: "Propose", channelId: c.config.channelId, state, ops: inflight.ops, signature };
            step.send.push({ to: partnerOf(c), envelope: { kind: "channel", message } });
          }
        }
      } else if (c.latest.state.nonce <= c.myRevokedBelow) {
        this.#updatedAt.delete(id);
      } else if (step.now >= (this.#updatedAt.get(id) ?? 0n) + REVOKE_IDLE_SECONDS) {
        // Idle long enough: the revocation that would ride on the next proposal goes out on its own.
        const rerr = this.#channel(step, id, { type: "revoke" });
        if (rerr) step.rejected.push({ during: "revoke", error: rerr });
        else this.#updatedAt.delete(id);
      }
    }
    if (!slice || slice.index === 0) this.#transfer(step, { type: "tick" });
  }

  /** The channel ids of each of `of` tick slices, worked out once rather than on every tick. */
  #sliceIds(of: number): Hex[][] {
    if (this.#tickSlices?.of !== of) {
      const ids: Hex[][] = Array.from({ length: of }, () => []);
      for (const id of this.#channels.keys()) ids[tickSliceOf(id, of)]!.push(id);
      this.#tickSlices = { of, ids };
    }
    return this.#tickSlices.ids;
  }

  // ---------------------------------------------------------------- routing

  #openChannelId(id: Hex | undefined): Hex | null {
    if (id === undefined) return null;
    const c = this.#channels.get(id);
    return c && c.status === "open" ? id : null;
  }

  /** Where a lock for `target` is forwarded: the channel with it, or a configured route. */
  #lockRoute(targetRaw: Address): Hex | null {
    const target = normalizeAddress(targetRaw);
    return (
      this.#openChannelId(this.#byPartner.get(target)) ??
      this.#openChannelId(this.#routes.get(target)) ??
      this.#openChannelId(this.#defaultRoute ?? undefined)
    );
  }

  /** The channel a payment to `target` starts in: as a lock would be routed, else the only channel. */
  #channelTowards(target: Address): Hex | null {
    let route: Hex | null;
    try {
      route = this.#lockRoute(target);
    } catch {
      return null;
    }
    if (route !== null) return route;
    return this.#channels.size === 1 ? ([...this.#channels.keys()][0] ?? null) : null;
  }

  /** The peer to hand a message for `to` to. */
  #nextHop(to: Address): Address | null {
    if (this.#byPartner.has(to)) return to;
    const id =
      this.#routes.get(to) ?? this.#defaultRoute ?? (this.#channels.size === 1 ? [...this.#channels.keys()][0] : undefined);
    const c = id === undefined ? undefined : this.#channels.get(id);
    return c ? normalizeAddress(partnerOf(c)) : null;
  }
}

/**
 * A proposal made in the step that countersigned the partner's previous one rides on that
 * Countersign (its `next`), so the partner learns of both at once and cannot propose the same
 * nonce meanwhile. Returns whether it did. The joined message moves to the end of the step's
 * messages, after the `LockedTransfer`s describing the proposal's locks: a lock whose routing
 * arrives first is claimed as it is countersigned, its unlock riding on that countersignature,
 * instead of being proposed later from an idle channel (and crossing the partner's next proposal).
 */
function joinCountersign(send: Outbound[], propose: Extract<ChannelMessage, { type: "Propose" }>): boolean {
  for (let i = send.length - 1; i >= 0; i--) {
    const out = send[i];
    if (out === undefined || out.envelope.kind !== "channel" || out.envelope.message.channelId !== propose.channelId) continue;
    const m = out.envelope.message;
    if (m.type !== "Countersign" || m.next !== undefined || m.nonce + 1n !== propose.state.nonce) return false;
    const { state, ops, signature } = propose;
    // Only messages of other channels, or transfer messages, follow it: no channel's order changes.
    send.splice(i, 1);
    send.push({ ...out, envelope: { kind: "channel", message: { ...m, next: { state, ops, signature } } } });
    return true;
  }
  return false;
}
