/** secp256k1 signing and recovery for Ethereum-style 65-byte signatures, backend chosen at run time. */
import { loadNativeBackend } from "./native.js";
import { nobleBackend } from "./noble.js";
import type { BackendPreference, Secp256k1Backend } from "./types.js";

export type { Address, BackendName, BackendPreference, Secp256k1Backend, Signer, Verifier } from "./types.js";
export { addressFromPublicKey } from "./common.js";
export { nobleBackend } from "./noble.js";
export { countingSigner, countingVerifier, newCryptoCounts, type CryptoCounts } from "./counting.js";

/**
 * 'noble' is always available; 'native' throws if the libsecp256k1 addon cannot be loaded;
 * 'auto' (the default) prefers native and falls back to noble.
 */
export async function loadBackend(preference: BackendPreference = "auto"): Promise<Secp256k1Backend> {
  switch (preference) {
    case "noble":
      return nobleBackend;
    case "native":
      return loadNativeBackend();
    case "auto":
      try {
        return loadNativeBackend();
      } catch {
        return nobleBackend;
      }
    default:
      throw new Error(`loadBackend: unknown preference ${String(preference)}; expected "noble", "native" or "auto"`);
  }
}
