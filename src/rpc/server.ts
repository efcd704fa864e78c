import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { z } from "zod";
import {
  RpcAppError,
  RpcProtocolError,
  STANDARD_ERRORS,
  invalidParams,
  toErrorObject,
  wireIssues,
  type RpcErrorObject,
} from "./errors.js";
import type { AnyEventDefinition, RpcContext, RpcRegistry } from "./registry.js";
import { authParamsSchema, subscribeParamsSchema, unsubscribeParamsSchema } from "./schemas.js";
import { isPlainObject, stringifyWire, type JsonRpcId } from "./wire.js";

export interface RpcServerOptions {
  registry: RpcRegistry;
  /** Shared secret clients present as a Bearer header or via the `auth` method. */
  token: string;
  /** Defaults to 127.0.0.1 so the node is not exposed unless asked. */
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Larger messages close the connection with 1009. Default 1 MiB. */
  maxMessageBytes?: number;
  /** Default 100. */
  maxBatchLength?: number;
  /** Requests being handled per connection; beyond it requests fail with TOO_MANY_REQUESTS. Default 1000. */
  maxInFlight?: number;
  /** Default 1000. */
  maxSubscriptionsPerConnection?: number;
  /** A client that stops reading is disconnected once this much output is queued. Default 16 MiB. */
  maxBufferedBytes?: number;
  /** Connections that have not authenticated by then are closed with 1008. Default 10 s. */
  authTimeoutMs?: number;
  /** Receives unexpected handler errors (their details never reach the client). Default: console.error. */
  onInternalError?: (err: unknown, info: { method: string; connectionId: string }) => void;
}

interface Subscription {
  readonly id: string;
  readonly event: string;
  readonly filter: Record<string, unknown> | undefined;
  readonly conn: Connection;
  /** Holds notifications until the subscribe response is on the wire, so ids are never seen early. */
  pending: string[] | null;
}

interface Connection {
  readonly id: string;
  readonly ws: WebSocket;
  readonly remoteAddress: string | undefined;
  readonly abort: AbortController;
  readonly subs: Map<string, Subscription>;
  authenticated: boolean;
  inFlight: number;
  authTimer: NodeJS.Timeout | undefined;
}

type AfterSend = (() => void)[];

const MiB = 1024 * 1024;
const MAX_PENDING_PER_SUBSCRIPTION = 1000;

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

function errorResponse(id: JsonRpcId, error: RpcErrorObject): string {
  return stringifyWire({ jsonrpc: "2.0", id, error });
}

function standardError(id: JsonRpcId, kind: keyof typeof STANDARD_ERRORS, message?: string): string {
  return errorResponse(id, { code: STANDARD_ERRORS[kind].code, message: message ?? STANDARD_ERRORS[kind].message });
}

function rawToString(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}

function isHex(s: string): boolean {
  return /^0x[0-9a-fA-F]*$/.test(s);
}

function filterValueMatches(want: unknown, have: unknown): boolean {
  // Hex is case-insensitive so checksummed and lowercase addresses match.
  if (typeof want === "string" && typeof have === "string" && isHex(want) && isHex(have)) {
    return want.toLowerCase() === have.toLowerCase();
  }
  return want === have;
}

function matchesFilter(filter: Record<string, unknown> | undefined, payload: unknown): boolean {
  if (filter === undefined) return true;
  if (!isPlainObject(payload)) return Object.keys(filter).length === 0;
  for (const [key, want] of Object.entries(filter)) {
    if (!filterValueMatches(want, payload[key])) return false;
  }
  return true;
}

/** Maps by-position params onto the schema's keys in declaration order. */
function namedParams(params: unknown, names: readonly string[]): Record<string, unknown> {
  if (params === undefined) return {};
  if (!Array.isArray(params)) return params as Record<string, unknown>;
  if (params.length > names.length) {
    throw invalidParams([{ path: [], message: `expected at most ${names.length} positional params, got ${params.length}` }]);
  }
  const out: Record<string, unknown> = {};
  params.forEach((value, i) => {
    // Trailing undefined is impossible in JSON, but null is kept so the schema can judge it.
    out[names[i] as string] = value;
  });
  return out;
}

function parseWith<S extends z.ZodType>(schema: S, params: unknown, names: readonly string[]): z.output<S> {
  const result = schema.safeParse(namedParams(params, names));
  if (!result.success) throw invalidParams(wireIssues(result.error.issues));
  return result.data;
}

export class RpcServer {
  private readonly registry: RpcRegistry;
  private readonly tokenDigest: Buffer;
  private readonly host: string;
  private readonly requestedPort: number;
  private readonly maxMessageBytes: number;
  private readonly maxBatchLength: number;
  private readonly maxInFlight: number;
  private readonly maxSubscriptions: number;
  private readonly maxBufferedBytes: number;
  private readonly authTimeoutMs: number;
  private readonly onInternalError: (err: unknown, info: { method: string; connectionId: string }) => void;

  private readonly http: HttpServer;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<Socket>();
  private readonly connections = new Map<string, Connection>();
  private readonly subsByEvent = new Map<string, Set<Subscription>>();
  private listening = false;
  private closing: Promise<void> | undefined;
  private nextConnectionId = 1;

  constructor(options: RpcServerOptions) {
    if (options.token === "") throw new Error("RPC token must not be empty");
    this.registry = options.registry;
    this.tokenDigest = digest(options.token);
    this.host = options.host ?? "127.0.0.1";
    this.requestedPort = options.port ?? 0;
    this.maxMessageBytes = options.maxMessageBytes ?? MiB;
    this.maxBatchLength = options.maxBatchLength ?? 100;
    this.maxInFlight = options.maxInFlight ?? 1000;
    this.maxSubscriptions = options.maxSubscriptionsPerConnection ?? 1000;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 16 * MiB;
    this.authTimeoutMs = options.authTimeoutMs ?? 10_000;
    this.onInternalError =
      options.onInternalError ??
      ((err, info) => console.error(`rpc: internal error in ${info.method} (connection ${info.connectionId})`, err));

    this.http = createServer((_req, res) => {
      res.writeHead(426, { "Content-Type": "text/plain", Connection: "close" });
      res.end("WebSocket upgrade required\n");
    });
    this.http.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
    this.http.on("upgrade", (req, socket, head) => this.onUpgrade(req, socket, head));
    this.wss = new WebSocketServer({ noServer: true, maxPayload: this.maxMessageBytes, perMessageDeflate: false });
  }

  /** Creates a server and waits until it is listening. */
  static async start(options: RpcServerOptions): Promise<RpcServer> {
    const server = new RpcServer(options);
    await server.listen();
    return server;
  }

  async listen(): Promise<void> {
    if (this.listening) return;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.http.once("error", onError);
      this.http.listen(this.requestedPort, this.host, () => {
        this.http.off("error", onError);
        resolve();
      });
    });
    this.listening = true;
  }

  get port(): number {
    const addr = this.http.address();
    if (addr === null || typeof addr === "string") throw new Error("server is not listening");
    return (addr as AddressInfo).port;
  }

  get url(): string {
    const host = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `ws://${host}:${this.port}/`;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get subscriptionCount(): number {
    let n = 0;
    for (const set of this.subsByEvent.values()) n += set.size;
    return n;
  }

  /**
   * Sends `payload` to every subscription on `event` whose filter matches. The payload is
   * checked (in wire form) against the event's schema; a mismatch throws because it is a
   * bug in the publisher. Returns the number of subscriptions notified.
   */
  publish(event: string, payload: unknown): number {
    const def = this.registry.getEvent(event);
    if (def === undefined) throw new Error(`unknown event "${event}"`);
    // Nobody listening: skip the encoding and the schema check (a busy hub publishes on every update).
    if ((this.subsByEvent.get(event)?.size ?? 0) === 0) return 0;
    const wireJson = stringifyWire(payload);
    const parsed = def.payload.safeParse(JSON.parse(wireJson));
    if (!parsed.success) {
      throw new Error(`payload for event "${event}" does not match its schema: ${z.prettifyError(parsed.error)}`);
    }
    const subs = this.subsByEvent.get(event);
    if (subs === undefined) return 0;
    const eventJson = JSON.stringify(event);
    let delivered = 0;
    for (const sub of subs) {
      if (!matchesFilter(sub.filter, parsed.data)) continue;
      const message =
        `{"jsonrpc":"2.0","method":"subscription","params":{"subscription":${JSON.stringify(sub.id)},` +
        `"event":${eventJson},"result":${wireJson}}}`;
      if (sub.pending !== null) {
        if (sub.pending.length < MAX_PENDING_PER_SUBSCRIPTION) sub.pending.push(message);
      } else {
        this.send(sub.conn, message);
      }
      delivered++;
    }
    return delivered;
  }

  /** Terminates every client and resolves once the listening socket is closed. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      // Stop accepting first so no socket slips in after the sweep below.
      const httpClosed = this.listening
        ? new Promise<void>((resolve, reject) => this.http.close((err) => (err ? reject(err) : resolve())))
        : Promise.resolve();
      for (const conn of this.connections.values()) conn.ws.terminate();
      for (const socket of this.sockets) socket.destroy();
      await new Promise<void>((resolve) => this.wss.close(() => resolve()));
      await httpClosed;
    })();
    return this.closing;
  }

  private reportInternal(err: unknown, info: { method: string; connectionId: string }): void {
    try {
      this.onInternalError(err, info);
    } catch {
      // A failing logger must not take the connection down with it.
    }
  }

  private checkToken(token: string): boolean {
    // Hashing first gives equal-length inputs, so timingSafeEqual never leaks the length.
    return timingSafeEqual(digest(token), this.tokenDigest);
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const header = req.headers.authorization;
    let authenticated = false;
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
      if (match === null || !this.checkToken(match[1] as string)) {
        socket.on("error", () => socket.destroy());
        socket.end(
          "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        return;
      }
      authenticated = true;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, req, authenticated));
  }

  private onConnection(ws: WebSocket, req: IncomingMessage, authenticated: boolean): void {
    if (this.closing !== undefined) {
      ws.terminate();
      return;
    }
    const conn: Connection = {
      id: String(this.nextConnectionId++),
      ws,
      remoteAddress: req.socket.remoteAddress,
      abort: new AbortController(),
      subs: new Map(),
      authenticated,
      inFlight: 0,
      authTimer: undefined,
    };
    this.connections.set(conn.id, conn);
    if (!authenticated) {
      conn.authTimer = setTimeout(() => ws.close(1008, "authentication timeout"), this.authTimeoutMs);
    }
    // ws reports oversized frames here before closing with 1009; nothing else to do.
    ws.on("error", () => undefined);
    ws.on("close", () => this.onClose(conn));
    ws.on("message", (data) => {
      this.onMessage(conn, rawToString(data)).catch((err: unknown) =>
        this.reportInternal(err, { method: "(message)", connectionId: conn.id }),
      );
    });
  }

  private onClose(conn: Connection): void {
    if (conn.authTimer !== undefined) clearTimeout(conn.authTimer);
    for (const sub of conn.subs.values()) this.removeSubscription(sub);
    conn.abort.abort();
    this.connections.delete(conn.id);
  }

  private send(conn: Connection, text: string): void {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    if (conn.ws.bufferedAmount > this.maxBufferedBytes) {
      // A client that stops reading must not make the node buffer without bound.
      conn.ws.terminate();
      return;
    }
    conn.ws.send(text);
  }

  private async onMessage(conn: Connection, text: string): Promise<void> {
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch {
      this.send(conn, standardError(null, "PARSE_ERROR"));
      return;
    }
    const afterSend: AfterSend = [];
    if (Array.isArray(message)) {
      if (message.length === 0) {
        this.send(conn, standardError(null, "INVALID_REQUEST", "Invalid Request: empty batch"));
        return;
      }
      if (message.length > this.maxBatchLength) {
        this.send(
          conn,
          standardError(null, "INVALID_REQUEST", `Invalid Request: batch exceeds ${this.maxBatchLength} entries`),
        );
        return;
      }
      // Each entry is dispatched synchronously up to its handler, so an `auth` early in
      // the batch takes effect for the entries after it.
      const responses = await Promise.all(message.map((entry) => this.handleRequest(conn, entry, afterSend)));
      const present = responses.filter((r): r is string => r !== null);
      if (present.length > 0) this.send(conn, `[${present.join(",")}]`);
    } else {
      const response = await this.handleRequest(conn, message, afterSend);
      if (response !== null) this.send(conn, response);
    }
    for (const fn of afterSend) fn();
  }

  /** Returns the serialized response, or null for notifications. */
  private async handleRequest(conn: Connection, request: unknown, afterSend: AfterSend): Promise<string | null> {
    if (!isPlainObject(request)) return standardError(null, "INVALID_REQUEST");
    const hasId = Object.hasOwn(request, "id");
    const rawId = request.id;
    const idValid = !hasId || rawId === null || typeof rawId === "string" || typeof rawId === "number";
    const id: JsonRpcId = hasId && idValid ? (rawId as JsonRpcId) : null;
    const params = request.params;
    if (
      request.jsonrpc !== "2.0" ||
      typeof request.method !== "string" ||
      !idValid ||
      (params !== undefined && typeof params !== "object") ||
      params === null
    ) {
      return standardError(id, "INVALID_REQUEST");
    }
    const method = request.method;
    const isNotification = !hasId;

    if (conn.inFlight >= this.maxInFlight) {
      if (isNotification) return null;
      return errorResponse(id, toErrorObject(new RpcAppError("TOO_MANY_REQUESTS", "Too many requests in flight")).error);
    }
    conn.inFlight++;
    try {
      const result = await this.invoke(conn, method, params, afterSend);
      return isNotification ? null : `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${stringifyWire(result)}}`;
    } catch (err) {
      const { error, internal } = toErrorObject(err);
      if (internal) this.reportInternal(err, { method, connectionId: conn.id });
      if (isNotification) return null;
      try {
        return errorResponse(id, error);
      } catch (serializeErr) {
        // Error data that cannot be serialized is a server bug, reported like any other.
        this.reportInternal(serializeErr, { method, connectionId: conn.id });
        return standardError(id, "INTERNAL_ERROR");
      }
    } finally {
      conn.inFlight--;
    }
  }

  // Must not await before the auth state is read or set; see the batch note in onMessage.
  private async invoke(conn: Connection, method: string, params: unknown, afterSend: AfterSend): Promise<unknown> {
    if (method === "auth") {
      const { token } = parseWith(authParamsSchema, params, ["token"]);
      if (!this.checkToken(token)) {
        // One guess per connection makes online guessing expensive.
        afterSend.push(() => conn.ws.close(1008, "authentication failed"));
        throw new RpcAppError("UNAUTHORIZED", "Invalid token");
      }
      conn.authenticated = true;
      if (conn.authTimer !== undefined) clearTimeout(conn.authTimer);
      conn.authTimer = undefined;
      return true;
    }
    if (!conn.authenticated) throw new RpcAppError("UNAUTHORIZED", "Authenticate first");
    if (method === "subscribe") return this.subscribe(conn, params, afterSend);
    if (method === "unsubscribe") {
      const { subscription } = parseWith(unsubscribeParamsSchema, params, ["subscription"]);
      const sub = conn.subs.get(subscription);
      if (sub === undefined) return false;
      this.removeSubscription(sub);
      return true;
    }
    const def = this.registry.getMethod(method);
    if (def === undefined) throw new RpcProtocolError("METHOD_NOT_FOUND", `Method not found: ${method}`);
    const parsed = parseWith(def.paramsValidator, params, def.paramNames);
    const ctx: RpcContext = { connectionId: conn.id, remoteAddress: conn.remoteAddress, signal: conn.abort.signal };
    return await def.handler(parsed, ctx);
  }

  private subscribe(conn: Connection, params: unknown, afterSend: AfterSend): string {
    const { event, filter } = parseWith(subscribeParamsSchema, params, ["event", "filter"]);
    const def = this.registry.getEvent(event);
    if (def === undefined) throw invalidParams([{ path: ["event"], message: `unknown event "${event}"` }]);
    const parsedFilter = this.parseFilter(def, filter);
    if (conn.subs.size >= this.maxSubscriptions) {
      throw new RpcAppError("TOO_MANY_REQUESTS", `At most ${this.maxSubscriptions} subscriptions per connection`);
    }
    const sub: Subscription = { id: randomBytes(16).toString("hex"), event, filter: parsedFilter, conn, pending: [] };
    conn.subs.set(sub.id, sub);
    let set = this.subsByEvent.get(event);
    if (set === undefined) this.subsByEvent.set(event, (set = new Set()));
    set.add(sub);
    afterSend.push(() => {
      const pending = sub.pending ?? [];
      sub.pending = null;
      for (const message of pending) this.send(conn, message);
    });
    return sub.id;
  }

  /** Validates filter fields against the event's object schema and returns them in parsed form. */
  private parseFilter(
    def: AnyEventDefinition,
    filter: Record<string, unknown> | undefined,
  ): Record<string, unknown> | undefined {
    if (filter === undefined || Object.keys(filter).length === 0) return undefined;
    if (!(def.payload instanceof z.ZodObject)) {
      throw invalidParams([{ path: ["filter"], message: `event "${def.name}" does not support filters` }]);
    }
    const result = def.payload.partial().strict().safeParse(filter);
    if (!result.success) throw invalidParams(wireIssues(result.error.issues, ["filter"]));
    const parsed: Record<string, unknown> = {};
    // Keep only keys the caller gave; partial() parsing may add defaults for absent ones.
    for (const key of Object.keys(filter)) parsed[key] = (result.data as Record<string, unknown>)[key];
    return parsed;
  }

  private removeSubscription(sub: Subscription): void {
    sub.conn.subs.delete(sub.id);
    const set = this.subsByEvent.get(sub.event);
    if (set === undefined) return;
    set.delete(sub);
    if (set.size === 0) this.subsByEvent.delete(sub.event);
  }
}
