/** Pure-JS backend on @noble/secp256k1 v3; always available. */
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import * as secp from "@noble/secp256k1";
import type { Address } from "../protocol/types.js";
import { addressFromPublicKey, assertDigest, copyPrivateKey, isDigest, recoveryIdOf } from "./common.js";
import type { Secp256k1Backend, Signer, Verifier } from "./types.js";

// The synchronous API needs these wired in; leave them alone if the application already did.
secp.hashes.sha256 ??= sha256;
secp.hashes.hmacSha256 ??= (key, message) => hmac(sha256, key, message);

// Digests are already keccak-256; noble would otherwise sha256 them again.
const SIGN_OPTS = { prehash: false, lowS: true, format: "recovered" } as const;
const RECOVER_OPTS = { prehash: false, isCompressed: false } as const;

class NobleSigner implements Signer {
  readonly address: Address;
  readonly #key: Uint8Array;

  constructor(privateKey: Uint8Array) {
    const key = copyPrivateKey(privateKey);
    if (!secp.utils.isValidSecretKey(key)) throw new Error("createSigner: private key is not a valid secp256k1 scalar");
    this.#key = key;
    this.address = addressFromPublicKey(secp.getPublicKey(key, false));
  }

  signDigest(digest: Uint8Array): Uint8Array {
    assertDigest(digest);
    // noble's recovered format is recovery ‖ r ‖ s; Ethereum wants r ‖ s ‖ v.
    const raw = secp.sign(digest, this.#key, SIGN_OPTS);
    const recovery = raw[0]!;
    // Ids 2 and 3 (r >= n) have probability ~2^-127 and no Ethereum encoding.
    if (recovery > 1) throw new Error("signDigest: unrepresentable recovery id");
    const out = new Uint8Array(65);
    out.set(raw.subarray(1), 0);
    out[64] = 27 + recovery;
    return out;
  }
}

const nobleVerifier: Verifier = {
  recoverAddress(digest: Uint8Array, signature: Uint8Array): Address | null {
    const recovery = recoveryIdOf(signature);
    if (recovery < 0 || !isDigest(digest)) return null;
    const raw = new Uint8Array(65);
    raw[0] = recovery;
    raw.set(signature.subarray(0, 64), 1);
    try {
      return addressFromPublicKey(secp.recoverPublicKey(raw, digest, RECOVER_OPTS));
    } catch {
      // r is not the x coordinate of any curve point, or the result is the point at infinity.
      return null;
    }
  },
};

export const nobleBackend: Secp256k1Backend = {
  name: "noble",
  createSigner: (privateKey: Uint8Array): Signer => new NobleSigner(privateKey),
  verifier: nobleVerifier,
  detail: "@noble/secp256k1 (pure JavaScript)",
};
