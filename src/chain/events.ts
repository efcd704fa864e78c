/**
 * Polls eth_getLogs for the channel contract and the secret registry, decodes the logs into a
 * typed union and hands them, in chain order, to an async handler. The cursor (last processed
 * block) only moves after the handler resolved and is persisted through a caller-supplied store,
 * so a restarted node resumes where it stopped.
 *
 * Assumes a reorg-free chain (or enough confirmations to make reorgs moot): a block once scanned
 * is never scanned again, so events of a block that is later reorganised away are not retracted.
 */
import { Interface, getAddress, zeroPadValue, type Log, type LogDescription, type Provider, type Result } from "ethers";
import { artifact } from "./artifacts.js";
import type { Deployment } from "./deploy.js";
import { ChainError, toChainError } from "./errors.js";
import type { Address, Hex } from "../protocol/types.js";

interface EventBase {
  blockNumber: number;
  logIndex: number;
  txHash: Hex;
}

export type ChainEvent = EventBase &
  (
    | { type: "ChannelOpened"; channelId: Hex; participant1: Address; participant2: Address }
    | { type: "Deposited"; channelId: Hex; participant: Address; totalDeposit: bigint }
    | { type: "CreditLimitSet"; hub: Address; limit: bigint }
    | { type: "CreditGranted"; channelId: Hex; hub: Address; totalCredit: bigint }
    | { type: "Withdrawn"; channelId: Hex; participant: Address; totalWithdraw: bigint }
    | { type: "CooperativelyClosed"; channelId: Hex; balance1: bigint; balance2: bigint }
    | { type: "ChannelClosed"; channelId: Hex; closer: Address; nonce: bigint; settleAt: bigint; nonCloserPaid: bigint }
    | { type: "StateUpdated"; channelId: Hex; nonce: bigint; nonCloserPaid: bigint }
    | { type: "ChannelPenalized"; channelId: Hex; cheater: Address; beneficiary: Address; amount: bigint }
    | { type: "ChannelSettled"; channelId: Hex; closerPaid: bigint; lockedRemaining: bigint }
    | { type: "LocksUnlocked"; channelId: Hex; paid1: bigint; paid2: bigint }
    | { type: "SecretRevealed"; secretHash: Hex; secret: Hex }
  );

export type ChainEventType = ChainEvent["type"];

/** Where the last processed block is kept between runs. */
export interface CursorStore {
  load(): Promise<number | undefined>;
  save(block: number): Promise<void>;
}

/** A cursor kept in memory only; its `block` field is what was last saved. */
export function memoryCursor(initial?: number): CursorStore & { block: number | undefined } {
  const store = {
    block: initial,
    load: async () => store.block,
    save: async (block: number) => {
      store.block = block;
    },
  };
  return store;
}

export interface ChainEventsOptions {
  provider: Provider;
  deployment: Pick<Deployment, "channels" | "secretRegistry" | "deployBlock">;
  cursor: CursorStore;
  handler: (event: ChainEvent) => Promise<void>;
  /** Blocks an event needs (its own included) before it is delivered; default 1. */
  confirmations?: number;
  /** Default 1000 ms. */
  pollIntervalMs?: number;
  /** Largest block range of one eth_getLogs; default 2000. */
  maxBlockRange?: number;
  /**
   * Deliver only events of this account's channels and its own CreditLimitSet. SecretRevealed
   * events are always delivered: a secret matters to whoever holds a lock on its hash.
   */
  involving?: Address;
  /**
   * Ids of channels of `involving` opened before the persisted cursor, read at each start;
   * channels opened later are learnt from ChannelOpened events.
   */
  knownChannels?: () => Iterable<Hex> | Promise<Iterable<Hex>>;
  /** Failed polls and handler errors; the scan retries at the next poll. */
  onError?: (error: unknown) => void;
}

/** Above this many channel ids the scan fetches all channel events and filters after decoding. */
const MAX_TOPIC_IDS = 500;

const CHANNEL_SCOPED: readonly ChainEventType[] = [
  "Deposited",
  "CreditGranted",
  "Withdrawn",
  "CooperativelyClosed",
  "ChannelClosed",
  "StateUpdated",
  "ChannelPenalized",
  "ChannelSettled",
  "LocksUnlocked",
];

export class ChainEvents {
  private readonly provider: Provider;
  private readonly channelsAddress: string;
  private readonly registryAddress: string;
  private readonly deployBlock: number;
  private readonly cursorStore: CursorStore;
  private readonly handler: (event: ChainEvent) => Promise<void>;
  private readonly confirmations: number;
  private readonly pollIntervalMs: number;
  private readonly maxBlockRange: number;
  private readonly involving: string | undefined;
  private readonly knownChannels: ChainEventsOptions["knownChannels"];
  private readonly onError: (error: unknown) => void;
  private readonly channels: Interface;
  private readonly registry: Interface;
  private readonly channelIds = new Set<string>();

  private cursor: number | undefined;
  /** The last event delivered in this run, so a retried range skips what was already handled. */
  private delivered: { block: number; index: number } | undefined;
  private running = false;
  private stopping = false;
  private loop: Promise<void> | undefined;
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;

  constructor(options: ChainEventsOptions) {
    this.provider = options.provider;
    this.channelsAddress = getAddress(options.deployment.channels);
    this.registryAddress = getAddress(options.deployment.secretRegistry);
    this.deployBlock = options.deployment.deployBlock;
    this.cursorStore = options.cursor;
    this.handler = options.handler;
    this.confirmations = Math.max(1, options.confirmations ?? 1);
    this.pollIntervalMs = options.pollIntervalMs ?? 1_000;
    this.maxBlockRange = Math.max(1, options.maxBlockRange ?? 2_000);
    this.involving = options.involving?.toLowerCase();
    this.knownChannels = options.knownChannels;
    this.onError = options.onError ?? (() => undefined);
    this.channels = new Interface(artifact("StarlingChannels").abi);
    this.registry = new Interface(artifact("SecretRegistry").abi);
  }

  /** The last processed block (undefined before the cursor was loaded). */
  get lastProcessedBlock(): number | undefined {
    return this.cursor;
  }

  /** Loads the cursor and starts polling; resolves once the cursor is loaded. */
  async start(): Promise<void> {
    if (this.running) return;
    await this.init();
    this.running = true;
    this.stopping = false;
    this.loop = this.run();
  }

  /**
   * Stops polling. A handler call in progress completes (and so do the remaining events of its
   * block, so a restart never redelivers them); no timer is left behind.
   */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.wake?.();
    await this.loop;
    this.running = false;
    this.stopping = false;
    this.loop = undefined;
  }

  /** Scans up to the confirmed head now; concurrent calls share one scan. */
  poll(): Promise<void> {
    this.inFlight ??= this.scan().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  // ------------------------------------------------------------ internals

  private async init(): Promise<void> {
    if (this.cursor === undefined) {
      const saved = await this.cursorStore.load();
      this.cursor = saved ?? this.deployBlock - 1;
    }
    if (this.involving && this.knownChannels) {
      for (const id of await this.knownChannels()) this.channelIds.add(id.toLowerCase());
    }
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      try {
        await this.poll();
      } catch (err) {
        this.onError(err);
      }
      if (this.stopping) break;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.timer = setTimeout(resolve, this.pollIntervalMs);
      });
      this.wake = undefined;
      this.timer = undefined;
    }
  }

  private async scan(): Promise<void> {
    if (this.cursor === undefined) await this.init();
    let head: number;
    try {
      head = await this.provider.getBlockNumber();
    } catch (err) {
      throw toChainError(err, this.channels, "eth_blockNumber");
    }
    const target = head - (this.confirmations - 1);
    while (this.cursorValue() < target && !this.stopping) {
      const from = this.cursorValue() + 1;
      const to = Math.min(target, from + this.maxBlockRange - 1);
      const events = await this.fetch(from, to);
      const finished = await this.deliver(events);
      if (finished === undefined) {
        await this.advance(to);
      } else {
        // Stopped part-way through the range: everything up to this block has been handled.
        await this.advance(finished);
        return;
      }
    }
  }

  private cursorValue(): number {
    if (this.cursor === undefined) throw new ChainError("UNKNOWN", "cursor not loaded");
    return this.cursor;
  }

  private async advance(block: number): Promise<void> {
    if (block <= this.cursorValue()) return;
    await this.cursorStore.save(block);
    this.cursor = block;
  }

  /**
   * Hands events to the handler in order. Returns undefined when all were delivered, or the last
   * fully delivered block when stopped early. A handler error saves the blocks before the failing
   * one and propagates.
   */
  private async deliver(events: ChainEvent[]): Promise<number | undefined> {
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      const next = events[i + 1];
      if (this.delivered && compare(event, this.delivered) <= 0) continue;
      try {
        await this.handler(event);
      } catch (err) {
        await this.advance(event.blockNumber - 1);
        throw err;
      }
      this.delivered = { block: event.blockNumber, index: event.logIndex };
      if (this.stopping && next && next.blockNumber !== event.blockNumber) return event.blockNumber;
    }
    return undefined;
  }

  private async fetch(from: number, to: number): Promise<ChainEvent[]> {
    const logs = this.involving ? await this.fetchInvolving(from, to, this.involving) : await this.getLogs({ address: [this.channelsAddress, this.registryAddress] }, from, to);
    const events: ChainEvent[] = [];
    const seen = new Set<string>();
    for (const log of logs) {
      const key = `${log.blockNumber}:${log.index}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const event = this.decode(log);
      if (event && this.relevant(event)) events.push(event);
    }
    events.sort(compareEvents);
    return events;
  }

  /**
   * Topic filters on the indexed participant fields: ChannelOpened naming the account (either
   * side) first, which teaches the channel ids; then every channel-scoped event of those ids.
   */
  private async fetchInvolving(from: number, to: number, account: string): Promise<Log[]> {
    const topic = zeroPadValue(account, 32).toLowerCase();
    const opened = this.topic("ChannelOpened");
    const [asSide1, asSide2, secrets] = await Promise.all([
      this.getLogs({ address: this.channelsAddress, topics: [opened, null, topic] }, from, to),
      this.getLogs({ address: this.channelsAddress, topics: [opened, null, null, topic] }, from, to),
      this.getLogs({ address: this.registryAddress, topics: [this.topic("SecretRevealed")] }, from, to),
    ]);
    for (const log of [...asSide1, ...asSide2]) {
      const id = log.topics[1];
      if (id) this.channelIds.add(id.toLowerCase());
    }
    const limitSet = this.topic("CreditLimitSet");
    const scoped = CHANNEL_SCOPED.map((name) => this.topic(name));
    // CreditLimitSet's first topic is the hub, the others' the channel id: one query serves both.
    const topics =
      this.channelIds.size === 0
        ? [[limitSet], [topic]]
        : this.channelIds.size <= MAX_TOPIC_IDS
          ? [[...scoped, limitSet], [...this.channelIds, topic]]
          : [[...scoped, limitSet]];
    const channelLogs = await this.getLogs({ address: this.channelsAddress, topics }, from, to);
    return [...asSide1, ...asSide2, ...channelLogs, ...secrets];
  }

  private async getLogs(
    filter: { address: string | string[]; topics?: Array<string | string[] | null> },
    fromBlock: number,
    toBlock: number,
  ): Promise<Log[]> {
    try {
      return await this.provider.getLogs({ ...filter, fromBlock, toBlock });
    } catch (err) {
      throw toChainError(err, this.channels, `eth_getLogs ${fromBlock}-${toBlock}`);
    }
  }

  private topic(name: ChainEventType): string {
    const iface = name === "SecretRevealed" ? this.registry : this.channels;
    const event = iface.getEvent(name);
    if (!event) throw new ChainError("UNKNOWN", `event ${name} is not in the ABI`);
    return event.topicHash;
  }

  /** After topic filtering, what the topics could not express (many channel ids). */
  private relevant(event: ChainEvent): boolean {
    const account = this.involving;
    if (!account) return true;
    switch (event.type) {
      case "SecretRevealed":
        return true;
      case "ChannelOpened":
        return event.participant1.toLowerCase() === account || event.participant2.toLowerCase() === account;
      case "CreditLimitSet":
        return event.hub.toLowerCase() === account;
      default:
        return this.channelIds.has(event.channelId);
    }
  }

  private decode(log: Log): ChainEvent | undefined {
    const address = log.address.toLowerCase();
    const iface =
      address === this.channelsAddress.toLowerCase() ? this.channels : address === this.registryAddress.toLowerCase() ? this.registry : undefined;
    if (!iface) return undefined;
    let parsed: LogDescription | null;
    try {
      parsed = iface.parseLog({ topics: [...log.topics], data: log.data });
    } catch {
      return undefined;
    }
    if (!parsed) return undefined;
    const base: EventBase = { blockNumber: log.blockNumber, logIndex: log.index, txHash: log.transactionHash as Hex };
    const a = parsed.args;
    switch (parsed.name) {
      case "ChannelOpened":
        return { ...base, type: "ChannelOpened", channelId: hex(a, "channelId"), participant1: addr(a, "participant1"), participant2: addr(a, "participant2") };
      case "Deposited":
        return { ...base, type: "Deposited", channelId: hex(a, "channelId"), participant: addr(a, "participant"), totalDeposit: int(a, "totalDeposit") };
      case "CreditLimitSet":
        return { ...base, type: "CreditLimitSet", hub: addr(a, "hub"), limit: int(a, "limit") };
      case "CreditGranted":
        return { ...base, type: "CreditGranted", channelId: hex(a, "channelId"), hub: addr(a, "hub"), totalCredit: int(a, "totalCredit") };
      case "Withdrawn":
        return { ...base, type: "Withdrawn", channelId: hex(a, "channelId"), participant: addr(a, "participant"), totalWithdraw: int(a, "totalWithdraw") };
      case "CooperativelyClosed":
        return { ...base, type: "CooperativelyClosed", channelId: hex(a, "channelId"), balance1: int(a, "balance1"), balance2: int(a, "balance2") };
      case "ChannelClosed":
        return {
          ...base,
          type: "ChannelClosed",
          channelId: hex(a, "channelId"),
          closer: addr(a, "closer"),
          nonce: int(a, "nonce"),
          settleAt: int(a, "settleAt"),
          nonCloserPaid: int(a, "nonCloserPaid"),
        };
      case "StateUpdated":
        return { ...base, type: "StateUpdated", channelId: hex(a, "channelId"), nonce: int(a, "nonce"), nonCloserPaid: int(a, "nonCloserPaid") };
      case "ChannelPenalized":
        return {
          ...base,
          type: "ChannelPenalized",
          channelId: hex(a, "channelId"),
          cheater: addr(a, "cheater"),
          beneficiary: addr(a, "beneficiary"),
          amount: int(a, "amount"),
        };
      case "ChannelSettled":
        return { ...base, type: "ChannelSettled", channelId: hex(a, "channelId"), closerPaid: int(a, "closerPaid"), lockedRemaining: int(a, "lockedRemaining") };
      case "LocksUnlocked":
        return { ...base, type: "LocksUnlocked", channelId: hex(a, "channelId"), paid1: int(a, "paid1"), paid2: int(a, "paid2") };
      case "SecretRevealed":
        return { ...base, type: "SecretRevealed", secretHash: hex(a, "secretHash"), secret: hex(a, "secret") };
      default:
        return undefined;
    }
  }
}

function compare(event: ChainEvent, position: { block: number; index: number }): number {
  return event.blockNumber - position.block || event.logIndex - position.index;
}

function compareEvents(x: ChainEvent, y: ChainEvent): number {
  return x.blockNumber - y.blockNumber || x.logIndex - y.logIndex;
}

function hex(args: Result, name: string): Hex {
  const value: unknown = args.getValue(name);
  if (typeof value !== "string") throw new ChainError("UNKNOWN", `event field ${name} is not hex`);
  return value.toLowerCase() as Hex;
}

function addr(args: Result, name: string): Address {
  const value: unknown = args.getValue(name);
  if (typeof value !== "string") throw new ChainError("UNKNOWN", `event field ${name} is not an address`);
  return getAddress(value) as Address;
}

function int(args: Result, name: string): bigint {
  const value: unknown = args.getValue(name);
  if (typeof value !== "bigint") throw new ChainError("UNKNOWN", `event field ${name} is not an integer`);
  return value;
}
