import { expect } from "chai";
import { Signature, SigningKey, Wallet, getBytes, hexlify, recoverAddress, toBeHex } from "ethers";
import { loadBackend, type Secp256k1Backend } from "../src/signer/index.js";

const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

// Seeded so failures replay; xorshift is plenty for picking test keys and digests.
function bytesFrom(seed: number, length: number): Uint8Array {
  let x = seed * 2654435761 + 1;
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const word = (v: bigint): Uint8Array => getBytes(toBeHex(v, 32));

const KEYS: Uint8Array[] = [
  word(1n),
  word(N - 1n),
  getBytes("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
  ...Array.from({ length: 8 }, (_, i) => bytesFrom(100 + i, 32)),
];

const DIGESTS: Uint8Array[] = [
  new Uint8Array(32),
  new Uint8Array(32).fill(0xff), // above n: RFC 6979 must reduce it before seeding the nonce
  word(N),
  word(N - 1n),
  ...Array.from({ length: 16 }, (_, i) => bytesFrom(1000 + i, 32)),
];

function highS(sig: Uint8Array): Uint8Array {
  const out = sig.slice();
  const s = BigInt(hexlify(sig.subarray(32, 64)));
  out.set(word(N - s), 32);
  out[64] = sig[64] === 27 ? 28 : 27;
  return out;
}

describe("signer backends", () => {
  let native: Secp256k1Backend;
  let noble: Secp256k1Backend;

  before(async () => {
    // No skip: if the addon does not load this must fail, so a broken install is noticed.
    native = await loadBackend("native");
    noble = await loadBackend("noble");
  });

  it("loads the real libsecp256k1 addon, and 'auto' picks it", async () => {
    expect(native.name).to.equal("native");
    expect(native.detail).to.match(/\.node$/);
    expect(noble.name).to.equal("noble");
    expect((await loadBackend("auto")).name).to.equal("native");
    expect(await loadBackend()).to.equal(native);
  });

  it("derives the same address as ethers Wallet", () => {
    for (const key of KEYS) {
      const expected = new Wallet(hexlify(key)).address.toLowerCase();
      expect(native.createSigner(key).address).to.equal(expected);
      expect(noble.createSigner(key).address).to.equal(expected);
    }
  });

  it("signs identically (RFC 6979) to each other and to ethers, and everyone recovers the signer", () => {
    for (const key of KEYS) {
      const wallet = new Wallet(hexlify(key));
      const a = native.createSigner(key);
      const b = noble.createSigner(key);
      for (const digest of DIGESTS) {
        const sigA = a.signDigest(digest);
        const sigB = b.signDigest(digest);
        const label = `key ${hexlify(key)} digest ${hexlify(digest)}`;
        expect(sigA, label).to.have.length(65);
        expect(hexlify(sigA), label).to.equal(hexlify(sigB));
        expect(hexlify(sigA), label).to.equal(new SigningKey(key).sign(digest).serialized);

        const parsed = Signature.from(hexlify(sigA));
        expect([27, 28]).to.include(parsed.v);
        expect(BigInt(parsed.s) <= N / 2n, label).to.equal(true);
        expect(recoverAddress(digest, parsed)).to.equal(wallet.address);

        for (const verifier of [native.verifier, noble.verifier]) {
          expect(verifier.recoverAddress(digest, sigA), label).to.equal(a.address);
        }
      }
    }
  });

  it("recovers ethers-made signatures", () => {
    for (const [i, key] of KEYS.entries()) {
      const digest = bytesFrom(5000 + i, 32);
      const sig = getBytes(new SigningKey(key).sign(digest).serialized);
      const address = new Wallet(hexlify(key)).address.toLowerCase();
      expect(native.verifier.recoverAddress(digest, sig)).to.equal(address);
      expect(noble.verifier.recoverAddress(digest, sig)).to.equal(address);
    }
  });

  it("returns null for malformed or non-canonical signatures", () => {
    const key = KEYS[2]!;
    const digest = DIGESTS[5]!;
    const good = native.createSigner(key).signDigest(digest);
    const withV = (v: number): Uint8Array => {
      const out = good.slice();
      out[64] = v;
      return out;
    };
    const withR = (r: bigint): Uint8Array => {
      const out = good.slice();
      out.set(word(r), 0);
      return out;
    };
    const withS = (s: bigint): Uint8Array => {
      const out = good.slice();
      out.set(word(s), 32);
      return out;
    };
    const cases: Record<string, unknown> = {
      empty: new Uint8Array(0),
      "64 bytes": good.subarray(0, 64),
      "66 bytes": Uint8Array.of(...good, 0),
      "v = 29": withV(29),
      "v = 0": withV(0),
      "v = 1": withV(1),
      "high s": highS(good),
      "r = 0": withR(0n),
      "r = n": withR(N),
      "r = 2^256 - 1": withR((1n << 256n) - 1n),
      "s = 0": withS(0n),
      "s = n/2 + 1": withS(N / 2n + 1n),
      "hex string": hexlify(good),
      null: null,
      "number array": Array.from(good),
    };
    for (const backend of [native, noble]) {
      expect(backend.verifier.recoverAddress(digest, good)).to.equal(backend.createSigner(key).address);
      for (const [name, sig] of Object.entries(cases)) {
        expect(backend.verifier.recoverAddress(digest, sig as Uint8Array), `${backend.name}: ${name}`).to.equal(null);
      }
      expect(backend.verifier.recoverAddress(digest.subarray(0, 31), good), `${backend.name}: short digest`).to.equal(null);
      expect(backend.verifier.recoverAddress("0x00" as unknown as Uint8Array, good)).to.equal(null);
    }
  });

  it("returns null (not a throw) when r is not the x of a curve point", () => {
    // x = 5 has no point on secp256k1 (5^3 + 7 = 132 is a non-residue mod p).
    const sig = new Uint8Array(65);
    sig[31] = 5;
    sig[63] = 1;
    sig[64] = 27;
    for (const backend of [native, noble]) {
      expect(backend.verifier.recoverAddress(DIGESTS[6]!, sig), backend.name).to.equal(null);
    }
  });

  it("recovers a different address from a tampered digest", () => {
    for (const backend of [native, noble]) {
      const signer = backend.createSigner(KEYS[3]!);
      for (const digest of DIGESTS.slice(4)) {
        const sig = signer.signDigest(digest);
        const tampered = digest.slice();
        tampered[7]! ^= 1;
        const recovered = backend.verifier.recoverAddress(tampered, sig);
        expect(recovered, backend.name).to.not.equal(signer.address);
        expect(recovered, backend.name).to.not.equal(null);
      }
    }
  });

  it("rejects bad digests and private keys when signing", () => {
    for (const backend of [native, noble]) {
      const signer = backend.createSigner(KEYS[0]!);
      expect(() => signer.signDigest(new Uint8Array(31)), backend.name).to.throw(/32-byte digest/);
      expect(() => signer.signDigest(new Uint8Array(33)), backend.name).to.throw(/32-byte digest/);
      expect(() => backend.createSigner(new Uint8Array(32)), backend.name).to.throw(/not a valid secp256k1 scalar/);
      expect(() => backend.createSigner(word(N)), backend.name).to.throw(/not a valid secp256k1 scalar/);
      expect(() => backend.createSigner(new Uint8Array(31)), backend.name).to.throw(/32-byte private key/);
    }
  });

  it("copies the private key and accepts digests that are views into larger buffers", () => {
    for (const backend of [native, noble]) {
      const key = KEYS[4]!.slice();
      const signer = backend.createSigner(key);
      const before = signer.signDigest(DIGESTS[8]!);
      key.fill(1);
      expect(hexlify(signer.signDigest(DIGESTS[8]!))).to.equal(hexlify(before));

      const big = new Uint8Array(96);
      big.set(DIGESTS[8]!, 40);
      const view = big.subarray(40, 72);
      expect(hexlify(signer.signDigest(view)), backend.name).to.equal(hexlify(before));
      const sigBuf = new Uint8Array(100);
      sigBuf.set(before, 13);
      expect(backend.verifier.recoverAddress(view, sigBuf.subarray(13, 78)), backend.name).to.equal(signer.address);
    }
  });

  it("rejects an unknown preference", async () => {
    let error: unknown;
    try {
      await loadBackend("fast" as "auto");
    } catch (err) {
      error = err;
    }
    expect(String(error)).to.match(/unknown preference/);
  });
});
