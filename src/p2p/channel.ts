/**
 * Framed I/O over one libp2p stream: decodes incoming frames as they arrive and coalesces
 * outgoing frames written in the same event-loop turn into one write (one yamux frame and one
 * noise record instead of one per message, which is most of the pipelined throughput). Frames
 * written lazily (acks) wait up to {@link LAZY_FRAME_MS} for another frame to the same peer and
 * leave with it.
 */
import type { Stream } from "@libp2p/interface";
import { FrameDecoder, FramingError, MalformedFrameError, lengthPrefixed, parseFrame, type Frame } from "./frames.js";
import type { TransportLogger } from "./types.js";

export interface FramedStreamInit {
  stream: Stream;
  maxFrameBytes: number;
  logger: TransportLogger;
  /** For log lines, e.g. "from 0xabc…". */
  label: string;
  /**
   * The streams between this node and one peer share a group: a flush of any of them takes the
   * lazily written frames of the others along (see {@link FramedStream.writeLazyFrame}).
   */
  group?: string;
  /** How long a lazily written frame may wait (default {@link LAZY_FRAME_MS}; 0: not at all). */
  lazyMs?: number;
  /** `size` is the frame's encoded length. */
  onFrame(frame: Frame, size: number): void;
  /** The remote finished writing and every frame it sent was delivered; we may still write. */
  onEnd(): void;
  onClose(error: Error): void;
}

/**
 * Streams with frames waiting, flushed together in ONE setImmediate pass rather than one callback
 * each, so that frames for several streams of a connection (messages, acks) leave in the same
 * tick and can share a socket write (see coalesceSocketWrites in ./node.ts).
 */
const due = new Set<FramedStream>();
let passScheduled = false;

function flushDue(): void {
  passScheduled = false;
  const streams = [...due];
  due.clear();
  for (const s of streams) s.flushQueued();
}

function scheduleFlush(s: FramedStream): void {
  due.add(s);
  if (!passScheduled) {
    passScheduled = true;
    setImmediate(flushDue);
  }
}

/**
 * Longest a lazily written frame (an ack) waits for another frame to the same peer. Each frame
 * sent alone is a socket write and a wake-up of the peer; a payer's acks for the hub's
 * countersignature and receipt ride with its next payment instead. Nothing waits on an ack but
 * the sender's outbox clean-up, which is lazy itself (LAZY_ACK_MS).
 */
export const LAZY_FRAME_MS = 10;

/** Streams holding lazily written frames, by group. */
const lazyByGroup = new Map<string, Set<FramedStream>>();

export class FramedStream {
  readonly stream: Stream;
  private readonly decoder: FrameDecoder;
  private readonly init: FramedStreamInit;
  private outQueue: Uint8Array[] = [];
  private flushScheduled = false;
  private waitingForDrain = false;
  private closed = false;
  private lazyTimer: NodeJS.Timeout | null = null;

  constructor(init: FramedStreamInit) {
    this.init = init;
    this.stream = init.stream;
    this.decoder = new FrameDecoder(init.maxFrameBytes);
    this.stream.addEventListener("message", (evt) => this.onData(evt.data.subarray()));
    this.stream.addEventListener("close", (evt) => this.finish(evt.error ?? new Error("stream closed")));
    this.stream.addEventListener("end", () => {
      if (this.closed) return;
      try {
        this.init.onEnd();
      } catch (err) {
        this.abort(err instanceof Error ? err : new Error(String(err)));
      }
    });
    if (this.stream.status !== "open") queueMicrotask(() => this.finish(new Error(`stream is ${this.stream.status}`)));
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Queues a frame (already length-prefixed) for the next flush. False if the stream is gone. */
  write(prefixed: Uint8Array): boolean {
    if (this.closed) return false;
    this.outQueue.push(prefixed);
    if (!this.flushScheduled && !this.waitingForDrain) {
      this.flushScheduled = true;
      scheduleFlush(this);
    }
    return true;
  }

  writeFrame(payload: Uint8Array): boolean {
    return this.write(lengthPrefixed(payload));
  }

  /**
   * Queues a frame that may wait: it leaves with the next flush of this stream or of another
   * stream of its group, and at the latest after `lazyMs`.
   */
  writeLazyFrame(payload: Uint8Array): boolean {
    const wait = this.init.lazyMs ?? LAZY_FRAME_MS;
    if (wait <= 0) return this.writeFrame(payload);
    if (this.closed) return false;
    this.outQueue.push(lengthPrefixed(payload));
    if (this.flushScheduled || this.waitingForDrain || this.lazyTimer !== null) return true;
    const group = this.init.group;
    if (group !== undefined) {
      let set = lazyByGroup.get(group);
      if (!set) lazyByGroup.set(group, (set = new Set()));
      set.add(this);
    }
    this.lazyTimer = setTimeout(() => {
      this.lazyTimer = null;
      this.flushNow();
    }, wait);
    this.lazyTimer.unref();
    return true;
  }

  pause(): void {
    if (this.closed) return;
    try {
      this.stream.pause();
    } catch {
      // closing already; the close event finishes us
    }
  }

  resume(): void {
    if (this.closed) return;
    try {
      this.stream.resume();
    } catch {
      // closing already; the close event finishes us
    }
  }

  /** Resets the stream (the remote sees it as aborted) and reports `reason` to onClose. */
  abort(reason: Error): void {
    if (this.closed) return;
    this.finish(reason);
    try {
      this.stream.abort(reason);
    } catch {
      // already gone
    }
  }

  /** Sends what is queued, then closes our writing end. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flushNow();
    this.finish(new Error("stream closed locally"));
    try {
      await this.stream.close({ signal: AbortSignal.timeout(1000) });
    } catch {
      try {
        this.stream.abort(new Error("close timed out"));
      } catch {
        // already gone
      }
    }
  }

  /** Called by the shared flush pass. */
  flushQueued(): void {
    this.flushScheduled = false;
    this.flushNow();
  }

  private flushNow(): void {
    if (this.flushScheduled) {
      due.delete(this);
      this.flushScheduled = false;
    }
    this.leaveLazy();
    if (this.closed || this.outQueue.length === 0 || this.waitingForDrain) return;
    const chunk = this.outQueue.length === 1 ? this.outQueue[0]! : Buffer.concat(this.outQueue);
    this.outQueue = [];
    let more: boolean;
    try {
      more = this.stream.send(chunk);
    } catch (err) {
      this.finish(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    // The group's waiting frames go now, in the same socket write (coalesceSocketWrites).
    const group = this.init.group;
    const waiting = group === undefined ? undefined : lazyByGroup.get(group);
    if (waiting) {
      lazyByGroup.delete(group!);
      for (const other of waiting) other.flushNow();
    }
    if (!more) {
      // Keep later frames here until the muxer has room instead of growing its buffer.
      this.waitingForDrain = true;
      this.stream.onDrain().then(
        () => {
          this.waitingForDrain = false;
          if (this.outQueue.length > 0 && !this.flushScheduled) {
            this.flushScheduled = true;
            scheduleFlush(this);
          }
        },
        () => {
          this.waitingForDrain = false;
        },
      );
    }
  }

  // Runs inside libp2p's event dispatch, where a throw would surface as an uncaught exception.
  private onData(chunk: Uint8Array): void {
    if (this.closed) return;
    try {
      for (const payload of this.decoder.push(chunk)) {
        let frame: Frame;
        try {
          frame = parseFrame(payload);
        } catch (err) {
          if (!(err instanceof MalformedFrameError)) throw err;
          this.init.logger.warn(`p2p: dropped malformed frame ${this.init.label}: ${err.message}`);
          continue;
        }
        if (this.closed) return;
        this.init.onFrame(frame, payload.length);
      }
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (err instanceof FramingError) this.init.logger.warn(`p2p: closing stream ${this.init.label}: ${error.message}`);
      else this.init.logger.error(`p2p: closing stream ${this.init.label} after an internal error: ${error.stack ?? error.message}`);
      this.abort(error);
    }
  }

  /** Stops waiting as a lazy stream (its frames are being flushed, or dropped). */
  private leaveLazy(): void {
    if (this.lazyTimer === null) return;
    clearTimeout(this.lazyTimer);
    this.lazyTimer = null;
    const group = this.init.group;
    const set = group === undefined ? undefined : lazyByGroup.get(group);
    if (set) {
      set.delete(this);
      if (set.size === 0) lazyByGroup.delete(group!);
    }
  }

  private finish(error: Error): void {
    if (this.closed) return;
    this.closed = true;
    if (this.flushScheduled) {
      due.delete(this);
      this.flushScheduled = false;
    }
    this.leaveLazy();
    this.outQueue = [];
    try {
      this.init.onClose(error);
    } catch (err) {
      this.init.logger.error(`p2p: close handler failed ${this.init.label}: ${String(err)}`);
    }
  }
}
