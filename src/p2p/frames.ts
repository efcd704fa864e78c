/**
 * Frames of the message protocol: unsigned-varint length prefix, then UTF-8 JSON (the bigint-safe codec of src/store/codec.ts)
 * of `{ v: 1, kind, id, ... }`.
 */
import { decodeBytes, encodeBytes } from "../store/codec.js";

export const FRAME_VERSION = 1;

export type Frame =
  | { v: typeof FRAME_VERSION; kind: "msg"; id: string; body: unknown }
  | { v: typeof FRAME_VERSION; kind: "ack"; id: string }
  | { v: typeof FRAME_VERSION; kind: "nack"; id: string; error: string };

const ID_PATTERN = /^[0-9a-f]{32}$/;
/** Longest nack text sent; a handler's error message is cut to this. */
export const MAX_ERROR_CHARS = 1000;

/** A frame whose bytes arrived intact but which is not a valid frame; the stream stays usable. */
export class MalformedFrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedFrameError";
  }
}

/** The byte stream can't be split into frames any more (oversized or garbled length prefix). */
export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FramingError";
  }
}

export function isMessageId(id: unknown): id is string {
  return typeof id === "string" && ID_PATTERN.test(id);
}

/** JSON bytes of `frame` without the length prefix; throws EncodeError on a bad body. */
export function encodeFrame(frame: Frame): Uint8Array {
  return encodeBytes(frame);
}

/** `payload` preceded by its length as an unsigned varint, in one buffer. */
export function lengthPrefixed(payload: Uint8Array): Uint8Array {
  let n = payload.length;
  let prefixLength = 1;
  for (let m = n; m >= 0x80; m = Math.floor(m / 128)) prefixLength++;
  const out = new Uint8Array(prefixLength + payload.length);
  let i = 0;
  while (n >= 0x80) {
    out[i++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[i++] = n;
  out.set(payload, i);
  return out;
}

/** Parses and checks one frame's JSON bytes; throws {@link MalformedFrameError}. */
export function parseFrame(bytes: Uint8Array): Frame {
  let value: unknown;
  try {
    value = decodeBytes(bytes);
  } catch (err) {
    throw new MalformedFrameError(err instanceof Error ? err.message : String(err));
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new MalformedFrameError("frame is not an object");
  const f = value as Record<string, unknown>;
  if (f.v !== FRAME_VERSION) throw new MalformedFrameError(`unsupported frame version ${JSON.stringify(f.v)}`);
  if (!isMessageId(f.id)) throw new MalformedFrameError("missing or malformed id");
  switch (f.kind) {
    case "msg":
      if (!Object.hasOwn(f, "body")) throw new MalformedFrameError("msg frame without body");
      return { v: FRAME_VERSION, kind: "msg", id: f.id, body: f.body };
    case "ack":
      return { v: FRAME_VERSION, kind: "ack", id: f.id };
    case "nack":
      if (typeof f.error !== "string") throw new MalformedFrameError("nack frame without error text");
      return { v: FRAME_VERSION, kind: "nack", id: f.id, error: f.error };
    default:
      throw new MalformedFrameError(`unknown frame kind ${JSON.stringify(f.kind)}`);
  }
}

/**
 * Splits a byte stream into length-prefixed payloads. A length above `maxFrameBytes` is
 * reported as soon as the prefix is read, so an oversized frame is never buffered.
 */
export class FrameDecoder {
  private pending: Uint8Array = new Uint8Array(0);
  private readonly maxPrefixBytes: number;

  constructor(private readonly maxFrameBytes: number) {
    let bytes = 1;
    for (let m = maxFrameBytes; m >= 0x80; m = Math.floor(m / 128)) bytes++;
    this.maxPrefixBytes = bytes;
  }

  /** Payloads completed by `chunk`, in order. Throws {@link FramingError}; the decoder is then unusable. */
  push(chunk: Uint8Array): Uint8Array[] {
    let buf: Uint8Array;
    if (this.pending.length === 0) {
      buf = chunk;
    } else {
      buf = new Uint8Array(this.pending.length + chunk.length);
      buf.set(this.pending, 0);
      buf.set(chunk, this.pending.length);
    }
    const frames: Uint8Array[] = [];
    let offset = 0;
    for (;;) {
      let length = 0;
      let scale = 1;
      let i = offset;
      let complete = false;
      while (i < buf.length) {
        const byte = buf[i++]!;
        length += (byte & 0x7f) * scale;
        scale *= 128;
        if (length > this.maxFrameBytes) throw new FramingError(`frame of at least ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
        if (byte < 0x80) {
          complete = true;
          break;
        }
        if (i - offset >= this.maxPrefixBytes) throw new FramingError("length prefix too long");
      }
      if (!complete) break;
      if (buf.length - i < length) break;
      frames.push(buf.subarray(i, i + length));
      offset = i + length;
    }
    // Copy the tail so a large chunk isn't kept alive by a few leftover bytes.
    this.pending = offset === buf.length ? new Uint8Array(0) : buf.slice(offset);
    return frames;
  }

  get bufferedBytes(): number {
    return this.pending.length;
  }
}
