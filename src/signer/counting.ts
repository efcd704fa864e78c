/** Counts the signatures a signer makes and the recoveries a verifier does (for metrics). */
import type { Address, Signer, Verifier } from "./types.js";

export interface CryptoCounts {
  signatures: number;
  recoveries: number;
}

export function newCryptoCounts(): CryptoCounts {
  return { signatures: 0, recoveries: 0 };
}

export function countingSigner(signer: Signer, counts: CryptoCounts): Signer {
  return {
    address: signer.address,
    signDigest(digest: Uint8Array): Uint8Array {
      counts.signatures++;
      return signer.signDigest(digest);
    },
  };
}

export function countingVerifier(verifier: Verifier, counts: CryptoCounts): Verifier {
  return {
    recoverAddress(digest: Uint8Array, signature: Uint8Array): Address | null {
      counts.recoveries++;
      return verifier.recoverAddress(digest, signature);
    },
  };
}
