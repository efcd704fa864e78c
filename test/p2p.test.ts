// Before anything that loads libp2p.
import "../src/p2p/polyfill.js";
import { expect } from "chai";
import { Socket } from "node:net";
import { keccak256 } from "../src/protocol/keccak.js";
import type { Connection, Stream } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import { createTransport, HELLO_PROTOCOL, MSG_PROTOCOL, P2PError, type P2PTransport, type PeerEvent, type TransportOptions } from "../src/p2p/index.js";
import { encodeFrame, lengthPrefixed, parseFrame } from "../src/p2p/frames.js";
import { HELLO_MAX_SKEW_MS, encodeHello, makeHello, parseHello, type Hello } from "../src/p2p/hello.js";
import { ConnectionLiveness, cancelStrayTimers, createNode } from "../src/p2p/node.js";
import { loadBackend, type Address, type Signer } from "../src/signer/index.js";

const backend = await loadBackend("auto");
const utf8 = new TextEncoder();

const ethKey = (label: string): Uint8Array => keccak256(utf8.encode(`starling-test-eth:${label}`));
const peerSeed = (label: string): Uint8Array => keccak256(utf8.encode(`starling-test-peer:${label}`));
const signerFor = (label: string): Signer => backend.createSigner(ethKey(label));

interface Stoppable {
  stop(): Promise<void> | void;
}

/** Everything a test starts, stopped after it whatever happened. */
let running: Stoppable[] = [];

afterEach(async () => {
  const all = running.reverse();
  running = [];
  for (const s of all) await s.stop();
});

interface Logged {
  transport: P2PTransport;
  logs: string[];
}

async function startTransport(label: string, extra: Partial<TransportOptions> = {}): Promise<Logged> {
  const logs: string[] = [];
  const transport = createTransport({
    signer: signerFor(label),
    verifier: backend.verifier,
    privateKey: peerSeed(label),
    logger: {
      info: (m) => logs.push(`info ${m}`),
      warn: (m) => logs.push(`warn ${m}`),
      error: (m) => logs.push(`error ${m}`),
    },
    ...extra,
  });
  running.push(transport);
  await transport.start();
  return { transport, logs };
}

/** A bare libp2p node with the same stack, to speak the protocols by hand. */
async function startRawNode(label: string): Promise<Libp2p> {
  const node = await createNode({ seed: peerSeed(label) });
  running.push({
    stop: async () => {
      await node.stop();
      cancelStrayTimers(node);
    },
  });
  await node.start();
  return node;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function nextPeerEvent(t: P2PTransport, address: Address, event: PeerEvent, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event for ${address} within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = t.onPeer((a, e) => {
      if (a === address && e === event) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

async function expectRejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    expect(err).to.be.instanceOf(Error);
    return err as Error;
  }
  throw new Error("expected a rejection");
}

function waitForClose(conn: Connection, timeoutMs = 5000): Promise<void> {
  if (conn.status !== "open") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connection still open")), timeoutMs);
    conn.addEventListener("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Opens a raw connection from `raw` to `target`, sends `hello` and says what came back. */
async function rawHello(raw: Libp2p, target: P2PTransport, hello: Hello | Uint8Array): Promise<{ conn: Connection; reply: Hello | Error }> {
  const conn = await raw.dial(multiaddr(target.multiaddrs[0]!));
  const stream = await conn.newStream(HELLO_PROTOCOL);
  const lp = lpStream(stream);
  await lp.write(hello instanceof Uint8Array ? hello : encodeHello(hello));
  let reply: Hello | Error;
  try {
    reply = parseHello((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray());
  } catch (err) {
    reply = err as Error;
  }
  return { conn, reply };
}

/** Completes a genuine hello from `raw` (as Ethereum key `label`) and returns the connection. */
async function rawBound(raw: Libp2p, target: P2PTransport, label: string): Promise<Connection> {
  const conn = await raw.dial(multiaddr(target.multiaddrs[0]!));
  const hello = makeHello({ signer: signerFor(label), version: 1, localPeer: raw.peerId, remotePeer: conn.remotePeer });
  const stream = await conn.newStream(HELLO_PROTOCOL);
  const lp = lpStream(stream);
  await lp.write(encodeHello(hello));
  const reply = parseHello((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray());
  expect(reply.address).to.equal(target.address);
  await stream.close();
  return conn;
}

// The bigint-safe JSON codec itself is tested in store.test.ts.
describe("p2p frames", () => {
  it("validates frames", () => {
    const id = "ab".repeat(16);
    expect(parseFrame(encodeFrame({ v: 1, kind: "msg", id, body: { x: 3n } }))).to.deep.equal({ v: 1, kind: "msg", id, body: { x: 3n } });
    expect(() => parseFrame(utf8.encode(JSON.stringify({ v: 2, kind: "ack", id })))).to.throw(/version/);
    expect(() => parseFrame(utf8.encode(JSON.stringify({ v: 1, kind: "msg", id })))).to.throw(/body/);
    expect(() => parseFrame(utf8.encode(JSON.stringify({ v: 1, kind: "ack", id: "xyz" })))).to.throw(/id/);
    expect(() => parseFrame(new Uint8Array([0xff, 0xfe]))).to.throw();
  });
});

describe("p2p transport (libp2p on 127.0.0.1)", function () {
  this.timeout(30_000);

  it("binds each side's peer id to the other's Ethereum address", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob");
    const bSawAlice = nextPeerEvent(b, a.address, "connected");
    const aSawBob = nextPeerEvent(a, b.address, "connected");

    expect(await a.dial(b.multiaddrs[0]!)).to.equal(b.address);
    await Promise.all([aSawBob, bSawAlice]);

    expect(a.addressOf(b.peerId)).to.equal(b.address);
    expect(b.addressOf(a.peerId)).to.equal(a.address);
    expect(a.peerOf(b.address)).to.equal(b.peerId);
    expect(b.peerOf(a.address)).to.equal(a.peerId);
    expect(a.multiaddrs[0]).to.match(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${a.peerId}$`));
    // Dialling again reuses the bound connection.
    expect(await a.dial(b.multiaddrs[0]!)).to.equal(b.address);
  });

  it("keeps the peer id across restarts (derived from the seed)", async () => {
    const first = createTransport({ signer: signerFor("carol"), verifier: backend.verifier, privateKey: peerSeed("carol") });
    running.push(first);
    await first.start();
    const id = first.peerId;
    await first.stop();
    const { transport: second } = await startTransport("carol");
    expect(second.peerId).to.equal(id);
  });

  it("connects three transports pairwise and routes by address", async () => {
    const ts = await Promise.all(["alice", "bob", "carol"].map(async (l) => (await startTransport(l)).transport));
    const [a, b, c] = ts as [P2PTransport, P2PTransport, P2PTransport];
    const got = new Map<Address, Array<[Address, unknown]>>();
    for (const t of ts) {
      got.set(t.address, []);
      t.onMessage(async (from, message) => {
        got.get(t.address)!.push([from, message]);
      });
    }
    expect(await a.dial(b.multiaddrs[0]!)).to.equal(b.address);
    expect(await a.dial(c.multiaddrs[0]!)).to.equal(c.address);
    expect(await b.dial(c.multiaddrs[0]!)).to.equal(c.address);
    await waitFor("all bindings", () => ts.every((t) => t.connectedAddresses().length === 2));

    for (const from of ts) {
      for (const to of ts) {
        if (from !== to) await from.send(to.address, { from: from.address, to: to.address });
      }
    }
    for (const t of ts) {
      const inbox = got.get(t.address)!;
      expect(inbox).to.have.length(2);
      for (const [from, message] of inbox) expect(message).to.deep.equal({ from, to: t.address });
    }
  });

  it("delivers a message with bigints and resolves on the ack", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob");
    const inbox: Array<{ from: Address; message: unknown; id: string }> = [];
    let release!: () => void;
    const handled = new Promise<void>((resolve) => (release = resolve));
    b.onMessage(async (from, message, id) => {
      // The ack must wait for this.
      await handled;
      inbox.push({ from, message, id });
    });
    await a.dial(b.multiaddrs[0]!);

    const message = { type: "update", amount: 10n ** 30n, locks: [{ amount: -1n }], note: "$n", $n: "5" };
    let acked = false;
    const sent = a.send(b.address, message).then(() => (acked = true));
    await sleep(100);
    expect(acked).to.equal(false);
    release();
    await sent;
    expect(inbox).to.have.length(1);
    expect(inbox[0]!.from).to.equal(a.address);
    expect(inbox[0]!.message).to.deep.equal(message);
    expect(inbox[0]!.id).to.match(/^[0-9a-f]{32}$/);
  });

  it("rejects send() with the handler's error text, and keeps going", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob");
    b.onMessage(async (_from, message) => {
      if ((message as { bad?: boolean }).bad) throw new Error("nonce 7 already used");
    });
    await a.dial(b.multiaddrs[0]!);

    const err = await expectRejection(a.send(b.address, { bad: true }));
    expect(err).to.be.instanceOf(P2PError);
    expect(err.message).to.equal("nonce 7 already used");
    expect((err as P2PError).code).to.equal("nack");
    await a.send(b.address, { bad: false });
  });

  it("rejects sends that can't go out: not connected, too large, not plain data", async () => {
    const { transport: a } = await startTransport("alice", { maxMessageBytes: 1024 });
    const { transport: b } = await startTransport("bob");
    b.onMessage(async () => {});
    expect(((await expectRejection(a.send(b.address, {}))) as P2PError).code).to.equal("not-connected");
    await a.dial(b.multiaddrs[0]!);
    expect(((await expectRejection(a.send(b.address, { blob: "x".repeat(2000) }))) as P2PError).code).to.equal("too-large");
    expect(((await expectRejection(a.send(b.address, { when: new Date() }))) as P2PError).code).to.equal("encode");
    await a.send(b.address, { ok: 1 });
  });

  it("delivers 1,000 pipelined messages in order, one handler call at a time", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob");
    const seen: number[] = [];
    let active = 0;
    let maxActive = 0;
    b.onMessage(async (_from, message) => {
      active++;
      maxActive = Math.max(maxActive, active);
      if (seen.length % 100 === 0) await sleep(1);
      seen.push(Number((message as { seq: bigint }).seq));
      active--;
    });
    await a.dial(b.multiaddrs[0]!);
    await Promise.all(Array.from({ length: 1000 }, (_, i) => a.send(b.address, { seq: BigInt(i) })));
    expect(seen).to.deep.equal(Array.from({ length: 1000 }, (_, i) => i));
    expect(maxActive).to.equal(1);
  });

  it("with pipelineHandler, starts calls in order before earlier ones finish and acks each after its own call", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob", { pipelineHandler: true });
    const started: number[] = [];
    const finished: number[] = [];
    let active = 0;
    let maxActive = 0;
    b.onMessage(async (_from, message) => {
      const seq = Number((message as { seq: bigint }).seq);
      started.push(seq);
      active++;
      maxActive = Math.max(maxActive, active);
      // Later calls finish sooner: the acks must still go out in order, each after its own call.
      await sleep(seq % 7 === 0 ? 20 : 1);
      finished.push(seq);
      active--;
      if (seq === 13) throw new Error("refused 13");
    });
    await a.dial(b.multiaddrs[0]!);
    const acked: number[] = [];
    const results = await Promise.allSettled(
      Array.from({ length: 600 }, (_, i) =>
        a.send(b.address, { seq: BigInt(i) }).then(() => {
          expect(finished).to.include(i);
          acked.push(i);
        }),
      ),
    );
    expect(started).to.deep.equal(Array.from({ length: 600 }, (_, i) => i));
    expect(maxActive).to.be.greaterThan(1);
    expect(acked).to.deep.equal(Array.from({ length: 600 }, (_, i) => i).filter((i) => i !== 13));
    const thirteen = results[13];
    expect(thirteen?.status).to.equal("rejected");
    expect(thirteen?.status === "rejected" ? (thirteen.reason as P2PError).code : "").to.equal("nack");
  });

  it("with pipelineHandler, a message arriving while an earlier call is still running is handled at once", async () => {
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob", { pipelineHandler: true });
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
    let firstCalled!: () => void;
    const firstStarted = new Promise<void>((resolve) => (firstCalled = resolve));
    let secondCalled!: () => void;
    const secondStarted = new Promise<void>((resolve) => (secondCalled = resolve));
    b.onMessage(async (_from, message) => {
      if ((message as { n: number }).n === 1) {
        firstCalled();
        await firstHeld;
      } else secondCalled();
    });
    await a.dial(b.multiaddrs[0]!);
    const first = a.send(b.address, { n: 1 });
    await firstStarted;
    // The first call is now pending (its ack waits for it); the second message comes after that.
    const second = a.send(b.address, { n: 2 });
    const raced = await Promise.race([secondStarted.then(() => "second handled"), sleep(2000).then(() => "second waited")]);
    releaseFirst();
    await Promise.all([first, second]);
    expect(raced).to.equal("second handled");
  });

  it("an ack waits for a message to the same peer and leaves with it; alone, it leaves after ackDelayMs", async () => {
    const { transport: a } = await startTransport("alice", { ackDelayMs: 2_000 });
    const { transport: b } = await startTransport("bob", { ackDelayMs: 2_000 });
    const gotBack: unknown[] = [];
    a.onMessage(async (_from, message) => void gotBack.push(message));
    let answer = true;
    b.onMessage(async (from) => {
      // Not awaited: b's reply leaves in this turn's flush, and the ack for a's message with it.
      if (answer) void b.send(from, { reply: 1 }).catch(() => undefined);
    });
    await a.dial(b.multiaddrs[0]!);
    let t0 = performance.now();
    await a.send(b.address, { ask: 1 });
    expect(performance.now() - t0, "carried by b's message").to.be.below(1_000);
    await waitFor("the reply", () => gotBack.length === 1);
    answer = false;
    t0 = performance.now();
    await a.send(b.address, { ask: 2 });
    expect(performance.now() - t0, "alone: after the delay").to.be.at.least(1_900);
    expect(() => createTransport({ signer: signerFor("carol"), verifier: backend.verifier, privateKey: peerSeed("carol"), ackDelayMs: -1 })).to.throw(/ackDelayMs/);
  });

  it("keeps order and loses nothing when a slow handler makes the sender wait (16 MB pipelined)", async () => {
    const { transport: a } = await startTransport("alice", { sendTimeoutMs: 60_000 });
    const { transport: b } = await startTransport("bob");
    const seen: number[] = [];
    b.onMessage(async (_from, message) => {
      const { i } = message as { i: number };
      if (i % 250 === 0) await sleep(2);
      seen.push(i);
    });
    await a.dial(b.multiaddrs[0]!);
    const body = "z".repeat(4000);
    await Promise.all(Array.from({ length: 4000 }, (_, i) => a.send(b.address, { i, body })));
    expect(seen).to.deep.equal(Array.from({ length: 4000 }, (_, i) => i));
    // Both ends read noise's frame lengths without a new error per chunk (cheapenNoiseFraming):
    // this fails if libp2p's internals move and the change silently stops applying.
    for (const t of [a, b]) {
      const conns = (t as unknown as { node: Libp2p }).node.getConnections();
      expect(conns.length).to.be.greaterThan(0);
      for (const conn of conns) {
        const decode = (conn as unknown as { muxer: { maConn: { decoder: { lengthDecoder: object } } } }).muxer.maConn.decoder.lengthDecoder;
        expect(Symbol.for("starling.cheapNoisePrefix") in decode, "noise length decoder replaced").to.equal(true);
      }
    }
  });

  it("finds a dead connection with yamux pings, without opening a stream, and closes it", async () => {
    const a = await startRawNode("alice");
    const b = await startRawNode("bob");
    const conn = await a.dial(b.getMultiaddrs()[0]!);
    const liveness = new ConnectionLiveness(() => a.getConnections(), 100, 300);
    liveness.start();
    try {
      await waitFor("a round-trip time", () => typeof conn.rtt === "number" && conn.rtt >= 0, 3000);
      // libp2p's own monitor would have opened a stream per ping on both ends.
      expect(conn.streams.length).to.equal(0);
      expect(b.getConnections()[0]!.streams.length).to.equal(0);
      expect(conn.status).to.equal("open");
      // Bob stops reading: the TCP connection stays up but nothing is answered any more.
      const socket = (b.getConnections()[0] as unknown as { maConn: { socket?: Socket } }).maConn.socket;
      expect(socket, "bob's TCP socket").to.be.instanceOf(Socket);
      socket!.pause();
      await waitFor("the dead connection to be closed", () => conn.status !== "open", 3000);
    } finally {
      liveness.stop();
    }
  });

  it("refuses a ping interval that is not positive", () => {
    expect(() => new ConnectionLiveness(() => [], 0)).to.throw(RangeError, /positive/);
  });

  describe("hello", () => {
    it("rejects a hello signed by another key and closes the connection", async () => {
      const { transport: b } = await startTransport("bob");
      const raw = await startRawNode("mallory");
      const peers: string[] = [];
      b.onPeer((address) => peers.push(address));
      const conn0 = await raw.dial(multiaddr(b.multiaddrs[0]!));
      // Claims alice's address but signs with mallory's key.
      const forged = { ...makeHello({ signer: signerFor("mallory"), version: 1, localPeer: raw.peerId, remotePeer: conn0.remotePeer }), address: signerFor("alice").address };
      const { conn, reply } = await rawHello(raw, b, forged);
      expect(conn.id).to.equal(conn0.id);
      expect(reply).to.be.instanceOf(Error);
      await waitForClose(conn);
      expect(b.addressOf(raw.peerId.toString())).to.equal(undefined);
      expect(b.isConnected(signerFor("alice").address)).to.equal(false);
      expect(peers).to.deep.equal([]);
    });

    it("rejects a hello replayed from another connection", async () => {
      const { transport: a } = await startTransport("alice");
      const { transport: b } = await startTransport("bob");
      const raw = await startRawNode("mallory");
      // Mallory gets a genuine hello from alice by letting alice dial her.
      let captured: Hello | undefined;
      await raw.handle(HELLO_PROTOCOL, async (stream: Stream) => {
        const lp = lpStream(stream);
        captured = parseHello((await lp.read()).subarray());
        stream.abort(new Error("done"));
      });
      await expectRejection(a.dial(raw.getMultiaddrs()[0]!.toString()));
      expect(captured?.address).to.equal(a.address);
      const stolen = captured!;

      // As is: names alice's peer id, not mallory's.
      const first = await rawHello(raw, b, stolen);
      expect(first.reply).to.be.instanceOf(Error);
      await waitForClose(first.conn);

      // Rewritten to name mallory -> bob: alice's signature no longer covers it.
      const rewritten = { ...stolen, peerId: raw.peerId.toString(), remotePeerId: b.peerId };
      const second = await rawHello(raw, b, rewritten);
      expect(second.reply).to.be.instanceOf(Error);
      await waitForClose(second.conn);
      expect(b.isConnected(a.address)).to.equal(false);
    });

    it("rejects a stale hello", async () => {
      const { transport: b } = await startTransport("bob");
      const raw = await startRawNode("mallory");
      const conn0 = await raw.dial(multiaddr(b.multiaddrs[0]!));
      const stale = makeHello({
        signer: signerFor("mallory"),
        version: 1,
        localPeer: raw.peerId,
        remotePeer: conn0.remotePeer,
        timestamp: Date.now() - HELLO_MAX_SKEW_MS - 60_000,
      });
      const { conn, reply } = await rawHello(raw, b, stale);
      expect(reply).to.be.instanceOf(Error);
      await waitForClose(conn);
      expect(b.isConnected(signerFor("mallory").address)).to.equal(false);
    });

    it("accepts a well-formed hello from a raw node (the raw harness itself is sound)", async () => {
      const { transport: b } = await startTransport("bob");
      const raw = await startRawNode("mallory");
      await rawBound(raw, b, "mallory");
      expect(b.addressOf(raw.peerId.toString())).to.equal(signerFor("mallory").address);
    });

    it("closes a connection that never says hello, and refuses its message streams", async () => {
      const { transport: b } = await startTransport("bob", { helloTimeoutMs: 300 });
      const handled: unknown[] = [];
      b.onMessage(async (_f, m) => {
        handled.push(m);
      });
      const raw = await startRawNode("mallory");
      const conn = await raw.dial(multiaddr(b.multiaddrs[0]!));
      const stream = await conn.newStream(MSG_PROTOCOL);
      stream.send(lengthPrefixed(encodeFrame({ v: 1, kind: "msg", id: "cd".repeat(16), body: "sneaky" })));
      await waitForClose(conn);
      expect(handled).to.deep.equal([]);
    });
  });

  describe("robustness", () => {
    it("drops malformed frames and still delivers the next valid one", async () => {
      const { transport: b, logs } = await startTransport("bob");
      const handled: unknown[] = [];
      b.onMessage(async (_f, m) => {
        handled.push(m);
      });
      const raw = await startRawNode("mallory");
      const conn = await rawBound(raw, b, "mallory");
      const stream = await conn.newStream(MSG_PROTOCOL);
      const lp = lpStream(stream);

      const garbage = [
        utf8.encode("not json at all"),
        new Uint8Array([0xc3, 0x28, 0xa0, 0xa1]),
        utf8.encode(JSON.stringify({ v: 2, kind: "msg", id: "01".repeat(16), body: 1 })),
        utf8.encode(JSON.stringify({ v: 1, kind: "msg", id: "02".repeat(16) })),
        utf8.encode(JSON.stringify({ v: 1, kind: "msg", body: 3 })),
        utf8.encode(JSON.stringify({ v: 1, kind: "shout", id: "03".repeat(16), body: 4 })),
        utf8.encode(JSON.stringify([1, 2, 3])),
        utf8.encode('{"v":1,"kind":"msg","id":"0404040404040404040404040404040404","body":{"$q":1}}'),
        new Uint8Array(0),
        // Deep enough to overflow the stack of a recursive decoder.
        utf8.encode(`{"v":1,"kind":"msg","id":"${"05".repeat(16)}","body":${"[".repeat(100_000)}${"]".repeat(100_000)}}`),
      ];
      const validId = "ee".repeat(16);
      // All in one write, so the valid frame arrives in the same chunk as the garbage.
      stream.send(Buffer.concat([...garbage.map(lengthPrefixed), lengthPrefixed(encodeFrame({ v: 1, kind: "msg", id: validId, body: { after: 1n } }))]));

      const ack = parseFrame((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray());
      expect(ack).to.deep.equal({ v: 1, kind: "ack", id: validId });
      expect(handled).to.deep.equal([{ after: 1n }]);
      expect(logs.filter((l) => l.includes("dropped malformed frame"))).to.have.length(garbage.length);

      // The same stream keeps working.
      const nextId = "ef".repeat(16);
      await lp.write(encodeFrame({ v: 1, kind: "msg", id: nextId, body: "again" }));
      expect(parseFrame((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())).to.deep.equal({ v: 1, kind: "ack", id: nextId });
      expect(handled).to.deep.equal([{ after: 1n }, "again"]);
    });

    it("resets the stream on an oversized frame without reading it, and the connection stays usable", async () => {
      const { transport: b, logs } = await startTransport("bob", { maxMessageBytes: 4096 });
      const handled: unknown[] = [];
      b.onMessage(async (_f, m) => {
        handled.push(m);
      });
      const raw = await startRawNode("mallory");
      const conn = await rawBound(raw, b, "mallory");
      const stream = await conn.newStream(MSG_PROTOCOL);
      const closed = new Promise<Error | undefined>((resolve) => stream.addEventListener("close", (evt) => resolve(evt.error)));
      // Announces 5,000 bytes; only the prefix is sent, so the check can't wait for the body.
      stream.send(lengthPrefixed(new Uint8Array(5000)).subarray(0, 2));
      expect(await closed).to.be.instanceOf(Error);
      expect(logs.some((l) => l.includes("exceeds the 4096-byte limit"))).to.equal(true);

      const again = await conn.newStream(MSG_PROTOCOL);
      const lp = lpStream(again);
      const id = "aa".repeat(16);
      await lp.write(encodeFrame({ v: 1, kind: "msg", id, body: "fine" }));
      expect(parseFrame((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())).to.deep.equal({ v: 1, kind: "ack", id });
      expect(handled).to.deep.equal(["fine"]);
    });

    it("fails a send whose frame the peer finds too large, then recovers on a new stream", async () => {
      const { transport: a } = await startTransport("alice");
      const { transport: b } = await startTransport("bob", { maxMessageBytes: 2048 });
      const handled: unknown[] = [];
      b.onMessage(async (_f, m) => {
        handled.push(m);
      });
      await a.dial(b.multiaddrs[0]!);
      await a.send(b.address, "small");
      const err = await expectRejection(a.send(b.address, "y".repeat(10_000)));
      expect((err as P2PError).code).to.equal("closed");
      await a.send(b.address, "small again");
      expect(handled).to.deep.equal(["small", "small again"]);
    });

    it("survives a throwing handler that isn't even async, and a handler that rejects with a non-Error", async () => {
      const { transport: a } = await startTransport("alice");
      const { transport: b } = await startTransport("bob");
      let n = 0;
      b.onMessage(((_f: Address, _m: unknown) => {
        n++;
        if (n === 1) throw new Error("sync throw");
        if (n === 2) return Promise.reject("plain string");
        return Promise.resolve();
      }) as (from: Address, message: unknown, id: string) => Promise<void>);
      await a.dial(b.multiaddrs[0]!);
      expect((await expectRejection(a.send(b.address, 1))).message).to.equal("sync throw");
      expect((await expectRejection(a.send(b.address, 2))).message).to.equal("plain string");
      await a.send(b.address, 3);
    });

    it("times out a send the peer never answers", async () => {
      const { transport: a } = await startTransport("alice", { sendTimeoutMs: 200 });
      const { transport: b } = await startTransport("bob");
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      b.onMessage(() => gate);
      await a.dial(b.multiaddrs[0]!);
      const err = await expectRejection(a.send(b.address, "slow"));
      expect((err as P2PError).code).to.equal("timeout");
      release();
    });

    it("rejects pending sends when the peer goes away", async () => {
      const { transport: a } = await startTransport("alice");
      const { transport: b } = await startTransport("bob");
      b.onMessage(() => new Promise<void>(() => {}));
      await a.dial(b.multiaddrs[0]!);
      const rejected = expectRejection(a.send(b.address, "never acked"));
      await sleep(50);
      await b.stop();
      expect(((await rejected) as P2PError).code).to.equal("closed");
    });
  });

  describe("reconnect", () => {
    it("redials a remembered peer that restarts on the same port", async () => {
      const { transport: a } = await startTransport("alice");
      const { transport: b1 } = await startTransport("bob");
      const bAddrs = b1.multiaddrs;
      const port = Number(/\/tcp\/(\d+)\//.exec(bAddrs[0]!)![1]);
      await a.connect(b1.address, bAddrs);
      expect(a.isConnected(b1.address)).to.equal(true);

      const down = nextPeerEvent(a, b1.address, "disconnected");
      await b1.stop();
      await down;
      expect(a.isConnected(b1.address)).to.equal(false);
      expect(((await expectRejection(a.send(b1.address, "while down"))) as P2PError).code).to.equal("not-connected");

      const up = nextPeerEvent(a, b1.address, "connected", 15_000);
      const started = Date.now();
      const { transport: b2 } = await startTransport("bob", { listen: [`/ip4/127.0.0.1/tcp/${port}`] });
      const inbox: unknown[] = [];
      b2.onMessage(async (_f, m) => {
        inbox.push(m);
      });
      expect(b2.peerId).to.equal(bAddrs[0]!.split("/p2p/")[1]);
      await up;
      expect(Date.now() - started).to.be.lessThan(5000);
      await a.send(b2.address, { after: "restart" });
      expect(inbox).to.deep.equal([{ after: "restart" }]);
    });

    it("backs off while the peer is down and stops redialling after stop()", async () => {
      const { transport: a, logs } = await startTransport("alice", { redialMinMs: 50, redialMaxMs: 200 });
      const { transport: b } = await startTransport("bob");
      const addrs = b.multiaddrs;
      await a.connect(b.address, addrs);
      await b.stop();
      await waitFor("a few failed redials", () => logs.filter((l) => l.includes("redial of")).length >= 3, 5000);
      const attempts = logs.filter((l) => l.includes("redial of")).map((l) => Number(/attempt (\d+)/.exec(l)![1]));
      expect(attempts.slice(0, 3)).to.deep.equal([1, 2, 3]);
      await a.stop();
      const count = logs.length;
      await sleep(400);
      expect(logs.length).to.equal(count);
    });
  });

  it("leaves no sockets, servers or timers behind after stop()", async () => {
    // Mocha's own timeout timer only appears once the test has yielded.
    await sleep(0);
    const baseline = countResources();
    const { transport: a } = await startTransport("alice");
    const { transport: b } = await startTransport("bob");
    b.onMessage(async () => {});
    await a.connect(b.address, b.multiaddrs);
    await Promise.all(Array.from({ length: 200 }, (_, i) => a.send(b.address, i)));
    await Promise.all([a.stop(), a.stop()]);
    await b.stop();
    // Stopped while starting, and never started.
    const c = createTransport({ signer: signerFor("carol"), verifier: backend.verifier, privateKey: peerSeed("carol") });
    const starting = c.start();
    await c.stop();
    await starting;
    await createTransport({ signer: signerFor("dave"), verifier: backend.verifier, privateKey: peerSeed("dave") }).stop();
    await sleep(50);
    const after = countResources();
    for (const kind of ["TCPSocketWrap", "TCPServerWrap", "Timeout", "Immediate"]) {
      expect(after[kind] ?? 0, kind).to.be.at.most(baseline[kind] ?? 0);
    }
  });
});

function countResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}
