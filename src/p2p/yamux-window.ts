/**
 * Yamux flow-control tuning. @chainsafe/libp2p-yamux answers every data frame it receives with a
 * window update frame, so each message costs the receiver an extra frame (an extra noise
 * encryption and socket write) and the sender an extra one to read. The yamux spec leaves the
 * timing to the receiver, and the Go implementation (the reference) only sends an update once
 * half the window is used. This does the same: a stream whose unused receive window is still
 * at least half the window sends no update; stream opening and acknowledgement flags, resuming
 * after a pause and any update once half the window is consumed go out as before.
 *
 * The sender is never starved: it may always send up to the window, and the update restoring the
 * full window goes out before half of it is used. Imported for its side effect by ./node.ts.
 */
import { StreamState, YamuxStream } from "@chainsafe/libp2p-yamux/stream";

interface WindowFields {
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
}

const PATCHED = Symbol.for("starling.yamuxWindowUpdate");
const proto = YamuxStream.prototype as unknown as { sendWindowUpdate(): void; [PATCHED]?: true };

if (!proto[PATCHED] && typeof proto.sendWindowUpdate === "function") {
  const sendWindowUpdate = proto.sendWindowUpdate;
  proto.sendWindowUpdate = function (this: WindowFields): void {
    // Only Established streams send updates without flags; other states keep the original path.
    if (this.state === StreamState.Established && typeof this.recvWindowCapacity === "number" && this.recvWindowCapacity * 2 >= this.recvWindow) return;
    sendWindowUpdate.call(this);
  };
  proto[PATCHED] = true;
}

export {};
