/**
 * The node's operational error: a `code` from the RPC application error table, so the RPC layer
 * maps it without string matching, and the engine's own code in `data.reason` for detail.
 */
import type { AppErrorCode } from "../rpc/errors.js";

/** How engine and protocol error codes surface to integrators. */
const FROM_ENGINE: Record<string, AppErrorCode> = {
  UNKNOWN_CHANNEL: "NOT_FOUND",
  NOT_PARTNER: "BAD_STATE",
  NO_ROUTE: "PAYMENT_FAILED",
  TTL_EXCEEDED: "PAYMENT_FAILED",
  BAD_INPUT: "BAD_STATE",
  INSUFFICIENT_BALANCE: "INSUFFICIENT_BALANCE",
  NOT_OPEN: "CHANNEL_NOT_OPEN",
  CHANNEL_NOT_OPEN: "CHANNEL_NOT_OPEN",
  BUSY: "CONFLICT",
  CONFLICT: "CONFLICT",
  PAYMENT_ID_CONFLICT: "CONFLICT",
  DUPLICATE_SECRET: "CONFLICT",
  WITHDRAW_PENDING: "CONFLICT",
  LOCKS_PENDING: "BAD_STATE",
};

export class NodeError extends Error {
  override readonly name = "NodeError";
  constructor(
    readonly code: AppErrorCode,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
  }

  /** Wraps an engine/protocol rejection `{ code, message }`. */
  static from(error: { code: string; message: string } | null): NodeError {
    if (!error) return new NodeError("BAD_STATE", "the operation was refused");
    return new NodeError(FROM_ENGINE[error.code] ?? "BAD_STATE", error.message, { reason: error.code });
  }
}
