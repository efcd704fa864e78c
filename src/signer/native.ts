/**
 * Backend on libsecp256k1 through the optional `secp256k1` npm package (v5).
 *
 * The package's main entry silently falls back to a pure-JS elliptic implementation when its
 * addon does not load; that would be slower than noble and mislabelled, so this loads the
 * addon-only entry (`secp256k1/bindings.js`) and fails if it is missing.
 */
import { createRequire } from "node:module";
import { dirname } from "node:path";
import type { Address } from "../protocol/types.js";
import { CURVE_N, addressFromPublicKey, assertDigest, compare32, copyPrivateKey, isDigest, recoveryIdOf } from "./common.js";
import type { Secp256k1Backend, Signer, Verifier } from "./types.js";

/** The subset of the `secp256k1` v5 API used here (see its API.md). Methods throw on bad input. */
interface NativeSecp256k1 {
  privateKeyVerify(privateKey: Uint8Array): boolean;
  publicKeyCreate(privateKey: Uint8Array, compressed: boolean): Uint8Array;
  ecdsaSign(msg32: Uint8Array, privateKey: Uint8Array): { signature: Uint8Array; recid: number };
  ecdsaRecover(signature64: Uint8Array, recid: number, msg32: Uint8Array, compressed: boolean): Uint8Array;
}

type NodeGypBuild = ((dir: string) => unknown) & { resolve(dir: string): string };

/**
 * RFC 6979 seeds its nonce with the digest reduced mod n; the bundled libsecp256k1 seeds with the
 * raw bytes. The signature itself only depends on the digest mod n, so reducing first keeps the
 * math and makes the nonce, hence the signature bytes, match noble and ethers for every digest.
 */
function reduceModN(digest: Uint8Array): Uint8Array {
  if (compare32(digest, 0, CURVE_N) < 0) return digest;
  const out = new Uint8Array(32);
  let borrow = 0;
  for (let i = 31; i >= 0; i--) {
    const d = digest[i]! - CURVE_N[i]! - borrow;
    out[i] = d & 0xff;
    borrow = d < 0 ? 1 : 0;
  }
  return out;
}

function makeBackend(lib: NativeSecp256k1, detail: string): Secp256k1Backend {
  class NativeSigner implements Signer {
    readonly address: Address;
    readonly #key: Uint8Array;

    constructor(privateKey: Uint8Array) {
      const key = copyPrivateKey(privateKey);
      if (!lib.privateKeyVerify(key)) throw new Error("createSigner: private key is not a valid secp256k1 scalar");
      this.#key = key;
      this.address = addressFromPublicKey(lib.publicKeyCreate(key, false));
    }

    signDigest(digest: Uint8Array): Uint8Array {
      assertDigest(digest);
      // libsecp256k1 always produces low-s signatures.
      const { signature, recid } = lib.ecdsaSign(reduceModN(digest), this.#key);
      if (recid > 1) throw new Error("signDigest: unrepresentable recovery id");
      const out = new Uint8Array(65);
      out.set(signature, 0);
      out[64] = 27 + recid;
      return out;
    }
  }

  const verifier: Verifier = {
    recoverAddress(digest: Uint8Array, signature: Uint8Array): Address | null {
      // libsecp256k1 recovery accepts high s, so the shape checks here are what enforce low s.
      const recovery = recoveryIdOf(signature);
      if (recovery < 0 || !isDigest(digest)) return null;
      try {
        return addressFromPublicKey(lib.ecdsaRecover(signature.subarray(0, 64), recovery, digest, false));
      } catch {
        return null;
      }
    },
  };

  return {
    name: "native",
    createSigner: (privateKey: Uint8Array): Signer => new NativeSigner(privateKey),
    verifier,
    detail,
  };
}

let loaded: Secp256k1Backend | undefined;

/** Loads the libsecp256k1 addon; throws with the reason if it is not installed or will not load. */
export function loadNativeBackend(): Secp256k1Backend {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  let packageDir: string;
  try {
    packageDir = dirname(require.resolve("secp256k1/package.json"));
  } catch (err) {
    throw new Error(`native secp256k1 backend unavailable: optional package "secp256k1" is not installed (${String(err)})`);
  }
  let lib: NativeSecp256k1;
  let addonPath: string;
  try {
    const packageRequire = createRequire(`${packageDir}/package.json`);
    addonPath = (packageRequire("node-gyp-build") as NodeGypBuild).resolve(packageDir);
    lib = require("secp256k1/bindings.js") as NativeSecp256k1;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(
      `native secp256k1 backend unavailable: no libsecp256k1 addon for ${process.platform}-${process.arch} ` +
        `in ${packageDir} (no prebuild matched and none was built; run "npx node-gyp-build" there): ${reason}`,
    );
  }
  loaded = makeBackend(lib, `libsecp256k1 addon ${addonPath}`);
  return loaded;
}
