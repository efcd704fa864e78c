import { expect } from "chai";
import { AbiCoder, TypedDataEncoder, getAddress, keccak256, type TypedDataField } from "ethers";
import { keccak_256 as nobleKeccak } from "@noble/hashes/sha3.js";
import { keccak256 as starlingKeccak } from "../src/protocol/keccak.js";
import {
  ZERO_HASH,
  bytesToHex,
  channelId,
  cooperativeCloseDigest,
  cooperativeCloseDigestBytes,
  domainSeparator,
  hashCooperativeClose,
  hashState,
  hashUpdate,
  hashWithdraw,
  hexToBytes,
  locksRoot,
  normalizeAddress,
  orderParticipants,
  secretHash,
  toChecksumAddress,
  updateDigest,
  updateDigestBytes,
  withdrawDigest,
  withdrawDigestBytes,
  type Address,
  type ChannelState,
  type CooperativeCloseTerms,
  type Domain,
  type Hex,
  type Lock,
  type WithdrawRequest,
} from "../src/protocol/eip712.js";

const CASES = 64;
const MAX_UINT64 = (1n << 64n) - 1n;
const MAX_UINT256 = (1n << 256n) - 1n;
const abi = AbiCoder.defaultAbiCoder();

// Seeded (sfc32) so a failing case can be replayed.
function rng(seed: number): () => number {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0;
  const next = (): number => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) >>> 0;
    return t;
  };
  for (let i = 0; i < 16; i++) next();
  return next;
}

class Gen {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = rng(seed);
  }
  int(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.next() & 0xff;
    return out;
  }
  hex(n: number): Hex {
    return bytesToHex(this.bytes(n));
  }
  /** Case 0 is all zero, case 1 all max; otherwise a random bit length so small values show up. */
  uint(bits: number, caseIndex: number): bigint {
    const max = (1n << BigInt(bits)) - 1n;
    if (caseIndex === 0) return 0n;
    if (caseIndex === 1) return max;
    const pick = this.int(8);
    if (pick === 0) return 0n;
    if (pick === 1) return max;
    if (pick === 2) return BigInt(this.int(1000));
    const len = 1 + this.int(bits);
    let v = 0n;
    for (const byte of this.bytes(Math.ceil(len / 8))) v = (v << 8n) | BigInt(byte);
    return v & ((1n << BigInt(len)) - 1n);
  }
  hash(caseIndex: number): Hex {
    if (caseIndex === 0) return ZERO_HASH;
    if (caseIndex === 1) return `0x${"ff".repeat(32)}`;
    return this.hex(32);
  }
  /** Mixes lowercase and checksummed spellings, which must hash identically. */
  address(caseIndex: number): Address {
    if (caseIndex === 0) return `0x${"00".repeat(20)}`;
    if (caseIndex === 1) return `0x${"ff".repeat(20)}`;
    const lower = this.hex(20);
    return this.int(2) === 0 ? lower : (getAddress(lower) as Address);
  }
  domain(caseIndex: number): Domain {
    const chainId = this.int(3) === 0 ? 31337n : this.uint(256, caseIndex);
    return { chainId, verifyingContract: this.address(caseIndex) };
  }
  state(caseIndex: number): ChannelState {
    return {
      channelId: this.hash(caseIndex),
      nonce: this.uint(64, caseIndex),
      sent1: this.uint(256, caseIndex),
      sent2: this.uint(256, caseIndex),
      locked1: this.uint(256, caseIndex),
      locked2: this.uint(256, caseIndex),
      locksRoot: this.hash(caseIndex),
    };
  }
  lock(caseIndex: number): Lock {
    return {
      sender: this.int(2) === 0 ? 1 : 2,
      amount: this.uint(256, caseIndex),
      expiry: this.uint(256, caseIndex),
      secretHash: this.hash(caseIndex),
    };
  }
}

const STATE_FIELDS: TypedDataField[] = [
  { name: "channelId", type: "bytes32" },
  { name: "nonce", type: "uint64" },
  { name: "sent1", type: "uint256" },
  { name: "sent2", type: "uint256" },
  { name: "locked1", type: "uint256" },
  { name: "locked2", type: "uint256" },
  { name: "locksRoot", type: "bytes32" },
];
const STATE_TYPES = { State: STATE_FIELDS };
const UPDATE_TYPES = {
  Update: [
    { name: "channelId", type: "bytes32" },
    { name: "revokedBelow", type: "uint64" },
    { name: "state", type: "State" },
  ],
  State: STATE_FIELDS,
};
const WITHDRAW_TYPES = {
  Withdraw: [
    { name: "channelId", type: "bytes32" },
    { name: "participant", type: "address" },
    { name: "totalWithdraw", type: "uint256" },
    { name: "expiry", type: "uint256" },
  ],
};
const COOPERATIVE_CLOSE_TYPES = {
  CooperativeClose: [
    { name: "channelId", type: "bytes32" },
    { name: "balance1", type: "uint256" },
    { name: "balance2", type: "uint256" },
  ],
};

const ethersDomain = (d: Domain) => ({
  name: "Starling",
  version: "1",
  chainId: d.chainId,
  verifyingContract: d.verifyingContract,
});

describe("eip712", () => {
  it("encodes the type strings ethers derives", () => {
    expect(TypedDataEncoder.from(UPDATE_TYPES).encodeType("Update")).to.equal(
      "Update(bytes32 channelId,uint64 revokedBelow,State state)State(bytes32 channelId,uint64 nonce,uint256 sent1,uint256 sent2,uint256 locked1,uint256 locked2,bytes32 locksRoot)",
    );
  });

  it("domainSeparator matches ethers", () => {
    const g = new Gen(1);
    for (let i = 0; i < CASES; i++) {
      const d = g.domain(i);
      expect(domainSeparator(d), `case ${i}`).to.equal(TypedDataEncoder.hashDomain(ethersDomain(d)));
      // Second call is served from the cache and must agree.
      expect(domainSeparator(d)).to.equal(TypedDataEncoder.hashDomain(ethersDomain(d)));
    }
  });

  it("hashState matches ethers hashStruct", () => {
    const g = new Gen(2);
    for (let i = 0; i < CASES; i++) {
      const s = g.state(i);
      expect(hashState(s), `case ${i}`).to.equal(TypedDataEncoder.hashStruct("State", STATE_TYPES, s));
    }
  });

  it("hashUpdate and updateDigest match ethers", () => {
    const g = new Gen(3);
    for (let i = 0; i < CASES; i++) {
      const d = g.domain(i);
      const state = g.state(i);
      // Half the cases use the state's own channel id, as real updates do.
      const id = i % 2 === 0 ? state.channelId : g.hash(i);
      const revokedBelow = g.uint(64, i);
      const value = { channelId: id, revokedBelow, state };
      const stateHash = hashState(state);
      expect(hashUpdate(id, revokedBelow, stateHash), `case ${i}`).to.equal(
        TypedDataEncoder.hashStruct("Update", UPDATE_TYPES, value),
      );
      const expected = TypedDataEncoder.hash(ethersDomain(d), UPDATE_TYPES, value);
      expect(updateDigest(d, id, revokedBelow, stateHash), `case ${i}`).to.equal(expected);
      expect(bytesToHex(updateDigestBytes(d, id, revokedBelow, stateHash))).to.equal(expected);
    }
  });

  it("withdrawDigest matches ethers", () => {
    const g = new Gen(4);
    for (let i = 0; i < CASES; i++) {
      const d = g.domain(i);
      const w: WithdrawRequest = {
        channelId: g.hash(i),
        participant: g.address(i),
        totalWithdraw: g.uint(256, i),
        expiry: g.uint(256, i),
      };
      expect(hashWithdraw(w), `case ${i}`).to.equal(TypedDataEncoder.hashStruct("Withdraw", WITHDRAW_TYPES, w));
      const expected = TypedDataEncoder.hash(ethersDomain(d), WITHDRAW_TYPES, w);
      expect(withdrawDigest(d, w), `case ${i}`).to.equal(expected);
      expect(bytesToHex(withdrawDigestBytes(d, w))).to.equal(expected);
    }
  });

  it("cooperativeCloseDigest matches ethers", () => {
    const g = new Gen(5);
    for (let i = 0; i < CASES; i++) {
      const d = g.domain(i);
      const c: CooperativeCloseTerms = { channelId: g.hash(i), balance1: g.uint(256, i), balance2: g.uint(256, i) };
      expect(hashCooperativeClose(c), `case ${i}`).to.equal(
        TypedDataEncoder.hashStruct("CooperativeClose", COOPERATIVE_CLOSE_TYPES, c),
      );
      const expected = TypedDataEncoder.hash(ethersDomain(d), COOPERATIVE_CLOSE_TYPES, c);
      expect(cooperativeCloseDigest(d, c), `case ${i}`).to.equal(expected);
      expect(bytesToHex(cooperativeCloseDigestBytes(d, c))).to.equal(expected);
    }
  });

  it("locksRoot is zero for no locks and keccak(abi.encode(Lock[])) otherwise", () => {
    expect(locksRoot([])).to.equal(ZERO_HASH);
    const g = new Gen(6);
    for (let i = 0; i < CASES; i++) {
      const locks = Array.from({ length: 1 + (i % 7) }, () => g.lock(i));
      const encoded = abi.encode(
        ["tuple(uint8,uint256,uint256,bytes32)[]"],
        [locks.map((l) => [l.sender, l.amount, l.expiry, l.secretHash])],
      );
      expect(locksRoot(locks), `case ${i}`).to.equal(keccak256(encoded));
    }
  });

  it("secretHash is keccak(abi.encode(bytes32))", () => {
    const g = new Gen(7);
    for (let i = 0; i < CASES; i++) {
      const secret = g.hash(i);
      const expected = keccak256(abi.encode(["bytes32"], [secret]));
      expect(secretHash(secret), `case ${i}`).to.equal(expected);
      expect(secretHash(hexToBytes(secret))).to.equal(expected);
    }
  });

  it("channelId matches abi.encode(uint256,address,address,address,uint24)", () => {
    const g = new Gen(8);
    for (let i = 0; i < CASES; i++) {
      const chainId = g.uint(256, i);
      const contract = g.address(i);
      let a = g.address(i + 2);
      const b = g.address(i + 2);
      if (a.toLowerCase() === b.toLowerCase()) a = `0x${"11".repeat(20)}`;
      const [p1, p2] = orderParticipants(a, b);
      const counter = Number(g.uint(24, i));
      const expected = keccak256(
        abi.encode(["uint256", "address", "address", "address", "uint24"], [chainId, contract, p1, p2, counter]),
      );
      expect(channelId(chainId, contract, p1, p2, counter), `case ${i}`).to.equal(expected);
      expect(channelId(chainId, contract, p1, p2, BigInt(counter))).to.equal(expected);
    }
  });

  it("orderParticipants orders numerically and rejects equal or zero addresses", () => {
    const lo = "0x00000000000000000000000000000000000000aa" as Address;
    const hi = getAddress("0xbb000000000000000000000000000000000000bb") as Address;
    expect(orderParticipants(hi, lo)).to.deep.equal([lo, hi]);
    expect(orderParticipants(lo, hi)).to.deep.equal([lo, hi]);
    expect(() => orderParticipants(hi, hi.toLowerCase() as Address)).to.throw(/must differ/);
    expect(() => orderParticipants(lo, `0x${"00".repeat(20)}`)).to.throw(/zero address/);
  });

  it("normalizes and checksums addresses like ethers", () => {
    const g = new Gen(9);
    for (let i = 0; i < CASES; i++) {
      const lower = g.hex(20);
      const checksummed = getAddress(lower);
      expect(toChecksumAddress(lower)).to.equal(checksummed);
      expect(normalizeAddress(checksummed)).to.equal(lower);
      expect(normalizeAddress(lower.toUpperCase().replace("0X", "0x"))).to.equal(lower);
    }
  });

  describe("rejects bad input", () => {
    const d: Domain = { chainId: 1n, verifyingContract: "0x5fbdb2315678afecb367f032d93f642f64180aa3" };
    const state: ChannelState = {
      channelId: `0x${"ab".repeat(32)}`,
      nonce: 1n,
      sent1: 0n,
      sent2: 0n,
      locked1: 0n,
      locked2: 0n,
      locksRoot: ZERO_HASH,
    };
    const w: WithdrawRequest = {
      channelId: state.channelId,
      participant: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
      totalWithdraw: 5n,
      expiry: 100n,
    };

    it("nonce of 2^64", () => {
      expect(() => hashState({ ...state, nonce: 1n << 64n })).to.throw(/state\.nonce.*out of range/);
      expect(() => hashState({ ...state, nonce: MAX_UINT64 })).not.to.throw();
      expect(() => updateDigest(d, state.channelId, 1n << 64n, ZERO_HASH)).to.throw(/revokedBelow/);
    });

    it("negative or oversized amounts", () => {
      expect(() => hashState({ ...state, sent1: -1n })).to.throw(/state\.sent1.*out of range/);
      expect(() => hashState({ ...state, locked2: MAX_UINT256 + 1n })).to.throw(/state\.locked2/);
      expect(() => withdrawDigest(d, { ...w, totalWithdraw: -5n })).to.throw(/totalWithdraw/);
      expect(() => cooperativeCloseDigest(d, { channelId: state.channelId, balance1: 1n, balance2: -1n })).to.throw(
        /balance2/,
      );
      expect(() => locksRoot([{ sender: 1, amount: -1n, expiry: 0n, secretHash: ZERO_HASH }])).to.throw(
        /locks\[0\]\.amount/,
      );
    });

    it("non-bigint numbers", () => {
      const bad = { ...state, sent2: 5 } as unknown as ChannelState;
      expect(() => hashState(bad)).to.throw(/state\.sent2: expected a bigint/);
    });

    it("19- and 21-byte addresses, bad hex, bad checksum", () => {
      const short = `0x${"12".repeat(19)}` as Address;
      const long = `0x${"12".repeat(21)}` as Address;
      expect(() => withdrawDigest(d, { ...w, participant: short })).to.throw(/withdraw\.participant.*20-byte/);
      expect(() => withdrawDigest(d, { ...w, participant: long })).to.throw(/20-byte/);
      expect(() => domainSeparator({ chainId: 1n, verifyingContract: short })).to.throw(/verifyingContract/);
      expect(() => withdrawDigest(d, { ...w, participant: `0x${"zz".repeat(20)}` })).to.throw(/invalid hex/);
      const checksummed = getAddress(w.participant);
      const broken = (checksummed.slice(0, 2) +
        [...checksummed.slice(2)].map((c) => (c >= "a" ? c.toUpperCase() : c.toLowerCase())).join("")) as Address;
      expect(() => withdrawDigest(d, { ...w, participant: broken })).to.throw(/checksum/);
      expect(withdrawDigest(d, { ...w, participant: checksummed as Address })).to.equal(withdrawDigest(d, w));
    });

    it("hashes of the wrong length", () => {
      expect(() => hashState({ ...state, channelId: `0x${"ab".repeat(31)}` })).to.throw(/state\.channelId.*32 bytes/);
      expect(() => hashState({ ...state, locksRoot: "0x" })).to.throw(/state\.locksRoot/);
      expect(() => hashState({ ...state, locksRoot: "ab".repeat(33) as Hex })).to.throw(/state\.locksRoot/);
      expect(() => secretHash(new Uint8Array(31))).to.throw(/32 bytes/);
      expect(() => hexToBytes("0x123" as Hex)).to.throw(/even length/);
    });

    it("lock sender outside {1, 2}", () => {
      const lock = { sender: 3, amount: 1n, expiry: 1n, secretHash: ZERO_HASH } as unknown as Lock;
      expect(() => locksRoot([lock])).to.throw(/locks\[0\]\.sender/);
    });

    it("channel counter beyond uint24 and unordered participants", () => {
      const [p1, p2] = orderParticipants(w.participant, d.verifyingContract);
      expect(() => channelId(1n, d.verifyingContract, p1, p2, 1 << 24)).to.throw(/counter/);
      expect(() => channelId(1n, d.verifyingContract, p1, p2, 1.5)).to.throw(/counter/);
      expect(() => channelId(1n, d.verifyingContract, p2, p1, 0)).to.throw(/ordered/);
    });
  });
});

describe("keccak256", () => {
  it("matches ethers' and @noble/hashes' on every length around the 136-byte block, and on large inputs", () => {
    for (const length of [0, 1, 31, 32, 33, 64, 135, 136, 137, 271, 272, 273, 1000, 65_537]) {
      const data = Uint8Array.from({ length }, (_, i) => (i * 131 + length) & 0xff);
      const ours = starlingKeccak(data);
      expect(ours).to.be.instanceOf(Uint8Array);
      expect(Buffer.from(ours).toString("hex"), `length ${length}`).to.equal(keccak256(data).slice(2));
      expect(Buffer.from(ours).toString("hex"), `length ${length}`).to.equal(Buffer.from(nobleKeccak(data)).toString("hex"));
    }
    // A view into a larger buffer hashes only its own bytes.
    const big = Uint8Array.from({ length: 100 }, (_, i) => i);
    expect(Buffer.from(starlingKeccak(big.subarray(10, 42))).toString("hex")).to.equal(keccak256(big.subarray(10, 42)).slice(2));
    // Each digest is its own array: a later hash does not change an earlier one.
    const first = starlingKeccak(Uint8Array.of(1));
    const copy = Uint8Array.from(first);
    starlingKeccak(Uint8Array.of(2));
    expect(first).to.deep.equal(copy);
  });
});
