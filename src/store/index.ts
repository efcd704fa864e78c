export { decode, decodeBytes, encode, encodeBytes, DecodeError, Encoded, EncodeError } from "./codec.js";
export {
  CorruptValueError,
  LevelStore,
  MemoryStore,
  StoreClosedError,
  type Batch,
  type CommitResult,
  type LevelStoreOptions,
  type OutboxEntry,
  type Store,
} from "./store.js";
