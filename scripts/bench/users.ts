/**
 * The load generator's users: many user identities in one process, each speaking the real
 * protocol to the hub. Per user: its own key (real signatures), its own libp2p transport (a real
 * connection to the hub: noise, yamux, signed hello), a NodeCore with its channel, and the same
 * persist-then-send step sequence as the daemon (src/node/steps.ts). All users share one LevelDB
 * store, each under its own keys, so their commits are grouped into shared writes.
 *
 * What a user daemon does and these users do not: poll the chain, serve JSON-RPC, keep metrics.
 */
import { keccak256 } from "../../src/protocol/keccak.js";
import { randomFillSync } from "node:crypto";
import { Interface, type JsonRpcProvider } from "ethers";
import { artifact } from "../../src/chain/artifacts.js";
import { mined, type Deployment } from "../../src/chain/deploy.js";
import { IN_A_BUNDLE, NodeCore, type StepResult, type WireEnvelope } from "../../src/engine/node-core.js";
import { paymentKey } from "../../src/node/persist.js";
import { StepRunner, type WireMessage } from "../../src/node/steps.js";
import { createTransport, type P2PTransport } from "../../src/p2p/index.js";
import { balances, newChannel, type ChannelData, type Funding } from "../../src/protocol/channel.js";
import { normalizeAddress, orderParticipants, secretHash as hashSecret } from "../../src/protocol/eip712.js";
import type { IncomingPayment, OutgoingPayment } from "../../src/protocol/transfer.js";
import type { Address, Hex } from "../../src/protocol/types.js";
import { countingSigner, countingVerifier, type CryptoCounts, type Secp256k1Backend } from "../../src/signer/index.js";
import type { Store } from "../../src/store/index.js";
import type { HubRpc } from "./hub.js";

const utf8 = new TextEncoder();
const seed = (label: string): Uint8Array => keccak256(utf8.encode(label));
const unixNow = (): bigint => BigInt(Math.floor(Date.now() / 1000));
// Random ids from a pool: one randomBytes(32) call costs ~7-20 us here (the OS random source),
// about 4% of the load generator's time when made twice per payment.
const randomPool = Buffer.alloc(32 * 256);
let randomAt = randomPool.length;
const newId = (): Hex => {
  if (randomAt === randomPool.length) {
    randomFillSync(randomPool);
    randomAt = 0;
  }
  randomAt += 32;
  return `0x${randomPool.toString("hex", randomAt - 32, randomAt)}`;
};

interface Waiter {
  resolve(p: OutgoingPayment): void;
  reject(err: Error): void;
}

export interface UserCounters {
  crypto: CryptoCounts;
  /** Messages whose send failed (they stay in the outbox; nothing re-sends them here). */
  sendFailures: number;
  /** Steps the engine refused (a peer's message it did not accept). */
  refused: number;
  /** Reject messages received from the hub by code: a proposal refused (CONFLICT: both sides proposed at once). */
  rejects: Record<string, number>;
  /** Times a user lost its connection to the hub. */
  disconnects: number;
}

export class BenchUser {
  readonly address: Address;
  readonly core: NodeCore;
  readonly transport: P2PTransport;
  readonly #runner: StepRunner;
  readonly #store: Store;
  readonly #hub: Address;
  readonly #counters: UserCounters;
  readonly #outboxPeer: (to: Address) => string;
  readonly #waiters = new Map<string, Waiter>();
  #issued: { resolve(): void; promise: Promise<void> } | null = null;
  /** Transfers completed to this user / by this user. */
  received = 0;
  sent = 0;
  channelId: Hex | null = null;

  constructor(index: number, store: Store, hub: Address, backend: Secp256k1Backend, counters: UserCounters) {
    const signer = countingSigner(backend.createSigner(seed(`starling-bench-user-${index}`)), counters.crypto);
    const verifier = countingVerifier(backend.verifier, counters.crypto);
    this.address = normalizeAddress(signer.address);
    this.#store = store;
    this.#hub = hub;
    this.#counters = counters;
    this.core = new NodeCore({ signer, verifier, clock: unixNow });
    // The daemon's layout (src/node/node.ts) under a short tag per user, as each user's own
    // store would hold it.
    const tag = `u${index}!`;
    this.#outboxPeer = (to) => `${tag}${to}`;
    this.#runner = new StepRunner({
      core: this.core,
      store,
      keys: {
        transfers: `${tag}transfer!`,
        outboxPeer: this.#outboxPeer,
        payment: (p) => `${tag}${paymentKey(p)}`,
      },
      dispatch: (r, wire) => this.#dispatch(r, wire),
    });
    this.transport = createTransport({
      signer,
      verifier,
      privateKey: seed(`starling-bench-peer-${index}`),
      listen: [],
      sendTimeoutMs: 120_000,
      // As a user daemon does (src/node/node.ts).
      limits: { pingIntervalMs: 60_000 },
      pipelineHandler: true,
    });
  }

  async start(): Promise<void> {
    this.transport.onPeer((_peer, event) => {
      if (event === "disconnected") this.#counters.disconnects++;
    });
    this.transport.onMessage(async (from, message) => {
      if (typeof message !== "object" || message === null || !("kind" in message)) return;
      const wire = message as WireEnvelope;
      for (const envelope of wire.kind === "bundle" ? wire.messages : [wire]) {
        if (envelope.kind === "channel" && envelope.message.type === "Reject") {
          const code = String(envelope.message.code);
          this.#counters.rejects[code] = (this.#counters.rejects[code] ?? 0) + 1;
        }
      }
      const r = await this.#runner.step({ type: "deliver", from, envelope: wire });
      if (!r.ok) this.#counters.refused++;
      this.#counters.refused += r.rejected.filter((x) => x.during.endsWith(IN_A_BUNDLE)).length;
    });
    await this.transport.start();
  }

  /** Connects to the hub; if the first dial fails, waits for the transport's redials (up to `timeoutMs`). */
  async connect(hubMultiaddr: string, timeoutMs = 120_000): Promise<void> {
    try {
      await this.transport.connect(this.#hub, [hubMultiaddr]);
      return;
    } catch (err) {
      const deadline = Date.now() + timeoutMs;
      while (!this.transport.isConnected(this.#hub)) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Adopts the channel with the hub (as the daemon does when it sees it opened on chain). */
  async adopt(channelId: Hex, funding: Funding, domain: ChannelData["config"]["domain"]): Promise<void> {
    const [p1, p2] = orderParticipants(this.address, this.#hub);
    const c = newChannel({ channelId, domain, participant1: p1, participant2: p2, me: p1 === this.address ? 1 : 2 }, funding);
    this.core.addChannel(c);
    this.channelId = c.config.channelId;
    await this.#store.commit({ channels: [{ channelId: c.config.channelId, record: c }] });
  }

  /** Resolves when the hub's issuance to this user has arrived. */
  expectIssue(): Promise<void> {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.#issued = { resolve, promise };
    return promise;
  }

  /** Opens an invoice for `amount` (durable here) and returns its secret hash. */
  async invoice(amount: bigint): Promise<Hex> {
    const secret = newId();
    const r = await this.#runner.step({ type: "invoice", secret, amount, expiresAt: unixNow() + 3600n });
    if (!r.ok) throw new Error(`invoice refused: ${r.error?.code}: ${r.error?.message}`);
    return hashSecret(secret);
  }

  /**
   * Pays `target` through the hub, with the target's invoice (`secretHash`) or a secret of its own;
   * resolves once the payment is completed and that is durable here.
   */
  async pay(target: Address, amount: bigint, secretHash?: Hex): Promise<OutgoingPayment> {
    const paymentId = newId();
    const done = new Promise<OutgoingPayment>((resolve, reject) => this.#waiters.set(paymentId, { resolve, reject }));
    const lock = secretHash === undefined ? { secret: newId() } : { secretHash };
    const r = await this.#runner.step({ type: "pay", paymentId, target, amount, ...lock });
    if (!r.ok) {
      this.#waiters.delete(paymentId);
      throw new Error(`pay refused: ${r.error?.code}: ${r.error?.message}`);
    }
    return done;
  }

  /** This user's definite share in its channel's newest signed state, and whether anything is still pending there. */
  balance(): { mine: bigint; pending: boolean } {
    const c = this.channelId === null ? undefined : this.core.channel(this.channelId);
    if (!c) throw new Error(`user ${this.address} has no channel`);
    return { mine: balances(c).mine, pending: c.latest.locks.length > 0 || c.inflight !== null };
  }

  tick(): Promise<StepResult> {
    return this.#runner.step({ type: "tick" });
  }

  stop(): Promise<void> {
    this.#runner.stop();
    return this.transport.stop();
  }

  #dispatch(r: StepResult, wire: readonly WireMessage[]): void {
    for (const w of wire) {
      const peer = this.#outboxPeer(w.to);
      this.transport.send(w.to, w.encoded).then(
        () => this.#store.ackLater(peer, w.seq),
        () => {
          this.#counters.sendFailures++;
        },
      );
    }
    for (const e of r.events) {
      if (e.type === "paymentSent" || (e.type === "paymentFailed" && e.payment.direction === "out")) {
        if (e.type === "paymentSent" && e.payment.kind === "transfer") this.sent++;
        const w = this.#waiters.get(e.payment.paymentId);
        if (!w) continue;
        this.#waiters.delete(e.payment.paymentId);
        if (e.type === "paymentSent") w.resolve(e.payment);
        else w.reject(new Error(`payment failed: ${e.payment.reason ?? ""}`));
      } else if (e.type === "paymentReceived") {
        const p: IncomingPayment = e.payment;
        if (p.kind === "issue") this.#issued?.resolve();
        else this.received++;
      }
    }
  }
}

/** Runs `work` over `items` with at most `limit` at a time. */
export async function pool<T>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await work(items[i]!, i);
      }
    }),
  );
}

/**
 * Opens a channel between the hub and every user on chain. anvil's dev accounts are unlocked, so
 * they send (and pay for) the `open` calls; the hub adopts each channel from the chain's event
 * and grants its credit line itself, as it does for any user.
 */
export async function openChannels(provider: JsonRpcProvider, deployment: Deployment, hub: Address, users: readonly Address[], openers: readonly string[]): Promise<void> {
  const iface = new Interface(artifact("StarlingChannels").abi as ConstructorParameters<typeof Interface>[0]);
  const per = openers.map((_, i) => users.filter((_u, j) => j % openers.length === i));
  const last: string[] = [];
  await Promise.all(
    openers.map(async (from, i) => {
      for (const user of per[i]!) {
        const data = iface.encodeFunctionData("open", [hub, user]);
        const hash = (await provider.send("eth_sendTransaction", [{ from, to: deployment.channels, data, gas: "0x30000" }])) as string;
        last[i] = hash;
      }
    }),
  );
  for (const hash of last) if (hash) await mined({ hash, provider });
}

export interface HubChannel {
  channelId: Hex;
  partner: Address;
  funding: Funding;
}

/** Waits until the hub reports a credited channel with each of `users`; returns them by user. */
export async function waitForHubChannels(rpc: HubRpc, hub: Address, users: readonly Address[], timeoutMs: number): Promise<Map<Address, HubChannel>> {
  const want = new Set(users);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const list = await rpc.call("channel.list", {});
    const ready = new Map<Address, HubChannel>();
    for (const c of list) {
      const partner = normalizeAddress(c.partner);
      if (!want.has(partner) || c.status !== "open" || c.creditSide !== "me" || BigInt(c.credit) === 0n) continue;
      const [p1] = orderParticipants(hub, partner);
      const hubSide = p1 === hub ? 1 : 2;
      const hubDeposit = BigInt(c.deposit);
      const userDeposit = BigInt(c.partnerDeposit);
      ready.set(partner, {
        channelId: c.channelId as Hex,
        partner,
        funding: {
          deposit1: hubSide === 1 ? hubDeposit : userDeposit,
          deposit2: hubSide === 1 ? userDeposit : hubDeposit,
          withdrawn1: 0n,
          withdrawn2: 0n,
          credit: BigInt(c.credit),
          creditSide: hubSide,
        },
      });
    }
    if (ready.size === want.size) return ready;
    if (Date.now() > deadline) throw new Error(`only ${ready.size} of ${want.size} channels credited by the hub after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
