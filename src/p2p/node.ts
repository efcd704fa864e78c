/** The libp2p node underneath the transport: TCP + noise + yamux, nothing else. */
import "./polyfill.js";
import "./yamux-window.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { generateKeyPairFromSeed } from "@libp2p/crypto/keys";
import type { Connection, PrivateKey } from "@libp2p/interface";
import { Socket } from "node:net";
import { tcp } from "@libp2p/tcp";
import { createLibp2p, type Libp2p } from "libp2p";

export const DEFAULT_LISTEN = ["/ip4/127.0.0.1/tcp/0"];

/** Ed25519 identity whose 32-byte RFC 8032 seed is `seed`, so the peer id survives restarts. */
export async function peerKeyFromSeed(seed: Uint8Array): Promise<PrivateKey> {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new Error("peer key seed must be 32 bytes");
  return generateKeyPairFromSeed("Ed25519", seed);
}

export interface NodeInit {
  seed: Uint8Array;
  listen?: string[];
  /**
   * Per-stream receive window ceiling. Data the remote may still send after we pause reading is
   * bounded by it, so the read buffer limit is set from it.
   */
  maxStreamWindow?: number;
  /** Connection-manager limits; libp2p's defaults where absent (see {@link ConnectionLimits}). */
  limits?: ConnectionLimits;
}

/**
 * How many connections a node takes. libp2p's defaults (300 connections, 10 upgrading at once,
 * 5 new inbound per second per remote host) suit a peer with a handful of partners; a hub that
 * serves many users, possibly behind one NAT or proxy address, needs more.
 */
export interface ConnectionLimits {
  /** Connections kept before libp2p starts pruning. */
  maxConnections?: number;
  /** Inbound connections upgrading (noise, yamux) at the same time. */
  maxIncomingPendingConnections?: number;
  /** New inbound connections accepted per second from one remote host. */
  inboundConnectionThreshold?: number;
  /**
   * How often each connection is pinged to find dead ones (default {@link DEFAULT_PING_INTERVAL_MS});
   * one that does not answer within {@link PING_TIMEOUT_MS} is closed. See {@link ConnectionLiveness}.
   */
  pingIntervalMs?: number;
}

export const DEFAULT_PING_INTERVAL_MS = 10_000;
/** A ping unanswered this long closes its connection: far above any queueing a loaded node shows. */
export const PING_TIMEOUT_MS = 20_000;

interface PingingMuxer {
  ping(options: { signal: AbortSignal }): Promise<number>;
}

/**
 * Finds dead connections with yamux's ping frame: 12 bytes on the connection's muxer, answered by
 * the remote's muxer, no stream. libp2p's own connection monitor opens a stream and negotiates a
 * protocol for every ping, on both ends (a hub with N users: 2N stream set-ups per interval, each
 * with its loggers), and pings every connection in the same instant. Here each connection is
 * pinged once per interval, at its own moment within it (checked every tenth of the interval), so
 * a hub's pings are spread out.
 *
 * Reaches into the connection for its muxer; a connection whose muxer cannot ping is left alone.
 */
export class ConnectionLiveness {
  readonly #connections: () => Connection[];
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  /** When each connection is next due. */
  readonly #due = new WeakMap<Connection, number>();
  #timer: NodeJS.Timeout | undefined;

  constructor(connections: () => Connection[], intervalMs: number, timeoutMs = PING_TIMEOUT_MS) {
    if (!(intervalMs > 0)) throw new RangeError(`ping interval must be positive, got ${intervalMs}`);
    this.#connections = connections;
    this.#intervalMs = intervalMs;
    this.#timeoutMs = timeoutMs;
  }

  start(): void {
    this.#timer ??= setInterval(() => this.check(Date.now()), this.#intervalMs / 10);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Pings the connections due at `now`; a new connection is first due at a random point of one interval. */
  check(now: number): void {
    for (const conn of this.#connections()) {
      const due = this.#due.get(conn);
      if (due === undefined) this.#due.set(conn, now + Math.random() * this.#intervalMs);
      else if (due <= now && conn.status === "open") {
        this.#due.set(conn, now + this.#intervalMs);
        this.#ping(conn);
      }
    }
  }

  #ping(conn: Connection): void {
    const muxer = (conn as unknown as { muxer?: Partial<PingingMuxer> }).muxer;
    if (typeof muxer?.ping !== "function") return;
    (muxer as PingingMuxer).ping({ signal: AbortSignal.timeout(this.#timeoutMs) }).then(
      (rtt) => {
        conn.rtt = rtt;
      },
      (err: unknown) => {
        if (conn.status === "open") conn.abort(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }
}

export async function createNode(init: NodeInit): Promise<Libp2p> {
  const window = init.maxStreamWindow ?? 4 * 1024 * 1024;
  const { pingIntervalMs, ...limits } = init.limits ?? {};
  return createLibp2p({
    privateKey: await peerKeyFromSeed(init.seed),
    addresses: { listen: init.listen ?? DEFAULT_LISTEN },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [
      yamux({
        // Pinged by ConnectionLiveness instead, which also closes a connection that stops answering.
        enableKeepAlive: false,
        streamOptions: {
          maxStreamWindowSize: window,
          maxReadBufferLength: 2 * window,
        },
      }),
    ],
    ...(Object.keys(limits).length > 0 ? { connectionManager: { ...limits } } : {}),
    connectionMonitor: { enabled: false },
    services: {
      liveness: (components: { connectionManager: { getConnections(): Connection[] } }) =>
        new ConnectionLiveness(() => components.connectionManager.getConnections(), pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS),
    },
    start: false,
  });
}

const COALESCED = Symbol.for("starling.coalescedWrites");

/**
 * Makes the socket writes of one tick share one system call. Every yamux frame goes to the socket
 * as its own write (each one a syscall, and on loopback a wake-up of the peer), so a message and
 * an ack for the same peer, written in the same flush pass, cost two. Corking the socket at the
 * first write of a tick and uncorking it before the tick ends sends them with one writev; nothing
 * waits longer than the current tick and the bytes on the wire are the same.
 *
 * Reaches into the connection for its TCP socket; a connection without one is left alone.
 */
export function coalesceSocketWrites(conn: Connection): void {
  const socket = (conn as unknown as { maConn?: { socket?: unknown } }).maConn?.socket;
  if (!(socket instanceof Socket) || COALESCED in socket) return;
  Object.defineProperty(socket, COALESCED, { value: true });
  let corked = false;
  const uncork = (): void => {
    corked = false;
    socket.uncork();
  };
  const write = socket.write as (this: Socket, ...args: unknown[]) => boolean;
  const coalesced = function (this: Socket, ...args: unknown[]): boolean {
    if (!corked && !this.destroyed) {
      corked = true;
      this.cork();
      process.nextTick(uncork);
    }
    return write.apply(this, args);
  };
  socket.write = coalesced as Socket["write"];
}

const SHORT_PREFIX = new RangeError("length prefix not complete yet");
const CHEAP_PREFIX = Symbol.for("starling.cheapNoisePrefix");

/**
 * Noise reads its 2-byte frame lengths with a decoder that signals "not enough bytes yet" by
 * throwing a new RangeError, stack trace and all, after every chunk it has consumed: ~20 us per
 * chunk received, about 4% of a hub's CPU per payment when payments go one at a time. This
 * throws one prebuilt RangeError instead, which the decoder handles the same way; the decoding
 * itself is noise's own.
 *
 * Reaches into the connection for its noise stream's decoder; a connection without one is left alone.
 */
export function cheapenNoiseFraming(conn: Connection): void {
  const decoder = (conn as unknown as { muxer?: { maConn?: { decoder?: { lengthDecoder?: unknown } } } }).muxer?.maConn?.decoder;
  const decode = decoder?.lengthDecoder;
  if (!decoder || typeof decode !== "function" || CHEAP_PREFIX in decode || decode.name !== "uint16BEDecode") return;
  const cheap = (data: { length: number }): number => {
    if (data.length < 2) throw SHORT_PREFIX;
    return (decode as (d: unknown) => number)(data);
  };
  Object.defineProperty(cheap, CHEAP_PREFIX, { value: true });
  decoder.lengthDecoder = cheap;
}

/**
 * libp2p's address manager schedules a debounced (1 s) peer-store update when a listener closes
 * and has no stop hook, so a stopped node keeps the process alive for another second. Cancels
 * it; does nothing if the internals look different.
 */
export function cancelStrayTimers(node: Libp2p): void {
  const internals = node as unknown as {
    components?: { addressManager?: { _updatePeerStoreAddresses?: { stop?: unknown } } };
  };
  const update = internals.components?.addressManager?._updatePeerStoreAddresses;
  if (typeof update?.stop === "function") update.stop();
}
