/**
 * The persist-then-send step sequence around a NodeCore, pipelined.
 *
 * Every step is applied to the engine in memory in call order, and its writes (changed channels,
 * transfer-state changes, finished payments, outgoing messages) are handed to the store as ONE
 * atomic commit right away, in the same order. A step's messages are sent and its events
 * dispatched only once that commit is durable, and never before the previous step's were: so
 * nothing leaves the node before it is persisted, and what leaves keeps the engine's order.
 *
 * Nothing waits for a commit before the next step is applied, so while one LevelDB write is in
 * flight the steps behind it are applied and their commits grouped into the next write, instead
 * of each step costing one write's latency.
 *
 * A step's messages for one peer leave as one bundle (one outbox record, one wire message); a
 * payer's settle the engine held back (`settlesHeld`) is proposed by input `flushSettles` after
 * the settle batching interval (or at stop) unless a later step took it along.
 */
import { bundleByPeer, type NodeCore, type NodeInput, type StepResult, type WireEnvelope } from "../engine/node-core.js";
import type { IncomingPayment, OutgoingPayment } from "../protocol/transfer.js";
import type { Address } from "../protocol/types.js";
import { Encoded, type Batch, type Store } from "../store/index.js";
import { storedChannel, storedTransferEntry } from "./persist.js";

/** Where a node's records live in the store. */
export interface StepKeys {
  /** Prefix of the transfer-state entries (one store record per entry). */
  transfers: string;
  /** Outbox peer name for messages to `to`. */
  outboxPeer(to: Address): string;
  /** Store key of a finished payment. */
  payment(p: OutgoingPayment | IncomingPayment): string;
}

export interface StepRunnerOptions {
  core: NodeCore;
  store: Store;
  keys: StepKeys;
  /**
   * Runs once the step's writes are durable, in step order: send `wire` (the step's messages as
   * they go on the wire, one per peer, each with its outbox seq), act on `r`'s events.
   */
  dispatch(r: StepResult, wire: readonly WireMessage[]): void;
  /** Adds the shell's own writes for a step to its batch (called as the step is applied). */
  augment?(r: StepResult, batch: Batch): void;
  /** Unix milliseconds stamped on finished payments. */
  now?: () => number;
  /** How long a payer's settle may wait for its channel's next proposal; default {@link SETTLE_BATCH_MS}. */
  settleBatchMs?: number;
}

/**
 * Default wait for a payer's settle held back by the engine (`settlesHeld`): long enough for a
 * program paying again at once to carry it in its next lock's update, short enough that the hub
 * hardly notices (it already holds the payment's secret).
 */
export const SETTLE_BATCH_MS = 20;

/** One outbox record of a step: a message, or the step's messages for one peer as a bundle. */
export interface WireMessage {
  to: Address;
  envelope: WireEnvelope;
  /** `envelope` as stored in the outbox: what to send (a frame writes these bytes again). */
  encoded: Encoded;
  seq: bigint;
}

/** A look-up that decided the step is not needed: its value is returned instead. */
export interface Skip<T> {
  skip: T;
}

const noop = (): void => undefined;

export class StepRunner {
  readonly #core: NodeCore;
  readonly #store: Store;
  readonly #keys: StepKeys;
  readonly #dispatch: StepRunnerOptions["dispatch"];
  readonly #augment: StepRunnerOptions["augment"];
  readonly #now: () => number;
  readonly #settleBatchMs: number;
  #settleTimer: NodeJS.Timeout | null = null;
  #stopped = false;
  /** Tail of the apply order: resolves once every step queued so far has been applied. */
  #applied: Promise<unknown> = Promise.resolve();
  /** Steps queued but not yet applied; while zero a step applies synchronously. */
  #waiting = 0;
  /** Tail of the dispatch order. */
  #dispatched: Promise<unknown> = Promise.resolve();

  constructor(opts: StepRunnerOptions) {
    this.#core = opts.core;
    this.#store = opts.store;
    this.#keys = opts.keys;
    this.#dispatch = opts.dispatch;
    this.#augment = opts.augment;
    this.#now = opts.now ?? Date.now;
    this.#settleBatchMs = opts.settleBatchMs ?? SETTLE_BATCH_MS;
  }

  /**
   * Ends the settle batching: a held settle is proposed now (one more step; `idle()` waits for it),
   * so a clean stop leaves none waiting. Later steps hold none back for a timer; a tick proposes
   * any they leave.
   */
  stop(): void {
    this.#stopped = true;
    if (this.#settleTimer === null) return;
    clearTimeout(this.#settleTimer);
    this.#settleTimer = null;
    this.step({ type: "flushSettles" }).catch(noop);
  }

  /** Applies `input` after every step queued before it; resolves once it is durable and dispatched. */
  step(input: NodeInput): Promise<StepResult> {
    if (this.#waiting === 0) {
      // Nothing queued ahead: apply now, saving the promise hops of the queue.
      try {
        return this.#apply(input);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.queue(() => input) as Promise<StepResult>;
  }

  /**
   * Runs `prepare` after every step queued before it has been applied (not necessarily made
   * durable), then applies the input it returns, all before any step queued after it. `prepare`
   * may read the store; it sees earlier steps in memory through the engine, not necessarily in
   * the store. Returning `{ skip }` applies nothing and resolves with that value.
   */
  queue<T>(prepare: () => NodeInput | Skip<T> | Promise<NodeInput | Skip<T>>): Promise<StepResult | T> {
    this.#waiting++;
    type Ran = { skipped: T } | { done: Promise<StepResult> };
    const run = this.#applied.then(async (): Promise<Ran> => {
      let prepared: NodeInput | Skip<T>;
      try {
        prepared = await prepare();
      } finally {
        this.#waiting--;
      }
      if ("skip" in prepared) return { skipped: prepared.skip };
      return { done: this.#apply(prepared) };
    });
    this.#applied = run.catch(noop);
    return run.then((r): StepResult | T | Promise<StepResult> => ("skipped" in r ? r.skipped : r.done));
  }

  /** Resolves once every step queued so far is dispatched. */
  async idle(): Promise<void> {
    await this.#applied;
    await this.#dispatched.catch(noop);
  }

  #apply(input: NodeInput): Promise<StepResult> {
    const r = this.#core.handle(input);
    if (r.settlesHeld && this.#settleTimer === null && !this.#stopped) {
      this.#settleTimer = setTimeout(() => {
        this.#settleTimer = null;
        // A failure here leaves the settles queued: the next tick proposes them.
        this.step({ type: "flushSettles" }).catch(noop);
      }, this.#settleBatchMs);
      this.#settleTimer.unref();
    }
    const wire = bundleByPeer(r.send).map((w) => ({ ...w, encoded: Encoded.of(w.envelope) }));
    const batch = this.#batch(r, wire);
    const committed = batch === null ? Promise.resolve({ outboxSeqs: [] as bigint[] }) : this.#store.commit(batch);
    const previous = this.#dispatched;
    const done = committed.then(async ({ outboxSeqs }) => {
      await previous.catch(noop);
      this.#dispatch(r, wire.map((w, i) => ({ ...w, seq: outboxSeqs[i]! })));
      return r;
    });
    this.#dispatched = done;
    return done;
  }

  #batch(r: StepResult, wire: readonly { to: Address; encoded: Encoded }[]): Batch | null {
    const batch: Batch = {};
    if (r.persist.channels.length > 0) batch.channels = r.persist.channels.map((c) => ({ channelId: c.config.channelId, record: storedChannel(c) }));
    if (wire.length > 0) batch.outboxAdd = wire.map((o) => ({ peer: this.#keys.outboxPeer(o.to), message: o.encoded }));
    const { transfers, transferChanges } = r.persist;
    if (transfers && transferChanges) {
      // One record per changed entry: the step writes what it changed, not the whole state.
      const put: { key: string; value: unknown }[] = [];
      const del: string[] = [];
      for (const [table, keys] of transferChanges) {
        const entries = transfers[table] as ReadonlyMap<string, unknown>;
        for (const key of keys) {
          const value = entries.get(key);
          const storeKey = `${this.#keys.transfers}${table}!${key}`;
          if (value === undefined) del.push(storeKey);
          else put.push({ key: storeKey, value: storedTransferEntry(table, key, value) });
        }
      }
      if (put.length > 0) batch.meta = put;
      if (del.length > 0) batch.deleteMeta = del;
    }
    // Finished payments leave the engine's working state and are kept by id, in the same batch.
    let finishedAt: bigint | undefined;
    for (const e of r.events) {
      if (e.type === "paymentSent" || e.type === "paymentReceived" || e.type === "paymentFailed") {
        finishedAt ??= BigInt(this.#now());
        (batch.payments ??= []).push({ paymentId: this.#keys.payment(e.payment), record: { ...e.payment, finishedAt } });
      }
    }
    this.#augment?.(r, batch);
    const empty = !batch.channels?.length && !batch.outboxAdd?.length && !batch.meta?.length && !batch.deleteMeta?.length && !batch.payments?.length;
    return empty ? null : batch;
  }
}
