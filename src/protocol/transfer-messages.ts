/**
 * Transfer-layer messages. They travel beside the channel messages: the routing metadata of a
 * lock (hop to hop) and the secret exchange between payer and payee (relayed by the hubs).
 *
 * Only `SecretRequest` is signed. `LockedTransfer` comes from the channel partner itself over an
 * authenticated link, and its amount, hash and expiry are checked against the jointly signed lock;
 * `SecretReveal` proves itself (its secret hashes to the lock's hash). A `SecretRequest`, however,
 * is relayed by the hub, which must not be able to make the payer reveal its secret before the
 * payee holds a lock: so the payee signs it, and the payer checks the signer is its target.
 */
import { keccak256 } from "./keccak.js";
import { bytesToHex, hexToBytes, normalizeAddress } from "./eip712.js";
import type { Address, Hex } from "./types.js";
import type { Signer, Verifier } from "../signer/types.js";

/** Routing metadata of a lock, sent by the lock's sender to its channel partner with the proposal. */
export interface LockedTransfer {
  type: "LockedTransfer";
  /** The channel the lock is in (the one between sender and receiver of this message). */
  channelId: Hex;
  paymentId: Hex;
  initiator: Address;
  target: Address;
  amount: bigint;
  secretHash: Hex;
  expiry: bigint;
}

/** The payee asks the payer for the secret of a lock it now holds; signed by the payee. */
export interface SecretRequest {
  type: "SecretRequest";
  paymentId: Hex;
  secretHash: Hex;
  amount: bigint;
  /** Expiry of the payee's incoming lock. */
  expiry: bigint;
  signature: Hex;
}

export interface SecretReveal {
  type: "SecretReveal";
  paymentId: Hex;
  secret: Hex;
}

export type TransferMessage = LockedTransfer | SecretRequest | SecretReveal;

export type SecretRequestFields = Omit<SecretRequest, "type" | "signature">;

const utf8 = new TextEncoder();
const REQUEST_TAG = utf8.encode("Starling SecretRequest v1");
// EIP-191 version 0x45 over a 32-byte message: what `personal_sign` of the inner hash produces,
// so a wallet can sign a request too.
const EIP191_PREFIX = utf8.encode("\x19Ethereum Signed Message:\n32");
const MAX_UINT256 = (1n << 256n) - 1n;

function writeUint256(out: Uint8Array, offset: number, value: bigint, label: string): void {
  if (typeof value !== "bigint" || value < 0n || value > MAX_UINT256) throw new Error(`${label}: expected a uint256`);
  let v = value;
  for (let i = offset + 31; i >= offset; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

/**
 * keccak256("\x19Ethereum Signed Message:\n32" ‖ keccak256(tag ‖ paymentId ‖ secretHash ‖
 * uint256 amount ‖ uint256 expiry)). Binds the request to one payment and one lock; no domain
 * is needed because replaying it can only make the payer reveal the same secret to the same payee.
 */
export function secretRequestDigest(r: SecretRequestFields): Uint8Array {
  const body = new Uint8Array(REQUEST_TAG.length + 128);
  body.set(REQUEST_TAG, 0);
  let o = REQUEST_TAG.length;
  body.set(hexToBytes(r.paymentId, 32, "paymentId"), o);
  body.set(hexToBytes(r.secretHash, 32, "secretHash"), o + 32);
  writeUint256(body, o + 64, r.amount, "amount");
  writeUint256(body, o + 96, r.expiry, "expiry");
  const outer = new Uint8Array(EIP191_PREFIX.length + 32);
  outer.set(EIP191_PREFIX, 0);
  outer.set(keccak256(body), EIP191_PREFIX.length);
  return keccak256(outer);
}

export function signSecretRequest(fields: SecretRequestFields, signer: Signer): SecretRequest {
  return {
    type: "SecretRequest",
    paymentId: fields.paymentId,
    secretHash: fields.secretHash,
    amount: fields.amount,
    expiry: fields.expiry,
    signature: bytesToHex(signer.signDigest(secretRequestDigest(fields))),
  };
}

/** The address that signed the request, or null if the signature does not recover. */
export function secretRequestSigner(r: SecretRequest, verifier: Verifier): Address | null {
  try {
    return verifier.recoverAddress(secretRequestDigest(r), hexToBytes(r.signature, 65, "signature"));
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ validation
// Messages come from peers; the pure core re-checks the fields it relies on, whatever the codec did.

const HEX_RE = /^0x[0-9a-fA-F]*$/;

export function isHexOf(value: unknown, bytes: number): value is Hex {
  return typeof value === "string" && value.length === 2 + 2 * bytes && HEX_RE.test(value);
}

export function isAddress(value: unknown): value is Address {
  if (!isHexOf(value, 20)) return false;
  try {
    normalizeAddress(value);
    return true;
  } catch {
    return false;
  }
}

const isUint = (v: unknown): v is bigint => typeof v === "bigint" && v >= 0n && v <= MAX_UINT256;

/** Why `m` is not a well-formed transfer message, or null if it is. */
export function transferMessageProblem(m: unknown): string | null {
  if (m === null || typeof m !== "object") return "a transfer message must be an object";
  const r = m as Record<string, unknown>;
  switch (r["type"]) {
    case "LockedTransfer":
      if (!isHexOf(r["channelId"], 32)) return "LockedTransfer.channelId must be 32 bytes of hex";
      if (!isHexOf(r["paymentId"], 32)) return "LockedTransfer.paymentId must be 32 bytes of hex";
      if (!isAddress(r["initiator"])) return "LockedTransfer.initiator must be an address";
      if (!isAddress(r["target"])) return "LockedTransfer.target must be an address";
      if (!isUint(r["amount"]) || r["amount"] === 0n) return "LockedTransfer.amount must be a positive integer";
      if (!isHexOf(r["secretHash"], 32)) return "LockedTransfer.secretHash must be 32 bytes of hex";
      if (!isUint(r["expiry"])) return "LockedTransfer.expiry must be an integer";
      return null;
    case "SecretRequest":
      if (!isHexOf(r["paymentId"], 32)) return "SecretRequest.paymentId must be 32 bytes of hex";
      if (!isHexOf(r["secretHash"], 32)) return "SecretRequest.secretHash must be 32 bytes of hex";
      if (!isUint(r["amount"])) return "SecretRequest.amount must be an integer";
      if (!isUint(r["expiry"])) return "SecretRequest.expiry must be an integer";
      if (!isHexOf(r["signature"], 65)) return "SecretRequest.signature must be 65 bytes of hex";
      return null;
    case "SecretReveal":
      if (!isHexOf(r["paymentId"], 32)) return "SecretReveal.paymentId must be 32 bytes of hex";
      if (!isHexOf(r["secret"], 32)) return "SecretReveal.secret must be 32 bytes of hex";
      return null;
    default:
      return `unknown transfer message type ${String(r["type"])}`;
  }
}
