/**
 * The Starling node: the composition root that wires the pure engine (src/engine/node-core.ts)
 * to LevelDB, libp2p, the chain and the JSON-RPC server.
 *
 * Order that keeps funds safe, for every engine step: apply the input in memory -> write the
 * changed channels, the transfer state and the outgoing messages in ONE atomic batch -> only
 * after that batch is durable, send the messages and act on events. A message received from a
 * peer is acknowledged only after the step it caused is durable.
 */
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdirSync } from "node:fs";
import { Wallet, type JsonRpcProvider } from "ethers";
import type { Logger } from "pino";
import { connectProvider, readDeployment, type Deployment } from "../chain/deploy.js";
import { ChannelsClient, type ChannelInfo } from "../chain/adapter.js";
import { ChainEvents, type ChainEvent } from "../chain/events.js";
import { ChainError } from "../chain/errors.js";
import { dataPath, type Config } from "../config.js";
import { NodeCore, type NodeInput, type StepResult, type NodeEvent, type WireEnvelope } from "../engine/node-core.js";
import {
  balances as channelBalances,
  newChannel,
  other,
  share,
  sigOf,
  type ChannelData,
  type Funding,
  type Side,
} from "../protocol/channel.js";
import { normalizeAddress, orderParticipants, secretHash } from "../protocol/eip712.js";
import type { Address, Hex } from "../protocol/types.js";
import type { OutgoingPayment, IncomingPayment, TransferState } from "../protocol/transfer.js";
import {
  countingSigner,
  countingVerifier,
  loadBackend,
  newCryptoCounts,
  type CryptoCounts,
  type Secp256k1Backend,
  type Signer,
} from "../signer/index.js";
import { LevelStore, type Batch, type Encoded, type Store } from "../store/index.js";
import { createTransport, type P2PTransport } from "../p2p/index.js";
import { TowerClient } from "../watcher/client.js";
import { loadedChannel, paymentKey, storedChannel, transferStateEntries, transferStateFromEntries, transferStateFromPlain, type StoredTransferState } from "./persist.js";
import { StepRunner, type WireMessage } from "./steps.js";
import { NodeError } from "./errors.js";

/** The older form of the transfer state: one meta record holding all of it (read, then migrated). */
const TRANSFERS_KEY = "transfers";
/** The transfer state, one meta record per entry. */
const TRANSFERS_PREFIX = "transfer!";
/** `paidHash!<secretHash>` -> payment id: invoices this node paid (see `startPayment`). */
const PAID_HASH_PREFIX = "paidHash!";
const CURSOR_KEY = "chainCursor";
const PEERS_KEY = "peers";

export interface NodeStartOptions {
  config: Config;
  /** The node's Ethereum key (from the keystore). */
  privateKey: Uint8Array;
  logger: Logger;
  /** Secp256k1 implementation; 'auto' (native if it loads) by default. */
  backend?: Secp256k1Backend;
  /** Seconds; the node's clock (tests may shift it). */
  clock?: () => bigint;
}

export interface NodeEvents {
  paymentReceived: [IncomingPayment];
  paymentSent: [OutgoingPayment];
  paymentFailed: [OutgoingPayment | IncomingPayment];
  channelChanged: [ChannelSummary];
}

export interface ChannelSummary {
  channelId: Hex;
  partner: Address;
  status: ChannelData["status"];
  nonce: bigint;
  /** This node's definite balance. */
  balance: bigint;
  partnerBalance: bigint;
  locked: bigint;
  partnerLocked: bigint;
  available: bigint;
  deposit: bigint;
  partnerDeposit: bigint;
  withdrawn: bigint;
  partnerWithdrawn: bigint;
  credit: bigint;
  creditSide: "me" | "partner" | "none";
}

const unixNow = (): bigint => BigInt(Math.floor(Date.now() / 1000));

/**
 * Connections are pinged every minute (a yamux ping frame, see ConnectionLiveness): a hub answers
 * the pings of all its users as well as sending its own.
 */
const PING_INTERVAL_MS = 60_000;
/** The once-a-second tick runs in this many slices of the channels (see NodeInput "tick"). */
export const TICK_SLICES = 10;
/** libp2p's defaults take 300 connections and 5 new ones per second per remote host. */
const HUB_CONNECTION_LIMITS = {
  maxConnections: 50_000,
  maxIncomingPendingConnections: 256,
  inboundConnectionThreshold: 1_000,
  pingIntervalMs: PING_INTERVAL_MS,
};

/** Counters for metrics. */
export interface NodeStats {
  /** Signatures made (channel updates, secret requests, hellos, ...). */
  signatures: number;
  /** Signatures checked (each an ecrecover). */
  recoveries: number;
  /** Store commits issued, and the LevelDB writes they were grouped into. */
  commits: number;
  writes: number;
  /** Bytes of keys and values written, and milliseconds spent waiting for writes. */
  writeBytes: number;
  writeMs: number;
}

export class StarlingNode {
  // Every RPC call waiting for a payment listens here: no listener limit.
  readonly events = new EventEmitter<NodeEvents>().setMaxListeners(0);
  readonly address: Address;
  readonly role: Config["role"];
  private readonly log: Logger;
  private readonly store: Store;
  private readonly provider: JsonRpcProvider;
  private readonly deployment: Deployment;
  private readonly chainClient: ChannelsClient;
  private readonly chainEvents: ChainEvents;
  private readonly transport: P2PTransport;
  private readonly core: NodeCore;
  private readonly signer: Signer;
  private readonly cryptoCounts: CryptoCounts;
  /** Hands channels to the configured watchtower. */
  private readonly tower: TowerClient | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  /** Applies steps in order, commits each, and sends what each sends once its commit is durable. */
  private readonly steps: StepRunner;
  private stopped = false;
  private readonly hubs = new Set<Address>();
  /** Chain work per channel (settle, unlock) already in progress. */
  private readonly chainBusy = new Set<string>();
  /** Ids (as stored) of channels that are closing or closed: what watchClosedChannels looks at. */
  private readonly ending = new Set<string>();
  /** A hub's funding of a newly adopted user channel, by lowercase channel id, while in flight. */
  private readonly funding = new Map<string, Promise<void>>();

  private constructor(
    private readonly config: Config,
    parts: {
      log: Logger;
      store: Store;
      provider: JsonRpcProvider;
      deployment: Deployment;
      chainClient: ChannelsClient;
      transport: P2PTransport;
      core: NodeCore;
      signer: Signer;
      cryptoCounts: CryptoCounts;
      /** Ids of the stored channels that are closing or closed. */
      ending: readonly string[];
      cursorStart: number | undefined;
    },
  ) {
    for (const id of parts.ending) this.ending.add(id);
    this.cryptoCounts = parts.cryptoCounts;
    this.log = parts.log;
    this.store = parts.store;
    this.provider = parts.provider;
    this.deployment = parts.deployment;
    this.chainClient = parts.chainClient;
    this.transport = parts.transport;
    this.core = parts.core;
    this.steps = new StepRunner({
      core: this.core,
      store: this.store,
      keys: { transfers: TRANSFERS_PREFIX, outboxPeer: (to) => to, payment: paymentKey },
      augment: (r, batch) => this.augmentStep(r, batch),
      dispatch: (r, wire) => this.dispatchStep(r, wire),
    });
    this.signer = parts.signer;
    this.address = normalizeAddress(parts.signer.address);
    this.role = config.role;
    this.tower = config.watchtower
      ? new TowerClient({ transport: this.transport, tower: config.watchtower, signer: this.signer, store: this.store, logger: this.log })
      : undefined;
    // Configured peers are hubs: a user's hub, or a hub's partner hubs.
    for (const p of config.p2p.peers) this.hubs.add(normalizeAddress(p.address));
    this.chainEvents = new ChainEvents({
      provider: this.provider,
      deployment: this.deployment,
      confirmations: config.chain.confirmations,
      pollIntervalMs: config.chain.pollIntervalMs,
      involving: this.address,
      knownChannels: () => this.core.channels().map((c) => c.config.channelId),
      cursor: {
        load: async () => (await this.store.getMeta<number>(CURSOR_KEY)) ?? parts.cursorStart,
        save: (block) => this.store.commit({ meta: [{ key: CURSOR_KEY, value: block }] }).then(() => undefined),
      },
      handler: (e) => this.onChainEvent(e),
      onError: (err) => this.log.warn({ err: String(err) }, "chain event scan failed; retrying"),
    });
  }

  /** Opens the store, restores the engine, starts p2p, the chain scanner and the timers. */
  static async start(opts: NodeStartOptions): Promise<StarlingNode> {
    const { config, logger } = opts;
    if (config.role === "watchtower") throw new Error(`${config.dataDir} is a watchtower: run it with \`starling watchtower\``);
    const backend = opts.backend ?? (await loadBackend("auto"));
    // Counted for the metrics: signatures made and checked are most of a hub's CPU per payment.
    const cryptoCounts = newCryptoCounts();
    const signer = countingSigner(backend.createSigner(opts.privateKey), cryptoCounts);
    const verifier = countingVerifier(backend.verifier, cryptoCounts);
    mkdirSync(config.dataDir, { recursive: true });
    const deployment = readDeployment(dataPath(config, config.chain.deployment));
    const rpcUrl = config.chain.rpcUrl;
    const provider = connectProvider(rpcUrl, config.chain.pollIntervalMs);
    const network = await provider.getNetwork();
    if (Number(network.chainId) !== deployment.chainId) {
      throw new Error(`chain ${rpcUrl} has chain id ${network.chainId}, the deployment file says ${deployment.chainId}`);
    }
    const store = new LevelStore(dataPath(config, "db"));
    await store.open();
    try {
      const channels = await readChannels(store);
      const transfers = await loadTransfers(store);
      const clock = opts.clock ?? unixNow;
      const live = channels.filter((c) => c.status !== "closed");
      const core = new NodeCore({
        signer,
        verifier,
        clock,
        channels: live,
        ...(transfers ? { transfers } : {}),
      });
      // A hub reaches users of its partner hubs through its channel with them.
      const hubPeers = new Set(config.p2p.peers.map((p) => normalizeAddress(p.address)));
      if (config.role === "hub") {
        const link = live.find((c) => hubPeers.has(c.config.me === 1 ? c.config.participant2 : c.config.participant1));
        if (link) core.setDefaultRoute(link.config.channelId);
      }
      const wallet = new Wallet(Buffer.from(opts.privateKey).toString("hex"), provider);
      const chainClient = ChannelsClient.connect(deployment, wallet, { confirmations: config.chain.confirmations });
      // The libp2p identity comes from a seed kept in the store, so the peer id survives restarts.
      const p2pSeed = (await store.getMeta<string>("p2pSeed")) ?? randomBytes(32).toString("hex");
      await store.commit({ meta: [{ key: "p2pSeed", value: p2pSeed }] });
      const transport = createTransport({
        listen: config.p2p.listen,
        signer,
        verifier,
        privateKey: Buffer.from(p2pSeed, "hex"),
        // A hub serves many users, who may all connect at once (after a restart) and from few addresses.
        limits: config.role === "hub" ? HUB_CONNECTION_LIMITS : { pingIntervalMs: PING_INTERVAL_MS },
        // The handler applies each message as it is called (the step runner keeps that order) and
        // resolves once the step is durable: a peer's next message need not wait for that.
        pipelineHandler: true,
        logger: {
          info: (m, ...a) => logger.debug({ p2p: a }, m),
          warn: (m, ...a) => logger.warn({ p2p: a }, m),
          error: (m, ...a) => logger.error({ p2p: a }, m),
        },
      });
      const node = new StarlingNode(config, {
        log: logger,
        store,
        provider,
        deployment,
        chainClient,
        transport,
        core,
        signer,
        cryptoCounts,
        ending: channels.filter((c) => c.status !== "open").map((c) => c.config.channelId),
        cursorStart: deployment.deployBlock > 0 ? deployment.deployBlock - 1 : undefined,
      });
      await node.startServices();
      return node;
    } catch (err) {
      await store.close();
      provider.destroy();
      throw err;
    }
  }

  private async startServices(): Promise<void> {
    this.transport.onMessage((from, message) => this.onPeerMessage(from, message));
    this.transport.onPeer((address, event) => {
      this.log.info({ peer: address, event }, "peer");
      if (event === "connected") void this.flushOutbox(address);
    });
    await this.transport.start();
    const known = (await this.store.getMeta<{ address: string; multiaddrs: string[] }[]>(PEERS_KEY)) ?? [];
    for (const p of [...this.config.p2p.peers, ...known]) {
      this.transport.connect(p.address, p.multiaddrs).catch((err: unknown) => {
        this.log.warn({ peer: p.address, err: String(err) }, "peer not reachable yet; will retry");
      });
    }
    await this.tower?.start(this.core.channels());
    await this.chainEvents.start();
    // Each channel ticks once a second, a tenth of them every 100 ms: the revocations of the
    // channels that went idle (a signature and a message each) leave in ten short steps instead
    // of one long one that holds every payment back.
    let slice = 0;
    this.tickTimer = setInterval(() => {
      const input: NodeInput = { type: "tick", slice: { index: slice, of: TICK_SLICES } };
      slice = (slice + 1) % TICK_SLICES;
      void this.step(input).catch((e: unknown) => this.log.error({ err: String(e) }, "tick failed"));
    }, 1_000 / TICK_SLICES);
    this.watchTimer = setInterval(() => void this.watchClosedChannels(), Math.max(1_000, this.config.chain.pollIntervalMs * 2));
    this.log.info({ address: this.address, role: this.role, p2p: this.transport.multiaddrs }, "node started");
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.tickTimer);
    clearInterval(this.watchTimer);
    this.steps.stop();
    await this.chainEvents.stop();
    await this.steps.idle();
    await this.tower?.stop();
    await this.transport.stop();
    await this.store.close();
    this.provider.destroy();
    this.log.info("node stopped");
  }

  // ------------------------------------------------------------------ the step

  /**
   * Runs one engine step: in memory, then one atomic commit, then sends and events. Steps are
   * serialised so their commits and sends keep the engine's order.
   */
  step(input: NodeInput): Promise<StepResult> {
    return this.steps.step(input);
  }

  /** A step's own writes beyond the engine's (the step runner writes channels, transfers, payments, outbox). */
  private augmentStep(r: StepResult, batch: Batch): void {
    // The state before each new one goes with it: the watchtower's seal is keyed by it.
    const towerWrites = this.tower?.track(r.persist.channels) ?? [];
    if (towerWrites.length > 0) (batch.meta ??= []).push(...towerWrites);
    // A secret hash this node paid: the hub (and anyone on the way) knows its secret now.
    for (const e of r.events) {
      if (e.type === "paymentSent" && e.payment.kind === "transfer" && e.payment.secretHash) {
        (batch.meta ??= []).push({ key: PAID_HASH_PREFIX + e.payment.secretHash.toLowerCase(), value: e.payment.paymentId });
      }
    }
  }

  /** After a step's writes are durable (in step order): send, then act on what happened. */
  private dispatchStep(r: StepResult, wire: readonly WireMessage[]): void {
    for (const c of r.persist.channels) if (c.status !== "open") this.ending.add(c.config.channelId);
    for (const w of wire) void this.sendOutbox(w.to, w.seq, w.encoded);
    this.tower?.handOff(r.persist.channels);
    for (const e of r.events) this.onEngineEvent(e);
    for (const a of r.chain) {
      if (a.type === "registerSecret") void this.chainTask(`secret:${a.secretHash}`, () => this.chainClient.registerSecret(a.secret));
    }
    for (const rej of r.rejected) this.log.debug({ during: rej.during, code: rej.error.code }, rej.error.message);
    if (r.persist.channels.length > 0) for (const c of r.persist.channels) this.events.emit("channelChanged", this.summary(c));
  }

  /** `message`: the envelope, as stored (a step's) or as read back from the outbox. */
  private async sendOutbox(peer: Address, seq: bigint, message: Encoded | WireEnvelope): Promise<void> {
    if (this.stopped) return;
    try {
      await this.transport.send(peer, message);
      this.store.ackLater(peer, seq);
    } catch (err) {
      // Stays in the outbox; re-sent when the peer (re)connects.
      this.log.debug({ peer, seq: seq.toString(), err: String(err) }, "message not acknowledged yet");
    }
  }

  private async flushOutbox(peer: Address): Promise<void> {
    const pending = await this.store.listOutbox<WireEnvelope>(peer);
    for (const p of pending) await this.sendOutbox(peer, p.seq, p.message);
  }

  private async onPeerMessage(from: Address, message: unknown): Promise<void> {
    if (typeof message !== "object" || message === null || !("kind" in message)) {
      this.log.warn({ peer: from }, "dropped a message that is not an envelope");
      return;
    }
    const r = await this.step({ type: "deliver", from, envelope: message as WireEnvelope });
    if (!r.ok && r.error) this.log.debug({ peer: from, code: r.error.code }, r.error.message);
  }

  private onEngineEvent(e: NodeEvent): void {
    switch (e.type) {
      case "paymentReceived":
        this.events.emit("paymentReceived", e.payment);
        break;
      case "paymentSent":
        this.events.emit("paymentSent", e.payment);
        break;
      case "paymentFailed":
        this.events.emit("paymentFailed", e.payment);
        break;
      case "withdrawReady": {
        const c = this.core.channel(e.channelId);
        if (!c || e.withdraw.side !== c.config.me) break;
        const partner = this.partnerOf(c);
        const [mine, theirs] = c.config.me === 1 ? [e.withdraw.sig1!, e.withdraw.sig2!] : [e.withdraw.sig2!, e.withdraw.sig1!];
        void this.chainTask(`withdraw:${e.channelId}:${e.withdraw.request.totalWithdraw}`, () =>
          this.chainClient.withdraw(e.withdraw.request, partner, mine, theirs),
        );
        break;
      }
      case "cooperativeCloseReady": {
        const c = this.core.channel(e.channelId);
        if (!c) break;
        void this.chainTask(`close:${e.channelId}`, () =>
          this.chainClient.cooperativeClose(e.terms, c.config.participant1, c.config.participant2, e.sig1, e.sig2),
        );
        break;
      }
      case "channelUpdated":
        break;
    }
  }

  /** Runs one chain transaction per key at a time; failures are logged (the watcher retries). */
  private async chainTask(key: string, work: () => Promise<unknown>): Promise<void> {
    if (this.chainBusy.has(key) || this.stopped) return;
    this.chainBusy.add(key);
    try {
      await work();
      this.log.info({ task: key }, "chain transaction confirmed");
    } catch (err) {
      const detail = err instanceof ChainError ? `${err.code}${err.errorName ? ` ${err.errorName}` : ""}` : String(err);
      this.log.warn({ task: key, err: detail }, "chain transaction failed");
    } finally {
      this.chainBusy.delete(key);
    }
  }

  // ------------------------------------------------------------------ chain events

  private async onChainEvent(e: ChainEvent): Promise<void> {
    switch (e.type) {
      case "ChannelOpened":
        await this.adoptChannel(e.channelId as Hex, e.participant1 as Address, e.participant2 as Address);
        break;
      case "Deposited":
      case "CreditGranted":
      case "Withdrawn":
        await this.refreshFunding(e.channelId as Hex);
        break;
      case "ChannelClosed":
        await this.onClosed(e.channelId as Hex, normalizeAddress(e.closer), BigInt(e.nonce));
        break;
      case "CooperativelyClosed":
      case "ChannelPenalized":
        await this.markClosed(e.channelId as Hex);
        break;
      case "SecretRevealed": {
        // A payee may reveal on chain while this node was away: claim upstream with it. The block's
        // time says whether the reveal came before a lock's expiry (the lock is then the receiver's).
        const block = await this.provider.getBlock(e.blockNumber);
        if (!block) throw new Error(`block ${e.blockNumber} not found`);
        await this.step({ type: "secretRevealed", secret: e.secret as Hex, revealedAt: BigInt(block.timestamp) });
        break;
      }
      case "StateUpdated":
      case "ChannelSettled":
      case "LocksUnlocked":
      case "CreditLimitSet":
        break;
    }
  }

  private async adoptChannel(channelId: Hex, p1raw: Address, p2raw: Address): Promise<void> {
    const p1 = normalizeAddress(p1raw);
    const p2 = normalizeAddress(p2raw);
    if (p1 !== this.address && p2 !== this.address) return;
    if (this.core.channel(channelId)) return;
    const me: Side = p1 === this.address ? 1 : 2;
    const partner = me === 1 ? p2 : p1;
    const info = await this.chainClient.getChannel(p1, p2);
    if (info.id.toLowerCase() !== channelId.toLowerCase() || info.phase !== "open") return;
    const c = newChannel(
      { channelId: info.id, domain: this.chainClient.domain, participant1: p1, participant2: p2, me },
      fundingOf(info),
    );
    this.core.addChannel(c);
    if (this.role === "hub" && this.hubs.has(partner)) this.core.setDefaultRoute(c.config.channelId);
    await this.store.commit({ channels: [{ channelId: c.config.channelId, record: storedChannel(c) }] });
    this.events.emit("channelChanged", this.summary(c));
    this.log.info({ channelId, partner }, "channel opened");
    if (this.role === "hub" && !this.hubs.has(partner)) {
      const id = c.config.channelId.toLowerCase();
      const funded = this.fundUserChannel(c.config.channelId, partner)
        .then(() => this.refreshFunding(c.config.channelId))
        .catch((err: unknown) => this.log.warn({ channelId, err: String(err) }, "funding the channel failed"))
        .finally(() => this.funding.delete(id));
      this.funding.set(id, funded);
    }
  }

  /** A hub funds a new channel per its configuration: credit (issuer mode) or a deposit. */
  private async fundUserChannel(channelId: Hex, user: Address): Promise<void> {
    if (this.deployment.mode === "issuer") {
      const limit = await this.chainClient.creditLimit(this.address);
      const credit = this.config.hub.creditPerChannel < limit ? this.config.hub.creditPerChannel : limit;
      if (credit > 0n) await this.chainTask(`credit:${channelId}`, () => this.chainClient.grantCredit(channelId, user, credit));
      else this.log.warn("issuer mode but this hub has no credit limit: ask the issuer to set one");
    } else if (this.config.hub.depositPerChannel > 0n) {
      await this.chainTask(`deposit:${channelId}`, () =>
        this.chainClient.approveAndDeposit(channelId, user, this.config.hub.depositPerChannel),
      );
    }
  }

  private async refreshFunding(channelId: Hex): Promise<void> {
    const c = this.core.channel(channelId);
    if (!c) return;
    const info = await this.chainClient.getChannel(c.config.participant1, c.config.participant2);
    await this.step({ type: "channel", channelId, input: { type: "fundingChanged", funding: fundingOf(info) } });
  }

  /**
   * The watcher's reaction to a close: a partner that closed with a revoked state is penalised;
   * one that closed with an older, unrevoked state is answered with the newer one. Settling
   * after the period and unlocking happen in `watchClosedChannels`.
   */
  private async onClosed(channelId: Hex, closer: Address, closedNonce: bigint): Promise<void> {
    const c = this.core.channel(channelId) ?? (await this.readChannel(channelId));
    if (!c) return;
    const { participant1: p1, participant2: p2 } = c.config;
    if (closer !== this.address) {
      const rev = c.partnerRevocation;
      if (rev && rev.revokedBelow > closedNonce) {
        this.log.warn({ channelId, closedNonce: closedNonce.toString() }, "partner closed with a revoked state: penalising");
        await this.chainTask(`penalize:${channelId}`, () =>
          this.chainClient.penalize(channelId, p1, p2, rev.revokedBelow, rev.stateHash, rev.signature),
        );
      } else if (c.latest.state.nonce > closedNonce && c.latest.sig1 && c.latest.sig2) {
        this.log.warn({ channelId }, "partner closed with an older state: submitting the newer one");
        const { sig1, sig2 } = c.latest;
        await this.chainTask(`update:${channelId}`, () => this.chainClient.updateState(channelId, p1, p2, c.latest.state, sig1, sig2));
      }
    }
    await this.markClosed(channelId);
  }

  private async markClosed(channelId: Hex): Promise<void> {
    if (!this.core.channel(channelId)) return;
    await this.step({ type: "channel", channelId, input: { type: "closedOnChain" } });
  }

  /** Settles channels whose challenge period is over and unlocks what is resolvable. */
  private async watchClosedChannels(): Promise<void> {
    if (this.stopped) return;
    // Only channels known to be closing or closed are read (a hub has many open ones).
    const closed: ChannelData[] = [];
    for (const id of [...this.ending].sort()) {
      const c = await this.readChannel(id);
      if (c && (c.status === "closed" || c.status === "closing")) closed.push(c);
    }
    for (const c of closed) {
      const { participant1: p1, participant2: p2, channelId } = c.config;
      let info: ChannelInfo;
      try {
        info = await this.chainClient.getChannel(p1, p2);
      } catch {
        continue;
      }
      if (info.id.toLowerCase() !== channelId.toLowerCase()) continue;
      const now = await this.chainClient.chainTime().catch(() => 0n);
      if (info.phase === "closed" && now > info.settleAt) {
        await this.chainTask(`settle:${channelId}`, () => this.chainClient.settle(channelId, p1, p2));
      } else if (info.phase === "settled" && info.locksRoot === c.latest.state.locksRoot) {
        await this.chainTask(`unlock:${channelId}`, () => this.chainClient.unlock(channelId, p1, p2, c.latest.locks));
      }
    }
  }

  // ------------------------------------------------------------------ API

  private partnerOf(c: ChannelData): Address {
    return c.config.me === 1 ? c.config.participant2 : c.config.participant1;
  }

  summary(c: ChannelData): ChannelSummary {
    const b = channelBalances(c);
    const me = c.config.me;
    const f = c.funding;
    return {
      channelId: c.config.channelId,
      partner: this.partnerOf(c),
      status: c.status,
      nonce: c.latest.state.nonce,
      balance: b.mine,
      partnerBalance: b.partner,
      locked: b.lockedMine,
      partnerLocked: b.lockedPartner,
      available: b.availableMine,
      deposit: me === 1 ? f.deposit1 : f.deposit2,
      partnerDeposit: me === 1 ? f.deposit2 : f.deposit1,
      withdrawn: me === 1 ? f.withdrawn1 : f.withdrawn2,
      partnerWithdrawn: me === 1 ? f.withdrawn2 : f.withdrawn1,
      credit: f.credit,
      creditSide: f.creditSide === 0 ? "none" : f.creditSide === me ? "me" : "partner",
    };
  }

  stats(): NodeStats {
    const store = this.store instanceof LevelStore ? this.store.stats : { commits: 0, writes: 0, writeBytes: 0, writeMs: 0 };
    return { ...this.cryptoCounts, ...store };
  }

  /** Files at LevelDB's level 0 now: its compaction backlog (see LevelStore.level0Files); 0 without LevelDB. */
  storeLevel0Files(): number {
    return this.store instanceof LevelStore ? (this.store.level0Files() ?? 0) : 0;
  }

  info() {
    return {
      address: this.address,
      role: this.role,
      chainId: this.deployment.chainId,
      mode: this.deployment.mode,
      contracts: { channels: this.deployment.channels, token: this.deployment.token, secretRegistry: this.deployment.secretRegistry },
      p2p: { peerId: this.transport.peerId, multiaddrs: this.transport.multiaddrs, connected: this.transport.connectedAddresses() },
      channels: this.core.channels().length,
    };
  }

  async listChannels(): Promise<ChannelSummary[]> {
    const all = await readChannels(this.store);
    const live = new Map(this.core.channels().map((c) => [c.config.channelId.toLowerCase(), c]));
    return all.map((c) => this.summary(live.get(c.config.channelId.toLowerCase()) ?? c));
  }

  async getChannel(channelId: Hex): Promise<ChannelSummary & { onChain: ChannelInfo }> {
    const c = this.core.channel(channelId) ?? (await this.readChannel(channelId));
    if (!c) throw new NodeError("NOT_FOUND", `no channel ${channelId}`);
    const onChain = await this.chainClient.getChannel(c.config.participant1, c.config.participant2);
    return { ...this.summary(c), onChain };
  }

  /** Resolves a channel by id or by partner address. */
  private resolveChannel(ref: { channelId?: Hex; partner?: Address }): ChannelData {
    const c = ref.channelId ? this.core.channel(ref.channelId) : ref.partner ? this.core.channelWith(ref.partner) : this.onlyChannel();
    if (!c) throw new NodeError("NOT_FOUND", `no open channel ${ref.channelId ?? ref.partner ?? ""}`.trim());
    return c;
  }

  private onlyChannel(): ChannelData | undefined {
    // A closing channel counts: a forced close follows a cooperative one the partner left unanswered.
    const live = this.core.channels().filter((c) => c.status !== "closed");
    if (live.length !== 1) throw new NodeError("BAD_STATE", `this node has ${live.length} channels that are not closed: name one`);
    return live[0];
  }

  async openChannel(partner: Address, deposit: bigint): Promise<{ channelId: Hex; txHash: string }> {
    const p = normalizeAddress(partner);
    if (p === this.address) throw new NodeError("BAD_STATE", "a channel needs two different participants");
    const existing = this.core.channelWith(p);
    if (existing && existing.status !== "closed") throw new NodeError("CONFLICT", `a channel with ${p} exists: ${existing.config.channelId}`);
    const opened = await this.chainClient.open(p).catch(rethrowChain);
    if (deposit > 0n) await this.chainClient.approveAndDeposit(opened.channelId, p, deposit).catch(rethrowChain);
    const [p1, p2] = orderParticipants(this.address, p);
    await this.adoptChannel(opened.channelId, p1, p2);
    // A hub's user channel is usable once the hub's credit or deposit is in it.
    await this.funding.get(opened.channelId.toLowerCase());
    // A link between hubs is funded by the hub that opens it (user channels are funded on adoption).
    if (this.role === "hub" && this.hubs.has(p)) {
      await this.fundUserChannel(opened.channelId, p);
      await this.refreshFunding(opened.channelId);
    }
    if (deposit > 0n) await this.refreshFunding(opened.channelId);
    return { channelId: opened.channelId, txHash: opened.hash };
  }

  async deposit(ref: { channelId?: Hex; partner?: Address }, amount: bigint): Promise<{ totalDeposit: bigint }> {
    if (amount <= 0n) throw new NodeError("BAD_STATE", "deposit amount must be positive");
    const c = this.resolveChannel(ref);
    const info = await this.chainClient.getChannel(c.config.participant1, c.config.participant2);
    const current = c.config.me === 1 ? info.deposit1 : info.deposit2;
    const total = current + amount;
    await this.chainClient.approveAndDeposit(c.config.channelId, this.partnerOf(c), total).catch(rethrowChain);
    await this.refreshFunding(c.config.channelId);
    return { totalDeposit: total };
  }

  async withdraw(ref: { channelId?: Hex; partner?: Address }, amount: bigint, timeoutMs = 30_000): Promise<{ totalWithdraw: bigint }> {
    const c = this.resolveChannel(ref);
    const channelId = c.config.channelId;
    const expiry = (await this.chainClient.chainTime()) + 600n;
    const done = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.events.off("channelChanged", check);
        reject(new NodeError("TIMEOUT", `the partner did not confirm the withdrawal within ${timeoutMs} ms; the request stands until its expiry and executes if the partner confirms it by then`));
      }, timeoutMs);
      const target = (c.config.me === 1 ? c.funding.withdrawn1 : c.funding.withdrawn2) + amount;
      const check = (s: ChannelSummary) => {
        if (s.channelId.toLowerCase() === channelId.toLowerCase() && s.withdrawn >= target) {
          clearTimeout(timer);
          this.events.off("channelChanged", check);
          resolve();
        }
      };
      this.events.on("channelChanged", check);
    });
    const r = await this.step({ type: "channel", channelId, input: { type: "requestWithdraw", amount, expiry } });
    if (!r.ok) {
      done.catch(() => undefined);
      throw NodeError.from(r.error);
    }
    await done;
    const after = this.core.channel(channelId) ?? c;
    return { totalWithdraw: c.config.me === 1 ? after.funding.withdrawn1 : after.funding.withdrawn2 };
  }

  async close(ref: { channelId?: Hex; partner?: Address }, force: boolean, timeoutMs = 30_000): Promise<{ mode: "cooperative" | "unilateral" }> {
    const c = this.resolveChannel(ref);
    const channelId = c.config.channelId;
    if (!force) {
      const r = await this.step({ type: "channel", channelId, input: { type: "requestCooperativeClose" } });
      if (!r.ok) throw NodeError.from(r.error);
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const info = await this.chainClient.getChannel(c.config.participant1, c.config.participant2);
        if (info.id.toLowerCase() !== channelId.toLowerCase() || info.phase === "none") {
          await this.markClosed(channelId);
          return { mode: "cooperative" };
        }
        await new Promise((res) => setTimeout(res, 250));
      }
      throw new NodeError("TIMEOUT", `the partner did not sign the cooperative close within ${timeoutMs} ms; the request stands and completes when the partner signs it, or use force to close unilaterally`);
    }
    const latest = this.core.channel(channelId)?.latest ?? c.latest;
    const partnerSig = sigOf(latest, other(c.config.me));
    await this.chainClient
      .close(channelId, this.partnerOf(c), latest.state, partnerSig ?? { revokedBelow: 0n, signature: "0x" })
      .catch(rethrowChain);
    await this.markClosed(channelId);
    return { mode: "unilateral" };
  }

  async settle(channelId: Hex): Promise<{ txHash: string }> {
    const c = this.core.channel(channelId) ?? (await this.readChannel(channelId));
    if (!c) throw new NodeError("NOT_FOUND", `no channel ${channelId}`);
    const r = await this.chainClient.settle(channelId, c.config.participant1, c.config.participant2).catch(rethrowChain);
    return { txHash: r.hash };
  }

  /** A finished outgoing payment with this id, if any: the same id pays once. */
  private async finishedPayment(paymentId: Hex, want: { kind: OutgoingPayment["kind"]; target: Address; amount: bigint }): Promise<OutgoingPayment | null> {
    const prior = await this.store.getPayment<OutgoingPayment>(paymentKey({ direction: "out", paymentId }));
    if (!prior) return null;
    if (prior.kind !== want.kind || normalizeAddress(prior.target) !== normalizeAddress(want.target) || prior.amount !== want.amount) {
      throw new NodeError("CONFLICT", `payment ${paymentId} already exists with other parameters`);
    }
    return prior;
  }

  /**
   * Starts a payment; the same id pays once. The store lookup runs inside the step sequence, so
   * no step can finish a payment with this id between the lookup and the new step.
   */
  pay(paymentId: Hex, target: Address, amount: bigint, secretHash?: Hex): Promise<OutgoingPayment> {
    const base = { type: "pay", paymentId, target: normalizeAddress(target), amount } as const;
    // Paying an invoice: the target made the secret. Otherwise this node makes one.
    if (secretHash !== undefined) return this.startPayment({ ...base, secretHash });
    return this.startPayment({ ...base, secret: `0x${randomBytes(32).toString("hex")}` as Hex });
  }

  /**
   * Asks for a payment of at least `amount`: a fresh secret is kept as an invoice and its hash
   * handed out; a lock with that hash to this node is then unlocked at once, without asking the payer.
   */
  async invoice(amount: bigint, expiresInSeconds: number): Promise<{ secretHash: Hex; amount: bigint; expiresAt: bigint; target: Address }> {
    const secret = `0x${randomBytes(32).toString("hex")}` as Hex;
    const expiresAt = this.core.now() + BigInt(expiresInSeconds);
    const r = await this.step({ type: "invoice", secret, amount, expiresAt });
    if (!r.ok) throw NodeError.from(r.error);
    return { secretHash: secretHash(secret), amount, expiresAt, target: this.address };
  }

  issue(paymentId: Hex, target: Address, amount: bigint): Promise<OutgoingPayment> {
    return this.startPayment({ type: "issue", paymentId, target: normalizeAddress(target), amount });
  }

  private async startPayment(input: Extract<NodeInput, { type: "pay" | "issue" }>): Promise<OutgoingPayment> {
    const kind = input.type === "pay" ? "transfer" : "issue";
    const r = await this.steps.queue(async () => {
      const prior = await this.finishedPayment(input.paymentId, { kind, target: input.target, amount: input.amount });
      if (prior) return { skip: prior };
      if (input.type === "pay" && input.secretHash !== undefined) {
        // Paid once, its secret is known to the hub: a second lock with it could be taken on the way.
        const paidBy = await this.store.getMeta<Hex>(PAID_HASH_PREFIX + input.secretHash.toLowerCase());
        if (paidBy !== undefined) {
          throw new NodeError("CONFLICT", `this invoice was paid already (payment ${paidBy}); paying its hash again could be taken by the hub without reaching the payee`);
        }
      }
      return input;
    });
    if (!("persist" in r)) return r;
    if (!r.ok || !r.payment) throw NodeError.from(r.error);
    return r.payment;
  }

  /** Waits until an outgoing payment is completed or failed. */
  async waitForPayment(paymentId: Hex, timeoutMs: number): Promise<OutgoingPayment> {
    const stored = await this.store.getPayment<OutgoingPayment>(paymentKey({ direction: "out", paymentId }));
    if (stored) return stored;
    if (!this.core.payment(paymentId)) throw new NodeError("NOT_FOUND", `no payment ${paymentId}`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new NodeError("TIMEOUT", `payment ${paymentId} still pending after ${timeoutMs} ms`));
      }, timeoutMs);
      const check = (p: OutgoingPayment | IncomingPayment) => {
        if (p.direction === "out" && p.paymentId.toLowerCase() === paymentId.toLowerCase()) {
          off();
          resolve(p);
        }
      };
      const off = () => {
        clearTimeout(timer);
        this.events.off("paymentSent", check);
        this.events.off("paymentFailed", check);
      };
      this.events.on("paymentSent", check);
      this.events.on("paymentFailed", check);
    });
  }

  async payment(paymentId: Hex): Promise<{ outgoing: OutgoingPayment | null; incoming: IncomingPayment[] }> {
    const id = paymentId.toLowerCase() as Hex;
    const outgoing =
      this.core.payment(id) ?? (await this.store.getPayment<OutgoingPayment>(paymentKey({ direction: "out", paymentId: id }))) ?? null;
    const finished = (await this.store.listPayments<IncomingPayment>()).filter((p) => p.direction === "in" && p.paymentId === id);
    // The engine still remembers recently finished payments that are also in the store: one each.
    const incoming = new Map<string, IncomingPayment>();
    for (const p of [...finished, ...this.core.incoming(id)]) if (!incoming.has(paymentKey(p))) incoming.set(paymentKey(p), p);
    return { outgoing, incoming: [...incoming.values()] };
  }

  /** Payments in flight, then finished ones newest first. */
  async history(limit: number): Promise<(OutgoingPayment | IncomingPayment)[]> {
    const t = this.core.transfers;
    const pending: (OutgoingPayment | IncomingPayment)[] = [...t.payments.values(), ...t.incoming.values()];
    const done = await this.store.listPayments<(OutgoingPayment | IncomingPayment) & { finishedAt: bigint }>();
    done.sort((a, b) => (a.finishedAt < b.finishedAt ? 1 : a.finishedAt > b.finishedAt ? -1 : 0));
    return [...pending, ...done].slice(0, limit);
  }

  async balances(): Promise<{ onChain: bigint; channels: bigint; available: bigint; locked: bigint }> {
    const onChain = await this.chainClient.tokenBalance(this.address);
    let channels = 0n;
    let available = 0n;
    let locked = 0n;
    for (const c of this.core.channels()) {
      if (c.status === "closed") continue;
      const b = channelBalances(c);
      // In issuer mode a hub's credit is not money: report what it holds beyond its credit.
      const credit = c.funding.creditSide === c.config.me ? c.funding.credit : 0n;
      channels += b.mine - credit;
      available += b.availableMine;
      locked += b.lockedMine;
    }
    return { onChain, channels, available, locked };
  }

  /** A channel's record as stored (closed channels are no longer in the engine). */
  private async readChannel(channelId: string): Promise<ChannelData | undefined> {
    const stored = await this.store.getChannel<unknown>(channelId);
    return stored === undefined ? undefined : loadedChannel(stored);
  }

  /** The definite share of side `side` in a channel's newest state (exposed for checks). */
  shareOf(channelId: Hex, side: Side): bigint {
    const c = this.resolveChannel({ channelId });
    return share(c.funding, c.latest.state, side);
  }
}

/** Every stored channel record, complete (src/node/persist.ts). */
async function readChannels(store: Store): Promise<ChannelData[]> {
  return (await store.listChannels<unknown>()).map(loadedChannel);
}

/** The stored transfer state; the older one-record form is converted to one record per entry. */
async function loadTransfers(store: Store): Promise<TransferState | undefined> {
  const entries = await store.listMeta<unknown>(TRANSFERS_PREFIX);
  if (entries.length > 0) return transferStateFromEntries(entries, TRANSFERS_PREFIX);
  const plain = await store.getMeta<StoredTransferState>(TRANSFERS_KEY);
  if (!plain) return undefined;
  const state = transferStateFromPlain(plain);
  await store.commit({ meta: transferStateEntries(state, TRANSFERS_PREFIX), deleteMeta: [TRANSFERS_KEY] });
  return state;
}

function fundingOf(info: ChannelInfo): Funding {
  return {
    deposit1: info.deposit1,
    deposit2: info.deposit2,
    withdrawn1: info.withdrawn1,
    withdrawn2: info.withdrawn2,
    credit: info.credit,
    creditSide: info.creditSide,
  };
}

function rethrowChain(err: unknown): never {
  if (err instanceof ChainError) {
    throw new NodeError("CHAIN_ERROR", `${err.errorName ?? err.code}: ${err.message}`, { code: err.code, errorName: err.errorName });
  }
  throw err;
}
