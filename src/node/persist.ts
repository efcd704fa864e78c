/**
 * Plain-data forms of the engine's state for the store (the store codec takes plain objects,
 * arrays and bigints; the transfer state keeps Maps for fast lookups).
 */
import type { TransferState } from "../protocol/transfer.js";

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

/** Rebuilds a transfer state from its entries as listed by the store under `prefix`. */
export function transferStateFromEntries(entries: Iterable<[string, unknown]>, prefix: string): TransferState {
  const tables = new Map<string, Map<string, unknown>>(TABLES.map((t) => [t, new Map()]));
  for (const [key, value] of entries) {
    const rest = key.slice(prefix.length);
    const sep = rest.indexOf("!");
    const table = tables.get(rest.slice(0, sep));
    if (sep < 0 || !table) throw new Error(`unexpected transfer-state entry ${key}`);
    table.set(rest.slice(sep + 1), value);
  }
  return Object.fromEntries(tables) as unknown as TransferState;
}

/** The entries of a whole transfer state (to migrate the older one-record form). */
export function transferStateEntries(s: TransferState, prefix: string): { key: string; value: unknown }[] {
  const out: { key: string; value: unknown }[] = [];
  for (const table of TABLES) for (const [key, value] of s[table] as ReadonlyMap<string, unknown>) out.push({ key: `${prefix}${table}!${key}`, value });
  return out;
}
