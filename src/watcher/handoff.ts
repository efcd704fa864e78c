/**
 * What a node hands its watchtower, and how the part that reveals balances is sealed.
 *
 * A hand-off for one channel carries, replacing the previous one in place (O(1) per channel):
 *   (a) the partner's strongest revocation {revokedBelow, stateHash, signature}, in the clear:
 *       it is all `penalize` needs and it holds no amount, only a hash of a state;
 *   (b) the newest fully signed state with both signatures, for `updateState`, SEALED: it shows
 *       every balance, and the tower needs it only if the partner closes with the state just
 *       before it (the only older state an honest protocol leaves unrevoked by the partner).
 *
 * The seal. To close with a state, the partner must publish the client's `Update` signature on
 * it (the close calldata). The client's signatures are never shown to the tower, and they can't
 * be guessed, so they are the key material: the sealed state is encrypted (AES-256-GCM) under a
 * random data key, and that key is wrapped under
 *     HKDF-SHA256(ikm = stateHash(prev) ‖ revokedBelow ‖ clientSignature(prev), salt = domain separator)
 * for each signature of the client on the previous state the partner may hold (its proposal or
 * countersignature, and the idle `Revoke`), padded to a fixed number of slots with random ones.
 * When the partner closes with the previous state, the tower reads the state and signature from
 * the transaction, derives the key, opens the seal, checks both signatures and submits the newer
 * state, which the chain then shows to everyone anyway.
 *
 * The client's signature inside a seal is a copy made for the tower (a `revokedBelow` the
 * partner never receives), so opening one seal never yields the key of the next: a tower that
 * keeps every old seal still learns nothing more. The exception is a channel's first state: its
 * previous state is the public initial one (a nonce-0 close needs no signature), so the tower
 * can open the first seal at once. When the client itself proposed that first state as nonce 1,
 * no unused `revokedBelow` is left for the copy, so the second seal opens too; the chain of
 * seals stops there.
 *
 * What the tower learns, and when:
 *   at every hand-off: the channel id and participants (public on chain), which of them is its
 *     client, the time of each hand-off, the partner's revokedBelow and the sealed nonce (about
 *     how many updates the channel had), and the partner's newest signature with the hash of the
 *     state it signs. Amounts stay hidden, except that a tower that guesses a state's exact
 *     cumulative amounts can check its guess against that hash (round amounts are guessable);
 *   never before a close: any balance, amount or lock, except the channel's first state (and in
 *     the case above its second);
 *   when the partner closes with the previous state: the newest state, which it then publishes.
 * Payloads have one fixed size and seals a fixed number of slots, so sizes tell nothing.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { bytesToHex, domainSeparator, hashState, hexToBytes, normalizeAddress, updateDigestBytes } from "../protocol/eip712.js";
import type { Revocation, StateSignature } from "../protocol/channel.js";
import type { Address, ChannelState, Domain, Hex } from "../protocol/types.js";
import type { Signer, Verifier } from "../signer/types.js";

export const HANDOFF_KIND = "starling.tower.handoff";
export const HANDOFF_VERSION = 1;

/** Wrapped data keys per seal: the client's two possible signatures on the previous state. */
export const SEAL_SLOTS = 2;

const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
const SIG_BYTES = 65;
const WORD = 32;
/** state (7 words) + two signatures (revokedBelow word + 65 bytes each). */
const PAYLOAD_BYTES = 7 * WORD + 2 * (WORD + SIG_BYTES);
const SLOT_BYTES = IV_BYTES + KEY_BYTES + TAG_BYTES;
const BOX_BYTES = IV_BYTES + PAYLOAD_BYTES + TAG_BYTES;
const KDF_INFO = Buffer.from("starling-watchtower-v1 close key");
const MAX_UINT64 = (1n << 64n) - 1n;
const MAX_UINT256 = (1n << 256n) - 1n;

/** The newest fully signed state as the tower submits it. */
export interface SealedContent {
  state: ChannelState;
  sig1: StateSignature;
  sig2: StateSignature;
}

export interface SealedUpdate {
  /** Nonce of the sealed state, so the tower keeps the newest without opening anything. */
  nonce: bigint;
  /** The data key wrapped under each candidate close key: iv ‖ ciphertext ‖ tag. */
  slots: Hex[];
  /** The payload: iv ‖ ciphertext ‖ tag. */
  box: Hex;
}

export interface HandOff {
  kind: typeof HANDOFF_KIND;
  v: typeof HANDOFF_VERSION;
  channelId: Hex;
  /** Contract order: participant1 < participant2. */
  participant1: Address;
  participant2: Address;
  /** The partner's strongest revocation; null while it has revoked nothing. */
  revocation: Revocation | null;
  /** The newest fully signed state, sealed; null while there is none (nonce 0). */
  sealed: SealedUpdate | null;
}

/** A state the partner may close with, and the client's signature on it it would show. */
export interface CloseCandidate {
  state: ChannelState;
  /** Null for the initial nonce-0 state, which closes without a signature. */
  signature: StateSignature | null;
}

export type HandOffErrorCode = "BAD_HANDOFF" | "NOT_PARTICIPANT" | "BAD_SIGNATURE" | "UNKNOWN_CHANNEL";

export class HandOffError extends Error {
  constructor(
    readonly code: HandOffErrorCode,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = "HandOffError";
  }
}

// ------------------------------------------------------------------ keys

/** The key a close with `closed` (and the client's signature shown with it) unlocks. */
export function closeKey(domain: Domain, closed: CloseCandidate): Buffer {
  const initial = closed.state.nonce === 0n;
  const sig = initial || !closed.signature ? null : closed.signature;
  const ikm = Buffer.concat([
    Buffer.from(hexToBytes(hashState(closed.state), 32, "stateHash")),
    word(sig ? sig.revokedBelow : 0n, MAX_UINT64, "revokedBelow"),
    sig ? Buffer.from(hexToBytes(sig.signature, SIG_BYTES, "signature")) : Buffer.alloc(0),
  ]);
  const salt = Buffer.from(hexToBytes(domainSeparator(domain), 32, "domain"));
  return Buffer.from(hkdfSync("sha256", ikm, salt, KDF_INFO, KEY_BYTES));
}

/** Binds a seal to its channel, client and nonce. */
function associated(channelId: Hex, client: Address, nonce: bigint): Buffer {
  return Buffer.concat([Buffer.from(hexToBytes(channelId, 32, "channelId")), Buffer.from(hexToBytes(normalizeAddress(client), 20)), word(nonce, MAX_UINT64, "nonce")]);
}

function encrypt(key: Buffer, plain: Buffer, aad: Buffer): Buffer {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([iv, body, cipher.getAuthTag()]);
}

function decrypt(key: Buffer, sealed: Buffer, aad: Buffer): Buffer | null {
  if (sealed.length < IV_BYTES + TAG_BYTES) return null;
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, IV_BYTES));
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    return Buffer.concat([decipher.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ payload

function word(value: bigint, max: bigint, label: string): Buffer {
  if (value < 0n || value > max) throw new Error(`${label}: ${value} out of range`);
  return Buffer.from(value.toString(16).padStart(2 * WORD, "0"), "hex");
}

function readWord(buf: Buffer, offset: number): bigint {
  return BigInt(`0x${buf.toString("hex", offset, offset + WORD)}`);
}

function encodePayload(c: SealedContent): Buffer {
  const s = c.state;
  const out = Buffer.concat([
    Buffer.from(hexToBytes(s.channelId, 32, "state.channelId")),
    word(s.nonce, MAX_UINT64, "state.nonce"),
    word(s.sent1, MAX_UINT256, "state.sent1"),
    word(s.sent2, MAX_UINT256, "state.sent2"),
    word(s.locked1, MAX_UINT256, "state.locked1"),
    word(s.locked2, MAX_UINT256, "state.locked2"),
    Buffer.from(hexToBytes(s.locksRoot, 32, "state.locksRoot")),
    word(c.sig1.revokedBelow, MAX_UINT64, "sig1.revokedBelow"),
    Buffer.from(hexToBytes(c.sig1.signature, SIG_BYTES, "sig1")),
    word(c.sig2.revokedBelow, MAX_UINT64, "sig2.revokedBelow"),
    Buffer.from(hexToBytes(c.sig2.signature, SIG_BYTES, "sig2")),
  ]);
  if (out.length !== PAYLOAD_BYTES) throw new Error(`sealed payload is ${out.length} bytes, expected ${PAYLOAD_BYTES}`);
  return out;
}

function decodePayload(buf: Buffer): SealedContent | null {
  if (buf.length !== PAYLOAD_BYTES) return null;
  const hex = (from: number, to: number) => bytesToHex(buf.subarray(from, to));
  const sigAt = (o: number): StateSignature => ({ revokedBelow: readWord(buf, o), signature: hex(o + WORD, o + WORD + SIG_BYTES) });
  const state: ChannelState = {
    channelId: hex(0, 32),
    nonce: readWord(buf, 32),
    sent1: readWord(buf, 64),
    sent2: readWord(buf, 96),
    locked1: readWord(buf, 128),
    locked2: readWord(buf, 160),
    locksRoot: hex(192, 224),
  };
  if (state.nonce > MAX_UINT64) return null;
  return { state, sig1: sigAt(224), sig2: sigAt(224 + WORD + SIG_BYTES) };
}

// ------------------------------------------------------------------ seal and open

/**
 * Seals `content` so that a close with any of `candidates` opens it. Fewer candidates than
 * SEAL_SLOTS are padded with random slots; none at all leaves a seal nobody can open (the tower
 * can still penalise with the revocation).
 */
export function seal(domain: Domain, client: Address, content: SealedContent, candidates: readonly CloseCandidate[]): SealedUpdate {
  if (candidates.length > SEAL_SLOTS) throw new Error(`at most ${SEAL_SLOTS} close candidates, got ${candidates.length}`);
  const { channelId, nonce } = content.state;
  const aad = associated(channelId, client, nonce);
  const dataKey = randomBytes(KEY_BYTES);
  const slots: Hex[] = candidates.map((c) => bytesToHex(encrypt(closeKey(domain, c), dataKey, aad)));
  while (slots.length < SEAL_SLOTS) slots.push(bytesToHex(randomBytes(SLOT_BYTES)));
  // Slot order would tell which candidate is which.
  for (let i = slots.length - 1; i > 0; i--) {
    const j = randomBytes(1)[0]! % (i + 1);
    [slots[i], slots[j]] = [slots[j]!, slots[i]!];
  }
  return { nonce, slots, box: bytesToHex(encrypt(dataKey, encodePayload(content), aad)) };
}

/** Opens a seal with the state and signature a close revealed; null if they are not its key. */
export function openSeal(domain: Domain, channelId: Hex, client: Address, sealed: SealedUpdate, closed: CloseCandidate): SealedContent | null {
  const aad = associated(channelId, client, sealed.nonce);
  const key = closeKey(domain, closed);
  for (const slot of sealed.slots) {
    const dataKey = decrypt(key, Buffer.from(hexToBytes(slot)), aad);
    if (!dataKey || dataKey.length !== KEY_BYTES) continue;
    const plain = decrypt(dataKey, Buffer.from(hexToBytes(sealed.box)), aad);
    const content = plain ? decodePayload(plain) : null;
    if (content && content.state.nonce === sealed.nonce && content.state.channelId === channelId.toLowerCase()) return content;
  }
  return null;
}

// ------------------------------------------------------------------ signatures

export function signUpdate(signer: Signer, domain: Domain, state: ChannelState, revokedBelow: bigint): StateSignature {
  const digest = updateDigestBytes(domain, state.channelId, revokedBelow, hashState(state));
  return { revokedBelow, signature: bytesToHex(signer.signDigest(digest)) };
}

/** Whether `signature` is `signer`'s `Update` signature on (channelId, revokedBelow, stateHash). */
export function isUpdateSigner(
  verifier: Verifier,
  domain: Domain,
  channelId: Hex,
  revokedBelow: bigint,
  stateHash: Hex,
  signature: Hex,
  signer: Address,
): boolean {
  let recovered: Address | null;
  try {
    recovered = verifier.recoverAddress(updateDigestBytes(domain, channelId, revokedBelow, stateHash), hexToBytes(signature));
  } catch {
    return false;
  }
  return recovered !== null && recovered === normalizeAddress(signer);
}

// ------------------------------------------------------------------ parsing

const HEX32 = /^0x[0-9a-fA-F]{64}$/;
const HEX_SIG = /^0x[0-9a-fA-F]{130}$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function uint(v: unknown, max: bigint, what: string): bigint {
  if (typeof v !== "bigint" || v < 0n || v > max) throw new HandOffError("BAD_HANDOFF", `${what} must be an integer in [0, ${max}]`);
  return v;
}

function hexOf(v: unknown, pattern: RegExp, what: string): Hex {
  if (typeof v !== "string" || !pattern.test(v)) throw new HandOffError("BAD_HANDOFF", `${what} is malformed`);
  return v.toLowerCase() as Hex;
}

function addressOf(v: unknown, what: string): Address {
  try {
    return normalizeAddress(String(v), what);
  } catch (err) {
    throw new HandOffError("BAD_HANDOFF", (err as Error).message);
  }
}

/** Validates the shape of a received hand-off (signatures are checked by the tower). */
export function parseHandOff(raw: unknown): HandOff {
  if (!isRecord(raw) || raw.kind !== HANDOFF_KIND) throw new HandOffError("BAD_HANDOFF", "not a watchtower hand-off");
  if (raw.v !== HANDOFF_VERSION) throw new HandOffError("BAD_HANDOFF", `unsupported hand-off version ${String(raw.v)}`);
  const channelId = hexOf(raw.channelId, HEX32, "channelId");
  const participant1 = addressOf(raw.participant1, "participant1");
  const participant2 = addressOf(raw.participant2, "participant2");
  if (participant1 >= participant2) throw new HandOffError("BAD_HANDOFF", "participants must be distinct and in contract order");
  let revocation: Revocation | null = null;
  if (raw.revocation !== null) {
    const r = raw.revocation;
    if (!isRecord(r)) throw new HandOffError("BAD_HANDOFF", "revocation must be an object or null");
    revocation = {
      revokedBelow: uint(r.revokedBelow, MAX_UINT64, "revocation.revokedBelow"),
      stateHash: hexOf(r.stateHash, HEX32, "revocation.stateHash"),
      signature: hexOf(r.signature, HEX_SIG, "revocation.signature"),
    };
    if (revocation.revokedBelow === 0n) throw new HandOffError("BAD_HANDOFF", "a revocation below 0 revokes nothing");
  }
  let sealed: SealedUpdate | null = null;
  if (raw.sealed !== null) {
    const s = raw.sealed;
    if (!isRecord(s)) throw new HandOffError("BAD_HANDOFF", "sealed must be an object or null");
    const nonce = uint(s.nonce, MAX_UINT64, "sealed.nonce");
    if (nonce === 0n) throw new HandOffError("BAD_HANDOFF", "the initial state needs no sealing");
    if (!Array.isArray(s.slots) || s.slots.length !== SEAL_SLOTS) throw new HandOffError("BAD_HANDOFF", `sealed.slots must hold ${SEAL_SLOTS} slots`);
    const slotPattern = new RegExp(`^0x[0-9a-fA-F]{${2 * SLOT_BYTES}}$`);
    const slots = s.slots.map((x, i) => hexOf(x, slotPattern, `sealed.slots[${i}]`));
    const box = hexOf(s.box, new RegExp(`^0x[0-9a-fA-F]{${2 * BOX_BYTES}}$`), "sealed.box");
    sealed = { nonce, slots, box };
  }
  if (!revocation && !sealed) throw new HandOffError("BAD_HANDOFF", "nothing to watch: no revocation and no state");
  return { kind: HANDOFF_KIND, v: HANDOFF_VERSION, channelId, participant1, participant2, revocation, sealed };
}
