/**
 * The watchtower: keeps, for each channel a client hands it, the partner's strongest revocation
 * and the sealed newest state (handoff.ts), watches the chain, and when the partner closes the
 * channel answers within the challenge period from its own funded key:
 *   the closed nonce is revoked (revokedBelow > nonce) -> `penalize`: the client gets everything;
 *   else a newer state is sealed                       -> open it with the close, `updateState`.
 * Both calls are open to anyone and always pay the non-closer, so the tower can only help.
 *
 * Storage is one record per (channel, client), replaced in place at every hand-off: O(1) per
 * watched channel however many payments it carries, dropped when the channel ends.
 *
 * Restart-safe: the chain cursor and the records are in LevelDB; a close is written into its
 * record before anything is sent, and every record with an open dispute is checked again at
 * start and periodically against the chain's phase and settleAt, so a close seen (or missed)
 * before a crash is answered after the restart while the period runs.
 */
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Wallet, type JsonRpcProvider, type Result } from "ethers";
import { ChannelsClient, type ChannelInfo } from "../chain/adapter.js";
import { connectProvider, type Deployment } from "../chain/deploy.js";
import { ChainError } from "../chain/errors.js";
import { ChainEvents, type ChainEvent } from "../chain/events.js";
import { createTransport, type P2PTransport } from "../p2p/index.js";
import type { Revocation } from "../protocol/channel.js";
import { hashState, normalizeAddress } from "../protocol/eip712.js";
import type { Address, ChannelState, Domain, Hex } from "../protocol/types.js";
import { loadBackend, type Secp256k1Backend, type Verifier } from "../signer/index.js";
import { LevelStore, type Store } from "../store/index.js";
import { HandOffError, isUpdateSigner, openSeal, parseHandOff, type CloseCandidate, type HandOff, type SealedUpdate } from "./handoff.js";

const CURSOR_KEY = "towerCursor";
const P2P_SEED_KEY = "p2pSeed";

/** A close of a watched channel by its client's partner. */
export interface Dispute {
  closer: Address;
  /** Nonce of the state closed with. */
  nonce: bigint;
  settleAt: bigint;
  /** The close transaction, when the tower saw its event. */
  txHash: Hex | null;
}

export interface WatchRecord {
  channelId: Hex;
  /** The participant the tower defends (who handed the channel over). */
  client: Address;
  partner: Address;
  participant1: Address;
  participant2: Address;
  /** The partner's strongest revocation, in the clear. */
  revocation: Revocation | null;
  sealed: SealedUpdate | null;
  /** Milliseconds since the epoch of the last hand-off. */
  updatedAt: number;
  dispute: Dispute | null;
  /** What the tower submitted in the dispute. */
  outcome: { action: "penalize" | "updateState"; txHash: Hex; nonce: bigint } | null;
}

export interface TowerLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface WatchtowerOptions {
  /** LevelDB lives in <dataDir>/db. */
  dataDir: string;
  deployment: Deployment;
  rpcUrl: string;
  /** The tower's key: identifies it on p2p and pays the gas of its transactions. */
  privateKey: Uint8Array;
  /** libp2p listen addresses; default /ip4/127.0.0.1/tcp/0. */
  listen?: string[];
  backend?: Secp256k1Backend;
  /** Blocks an event or transaction needs; default 1. */
  confirmations?: number;
  /** Chain polling; default 500 ms. */
  pollIntervalMs?: number;
  /** How often open disputes are checked again (failed or not yet possible actions); default 5 s. */
  recheckMs?: number;
  logger?: TowerLogger;
}

export interface WatchtowerEvents {
  accepted: [record: WatchRecord];
  refused: [from: Address, error: HandOffError];
  acted: [record: WatchRecord];
}

const silent: TowerLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** Store key of a record. Records live in the store's removable keyspace: they end with their channel. */
function recordKey(channelId: Hex, client: Address): string {
  return `${channelId.toLowerCase()}:${client.toLowerCase()}`;
}

export class Watchtower {
  readonly events = new EventEmitter<WatchtowerEvents>();
  readonly address: Address;
  private readonly log: TowerLogger;
  private readonly domain: Domain;
  /** Channel id -> keys of its records (one per client). */
  private readonly watched = new Map<string, Set<string>>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly checking = new Map<string, Promise<void>>();
  /** Records with an open dispute: what the periodic check looks at. */
  private readonly disputed = new Set<string>();
  /** Disputes already reported as unanswerable, so the periodic check does not repeat it. */
  private readonly reported = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  private constructor(
    private readonly store: Store,
    private readonly provider: JsonRpcProvider,
    private readonly deployment: Deployment,
    private readonly chain: ChannelsClient,
    private readonly verifier: Verifier,
    private readonly transport: P2PTransport,
    private readonly scanner: { events: ChainEvents | undefined },
    private readonly recheckMs: number,
    logger: TowerLogger,
  ) {
    this.address = normalizeAddress(transport.address);
    this.log = logger;
    this.domain = chain.domain;
  }

  static async start(options: WatchtowerOptions): Promise<Watchtower> {
    const log = options.logger ?? silent;
    const backend = options.backend ?? (await loadBackend("auto"));
    const signer = backend.createSigner(options.privateKey);
    const pollIntervalMs = options.pollIntervalMs ?? 500;
    const confirmations = options.confirmations ?? 1;
    const provider = connectProvider(options.rpcUrl, pollIntervalMs);
    mkdirSync(options.dataDir, { recursive: true });
    const store = new LevelStore(join(options.dataDir, "db"));
    try {
      const network = await provider.getNetwork();
      if (Number(network.chainId) !== options.deployment.chainId) {
        throw new Error(`chain ${options.rpcUrl} has chain id ${network.chainId}, the deployment says ${options.deployment.chainId}`);
      }
      await store.open();
    } catch (err) {
      provider.destroy();
      throw err;
    }
    let tower: Watchtower | undefined;
    try {
      const wallet = new Wallet(Buffer.from(options.privateKey).toString("hex"), provider);
      const chain = ChannelsClient.connect(options.deployment, wallet, { confirmations });
      // A stable peer id, so the multiaddr users configure survives restarts.
      const seed = (await store.getMeta<string>(P2P_SEED_KEY)) ?? randomBytes(32).toString("hex");
      await store.commit({ meta: [{ key: P2P_SEED_KEY, value: seed }] });
      const transport = createTransport({
        ...(options.listen ? { listen: options.listen } : {}),
        signer,
        verifier: backend.verifier,
        privateKey: Buffer.from(seed, "hex"),
        logger: {
          info: (m, ...a) => log.debug({ p2p: a }, m),
          warn: (m, ...a) => log.warn({ p2p: a }, m),
          error: (m, ...a) => log.error({ p2p: a }, m),
        },
      });
      const scanner: { events: ChainEvents | undefined } = { events: undefined };
      const t = new Watchtower(store, provider, options.deployment, chain, backend.verifier, transport, scanner, options.recheckMs ?? 5_000, log);
      scanner.events = new ChainEvents({
        provider,
        deployment: options.deployment,
        confirmations,
        pollIntervalMs,
        cursor: {
          load: () => store.getMeta<number>(CURSOR_KEY),
          save: (block) => store.commit({ meta: [{ key: CURSOR_KEY, value: block }] }).then(() => undefined),
        },
        handler: (e) => t.onChainEvent(e),
        onError: (err) => log.warn({ err: String(err) }, "chain scan failed; retrying"),
      });
      tower = t;
      await t.startServices();
      return t;
    } catch (err) {
      if (tower) {
        await tower.stop().catch(() => undefined);
      } else {
        await store.close();
        provider.destroy();
      }
      throw err;
    }
  }

  private async startServices(): Promise<void> {
    for (const r of await this.store.listPayments<WatchRecord>()) this.watch(r);
    this.transport.onMessage((from, message) => this.onHandOff(from, message));
    await this.transport.start();
    await this.scanner.events?.start();
    this.timer = setInterval(() => void this.recheck(), this.recheckMs);
    void this.recheck();
    this.log.info({ address: this.address, p2p: this.transport.multiaddrs, watching: this.watched.size }, "watchtower started");
  }

  /** Stops p2p, the chain scan and the timers; waits for actions in progress. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    await this.scanner.events?.stop();
    await this.transport.stop();
    await Promise.allSettled([...this.checking.values(), ...this.locks.values()]);
    await this.store.close();
    this.provider.destroy();
    this.log.info({}, "watchtower stopped");
  }

  get peerId(): string {
    return this.transport.peerId;
  }

  get multiaddrs(): string[] {
    return this.transport.multiaddrs;
  }

  /** Every record held. */
  records(): Promise<WatchRecord[]> {
    return this.store.listPayments<WatchRecord>();
  }

  // ------------------------------------------------------------------ hand-offs

  private async onHandOff(from: Address, raw: unknown): Promise<void> {
    const client = normalizeAddress(from);
    let handOff: HandOff;
    try {
      handOff = parseHandOff(raw);
      this.verify(client, handOff);
    } catch (err) {
      throw this.refuse(client, err);
    }
    const key = recordKey(handOff.channelId, client);
    const record = await this.serial(key, async () => {
      const existing = await this.store.getPayment<WatchRecord>(key);
      const dispute = existing ? existing.dispute : await this.registration(client, handOff);
      const next = merge(existing, handOff, client, dispute);
      await this.store.commit({ payments: [{ paymentId: key, record: next }] });
      return next;
    }).catch((err: unknown) => {
      throw err instanceof HandOffError ? this.refuse(client, err) : err;
    });
    this.watch(record);
    this.log.debug({ channelId: record.channelId, client, sealedNonce: record.sealed?.nonce.toString() }, "hand-off stored");
    this.events.emit("accepted", record);
    if (record.dispute) void this.check(key);
  }

  private refuse(client: Address, err: unknown): Error {
    if (!(err instanceof HandOffError)) return err instanceof Error ? err : new Error(String(err));
    this.log.warn({ from: client, err: err.message }, "hand-off refused");
    this.events.emit("refused", client, err);
    return err;
  }

  /** The sender must be a participant, and the revocation its partner's signature. */
  private verify(client: Address, h: HandOff): void {
    if (client !== h.participant1 && client !== h.participant2) {
      throw new HandOffError("NOT_PARTICIPANT", `${client} is not a participant of channel ${h.channelId}`);
    }
    const partner = client === h.participant1 ? h.participant2 : h.participant1;
    const r = h.revocation;
    if (r && !isUpdateSigner(this.verifier, this.domain, h.channelId, r.revokedBelow, r.stateHash, r.signature, partner)) {
      throw new HandOffError("BAD_SIGNATURE", `the revocation is not signed by ${partner} for channel ${h.channelId} on this deployment`);
    }
  }

  /** First hand-off of a channel: it must be the pair's current channel; it may be closing already. */
  private async registration(client: Address, h: HandOff): Promise<Dispute | null> {
    const info = await this.chain.getChannel(h.participant1, h.participant2);
    if (info.id.toLowerCase() !== h.channelId || (info.phase !== "open" && info.phase !== "closed")) {
      throw new HandOffError("UNKNOWN_CHANNEL", `${h.channelId} is not a live channel of ${h.participant1} and ${h.participant2}`);
    }
    return info.phase === "closed" ? disputeOf(info, client, null) : null;
  }

  // ------------------------------------------------------------------ chain

  private async onChainEvent(e: ChainEvent): Promise<void> {
    if (!("channelId" in e)) return;
    const keys = this.watched.get(e.channelId.toLowerCase());
    if (!keys) return;
    switch (e.type) {
      case "ChannelClosed": {
        const closer = normalizeAddress(e.closer);
        for (const key of keys) {
          const record = await this.serial(key, async () => {
            const r = await this.store.getPayment<WatchRecord>(key);
            if (!r || closer === r.client) return null;
            const next: WatchRecord = { ...r, dispute: { closer, nonce: e.nonce, settleAt: e.settleAt, txHash: e.txHash }, outcome: null };
            // Written before anything is sent: a restart finds the dispute even past the cursor.
            await this.store.commit({ payments: [{ paymentId: key, record: next }] });
            return next;
          });
          if (!record) continue;
          this.disputed.add(key);
          this.log.warn({ channelId: record.channelId, client: record.client, nonce: e.nonce.toString() }, "a watched channel was closed by the partner");
          void this.check(key);
        }
        break;
      }
      case "StateUpdated":
        for (const key of keys) void this.check(key);
        break;
      case "ChannelPenalized":
      case "ChannelSettled":
      case "CooperativelyClosed":
        for (const key of keys) await this.forget(key, e.type);
        break;
      default:
        break;
    }
  }

  private async recheck(): Promise<void> {
    if (this.stopped) return;
    for (const key of this.disputed) void this.check(key);
  }

  /** Answers a dispute if there is anything to answer; one check per record at a time. */
  private check(key: string): Promise<void> {
    const running = this.checking.get(key);
    if (running || this.stopped) return running ?? Promise.resolve();
    const p = this.answer(key)
      .catch((err: unknown) => {
        const detail = err instanceof ChainError ? `${err.code}${err.errorName ? ` ${err.errorName}` : ""}: ${err.message}` : String(err);
        this.log.warn({ key, err: detail }, "dispute action failed; will retry");
      })
      .finally(() => this.checking.delete(key));
    this.checking.set(key, p);
    return p;
  }

  private async answer(key: string): Promise<void> {
    const r = await this.store.getPayment<WatchRecord>(key);
    if (!r?.dispute) return;
    const info = await this.chain.getChannel(r.participant1, r.participant2);
    if (info.id.toLowerCase() !== r.channelId || info.phase !== "closed") {
      await this.forget(key, `channel is ${info.id.toLowerCase() !== r.channelId ? "gone" : info.phase}`);
      return;
    }
    const closer = info.closerSide === 1 ? r.participant1 : r.participant2;
    if (normalizeAddress(closer) === r.client) {
      // The client closed itself: nothing to defend.
      await this.serial(key, async () => {
        const cur = await this.store.getPayment<WatchRecord>(key);
        if (cur) await this.store.commit({ payments: [{ paymentId: key, record: { ...cur, dispute: null } }] });
      });
      this.disputed.delete(key);
      return;
    }
    const now = await this.chain.chainTime();
    if (now > info.settleAt) {
      this.log.warn({ channelId: r.channelId, client: r.client }, "challenge period over; nothing more to do");
      await this.forget(key, "challenge period over");
      return;
    }
    const rev = r.revocation;
    if (rev && rev.revokedBelow > info.nonce) {
      this.log.warn({ channelId: r.channelId, nonce: info.nonce.toString() }, "partner closed with a revoked state: penalising");
      const tx = await this.chain.penalize(r.channelId, r.participant1, r.participant2, rev.revokedBelow, rev.stateHash, rev.signature);
      await this.acted(key, { action: "penalize", txHash: tx.hash, nonce: info.nonce });
      return;
    }
    if (!r.sealed || r.sealed.nonce <= info.nonce) return;
    const reportKey = `${key}:${info.nonce}`;
    const closed = await this.closedWith(r);
    const content = closed ? openSeal(this.domain, r.channelId, r.client, r.sealed, closed) : null;
    if (!content) {
      if (!this.reported.has(reportKey)) {
        this.reported.add(reportKey);
        this.log.warn({ channelId: r.channelId, nonce: info.nonce.toString() }, "partner closed with a state the sealed update does not answer");
      }
      return;
    }
    const stateHash = hashState(content.state);
    const valid =
      isUpdateSigner(this.verifier, this.domain, r.channelId, content.sig1.revokedBelow, stateHash, content.sig1.signature, r.participant1) &&
      isUpdateSigner(this.verifier, this.domain, r.channelId, content.sig2.revokedBelow, stateHash, content.sig2.signature, r.participant2);
    if (!valid) {
      if (!this.reported.has(reportKey)) {
        this.reported.add(reportKey);
        this.log.warn({ channelId: r.channelId, client: r.client }, "the sealed update's signatures are invalid; nothing submitted");
      }
      return;
    }
    this.log.warn({ channelId: r.channelId, closed: info.nonce.toString(), newer: content.state.nonce.toString() }, "partner closed with an older state: submitting the newer one");
    const tx = await this.chain.updateState(r.channelId, r.participant1, r.participant2, content.state, content.sig1, content.sig2);
    await this.acted(key, { action: "updateState", txHash: tx.hash, nonce: content.state.nonce });
  }

  private async acted(key: string, outcome: NonNullable<WatchRecord["outcome"]>): Promise<void> {
    const record = await this.serial(key, async () => {
      const r = await this.store.getPayment<WatchRecord>(key);
      if (!r) return null;
      const next = { ...r, outcome };
      await this.store.commit({ payments: [{ paymentId: key, record: next }] });
      return next;
    });
    this.log.info({ key, action: outcome.action, tx: outcome.txHash }, "dispute answered");
    if (record) this.events.emit("acted", record);
  }

  /** The state and client signature the partner closed with, read from the close transaction. */
  private async closedWith(r: WatchRecord): Promise<CloseCandidate | null> {
    let txHash = r.dispute?.txHash ?? null;
    if (!txHash) {
      const topic = this.chain.channels.getEvent("ChannelClosed")?.topicHash;
      if (!topic) return null;
      const logs = await this.provider.getLogs({
        address: this.deployment.channels,
        topics: [topic, r.channelId],
        fromBlock: this.deployment.deployBlock,
        toBlock: "latest",
      });
      txHash = (logs[logs.length - 1]?.transactionHash as Hex | undefined) ?? null;
    }
    if (!txHash) return null;
    const tx = await this.provider.getTransaction(txHash);
    if (!tx) return null;
    // A close sent through a contract (a smart wallet) has other calldata: it can't be read here.
    const parsed = this.chain.channels.parseTransaction({ data: tx.data });
    if (!parsed || parsed.name !== "close") return null;
    const state = parsed.args.getValue("state") as Result;
    const sig = parsed.args.getValue("partnerSig") as Result;
    const closedState: ChannelState = {
      channelId: String(state.getValue("channelId")).toLowerCase() as Hex,
      nonce: BigInt(state.getValue("nonce") as bigint),
      sent1: BigInt(state.getValue("sent1") as bigint),
      sent2: BigInt(state.getValue("sent2") as bigint),
      locked1: BigInt(state.getValue("locked1") as bigint),
      locked2: BigInt(state.getValue("locked2") as bigint),
      locksRoot: String(state.getValue("locksRoot")).toLowerCase() as Hex,
    };
    const signature = String(sig.getValue("signature")).toLowerCase() as Hex;
    return {
      state: closedState,
      signature: closedState.nonce === 0n ? null : { revokedBelow: BigInt(sig.getValue("revokedBelow") as bigint), signature },
    };
  }

  // ------------------------------------------------------------------ records

  private watch(r: WatchRecord): void {
    const id = r.channelId.toLowerCase();
    const key = recordKey(r.channelId, r.client);
    let keys = this.watched.get(id);
    if (!keys) this.watched.set(id, (keys = new Set()));
    keys.add(key);
    if (r.dispute) this.disputed.add(key);
  }

  /** Drops a record: its channel ended, or its dispute is past helping. */
  private async forget(key: string, why: string): Promise<void> {
    await this.serial(key, async () => {
      const r = await this.store.getPayment<WatchRecord>(key);
      if (!r) return;
      await this.store.commit({ deletePayments: [key] });
      this.disputed.delete(key);
      const keys = this.watched.get(r.channelId.toLowerCase());
      keys?.delete(key);
      if (keys?.size === 0) this.watched.delete(r.channelId.toLowerCase());
      this.log.info({ channelId: r.channelId, client: r.client, why }, "stopped watching");
    });
  }

  /** Runs read-modify-write work on one record at a time. */
  private serial<T>(key: string, work: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const next = prev.then(work, work);
    const tail = next.catch(() => undefined);
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return next;
  }
}

function disputeOf(info: ChannelInfo, client: Address, txHash: Hex | null): Dispute | null {
  const closer = info.closerSide === 1 ? info.participant1 : info.participant2;
  if (normalizeAddress(closer) === client) return null;
  return { closer: normalizeAddress(closer), nonce: info.nonce, settleAt: info.settleAt, txHash };
}

/** The stronger revocation and the newer sealed state of the stored record and a hand-off. */
function merge(existing: WatchRecord | undefined, h: HandOff, client: Address, dispute: Dispute | null): WatchRecord {
  const partner = client === h.participant1 ? h.participant2 : h.participant1;
  const oldRev = existing?.revocation ?? null;
  const revocation = h.revocation && (!oldRev || h.revocation.revokedBelow >= oldRev.revokedBelow) ? h.revocation : oldRev;
  const oldSealed = existing?.sealed ?? null;
  const sealed = h.sealed && (!oldSealed || h.sealed.nonce >= oldSealed.nonce) ? h.sealed : oldSealed;
  return {
    channelId: h.channelId,
    client,
    partner,
    participant1: h.participant1,
    participant2: h.participant2,
    revocation,
    sealed,
    updatedAt: Date.now(),
    dispute,
    outcome: existing?.outcome ?? null,
  };
}
