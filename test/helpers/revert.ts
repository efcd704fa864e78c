import { expect } from "chai";
import type { Contract } from "ethers";

const errorSources: Contract[] = [];

/** Adds a contract whose custom errors `expectRevert` can decode. */
export function decodeErrorsOf(...contracts: Contract[]): void {
  errorSources.push(...contracts);
}

/** Asserts that `promise` rejects with the custom error `name`, decoded by one of `contracts`. */
export async function expectRevert(promise: Promise<unknown>, name: string, ...contracts: Contract[]): Promise<void> {
  let error: unknown;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  if (error === undefined) expect.fail(`expected revert ${name}, but the call succeeded`);
  const e = error as { revert?: { name: string }; data?: string; info?: { error?: { data?: string } } };
  let decoded = e.revert?.name;
  const data = e.data ?? e.info?.error?.data;
  for (const c of [...contracts, ...errorSources]) {
    if (decoded || !data) break;
    decoded = c.interface.parseError(data)?.name;
  }
  expect(decoded, `expected revert ${name}, got: ${String(error).slice(0, 300)}`).to.equal(name);
}
