export * from "./errors.js";
export * from "./schemas.js";
export * from "./registry.js";
export * from "./server.js";
export * from "./client.js";
export * from "./docs.js";
export type { Wire, JsonRpcId, JsonRpcRequest, JsonRpcResponse, JsonRpcErrorBody, SubscriptionNotification } from "./wire.js";
export { stringifyWire } from "./wire.js";
