import { WebSocket, type RawData } from "ws";
import { APP_ERRORS, appErrorName, type AppErrorCode } from "./errors.js";
import type { EventMapBase, MethodMapBase } from "./registry.js";
import { SUBSCRIPTION_NOTIFICATION_METHOD, isPlainObject, stringifyWire } from "./wire.js";

export class RpcClientError extends Error {
  override readonly name = "RpcClientError";
  /** Name from the application error table when `code` is one of its codes. */
  readonly appCode: AppErrorCode | undefined;
  constructor(
    readonly code: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
    this.appCode = appErrorName(code);
  }
}

export interface RpcClientOptions {
  /** Default per-call timeout. Default 30 s. */
  timeoutMs?: number;
  /** Connection (and auth) timeout. Default 10 s. */
  connectTimeoutMs?: number;
  /** "header" (default) sends `Authorization: Bearer`; "message" calls the `auth` method after connecting. */
  auth?: "header" | "message";
  /** Receives exceptions thrown by subscription handlers. Default: console.error. */
  onHandlerError?: (err: unknown) => void;
}

export interface CallOptions {
  timeoutMs?: number;
}

/** Params may be omitted when every field is optional. */
type CallArgs<P> = {} extends P ? [params?: P, options?: CallOptions] : [params: P, options?: CallOptions];

export type EventFilter<P> = P extends object ? { [K in keyof P]?: P[K] } : never;

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: RpcClientError) => void;
  timer: NodeJS.Timeout;
  /** Runs synchronously on arrival, before any later message in the same chunk is handled. */
  onResult?: (result: unknown) => void;
}

function connectionClosed(detail: string): RpcClientError {
  return new RpcClientError(APP_ERRORS.CONNECTION_CLOSED.code, `Connection closed: ${detail}`);
}

function rawToString(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}

/**
 * Typed JSON-RPC client. `M` maps method names to wire params/result (see `MethodMapOf`),
 * `E` maps event names to wire payloads. Amounts arrive as decimal strings; bigints passed
 * in params are sent as decimal strings.
 */
export class RpcClient<M extends MethodMapBase, E extends EventMapBase = EventMapBase> {
  /** Resolves with the close code and reason once the connection is gone. */
  readonly closed: Promise<{ code: number; reason: string }>;

  private readonly pending = new Map<number, Pending>();
  private readonly handlers = new Map<string, (payload: unknown) => void>();
  private readonly timeoutMs: number;
  private readonly onHandlerError: (err: unknown) => void;
  private nextId = 1;
  private closeReason: string | undefined;

  private constructor(
    private readonly ws: WebSocket,
    options: RpcClientOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.onHandlerError = options.onHandlerError ?? ((err) => console.error("rpc client: subscription handler threw", err));
    ws.on("message", (data) => this.onMessage(rawToString(data)));
    ws.on("error", () => undefined);
    this.closed = new Promise((resolve) => {
      ws.once("close", (code, reason) => {
        const text = reason.toString("utf8");
        this.closeReason = `${code}${text === "" ? "" : ` ${text}`}`;
        for (const [id, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(connectionClosed(this.closeReason));
          this.pending.delete(id);
        }
        this.handlers.clear();
        resolve({ code, reason: text });
      });
    });
  }

  static async connect<M extends MethodMapBase, E extends EventMapBase = EventMapBase>(
    url: string,
    token: string,
    options: RpcClientOptions = {},
  ): Promise<RpcClient<M, E>> {
    const mode = options.auth ?? "header";
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const ws = new WebSocket(url, {
      headers: mode === "header" ? { Authorization: `Bearer ${token}` } : {},
      handshakeTimeout: connectTimeoutMs,
    });
    await new Promise<void>((resolve, reject) => {
      let status: number | undefined;
      ws.once("unexpected-response", (_req, res) => {
        status = res.statusCode;
        res.resume();
        ws.terminate();
      });
      ws.once("open", () => {
        ws.removeAllListeners("error");
        resolve();
      });
      ws.on("error", (err) => {
        if (status === 401) reject(new RpcClientError(APP_ERRORS.UNAUTHORIZED.code, "Unauthorized (HTTP 401)"));
        else if (status !== undefined) reject(connectionClosed(`HTTP ${status}`));
        else reject(connectionClosed(err.message));
      });
    });
    const client = new RpcClient<M, E>(ws, options);
    if (mode === "message") {
      try {
        await client.request("auth", { token }, connectTimeoutMs);
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  call<K extends keyof M & string>(method: K, ...args: CallArgs<M[K]["params"]>): Promise<M[K]["result"]> {
    const [params, options] = args;
    return this.request(method, params, options?.timeoutMs ?? this.timeoutMs) as Promise<M[K]["result"]>;
  }

  /** Fire-and-forget: the server sends no response, so errors are not reported. */
  notify<K extends keyof M & string>(method: K, params?: M[K]["params"]): void {
    if (this.ws.readyState !== WebSocket.OPEN) throw connectionClosed(this.closeReason ?? "not open");
    this.ws.send(stringifyWire(params === undefined ? { jsonrpc: "2.0", method } : { jsonrpc: "2.0", method, params }));
  }

  /**
   * Subscribes to `event`; `handler` gets each matching payload in wire form. Resolves with
   * a function that cancels the subscription (resolving false if it was already gone).
   */
  async subscribe<K extends keyof E & string>(
    event: K,
    filter: EventFilter<E[K]> | undefined,
    handler: (payload: E[K]) => void,
  ): Promise<() => Promise<boolean>> {
    const params = filter === undefined ? { event } : { event, filter };
    // The handler is installed as the response is read: notifications can follow in the
    // same chunk, before an awaiting continuation would run.
    const id = await this.request("subscribe", params, this.timeoutMs, (result) => {
      if (typeof result === "string") this.handlers.set(result, handler as (payload: unknown) => void);
    });
    if (typeof id !== "string") throw new RpcClientError(-32603, "subscribe returned a non-string id");
    return async () => {
      if (!this.handlers.delete(id)) return false;
      if (this.ws.readyState !== WebSocket.OPEN) return false;
      return (await this.request("unsubscribe", { subscription: id }, this.timeoutMs)) === true;
    };
  }

  /** Closes the connection; pending calls reject with CONNECTION_CLOSED. */
  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    // A peer that never answers the close frame must not keep the process alive.
    const timer = setTimeout(() => this.ws.terminate(), 2000);
    timer.unref();
    this.ws.close(1000, "client closing");
    await this.closed;
    clearTimeout(timer);
  }

  private request(
    method: string,
    params: unknown,
    timeoutMs: number,
    onResult?: (result: unknown) => void,
  ): Promise<unknown> {
    if (this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(connectionClosed(this.closeReason ?? "not open"));
    }
    const id = this.nextId++;
    const body = params === undefined ? { jsonrpc: "2.0", method, id } : { jsonrpc: "2.0", method, params, id };
    let text: string;
    try {
      text = stringifyWire(body);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new RpcClientError(APP_ERRORS.TIMEOUT.code, `${method}: no response within ${timeoutMs} ms`, {
            clientTimeout: true,
          }),
        );
      }, timeoutMs);
      this.pending.set(id, onResult === undefined ? { resolve, reject, timer } : { resolve, reject, timer, onResult });
      this.ws.send(text);
    });
  }

  private onMessage(text: string): void {
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const messages: unknown[] = Array.isArray(message) ? message : [message];
    for (const m of messages) {
      if (!isPlainObject(m)) continue;
      if (m.method === SUBSCRIPTION_NOTIFICATION_METHOD && isPlainObject(m.params)) {
        this.onNotification(m.params);
        continue;
      }
      if (typeof m.id !== "number") continue;
      const p = this.pending.get(m.id);
      if (p === undefined) continue;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (isPlainObject(m.error)) {
        const code = typeof m.error.code === "number" ? m.error.code : -32603;
        const msg = typeof m.error.message === "string" ? m.error.message : "Unknown error";
        p.reject(new RpcClientError(code, msg, m.error.data));
      } else {
        p.onResult?.(m.result);
        p.resolve(m.result);
      }
    }
  }

  private onNotification(params: Record<string, unknown>): void {
    if (typeof params.subscription !== "string") return;
    const handler = this.handlers.get(params.subscription);
    if (handler === undefined) return;
    try {
      handler(params.result);
    } catch (err) {
      this.onHandlerError(err);
    }
  }
}
