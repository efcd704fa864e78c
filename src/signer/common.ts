/** Checks and encodings shared by both secp256k1 backends, so they accept exactly the same input. */
import { keccak256 } from "../protocol/keccak.js";
import { bytesToHex } from "../protocol/eip712.js";
import type { Address } from "../protocol/types.js";

/** Big-endian bytes of the curve order n, and of floor(n / 2), the low-s bound. */
export const CURVE_N = hexBytes("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
const HALF_N = hexBytes("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Compares the 32-byte big-endian number at `bytes[offset..]` with `ref`: -1, 0 or 1. */
export function compare32(bytes: Uint8Array, offset: number, ref: Uint8Array): number {
  for (let i = 0; i < 32; i++) {
    const a = bytes[offset + i]!;
    const b = ref[i]!;
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}

function isZero32(bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < 32; i++) if (bytes[offset + i] !== 0) return false;
  return true;
}

/**
 * Recovery id (0 or 1) of a 65-byte r ‖ s ‖ v signature that OpenZeppelin's ECDSA.recover would
 * accept on shape alone (v in {27, 28}, 0 < r < n, 0 < s <= n/2), or -1.
 */
export function recoveryIdOf(signature: unknown): number {
  if (!(signature instanceof Uint8Array) || signature.length !== 65) return -1;
  const v = signature[64]!;
  if (v !== 27 && v !== 28) return -1;
  if (isZero32(signature, 0) || compare32(signature, 0, CURVE_N) >= 0) return -1;
  if (isZero32(signature, 32) || compare32(signature, 32, HALF_N) > 0) return -1;
  return v - 27;
}

export function isDigest(digest: unknown): digest is Uint8Array {
  return digest instanceof Uint8Array && digest.length === 32;
}

export function assertDigest(digest: unknown): asserts digest is Uint8Array {
  if (!isDigest(digest)) {
    const got = digest instanceof Uint8Array ? `${digest.length} bytes` : typeof digest;
    throw new Error(`signDigest: expected a 32-byte digest, got ${got}`);
  }
}

/** Copies a private key after checking its shape; the scalar range is left to the backend. */
export function copyPrivateKey(privateKey: unknown): Uint8Array {
  if (!(privateKey instanceof Uint8Array) || privateKey.length !== 32) {
    throw new Error("createSigner: expected a 32-byte private key");
  }
  return privateKey.slice();
}

/** Last 20 bytes of keccak256 of a 65-byte uncompressed public key without its 0x04 prefix. */
export function addressFromPublicKey(uncompressed: Uint8Array): Address {
  if (uncompressed.length !== 65 || uncompressed[0] !== 4) throw new Error("expected a 65-byte uncompressed public key");
  return bytesToHex(keccak256(uncompressed.subarray(1)).subarray(12));
}
