import { expect } from "chai";
import { WebSocket } from "ws";
import { z } from "zod";
import {
  APP_ERRORS,
  RpcAppError,
  RpcClient,
  RpcClientError,
  RpcRegistry,
  RpcServer,
  addressSchema,
  amountSchema,
  defineEvent,
  defineMethod,
  hash32Schema,
  renderErrorTable,
  renderMethodDocs,
  type AppErrorCode,
  type EventMapOf,
  type JsonRpcId,
  type MethodMapOf,
  type RpcServerOptions,
} from "../src/rpc/index.js";

const TOKEN = "test-token-0123456789abcdef";
const AUTH = { Authorization: `Bearer ${TOKEN}` };
const ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const CHANNEL = `0x${"ab".repeat(32)}`;
const UINT256_MAX = (1n << 256n) - 1n;

// ---- example method set -------------------------------------------------------

const echo = defineMethod({
  name: "echo",
  params: z.object({ message: z.string(), count: z.number().int().optional() }),
  result: z.object({ message: z.string(), count: z.number().int().optional() }),
  description: "Returns its params.",
  handler: async (p) => p,
});

const transfer = defineMethod({
  name: "transfer",
  params: z.object({ to: addressSchema, amount: amountSchema, memo: z.string().optional().describe("Free text") }),
  result: z.object({ to: addressSchema, amount: amountSchema, fee: amountSchema }),
  description: "Pretends to pay `amount` to `to`; the fee is 0.1%.",
  handler: async ({ to, amount }) => {
    expect(typeof amount).to.equal("bigint");
    return { to, amount, fee: amount / 1000n };
  },
});

const balance = defineMethod({
  name: "balance",
  params: z.object({ owner: addressSchema }),
  result: amountSchema,
  description: "A balance too large for a JSON number.",
  handler: async () => 1n << 255n,
});

const ping = defineMethod({
  name: "ping",
  params: z.object({}),
  result: z.literal("pong"),
  description: "Liveness check.",
  handler: async () => "pong" as const,
});

const fail = defineMethod({
  name: "fail",
  params: z.object({ kind: z.enum(["app", "coded", "internal", "unknownCode", "unserializable"]) }),
  description: "Throws the requested kind of error.",
  handler: async ({ kind }): Promise<unknown> => {
    switch (kind) {
      case "app":
        throw new RpcAppError("INSUFFICIENT_BALANCE", "need more", { needed: 5n, have: 2n });
      case "coded":
        throw Object.assign(new Error("channel is closing"), { code: "CHANNEL_NOT_OPEN" });
      case "internal":
        throw new Error("db password is hunter2");
      case "unknownCode":
        throw Object.assign(new Error("ECONNREFUSED 10.0.0.7:5432"), { code: "ECONNREFUSED" });
      case "unserializable": {
        const cyclic: Record<string, unknown> = {};
        cyclic.self = cyclic;
        return cyclic;
      }
    }
  },
});

const sleep = defineMethod({
  name: "sleep",
  params: z.object({ ms: z.number().int().nonnegative() }),
  result: z.literal(true),
  description: "Resolves after `ms`, or when the connection closes.",
  handler: ({ ms }, ctx) =>
    new Promise<true>((resolve) => {
      const timer = setTimeout(() => resolve(true), ms);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve(true);
      });
    }),
});

const paymentEvent = defineEvent(
  "payment",
  z.object({
    channelId: hash32Schema,
    from: addressSchema,
    amount: amountSchema,
    status: z.enum(["pending", "settled"]),
  }),
  "A payment changed state.",
);
const blockEvent = defineEvent("block", z.number().int(), "New block number (no filter support).");

const METHODS = [echo, transfer, balance, ping, fail, sleep] as const;
const EVENTS = [paymentEvent, blockEvent] as const;
type Methods = MethodMapOf<typeof METHODS>;
type Events = EventMapOf<typeof EVENTS>;

function makeRegistry(): RpcRegistry {
  return new RpcRegistry().add(...METHODS, ...EVENTS);
}

// ---- raw WebSocket helper ------------------------------------------------------

interface ErrorBody {
  code: number;
  message: string;
  data?: unknown;
}
interface Resp {
  jsonrpc: string;
  id: JsonRpcId;
  result?: unknown;
  error?: ErrorBody;
}
interface Notification {
  jsonrpc: string;
  method: string;
  params: { subscription: string; event: string; result: Record<string, unknown> };
}

const openSockets: WebSocket[] = [];

class RawClient {
  readonly closed: Promise<{ code: number; reason: string }>;
  private readonly queue: string[] = [];
  private readonly waiters: ((text: string) => void)[] = [];

  constructor(readonly ws: WebSocket) {
    ws.on("error", () => undefined);
    ws.on("message", (data) => {
      const text = (data as Buffer).toString("utf8");
      const waiter = this.waiters.shift();
      if (waiter) waiter(text);
      else this.queue.push(text);
    });
    this.closed = new Promise((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString("utf8") })),
    );
  }

  static async open(url: string, headers: Record<string, string> = AUTH): Promise<RawClient> {
    const ws = new WebSocket(url, { headers });
    openSockets.push(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return new RawClient(ws);
  }

  send(message: unknown): void {
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  nextText(timeoutMs = 2000): Promise<string> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error("no message within timeout"));
      }, timeoutMs);
      const waiter = (text: string): void => {
        clearTimeout(timer);
        resolve(text);
      };
      this.waiters.push(waiter);
    });
  }

  async next<T = Resp>(timeoutMs?: number): Promise<T> {
    return JSON.parse(await this.nextText(timeoutMs)) as T;
  }

  async request(method: string, params?: unknown, id: JsonRpcId = 1): Promise<Resp> {
    this.send(params === undefined ? { jsonrpc: "2.0", method, id } : { jsonrpc: "2.0", method, params, id });
    return this.next();
  }

  async expectSilence(ms = 100): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    expect(this.queue, "unexpected message").to.deep.equal([]);
  }
}

function expectError(resp: Resp, code: number, id: JsonRpcId = 1): ErrorBody {
  expect(resp.jsonrpc).to.equal("2.0");
  expect(resp.id).to.equal(id);
  expect(resp).to.not.have.property("result");
  expect(resp.error, JSON.stringify(resp)).to.be.an("object");
  const error = resp.error as ErrorBody;
  expect(error.code, JSON.stringify(resp)).to.equal(code);
  expect(error.message).to.be.a("string");
  return error;
}

function expectResult(resp: Resp, id: JsonRpcId = 1): unknown {
  expect(resp.error, JSON.stringify(resp.error)).to.equal(undefined);
  expect(resp.jsonrpc).to.equal("2.0");
  expect(resp.id).to.equal(id);
  return resp.result;
}

function issuePaths(error: ErrorBody): unknown[] {
  const data = error.data as { issues: { path: unknown[]; message: string }[] };
  for (const issue of data.issues) expect(issue.message).to.be.a("string");
  return data.issues.map((i) => i.path);
}

async function eventually(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function upgradeStatus(url: string, headers: Record<string, string>): Promise<number> {
  const ws = new WebSocket(url, { headers });
  openSockets.push(ws);
  return new Promise((resolve, reject) => {
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once("open", () => reject(new Error("upgrade unexpectedly accepted")));
    ws.on("error", () => undefined);
  });
}

// ---- tests -----------------------------------------------------------------------

describe("rpc", function () {
  this.timeout(10_000);

  let servers: RpcServer[] = [];
  let clients: RpcClient<Methods, Events>[] = [];
  let internalErrors: unknown[] = [];
  let server: RpcServer;

  async function start(options: Partial<RpcServerOptions> = {}): Promise<RpcServer> {
    const s = await RpcServer.start({
      registry: makeRegistry(),
      token: TOKEN,
      port: 0,
      onInternalError: (err) => internalErrors.push(err),
      ...options,
    });
    servers.push(s);
    return s;
  }

  async function connect(
    token = TOKEN,
    options: Parameters<typeof RpcClient.connect>[2] = {},
  ): Promise<RpcClient<Methods, Events>> {
    const c = await RpcClient.connect<Methods, Events>(server.url, token, options);
    clients.push(c);
    return c;
  }

  beforeEach(async function () {
    internalErrors = [];
    server = await start();
  });

  afterEach(async function () {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(servers.map((s) => s.close()));
    for (const ws of openSockets.splice(0)) ws.terminate();
    clients = [];
    servers = [];
  });

  describe("binding", function () {
    it("listens on 127.0.0.1 with a free port by default", function () {
      expect(server.port).to.be.greaterThan(0);
      expect(server.url).to.equal(`ws://127.0.0.1:${server.port}/`);
    });

    it("answers plain HTTP with 426", async function () {
      const res = await fetch(`http://127.0.0.1:${server.port}/`, { headers: { Connection: "close" } });
      expect(res.status).to.equal(426);
      await res.text();
    });
  });

  describe("standard errors", function () {
    it("-32700 for invalid JSON", async function () {
      const c = await RawClient.open(server.url);
      c.send('{"jsonrpc":"2.0","method":');
      expectError(await c.next(), -32700, null);
    });

    it("-32600 for malformed requests", async function () {
      const c = await RawClient.open(server.url);
      const bad: unknown[] = [
        42,
        "hello",
        null,
        { jsonrpc: "1.0", method: "ping", id: 1 },
        { method: "ping", id: 1 },
        { jsonrpc: "2.0", method: 7, id: 1 },
        { jsonrpc: "2.0", method: "ping", params: "x", id: 1 },
        { jsonrpc: "2.0", method: "ping", params: null, id: 1 },
      ];
      for (const b of bad) {
        c.ws.send(JSON.stringify(b));
        expectError(await c.next(), -32600, typeof b === "object" && b !== null ? 1 : null);
      }
      c.send({ jsonrpc: "2.0", method: "ping", id: { nested: true } });
      expectError(await c.next(), -32600, null);
    });

    it("-32601 for unknown methods, including reserved rpc.* names", async function () {
      const c = await RawClient.open(server.url);
      expectError(await c.request("nope"), -32601);
      expectError(await c.request("rpc.discover"), -32601);
    });

    it("-32602 with zod issues (path + message) in data", async function () {
      const c = await RawClient.open(server.url);
      const e = expectError(await c.request("transfer", { to: "0x1234", amount: "1" }), -32602);
      expect(issuePaths(e)).to.deep.equal([["to"]]);
      const missing = expectError(await c.request("transfer", {}), -32602);
      expect(issuePaths(missing)).to.have.deep.members([["to"], ["amount"]]);
      const unknownKey = expectError(await c.request("echo", { message: "hi", mesage: "typo" }), -32602);
      expect(issuePaths(unknownKey)).to.deep.equal([[]]);
      expect(JSON.stringify(unknownKey.data)).to.include("mesage");
      expectError(await c.request("echo", ["a", 1, "extra"]), -32602);
    });

    it("-32603 for unexpected handler errors, without leaking details", async function () {
      const c = await RawClient.open(server.url);
      for (const kind of ["internal", "unknownCode", "unserializable"]) {
        const resp = await c.request("fail", { kind });
        const e = expectError(resp, -32603);
        expect(e.message).to.equal("Internal error");
        expect(e).to.not.have.property("data");
        const text = JSON.stringify(resp);
        expect(text).to.not.include("hunter2");
        expect(text).to.not.include("ECONNREFUSED");
        expect(text).to.not.include("at ");
      }
      expect(internalErrors).to.have.length(3);
    });
  });

  describe("application errors", function () {
    it("maps RpcAppError through the table, with bigint data as strings", async function () {
      const c = await RawClient.open(server.url);
      const e = expectError(await c.request("fail", { kind: "app" }), -32010);
      expect(e.message).to.equal("need more");
      expect(e.data).to.deep.equal({ needed: "5", have: "2" });
    });

    it("maps any error whose code is a table name", async function () {
      const c = await RawClient.open(server.url);
      const e = expectError(await c.request("fail", { kind: "coded" }), APP_ERRORS.CHANNEL_NOT_OPEN.code);
      expect(e.message).to.equal("channel is closing");
    });

    it("has unique codes inside -32000..-32099", function () {
      const names = Object.keys(APP_ERRORS) as AppErrorCode[];
      const codes = names.map((n) => APP_ERRORS[n].code);
      expect(new Set(codes).size).to.equal(codes.length);
      for (const code of codes) expect(code).to.be.within(-32099, -32000);
      expect(APP_ERRORS.UNAUTHORIZED.code).to.equal(-32001);
      expect(APP_ERRORS.NOT_FOUND.code).to.equal(-32004);
      expect(APP_ERRORS.BAD_STATE.code).to.equal(-32008);
      expect(APP_ERRORS.CONFLICT.code).to.equal(-32009);
      expect(APP_ERRORS.INSUFFICIENT_BALANCE.code).to.equal(-32010);
      expect(APP_ERRORS.CHANNEL_NOT_OPEN.code).to.equal(-32011);
      expect(APP_ERRORS.PEER_UNREACHABLE.code).to.equal(-32012);
      expect(APP_ERRORS.PAYMENT_FAILED.code).to.equal(-32013);
      expect(APP_ERRORS.CHAIN_ERROR.code).to.equal(-32020);
      expect(APP_ERRORS.TIMEOUT.code).to.equal(-32030);
    });
  });

  describe("params", function () {
    it("accepts by-name and by-position params", async function () {
      const c = await RawClient.open(server.url);
      expect(expectResult(await c.request("echo", { message: "hi", count: 2 }))).to.deep.equal({
        message: "hi",
        count: 2,
      });
      expect(expectResult(await c.request("echo", ["hi", 3]))).to.deep.equal({ message: "hi", count: 3 });
      expect(expectResult(await c.request("echo", ["hi"]))).to.deep.equal({ message: "hi" });
      expect(expectResult(await c.request("transfer", [BOB, "2000"]))).to.deep.equal({
        to: BOB,
        amount: "2000",
        fee: "2",
      });
      expect(expectResult(await c.request("ping"))).to.equal("pong");
      expect(expectResult(await c.request("ping", []))).to.equal("pong");
    });

    it("takes amounts as decimal strings and returns bigints as strings", async function () {
      const c = await RawClient.open(server.url);
      const r = expectResult(await c.request("transfer", { to: BOB, amount: "1000000" }));
      expect(r).to.deep.equal({ to: BOB, amount: "1000000", fee: "1000" });
      expect(transfer.result?.parse(r)).to.deep.equal({ to: BOB, amount: 1000000n, fee: 1000n });
      expect(expectResult(await c.request("balance", { owner: ALICE }))).to.equal((1n << 255n).toString());
      const max = expectResult(await c.request("transfer", { to: BOB, amount: UINT256_MAX.toString() }));
      expect((max as { amount: string }).amount).to.equal(UINT256_MAX.toString());
    });

    it("rejects a JSON number amount and other malformed amounts with -32602", async function () {
      const c = await RawClient.open(server.url);
      const bad: unknown[] = [
        1000000,
        1e6,
        "+5",
        "-5",
        "1.5",
        "1e6",
        "",
        " 1",
        "0x10",
        "9".repeat(79),
        (UINT256_MAX + 1n).toString(),
        null,
      ];
      for (const amount of bad) {
        const e = expectError(await c.request("transfer", { to: BOB, amount }), -32602);
        expect(issuePaths(e), String(amount)).to.deep.equal([["amount"]]);
      }
    });

    it("validates addresses and 32-byte hashes", function () {
      expect(addressSchema.safeParse(ALICE).success).to.equal(true);
      expect(addressSchema.safeParse(ALICE.slice(0, 41)).success).to.equal(false);
      expect(addressSchema.safeParse(ALICE.slice(2)).success).to.equal(false);
      expect(hash32Schema.safeParse(CHANNEL).success).to.equal(true);
      expect(hash32Schema.safeParse(`${CHANNEL}0`).success).to.equal(false);
      expect(hash32Schema.safeParse(`0x${"zz".repeat(32)}`).success).to.equal(false);
    });
  });

  describe("batches", function () {
    it("answers mixed batches, omitting notifications", async function () {
      const c = await RawClient.open(server.url);
      c.send([
        { jsonrpc: "2.0", method: "echo", params: { message: "a" }, id: 1 },
        { jsonrpc: "2.0", method: "nope", id: "two" },
        { jsonrpc: "2.0", method: "echo", params: { message: "notification" } },
        { jsonrpc: "2.0", method: "fail", params: { kind: "app" }, id: 3 },
        { jsonrpc: "2.0", method: "transfer", params: { to: BOB, amount: 5 }, id: 4 },
        { jsonrpc: "2.0", method: "nope" },
        42,
      ]);
      const batch = await c.next<Resp[]>();
      expect(batch).to.be.an("array").with.length(5);
      const byId = (id: JsonRpcId): Resp => batch.find((r) => r.id === id) as Resp;
      expect(expectResult(byId(1), 1)).to.deep.equal({ message: "a" });
      expectError(byId("two"), -32601, "two");
      expectError(byId(3), -32010, 3);
      expectError(byId(4), -32602, 4);
      expectError(byId(null), -32600, null);
      await c.expectSilence();
    });

    it("answers an empty batch with a single -32600", async function () {
      const c = await RawClient.open(server.url);
      c.send([]);
      const resp = await c.next();
      expect(Array.isArray(resp)).to.equal(false);
      expectError(resp, -32600, null);
    });

    it("sends nothing for a batch of only notifications", async function () {
      const c = await RawClient.open(server.url);
      c.send([
        { jsonrpc: "2.0", method: "ping" },
        { jsonrpc: "2.0", method: "fail", params: { kind: "app" } },
        { jsonrpc: "2.0", method: "nope" },
      ]);
      c.send({ jsonrpc: "2.0", method: "ping" });
      await c.expectSilence();
      expect(expectResult(await c.request("ping", {}, 99), 99)).to.equal("pong");
    });

    it("rejects batches above the length limit", async function () {
      const c = await RawClient.open(server.url);
      c.send(Array.from({ length: 101 }, (_, i) => ({ jsonrpc: "2.0", method: "ping", id: i })));
      expectError(await c.next(), -32600, null);
      c.send(Array.from({ length: 100 }, (_, i) => ({ jsonrpc: "2.0", method: "ping", id: i })));
      expect(await c.next<Resp[]>()).to.have.length(100);
    });
  });

  describe("auth", function () {
    it("accepts the Bearer header", async function () {
      const c = await RawClient.open(server.url, AUTH);
      expect(expectResult(await c.request("ping"))).to.equal("pong");
    });

    it("rejects a wrong or malformed header with HTTP 401", async function () {
      expect(await upgradeStatus(server.url, { Authorization: "Bearer wrong" })).to.equal(401);
      expect(await upgradeStatus(server.url, { Authorization: `Bearer ${TOKEN}x` })).to.equal(401);
      expect(await upgradeStatus(server.url, { Authorization: `Basic ${TOKEN}` })).to.equal(401);
      expect(await upgradeStatus(server.url, { Authorization: "" })).to.equal(401);
      expect(server.connectionCount).to.equal(0);
    });

    it("without a header, refuses every call until the auth message", async function () {
      const c = await RawClient.open(server.url, {});
      expectError(await c.request("ping"), -32001);
      expectError(await c.request("nope"), -32001);
      expectError(await c.request("subscribe", { event: "payment" }), -32001);
      expect(expectResult(await c.request("auth", { token: TOKEN }))).to.equal(true);
      expect(expectResult(await c.request("ping"))).to.equal("pong");
    });

    it("accepts auth by position and in a batch ahead of other calls", async function () {
      const c = await RawClient.open(server.url, {});
      c.send([
        { jsonrpc: "2.0", method: "auth", params: [TOKEN], id: 1 },
        { jsonrpc: "2.0", method: "ping", id: 2 },
      ]);
      const batch = await c.next<Resp[]>();
      expect(batch.map((r) => r.result)).to.deep.equal([true, "pong"]);
    });

    it("rejects a wrong auth message and closes the connection", async function () {
      const c = await RawClient.open(server.url, {});
      const e = expectError(await c.request("auth", { token: "wrong" }), -32001);
      expect(e.message).to.not.include(TOKEN);
      expect((await c.closed).code).to.equal(1008);
    });

    it("rejects an auth message without a token as invalid params", async function () {
      const c = await RawClient.open(server.url, {});
      expectError(await c.request("auth", {}), -32602);
    });

    it("closes connections that never authenticate", async function () {
      const s = await start({ authTimeoutMs: 50 });
      const c = await RawClient.open(s.url, {});
      expect((await c.closed).code).to.equal(1008);
    });
  });

  describe("subscriptions", function () {
    const payment = (from: string, amount: bigint, status: "pending" | "settled" = "settled") => ({
      channelId: CHANNEL,
      from,
      amount,
      status,
    });

    it("delivers every payload without a filter", async function () {
      const c = await RawClient.open(server.url);
      const id = expectResult(await c.request("subscribe", { event: "payment" }));
      expect(id).to.be.a("string");
      expect(server.publish("payment", payment(ALICE, 10n))).to.equal(1);
      expect(server.publish("payment", payment(BOB, 20n))).to.equal(1);
      const n1 = await c.next<Notification>();
      expect(n1).to.deep.equal({
        jsonrpc: "2.0",
        method: "subscription",
        params: {
          subscription: id,
          event: "payment",
          result: { channelId: CHANNEL, from: ALICE, amount: "10", status: "settled" },
        },
      });
      expect(n1).to.not.have.property("id");
      expect((await c.next<Notification>()).params.result.amount).to.equal("20");
      expect(server.publish("block", 7)).to.equal(0);
    });

    it("delivers only matching payloads with a filter", async function () {
      const c = await RawClient.open(server.url);
      const byFrom = expectResult(await c.request("subscribe", { event: "payment", filter: { from: ALICE.toLowerCase() } }));
      const byAmount = expectResult(
        await c.request("subscribe", ["payment", { amount: "20", status: "pending" }], 2),
        2,
      );
      expect(server.publish("payment", payment(BOB, 10n))).to.equal(0);
      expect(server.publish("payment", payment(ALICE, 10n))).to.equal(1);
      const first = await c.next<Notification>();
      expect(first.params.subscription).to.equal(byFrom);
      expect(first.params.result.from).to.equal(ALICE);
      expect(server.publish("payment", payment(BOB, 20n, "settled"))).to.equal(0);
      expect(server.publish("payment", payment(BOB, 20n, "pending"))).to.equal(1);
      expect((await c.next<Notification>()).params.subscription).to.equal(byAmount);
      await c.expectSilence(50);
    });

    it("rejects unknown events and invalid filters with -32602", async function () {
      const c = await RawClient.open(server.url);
      expect(issuePaths(expectError(await c.request("subscribe", { event: "nope" }), -32602))).to.deep.equal([
        ["event"],
      ]);
      const unknownField = expectError(await c.request("subscribe", { event: "payment", filter: { bogus: 1 } }), -32602);
      expect(issuePaths(unknownField)).to.deep.equal([["filter"]]);
      const numberAmount = expectError(await c.request("subscribe", { event: "payment", filter: { amount: 5 } }), -32602);
      expect(issuePaths(numberAmount)).to.deep.equal([["filter", "amount"]]);
      const nested = expectError(
        await c.request("subscribe", { event: "payment", filter: { from: { $ne: ALICE } } }),
        -32602,
      );
      expect(issuePaths(nested)[0]).to.deep.equal(["filter", "from"]);
      expectError(await c.request("subscribe", { event: "block", filter: { n: 1 } }), -32602);
      expect(server.subscriptionCount).to.equal(0);
    });

    it("stops delivery after unsubscribe", async function () {
      const c = await RawClient.open(server.url);
      const id = expectResult(await c.request("subscribe", { event: "payment" }));
      expect(expectResult(await c.request("unsubscribe", { subscription: id }))).to.equal(true);
      expect(expectResult(await c.request("unsubscribe", [id]))).to.equal(false);
      expect(server.publish("payment", payment(ALICE, 1n))).to.equal(0);
      await c.expectSilence(50);
    });

    it("cannot cancel another connection's subscription", async function () {
      const a = await RawClient.open(server.url);
      const b = await RawClient.open(server.url);
      const id = expectResult(await a.request("subscribe", { event: "payment" }));
      expect(expectResult(await b.request("unsubscribe", { subscription: id }))).to.equal(false);
      expect(server.subscriptionCount).to.equal(1);
    });

    it("drops subscriptions when the connection closes", async function () {
      const c = await RawClient.open(server.url);
      expectResult(await c.request("subscribe", { event: "payment" }));
      expectResult(await c.request("subscribe", { event: "block" }, 2), 2);
      expect(server.subscriptionCount).to.equal(2);
      c.ws.close();
      await eventually(() => server.subscriptionCount === 0 && server.connectionCount === 0);
      expect(server.publish("payment", payment(ALICE, 1n))).to.equal(0);
    });

    it("refuses to publish unknown events or payloads that break the schema", async function () {
      expect(() => server.publish("nope", {})).to.throw(/unknown event/);
      // With no subscriber nothing is encoded or checked; with one, a bad payload is refused.
      expect(server.publish("payment", { ...payment(ALICE, 1n), amount: -1n })).to.equal(0);
      const c = await RawClient.open(server.url);
      expectResult(await c.request("subscribe", { event: "payment" }));
      expect(() => server.publish("payment", { ...payment(ALICE, 1n), amount: -1n })).to.throw(/does not match/);
      c.ws.close();
      await eventually(() => server.connectionCount === 0);
    });

    it("never sends a notification before the subscribe response", async function () {
      const c = await RawClient.open(server.url);
      // The batch response is written only after `sleep` finishes; publishing meanwhile must wait.
      c.send([
        { jsonrpc: "2.0", method: "subscribe", params: { event: "block" }, id: 1 },
        { jsonrpc: "2.0", method: "sleep", params: { ms: 100 }, id: 2 },
      ]);
      await eventually(() => server.subscriptionCount === 1);
      expect(server.publish("block", 1)).to.equal(1);
      const batch = await c.next<Resp[]>();
      expect(batch).to.have.length(2);
      const n = await c.next<Notification>();
      expect(n.params.subscription).to.equal(batch.find((r) => r.id === 1)?.result);
      expect(n.params.result).to.equal(1);
    });
  });

  describe("limits", function () {
    it("closes with 1009 on a message above 1 MiB", async function () {
      const c = await RawClient.open(server.url);
      const fits = JSON.stringify({ jsonrpc: "2.0", method: "echo", params: { message: "" }, id: 1 });
      c.send(fits.replace('"message":""', `"message":"${"x".repeat(1024 * 1024 - fits.length)}"`));
      expect(((await c.next()).result as { message: string }).message).to.have.length(1024 * 1024 - fits.length);
      c.send("x".repeat(1024 * 1024 + 1));
      expect((await c.closed).code).to.equal(1009);
    });

    it("honours a configured message size", async function () {
      const s = await start({ maxMessageBytes: 1000 });
      const c = await RawClient.open(s.url);
      c.send({ jsonrpc: "2.0", method: "echo", params: { message: "y".repeat(1000) }, id: 1 });
      expect((await c.closed).code).to.equal(1009);
    });

    it("fails requests beyond the in-flight limit instead of queueing them", async function () {
      const s = await start({ maxInFlight: 2 });
      const c = await RawClient.open(s.url);
      for (let id = 1; id <= 3; id++) c.send({ jsonrpc: "2.0", method: "sleep", params: { ms: 150 }, id });
      c.send({ jsonrpc: "2.0", method: "sleep", params: { ms: 150 } });
      expectError(await c.next(), APP_ERRORS.TOO_MANY_REQUESTS.code, 3);
      const done = [await c.next(), await c.next()];
      expect(done.map((r) => r.id).sort()).to.deep.equal([1, 2]);
      expect(expectResult(await c.request("ping", {}, 4), 4)).to.equal("pong");
    });

    it("limits subscriptions per connection", async function () {
      const s = await start({ maxSubscriptionsPerConnection: 1 });
      const c = await RawClient.open(s.url);
      expectResult(await c.request("subscribe", { event: "payment" }));
      expectError(await c.request("subscribe", { event: "block" }), APP_ERRORS.TOO_MANY_REQUESTS.code);
    });
  });

  describe("typed client", function () {
    it("calls methods with typed params and wire-typed results", async function () {
      const client = await connect();
      const r: { to: string; amount: string; fee: string } = await client.call("transfer", {
        to: BOB,
        amount: "3000",
      });
      expect(r).to.deep.equal({ to: BOB, amount: "3000", fee: "3" });
      const pong: "pong" = await client.call("ping");
      expect(pong).to.equal("pong");
      const bal: string = await client.call("balance", { owner: ALICE });
      expect(BigInt(bal)).to.equal(1n << 255n);
      const results = await Promise.all([1, 2, 3].map((count) => client.call("echo", { message: "m", count })));
      expect(results.map((x) => x.count)).to.deep.equal([1, 2, 3]);
    });

    it("surfaces errors as RpcClientError with code, name and data", async function () {
      const client = await connect();
      const err = await client.call("fail", { kind: "app" }).then(
        () => expect.fail("should reject"),
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(RpcClientError);
      const e = err as RpcClientError;
      expect(e.code).to.equal(-32010);
      expect(e.appCode).to.equal("INSUFFICIENT_BALANCE");
      expect(e.message).to.equal("need more");
      expect(e.data).to.deep.equal({ needed: "5", have: "2" });

      const invalid = (await client
        .call("transfer", { to: BOB, amount: 7 as unknown as string })
        .catch((x: unknown) => x)) as RpcClientError;
      expect(invalid.code).to.equal(-32602);
      expect(invalid.appCode).to.equal(undefined);
      const internal = (await client.call("fail", { kind: "internal" }).catch((x: unknown) => x)) as RpcClientError;
      expect(internal.code).to.equal(-32603);
    });

    it("subscribes with and without a filter and unsubscribes", async function () {
      const client = await connect();
      const all: Events["payment"][] = [];
      const fromAlice: Events["payment"][] = [];
      const offAll = await client.subscribe("payment", undefined, (p) => all.push(p));
      const offAlice = await client.subscribe("payment", { from: ALICE }, (p) => fromAlice.push(p));
      server.publish("payment", { channelId: CHANNEL, from: ALICE, amount: 5n, status: "pending" });
      server.publish("payment", { channelId: CHANNEL, from: BOB, amount: 6n, status: "settled" });
      await eventually(() => all.length === 2 && fromAlice.length === 1);
      expect(fromAlice[0]).to.deep.equal({ channelId: CHANNEL, from: ALICE, amount: "5", status: "pending" });
      expect(await offAll()).to.equal(true);
      expect(await offAll()).to.equal(false);
      server.publish("payment", { channelId: CHANNEL, from: ALICE, amount: 7n, status: "settled" });
      await eventually(() => fromAlice.length === 2);
      expect(all).to.have.length(2);
      expect(await offAlice()).to.equal(true);
      expect(server.subscriptionCount).to.equal(0);
    });

    it("times out calls that get no response in time", async function () {
      const client = await connect(TOKEN, { timeoutMs: 5000 });
      const e = (await client.call("sleep", { ms: 300 }, { timeoutMs: 30 }).catch((x: unknown) => x)) as RpcClientError;
      expect(e).to.be.instanceOf(RpcClientError);
      expect(e.code).to.equal(APP_ERRORS.TIMEOUT.code);
      expect(e.appCode).to.equal("TIMEOUT");
      // The late response is ignored and the connection stays usable.
      await new Promise((r) => setTimeout(r, 350));
      expect(await client.call("ping")).to.equal("pong");
    });

    it("rejects a wrong token on connect, by header or by message", async function () {
      const byHeader = await RpcClient.connect(server.url, "wrong").catch((x: unknown) => x);
      expect(byHeader).to.be.instanceOf(RpcClientError);
      expect((byHeader as RpcClientError).code).to.equal(-32001);
      const byMessage = await RpcClient.connect(server.url, "wrong", { auth: "message" }).catch((x: unknown) => x);
      expect((byMessage as RpcClientError).code).to.equal(-32001);
      const ok = await connect(TOKEN, { auth: "message" });
      expect(await ok.call("ping")).to.equal("pong");
    });

    it("rejects pending calls when the connection closes", async function () {
      const client = await connect();
      const pending = client.call("sleep", { ms: 5000 }).catch((x: unknown) => x);
      await client.close();
      const e = (await pending) as RpcClientError;
      expect(e.code).to.equal(APP_ERRORS.CONNECTION_CLOSED.code);
      expect((await client.call("ping").catch((x: unknown) => x)) as RpcClientError).to.have.property(
        "code",
        APP_ERRORS.CONNECTION_CLOSED.code,
      );
    });
  });

  describe("shutdown", function () {
    const HANDLE_KINDS = new Set(["TCPServerWrap", "TCPSocketWrap", "Timeout"]);
    const handles = (): string[] => process.getActiveResourcesInfo().filter((r) => HANDLE_KINDS.has(r)).sort();

    it("close() terminates connected clients and leaves no handles behind", async function () {
      await server.close();
      // A closed server handle is released on the next turn of the event loop.
      await new Promise((r) => setImmediate(r));
      const baseline = handles();

      const s = await start();
      server = s;
      const client = await connect();
      const sub = await client.subscribe("block", undefined, () => undefined);
      expect(sub).to.be.a("function");
      const raw = await RawClient.open(s.url);
      const unauthenticated = await RawClient.open(s.url, {});
      const pending = client.call("sleep", { ms: 60_000 }).catch((x: unknown) => x);
      await eventually(() => s.connectionCount === 3);

      await s.close();
      expect(s.connectionCount).to.equal(0);
      expect(s.subscriptionCount).to.equal(0);
      expect(((await pending) as RpcClientError).code).to.equal(APP_ERRORS.CONNECTION_CLOSED.code);
      await client.closed;
      await raw.closed;
      await unauthenticated.closed;
      await eventually(() => JSON.stringify(handles()) === JSON.stringify(baseline)).catch(() => undefined);
      expect(handles()).to.deep.equal(baseline);
      await s.close(); // idempotent
    });
  });

  describe("docs", function () {
    it("renders methods, events, shared types and errors as markdown", function () {
      const md = renderMethodDocs(makeRegistry());
      expect(md).to.include("## Methods");
      expect(md).to.include("| `transfer` | `to: Address`<br>`amount: Amount`<br>`memo?: string — Free text` |");
      expect(md).to.include("`{ to: Address, amount: Amount, fee: Amount }`");
      expect(md).to.include("| `auth` |");
      expect(md).to.include("| `subscribe` |");
      expect(md).to.include("| `fail` | `kind: \"app\" \\| \"coded\"");
      expect(md).to.include("## Events");
      expect(md).to.include("| `payment` |");
      expect(md).to.include("| `block` | `number` |");
      expect(md).to.include("| `Amount` |");
      expect(md).to.include("## Errors");
      expect(md).to.include("| -32602 | `INVALID_PARAMS` |");
      for (const name of Object.keys(APP_ERRORS) as AppErrorCode[]) {
        expect(renderErrorTable()).to.include(`| ${APP_ERRORS[name].code} | \`${name}\` |`);
      }
    });

    it("refuses reserved and duplicate method names", function () {
      const registry = makeRegistry();
      const dup = defineMethod({ name: "auth", params: z.object({}), description: "", handler: async () => 1 });
      expect(() => registry.add(dup)).to.throw(/reserved/);
      expect(() => registry.add(echo)).to.throw(/already registered/);
      expect(() => defineMethod({ name: "rpc.x", params: z.object({}), description: "", handler: async () => 1 })).to.throw();
    });
  });
});
