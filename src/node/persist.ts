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
  };
}
