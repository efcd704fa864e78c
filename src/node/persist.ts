/**
 * Plain-data forms of the engine's state for the store (the store codec takes plain objects,
 * arrays and bigints; the transfer state keeps Maps for fast lookups).
 */
import type { LockedTransfer, OutgoingPayment, TransferState } from "../protocol/transfer.js";
import type { Hex } from "../protocol/types.js";

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
