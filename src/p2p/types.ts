import type { Address, Signer, Verifier } from "../signer/index.js";
import type { ConnectionLimits } from "./node.js";

export type { ConnectionLimits };

export type { Address };

export interface TransportLogger {
  info(message: string, ...args: unknown[]): void;
  warn(message: string, ...args: unknown[]): void;
  error(message: string, ...args: unknown[]): void;
}

export interface TransportOptions {
  /** Multiaddrs to listen on. Default ['/ip4/127.0.0.1/tcp/0']. */
  listen?: string[];
  /** Signs our hello; its address is the one peers see. */
  signer: Signer;
  /** Recovers the address from a peer's hello. */
  verifier: Verifier;
  /**
   * 32-byte seed of the node's Ed25519 libp2p identity; the same seed gives the same peer id
   * across restarts. Keep it distinct from the Ethereum key.
   */
  privateKey: Uint8Array;
  /** Largest frame (JSON bytes, body included) sent or accepted. Default 1 MiB. */
  maxMessageBytes?: number;
  /** How long send() waits for the ack. Default 10 s. */
  sendTimeoutMs?: number;
  /** How long a new connection may take to complete the hello. Default 10 s. */
  helloTimeoutMs?: number;
  /** First redial delay after a remembered peer drops; doubles per failure. Default 1 s. */
  redialMinMs?: number;
  /** Ceiling of the redial delay. Default 30 s. */
  redialMaxMs?: number;
  /** Hello `version`; a peer announcing another one is refused. Default 1. */
  protocolVersion?: number;
  logger?: TransportLogger;
  /** Connection limits (a hub raises them); libp2p's defaults where absent. */
  limits?: ConnectionLimits;
  /**
   * Call the message handler for a peer's next message without waiting for its previous call to
   * finish (default false: one at a time). Calls still start in the order sent, and each ack goes
   * out only after its own call finished, in that order. For a handler that applies messages in
   * the order it is called (its synchronous part) and resolves once that is durable.
   */
  pipelineHandler?: boolean;
  /**
   * How long an ack may wait for a message to the same peer to ride with (one socket write and one
   * wake-up of the peer instead of two). Default 10 ms; 0 writes every ack at once.
   */
  ackDelayMs?: number;
}

export type PeerEvent = "connected" | "disconnected";

/**
 * Called for every message, one at a time per sending peer in the order sent (with
 * `pipelineHandler`, started in that order without waiting for the previous call). The ack goes back
 * once the returned promise resolves; if it rejects, the sender's send() rejects with its message.
 * Every frame received is delivered, duplicates included: a send that timed out may have been
 * handled, and a resend then arrives again with a new id. Deduplication belongs to the caller.
 */
export type MessageHandler = (from: Address, message: unknown, id: string) => Promise<void>;

export type PeerListener = (address: Address, event: PeerEvent) => void;

export type P2PErrorCode =
  /** No hello-bound connection to the address. */
  | "not-connected"
  /** No ack within sendTimeoutMs. */
  | "timeout"
  /** The peer's handler threw; the message is the peer's error text. */
  | "nack"
  /** The stream or connection went away before the ack. */
  | "closed"
  /** The encoded frame is larger than maxMessageBytes. */
  | "too-large"
  /** The message isn't plain data (see codec.ts). */
  | "encode"
  /** Hello failed or the peer turned out to be someone else. */
  | "hello"
  /** The transport isn't running. */
  | "stopped";

export class P2PError extends Error {
  readonly code: P2PErrorCode;

  constructor(message: string, code: P2PErrorCode) {
    super(message);
    this.name = "P2PError";
    this.code = code;
  }
}
