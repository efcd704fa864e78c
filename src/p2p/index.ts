// The polyfill must run before libp2p is loaded.
import "./polyfill.js";

export { createTransport, P2PTransport, MSG_PROTOCOL } from "./transport.js";
export { P2PError } from "./types.js";
export type { Address, ConnectionLimits, MessageHandler, P2PErrorCode, PeerEvent, PeerListener, TransportLogger, TransportOptions } from "./types.js";
export { HELLO_PROTOCOL, HELLO_MAX_SKEW_MS } from "./hello.js";
