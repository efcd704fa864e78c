import { Harness } from "../../src/devkit/harness.js";
import type { Mode } from "../../src/chain/deploy.js";
import { decodeErrorsOf } from "./revert.js";

export { Harness, emptyState, sum, ZERO32, type StateValue, type LockValue } from "../../src/devkit/harness.js";

/** Starts a harness whose contracts' custom errors `expectRevert` can decode. */
export async function startHarness(mode: Mode, challengePeriod: number): Promise<Harness> {
  const h = await Harness.start(mode, challengePeriod);
  decodeErrorsOf(h.channels, h.token, h.registry);
  return h;
}
