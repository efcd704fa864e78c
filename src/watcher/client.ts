/**
 * The node's side of a watchtower: after channel updates it hands the tower what defends each
 * channel while the node is offline (see handoff.ts). Best effort and off the payment path:
 * hand-offs are built and sent outside the node's steps, at most one per channel in flight, the
 * newest state replacing any not yet sent, and retried with backoff until the tower acks.
 */
import { EventEmitter } from "node:events";
import type { P2PTransport } from "../p2p/index.js";
import { other, sigOf, type ChannelData, type StateSignature } from "../protocol/channel.js";
import { normalizeAddress, ZERO_HASH } from "../protocol/eip712.js";
import type { Address, ChannelState, Hex } from "../protocol/types.js";
import type { Signer } from "../signer/types.js";
import type { Store } from "../store/index.js";
import { HANDOFF_KIND, HANDOFF_VERSION, seal, signUpdate, type CloseCandidate, type HandOff } from "./handoff.js";

export interface TowerPeer {
  address: string;
  multiaddrs: string[];
}

/** A fully signed state and this node's signature on it. */
export interface OwnSignedState {
  state: ChannelState;
  /** Null for the initial state. */
  signature: StateSignature | null;
}

export interface TowerClientLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface TowerClientOptions {
  transport: P2PTransport;
  tower: TowerPeer;
  /** This node's key: signs the tower's copy of each state. */
  signer: Signer;
  /** Where the previous state of each channel is kept (written through `track`). */
  store: Store;
  logger?: TowerClientLogger;
  /** First retry delay after a failed hand-off; doubles per failure. Default 1 s. */
  retryMinMs?: number;
  /** Default 60 s. */
  retryMaxMs?: number;
}

export interface TowerClientEvents {
  /** The tower acknowledged the channel's hand-off up to this nonce. */
  handedOff: [channelId: Hex, nonce: bigint];
  /** The tower refused a hand-off (it is not retried until the next update). */
  refused: [channelId: Hex, reason: string];
}

/** Nacks that are the tower's verdict on the hand-off, not a passing failure. */
const REFUSALS = /^(BAD_HANDOFF|NOT_PARTICIPANT|BAD_SIGNATURE|UNKNOWN_CHANNEL):/;

const silent: TowerClientLogger = { debug() {}, info() {}, warn() {} };

/** Store meta key of a channel's previous fully signed state. */
export function previousStateKey(channelId: Hex): string {
  return `tower.prev:${channelId.toLowerCase()}`;
}

function initialState(channelId: Hex): ChannelState {
  return { channelId, nonce: 0n, sent1: 0n, sent2: 0n, locked1: 0n, locked2: 0n, locksRoot: ZERO_HASH };
}

function ownSignature(c: ChannelData): StateSignature | null {
  return sigOf(c.latest, c.config.me);
}

/**
 * The client's signatures on `prev` the partner may hold: the one that completed it and the
 * idle `Revoke` (revokedBelow = its nonce). Signatures are deterministic, so re-signing gives
 * the very bytes the partner got.
 */
function closeCandidates(c: ChannelData, prev: OwnSignedState, signer: Signer): CloseCandidate[] {
  if (prev.state.nonce === 0n) return [{ state: prev.state, signature: null }];
  const out: CloseCandidate[] = [];
  if (prev.signature) out.push({ state: prev.state, signature: prev.signature });
  if (prev.signature?.revokedBelow !== prev.state.nonce) {
    out.push({ state: prev.state, signature: signUpdate(signer, c.config.domain, prev.state, prev.state.nonce) });
  }
  return out;
}

/**
 * The tower's copy of this node's signature on the newest state: a `revokedBelow` the partner
 * never receives (it gets the one that completed the state, or the state's own nonce), so that
 * a seal opened never holds the key of the next one. Revoking less is always safe.
 */
function towerRevokedBelow(completing: bigint | undefined, nonce: bigint): bigint | null {
  if (completing !== 0n) return 0n;
  if (nonce > 1n) return 1n;
  return null;
}

/** Builds the hand-off for a channel from its record and the state before its newest. */
export function buildHandOff(c: ChannelData, prev: OwnSignedState | null, signer: Signer): HandOff {
  const { channelId, participant1, participant2, domain, me } = c.config;
  const latest = c.latest;
  let sealed: HandOff["sealed"] = null;
  const mine = ownSignature(c);
  const theirs = other(me) === 1 ? latest.sig1 : latest.sig2;
  if (latest.state.nonce > 0n && mine && theirs) {
    const below = towerRevokedBelow(mine.revokedBelow, latest.state.nonce);
    const copy = below === null ? mine : signUpdate(signer, domain, latest.state, below);
    const content = me === 1 ? { state: latest.state, sig1: copy, sig2: theirs } : { state: latest.state, sig1: theirs, sig2: copy };
    const candidates = prev && prev.state.nonce < latest.state.nonce ? closeCandidates(c, prev, signer) : [];
    sealed = seal(domain, normalizeAddress(signer.address), content, candidates);
  }
  const revocation = c.partnerRevocation && c.partnerRevocation.revokedBelow > 0n ? c.partnerRevocation : null;
  return { kind: HANDOFF_KIND, v: HANDOFF_VERSION, channelId, participant1, participant2, revocation, sealed };
}

export class TowerClient {
  readonly events = new EventEmitter<TowerClientEvents>();
  readonly tower: Address;
  private readonly multiaddrs: string[];
  private readonly transport: P2PTransport;
  private readonly signer: Signer;
  private readonly store: Store;
  private readonly log: TowerClientLogger;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  /** Newest fully signed state seen per channel, and the one before it. */
  private readonly current = new Map<string, OwnSignedState>();
  private readonly previous = new Map<string, OwnSignedState>();
  /** Channels waiting for a hand-off: the newest record wins. */
  private readonly dirty = new Map<string, ChannelData>();
  /** What was last queued per channel, so steps that change neither are not handed off again. */
  private readonly queued = new Map<string, string>();
  private readonly inflight = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private offPeer: (() => void) | undefined;
  private stopped = false;

  constructor(options: TowerClientOptions) {
    this.transport = options.transport;
    this.tower = normalizeAddress(options.tower.address, "watchtower.address");
    this.multiaddrs = options.tower.multiaddrs;
    this.signer = options.signer;
    this.store = options.store;
    this.log = options.logger ?? silent;
    this.retryMinMs = options.retryMinMs ?? 1_000;
    this.retryMaxMs = options.retryMaxMs ?? 60_000;
  }

  /**
   * Loads what is known of `channels` (the node's live ones), connects to the tower and hands
   * each of them off once: the tower may have missed the last hand-off before a restart.
   */
  async start(channels: readonly ChannelData[]): Promise<void> {
    for (const c of channels) {
      const id = c.config.channelId.toLowerCase();
      this.current.set(id, { state: c.latest.state, signature: ownSignature(c) });
      const prev = await this.store.getMeta<OwnSignedState>(previousStateKey(c.config.channelId));
      if (prev) this.previous.set(id, prev);
    }
    this.offPeer = this.transport.onPeer((address, event) => {
      if (event !== "connected" || address !== this.tower) return;
      for (const id of this.dirty.keys()) {
        clearTimeout(this.timers.get(id));
        this.timers.delete(id);
        this.kick(id);
      }
    });
    this.transport.connect(this.tower, this.multiaddrs).catch((err: unknown) => {
      this.log.warn({ tower: this.tower, err: String(err) }, "watchtower not reachable yet; will retry");
    });
    this.handOff(channels);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.offPeer?.();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  /**
   * Notes channels whose newest state changed and returns the store writes that keep the state
   * before it; the caller commits them with the channel records, so both survive together.
   */
  track(changed: readonly ChannelData[]): { key: string; value: OwnSignedState }[] {
    const writes: { key: string; value: OwnSignedState }[] = [];
    for (const c of changed) {
      const id = c.config.channelId.toLowerCase();
      // A channel first seen here was just opened: its state before was the initial one.
      const cur = this.current.get(id) ?? { state: initialState(c.config.channelId), signature: null };
      if (c.latest.state.nonce <= cur.state.nonce && this.current.has(id)) continue;
      if (c.latest.state.nonce > cur.state.nonce) {
        this.previous.set(id, cur);
        writes.push({ key: previousStateKey(c.config.channelId), value: cur });
      }
      this.current.set(id, { state: c.latest.state, signature: ownSignature(c) });
    }
    return writes;
  }

  /** Queues hand-offs for `changed` (after their records are durable). Never throws. */
  handOff(changed: readonly ChannelData[]): void {
    for (const c of changed) {
      if (c.status === "closed" || (c.latest.state.nonce === 0n && !c.partnerRevocation)) continue;
      const id = c.config.channelId.toLowerCase();
      // A revocation alone can change without a new state.
      const what = `${c.latest.state.nonce}:${c.partnerRevocation?.revokedBelow ?? 0n}`;
      if (this.queued.get(id) === what) continue;
      this.queued.set(id, what);
      this.dirty.set(id, c);
      this.kick(id);
    }
  }

  /** Channels with a hand-off not yet acknowledged. */
  get pending(): number {
    return this.dirty.size + this.inflight.size;
  }

  private kick(id: string): void {
    if (this.stopped || this.inflight.has(id) || this.timers.has(id)) return;
    this.inflight.add(id);
    void this.run(id).finally(() => this.inflight.delete(id));
  }

  private async run(id: string): Promise<void> {
    for (;;) {
      const c = this.dirty.get(id);
      if (!c || this.stopped) return;
      this.dirty.delete(id);
      let message: HandOff;
      try {
        message = buildHandOff(c, this.previous.get(id) ?? null, this.signer);
      } catch (err) {
        this.log.warn({ channelId: id, err: String(err) }, "cannot build a watchtower hand-off");
        return;
      }
      try {
        await this.transport.send(this.tower, message);
        this.failures.delete(id);
        this.log.debug({ channelId: id, nonce: c.latest.state.nonce.toString() }, "handed off to the watchtower");
        this.events.emit("handedOff", c.config.channelId, c.latest.state.nonce);
      } catch (err) {
        const code = typeof err === "object" && err !== null && "code" in err ? String(err.code) : "";
        const text = err instanceof Error ? err.message : String(err);
        if (code === "nack" && REFUSALS.test(text)) {
          // The tower refused it: the same data would be refused again.
          this.log.warn({ channelId: id, err: String(err) }, "the watchtower refused a hand-off");
          this.events.emit("refused", c.config.channelId, text);
          continue;
        }
        if (!this.dirty.has(id)) this.dirty.set(id, c);
        this.retryLater(id);
        this.log.debug({ channelId: id, err: String(err) }, "watchtower hand-off not acknowledged; will retry");
        return;
      }
    }
  }

  private retryLater(id: string): void {
    if (this.stopped) return;
    const n = (this.failures.get(id) ?? 0) + 1;
    this.failures.set(id, n);
    const delay = Math.min(this.retryMaxMs, this.retryMinMs * 2 ** Math.min(n - 1, 20));
    const timer = setTimeout(() => {
      this.timers.delete(id);
      this.kick(id);
    }, delay);
    timer.unref();
    this.timers.set(id, timer);
  }
}
