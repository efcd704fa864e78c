/**
 * Chain failures as one error class with a machine-readable code, and revert data decoded into
 * the contracts' custom error names.
 */
import { ErrorFragment, Interface, isError, type InterfaceAbi } from "ethers";
import { artifact, type ContractName } from "./artifacts.js";
import type { Hex } from "../protocol/types.js";

export type ChainErrorCode =
  /** The call reverts (found by estimation or eth_call, or the mined transaction failed). */
  | "REVERTED"
  /** The transaction was not mined (or not confirmed) in time. */
  | "TIMEOUT"
  /** The node could not be reached or answered garbage. */
  | "NETWORK"
  /** The sender cannot pay for gas. */
  | "INSUFFICIENT_FUNDS"
  /** Another transaction, not sent by this sender, took the nonce. */
  | "REPLACED"
  /** The node refused the nonce or the fee even after a resync. */
  | "NONCE"
  /** The sender was stopped while the transaction was pending. */
  | "ABORTED"
  /** A malformed argument or an unexpected answer from a contract. */
  | "INVALID_ARGUMENT"
  | "UNKNOWN";

export interface ChainErrorDetails {
  errorName?: string;
  args?: readonly unknown[];
  data?: Hex;
  hash?: Hex;
  cause?: unknown;
}

export class ChainError extends Error {
  readonly code: ChainErrorCode;
  /** The custom error (or "Error"/"Panic" for Solidity's built-ins) a revert carried. */
  readonly errorName?: string;
  readonly args?: readonly unknown[];
  /** Raw revert data, when the node returned any. */
  readonly data?: Hex;
  /** The transaction concerned, once one was broadcast. */
  readonly hash?: Hex;

  constructor(code: ChainErrorCode, message: string, details: ChainErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "ChainError";
    this.code = code;
    if (details.errorName !== undefined) this.errorName = details.errorName;
    if (details.args !== undefined) this.args = details.args;
    if (details.data !== undefined) this.data = details.data;
    if (details.hash !== undefined) this.hash = details.hash;
  }
}

/**
 * One Interface holding the custom errors of all of Starling's contracts, because a revert can
 * bubble up from a callee (the token's ERC20InsufficientAllowance surfaces from a deposit).
 */
export function errorInterface(abis: InterfaceAbi[] = defaultAbis()): Interface {
  const seen = new Set<string>();
  const fragments: ErrorFragment[] = [];
  for (const abi of abis) {
    for (const fragment of new Interface(abi).fragments) {
      if (!ErrorFragment.isFragment(fragment) || seen.has(fragment.selector)) continue;
      seen.add(fragment.selector);
      fragments.push(fragment);
    }
  }
  return new Interface(fragments);
}

function defaultAbis(): InterfaceAbi[] {
  const names: ContractName[] = ["StarlingChannels", "SecretRegistry", "StarlingToken"];
  return names.map((n) => artifact(n).abi);
}

const HEX = /^0x[0-9a-fA-F]*$/;

/** Finds revert data in whatever shape ethers or the node wrapped it. */
export function revertData(error: unknown): Hex | undefined {
  const seen = new Set<unknown>();
  const visit = (value: unknown, depth: number): Hex | undefined => {
    if (depth > 5 || value === null || typeof value !== "object" || seen.has(value)) return undefined;
    seen.add(value);
    const record = value as Record<string, unknown>;
    const data = record["data"];
    if (typeof data === "string" && HEX.test(data) && data.length >= 10) return data as Hex;
    for (const key of ["error", "info", "cause", "data"]) {
      const found = visit(record[key], depth + 1);
      if (found) return found;
    }
    return undefined;
  };
  return visit(error, 0);
}

/** Decodes revert data into an error name and arguments; undefined if no known error matches. */
export function decodeRevert(iface: Interface, data: Hex): { errorName: string; args: unknown[] } | undefined {
  try {
    const parsed = iface.parseError(data);
    if (!parsed) return undefined;
    return { errorName: parsed.name, args: [...parsed.args.toArray()] };
  } catch {
    return undefined;
  }
}

/** Whether an error means the node could not be reached or did not answer properly. */
export function isNetworkError(error: unknown): boolean {
  if (isError(error, "NETWORK_ERROR") || isError(error, "SERVER_ERROR") || isError(error, "TIMEOUT")) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|ENOTFOUND|UND_ERR)/.test(code);
}

/**
 * Converts an error from estimateGas/eth_call/sending into a ChainError: reverts are decoded
 * with `iface`, other failures mapped to a code.
 */
export function toChainError(error: unknown, iface: Interface, context: string, hash?: Hex): ChainError {
  if (error instanceof ChainError) return error;
  const base = { cause: error, ...(hash ? { hash } : {}) };
  if (isError(error, "CALL_EXCEPTION")) {
    const data = revertData(error);
    const decoded = data ? decodeRevert(iface, data) : undefined;
    if (decoded) {
      return new ChainError("REVERTED", `${context} reverted: ${decoded.errorName}(${formatArgs(decoded.args)})`, {
        ...base,
        ...decoded,
        ...(data ? { data } : {}),
      });
    }
    return new ChainError("REVERTED", `${context} reverted${data && data !== "0x" ? ` with unknown data ${data.slice(0, 74)}` : ""}`, {
      ...base,
      ...(data ? { data } : {}),
    });
  }
  if (isError(error, "INSUFFICIENT_FUNDS")) return new ChainError("INSUFFICIENT_FUNDS", `${context}: insufficient funds for gas`, base);
  if (isError(error, "NONCE_EXPIRED") || isError(error, "REPLACEMENT_UNDERPRICED")) {
    return new ChainError("NONCE", `${context}: ${shortMessage(error)}`, base);
  }
  if (isNetworkError(error)) return new ChainError("NETWORK", `${context}: ${shortMessage(error)}`, base);
  return new ChainError("UNKNOWN", `${context}: ${shortMessage(error)}`, base);
}

export function shortMessage(error: unknown): string {
  const e = error as { shortMessage?: unknown; message?: unknown } | null;
  if (typeof e?.shortMessage === "string") return e.shortMessage;
  if (typeof e?.message === "string") return e.message.slice(0, 300);
  return String(error).slice(0, 300);
}

function formatArgs(args: readonly unknown[]): string {
  return args.map((a) => (typeof a === "bigint" ? a.toString() : String(a))).join(", ");
}
