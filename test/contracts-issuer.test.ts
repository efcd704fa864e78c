/**
 * Issuer mode: a hub's side is a credit line granted under the issuer's limit. Deposits are burned
 * on entry, payouts minted on exit, and what reaches the credit side is absorbed by its unused
 * credit first. The token supply therefore grows exactly by the credit users took out.
 */
import { expect } from "chai";
import type { HDNodeWallet } from "ethers";
import { startHarness, type Harness, emptyState, type StateValue } from "./helpers/channels.js";
import { expectRevert } from "./helpers/revert.js";
import { mined } from "../src/chain/deploy.js";

const PERIOD = 600;
const CREDIT = 1_000_000n;

describe("StarlingChannels (issuer mode)", function () {
  let h: Harness;
  let snap: string;
  let issuer: HDNodeWallet;
  let hub: HDNodeWallet;
  let user: HDNodeWallet;
  let id: string;
  let hubSide: 1 | 2;

  before(async function () {
    h = await startHarness("issuer", PERIOD);
    issuer = h.wallet(0);
    hub = h.wallet(1);
    user = h.wallet(2);
    hubSide = BigInt(hub.address) < BigInt(user.address) ? 1 : 2;
    await h.fundAndApprove(user, 500n);
    await h.send(issuer, "setCreditLimit", "setCreditLimit", hub.address, CREDIT);
  });
  after(async function () {
    await h?.stop();
  });
  beforeEach(async function () {
    snap = await h.snapshot();
    id = await h.open(hub, user);
    await h.send(hub, "grantCredit", "grantCredit", id, user.address, CREDIT);
  });
  afterEach(async function () {
    await h.revert(snap);
  });

  /** A state where the hub has sent `hubSent` and the user `userSent`. */
  function state(nonce: bigint, hubSent: bigint, userSent: bigint): StateValue {
    const s = emptyState(id, nonce);
    return hubSide === 1 ? { ...s, sent1: hubSent, sent2: userSent } : { ...s, sent1: userSent, sent2: hubSent };
  }
  const ordered = () => h.ordered(hub, user);
  const balances = (hubBalance: bigint, userBalance: bigint): [bigint, bigint] =>
    hubSide === 1 ? [hubBalance, userBalance] : [userBalance, hubBalance];

  it("limits credit to what the issuer allowed, once per channel side", async function () {
    await expectRevert((h.channels.connect(hub) as typeof h.channels).getFunction("grantCredit")(id, user.address, CREDIT + 1n), "CreditLimitExceeded");
    await expectRevert((h.channels.connect(hub) as typeof h.channels).getFunction("grantCredit")(id, user.address, CREDIT), "TotalNotIncreasing");
    await expectRevert((h.channels.connect(user) as typeof h.channels).getFunction("grantCredit")(id, hub.address, 1n), "CreditLimitExceeded");
    await expectRevert((h.channels.connect(hub) as typeof h.channels).getFunction("setCreditLimit")(hub.address, 1n), "NotIssuer");
    expect((await h.channel(hub, user)).credit).to.equal(CREDIT);
  });

  it("burns deposits and mints withdrawals: the supply grows by the credit the user took out", async function () {
    const supply0 = await h.totalSupply();
    await h.deposit(id, user, hub, 200n);
    expect(await h.totalSupply()).to.equal(supply0 - 200n);
    // The hub issued 300 to the user; the user withdraws 450 of its 500.
    const expiry = (await h.now()) + 100n;
    const w = { channelId: id, participant: user.address, totalWithdraw: 450n, expiry };
    const userBefore = await h.balanceOf(user.address);
    await h.send(hub, "withdraw", "withdraw", id, user.address, hub.address, 450n, expiry, await h.signWithdraw(user, w), await h.signWithdraw(hub, w));
    expect(await h.balanceOf(user.address)).to.equal(userBefore + 450n);
    // Cooperative close: user 50, hub CREDIT - 300. The hub's share is unused credit: nothing minted.
    const [b1, b2] = balances(CREDIT - 300n, 50n);
    const terms = { channelId: id, balance1: b1, balance2: b2 };
    const [p1, p2] = ordered();
    await h.send(hub, "cooperativeClose", "cooperativeClose", id, p1.address, p2.address, b1, b2, await h.signCoopClose(p1, terms), await h.signCoopClose(p2, terms));
    expect(await h.balanceOf(hub.address)).to.equal(0n);
    expect(await h.balanceOf(user.address)).to.equal(userBefore + 500n);
    expect(await h.totalSupply()).to.equal(supply0 + 300n);
  });

  it("pays the hub real value only beyond its credit", async function () {
    const supply0 = await h.totalSupply();
    await h.deposit(id, user, hub, 200n);
    // The user paid the hub 120: hub = CREDIT + 120, user = 80.
    const s = state(1n, 0n, 120n);
    const hubBefore = await h.balanceOf(hub.address);
    await h.send(user, "close", "close", id, hub.address, s, await h.stateSig(hub, s));
    expect(await h.balanceOf(hub.address)).to.equal(hubBefore + 120n);
    await h.increaseTime(PERIOD + 1);
    const [p1, p2] = ordered();
    await mined(await h.channels.getFunction("settle")(id, p1.address, p2.address));
    expect(await h.balanceOf(user.address)).to.equal(500n - 200n + 80n);
    expect(await h.totalSupply()).to.equal(supply0);
  });

  it("mints the whole credit line to the user when the hub closes with a revoked state", async function () {
    const supply0 = await h.totalSupply();
    await h.deposit(id, user, hub, 100n);
    const s1 = state(1n, 10n, 0n);
    const s2 = state(2n, 40n, 0n);
    await h.send(hub, "close", "close", id, user.address, s1, await h.stateSig(user, s1));
    const userAfterClose = await h.balanceOf(user.address);
    expect(userAfterClose).to.equal(500n - 100n + 110n);
    const rev = await h.stateSig(hub, s2, 2n);
    const [p1, p2] = ordered();
    await h.send(user, "penalize", "penalize", id, p1.address, p2.address, 2n, h.stateHash(s2), rev.signature);
    expect(await h.balanceOf(user.address)).to.equal(500n + CREDIT);
    expect(await h.balanceOf(hub.address)).to.equal(0n);
    expect(await h.totalSupply()).to.equal(supply0 + CREDIT);
  });

  it("gives the hub only the user's real deposits when the user cheats", async function () {
    const supply0 = await h.totalSupply();
    await h.deposit(id, user, hub, 100n);
    const s1 = state(1n, 50n, 0n); // hub issued 50
    const s2 = state(2n, 50n, 30n); // user paid back 30
    await h.send(user, "close", "close", id, hub.address, s1, await h.stateSig(hub, s1));
    const rev = await h.stateSig(user, s2, 2n);
    const [p1, p2] = ordered();
    await h.send(hub, "penalize", "penalize", id, p1.address, p2.address, 2n, h.stateHash(s2), rev.signature);
    expect(await h.balanceOf(hub.address)).to.equal(100n);
    expect(await h.balanceOf(user.address)).to.equal(400n);
    expect(await h.totalSupply()).to.equal(supply0);
  });
});
