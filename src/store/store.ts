/**
 * Persistent state of a node: channel records, payments, secrets, the per-peer outbox and meta
 * values. The shell persists a transition's writes with one {@link Store.commit} before sending
 * the transition's messages, so a crash never leaves a message sent whose state is lost.
 *
 * Key layout (one keyspace, "!"-terminated prefixes; values are {@link encode}d JSON):
 *   c!<channelId>              channel record, replaced in place: O(1) per channel; without its
 *                              `config` and `funding` when those are stored under f!
 *   f!<channelId>              a channel record's `config` and `funding` (see FIXED_FIELDS)
 *   p!<paymentId>              payment record, removable with deletePayments
 *   s!<secretHash>             secret
 *   o!<peer>!<seq: 16 hex>     outbox message; fixed-width seq so byte order is numeric order
 *   q!<peer>                   next outbox seq for peer, persisted so seqs survive restart
 *   m!<key>                    meta value
 * In the outbox key, "%" and "!" in the peer are escaped as "%25" and "%21", so one peer's
 * range never contains another's.
 */
import { Level } from "level";
import { DecodeError, EncodeError, decodeBytes, encodeBytes } from "./codec.js";

export interface OutboxEntry<T> {
  peer: string;
  seq: bigint;
  message: T;
}

export interface CommitResult {
  /** Seq assigned to each entry of `batch.outboxAdd`, in the same order. */
  outboxSeqs: bigint[];
}

export interface Store {
  open(): Promise<void>;
  /** Waits for accepted commits to be written, then closes. Closing a closed store is a no-op. */
  close(): Promise<void>;
  getChannel<T>(channelId: string): Promise<T | undefined>;
  /** All channel records, in channel-id order. */
  listChannels<T>(): Promise<T[]>;
  getPayment<T>(paymentId: string): Promise<T | undefined>;
  /** Every stored payment, in key order (an optional, prunable history). */
  listPayments<T>(): Promise<T[]>;
  getSecret(secretHash: string): Promise<string | undefined>;
  /** Pending messages, grouped by peer and in seq order within a peer. */
  listOutbox<T>(peer?: string): Promise<OutboxEntry<T>[]>;
  getMeta<T>(key: string): Promise<T | undefined>;
  /** Meta values whose key starts with `prefix`, in key order, as [key, value]. */
  listMeta<T>(prefix: string): Promise<[string, T][]>;
  /**
   * Applies every write of one protocol transition atomically: all of it or none of it.
   * Values are validated and outbox seqs assigned synchronously, in call order, before this
   * returns; the promise resolves once the writes are in the database.
   */
  commit(batch: Batch): Promise<CommitResult>;
  /**
   * Deletes a delivered outbox message without a database write of its own: the delete rides
   * with the next commit, or is written within {@link LAZY_ACK_MS}, and at close. A crash may lose
   * it; the message is then sent again on restart, and receivers drop repeats.
   */
  ackLater(peer: string, seq: bigint): void;
}

/** Longest a lazy ack ({@link Store.ackLater}) waits for a commit to ride with. */
export const LAZY_ACK_MS = 200;

/**
 * Writes of one transition. Applied in this order, so within one batch a delete of a payment
 * wins over a put of it, and an ack can remove a message added by the same batch.
 */
export interface Batch {
  /** Put (replace). */
  channels?: { channelId: string; record: unknown }[];
  /** Put (replace). */
  payments?: { paymentId: string; record: unknown }[];
  deletePayments?: string[];
  secrets?: { secretHash: string; secret: string }[];
  meta?: { key: string; value: unknown }[];
  /** Deletes meta values (after `meta`, so a delete wins over a put of the same key). */
  deleteMeta?: string[];
  /** The store assigns each message the peer's next seq (starting at 1, never reused). */
  outboxAdd?: { peer: string; message: unknown }[];
  /** Deletes; acking an absent seq is a no-op. */
  outboxAck?: { peer: string; seq: bigint }[];
}

export class StoreClosedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreClosedError";
  }
}

/** A stored value or key that can't be decoded. */
export class CorruptValueError extends Error {
  readonly key: string;
  constructor(key: string, detail: string, options?: { cause?: unknown }) {
    super(`corrupt value at key ${JSON.stringify(key)}: ${detail}`, options);
    this.name = "CorruptValueError";
    this.key = key;
  }
}

const CHANNEL = "c!";
const CHANNEL_FIXED = "f!";
const PAYMENT = "p!";
const SECRET = "s!";
const OUTBOX = "o!";
const NEXT_SEQ = "q!";
const META = "m!";

const SEQ_HEX = 16;
const MAX_SEQ = (1n << 64n) - 1n;

type WriteOp = { type: "put"; key: string; value: Uint8Array } | { type: "del"; key: string };

/** A sorted string keyspace; all the store needs from LevelDB. */
interface Backend {
  readonly description: string;
  open(): Promise<void>;
  close(): Promise<void>;
  get(key: string): Promise<Uint8Array | undefined>;
  /** Entries with gte <= key < lt, in key order. */
  entries(gte: string, lt: string): Promise<[string, Uint8Array][]>;
  /** Atomic. */
  write(ops: WriteOp[]): Promise<void>;
}

/**
 * A channel record's parts that change only with chain events (its configuration and on-chain
 * totals: ~480 bytes, a fifth of a record under load). They are stored under their own key and
 * written only when either is a different object from the one last written for the channel, so
 * the updates in between rewrite the rest of the record alone. Records are treated as immutable
 * snapshots (the engine's are): a part changed in place would not be noticed.
 */
const FIXED_FIELDS = ["config", "funding"] as const;

type FixedParts = { config: object; funding: object };

/** The record's fixed parts, if it is a plain object that has both as objects. */
function fixedPartsOf(record: unknown): FixedParts | null {
  if (record === null || typeof record !== "object" || Array.isArray(record)) return null;
  const { config, funding } = record as Record<string, unknown>;
  if (config === null || typeof config !== "object" || funding === null || typeof funding !== "object") return null;
  return { config, funding };
}

/** The record without its fixed parts (field order kept). */
function withoutFixed(record: object): Record<string, unknown> {
  const rest: Record<string, unknown> = {};
  for (const key of Object.keys(record)) {
    if (key !== "config" && key !== "funding") rest[key] = (record as Record<string, unknown>)[key];
  }
  return rest;
}

/** A stored channel record joined with its stored fixed parts, if it was stored without them. */
function joinChannel(key: string, rest: unknown, fixed: unknown): unknown {
  if (fixed === undefined || rest === null || typeof rest !== "object" || Array.isArray(rest) || "config" in rest) return rest;
  const parts = fixedPartsOf(fixed);
  if (parts === null) throw new CorruptValueError(CHANNEL_FIXED + key.slice(CHANNEL.length), `not an object with ${FIXED_FIELDS.join(" and ")}`);
  return { config: parts.config, funding: parts.funding, ...rest };
}

/** Smallest string above every string starting with `prefix` (whose last char is ASCII). */
function upperBound(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

/** Smallest string above every string starting with `prefix` (any last char). */
function prefixEnd(prefix: string): string {
  const last = prefix.charCodeAt(prefix.length - 1);
  return last === 0xffff ? prefix + "\uffff" : prefix.slice(0, -1) + String.fromCharCode(last + 1);
}

function escapePeer(peer: string): string {
  return /[!%]/.test(peer) ? peer.replace(/[!%]/g, (c) => (c === "!" ? "%21" : "%25")) : peer;
}

function unescapePeer(escaped: string): string {
  return escaped.includes("%") ? escaped.replace(/%2[15]/g, (m) => (m === "%21" ? "!" : "%")) : escaped;
}

function outboxPrefix(peer: string): string {
  return OUTBOX + escapePeer(peer) + "!";
}

function outboxKey(peer: string, seq: bigint): string {
  return outboxPrefix(peer) + seq.toString(16).padStart(SEQ_HEX, "0");
}

function parseOutboxKey(key: string): { peer: string; seq: bigint } {
  const sep = key.length - SEQ_HEX - 1;
  const hex = key.slice(sep + 1);
  if (sep < OUTBOX.length || key[sep] !== "!" || !/^[0-9a-f]+$/.test(hex)) {
    throw new CorruptValueError(key, "malformed outbox key");
  }
  return { peer: unescapePeer(key.slice(OUTBOX.length, sep)), seq: BigInt("0x" + hex) };
}

function checkString(value: unknown, what: string): string {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string, got ${typeof value}`);
  return value;
}

function checkSeq(value: unknown, what: string): bigint {
  if (typeof value !== "bigint" || value < 0n || value > MAX_SEQ) {
    throw new TypeError(`${what} must be a bigint in [0, 2^64), got ${String(value)}`);
  }
  return value;
}

/** Encodes `value`, naming where in the batch it sits if it can't be. */
function encodeAt(value: unknown, field: string, index: number, prop: string): Uint8Array {
  try {
    return encodeBytes(value);
  } catch (err) {
    throw err instanceof EncodeError ? err.prepend(prop).prepend(index).prepend(field) : err;
  }
}

export interface StoreStats {
  commits: number;
  writes: number;
  /** Key characters (ASCII: bytes) and value bytes written. */
  writeBytes: number;
  /** Milliseconds between issuing each write and its completion, summed. */
  writeMs: number;
}

interface Waiter {
  result: CommitResult;
  resolve: (result: CommitResult) => void;
  reject: (err: unknown) => void;
}

/** Commits accepted while the previous write was being scheduled or in flight. */
interface Group {
  /**
   * The group's writes by key: a key written by several of its commits is written once, with the
   * last value (the group is one atomic batch, so the earlier values could never be read back).
   */
  ops: Map<string, WriteOp>;
  peers: Set<string>;
  waiters: Waiter[];
  /**
   * Channels whose fixed parts this group leaves to an earlier group's write: if that write
   * fails, this group writes them (the newest record's parts, by channel id).
   */
  fixedElsewhere: Map<string, FixedParts>;
}

type State = "closed" | "opening" | "open" | "closing";

class KeyValueStore implements Store {
  private state: State = "closed";
  /** Next outbox seq per peer; authoritative while open, persisted with every write using it. */
  private readonly nextSeq = new Map<string, bigint>();
  private pending: Group | null = null;
  private flushing: Promise<void> | null = null;
  /** Outbox deletes waiting to ride with the next write (see ackLater). */
  private lazyAcks: WriteOp[] = [];
  private lazyTimer: NodeJS.Timeout | null = null;
  /** The fixed parts last handed to a write, by channel id (see FIXED_FIELDS). */
  private readonly fixedWritten = new Map<string, FixedParts>();
  private commitCount = 0;
  private writeCount = 0;
  private writeBytes = 0;
  private writeMs = 0;

  protected constructor(private readonly backend: Backend) {}

  /**
   * Commits accepted and database writes issued since construction (commits/writes is the
   * coalescing factor), the bytes of keys and values written, and the time spent in writes.
   */
  get stats(): StoreStats {
    return { commits: this.commitCount, writes: this.writeCount, writeBytes: this.writeBytes, writeMs: this.writeMs };
  }

  async open(): Promise<void> {
    if (this.state !== "closed") throw new Error(`${this.backend.description} is already ${this.state}`);
    this.state = "opening";
    try {
      await this.backend.open();
      this.nextSeq.clear();
      this.fixedWritten.clear();
      for (const [key, raw] of await this.backend.entries(NEXT_SEQ, upperBound(NEXT_SEQ))) {
        const next = this.decodeAt(key, raw);
        if (typeof next !== "bigint") throw new CorruptValueError(key, "outbox counter is not a bigint");
        this.nextSeq.set(key.slice(NEXT_SEQ.length), next);
      }
      this.state = "open";
    } catch (err) {
      this.state = "closed";
      await this.backend.close().catch(() => undefined);
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.state === "closed") return;
    if (this.state !== "open") throw new Error(`${this.backend.description} is ${this.state}`);
    this.writeLazyAcks();
    this.state = "closing";
    try {
      while (this.flushing) await this.flushing;
    } finally {
      this.state = "closed";
      await this.backend.close();
    }
  }

  async getChannel<T>(channelId: string): Promise<T | undefined> {
    const key = CHANNEL + channelId;
    const [rest, fixed] = await Promise.all([this.read<unknown>(key), this.read<unknown>(CHANNEL_FIXED + channelId)]);
    return rest === undefined ? undefined : (joinChannel(key, rest, fixed) as T);
  }

  async listChannels<T>(): Promise<T[]> {
    this.assertOpen();
    const [rows, fixedRows] = await Promise.all([
      this.backend.entries(CHANNEL, upperBound(CHANNEL)),
      this.backend.entries(CHANNEL_FIXED, upperBound(CHANNEL_FIXED)),
    ]);
    const fixed = new Map(fixedRows.map(([key, raw]) => [key.slice(CHANNEL_FIXED.length), { key, raw }]));
    return rows.map(([key, raw]) => {
      const parts = fixed.get(key.slice(CHANNEL.length));
      return joinChannel(key, this.decodeAt(key, raw), parts && this.decodeAt(parts.key, parts.raw)) as T;
    });
  }

  getPayment<T>(paymentId: string): Promise<T | undefined> {
    return this.read<T>(PAYMENT + paymentId);
  }

  async listPayments<T>(): Promise<T[]> {
    this.assertOpen();
    const rows = await this.backend.entries(PAYMENT, upperBound(PAYMENT));
    return rows.map(([key, raw]) => this.decodeAt(key, raw) as T);
  }

  async getSecret(secretHash: string): Promise<string | undefined> {
    const key = SECRET + secretHash;
    const secret = await this.read<unknown>(key);
    if (secret !== undefined && typeof secret !== "string") throw new CorruptValueError(key, "secret is not a string");
    return secret;
  }

  async listOutbox<T>(peer?: string): Promise<OutboxEntry<T>[]> {
    this.assertOpen();
    const prefix = peer === undefined ? OUTBOX : outboxPrefix(peer);
    const rows = await this.backend.entries(prefix, upperBound(prefix));
    return rows.map(([key, raw]) => ({ ...parseOutboxKey(key), message: this.decodeAt(key, raw) as T }));
  }

  getMeta<T>(key: string): Promise<T | undefined> {
    return this.read<T>(META + key);
  }

  async listMeta<T>(prefix: string): Promise<[string, T][]> {
    this.assertOpen();
    const start = META + prefix;
    const rows = await this.backend.entries(start, prefix === "" ? upperBound(META) : prefixEnd(start));
    return rows.map(([key, raw]) => [key.slice(META.length), this.decodeAt(key, raw) as T]);
  }

  commit(batch: Batch): Promise<CommitResult> {
    if (this.state !== "open") return Promise.reject(this.closedError());
    const ops: WriteOp[] = [];
    const adds: { peer: string; value: Uint8Array }[] = [];
    const assigned = new Map<string, bigint>();
    const outboxSeqs: bigint[] = [];
    /** By channel id: the fixed parts as of this commit, and whether it writes them. */
    const fixed = new Map<string, { parts: FixedParts | null; written: boolean }>();
    try {
      // Everything that can fail happens before any shared state changes, so a rejected
      // commit consumes no seqs and writes nothing.
      (batch.channels ?? []).forEach((c, i) => {
        const id = checkString(c.channelId, "channelId");
        const parts = fixedPartsOf(c.record);
        if (parts === null) {
          // Stored whole: no f! record may be joined with it.
          ops.push({ type: "put", key: CHANNEL + id, value: encodeAt(c.record, "channels", i, "record") });
          ops.push({ type: "del", key: CHANNEL_FIXED + id });
          fixed.set(id, { parts: null, written: true });
          return;
        }
        ops.push({ type: "put", key: CHANNEL + id, value: encodeAt(withoutFixed(c.record as object), "channels", i, "record") });
        const seen = fixed.get(id);
        const last = seen ? seen.parts : this.fixedWritten.get(id);
        if (last && last.config === parts.config && last.funding === parts.funding) {
          fixed.set(id, { parts, written: seen?.written ?? false });
          return;
        }
        ops.push({ type: "put", key: CHANNEL_FIXED + id, value: encodeAt(parts, "channels", i, "record") });
        fixed.set(id, { parts, written: true });
      });
      (batch.payments ?? []).forEach((p, i) => {
        ops.push({ type: "put", key: PAYMENT + checkString(p.paymentId, "paymentId"), value: encodeAt(p.record, "payments", i, "record") });
      });
      for (const id of batch.deletePayments ?? []) ops.push({ type: "del", key: PAYMENT + checkString(id, "deletePayments entry") });
      for (const s of batch.secrets ?? []) {
        ops.push({ type: "put", key: SECRET + checkString(s.secretHash, "secretHash"), value: encodeBytes(checkString(s.secret, "secret")) });
      }
      (batch.meta ?? []).forEach((m, i) => {
        ops.push({ type: "put", key: META + checkString(m.key, "meta key"), value: encodeAt(m.value, "meta", i, "value") });
      });
      for (const key of batch.deleteMeta ?? []) ops.push({ type: "del", key: META + checkString(key, "deleteMeta entry") });
      (batch.outboxAdd ?? []).forEach((m, i) => {
        adds.push({ peer: checkString(m.peer, "outbox peer"), value: encodeAt(m.message, "outboxAdd", i, "message") });
      });
      for (const { peer, value } of adds) {
        const seq = assigned.get(peer) ?? this.nextSeq.get(peer) ?? 1n;
        if (seq > MAX_SEQ) throw new RangeError(`outbox seq for peer ${JSON.stringify(peer)} exhausted`);
        assigned.set(peer, seq + 1n);
        outboxSeqs.push(seq);
        ops.push({ type: "put", key: outboxKey(peer, seq), value });
      }
      for (const a of batch.outboxAck ?? []) {
        ops.push({ type: "del", key: outboxKey(checkString(a.peer, "outbox peer"), checkSeq(a.seq, "outbox seq")) });
      }
    } catch (err) {
      return Promise.reject(err);
    }

    const group: Group = (this.pending ??= { ops: new Map(), peers: new Set(), waiters: [], fixedElsewhere: new Map() });
    for (const [id, { parts, written }] of fixed) {
      if (parts === null) this.fixedWritten.delete(id);
      else this.fixedWritten.set(id, parts);
      if (written || parts === null) group.fixedElsewhere.delete(id);
      else if (!group.ops.has(CHANNEL_FIXED + id)) group.fixedElsewhere.set(id, parts);
    }
    if (this.lazyAcks.length > 0) {
      ops.unshift(...this.lazyAcks);
      this.lazyAcks = [];
      if (this.lazyTimer) clearTimeout(this.lazyTimer);
      this.lazyTimer = null;
    }
    for (const op of ops) {
      // A message added and acked within one group never reaches the disk (seqs are never reused).
      if (op.type === "del" && op.key.startsWith(OUTBOX) && group.ops.get(op.key)?.type === "put") group.ops.delete(op.key);
      else group.ops.set(op.key, op);
    }
    for (const [peer, next] of assigned) {
      this.nextSeq.set(peer, next);
      group.peers.add(peer);
    }
    this.commitCount++;
    const done = new Promise<CommitResult>((resolve, reject) => group.waiters.push({ result: { outboxSeqs }, resolve, reject }));
    // Deferred to the end of this event-loop turn (setImmediate runs after the I/O callbacks of
    // the turn), so that commits issued by every message handled in the turn share one write.
    this.flushing ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.flush());
    return done;
  }

  ackLater(peer: string, seq: bigint): void {
    if (this.state !== "open") throw this.closedError();
    this.lazyAcks.push({ type: "del", key: outboxKey(checkString(peer, "outbox peer"), checkSeq(seq, "outbox seq")) });
    if (this.lazyTimer === null) {
      this.lazyTimer = setTimeout(() => {
        this.lazyTimer = null;
        if (this.state === "open") this.writeLazyAcks();
      }, LAZY_ACK_MS);
      this.lazyTimer.unref();
    }
  }

  /**
   * A write failed: fixed parts it carried may be missing. Every later record writes its own
   * again, and the group already waiting writes those it left to an earlier group.
   */
  private fixedLost(): void {
    this.fixedWritten.clear();
    const next = this.pending;
    if (!next) return;
    for (const [id, parts] of next.fixedElsewhere) {
      const key = CHANNEL_FIXED + id;
      next.ops.set(key, { type: "put", key, value: encodeBytes(parts) });
      this.fixedWritten.set(id, parts);
    }
    next.fixedElsewhere.clear();
  }

  /** Writes the lazy acks now, in a commit of their own (they join its group). */
  private writeLazyAcks(): void {
    if (this.lazyAcks.length > 0) void this.commit({}).catch(() => undefined);
  }

  /** Writes pending groups one at a time; commits arriving during a write join the next group. */
  private async flush(): Promise<void> {
    try {
      while (this.pending) {
        const group = this.pending;
        this.pending = null;
        // Every commit that used these counters is in this group or an earlier one.
        for (const peer of group.peers) {
          const key = NEXT_SEQ + peer;
          group.ops.set(key, { type: "put", key, value: encodeBytes(this.nextSeq.get(peer)) });
        }
        this.writeCount++;
        const ops = [...group.ops.values()];
        for (const op of ops) this.writeBytes += op.key.length + (op.type === "put" ? op.value.length : 0);
        const started = performance.now();
        try {
          await this.backend.write(ops);
          this.writeMs += performance.now() - started;
        } catch (err) {
          const failure = new Error(`${this.backend.description}: write failed`, { cause: err });
          for (const w of group.waiters) w.reject(failure);
          this.fixedLost();
          continue;
        }
        for (const w of group.waiters) w.resolve(w.result);
      }
    } finally {
      this.flushing = null;
    }
  }

  private async read<T>(key: string): Promise<T | undefined> {
    this.assertOpen();
    const raw = await this.backend.get(key);
    return raw === undefined ? undefined : (this.decodeAt(key, raw) as T);
  }

  private decodeAt(key: string, raw: Uint8Array): unknown {
    try {
      return decodeBytes(raw);
    } catch (err) {
      if (err instanceof DecodeError) throw new CorruptValueError(key, err.message, { cause: err });
      throw err;
    }
  }

  private assertOpen(): void {
    if (this.state !== "open") throw this.closedError();
  }

  private closedError(): StoreClosedError {
    const why = this.state === "closed" ? "closed (call open() first)" : this.state;
    return new StoreClosedError(`${this.backend.description} is not open: it is ${why}`);
  }
}

class LevelBackend implements Backend {
  private db: Level<string, Uint8Array> | null = null;

  constructor(
    readonly location: string,
    private readonly sync: boolean,
  ) {}

  get description(): string {
    return `LevelStore(${this.location})`;
  }

  async open(): Promise<void> {
    // A fresh handle per open: a Level instance opens itself on construction.
    // Values are the codec's UTF-8 bytes, handed over and read back as they are.
    const db = new Level<string, Uint8Array>(this.location, { keyEncoding: "utf8", valueEncoding: "view" });
    try {
      await db.open();
    } catch (err) {
      const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
      throw new Error(`${this.description}: cannot open: ${cause}`, { cause: err });
    }
    this.db = db;
  }

  async close(): Promise<void> {
    const db = this.db;
    this.db = null;
    await db?.close();
  }

  get(key: string): Promise<Uint8Array | undefined> {
    return this.handle().get(key);
  }

  entries(gte: string, lt: string): Promise<[string, Uint8Array][]> {
    return this.handle().iterator({ gte, lt }).all();
  }

  write(ops: WriteOp[]): Promise<void> {
    // A chained batch hands each operation to LevelDB's native batch as it is added; the array
    // form clones and re-validates every operation in JavaScript first, which cost about three
    // times the main-thread time per operation (scripts/bench-store.ts measures both).
    const batch = this.handle().batch();
    try {
      for (const op of ops) {
        if (op.type === "put") batch.put(op.key, op.value);
        else batch.del(op.key);
      }
    } catch (err) {
      void batch.close().catch(() => undefined);
      throw err;
    }
    return batch.write({ sync: this.sync });
  }

  /** Files at LevelDB's level 0, or null while closed. */
  level0Files(): number | null {
    // `level` resolves to classic-level under Node, whose handle has getProperty; its own
    // types (shared with the browser build) do not declare it.
    const db = this.db as { getProperty?: (property: string) => string } | null;
    if (!db?.getProperty) return null;
    return Number(db.getProperty("leveldb.num-files-at-level0"));
  }

  private handle(): Level<string, Uint8Array> {
    if (!this.db) throw new StoreClosedError(`${this.description} is not open`);
    return this.db;
  }
}

export interface LevelStoreOptions {
  /**
   * fsync every write. With `false` (the default) a resolved commit is in LevelDB's log in the
   * OS page cache: it survives the process being killed (even kill -9) but not an OS crash or
   * power loss, which may lose the last writes (never part of one: the log is replayed up to the
   * last whole batch). With `true` it survives those too, at the cost of one fsync per write;
   * group commit shares that fsync among all commits that were waiting for it.
   */
  sync?: boolean;
}

/**
 * LevelDB store. Concurrent commits (issued in the same tick, or while a write is in flight) are
 * coalesced into one atomic `batch()` write; each caller's promise resolves when that write does.
 */
export class LevelStore extends KeyValueStore {
  readonly location: string;
  readonly #level: LevelBackend;

  constructor(location: string, options: LevelStoreOptions = {}) {
    const level = new LevelBackend(location, options.sync ?? false);
    super(level);
    this.#level = level;
    this.location = location;
  }

  /**
   * Files at LevelDB's level 0: its compaction backlog. LevelDB slows every write down from 8
   * and stops writes from 12 until compaction catches up, so a count that stays high means
   * commits wait for compaction. Null while the store is closed.
   */
  level0Files(): number | null {
    return this.#level.level0Files();
  }
}

class MemoryBackend implements Backend {
  readonly description = "MemoryStore";

  constructor(private readonly data: Map<string, Uint8Array>) {}

  open(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  get(key: string): Promise<Uint8Array | undefined> {
    return Promise.resolve(this.data.get(key));
  }

  entries(gte: string, lt: string): Promise<[string, Uint8Array][]> {
    const rows: [string, Uint8Array][] = [];
    for (const row of this.data) if (row[0] >= gte && row[0] < lt) rows.push(row);
    return Promise.resolve(rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
  }

  write(ops: WriteOp[]): Promise<void> {
    for (const op of ops) {
      if (op.type === "put") this.data.set(op.key, op.value);
      else this.data.delete(op.key);
    }
    return Promise.resolve();
  }
}

/**
 * In-memory store with the same behaviour as {@link LevelStore}: same keys, same codec (so
 * records are copied in and out and invalid ones are rejected), same commit grouping.
 * Pass the same `data` map to a new instance to model a restart.
 */
export class MemoryStore extends KeyValueStore {
  constructor(data: Map<string, Uint8Array> = new Map()) {
    super(new MemoryBackend(data));
  }
}
