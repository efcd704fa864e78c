import type { Address } from "../protocol/types.js";

export type { Address } from "../protocol/types.js";

export interface Signer {
  /** Lowercase address of the key. */
  readonly address: Address;
  /**
   * Signs a 32-byte digest as is (no further hashing). Returns 65 bytes r ‖ s ‖ v with v in
   * {27, 28} and low s, the form OpenZeppelin's ECDSA.recover accepts. Deterministic (RFC 6979).
   * Throws if `digest` is not 32 bytes.
   */
  signDigest(digest: Uint8Array): Uint8Array;
}

export interface Verifier {
  /**
   * Lowercase address that signed `digest`, or null for anything OpenZeppelin's ECDSA.recover
   * would reject (wrong length, v not 27/28, r or s zero or out of range, high s) or that does not
   * recover. Never throws on bad input.
   */
  recoverAddress(digest: Uint8Array, signature: Uint8Array): Address | null;
}

export type BackendName = "noble" | "native";
export type BackendPreference = BackendName | "auto";

export interface Secp256k1Backend {
  name: BackendName;
  /** Throws if the key is not 32 bytes or not a valid secp256k1 scalar. The key is copied. */
  createSigner(privateKey: Uint8Array): Signer;
  verifier: Verifier;
  /** Where the implementation came from, e.g. the path of the loaded native addon. */
  readonly detail?: string;
}
