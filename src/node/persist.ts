/**
 * Plain-data forms of the engine's state for the store (the store codec takes plain objects,
 * arrays and bigints; the transfer state keeps Maps for fast lookups).
 */
import type { LockedTransfer, OutgoingPayment, TransferState } from "../protocol/transfer.js";
import { lockOf, other, sigOf, type ChannelData, type Op, type SignedState, type StateSignature } from "../protocol/channel.js";
import type { Hex, Lock } from "../protocol/types.js";

type Entries<M> = M extends ReadonlyMap<infer K, infer V> ? [K, V][] : never;

export type StoredTransferState = { [K in keyof TransferState]: Entries<TransferState[K]> };

export function transferStateToPlain(s: TransferState): StoredTransferState {
  return {
    payments: [...s.payments],
    incoming: [...s.incoming],
    secrets: [...s.secrets],
    sent: [...s.sent],
    received: [...s.received],
    metadata: [...s.metadata],
    queues: [...s.queues],
    registered: [...s.registered],
    invoices: [...s.invoices],
  };
}

export function transferStateFromPlain(p: StoredTransferState): TransferState {
  return {
    payments: new Map(p.payments),
    incoming: new Map(p.incoming),
    secrets: new Map(p.secrets),
    sent: new Map(p.sent),
    received: new Map(p.received),
    metadata: new Map(p.metadata),
    queues: new Map(p.queues),
    registered: new Map(p.registered),
    // Absent in stores written before invoices existed.
    invoices: new Map(p.invoices ?? []),
  };
}

const TABLES: readonly (keyof TransferState)[] = ["payments", "incoming", "secrets", "sent", "received", "metadata", "queues", "registered", "invoices"];

/**
 * The transfer state is stored one record per entry, `<prefix><table>!<key>`, so a step writes
 * only the entries it changed (the engine reports them) instead of the whole state, which holds
 * every payment in flight.
 */

/**
 * A sent or received lock is stored under its lock key, `<channelId>:<secretHash>`, and carries
 * its LockedTransfer (`meta`), which repeats five of the lock's own fields: together about half
 * of the record, written each time the lock changes stage. Stored, the lock leaves out the two
 * fields its key says and the meta keeps only what differs from the lock; loading fills them back
 * in. Records stored whole (before this) load unchanged.
 */
const META_FROM_LOCK = ["channelId", "paymentId", "amount", "secretHash", "expiry"] as const;

type LockRecord = { meta?: LockedTransfer | Partial<LockedTransfer> | null } & Record<(typeof META_FROM_LOCK)[number], unknown>;

const isLockTable = (table: string): boolean => table === "sent" || table === "received";

/** The stored form of the transfer-state entry `key` of `table`. */
export function storedTransferEntry(table: string, key: string, value: unknown): unknown {
  if (!isLockTable(table)) return value;
  const lock = value as LockRecord;
  const keyed = isLockKeyOf(key, lock);
  if (!keyed && !lock.meta) return value;
  // Built field by field: a copy with fields deleted would be a dictionary-mode object, slower
  // to encode.
  const stored: Record<string, unknown> = {};
  for (const f of Object.keys(lock)) {
    if (keyed && (f === "channelId" || f === "secretHash")) continue;
    stored[f] = f === "meta" && lock.meta ? storedMeta(lock, lock.meta) : lock[f as keyof LockRecord];
  }
  return stored;
}

/** Whether `key` is `<channelId>:<secretHash>` of `lock` (compared in place, without building it). */
function isLockKeyOf(key: string, lock: LockRecord): boolean {
  const { channelId, secretHash } = lock;
  if (typeof channelId !== "string" || typeof secretHash !== "string") return false;
  const n = channelId.length;
  return key.length === n + 1 + secretHash.length && key.charCodeAt(n) === 0x3a && key.startsWith(channelId) && key.endsWith(secretHash);
}

/** The meta without its type and without the fields equal to the lock's own. */
function storedMeta(lock: LockRecord, meta: LockedTransfer | Partial<LockedTransfer>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of Object.keys(meta) as (keyof LockedTransfer)[]) {
    const v = meta[f];
    if (f === "type" ? v === "LockedTransfer" : (META_FROM_LOCK as readonly string[]).includes(f) && v === lock[f as (typeof META_FROM_LOCK)[number]]) continue;
    out[f] = v;
  }
  return out;
}

/** A LockedTransfer's fields in the order the engine writes them (so a loaded one encodes alike). */
const META_ORDER = ["type", "channelId", "paymentId", "initiator", "target", "amount", "secretHash", "expiry"];

function loadedTransferEntry(table: string, key: string, value: unknown): unknown {
  if (!isLockTable(table)) return value;
  let lock = value as LockRecord;
  if (!("channelId" in lock)) {
    const sep = key.indexOf(":");
    if (sep < 0) throw new Error(`transfer-state entry ${table}!${key} has no channel id and its key names none`);
    // The lock's own fields first, as the engine makes them.
    lock = { channelId: key.slice(0, sep), secretHash: key.slice(sep + 1), ...(lock as object) } as LockRecord;
  }
  if (!lock.meta) return lock;
  const full: Record<string, unknown> = { type: "LockedTransfer" };
  for (const f of META_FROM_LOCK) full[f] = lock[f];
  Object.assign(full, lock.meta);
  const meta: Record<string, unknown> = {};
  for (const f of [...META_ORDER, ...Object.keys(full)]) if (Object.hasOwn(full, f) && !Object.hasOwn(meta, f)) meta[f] = full[f];
  return { ...lock, meta };
}

/** Rebuilds a transfer state from its entries as listed by the store under `prefix`. */
export function transferStateFromEntries(entries: Iterable<[string, unknown]>, prefix: string): TransferState {
  const tables = new Map<string, Map<string, unknown>>(TABLES.map((t) => [t, new Map()]));
  for (const [key, value] of entries) {
    const rest = key.slice(prefix.length);
    const sep = rest.indexOf("!");
    const name = rest.slice(0, sep);
    const table = tables.get(name);
    if (sep < 0 || !table) throw new Error(`unexpected transfer-state entry ${key}`);
    const entryKey = rest.slice(sep + 1);
    table.set(entryKey, loadedTransferEntry(name, entryKey, value));
  }
  return Object.fromEntries(tables) as unknown as TransferState;
}

/** The stored entries of a whole transfer state (to migrate the older one-record form). */
export function transferStateEntries(s: TransferState, prefix: string): { key: string; value: unknown }[] {
  const out: { key: string; value: unknown }[] = [];
  for (const table of TABLES) {
    for (const [key, value] of s[table] as ReadonlyMap<string, unknown>) out.push({ key: `${prefix}${table}!${key}`, value: storedTransferEntry(table, key, value) });
  }
  return out;
}

/** Store key of a finished payment: outgoing by id; incoming by id and the lock (ids are the payer's choice). */
export function paymentKey(p: Pick<OutgoingPayment, "paymentId"> & { direction: "in" | "out"; channelId?: Hex; secretHash?: Hex | null }): string {
  const id = p.paymentId.toLowerCase();
  return p.direction === "out" ? `out:${id}` : `in:${id}:${(p.channelId ?? "").toLowerCase()}:${p.secretHash ?? "issue"}`;
}

/**
 * A channel record as stored. Two of its parts repeat others, and are left out when they do
 * (about a fifth of a record under load); {@link loadedChannel} puts them back:
 * - the partner's revocation is usually its signature on the newest state: stored as its state
 *   hash alone when its signature and `revokedBelow` are those of `latest`'s partner signature;
 * - a proposal's locks are `latest`'s minus the ones its operations remove, plus one per lock
 *   operation: stored as the indices of the removed ones (`lockDrops`) when they are exactly that.
 * The config and funding objects are kept as they are (the store writes them apart, by identity).
 */
export function storedChannel(c: ChannelData): object {
  const revocation = storedRevocation(c);
  const inflight = storedInflight(c);
  if (revocation === c.partnerRevocation && inflight === c.inflight) return c;
  return { ...c, partnerRevocation: revocation, inflight };
}

/** A channel record as {@link storedChannel} stored it (or stored whole), complete again. */
export function loadedChannel(stored: unknown): ChannelData {
  const c = stored as ChannelData;
  let partnerRevocation: ChannelData["partnerRevocation"] = c.partnerRevocation;
  let inflight: ChannelData["inflight"] = c.inflight;
  const rev: unknown = partnerRevocation;
  if (rev && !("signature" in (rev as object))) {
    const sig = partnerSignature(c);
    if (!sig) throw new Error(`channel ${c.config.channelId}: its stored revocation refers to a partner signature the newest state lacks`);
    partnerRevocation = { revokedBelow: sig.revokedBelow, stateHash: (rev as { stateHash: Hex }).stateHash, signature: sig.signature };
  }
  if (inflight && "lockDrops" in inflight.next) {
    const { state, lockDrops, sig1, sig2 } = inflight.next as StoredNext;
    const kept = c.latest.locks.filter((_, i) => !lockDrops.includes(i));
    const added = inflight.ops.flatMap((op) => (op.type === "lock" ? [lockOf(op, c.config.me)] : []));
    inflight = { ops: inflight.ops, next: { state, locks: [...kept, ...added], sig1, sig2 } };
  }
  return partnerRevocation === c.partnerRevocation && inflight === c.inflight ? c : { ...c, partnerRevocation, inflight };
}

type StoredNext = Omit<SignedState, "locks"> & { lockDrops: number[] };

function partnerSignature(c: ChannelData): StateSignature | null {
  return sigOf(c.latest, other(c.config.me));
}

function storedRevocation(c: ChannelData): ChannelData["partnerRevocation"] | { stateHash: Hex } {
  const r = c.partnerRevocation;
  const sig = partnerSignature(c);
  return r && sig && r.signature === sig.signature && r.revokedBelow === sig.revokedBelow ? { stateHash: r.stateHash } : r;
}

function storedInflight(c: ChannelData): ChannelData["inflight"] | { ops: Op[]; next: StoredNext } {
  const f = c.inflight;
  if (!f) return f;
  const drops = lockDrops(c.latest.locks, f.next.locks, f.ops, c.config.me);
  if (drops === null) return f;
  const { state, sig1, sig2 } = f.next;
  return { ops: f.ops, next: { state, lockDrops: drops, sig1, sig2 } };
}

const sameLock = (a: Lock, b: Lock): boolean => a === b || (a.sender === b.sender && a.amount === b.amount && a.expiry === b.expiry && a.secretHash === b.secretHash);

/** Indices of `latest`'s locks that `next` lacks, if `next` is the rest of them in order followed by `ops`' new locks; else null. */
function lockDrops(latest: readonly Lock[], next: readonly Lock[], ops: readonly Op[], proposer: 1 | 2): number[] | null {
  let added = 0;
  for (const op of ops) if (op.type === "lock") added++;
  const nKept = next.length - added;
  if (nKept < 0) return null;
  let k = nKept;
  for (const op of ops) {
    if (op.type !== "lock") continue;
    if (!sameLock(next[k]!, lockOf(op, proposer))) return null;
    k++;
  }
  const drops: number[] = [];
  let j = 0;
  for (let i = 0; i < latest.length; i++) {
    if (j < nKept && sameLock(latest[i]!, next[j]!)) j++;
    else drops.push(i);
  }
  return j === nKept ? drops : null;
}
