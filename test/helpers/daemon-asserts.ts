/** Assertions shared by the tests that drive real daemons. */
import { expect } from "chai";
import { isDeepStrictEqual } from "node:util";
import { waitFor, type ChannelWire, type ClusterNode } from "../../src/devkit/cluster.js";
import { RpcClientError } from "../../src/rpc/index.js";

/** The RpcClientError a call fails with; fails the test if it succeeds. */
export async function rpcError(p: Promise<unknown>): Promise<RpcClientError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof RpcClientError) return err;
    throw err;
  }
  throw new Error("expected the call to fail");
}

/**
 * Waits until `read()` gives `expected`, then asserts it (a diff on timeout). Each node learns of a
 * finished payment or an on-chain change on its own schedule, so the last hop may lag the payer.
 */
export async function eventually<V>(read: () => Promise<V>, expected: V, what: string, timeoutMs = 20_000): Promise<void> {
  let last: V | undefined;
  await waitFor(
    async () => {
      last = await read();
      return isDeepStrictEqual(last, expected);
    },
    what,
    timeoutMs,
  ).catch(() => undefined);
  expect(last, what).to.deep.equal(expected);
}

/**
 * Both ends' views of their channel, once they agree on the newest state and (unless `idle` is
 * false) no lock is pending either: a payer sees its payment complete before its settling unlock,
 * which may wait up to the settle batching interval to ride with its next update.
 */
export async function agreed(
  a: ClusterNode,
  b: ClusterNode,
  opts: { idle?: boolean; timeoutMs?: number } = {},
): Promise<{ mine: ChannelWire; theirs: ChannelWire }> {
  let pair: { mine: ChannelWire; theirs: ChannelWire } | undefined;
  await waitFor(
    async () => {
      const mine = await a.channelWith(b);
      const theirs = await b.channelWith(a);
      if (!mine || !theirs) return false;
      pair = { mine, theirs };
      return (
        mine.status === theirs.status &&
        mine.nonce === theirs.nonce &&
        mine.balance === theirs.partnerBalance &&
        mine.partnerBalance === theirs.balance &&
        mine.locked === theirs.partnerLocked &&
        mine.partnerLocked === theirs.locked &&
        mine.withdrawn === theirs.partnerWithdrawn &&
        mine.deposit === theirs.partnerDeposit &&
        (opts.idle === false || (mine.locked === "0" && mine.partnerLocked === "0"))
      );
    },
    `${a.name} and ${b.name} agree on their channel${opts.idle === false ? "" : " with no lock pending"}`,
    opts.timeoutMs ?? 20_000,
  );
  return pair!;
}
