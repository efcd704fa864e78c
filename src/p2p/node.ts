/** The libp2p node underneath the transport: TCP + noise + yamux, nothing else. */
import "./polyfill.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { generateKeyPairFromSeed } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
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
}

export async function createNode(init: NodeInit): Promise<Libp2p> {
  const window = init.maxStreamWindow ?? 4 * 1024 * 1024;
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
    start: false,
  });
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
