/**
 * Payment-channel messaging between Ethereum addresses over libp2p.
 *
 * Every connection starts with a signed hello on /starling/hello/1 binding the remote peer id to
 * an Ethereum address; until then nothing else is accepted, and a connection whose hello fails or
 * doesn't come is closed. Messages then travel on /starling/msg/1: each side opens one long-lived
 * stream towards the other and pipelines its messages on it; the peer answers each with an ack
 * (handler done) or a nack (handler threw) on the same stream.
 *
 * A peer's messages are handled one at a time, in the order sent. Every frame is handed to the
 * handler, duplicates included (a send that timed out may still have been handled, and a resend
 * carries a new id): idempotency is the handler's job. Malformed frames are dropped with a log
 * line and the stream carries on; a frame over maxMessageBytes or a garbled length prefix resets
 * the stream, as framing can't be recovered: the sender's sends in flight on it reject with
 * "closed" and its next send opens a new stream.
 */
import "./polyfill.js";
import { randomBytes } from "node:crypto";
import type { Connection, PeerId, Stream } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import type { Signer, Verifier } from "../signer/index.js";
import { FramedStream, LAZY_FRAME_MS } from "./channel.js";
import { FRAME_VERSION, MAX_ERROR_CHARS, encodeFrame, lengthPrefixed, type Frame } from "./frames.js";
import { HELLO_MAX_BYTES, HELLO_PROTOCOL, HelloError, encodeHello, makeHello, parseHello, verifyHello } from "./hello.js";
import { DEFAULT_LISTEN, cancelStrayTimers, cheapenNoiseFraming, coalesceSocketWrites, createNode } from "./node.js";
import {
  P2PError,
  type Address,
  type ConnectionLimits,
  type MessageHandler,
  type PeerEvent,
  type PeerListener,
  type TransportLogger,
  type TransportOptions,
} from "./types.js";

export const MSG_PROTOCOL = "/starling/msg/1";

const DEFAULTS = {
  maxMessageBytes: 1024 * 1024,
  sendTimeoutMs: 10_000,
  helloTimeoutMs: 10_000,
  redialMinMs: 1_000,
  redialMaxMs: 30_000,
  protocolVersion: 1,
};

/** Inbound frames waiting for the handler beyond which we stop reading (yamux then stops the sender). */
const PAUSE_FRAMES = 1024;
const PAUSE_BYTES = 4 * 1024 * 1024;
/** Pipelined handler calls per inbound stream whose reply is not written yet, at most. */
const MAX_PIPELINED = 256;

const noopLogger: TransportLogger = { info() {}, warn() {}, error() {} };

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: Error): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Callers that never await it must not produce an unhandled rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

// A randomBytes call per id costs ~10 µs, a third of the whole per-message cost, so ids come from a pool.
const ID_BYTES = 16;
const ID_POOL_SIZE = 256;
let idPool = Buffer.alloc(0);
let idPoolOffset = 0;

/** Random 16-byte message id, hex. */
function newMessageId(): string {
  if (idPoolOffset >= idPool.length) {
    idPool = randomBytes(ID_BYTES * ID_POOL_SIZE);
    idPoolOffset = 0;
  }
  const id = idPool.toString("hex", idPoolOffset, idPoolOffset + ID_BYTES);
  idPoolOffset += ID_BYTES;
  return id;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function normalizeAddress(address: string): Address {
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) throw new P2PError(`not an Ethereum address: ${address}`, "not-connected");
  return address.toLowerCase() as Address;
}

/** Hello state of one libp2p connection. */
interface ConnState {
  conn: Connection;
  peerKey: string;
  /** Set once the hello succeeded. */
  address: Address | undefined;
  settled: boolean;
  ready: Deferred<Address>;
  timer: NodeJS.Timeout | undefined;
}

interface PeerEntry {
  peerId: PeerId;
  address: Address;
  conns: Set<string>;
}

interface AddressEntry {
  /** Peer id (string) messages to this address go to: the latest one bound. */
  peerKey: string;
  conns: Set<string>;
}

interface Remembered {
  multiaddrs: Multiaddr[];
  attempt: number;
  timer: NodeJS.Timeout | undefined;
  dialing: Promise<void> | undefined;
}

interface PendingSend {
  resolve(): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

interface ChannelDeps {
  maxFrameBytes: number;
  logger: TransportLogger;
  /** Shared by the streams between this node and the peer (acks ride with messages; see FramedStream). */
  group: string;
  lazyMs: number;
}

/** Our stream towards one peer: sends msg frames, settles send() promises from acks/nacks. */
class OutChannel {
  private readonly pending = new Map<string, PendingSend>();
  private io: FramedStream | undefined;
  private beforeOpen: Uint8Array[] | undefined = [];
  private done = false;

  constructor(
    private readonly address: Address,
    private readonly deps: ChannelDeps,
    private readonly onDone: (channel: OutChannel) => void,
  ) {}

  send(id: string, payload: Uint8Array, timeoutMs: number): Promise<void> {
    if (this.done) return Promise.reject(new P2PError(`stream to ${this.address} closed`, "closed"));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new P2PError(`no ack from ${this.address} within ${timeoutMs} ms`, "timeout"));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      const prefixed = lengthPrefixed(payload);
      if (this.io !== undefined) this.io.write(prefixed);
      else this.beforeOpen?.push(prefixed);
    });
  }

  attach(stream: Stream): void {
    if (this.done) {
      stream.abort(new Error("channel already closed"));
      return;
    }
    this.io = new FramedStream({
      stream,
      maxFrameBytes: this.deps.maxFrameBytes,
      logger: this.deps.logger,
      label: `to ${this.address}`,
      group: this.deps.group,
      lazyMs: this.deps.lazyMs,
      onFrame: (frame) => this.onFrame(frame),
      // No more acks can come once the remote stops writing.
      onEnd: () => this.io?.abort(new Error("remote closed its end")),
      onClose: (error) => this.fail(new P2PError(`stream to ${this.address} closed: ${error.message}`, "closed")),
    });
    const queued = this.beforeOpen ?? [];
    this.beforeOpen = undefined;
    for (const prefixed of queued) this.io.write(prefixed);
  }

  /** Rejects every pending send with `error` and retires the channel. */
  fail(error: P2PError): void {
    if (this.done) return;
    this.done = true;
    this.beforeOpen = undefined;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(error);
    }
    this.io?.abort(error);
    this.onDone(this);
  }

  private onFrame(frame: Frame): void {
    if (frame.kind === "msg") {
      this.deps.logger.warn(`p2p: dropped msg frame on our own stream to ${this.address}`);
      return;
    }
    const p = this.pending.get(frame.id);
    if (p === undefined) {
      // Normal after a timeout; otherwise the peer is confused.
      this.deps.logger.info(`p2p: ${frame.kind} for unknown or expired id ${frame.id} from ${this.address}`);
      return;
    }
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (frame.kind === "ack") p.resolve();
    else p.reject(new P2PError(frame.error, "nack"));
  }
}

/** A peer's stream towards us: runs the handler per msg frame, in order, and answers each. */
class InChannel {
  private readonly io: FramedStream;
  private queue: Array<{ id: string; body: unknown; size: number } | undefined> = [];
  private head = 0;
  private queuedBytes = 0;
  private running = false;
  private paused = false;
  private ended = false;
  /** Pipelined mode: handler calls started whose reply is not written yet, and the tail of the replies in order. */
  private inFlight = 0;
  private replies: Promise<void> = Promise.resolve();
  /** Set while run() waits for replies with nothing queued: a frame arriving meanwhile is handled at once. */
  private wake: (() => void) | null = null;

  constructor(
    stream: Stream,
    private readonly from: Address,
    private readonly deps: ChannelDeps & { handler(): MessageHandler | undefined; pipeline: boolean },
    private readonly onDone: (channel: InChannel) => void,
  ) {
    this.io = new FramedStream({
      stream,
      maxFrameBytes: deps.maxFrameBytes,
      logger: deps.logger,
      label: `from ${from}`,
      group: deps.group,
      lazyMs: deps.lazyMs,
      onFrame: (frame, size) => this.onFrame(frame, size),
      onEnd: () => {
        this.ended = true;
        if (!this.running) void this.io.close();
      },
      onClose: () => this.onDone(this),
    });
  }

  abort(reason: Error): void {
    this.io.abort(reason);
  }

  private onFrame(frame: Frame, size: number): void {
    if (frame.kind !== "msg") {
      this.deps.logger.warn(`p2p: dropped ${frame.kind} frame on ${this.from}'s stream to us`);
      return;
    }
    this.queue.push({ id: frame.id, body: frame.body, size });
    this.queuedBytes += size;
    if (!this.paused && (this.queue.length - this.head + this.inFlight >= PAUSE_FRAMES || this.queuedBytes >= PAUSE_BYTES)) {
      this.paused = true;
      this.io.pause();
    }
    if (!this.running) void this.run();
    else if (this.wake !== null) this.wake();
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      for (;;) {
        while (this.head < this.queue.length && this.io.isOpen) {
          const item = this.queue[this.head]!;
          // Index-based queue: shift() is O(n) and a resumed stream can deliver tens of thousands of frames at once.
          this.queue[this.head++] = undefined;
          this.queuedBytes -= item.size;
          if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
            this.queue = this.queue.slice(this.head);
            this.head = 0;
          }
          if (this.deps.pipeline) {
            // The handler is called now, before the previous call has finished; replies keep the order.
            const reply = this.reply(item.id, item.body);
            this.inFlight++;
            this.replies = this.replies.then(async () => {
              const frame = await reply;
              this.inFlight--;
              this.write(frame);
            });
            if (this.inFlight >= MAX_PIPELINED) await this.replies;
          } else {
            this.write(await this.reply(item.id, item.body));
          }
          this.maybeResume();
        }
        // Acks still to write (pipelined): wait for them, or for the next frame, whichever is first.
        // Waiting for the replies alone would hold a message that arrives while the previous one is
        // being persisted until that write is done.
        if (this.inFlight === 0 || !this.io.isOpen) break;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          void this.replies.then(resolve);
        });
        this.wake = null;
        this.maybeResume();
      }
    } finally {
      this.running = false;
      if (this.head >= this.queue.length) {
        this.queue = [];
        this.head = 0;
      }
      if (this.ended && this.io.isOpen) void this.io.close();
    }
  }

  /** An ack may wait for a message to the peer to ride with; a nack goes at once. */
  private write(frame: Frame): void {
    if (frame.kind === "ack") this.io.writeLazyFrame(encodeFrame(frame));
    else this.io.writeFrame(encodeFrame(frame));
  }

  private maybeResume(): void {
    if (this.paused && this.queue.length - this.head + this.inFlight <= PAUSE_FRAMES / 4 && this.queuedBytes <= PAUSE_BYTES / 4) {
      this.paused = false;
      this.io.resume();
    }
  }

  /** Runs the handler (its synchronous part right away) and makes the ack or nack for it. */
  private async reply(id: string, body: unknown): Promise<Frame> {
    const handler = this.deps.handler();
    let reply: Frame;
    if (handler === undefined) {
      reply = { v: FRAME_VERSION, kind: "nack", id, error: "no message handler registered" };
    } else {
      try {
        await handler(this.from, body, id);
        reply = { v: FRAME_VERSION, kind: "ack", id };
      } catch (err) {
        const text = errorText(err).slice(0, MAX_ERROR_CHARS);
        this.deps.logger.info(`p2p: handler rejected message ${id} from ${this.from}: ${text}`);
        reply = { v: FRAME_VERSION, kind: "nack", id, error: text };
      }
    }
    return reply;
  }
}

export class P2PTransport {
  private readonly signer: Signer;
  private readonly verifier: Verifier;
  private readonly seed: Uint8Array;
  private readonly listen: string[];
  private readonly maxMessageBytes: number;
  private readonly sendTimeoutMs: number;
  private readonly helloTimeoutMs: number;
  private readonly redialMinMs: number;
  private readonly redialMaxMs: number;
  private readonly protocolVersion: number;
  private readonly logger: TransportLogger;
  private readonly limits: ConnectionLimits | undefined;
  private readonly pipelineHandler: boolean;
  private readonly ackDelayMs: number;

  private node: Libp2p | undefined;
  private state: "new" | "starting" | "running" | "stopping" | "stopped" = "new";
  private readonly conns = new Map<string, ConnState>();
  private readonly peers = new Map<string, PeerEntry>();
  private readonly addresses = new Map<Address, AddressEntry>();
  private readonly out = new Map<string, OutChannel>();
  private readonly inbound = new Set<InChannel>();
  private readonly remembered = new Map<Address, Remembered>();
  private readonly peerListeners = new Set<PeerListener>();
  private handler: MessageHandler | undefined;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;

  constructor(options: TransportOptions) {
    if (!(options.privateKey instanceof Uint8Array) || options.privateKey.length !== 32) {
      throw new Error("createTransport: privateKey must be a 32-byte seed");
    }
    this.signer = options.signer;
    this.verifier = options.verifier;
    this.seed = options.privateKey.slice();
    this.listen = options.listen ?? DEFAULT_LISTEN;
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
    this.sendTimeoutMs = options.sendTimeoutMs ?? DEFAULTS.sendTimeoutMs;
    this.helloTimeoutMs = options.helloTimeoutMs ?? DEFAULTS.helloTimeoutMs;
    this.redialMinMs = options.redialMinMs ?? DEFAULTS.redialMinMs;
    this.redialMaxMs = options.redialMaxMs ?? DEFAULTS.redialMaxMs;
    this.protocolVersion = options.protocolVersion ?? DEFAULTS.protocolVersion;
    this.logger = options.logger ?? noopLogger;
    this.limits = options.limits;
    this.pipelineHandler = options.pipelineHandler ?? false;
    this.ackDelayMs = options.ackDelayMs ?? LAZY_FRAME_MS;
    if (!Number.isFinite(this.ackDelayMs) || this.ackDelayMs < 0) throw new Error("createTransport: ackDelayMs must be a number >= 0");
    if (!Number.isSafeInteger(this.maxMessageBytes) || this.maxMessageBytes < 64) throw new Error("createTransport: maxMessageBytes must be an integer >= 64");
    for (const [name, value] of Object.entries({ sendTimeoutMs: this.sendTimeoutMs, helloTimeoutMs: this.helloTimeoutMs, redialMinMs: this.redialMinMs, redialMaxMs: this.redialMaxMs })) {
      if (!Number.isFinite(value) || value <= 0) throw new Error(`createTransport: ${name} must be a positive number`);
    }
  }

  /** Our Ethereum address, as announced in hellos. */
  get address(): Address {
    return this.signer.address;
  }

  /** Our libp2p peer id (base58). */
  get peerId(): string {
    return this.requireNode().peerId.toString();
  }

  /** Listen addresses, each ending in /p2p/<peerId>, ready to give to dial(). */
  get multiaddrs(): string[] {
    const node = this.requireNode();
    const self = node.peerId.toString();
    return node.getMultiaddrs().map((ma) => {
      const text = ma.toString();
      return text.includes("/p2p/") ? text : `${text}/p2p/${self}`;
    });
  }

  /** Creates the libp2p node and starts listening. Only once per transport. */
  start(): Promise<void> {
    if (this.state !== "new") return Promise.reject(new Error(`P2PTransport.start: transport is ${this.state}`));
    this.state = "starting";
    this.starting = this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    try {
      const node = await createNode({
        seed: this.seed,
        listen: this.listen,
        maxStreamWindow: Math.max(4 * 1024 * 1024, 2 * this.maxMessageBytes),
        ...(this.limits ? { limits: this.limits } : {}),
      });
      this.node = node;
      node.addEventListener("connection:open", (evt) => this.onConnectionOpen(evt.detail));
      node.addEventListener("connection:close", (evt) => this.onConnectionClose(evt.detail));
      await node.handle(HELLO_PROTOCOL, (stream, conn) => this.onHelloStream(stream, conn), { maxInboundStreams: 2, maxOutboundStreams: 2 });
      await node.handle(MSG_PROTOCOL, (stream, conn) => this.onMsgStream(stream, conn), { maxInboundStreams: 8, maxOutboundStreams: 8 });
      await node.start();
      if (this.stopping !== undefined) return; // stop() was called meanwhile and takes it from here
      this.state = "running";
      this.logger.info(`p2p: ${this.address} listening on ${this.multiaddrs.join(", ")}`);
    } catch (err) {
      this.state = "stopped";
      try {
        if (this.node !== undefined) {
          await this.node.stop();
          cancelStrayTimers(this.node);
        }
      } catch {
        // the start error is the one worth reporting
      }
      throw err;
    }
  }

  /**
   * Closes every connection and listener and cancels every timer; pending sends reject with
   * "stopped" and no onPeer events fire from here on. Safe to call more than once.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.starting !== undefined) await this.starting.catch(() => {});
    // Never started, or start() failed and cleaned up after itself.
    if (this.node === undefined || this.state === "stopped" || this.state === "new") {
      this.state = "stopped";
      return;
    }
    this.state = "stopping";
    for (const r of this.remembered.values()) {
      if (r.timer !== undefined) clearTimeout(r.timer);
      r.timer = undefined;
    }
    this.remembered.clear();
    const stopped = new P2PError("transport stopped", "stopped");
    for (const ch of [...this.out.values()]) ch.fail(stopped);
    for (const ch of [...this.inbound]) ch.abort(stopped);
    for (const st of this.conns.values()) this.settleFailed(st, stopped);
    try {
      if (this.node !== undefined) {
        await this.node.stop();
        cancelStrayTimers(this.node);
      }
    } finally {
      this.conns.clear();
      this.peers.clear();
      this.addresses.clear();
      this.state = "stopped";
    }
  }

  /** Sets the handler for incoming messages (replacing any previous one). */
  onMessage(handler: MessageHandler): void {
    this.handler = handler;
  }

  /**
   * Listens for an address gaining its first hello-bound connection or losing its last one.
   * Returns a function that removes the listener.
   */
  onPeer(listener: PeerListener): () => void {
    this.peerListeners.add(listener);
    return () => this.peerListeners.delete(listener);
  }

  /** Address bound to a connected peer id, if any. */
  addressOf(peerId: string): Address | undefined {
    return this.peers.get(peerId)?.address;
  }

  /** Peer id messages to `address` go to, if connected. */
  peerOf(address: string): string | undefined {
    return this.addresses.get(address.toLowerCase() as Address)?.peerKey;
  }

  isConnected(address: string): boolean {
    return this.addresses.has(address.toLowerCase() as Address);
  }

  /** Addresses with at least one hello-bound connection. */
  connectedAddresses(): Address[] {
    return [...this.addresses.keys()];
  }

  /** Dials `ma` and returns the remote's Ethereum address once the hello succeeded. */
  async dial(ma: string): Promise<Address> {
    const node = this.requireRunning();
    const conn = await node.dial(multiaddr(ma));
    return this.connState(conn).ready.promise;
  }

  /**
   * Remembers where `address` lives and connects if not connected. Resolves once connected;
   * rejects if this first attempt fails, but the address stays remembered and is redialled with
   * backoff, as it is whenever its connection drops, until forget() or stop().
   */
  async connect(address: string, multiaddrs: string[]): Promise<void> {
    this.requireRunning();
    const target = normalizeAddress(address);
    if (multiaddrs.length === 0) throw new Error("connect: no multiaddrs given");
    const parsed = multiaddrs.map((m) => multiaddr(m));
    let r = this.remembered.get(target);
    if (r === undefined) {
      r = { multiaddrs: parsed, attempt: 0, timer: undefined, dialing: undefined };
      this.remembered.set(target, r);
    } else {
      r.multiaddrs = parsed;
    }
    if (this.addresses.has(target)) return;
    await this.redial(target, r);
  }

  /** Stops redialling `address`; an existing connection is left alone. */
  forget(address: string): void {
    const target = address.toLowerCase() as Address;
    const r = this.remembered.get(target);
    if (r?.timer !== undefined) clearTimeout(r.timer);
    this.remembered.delete(target);
  }

  /**
   * Sends `message` to `to` and resolves once the peer's handler finished with it. Rejects with a
   * {@link P2PError}: "not-connected", "timeout", "nack" (message = the peer's error text),
   * "closed", "too-large", "encode" or "stopped". Messages to one address are written in call order.
   */
  send(to: string, message: unknown): Promise<void> {
    try {
      if (this.state !== "running") throw new P2PError("transport not running", "stopped");
      if (message === undefined) throw new P2PError("cannot send undefined", "encode");
      const address = normalizeAddress(to);
      const id = newMessageId();
      let payload: Uint8Array;
      try {
        payload = encodeFrame({ v: FRAME_VERSION, kind: "msg", id, body: message });
      } catch (err) {
        throw new P2PError(`cannot encode message: ${errorText(err)}`, "encode");
      }
      if (payload.length > this.maxMessageBytes) {
        throw new P2PError(`message of ${payload.length} bytes exceeds the ${this.maxMessageBytes}-byte limit`, "too-large");
      }
      const entry = this.addresses.get(address);
      if (entry === undefined) throw new P2PError(`not connected to ${address}`, "not-connected");
      return this.outChannel(entry.peerKey, address).send(id, payload, this.sendTimeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // --- connections and hello -------------------------------------------------------------

  private requireNode(): Libp2p {
    if (this.node === undefined) throw new Error("P2PTransport: not started");
    return this.node;
  }

  private requireRunning(): Libp2p {
    if (this.state !== "running" || this.node === undefined) throw new P2PError("transport not running", "stopped");
    return this.node;
  }

  private onConnectionOpen(conn: Connection): void {
    if (this.state !== "running" && this.state !== "starting") {
      conn.abort(new Error("transport stopping"));
      return;
    }
    coalesceSocketWrites(conn);
    cheapenNoiseFraming(conn);
    this.connState(conn);
  }

  /** The hello state of `conn`, created (and the hello started, if we dialled) on first sight. */
  private connState(conn: Connection): ConnState {
    let st = this.conns.get(conn.id);
    if (st !== undefined) return st;
    const created: ConnState = {
      conn,
      peerKey: conn.remotePeer.toString(),
      address: undefined,
      settled: false,
      ready: deferred<Address>(),
      timer: undefined,
    };
    if (conn.status !== "open") {
      // Its close event has been or is being dispatched, so it must not be registered.
      this.settleFailed(created, new P2PError("connection closed", "hello"));
      return created;
    }
    created.timer = setTimeout(() => this.failConn(created, `no valid hello within ${this.helloTimeoutMs} ms`), this.helloTimeoutMs);
    this.conns.set(conn.id, created);
    st = created;
    if (conn.direction === "outbound") void this.helloAsDialer(created);
    return st;
  }

  private async helloAsDialer(st: ConnState): Promise<void> {
    const node = this.requireNode();
    const signal = AbortSignal.timeout(this.helloTimeoutMs);
    let stream: Stream | undefined;
    try {
      stream = await st.conn.newStream(HELLO_PROTOCOL, { signal });
      const lp = lpStream(stream, { maxDataLength: HELLO_MAX_BYTES });
      const hello = makeHello({ signer: this.signer, version: this.protocolVersion, localPeer: node.peerId, remotePeer: st.conn.remotePeer });
      await lp.write(encodeHello(hello), { signal });
      const reply = parseHello((await lp.read({ signal })).subarray());
      const address = verifyHello(reply, { verifier: this.verifier, version: this.protocolVersion, localPeer: node.peerId, remotePeer: st.conn.remotePeer });
      this.bindConn(st, address);
      await stream.close({ signal }).catch(() => {});
    } catch (err) {
      stream?.abort(err instanceof Error ? err : new Error(String(err)));
      this.failConn(st, `hello to ${st.peerKey} failed: ${errorText(err)}`);
    }
  }

  private async onHelloStream(stream: Stream, conn: Connection): Promise<void> {
    const node = this.requireNode();
    const st = this.connState(conn);
    if (conn.direction === "outbound" || st.settled) {
      // Only the dialer speaks first, and only once per connection.
      stream.abort(new Error("unexpected hello"));
      return;
    }
    const signal = AbortSignal.timeout(this.helloTimeoutMs);
    try {
      const lp = lpStream(stream, { maxDataLength: HELLO_MAX_BYTES });
      const hello = parseHello((await lp.read({ signal })).subarray());
      const address = verifyHello(hello, { verifier: this.verifier, version: this.protocolVersion, localPeer: node.peerId, remotePeer: conn.remotePeer });
      this.bindConn(st, address);
      const reply = makeHello({ signer: this.signer, version: this.protocolVersion, localPeer: node.peerId, remotePeer: conn.remotePeer });
      await lp.write(encodeHello(reply), { signal });
      await stream.close({ signal }).catch(() => {});
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      this.failConn(st, `hello from ${st.peerKey} (${conn.remoteAddr.toString()}) rejected: ${errorText(err)}`);
    }
  }

  private bindConn(st: ConnState, address: Address): void {
    if (st.settled) throw new HelloError("connection already settled");
    const existing = this.peers.get(st.peerKey);
    if (existing !== undefined && existing.address !== address) {
      throw new HelloError(`peer is already bound to ${existing.address}, now claims ${address}`);
    }
    st.settled = true;
    st.address = address;
    if (st.timer !== undefined) clearTimeout(st.timer);
    st.timer = undefined;

    if (existing === undefined) this.peers.set(st.peerKey, { peerId: st.conn.remotePeer, address, conns: new Set([st.conn.id]) });
    else existing.conns.add(st.conn.id);

    let entry = this.addresses.get(address);
    const first = entry === undefined;
    if (entry === undefined) {
      entry = { peerKey: st.peerKey, conns: new Set() };
      this.addresses.set(address, entry);
    }
    if (entry.peerKey !== st.peerKey) {
      // Same key on a new peer id (e.g. the node restarted with a new identity): prefer the newest.
      this.out.get(entry.peerKey)?.fail(new P2PError(`${address} moved to another peer`, "closed"));
      entry.peerKey = st.peerKey;
    }
    entry.conns.add(st.conn.id);
    st.ready.resolve(address);
    this.logger.info(`p2p: ${st.conn.direction} connection ${st.conn.id} bound to ${address} (${st.peerKey})`);
    if (first) this.onConnected(address);
  }

  private settleFailed(st: ConnState, error: Error): void {
    if (st.timer !== undefined) clearTimeout(st.timer);
    st.timer = undefined;
    if (st.settled) return;
    st.settled = true;
    st.ready.reject(error);
  }

  private failConn(st: ConnState, reason: string): void {
    if (this.state === "running") this.logger.warn(`p2p: closing connection ${st.conn.id}: ${reason}`);
    this.settleFailed(st, new P2PError(reason, "hello"));
    try {
      st.conn.abort(new Error(reason));
    } catch {
      // already closed
    }
  }

  private onConnectionClose(conn: Connection): void {
    const st = this.conns.get(conn.id);
    if (st === undefined) return;
    this.conns.delete(conn.id);
    this.settleFailed(st, new P2PError("connection closed during hello", "hello"));
    const address = st.address;
    if (address === undefined) return;

    const peer = this.peers.get(st.peerKey);
    if (peer !== undefined) {
      peer.conns.delete(conn.id);
      if (peer.conns.size === 0) this.peers.delete(st.peerKey);
    }
    const entry = this.addresses.get(address);
    if (entry === undefined) return;
    entry.conns.delete(conn.id);
    if (entry.conns.size === 0) {
      this.addresses.delete(address);
      this.logger.info(`p2p: disconnected from ${address}`);
      this.onDisconnected(address);
    } else if (entry.peerKey === st.peerKey && !this.peers.has(st.peerKey)) {
      for (const id of entry.conns) {
        const other = this.conns.get(id);
        if (other !== undefined) {
          entry.peerKey = other.peerKey;
          break;
        }
      }
    }
  }

  private onConnected(address: Address): void {
    const r = this.remembered.get(address);
    if (r !== undefined) {
      if (r.timer !== undefined) clearTimeout(r.timer);
      r.timer = undefined;
      r.attempt = 0;
    }
    this.emitPeer(address, "connected");
  }

  private onDisconnected(address: Address): void {
    this.emitPeer(address, "disconnected");
    const r = this.remembered.get(address);
    if (r !== undefined && this.state === "running") {
      r.attempt = 0;
      this.scheduleRedial(address, r);
    }
  }

  private emitPeer(address: Address, event: PeerEvent): void {
    if (this.state !== "running") return;
    for (const listener of [...this.peerListeners]) {
      try {
        listener(address, event);
      } catch (err) {
        this.logger.error(`p2p: onPeer listener threw: ${errorText(err)}`);
      }
    }
  }

  // --- redial ------------------------------------------------------------------------------

  private redial(address: Address, r: Remembered): Promise<void> {
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.timer = undefined;
    if (r.dialing !== undefined) return r.dialing;
    const attempt = (async () => {
      try {
        const node = this.requireRunning();
        const conn = await node.dial(r.multiaddrs);
        const got = await this.connState(conn).ready.promise;
        if (got !== address) throw new P2PError(`${conn.remoteAddr.toString()} belongs to ${got}, not ${address}`, "hello");
        r.attempt = 0;
      } catch (err) {
        if (this.state === "running" && this.remembered.get(address) === r && !this.addresses.has(address)) {
          this.scheduleRedial(address, r);
        }
        throw err;
      } finally {
        r.dialing = undefined;
      }
    })();
    r.dialing = attempt;
    attempt.catch(() => {});
    return attempt;
  }

  private scheduleRedial(address: Address, r: Remembered): void {
    if (r.timer !== undefined) return;
    const base = Math.min(this.redialMinMs * 2 ** r.attempt, this.redialMaxMs);
    // ±10% so peers dropped together don't all redial in the same instant.
    const delay = Math.round(base * (0.9 + Math.random() * 0.2));
    const attempt = ++r.attempt;
    r.timer = setTimeout(() => {
      r.timer = undefined;
      if (this.state !== "running" || this.addresses.has(address)) return;
      this.redial(address, r).catch((err: unknown) => {
        this.logger.info(`p2p: redial of ${address} failed (attempt ${attempt}): ${errorText(err)}`);
      });
    }, delay);
  }

  // --- messages ----------------------------------------------------------------------------

  private outChannel(peerKey: string, address: Address): OutChannel {
    const existing = this.out.get(peerKey);
    if (existing !== undefined) return existing;
    const channel = new OutChannel(address, this.channelDeps(address), (done) => {
      if (this.out.get(peerKey) === done) this.out.delete(peerKey);
    });
    this.out.set(peerKey, channel);
    const conn = this.bestConnection(peerKey);
    if (conn === undefined) {
      channel.fail(new P2PError(`not connected to ${address}`, "not-connected"));
      return channel;
    }
    conn.newStream(MSG_PROTOCOL, { signal: AbortSignal.timeout(this.helloTimeoutMs) }).then(
      (stream) => channel.attach(stream),
      (err: unknown) => channel.fail(new P2PError(`cannot open stream to ${address}: ${errorText(err)}`, "closed")),
    );
    return channel;
  }

  /** What both directions' streams with `peer` share; the group ties them together (acks ride with messages). */
  private channelDeps(peer: Address): ChannelDeps {
    return { maxFrameBytes: this.maxMessageBytes, logger: this.logger, group: `${this.address}>${peer.toLowerCase()}`, lazyMs: this.ackDelayMs };
  }

  /** The newest open, hello-bound connection to `peerKey`. */
  private bestConnection(peerKey: string): Connection | undefined {
    const peer = this.peers.get(peerKey);
    if (peer === undefined) return undefined;
    let best: Connection | undefined;
    for (const id of peer.conns) {
      const conn = this.conns.get(id)?.conn;
      if (conn?.status === "open" && (best === undefined || conn.timeline.open > best.timeline.open)) best = conn;
    }
    return best;
  }

  private async onMsgStream(stream: Stream, conn: Connection): Promise<void> {
    const st = this.connState(conn);
    let from = st.address;
    if (from === undefined) {
      try {
        // Data arriving meanwhile is buffered by the stream.
        from = await st.ready.promise;
      } catch {
        stream.abort(new Error("no valid hello on this connection"));
        return;
      }
    }
    if (this.state !== "running") {
      stream.abort(new Error("transport stopping"));
      return;
    }
    const channel = new InChannel(
      stream,
      from,
      { ...this.channelDeps(from), handler: () => this.handler, pipeline: this.pipelineHandler },
      (done) => this.inbound.delete(done),
    );
    this.inbound.add(channel);
  }
}

export function createTransport(options: TransportOptions): P2PTransport {
  return new P2PTransport(options);
}
