/**
 * EIP-712 hashing for Starling's signed payloads, byte-for-byte identical to StarlingChannels.sol
 * (OpenZeppelin EIP712, name "Starling", version "1").
 *
 * Kept free of I/O and provider imports so it can run anywhere, and it runs once per payment:
 * every hash encodes straight into a single buffer of the exact size, with no intermediate
 * hex strings.
 */
import { keccak256 } from "./keccak.js";
import type {
  Address,
  ChannelState,
  CooperativeCloseTerms,
  Domain,
  Hex,
  Lock,
  WithdrawRequest,
} from "./types.js";

export type { Address, ChannelState, CooperativeCloseTerms, Domain, Hex, Lock, WithdrawRequest } from "./types.js";

export const DOMAIN_NAME = "Starling";
export const DOMAIN_VERSION = "1";

export const EIP712_DOMAIN_TYPE =
  "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
export const STATE_TYPE =
  "State(bytes32 channelId,uint64 nonce,uint256 sent1,uint256 sent2,uint256 locked1,uint256 locked2,bytes32 locksRoot)";
export const UPDATE_TYPE = `Update(bytes32 channelId,uint64 revokedBelow,State state)${STATE_TYPE}`;
export const WITHDRAW_TYPE =
  "Withdraw(bytes32 channelId,address participant,uint256 totalWithdraw,uint256 expiry)";
export const COOPERATIVE_CLOSE_TYPE = "CooperativeClose(bytes32 channelId,uint256 balance1,uint256 balance2)";

export const ZERO_HASH: Hex = `0x${"00".repeat(32)}`;
const ZERO_ADDRESS: Address = `0x${"00".repeat(20)}`;

const MAX_UINT8 = (1n << 8n) - 1n;
const MAX_UINT24 = (1n << 24n) - 1n;
const MAX_UINT64 = (1n << 64n) - 1n;
const MAX_UINT256 = (1n << 256n) - 1n;
const MASK_64 = MAX_UINT64;

// ---------------------------------------------------------------- hex codec

const HEX_CHARS = "0123456789abcdef";
const BYTE_TO_HEX: string[] = Array.from({ length: 256 }, (_, i) => HEX_CHARS[i >> 4]! + HEX_CHARS[i & 15]!);

// Char code -> nibble value, -1 for anything that is not a hex digit.
const NIBBLE = new Int8Array(128).fill(-1);
for (let i = 0; i < 10; i++) NIBBLE[48 + i] = i;
for (let i = 0; i < 6; i++) {
  NIBBLE[65 + i] = 10 + i;
  NIBBLE[97 + i] = 10 + i;
}

function nibble(code: number): number {
  return code < 128 ? NIBBLE[code]! : -1;
}

/** Lowercase 0x-prefixed hex of `bytes`. */
export function bytesToHex(bytes: Uint8Array): Hex {
  let out = "0x";
  for (let i = 0; i < bytes.length; i++) out += BYTE_TO_HEX[bytes[i]!]!;
  return out as Hex;
}

function describe(value: unknown): string {
  if (typeof value === "string") return value.length > 80 ? `"${value.slice(0, 80)}…" (${value.length} chars)` : `"${value}"`;
  if (typeof value === "bigint") return `${value}n`;
  return String(value);
}

/**
 * Decodes exactly `byteLength` bytes of 0x-prefixed hex (either case) into `out` at `offset`.
 * Validates while decoding so callers never pay for a separate regex pass.
 */
function writeHex(out: Uint8Array, offset: number, hex: unknown, byteLength: number, label: string): void {
  if (typeof hex !== "string" || hex.length !== 2 + 2 * byteLength || hex.charCodeAt(0) !== 48 || (hex.charCodeAt(1) | 32) !== 120) {
    throw new Error(`${label}: expected 0x-prefixed hex of ${byteLength} bytes, got ${describe(hex)}`);
  }
  for (let i = 0, j = 2; i < byteLength; i++, j += 2) {
    const hi = nibble(hex.charCodeAt(j));
    const lo = nibble(hex.charCodeAt(j + 1));
    if (hi < 0 || lo < 0) throw new Error(`${label}: invalid hex character in ${describe(hex)}`);
    out[offset + i] = (hi << 4) | lo;
  }
}

/** Decodes 0x-prefixed hex into bytes; `byteLength` enforces an exact size when given. */
export function hexToBytes(hex: Hex, byteLength?: number, label = "hex"): Uint8Array {
  if (typeof hex !== "string" || hex.length < 2 || hex.length % 2 !== 0) {
    throw new Error(`${label}: expected 0x-prefixed hex of even length, got ${describe(hex)}`);
  }
  const len = (hex.length - 2) / 2;
  if (byteLength !== undefined && len !== byteLength) {
    throw new Error(`${label}: expected ${byteLength} bytes, got ${len}`);
  }
  const out = new Uint8Array(len);
  writeHex(out, 0, hex, len, label);
  return out;
}

// ----------------------------------------------------------- addresses

const utf8 = new TextEncoder();

/** EIP-55 checksum of 40 lowercase hex digits (no prefix). */
function checksumHex(lower40: string): string {
  const hash = keccak256(utf8.encode(lower40));
  let out = "";
  for (let i = 0; i < 40; i++) {
    const c = lower40[i]!;
    const hashNibble = (hash[i >> 1]! >> (i & 1 ? 0 : 4)) & 15;
    out += c >= "a" && hashNibble >= 8 ? c.toUpperCase() : c;
  }
  return out;
}

/**
 * Accepts lowercase, all-uppercase or correctly EIP-55 checksummed addresses (as ethers does);
 * a mixed-case address with a wrong checksum is almost certainly a typo, so it is rejected.
 */
function assertAddress(value: unknown, label: string): asserts value is Address {
  if (typeof value !== "string" || value.length !== 42 || value[0] !== "0" || (value[1] !== "x" && value[1] !== "X")) {
    throw new Error(`${label}: expected a 20-byte 0x-prefixed address, got ${describe(value)}`);
  }
  let upper = false;
  let lower = false;
  for (let i = 2; i < 42; i++) {
    const code = value.charCodeAt(i);
    if (nibble(code) < 0) throw new Error(`${label}: invalid hex character in address ${describe(value)}`);
    if (code >= 65 && code <= 70) upper = true;
    else if (code >= 97 && code <= 102) lower = true;
  }
  if (upper && lower) {
    const body = value.slice(2);
    if (checksumHex(body.toLowerCase()) !== body) throw new Error(`${label}: bad EIP-55 checksum in address ${value}`);
  }
}

/** Validates an address and returns it lowercased, the form used for comparisons. */
export function normalizeAddress(address: string, label = "address"): Address {
  assertAddress(address, label);
  return `0x${address.slice(2).toLowerCase()}`;
}

/** EIP-55 checksummed form of a valid address, for display. */
export function toChecksumAddress(address: string, label = "address"): Address {
  return `0x${checksumHex(normalizeAddress(address, label).slice(2))}`;
}

/** Orders two participants as the contract does (p1 < p2 numerically); it also rejects the zero address. */
export function orderParticipants(a: Address, b: Address): [p1: Address, p2: Address] {
  const la = normalizeAddress(a, "participant a");
  const lb = normalizeAddress(b, "participant b");
  if (la === lb) throw new Error(`orderParticipants: participants must differ, both are ${la}`);
  if (la === ZERO_ADDRESS || lb === ZERO_ADDRESS) throw new Error("orderParticipants: the zero address cannot be a participant");
  // Same-length lowercase hex compares lexicographically exactly as the numbers do.
  return la < lb ? [a, b] : [b, a];
}

// ---------------------------------------------------------- word encoding

function writeUint(view: DataView, offset: number, value: unknown, max: bigint, label: string): void {
  if (typeof value !== "bigint") throw new Error(`${label}: expected a bigint, got ${typeof value} ${describe(value)}`);
  if (value < 0n || value > max) {
    throw new Error(`${label}: ${value} is out of range [0, ${max === MAX_UINT256 ? "2^256-1" : max === MAX_UINT64 ? "2^64-1" : max}]`);
  }
  // Buffers start zeroed, so only the non-zero low limbs need writing.
  let v = value;
  for (let pos = offset + 24; v !== 0n; pos -= 8) {
    view.setBigUint64(pos, v & MASK_64);
    v >>= 64n;
  }
}

function writeAddress(out: Uint8Array, offset: number, value: unknown, label: string): void {
  assertAddress(value, label);
  writeHex(out, offset + 12, value, 20, label);
}

/** A zeroed buffer of `words` 32-byte words and a view over it. */
function words(count: number): [Uint8Array, DataView] {
  const buf = new Uint8Array(count * 32);
  return [buf, new DataView(buf.buffer)];
}

const typeHash = (type: string): Uint8Array => keccak256(utf8.encode(type));
const DOMAIN_TYPEHASH = typeHash(EIP712_DOMAIN_TYPE);
const STATE_TYPEHASH = typeHash(STATE_TYPE);
const UPDATE_TYPEHASH = typeHash(UPDATE_TYPE);
const WITHDRAW_TYPEHASH = typeHash(WITHDRAW_TYPE);
const COOPERATIVE_CLOSE_TYPEHASH = typeHash(COOPERATIVE_CLOSE_TYPE);
const NAME_HASH = keccak256(utf8.encode(DOMAIN_NAME));
const VERSION_HASH = keccak256(utf8.encode(DOMAIN_VERSION));

// ------------------------------------------------------------------ domain

const DOMAIN_CACHE_LIMIT = 64;
const domainCache = new Map<string, Uint8Array>();

/**
 * Keyed by the exact input strings, so each spelling of an address is validated once and then
 * served from the cache; a node talks to one or two contracts, the limit only guards misuse.
 */
function domainSeparatorBytes(domain: Domain): Uint8Array {
  if (domain === null || typeof domain !== "object") throw new Error(`domain: expected an object, got ${describe(domain)}`);
  const { chainId, verifyingContract } = domain;
  const key = `${typeof chainId === "bigint" ? chainId : describe(chainId)}:${String(verifyingContract)}`;
  const cached = domainCache.get(key);
  if (cached) return cached;
  const [buf, view] = words(5);
  buf.set(DOMAIN_TYPEHASH, 0);
  buf.set(NAME_HASH, 32);
  buf.set(VERSION_HASH, 64);
  writeUint(view, 96, chainId, MAX_UINT256, "domain.chainId");
  writeAddress(buf, 128, verifyingContract, "domain.verifyingContract");
  const separator = keccak256(buf);
  if (domainCache.size >= DOMAIN_CACHE_LIMIT) domainCache.clear();
  domainCache.set(key, separator);
  return separator;
}

export function domainSeparator(domain: Domain): Hex {
  return bytesToHex(domainSeparatorBytes(domain));
}

/** keccak256(0x1901 ‖ domainSeparator ‖ structHash), as `_hashTypedDataV4`. */
function typedDataDigest(domain: Domain, structHash: Uint8Array): Uint8Array {
  const separator = domainSeparatorBytes(domain);
  const buf = new Uint8Array(66);
  buf[0] = 0x19;
  buf[1] = 0x01;
  buf.set(separator, 2);
  buf.set(structHash, 34);
  return keccak256(buf);
}

// ------------------------------------------------------------ struct hashes

function objectOrThrow(value: unknown, label: string): void {
  if (value === null || typeof value !== "object") throw new Error(`${label}: expected an object, got ${describe(value)}`);
}

function stateStructHash(state: ChannelState): Uint8Array {
  objectOrThrow(state, "state");
  const [buf, view] = words(8);
  buf.set(STATE_TYPEHASH, 0);
  writeHex(buf, 32, state.channelId, 32, "state.channelId");
  writeUint(view, 64, state.nonce, MAX_UINT64, "state.nonce");
  writeUint(view, 96, state.sent1, MAX_UINT256, "state.sent1");
  writeUint(view, 128, state.sent2, MAX_UINT256, "state.sent2");
  writeUint(view, 160, state.locked1, MAX_UINT256, "state.locked1");
  writeUint(view, 192, state.locked2, MAX_UINT256, "state.locked2");
  writeHex(buf, 224, state.locksRoot, 32, "state.locksRoot");
  return keccak256(buf);
}

function updateStructHash(channelId: Hex, revokedBelow: bigint, stateHash: Hex): Uint8Array {
  const [buf, view] = words(4);
  buf.set(UPDATE_TYPEHASH, 0);
  writeHex(buf, 32, channelId, 32, "update.channelId");
  writeUint(view, 64, revokedBelow, MAX_UINT64, "update.revokedBelow");
  writeHex(buf, 96, stateHash, 32, "update.stateHash");
  return keccak256(buf);
}

function withdrawStructHash(w: WithdrawRequest): Uint8Array {
  objectOrThrow(w, "withdraw");
  const [buf, view] = words(5);
  buf.set(WITHDRAW_TYPEHASH, 0);
  writeHex(buf, 32, w.channelId, 32, "withdraw.channelId");
  writeAddress(buf, 64, w.participant, "withdraw.participant");
  writeUint(view, 96, w.totalWithdraw, MAX_UINT256, "withdraw.totalWithdraw");
  writeUint(view, 128, w.expiry, MAX_UINT256, "withdraw.expiry");
  return keccak256(buf);
}

function cooperativeCloseStructHash(c: CooperativeCloseTerms): Uint8Array {
  objectOrThrow(c, "cooperativeClose");
  const [buf, view] = words(4);
  buf.set(COOPERATIVE_CLOSE_TYPEHASH, 0);
  writeHex(buf, 32, c.channelId, 32, "cooperativeClose.channelId");
  writeUint(view, 64, c.balance1, MAX_UINT256, "cooperativeClose.balance1");
  writeUint(view, 96, c.balance2, MAX_UINT256, "cooperativeClose.balance2");
  return keccak256(buf);
}

/** EIP-712 struct hash of a state (the contract's `hashState`). */
export function hashState(state: ChannelState): Hex {
  return bytesToHex(stateStructHash(state));
}

/** EIP-712 struct hash of `Update{channelId, revokedBelow, state}` given the state's struct hash. */
export function hashUpdate(channelId: Hex, revokedBelow: bigint, stateHash: Hex): Hex {
  return bytesToHex(updateStructHash(channelId, revokedBelow, stateHash));
}

export function hashWithdraw(w: WithdrawRequest): Hex {
  return bytesToHex(withdrawStructHash(w));
}

export function hashCooperativeClose(c: CooperativeCloseTerms): Hex {
  return bytesToHex(cooperativeCloseStructHash(c));
}

// ------------------------------------------------------------------ digests
// The *Bytes forms feed a signer directly, skipping a hex round trip on the payment path.

export function updateDigestBytes(domain: Domain, channelId: Hex, revokedBelow: bigint, stateHash: Hex): Uint8Array {
  return typedDataDigest(domain, updateStructHash(channelId, revokedBelow, stateHash));
}

export function updateDigest(domain: Domain, channelId: Hex, revokedBelow: bigint, stateHash: Hex): Hex {
  return bytesToHex(updateDigestBytes(domain, channelId, revokedBelow, stateHash));
}

export function withdrawDigestBytes(domain: Domain, w: WithdrawRequest): Uint8Array {
  return typedDataDigest(domain, withdrawStructHash(w));
}

export function withdrawDigest(domain: Domain, w: WithdrawRequest): Hex {
  return bytesToHex(withdrawDigestBytes(domain, w));
}

export function cooperativeCloseDigestBytes(domain: Domain, c: CooperativeCloseTerms): Uint8Array {
  return typedDataDigest(domain, cooperativeCloseStructHash(c));
}

export function cooperativeCloseDigest(domain: Domain, c: CooperativeCloseTerms): Hex {
  return bytesToHex(cooperativeCloseDigestBytes(domain, c));
}

// ------------------------------------------------------- locks and channel ids

/**
 * keccak256(abi.encode(Lock[])), or zero for no locks (the contract's `hashLocks`).
 * A dynamic array of static tuples encodes as: offset 0x20, length, then 4 words per lock.
 */
export function locksRoot(locks: readonly Lock[]): Hex {
  if (!Array.isArray(locks)) throw new Error(`locks: expected an array, got ${describe(locks)}`);
  const n = locks.length;
  if (n === 0) return ZERO_HASH;
  const [buf, view] = words(2 + 4 * n);
  buf[31] = 0x20;
  writeUint(view, 32, BigInt(n), MAX_UINT256, "locks.length");
  for (let i = 0; i < n; i++) {
    const lock: unknown = locks[i];
    const label = `locks[${i}]`;
    objectOrThrow(lock, label);
    const { sender, amount, expiry, secretHash: hash } = lock as Lock;
    if (sender !== 1 && sender !== 2) throw new Error(`${label}.sender: expected 1 or 2, got ${describe(sender)}`);
    const base = 64 + 128 * i;
    writeUint(view, base, BigInt(sender), MAX_UINT8, `${label}.sender`);
    writeUint(view, base + 32, amount, MAX_UINT256, `${label}.amount`);
    writeUint(view, base + 64, expiry, MAX_UINT256, `${label}.expiry`);
    writeHex(buf, base + 96, hash, 32, `${label}.secretHash`);
  }
  return bytesToHex(keccak256(buf));
}

/** keccak256(abi.encode(bytes32 secret)): for a single bytes32 that is the hash of the raw bytes. */
export function secretHash(secret: Hex | Uint8Array): Hex {
  let bytes: Uint8Array;
  if (secret instanceof Uint8Array) {
    if (secret.length !== 32) throw new Error(`secret: expected 32 bytes, got ${secret.length}`);
    bytes = secret;
  } else {
    const known = secretHashes.get(secret);
    if (known !== undefined) return known;
    bytes = new Uint8Array(32);
    writeHex(bytes, 0, secret, 32, "secret");
    const hash = bytesToHex(keccak256(bytes));
    if (secretHashes.size >= SECRET_HASH_CACHE) secretHashes.clear();
    secretHashes.set(secret, hash);
    return hash;
  }
  return bytesToHex(keccak256(bytes));
}

/**
 * A payment's secret is hashed at every hop and step that handles its lock (checking an unlock,
 * matching a reveal): remembered here, bounded, since keccak in JavaScript is not cheap.
 */
const secretHashes = new Map<string, Hex>();
const SECRET_HASH_CACHE = 16_384;

/**
 * keccak256(abi.encode(uint256 chainId, address contract, address p1, address p2, uint24 counter)).
 * Participants must already be ordered (see `orderParticipants`): swapping them silently would
 * also swap which side is "1" and "2" in every state.
 */
export function channelId(chainId: bigint, contract: Address, p1: Address, p2: Address, counter: number | bigint): Hex {
  const [buf, view] = words(5);
  writeUint(view, 0, chainId, MAX_UINT256, "chainId");
  writeAddress(buf, 32, contract, "contract");
  writeAddress(buf, 64, p1, "p1");
  writeAddress(buf, 96, p2, "p2");
  if (typeof counter === "number" && !Number.isSafeInteger(counter)) {
    throw new Error(`counter: expected an integer, got ${counter}`);
  }
  writeUint(view, 128, typeof counter === "number" ? BigInt(counter) : counter, MAX_UINT24, "counter");
  const lo1 = p1.toLowerCase();
  const lo2 = p2.toLowerCase();
  if (lo1 >= lo2) throw new Error(`channelId: participants must be ordered p1 < p2, got ${p1} and ${p2}`);
  return bytesToHex(keccak256(buf));
}
