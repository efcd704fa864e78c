/**
 * The hello exchanged on every new connection, binding the remote libp2p peer id to an Ethereum
 * address. The signature covers both peer ids, so a hello is only good on a connection between
 * exactly these two peers (noise already authenticates the peer ids), and a timestamp, so an old
 * one can't be replayed later.
 */
import { keccak256 } from "../protocol/keccak.js";
import type { PeerId } from "@libp2p/interface";
import type { Address, Signer, Verifier } from "../signer/index.js";

export const HELLO_PROTOCOL = "/starling/hello/1";
export const HELLO_DOMAIN = "starling-hello-v1";
/** Largest accepted difference between a hello's timestamp and our clock, either way. */
export const HELLO_MAX_SKEW_MS = 5 * 60_000;
export const HELLO_MAX_BYTES = 4096;

export interface Hello {
  /** Protocol version of the sender; both sides must agree. */
  version: number;
  /** Lowercase Ethereum address the signature recovers to. */
  address: Address;
  /** Sender's peer id (base58). */
  peerId: string;
  /** Receiver's peer id (base58). */
  remotePeerId: string;
  /** Milliseconds since the Unix epoch. */
  timestamp: number;
  /** 0x-prefixed 65-byte r ‖ s ‖ v. */
  signature: string;
}

export class HelloError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HelloError";
  }
}

const domainBytes = new TextEncoder().encode(HELLO_DOMAIN);

/** keccak256("starling-hello-v1" ‖ sender peer id ‖ receiver peer id ‖ timestamp as uint64 BE). */
export function helloDigest(senderPeerId: PeerId, receiverPeerId: PeerId, timestamp: number): Uint8Array {
  const sender = senderPeerId.toMultihash().bytes;
  const receiver = receiverPeerId.toMultihash().bytes;
  const buf = new Uint8Array(domainBytes.length + sender.length + receiver.length + 8);
  let o = 0;
  buf.set(domainBytes, o);
  o += domainBytes.length;
  buf.set(sender, o);
  o += sender.length;
  buf.set(receiver, o);
  o += receiver.length;
  new DataView(buf.buffer).setBigUint64(o, BigInt(timestamp));
  return keccak256(buf);
}

export function makeHello(init: { signer: Signer; version: number; localPeer: PeerId; remotePeer: PeerId; timestamp?: number }): Hello {
  const timestamp = init.timestamp ?? Date.now();
  const signature = init.signer.signDigest(helloDigest(init.localPeer, init.remotePeer, timestamp));
  return {
    version: init.version,
    address: init.signer.address,
    peerId: init.localPeer.toString(),
    remotePeerId: init.remotePeer.toString(),
    timestamp,
    signature: toHex(signature),
  };
}

export function encodeHello(hello: Hello): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(hello));
}

/** Parses a hello's shape; throws {@link HelloError}. */
export function parseHello(bytes: Uint8Array): Hello {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new HelloError("hello is not JSON");
  }
  if (typeof value !== "object" || value === null) throw new HelloError("hello is not an object");
  const h = value as Record<string, unknown>;
  if (typeof h.version !== "number") throw new HelloError("hello without version");
  if (typeof h.address !== "string" || !/^0x[0-9a-fA-F]{40}$/.test(h.address)) throw new HelloError("hello without a valid address");
  if (typeof h.peerId !== "string" || typeof h.remotePeerId !== "string") throw new HelloError("hello without peer ids");
  if (typeof h.timestamp !== "number" || !Number.isSafeInteger(h.timestamp) || h.timestamp < 0) throw new HelloError("hello without a valid timestamp");
  if (typeof h.signature !== "string" || !/^0x[0-9a-fA-F]{130}$/.test(h.signature)) throw new HelloError("hello without a 65-byte signature");
  return {
    version: h.version,
    address: h.address.toLowerCase() as Address,
    peerId: h.peerId,
    remotePeerId: h.remotePeerId,
    timestamp: h.timestamp,
    signature: h.signature,
  };
}

/**
 * Checks a hello received on a connection from `remotePeer` to `localPeer`; returns the bound
 * address or throws {@link HelloError} saying why not.
 */
export function verifyHello(
  hello: Hello,
  ctx: { verifier: Verifier; version: number; localPeer: PeerId; remotePeer: PeerId; now?: number },
): Address {
  if (hello.version !== ctx.version) throw new HelloError(`protocol version ${hello.version}, expected ${ctx.version}`);
  if (hello.peerId !== ctx.remotePeer.toString()) throw new HelloError("hello names a different sender peer than the connection");
  if (hello.remotePeerId !== ctx.localPeer.toString()) throw new HelloError("hello was made for another peer");
  const now = ctx.now ?? Date.now();
  if (Math.abs(now - hello.timestamp) > HELLO_MAX_SKEW_MS) throw new HelloError(`hello timestamp is ${Math.round((now - hello.timestamp) / 1000)} s off`);
  const digest = helloDigest(ctx.remotePeer, ctx.localPeer, hello.timestamp);
  const recovered = ctx.verifier.recoverAddress(digest, fromHex(hello.signature));
  if (recovered === null || recovered !== hello.address) throw new HelloError("hello signature does not recover the claimed address");
  return hello.address;
}

function toHex(bytes: Uint8Array): string {
  return "0x" + Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex.slice(2), "hex"));
}
