export { Watchtower, type Dispute, type TowerLogger, type WatchRecord, type WatchtowerEvents, type WatchtowerOptions } from "./tower.js";
export { TowerClient, buildHandOff, previousStateKey, type OwnSignedState, type TowerClientOptions, type TowerPeer } from "./client.js";
export {
  HANDOFF_KIND,
  HandOffError,
  SEAL_SLOTS,
  closeKey,
  openSeal,
  parseHandOff,
  seal,
  type CloseCandidate,
  type HandOff,
  type HandOffErrorCode,
  type SealedContent,
  type SealedUpdate,
} from "./handoff.js";
