/** JSON-RPC 2.0 reserved error codes. */
export const STANDARD_ERRORS = {
  PARSE_ERROR: { code: -32700, message: "Parse error", description: "The message is not valid JSON." },
  INVALID_REQUEST: {
    code: -32600,
    message: "Invalid Request",
    description: "Not a JSON-RPC 2.0 request object, an empty batch, or a batch above the length limit.",
  },
  METHOD_NOT_FOUND: { code: -32601, message: "Method not found", description: "No method with that name." },
  INVALID_PARAMS: {
    code: -32602,
    message: "Invalid params",
    description: "Params failed validation; `data.issues` lists `{ path, message }` for each problem.",
  },
  INTERNAL_ERROR: {
    code: -32603,
    message: "Internal error",
    description: "Unexpected failure inside the node; details are logged server-side, never returned.",
  },
} as const;

export type StandardErrorName = keyof typeof STANDARD_ERRORS;

/**
 * The single source of application error codes (-32000..-32099). Handlers throw
 * `RpcAppError(name, ...)` or any error whose `code` is one of these names; the
 * wire carries the number. Docs are generated from this table.
 */
export const APP_ERRORS = {
  UNAUTHORIZED: { code: -32001, description: "Missing or wrong auth token; authenticate before calling." },
  NOT_FOUND: { code: -32004, description: "The referenced channel, payment or other object does not exist." },
  BAD_STATE: { code: -32008, description: "The object exists but is in a state that does not allow this operation." },
  CONFLICT: { code: -32009, description: "Conflicts with a concurrent or earlier operation (duplicate id, stale nonce)." },
  INSUFFICIENT_BALANCE: { code: -32010, description: "Not enough balance (on-chain or in the channel) for the amount." },
  CHANNEL_NOT_OPEN: { code: -32011, description: "The channel is not open (still opening, closing or closed)." },
  PEER_UNREACHABLE: { code: -32012, description: "The counterparty could not be reached." },
  PAYMENT_FAILED: { code: -32013, description: "The payment could not be completed; `data` carries the reason." },
  CHAIN_ERROR: { code: -32020, description: "The chain RPC failed or the transaction reverted." },
  TOO_MANY_REQUESTS: {
    code: -32029,
    description: "Per-connection in-flight request or subscription limit reached; retry after responses arrive.",
  },
  TIMEOUT: { code: -32030, description: "The operation (or, client-side, the wait for the response) timed out." },
  CONNECTION_CLOSED: {
    code: -32090,
    description: "Client-side only: the connection closed or failed before a response arrived.",
  },
} as const satisfies Record<string, { code: number; description: string }>;

export type AppErrorCode = keyof typeof APP_ERRORS;

const APP_ERROR_BY_NUMBER: ReadonlyMap<number, AppErrorCode> = new Map(
  (Object.keys(APP_ERRORS) as AppErrorCode[]).map((name) => [APP_ERRORS[name].code, name]),
);

export function isAppErrorCode(value: unknown): value is AppErrorCode {
  return typeof value === "string" && Object.hasOwn(APP_ERRORS, value);
}

/** Reverse lookup so clients can branch on names rather than numbers. */
export function appErrorName(code: number): AppErrorCode | undefined {
  return APP_ERROR_BY_NUMBER.get(code);
}

/** Application error with a stable, documented code. `data` must be JSON-serializable (bigints allowed). */
export class RpcAppError extends Error {
  override readonly name = "RpcAppError";
  constructor(
    readonly code: AppErrorCode,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
  }

  get numericCode(): number {
    return APP_ERRORS[this.code].code;
  }
}

export interface RpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/** Protocol-level failure raised by the server itself (bad params, unknown method, ...). */
export class RpcProtocolError extends Error {
  override readonly name = "RpcProtocolError";
  constructor(
    readonly kind: StandardErrorName,
    message: string = STANDARD_ERRORS[kind].message,
    readonly data?: unknown,
  ) {
    super(message);
  }
}

export interface ZodLikeIssue {
  path: readonly PropertyKey[];
  message: string;
}

export interface WireIssue {
  path: (string | number)[];
  message: string;
}

export function wireIssues(issues: readonly ZodLikeIssue[], prefix: (string | number)[] = []): WireIssue[] {
  return issues.map((issue) => ({
    path: [...prefix, ...issue.path.map((p) => (typeof p === "number" ? p : String(p)))],
    message: issue.message,
  }));
}

export function invalidParams(issues: WireIssue[]): RpcProtocolError {
  return new RpcProtocolError("INVALID_PARAMS", STANDARD_ERRORS.INVALID_PARAMS.message, { issues });
}

/**
 * Maps anything a handler throws to a wire error. Returns `internal: true` when the
 * error was unexpected so the caller can log it; its message is never sent.
 */
export function toErrorObject(err: unknown): { error: RpcErrorObject; internal: boolean } {
  if (err instanceof RpcProtocolError) {
    const error: RpcErrorObject = { code: STANDARD_ERRORS[err.kind].code, message: err.message };
    if (err.data !== undefined) error.data = err.data;
    return { error, internal: false };
  }
  if (typeof err === "object" && err !== null) {
    const code: unknown = (err as { code?: unknown }).code;
    const message: unknown = (err as { message?: unknown }).message;
    if (isAppErrorCode(code)) {
      const error: RpcErrorObject = {
        code: APP_ERRORS[code].code,
        message: typeof message === "string" && message !== "" ? message : code,
      };
      const data: unknown = (err as { data?: unknown }).data;
      if (data !== undefined) error.data = data;
      return { error, internal: false };
    }
  }
  return {
    error: { code: STANDARD_ERRORS.INTERNAL_ERROR.code, message: STANDARD_ERRORS.INTERNAL_ERROR.message },
    internal: true,
  };
}
