/** Wire form of a value: bigints travel as decimal strings so no precision is lost in JSON numbers. */
export type Wire<T> = T extends bigint
  ? string
  : T extends string | number | boolean | null | undefined
    ? T
    : T extends readonly (infer U)[]
      ? Wire<U>[]
      : T extends object
        ? { [K in keyof T]: Wire<T[K]> }
        : T;

function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString(10) : value;
}

/** JSON.stringify that writes bigints as decimal strings; `undefined` becomes `null`. */
export function stringifyWire(value: unknown): string {
  return JSON.stringify(value === undefined ? null : value, bigintReplacer);
}

export type JsonRpcId = string | number | null;

export interface JsonRpcRequest {
  jsonrpc: "2.0";
  method: string;
  params?: Record<string, unknown> | unknown[];
  id?: JsonRpcId;
}

export interface JsonRpcErrorBody {
  code: number;
  message: string;
  data?: unknown;
}

export type JsonRpcResponse =
  | { jsonrpc: "2.0"; id: JsonRpcId; result: unknown }
  | { jsonrpc: "2.0"; id: JsonRpcId; error: JsonRpcErrorBody };

/** Server-to-client notification carrying a published event. */
export interface SubscriptionNotification<P = unknown> {
  jsonrpc: "2.0";
  method: "subscription";
  params: { subscription: string; event: string; result: P };
}

export const SUBSCRIPTION_NOTIFICATION_METHOD = "subscription";

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
