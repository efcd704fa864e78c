/** Assertions shared by the tests that drive real daemons. */
import { expect } from "chai";
import { isDeepStrictEqual } from "node:util";
import { waitFor } from "../../src/devkit/cluster.js";
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
