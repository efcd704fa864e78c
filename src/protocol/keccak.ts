/**
 * keccak-256: Ethereum's hash, used for every digest signed or checked here (EIP-712 structs,
 * addresses, secret hashes, locks roots). hash-wasm's WebAssembly keccak does about 4x the rate
 * of js-sha3 on the short inputs hashed per signature (64-192 bytes: 0.7-1.2 against 3-5.5 us)
 * and 5x on a locks root of 20 locks, and 10x @noble/hashes' (scripts/bench-signer.ts); pure
 * JavaScript, even with the permutation written out over locals, stayed within 1.3x of js-sha3.
 * With js-sha3, keccak was 7-10% of a hub's and a load generator's CPU under load.
 *
 * One hasher per module instance (each worker thread has its own), used synchronously from
 * init to digest, so no call can interleave with another.
 */
import { createKeccak } from "hash-wasm";

const hasher = await createKeccak(256);

export function keccak256(data: Uint8Array): Uint8Array {
  hasher.init();
  hasher.update(data);
  // A new array each call, not a view of the WebAssembly memory.
  return hasher.digest("binary");
}
