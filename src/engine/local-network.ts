/**
 * Several NodeCores joined in memory, with one clock. Delivery is explicit (`deliver`, `run`) so
 * a caller decides the interleaving, can drop messages (`dropIf`) and can move time (`advance`).
 * Links keep FIFO order, as a libp2p stream does; `run` with a random source interleaves links.
 */
import { newChannel, type ChannelData, type Funding } from "../protocol/channel.js";
import { channelId as computeChannelId, normalizeAddress, orderParticipants } from "../protocol/eip712.js";
import type { Address, Domain, Hex } from "../protocol/types.js";
import type { ChainAction, Envelope, NodeCore, NodeEvent, NodeInput, Rejection, StepResult } from "./node-core.js";

export interface Wire {
  id: number;
  from: Address;
  to: Address;
  envelope: Envelope;
}

export interface LoggedRejection extends Rejection {
  node: Address;
  wire: Wire | null;
}

export class LocalNetwork {
  /** Unix seconds, shared by every node (pass `network.clock` to them). */
  now: bigint;
  readonly nodes = new Map<Address, NodeCore>();
  /** Sent, not yet delivered, oldest first. */
  readonly inflight: Wire[] = [];
  /** Messages for which this returns true are lost instead of delivered. */
  dropIf: ((wire: Wire) => boolean) | null = null;
  readonly dropped: Wire[] = [];
  readonly events = new Map<Address, NodeEvent[]>();
  readonly chain = new Map<Address, ChainAction[]>();
  readonly rejected: LoggedRejection[] = [];
  /** Nodes whose last steps held a payer's settle back (`settlesHeld`): their shell's timer is due. */
  readonly settlesHeld = new Set<Address>();
  #nextId = 1;

  constructor(start = 1_700_000_000n) {
    this.now = start;
  }

  readonly clock = (): bigint => this.now;

  add(node: NodeCore): NodeCore {
    this.nodes.set(node.address, node);
    this.events.set(node.address, []);
    this.chain.set(node.address, []);
    return node;
  }

  node(address: Address): NodeCore {
    const n = this.nodes.get(normalizeAddress(address));
    if (!n) throw new Error(`LocalNetwork: no node ${address}`);
    return n;
  }

  advance(seconds: bigint): void {
    this.now += seconds;
  }

  /** Applies an input at a node and puts what it sends on the wire. */
  submit(at: Address, input: NodeInput): StepResult {
    const node = this.node(at);
    const result = node.handle(input);
    this.#collect(node.address, result, null);
    return result;
  }

  tick(at: Address): StepResult {
    return this.submit(at, { type: "tick" });
  }

  tickAll(): void {
    for (const address of this.nodes.keys()) this.tick(address);
  }

  /** Delivers (or drops) the message at `index` of `inflight`; false if there is none. */
  deliver(index = 0): boolean {
    const [wire] = this.inflight.splice(index, 1);
    if (!wire) return false;
    const node = this.nodes.get(wire.to);
    if (!node || (this.dropIf && this.dropIf(wire))) {
      this.dropped.push(wire);
      return true;
    }
    const result = node.handle({ type: "deliver", from: wire.from, envelope: wire.envelope });
    this.#collect(node.address, result, wire);
    return true;
  }

  /**
   * Delivers one message; false if none is in flight. With `random`, it picks a random message
   * and delivers the oldest one on that link, so links interleave but each stays in order.
   */
  step(random?: () => number): boolean {
    if (this.inflight.length === 0) return false;
    let index = 0;
    if (random) {
      const pick = this.inflight[Math.floor(random() * this.inflight.length)];
      index = pick ? this.inflight.findIndex((w) => w.from === pick.from && w.to === pick.to) : 0;
    }
    return this.deliver(index);
  }

  /** What each node's shell does when its settle batching interval ends: input `flushSettles`. */
  flushHeldSettles(): void {
    const held = [...this.settlesHeld];
    this.settlesHeld.clear();
    for (const address of held) this.submit(address, { type: "flushSettles" });
  }

  /**
   * Delivers until nothing is in flight; returns how many messages were handled. Held settles are
   * flushed whenever the wire is empty (the batching interval is longer than any exchange here).
   */
  run(opts: { random?: () => number; maxSteps?: number } = {}): number {
    const max = opts.maxSteps ?? 1_000_000;
    let steps = 0;
    for (;;) {
      if (this.inflight.length === 0) this.flushHeldSettles();
      if (this.inflight.length === 0) return steps;
      if (steps >= max) throw new Error(`LocalNetwork: still ${this.inflight.length} messages in flight after ${max} steps`);
      this.step(opts.random);
      steps++;
    }
  }

  #collect(at: Address, result: StepResult, wire: Wire | null): void {
    this.events.get(at)?.push(...result.events);
    this.chain.get(at)?.push(...result.chain);
    if (result.settlesHeld) this.settlesHeld.add(at);
    if (result.error) this.rejected.push({ node: at, wire, during: wire ? `deliver ${describe(wire.envelope)}` : "input", error: result.error });
    for (const r of result.rejected) this.rejected.push({ node: at, wire, ...r });
    for (const out of result.send) {
      this.inflight.push({ id: this.#nextId++, from: at, to: normalizeAddress(out.to), envelope: out.envelope });
    }
  }
}

const describe = (e: Envelope): string => e.message.type;

/**
 * Both copies of a new channel between `a` and `b`, with deposits, added to both nodes; the
 * participants are ordered as the contract orders them.
 */
export function openLocalChannel(opts: {
  domain: Domain;
  a: NodeCore;
  b: NodeCore;
  depositA: bigint;
  depositB: bigint;
  counter?: number;
}): { channelId: Hex; a: ChannelData; b: ChannelData } {
  const { domain, a, b } = opts;
  const [p1, p2] = orderParticipants(a.address, b.address);
  const aIs1 = normalizeAddress(p1) === a.address;
  const channelId = computeChannelId(domain.chainId, domain.verifyingContract, p1, p2, opts.counter ?? 1);
  const funding: Funding = {
    deposit1: aIs1 ? opts.depositA : opts.depositB,
    deposit2: aIs1 ? opts.depositB : opts.depositA,
    withdrawn1: 0n,
    withdrawn2: 0n,
    credit: 0n,
    creditSide: 0,
  };
  const config = { channelId, domain, participant1: p1, participant2: p2 };
  const ca = newChannel({ ...config, me: aIs1 ? 1 : 2 }, funding);
  const cb = newChannel({ ...config, me: aIs1 ? 2 : 1 }, funding);
  a.addChannel(ca);
  b.addChannel(cb);
  return { channelId, a: ca, b: cb };
}
