/**
 * Gas per on-chain call, measured on the embedded chain, beside Raiden TokenNetwork v0.50's
 * published figures for the same job.
 *
 *   npm run gas                  table, collateral mode
 *   npm run gas -- --json        JSON array of { call, gas, raidenGas }
 *   npm run gas -- --mode issuer the same scenario in issuer mode (mint/burn instead of transfers)
 *
 * Scenario (each figure is one transaction's gasUsed): a hub already serves one user, so the
 * contract holds tokens; a second user's channel is opened, both sides deposit, the user withdraws
 * part, then the channel is closed unilaterally, updated, and settled. Further channels measure a
 * cooperative close, a settle with one pending lock and its unlock, and a penalty.
 */
import { hexlify, keccak256, randomBytes, AbiCoder, type HDNodeWallet } from "ethers";
import { Harness, emptyState, type LockValue, type StateValue } from "../src/devkit/harness.js";
import { mined, type Mode } from "../src/chain/deploy.js";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

/** Raiden TokenNetwork v0.50 published gas. */
export const RAIDEN: Record<string, number | null> = {
  open: 86_418,
  deposit: 76_406,
  withdraw: 115_057,
  cooperativeClose: 167_421,
  close: 137_712,
  updateState: 90_526,
  settle: 173_784,
  "unlock (1 lock)": 59_037,
  penalize: null,
};

export interface Row {
  call: string;
  gas: number;
  raidenGas: number | null;
}

export async function measure(mode: Mode): Promise<Row[]> {
  const period = 600;
  const h = await Harness.start(mode, period);
  const gas = new Map<string, number>();
  const record = (label: string, used: bigint) => gas.set(label, Number(used));
  try {
    const hub = h.wallet(1);
    const users = [2, 3, 4, 5, 6].map((i) => h.wallet(i));
    if (mode === "issuer") {
      await h.send(h.wallet(0), "setCreditLimit", "setCreditLimit", hub.address, 10n ** 30n);
    }
    for (const w of [hub, ...users]) await h.fundAndApprove(w, 10_000n);

    const openChannel = async (user: HDNodeWallet): Promise<string> => {
      const r = await h.send(hub, "open", "open", hub.address, user.address);
      record("open", r.gasUsed);
      const id = (await h.channels.getFunction("channelId")(hub.address, user.address)) as string;
      if (mode === "issuer") await h.send(hub, "grantCredit", "grantCredit", id, user.address, 1_000_000n);
      else record("deposit", (await h.deposit(id, hub, user, 1_000n)).gasUsed);
      record("deposit", (await h.deposit(id, user, hub, 500n)).gasUsed);
      return id;
    };
    const sides = (user: HDNodeWallet) => {
      const [p1, p2] = h.ordered(hub, user);
      return { p1, p2, hubIs1: p1 === hub };
    };
    /** State where the hub sent `hubSent` to the user. */
    const stateFor = (id: string, user: HDNodeWallet, nonce: bigint, hubSent: bigint, extra: Partial<StateValue> = {}) => {
      const s = emptyState(id, nonce);
      return { ...(sides(user).hubIs1 ? { ...s, sent1: hubSent } : { ...s, sent2: hubSent }), ...extra };
    };

    // Warm-up channel so the contract (and the token's holders) are not empty.
    await openChannel(users[0]!);
    gas.clear();

    // open, deposit, withdraw, close, update, settle
    const u1 = users[1]!;
    const id1 = await openChannel(u1);
    const expiry = (await h.now()) + 3_600n;
    const w = { channelId: id1, participant: u1.address, totalWithdraw: 100n, expiry };
    record("withdraw", (await h.send(hub, "withdraw", "withdraw", id1, u1.address, hub.address, 100n, expiry, await h.signWithdraw(u1, w), await h.signWithdraw(hub, w))).gasUsed);
    const s1 = stateFor(id1, u1, 1n, 50n);
    const s2 = stateFor(id1, u1, 2n, 80n);
    record("close", (await h.send(hub, "close", "close", id1, u1.address, s1, await h.stateSig(u1, s1))).gasUsed);
    const { p1, p2 } = sides(u1);
    record("updateState", (await h.send(u1, "updateState", "updateState", id1, p1.address, p2.address, s2, await h.stateSig(p1, s2), await h.stateSig(p2, s2, 2n))).gasUsed);
    await h.increaseTime(period + 1);
    record("settle", (await h.send(u1, "settle", "settle", id1, p1.address, p2.address)).gasUsed);

    // cooperative close
    const u2 = users[2]!;
    const id2 = await openChannel(u2);
    {
      const { p1, p2, hubIs1 } = sides(u2);
      const capacity = mode === "issuer" ? 1_000_000n + 500n : 1_500n;
      const userBalance = 700n;
      const [b1, b2] = hubIs1 ? [capacity - userBalance, userBalance] : [userBalance, capacity - userBalance];
      const terms = { channelId: id2, balance1: b1, balance2: b2 };
      record("cooperativeClose", (await h.send(hub, "cooperativeClose", "cooperativeClose", id2, p1.address, p2.address, b1, b2, await h.signCoopClose(p1, terms), await h.signCoopClose(p2, terms))).gasUsed);
    }

    // settle with one lock, then unlock it
    const u3 = users[3]!;
    const id3 = await openChannel(u3);
    {
      const { p1, p2, hubIs1 } = sides(u3);
      const secret = hexlify(randomBytes(32));
      const lock: LockValue = { sender: hubIs1 ? 1 : 2, amount: 30n, expiry: (await h.now()) + 300n, secretHash: keccak256(secret) };
      const root = keccak256(AbiCoder.defaultAbiCoder().encode(["tuple(uint8,uint256,uint256,bytes32)[]"], [[[lock.sender, lock.amount, lock.expiry, lock.secretHash]]]));
      const s = stateFor(id3, u3, 5n, 10n, hubIs1 ? { locked1: 30n, locksRoot: root } : { locked2: 30n, locksRoot: root });
      await h.send(u3, "close", "close", id3, hub.address, s, await h.stateSig(hub, s));
      await mined(await h.registry.getFunction("registerSecret")(secret));
      await h.increaseTime(period + 1);
      await h.send(u3, "settle", "settle", id3, p1.address, p2.address);
      record("unlock (1 lock)", (await h.send(u3, "unlock", "unlock", id3, p1.address, p2.address, [lock])).gasUsed);
    }

    // penalty: the user closes with a revoked state
    const u4 = users[4]!;
    const id4 = await openChannel(u4);
    {
      const { p1, p2 } = sides(u4);
      const old = stateFor(id4, u4, 1n, 100n);
      const newer = stateFor(id4, u4, 2n, 20n);
      await h.send(u4, "close", "close", id4, hub.address, old, await h.stateSig(hub, old));
      const rev = await h.stateSig(u4, newer, 2n);
      record("penalize", (await h.send(hub, "penalize", "penalize", id4, p1.address, p2.address, 2n, h.stateHash(newer), rev.signature)).gasUsed);
    }
  } finally {
    await h.stop();
  }
  return Object.keys(RAIDEN).map((call) => ({ call, gas: gas.get(call) ?? NaN, raidenGas: RAIDEN[call] ?? null }));
}

function printTable(rows: Row[], mode: Mode): void {
  const pad = (s: string, n: number) => s.padStart(n);
  console.log(`Gas per call, StarlingChannels (${mode} mode) vs Raiden TokenNetwork v0.50`);
  console.log(`${"call".padEnd(18)}${pad("starling", 10)}${pad("raiden", 10)}${pad("ratio", 8)}`);
  for (const r of rows) {
    const ratio = r.raidenGas ? (r.gas / r.raidenGas).toFixed(2) : "-";
    const raiden = r.raidenGas ? r.raidenGas.toLocaleString("en-US") : "-";
    console.log(`${r.call.padEnd(18)}${pad(r.gas.toLocaleString("en-US"), 10)}${pad(raiden, 10)}${pad(ratio, 8)}`);
  }
  const over = rows.filter((r) => r.raidenGas && r.gas > 0.8 * r.raidenGas);
  console.log(over.length === 0 ? "every call is at most 0.8 of Raiden's" : `above 0.8 of Raiden's: ${over.map((r) => r.call).join(", ")}`);
}

// Run as a script (npm run gas); imported (the benchmark), it only provides measure().
if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const modeArg = args.includes("--mode") ? args[args.indexOf("--mode") + 1] : "collateral";
  if (modeArg !== "collateral" && modeArg !== "issuer") {
    console.error(`--mode must be collateral or issuer, not ${modeArg}`);
    process.exit(2);
  }
  const rows = await measure(modeArg);
  if (args.includes("--json")) console.log(JSON.stringify(rows, null, 2));
  else printTable(rows, modeArg);
}
