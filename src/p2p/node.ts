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
   * How often each connection is pinged to find dead ones (libp2p: 10 s). Every ping opens a
   * stream and negotiates its protocol, on both ends: a hub with N users handles about 2N / interval
   * of them per second.
   */
  pingIntervalMs?: number;
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
        streamOptions: {
          maxStreamWindowSize: window,
          maxReadBufferLength: 2 * window,
        },
      }),
    ],
    ...(Object.keys(limits).length > 0 ? { connectionManager: { ...limits } } : {}),
    ...(pingIntervalMs !== undefined ? { connectionMonitor: { pingInterval: pingIntervalMs } } : {}),
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
