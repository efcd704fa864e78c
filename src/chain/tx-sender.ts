/**
 * Sends a node's transactions from one key: local nonce management, gas estimation before
 * signing (so a revert costs nothing), waiting for confirmations, re-broadcasting transactions a
 * node dropped from its mempool and replacing stuck ones with a higher fee.
 *
 * One TxSender per key and process: the nonce is fetched once and then counted locally, so a
 * second sender (or wallet) using the same key concurrently would collide with it.
 */
import {
  Interface,
  JsonRpcApiProvider,
  Transaction,
  isError,
  toQuantity,
  type BaseWallet,
  type TransactionReceipt,
  type TransactionRequest,
} from "ethers";
import { setMaxListeners } from "node:events";
import { ChainError, errorInterface, isNetworkError, shortMessage, toChainError } from "./errors.js";
import type { Address, Hex } from "../protocol/types.js";

export type TxPhase = "sent" | "mined" | "confirmed" | "replaced" | "resent";

export interface TxProgress {
  phase: TxPhase;
  /** The transaction concerned; after "replaced", the replacement. */
  hash: Hex;
  nonce: number;
  /** Blocks including the mining block ("mined" and "confirmed"). */
  confirmations?: number;
  required?: number;
  label?: string;
}

export type ProgressCallback = (event: TxProgress) => void;

export interface TxSenderOptions {
  /** Defaults to the wallet's provider. */
  provider?: JsonRpcApiProvider;
  /** Blocks to wait for, the mining block included; default 1. */
  confirmations?: number;
  /** A transaction not mined this long is checked: re-broadcast if dropped, else replaced; default 30 s. */
  stuckAfterMs?: number;
  /** Fee increase of a replacement, in percent; default 20 (nodes require at least 10). */
  feeBumpPercent?: number;
  /** Replacements at most per transaction; default 5. */
  maxReplacements?: number;
  /** Gives up waiting (code TIMEOUT) after this long; default 10 minutes. */
  timeoutMs?: number;
  /** Receipt polling interval; default the provider's polling interval. */
  pollIntervalMs?: number;
  /** Gas limit = estimate × (100 + margin) / 100; default 20. */
  gasMarginPercent?: number;
  /** Decodes revert data; default: the custom errors of all of Starling's contracts. */
  errors?: Interface;
  onProgress?: ProgressCallback;
}

export interface TxRequest {
  to: Address;
  data: Hex;
  value?: bigint;
  /** Skips estimation; a revert is then only found once mined. */
  gasLimit?: bigint;
  /** Shown in progress events and errors, e.g. "deposit". */
  label?: string;
}

export interface SendOptions {
  confirmations?: number;
  onProgress?: ProgressCallback;
  label?: string;
}

export interface TxResult {
  hash: Hex;
  nonce: number;
  blockNumber: number;
  gasUsed: bigint;
  receipt: TransactionReceipt;
}

interface Fees {
  maxFeePerGas?: bigint;
  maxPriorityFeePerGas?: bigint;
  gasPrice?: bigint;
}

interface Signed {
  hash: Hex;
  raw: Hex;
  fees: Fees;
}

export class TxSender {
  readonly provider: JsonRpcApiProvider;
  readonly address: Address;
  readonly errors: Interface;
  private readonly confirmations: number;
  private readonly stuckAfterMs: number;
  private readonly feeBumpPercent: bigint;
  private readonly maxReplacements: number;
  private readonly timeoutMs: number;
  private readonly pollIntervalMs: number;
  private readonly gasMarginPercent: bigint;
  private readonly onProgress: ProgressCallback | undefined;
  private nonce: number | undefined;
  private chainId: bigint | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly abort = new AbortController();
  private headCache: { at: number; promise: Promise<number> } | undefined;
  private feeCache: { at: number; promise: Promise<Fees> } | undefined;

  constructor(
    private readonly wallet: BaseWallet,
    options: TxSenderOptions = {},
  ) {
    const provider = options.provider ?? wallet.provider;
    if (!(provider instanceof JsonRpcApiProvider)) throw new ChainError("INVALID_ARGUMENT", "TxSender needs a JSON-RPC provider");
    this.provider = provider;
    // Every transaction being waited for listens on this signal while it sleeps, and removes its
    // listener when it wakes: a hub crediting a thousand new channels has more than Node's
    // default of ten at once, which is not a leak.
    setMaxListeners(Infinity, this.abort.signal);
    this.address = wallet.address as Address;
    this.errors = options.errors ?? errorInterface();
    this.confirmations = Math.max(1, options.confirmations ?? 1);
    this.stuckAfterMs = options.stuckAfterMs ?? 30_000;
    this.feeBumpPercent = BigInt(options.feeBumpPercent ?? 20);
    this.maxReplacements = options.maxReplacements ?? 5;
    this.timeoutMs = options.timeoutMs ?? 600_000;
    this.pollIntervalMs = options.pollIntervalMs ?? provider.pollingInterval;
    this.gasMarginPercent = BigInt(options.gasMarginPercent ?? 20);
    this.onProgress = options.onProgress;
  }

  /** The nonce the next transaction will use (fetched from the node's pending state once). */
  async nextNonce(): Promise<number> {
    return this.serialized(() => this.loadNonce());
  }

  /** Forgets the local nonce so the next send refetches it, e.g. after the key was used elsewhere. */
  resync(): Promise<void> {
    return this.serialized(async () => {
      this.nonce = undefined;
    });
  }

  /**
   * Estimates, signs and broadcasts `request`, then waits until it has the required
   * confirmations. Rejects with a ChainError; a revert found by estimation consumes no nonce.
   */
  async send(request: TxRequest, options: SendOptions = {}): Promise<TxResult> {
    const label = options.label ?? request.label;
    const context = label ?? "transaction";
    const progress = (event: TxProgress): void => {
      const withLabel = label === undefined ? event : { ...event, label };
      for (const cb of [options.onProgress, this.onProgress]) {
        if (!cb) continue;
        try {
          cb(withLabel);
        } catch {
          // A display callback must not break sending.
        }
      }
    };
    // Estimation, signing and broadcasting are serialized so nonces are taken in order; waiting
    // for confirmations is not, so concurrent callers' transactions share blocks.
    const { tx, first, nonce } = await this.serialized(() => this.broadcastNew(request, context));
    progress({ phase: "sent", hash: first.hash, nonce });
    return this.waitFor(tx, [first], nonce, Math.max(1, options.confirmations ?? this.confirmations), context, progress);
  }

  /** Rejects every pending wait with code ABORTED and stops polling. */
  stop(): void {
    this.abort.abort();
  }

  // ------------------------------------------------------------ internals

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async loadNonce(): Promise<number> {
    if (this.nonce === undefined) {
      try {
        this.nonce = await this.provider.getTransactionCount(this.address, "pending");
      } catch (err) {
        throw toChainError(err, this.errors, "fetching the nonce");
      }
    }
    return this.nonce;
  }

  private async loadChainId(): Promise<bigint> {
    if (this.chainId === undefined) {
      try {
        this.chainId = (await this.provider.getNetwork()).chainId;
      } catch (err) {
        throw toChainError(err, this.errors, "fetching the chain id");
      }
    }
    return this.chainId;
  }

  private async broadcastNew(
    request: TxRequest,
    context: string,
  ): Promise<{ tx: TransactionRequest; first: Signed; nonce: number }> {
    if (this.abort.signal.aborted) throw new ChainError("ABORTED", `${context}: sender stopped`);
    const [gasLimit, fees, chainId] = await Promise.all([
      request.gasLimit ?? this.estimate(request, context),
      this.currentFees(context),
      this.loadChainId(),
    ]);
    const tx: TransactionRequest = {
      to: request.to,
      data: request.data,
      value: request.value ?? 0n,
      gasLimit,
      chainId,
    };
    let nonce = await this.loadNonce();
    for (let attempt = 0; ; attempt++) {
      const signed = await this.sign(tx, nonce, fees);
      try {
        await this.broadcast(signed.raw);
        this.nonce = nonce + 1;
        return { tx, first: signed, nonce };
      } catch (err) {
        // A stale local nonce (the key was used elsewhere): refetch once and re-sign.
        if (attempt === 0 && isError(err, "NONCE_EXPIRED")) {
          this.nonce = undefined;
          nonce = await this.loadNonce();
          continue;
        }
        // The node may have accepted it before the connection failed: refetch the nonce next time
        // rather than risk reusing or skipping one.
        if (isNetworkError(err)) this.nonce = undefined;
        throw toChainError(err, this.errors, `sending ${context}`);
      }
    }
  }

  private async estimate(request: TxRequest, context: string): Promise<bigint> {
    const call = {
      from: this.address,
      to: request.to,
      data: request.data,
      ...(request.value ? { value: toQuantity(request.value) } : {}),
    };
    try {
      // Against the pending state, so a transaction queued behind this sender's unmined ones
      // (an approve, say) is estimated as it will execute.
      const estimate = BigInt((await this.provider.send("eth_estimateGas", [call, "pending"])) as string);
      return (estimate * (100n + this.gasMarginPercent)) / 100n;
    } catch (err) {
      throw toChainError(err, this.errors, context);
    }
  }

  /** Fee data, shared for a second by concurrent sends (fees move per block, not per call). */
  private currentFees(context: string): Promise<Fees> {
    const now = Date.now();
    if (!this.feeCache || now - this.feeCache.at >= 1_000) {
      const promise = this.fetchFees(context);
      this.feeCache = { at: now, promise };
      promise.catch(() => {
        if (this.feeCache?.promise === promise) this.feeCache = undefined;
      });
    }
    return this.feeCache.promise;
  }

  private async fetchFees(context: string): Promise<Fees> {
    try {
      const data = await this.provider.getFeeData();
      if (data.maxFeePerGas !== null && data.maxPriorityFeePerGas !== null) {
        return { maxFeePerGas: data.maxFeePerGas, maxPriorityFeePerGas: data.maxPriorityFeePerGas };
      }
      if (data.gasPrice !== null) return { gasPrice: data.gasPrice };
      throw new ChainError("NETWORK", `${context}: the node reported no fee data`);
    } catch (err) {
      throw toChainError(err, this.errors, `${context}: fee data`);
    }
  }

  private async sign(tx: TransactionRequest, nonce: number, fees: Fees): Promise<Signed> {
    const full: TransactionRequest =
      fees.gasPrice !== undefined
        ? { ...tx, nonce, type: 0, gasPrice: fees.gasPrice }
        : { ...tx, nonce, type: 2, maxFeePerGas: fees.maxFeePerGas ?? null, maxPriorityFeePerGas: fees.maxPriorityFeePerGas ?? null };
    const raw = (await this.wallet.signTransaction(full)) as Hex;
    const hash = Transaction.from(raw).hash as Hex;
    return { hash, raw, fees };
  }

  /** Broadcasts a signed transaction; a node that already holds it is not an error. */
  private async broadcast(raw: Hex): Promise<void> {
    try {
      await this.provider.send("eth_sendRawTransaction", [raw]);
    } catch (err) {
      if (/already (known|imported)|known transaction/i.test(errorText(err))) return;
      throw err;
    }
  }

  private async waitFor(
    tx: TransactionRequest,
    sent: Signed[],
    nonce: number,
    required: number,
    context: string,
    progress: ProgressCallback,
  ): Promise<TxResult> {
    const started = Date.now();
    let lastAction = started;
    let resentLatest = false;
    let replacements = 0;
    let mined: TransactionReceipt | undefined;
    let reported = 0;
    let lastHead = -1;
    for (;;) {
      if (this.abort.signal.aborted) throw new ChainError("ABORTED", `${context}: sender stopped`, { hash: latest(sent).hash });
      if (Date.now() - started > this.timeoutMs) {
        const what = mined ? `confirmed (${reported}/${required})` : "mined";
        throw new ChainError("TIMEOUT", `${context}: not ${what} within ${this.timeoutMs} ms`, { hash: latest(sent).hash });
      }
      try {
        const head = await this.head();
        if (head !== lastHead) {
          lastHead = head;
          if (!mined) {
            mined = await this.findReceipt(sent);
            if (mined && mined.status !== 1) throw await this.minedRevert(tx, mined, context);
          }
          if (mined) {
            const confirmations = Math.max(1, head - mined.blockNumber + 1);
            if (confirmations > reported) {
              const hash = mined.hash as Hex;
              if (reported === 0 || confirmations < required) {
                progress({ phase: "mined", hash, nonce, confirmations: Math.min(confirmations, required), required });
              }
              reported = confirmations;
              if (confirmations >= required) {
                progress({ phase: "confirmed", hash, nonce, confirmations, required });
                return { hash, nonce, blockNumber: mined.blockNumber, gasUsed: mined.gasUsed, receipt: mined };
              }
            }
          }
        }
        if (!mined && Date.now() - lastAction >= this.stuckAfterMs) {
          lastAction = Date.now();
          const action = await this.unstick(tx, sent, nonce, resentLatest, replacements, context);
          if (action === "resent") {
            resentLatest = true;
            progress({ phase: "resent", hash: latest(sent).hash, nonce });
          } else if (action === "replaced") {
            resentLatest = false;
            replacements++;
            progress({ phase: "replaced", hash: latest(sent).hash, nonce });
          }
        }
      } catch (err) {
        // Node failures while waiting are retried until the timeout; anything else ends the wait.
        const error = toChainError(err, this.errors, context, latest(sent).hash);
        if (error.code !== "NETWORK") throw error;
      }
      await this.sleep(this.pollIntervalMs);
    }
  }

  /** The head block, shared by concurrent waits so they do not each poll the node. */
  private head(): Promise<number> {
    const now = Date.now();
    if (!this.headCache || now - this.headCache.at >= this.pollIntervalMs / 2) {
      const promise = this.provider.getBlockNumber();
      this.headCache = { at: now, promise };
      promise.catch(() => {
        if (this.headCache?.promise === promise) this.headCache = undefined;
      });
    }
    return this.headCache.promise;
  }

  private async findReceipt(sent: Signed[]): Promise<TransactionReceipt | undefined> {
    for (let i = sent.length - 1; i >= 0; i--) {
      const hash = sent[i]?.hash;
      if (!hash) continue;
      const receipt = await this.provider.getTransactionReceipt(hash);
      if (receipt) return receipt;
    }
    return undefined;
  }

  /**
   * A transaction not mined in time: re-broadcast it once if the node no longer holds it,
   * otherwise (still pending, or dropped again) replace it with a higher fee.
   */
  private async unstick(
    tx: TransactionRequest,
    sent: Signed[],
    nonce: number,
    resentLatest: boolean,
    replacements: number,
    context: string,
  ): Promise<"resent" | "replaced" | "none"> {
    const current = latest(sent);
    const onChainNonce = await this.provider.getTransactionCount(this.address, "latest");
    if (onChainNonce > nonce) {
      // The nonce is used: ours was just mined, or something else took it.
      if (await this.findReceipt(sent)) return "none";
      throw new ChainError("REPLACED", `${context}: nonce ${nonce} was used by a transaction this sender did not send`, {
        hash: current.hash,
      });
    }
    const known = (await this.provider.send("eth_getTransactionByHash", [current.hash])) !== null;
    if (!known && !resentLatest) {
      try {
        await this.broadcast(current.raw);
        return "resent";
      } catch (err) {
        if (isError(err, "NONCE_EXPIRED")) return "none"; // mined meanwhile; the next poll finds it
        // Refused (e.g. its fee is now too low): fall through to a replacement.
      }
    }
    if (replacements >= this.maxReplacements) return "none";
    const fees = bump(current.fees, await this.currentFees(context), this.feeBumpPercent);
    const replacement = await this.sign(tx, nonce, fees);
    try {
      await this.broadcast(replacement.raw);
    } catch (err) {
      if (isError(err, "NONCE_EXPIRED")) return "none"; // mined meanwhile; the next poll finds it
      throw toChainError(err, this.errors, `replacing ${context}`, current.hash);
    }
    sent.push(replacement);
    return "replaced";
  }

  /** Replays a failed transaction as a call in its block's parent state to recover the reason. */
  private async minedRevert(tx: TransactionRequest, receipt: TransactionReceipt, context: string): Promise<ChainError> {
    try {
      await this.provider.call({ from: this.address, to: tx.to ?? null, data: tx.data ?? null, value: tx.value ?? 0n, blockTag: receipt.blockNumber - 1 });
    } catch (err) {
      const decoded = toChainError(err, this.errors, context, receipt.hash as Hex);
      if (decoded.code === "REVERTED") return decoded;
    }
    return new ChainError("REVERTED", `${context} reverted on chain (block ${receipt.blockNumber})`, { hash: receipt.hash as Hex });
  }

  private sleep(ms: number): Promise<void> {
    const signal = this.abort.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }
}

function latest(sent: Signed[]): Signed {
  const last = sent[sent.length - 1];
  if (!last) throw new ChainError("UNKNOWN", "no transaction sent");
  return last;
}

/** Raises every fee by `percent`, and to at least what the node currently asks. */
function bump(old: Fees, now: Fees, percent: bigint): Fees {
  const up = (value: bigint | undefined, floor: bigint | undefined): bigint => {
    const raised = ((value ?? 0n) * (100n + percent)) / 100n + 1n;
    return floor !== undefined && floor > raised ? floor : raised;
  };
  if (old.gasPrice !== undefined) return { gasPrice: up(old.gasPrice, now.gasPrice ?? now.maxFeePerGas) };
  const maxPriorityFeePerGas = up(old.maxPriorityFeePerGas, now.maxPriorityFeePerGas);
  const maxFeePerGas = up(old.maxFeePerGas, now.maxFeePerGas);
  return { maxPriorityFeePerGas, maxFeePerGas: maxFeePerGas > maxPriorityFeePerGas ? maxFeePerGas : maxPriorityFeePerGas };
}

function errorText(err: unknown): string {
  const nested = (err as { error?: { message?: unknown } } | null)?.error?.message;
  return `${shortMessage(err)} ${typeof nested === "string" ? nested : ""} ${String(err)}`;
}
