/**
 * A shard of the load generator: some of the users (src: users.ts), in a worker thread of its
 * own, so that the users spread over the machine's cores as user daemons would, instead of one
 * JavaScript thread playing all of them and saturating before the hub does.
 *
 * Each shard has its own LevelDB store and pairs its own users (payer i pays payee i of the same
 * shard), so a payment never crosses threads here; the hub sees one connection per user as
 * before. The benchmark's main thread only coordinates: it calls a shard's methods through
 * {@link ShardClient} (a request/response over the worker's message port) and merges the results.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { loadBackend, newCryptoCounts } from "../../src/signer/index.js";
import type { ChannelData, Funding } from "../../src/protocol/channel.js";
import type { Address, Hex } from "../../src/protocol/types.js";
import { LevelStore } from "../../src/store/index.js";
import { BenchUser, pool, type UserCounters } from "./users.js";

export interface ShardConfig {
  /** Global indices of this shard's users (their keys derive from them): [from, to). */
  from: number;
  to: number;
  hub: Address;
  storeDir: string;
  /** Payees hand out invoices (see bench.ts). */
  invoices: boolean;
}

/** Milliseconds on a clock shared by every thread of the process. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Pair {
  payer: BenchUser;
  payee: BenchUser;
}

export interface ThroughputSample {
  /** When each payment completed ({@link epochMs}), and its latency in ms, in completion order. */
  doneAt: number[];
  latencyMs: number[];
  failed: number;
}

export interface OpenLoopSample {
  latencies: number[];
  failed: number;
  started: number;
  /** This shard's event-loop delay p99 during the run, ms. */
  eventLoopDelayP99Ms: number;
}

export interface SettleSample {
  completed: number;
  received: number;
  /** Users whose channel still holds something pending, or whose balance does not add up. */
  wrong: number;
  stillPending: boolean;
}

/** The users of one shard and what the benchmark does with them. */
export class UserShard {
  readonly #cfg: ShardConfig;
  readonly #users: BenchUser[] = [];
  readonly #counters: UserCounters = { crypto: newCryptoCounts(), sendFailures: 0, refused: 0, rejects: {}, disconnects: 0 };
  #store: LevelStore | null = null;
  #pairs: Pair[] = [];
  #ticker: NodeJS.Timeout | null = null;
  #startBalance = new Map<Address, bigint>();
  #issues: Promise<void> | null = null;
  #throughput: { stop: boolean; loops: Promise<void>[]; sample: ThroughputSample } | null = null;

  constructor(cfg: ShardConfig) {
    this.#cfg = cfg;
  }

  /** Creates and starts the users (their transports); returns their addresses in index order. */
  async init(): Promise<Address[]> {
    const backend = await loadBackend("auto");
    this.#store = new LevelStore(this.#cfg.storeDir);
    await this.#store.open();
    for (let i = this.#cfg.from; i < this.#cfg.to; i++) this.#users.push(new BenchUser(i, this.#store, this.#cfg.hub, backend, this.#counters));
    await pool(this.#users, 64, (u) => u.start());
    const half = Math.floor(this.#users.length / 2);
    this.#pairs = Array.from({ length: half }, (_, i) => ({ payer: this.#users[i]!, payee: this.#users[half + i]! }));
    return this.#users.map((u) => u.address);
  }

  payers(): Address[] {
    return this.#pairs.map((p) => p.payer.address);
  }

  async adopt(channels: { address: Address; channelId: Hex; funding: Funding }[], domain: ChannelData["config"]["domain"]): Promise<void> {
    const byAddress = new Map(channels.map((c) => [c.address, c]));
    await pool(this.#users, 64, (u) => {
      const c = byAddress.get(u.address);
      if (!c) throw new Error(`no channel for user ${u.address}`);
      return u.adopt(c.channelId, c.funding, domain);
    });
  }

  async connect(hubMultiaddr: string): Promise<void> {
    await pool(this.#users, 16, (u) => u.connect(hubMultiaddr));
  }

  /** Each user ticks once a second, as its daemon would; spread over the second, not all at once. */
  startTicker(): void {
    const SLICES = 50;
    let slice = 0;
    this.#ticker = setInterval(() => {
      for (let i = slice; i < this.#users.length; i += SLICES) void this.#users[i]!.tick().catch(() => undefined);
      slice = (slice + 1) % SLICES;
    }, 1000 / SLICES);
  }

  /** Starts waiting for the hub's issuance to every payer; call before the hub issues. */
  expectIssues(): void {
    this.#issues = Promise.all(this.#pairs.map((p) => p.payer.expectIssue())).then(() => undefined);
  }

  /** Resolves once every issuance {@link expectIssues} waits for has arrived. */
  async issuesArrived(): Promise<void> {
    if (!this.#issues) throw new Error("expectIssues() was not called");
    await this.#issues;
  }

  /** Notes every user's balance: the settle check compares against it. */
  markBalances(): void {
    this.#startBalance = new Map(this.#users.map((u) => [u.address, u.balance().mine]));
  }

  /** One payment at a time from the first payer to its payee; latencies in ms. */
  async latency(n: number): Promise<number[]> {
    const pair = this.#pairs[0];
    if (!pair) throw new Error("this shard has no pair of users");
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(await this.#payOnce(pair));
    return out;
  }

  /** Starts `window` payment loops per pair; each finished payment starts the next. */
  startThroughput(window: number): void {
    const state = { stop: false, loops: [] as Promise<void>[], sample: { doneAt: [] as number[], latencyMs: [] as number[], failed: 0 } };
    for (const pair of this.#pairs) {
      for (let w = 0; w < window; w++) {
        state.loops.push(
          (async () => {
            while (!state.stop) {
              try {
                const ms = await this.#payOnce(pair);
                state.sample.doneAt.push(epochMs());
                state.sample.latencyMs.push(ms);
              } catch {
                state.sample.failed++;
                await sleep(50);
              }
            }
          })(),
        );
      }
    }
    this.#throughput = state;
  }

  /** Stops the loops (each finishes the payment it has in flight) and returns what they did. */
  async stopThroughput(): Promise<ThroughputSample> {
    const state = this.#throughput;
    if (!state) throw new Error("no throughput run is going on");
    state.stop = true;
    const sample = { ...state.sample, doneAt: [...state.sample.doneAt], latencyMs: [...state.sample.latencyMs] };
    await Promise.all(state.loops);
    this.#throughput = null;
    return sample;
  }

  /** Payments started at `rate` per second (round robin over the pairs), whatever is in flight. */
  async openLoop(rate: number, ms: number): Promise<OpenLoopSample> {
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const lat: number[] = [];
    const pending: Promise<void>[] = [];
    let failed = 0;
    let next = 0;
    let issued = 0;
    const start = performance.now();
    while (performance.now() - start < ms) {
      const due = Math.floor(((performance.now() - start) / 1000) * rate);
      for (; issued < due; issued++) {
        pending.push(
          this.#payOnce(this.#pairs[next++ % this.#pairs.length]!).then(
            (t) => void lat.push(t),
            () => void failed++,
          ),
        );
      }
      await sleep(2);
    }
    await Promise.all(pending);
    delay.disable();
    return { latencies: lat, failed, started: issued, eventLoopDelayP99Ms: delay.percentile(99) / 1e6 };
  }

  counters(): UserCounters {
    return structuredClone(this.#counters);
  }

  /**
   * Waits (up to `timeoutMs`) until no user's channel holds a lock or a proposal in flight, then
   * checks each payer's and payee's balance moved by exactly its completed / received payments.
   */
  async settle(timeoutMs: number): Promise<SettleSample> {
    const t0 = performance.now();
    while (this.#users.some((u) => u.balance().pending) && performance.now() - t0 < timeoutMs) await sleep(100);
    let wrong = 0;
    let stillPending = false;
    for (const u of this.#users) {
      const { mine, pending } = u.balance();
      stillPending ||= pending;
      if (pending || mine !== this.#startBalance.get(u.address)! - BigInt(u.sent) + BigInt(u.received)) wrong++;
    }
    return {
      completed: this.#users.reduce((n, u) => n + u.sent, 0),
      received: this.#users.reduce((n, u) => n + u.received, 0),
      wrong,
      stillPending,
    };
  }

  async stop(): Promise<void> {
    if (this.#ticker) clearInterval(this.#ticker);
    this.#ticker = null;
    await pool(this.#users, 64, (u) => u.stop()).catch(() => undefined);
    await this.#store?.close().catch(() => undefined);
    this.#store = null;
  }

  /**
   * One payment of 1 unit; resolves with its latency in ms. With invoices the payee opens one
   * first, as a payee hands an invoice out before it is paid: the latency is measured from the
   * payer's `pay` step, as without one.
   */
  async #payOnce({ payer, payee }: Pair): Promise<number> {
    const secretHash = this.#cfg.invoices ? await payee.invoice(1n) : undefined;
    const t = performance.now();
    await payer.pay(payee.address, 1n, secretHash);
    return performance.now() - t;
  }
}

// ------------------------------------------------------------------ the worker and its client

type Method = {
  [K in keyof UserShard]: UserShard[K] extends (...args: never[]) => unknown ? K : never;
}[keyof UserShard];

interface Request {
  id: number;
  method: Method;
  args: unknown[];
}

type Reply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

/** The main thread's handle on one shard's worker. */
export class ShardClient {
  readonly #worker: Worker;
  readonly #waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  #nextId = 0;
  #failed: Error | null = null;

  constructor(cfg: ShardConfig) {
    this.#worker = new Worker(new URL(import.meta.url), { workerData: cfg });
    this.#worker.on("message", (r: Reply) => {
      const w = this.#waiting.get(r.id);
      if (!w) return;
      this.#waiting.delete(r.id);
      if (r.ok) w.resolve(r.value);
      else w.reject(new Error(`load generator shard: ${r.error}`));
    });
    const fail = (err: Error) => {
      this.#failed = err;
      for (const w of this.#waiting.values()) w.reject(err);
      this.#waiting.clear();
    };
    this.#worker.on("error", (err) => fail(new Error(`load generator shard died: ${err.message}`, { cause: err })));
    this.#worker.on("exit", (code) => fail(new Error(`load generator shard exited (code ${code})`)));
  }

  call<K extends Method>(method: K, ...args: Parameters<UserShard[K]>): Promise<Awaited<ReturnType<UserShard[K]>>> {
    if (this.#failed) return Promise.reject(this.#failed);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ id, method, args } satisfies Request);
    });
  }

  /** Stops the shard's users and ends its thread. */
  async close(): Promise<void> {
    if (!this.#failed) await this.call("stop").catch(() => undefined);
    await this.#worker.terminate();
  }
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  const shard = new UserShard(workerData as ShardConfig);
  port.on("message", (req: Request) => {
    const fn = shard[req.method] as (...a: unknown[]) => unknown;
    Promise.resolve()
      .then(() => fn.apply(shard, req.args))
      .then(
        (value) => port.postMessage({ id: req.id, ok: true, value } satisfies Reply),
        (err: unknown) => port.postMessage({ id: req.id, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies Reply),
      );
  });
}
