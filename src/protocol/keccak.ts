/**
 * keccak-256: Ethereum's hash, used for every digest signed or checked here (EIP-712 structs,
 * addresses, secret hashes). js-sha3's implementation does about 1.6-1.9x the rate of
 * @noble/hashes' on the short inputs hashed per signature (64-192 bytes, one permutation each),
 * which was ~7% of a hub's CPU under load.
 */
import sha3 from "js-sha3";

export function keccak256(data: Uint8Array): Uint8Array {
  return new Uint8Array(sha3.keccak256.arrayBuffer(data));
}
