/**
 * Two parties of one channel with real keys, and a simulator that carries their messages over two
 * unreliable queues (reordered, duplicated, delayed, lost) under a shared clock. It records every
 * `Update` signature each party makes and fails as soon as one party signs two different states
 * with the same nonce. Used by the channel unit and property tests.
 */
import { keccak256 } from "../../src/protocol/keccak.js";
import {
  DEFAULT_POLICY,
  newChannel,
  other,
  transition,
  type ChannelConfig,
  type ChannelData,
  type ChannelInput,
  type ChannelMessage,
  type Deps,
  type Funding,
  type Policy,
  type Side,
  type StateSignature,
  type Transition,
} from "../../src/protocol/channel.js";
import {
  bytesToHex,
  channelId as makeChannelId,
  hashState,
  hexToBytes,
  orderParticipants,
  secretHash,
  updateDigestBytes,
  type ChannelState,
  type Domain,
  type Hex,
} from "../../src/protocol/eip712.js";
import { loadBackend, type Secp256k1Backend, type Signer } from "../../src/signer/index.js";

export const DOMAIN: Domain = { chainId: 31337n, verifyingContract: `0x${"22".repeat(20)}` };

/** A deterministic private key per label (keccak of the label: a valid scalar for any label used here). */
export function testKey(label: string): Uint8Array {
  return keccak256(new TextEncoder().encode(`starling test key ${label}`));
}

/** A deterministic 32-byte secret per index, and its hash. */
export function testSecret(index: number): { secret: Hex; hash: Hex } {
  const secret = bytesToHex(keccak256(new TextEncoder().encode(`starling test secret ${index}`)));
  return { secret, hash: secretHash(secret) };
}

export interface Pair {
  backend: Secp256k1Backend;
  channelId: Hex;
  signers: Record<Side, Signer>;
  /** A key that belongs to neither participant. */
  mallory: Signer;
  funding: Funding;
  policy: Policy;
  configs: Record<Side, ChannelConfig>;
  /** Both parties' channels, as created. */
  initial: Record<Side, ChannelData>;
  deps(side: Side, now: bigint): Deps;
}

export interface PairOptions {
  backend?: Secp256k1Backend;
  deposit1?: bigint;
  deposit2?: bigint;
  policy?: Policy;
  counter?: number;
  /** Labels of the two keys; which one becomes side 1 depends on the address order. */
  keys?: [string, string];
}

let cachedBackend: Secp256k1Backend | null = null;

/** The native backend if its addon loads, else noble (STARLING_TEST_BACKEND overrides); loaded once. */
export async function testBackend(): Promise<Secp256k1Backend> {
  const wanted = process.env.STARLING_TEST_BACKEND ?? "auto";
  if (wanted !== "auto" && wanted !== "noble" && wanted !== "native") throw new Error(`STARLING_TEST_BACKEND: unknown backend ${wanted}`);
  cachedBackend ??= await loadBackend(wanted);
  return cachedBackend;
}

export async function makePair(options: PairOptions = {}): Promise<Pair> {
  const backend = options.backend ?? (await testBackend());
  const [labelA, labelB] = options.keys ?? ["alice", "bob"];
  const a = backend.createSigner(testKey(labelA));
  const b = backend.createSigner(testKey(labelB));
  const mallory = backend.createSigner(testKey("mallory"));
  const [p1, p2] = orderParticipants(a.address, b.address);
  const signers: Record<Side, Signer> = p1 === a.address ? { 1: a, 2: b } : { 1: b, 2: a };
  const id = makeChannelId(DOMAIN.chainId, DOMAIN.verifyingContract, p1, p2, options.counter ?? 1);
  const funding: Funding = {
    deposit1: options.deposit1 ?? 1000n,
    deposit2: options.deposit2 ?? 1000n,
    withdrawn1: 0n,
    withdrawn2: 0n,
    credit: 0n,
    creditSide: 0,
  };
  const policy = options.policy ?? DEFAULT_POLICY;
  const config = (me: Side): ChannelConfig => ({ channelId: id, domain: DOMAIN, participant1: p1, participant2: p2, me });
  const configs: Record<Side, ChannelConfig> = { 1: config(1), 2: config(2) };
  return {
    backend,
    channelId: id,
    signers,
    mallory,
    funding,
    policy,
    configs,
    initial: { 1: newChannel(configs[1], funding), 2: newChannel(configs[2], funding) },
    deps: (side, now) => ({ signer: signers[side], verifier: backend.verifier, now, policy }),
  };
}

// ------------------------------------------------------------------ signatures

/** An `Update` signature by `signer` on `state`, made outside the state machine. */
export function signUpdateAs(signer: Signer, channelId: Hex, state: ChannelState, revokedBelow: bigint): StateSignature {
  const digest = updateDigestBytes(DOMAIN, channelId, revokedBelow, hashState(state));
  return { revokedBelow, signature: bytesToHex(signer.signDigest(digest)) };
}

const verified = new Map<string, boolean>();

/** Whether `sig` is `address`'s `Update` signature on the state with `stateHash` (memoised). */
export function isUpdateSignatureBy(
  backend: Secp256k1Backend,
  channelId: Hex,
  stateHash: Hex,
  sig: { revokedBelow: bigint; signature: Hex },
  address: Hex,
): boolean {
  const key = `${channelId}:${stateHash}:${sig.revokedBelow}:${sig.signature}:${address}`;
  const hit = verified.get(key);
  if (hit !== undefined) return hit;
  let ok: boolean;
  try {
    const digest = updateDigestBytes(DOMAIN, channelId, sig.revokedBelow, stateHash);
    ok = backend.verifier.recoverAddress(digest, hexToBytes(sig.signature, 65)) === address;
  } catch {
    ok = false;
  }
  if (verified.size > 200_000) verified.clear();
  verified.set(key, ok);
  return ok;
}

// ------------------------------------------------------------------ bigint-safe JSON

const BIGINT_TAG = "$bigint";

function isBigintBox(v: unknown): v is { [BIGINT_TAG]: string } {
  if (v === null || typeof v !== "object") return false;
  const keys = Object.keys(v);
  return keys.length === 1 && keys[0] === BIGINT_TAG && typeof (v as Record<string, unknown>)[BIGINT_TAG] === "string";
}

/** JSON with bigints kept as `{"$bigint": "<decimal>"}`. */
export function encodeJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? { [BIGINT_TAG]: v.toString() } : v));
}

export function decodeJson(text: string): unknown {
  return JSON.parse(text, (_key, v: unknown) => (isBigintBox(v) ? BigInt(v[BIGINT_TAG]) : v));
}

/** What a node reads back after writing `c` to its store and restarting. */
export function restored(c: ChannelData): ChannelData {
  return decodeJson(encodeJson(c)) as ChannelData;
}

// ------------------------------------------------------------------ simulator

/** An `Update` signature carried by a message, with the state it is on. */
export interface CarriedSignature {
  revokedBelow: bigint;
  stateHash: Hex;
  signature: Hex;
}

export interface Envelope {
  from: Side;
  message: ChannelMessage;
  /** The sender's `Update` signature in the message, if any. */
  carried: CarriedSignature | null;
}

export interface Delivery {
  to: Side;
  envelope: Envelope;
  before: ChannelData;
  result: Transition;
}

export class ChannelInputMutated extends Error {}

/** One party signed two different states with the same nonce: the partner could pick either. */
export class TwoStatesSigned extends Error {}

/**
 * Both parties' channels, the messages on their way to each (`inbox[2]` holds what side 1 sent),
 * and a clock. Every transition goes through `apply`, which checks that the input channel is never
 * mutated, keeps the new channel on success, and queues what it sends.
 */
export class TwoParty {
  channels: Record<Side, ChannelData>;
  inbox: Record<Side, Envelope[]> = { 1: [], 2: [] };
  now: bigint;
  /** Highest `revokedBelow` of any `Update` signature each side has put in a message. */
  emittedRevocation: Record<Side, bigint> = { 1: 0n, 2: 0n };
  /** Highest `revokedBelow` of any `Update` signature by each side delivered to its partner. */
  deliveredRevocation: Record<Side, bigint> = { 1: 0n, 2: 0n };
  /** Every `Update` signature each side has put in a message (for the partner to misuse). */
  emitted: Record<Side, CarriedSignature[]> = { 1: [], 2: [] };
  /**
   * nonce -> hash of the one state each side has signed with that nonce, from every `Update`
   * signature it sent or that either channel holds.
   */
  readonly signedStates: Record<Side, Map<bigint, Hex>> = { 1: new Map(), 2: new Map() };
  /** secret hash -> secret, for every secret a lock was made with. */
  readonly secrets = new Map<Hex, Hex>();
  readonly log: string[] = [];
  /** Called after every delivery, before the next step. */
  onDelivery: ((d: Delivery) => void) | null = null;

  constructor(
    readonly pair: Pair,
    start: bigint,
  ) {
    this.channels = { 1: pair.initial[1], 2: pair.initial[2] };
    this.now = start;
  }

  deps(side: Side): Deps {
    return this.pair.deps(side, this.now);
  }

  /** Runs one input on `side`'s channel; on success keeps the result and queues what it sends. */
  apply(side: Side, input: ChannelInput): Transition {
    const before = this.channels[side];
    const snapshot = encodeJson(before);
    const result = transition(before, input, this.deps(side));
    if (encodeJson(before) !== snapshot) throw new ChannelInputMutated(`transition mutated its input (${input.type} on side ${side})`);
    if (!result.ok) return result;
    this.channels[side] = result.channel;
    this.noteHeld(result.channel);
    for (const effect of result.effects) {
      if (effect.type === "send") this.send(side, effect.message);
    }
    return result;
  }

  /** Records that `side` signed the state with `stateHash` as nonce `nonce`; throws on a second one. */
  noteSigned(side: Side, nonce: bigint, stateHash: Hex, where: string): void {
    const seen = this.signedStates[side].get(nonce);
    if (seen === undefined) this.signedStates[side].set(nonce, stateHash);
    else if (seen !== stateHash) throw new TwoStatesSigned(`side ${side} signed two different states with nonce ${nonce} (${where})`);
  }

  /** Records the signatures a channel holds: both on its newest state, its own on its proposal. */
  noteHeld(c: ChannelData): void {
    const latest = c.latest;
    if (latest.state.nonce > 0n) {
      const h = hashState(latest.state);
      if (latest.sig1) this.noteSigned(1, latest.state.nonce, h, `held by side ${c.config.me}`);
      if (latest.sig2) this.noteSigned(2, latest.state.nonce, h, `held by side ${c.config.me}`);
    }
    const next = c.inflight?.next;
    if (next) {
      const mine = c.config.me === 1 ? next.sig1 : next.sig2;
      if (mine) this.noteSigned(c.config.me, next.state.nonce, hashState(next.state), "its proposal");
    }
  }

  /**
   * As a node does: a proposal made while this side's Countersign of the previous nonce is still
   * queued rides on it (`next`) instead of going out as its own message.
   */
  joinProposals = false;

  private send(from: Side, message: ChannelMessage): void {
    if (this.joinProposals && message.type === "Propose" && this.join(from, message)) return;
    let carried: CarriedSignature | null = null;
    const latest = this.channels[from].latest;
    switch (message.type) {
      case "Propose":
        carried = { ...message.signature, stateHash: hashState(message.state) };
        break;
      case "Countersign":
      case "Revoke":
        // Both sign the sender's newest state, which has the message's nonce.
        if (latest.state.nonce !== message.nonce) throw new Error(`${message.type} ${message.nonce} sent with latest ${latest.state.nonce}`);
        carried = { ...message.signature, stateHash: hashState(latest.state) };
        break;
      default:
        break;
    }
    if (carried) {
      const nonce = message.type === "Propose" ? message.state.nonce : latest.state.nonce;
      this.noteSigned(from, nonce, carried.stateHash, message.type);
      this.emitted[from].push(carried);
      if (carried.revokedBelow > this.emittedRevocation[from]) this.emittedRevocation[from] = carried.revokedBelow;
    }
    this.inbox[other(from)].push({ from, message, carried });
  }

  private join(from: Side, propose: Extract<ChannelMessage, { type: "Propose" }>): boolean {
    const queue = this.inbox[other(from)];
    const last = queue[queue.length - 1];
    if (!last || last.from !== from) return false;
    const m = last.message;
    if (m.type !== "Countersign" || m.next !== undefined || m.nonce + 1n !== propose.state.nonce) return false;
    const carried = { ...propose.signature, stateHash: hashState(propose.state) };
    this.noteSigned(from, propose.state.nonce, carried.stateHash, "Countersign.next");
    this.emitted[from].push(carried);
    if (carried.revokedBelow > this.emittedRevocation[from]) this.emittedRevocation[from] = carried.revokedBelow;
    const { state, ops, signature } = propose;
    queue[queue.length - 1] = { ...last, message: { ...m, next: { state, ops, signature } } };
    this.joined++;
    return true;
  }

  /** Proposals that rode on a Countersign. */
  joined = 0;

  /**
   * Delivers `inbox[to][index]`. `keep`: deliver a copy and leave the original queued (a duplicate).
   * Otherwise an accepted message leaves the queue and a rejected one goes to its back: its sender
   * retries until the partner accepts it.
   */
  deliver(to: Side, index = 0, keep = false): Delivery | null {
    const queue = this.inbox[to];
    if (queue.length === 0) return null;
    const i = index % queue.length;
    const envelope = queue[i]!;
    const before = this.channels[to];
    const result = this.apply(to, { type: "receive", message: envelope.message });
    if (envelope.carried && envelope.carried.revokedBelow > this.deliveredRevocation[envelope.from]) {
      this.deliveredRevocation[envelope.from] = envelope.carried.revokedBelow;
    }
    if (!keep) {
      queue.splice(i, 1);
      if (!result.ok) queue.push(envelope);
    }
    this.log.push(`deliver ${envelope.message.type} -> ${to}: ${result.ok ? "ok" : result.error.code}`);
    const delivery = { to, envelope, before, result };
    this.onDelivery?.(delivery);
    return delivery;
  }

  /** The message at the head of `inbox[to]` is lost; its sender sends it again later. */
  drop(to: Side): void {
    const queue = this.inbox[to];
    const head = queue.shift();
    if (head) queue.push(head);
  }

  /** `inbox[to][index]` is lost for good: nobody sends it again unless the protocol asks for it. */
  lose(to: Side, index: number): Envelope | null {
    const queue = this.inbox[to];
    if (queue.length === 0) return null;
    const [lost] = queue.splice(index % queue.length, 1);
    if (lost) this.log.push(`lose ${lost.message.type} -> ${to}`);
    return lost ?? null;
  }

  /**
   * What a node does with a proposal nobody answered: sends it again (unless a copy is still on its
   * way). True if it did.
   */
  resendProposal(side: Side): boolean {
    const c = this.channels[side];
    const next = c.inflight?.next;
    const signature = next && (side === 1 ? next.sig1 : next.sig2);
    if (!c.inflight || !next || !signature) return false;
    const queued = this.inbox[other(side)].some(
      (e) => e.message.type === "Propose" && e.message.state.nonce === next.state.nonce && e.from === side,
    );
    if (queued) return false;
    this.send(side, { type: "Propose", channelId: c.config.channelId, state: next.state, ops: c.inflight.ops, signature });
    return true;
  }

  /**
   * Delivers everything, in order, retrying rejected messages until a full pass over both queues
   * is accepted nowhere (the clock is still, so nothing left can ever be accepted); then discards
   * what is left. Returns the discarded messages.
   */
  drain(): Envelope[] {
    for (;;) {
      let progress = false;
      for (const to of [1, 2] as const) {
        const pending = this.inbox[to].length;
        for (let n = 0; n < pending && this.inbox[to].length > 0; n++) {
          const d = this.deliver(to, 0);
          if (d?.result.ok) progress = true;
        }
      }
      if (!progress) break;
    }
    const left = [...this.inbox[1], ...this.inbox[2]];
    this.inbox = { 1: [], 2: [] };
    return left;
  }

  /** Restarts `side` from its stored copy. */
  restart(side: Side): ChannelData {
    const copy = restored(this.channels[side]);
    this.channels[side] = copy;
    return copy;
  }
}
