/**
 * The channel contract on the embedded chain (anvil), collateral mode: every external function's
 * happy path and revert paths, with token conservation checked around each scenario.
 */
import { expect } from "chai";
import { AbiCoder, keccak256, randomBytes, hexlify, type HDNodeWallet } from "ethers";
import { startHarness, type Harness, emptyState, sum, ZERO32, type StateValue, type LockValue } from "./helpers/channels.js";
import { expectRevert } from "./helpers/revert.js";
import { mined } from "../src/chain/deploy.js";

const coder = AbiCoder.defaultAbiCoder();
const PERIOD = 600;

describe("StarlingChannels (collateral mode)", function () {
  let h: Harness;
  let snap: string;
  let p1: HDNodeWallet; // lower address
  let p2: HDNodeWallet;
  let outsider: HDNodeWallet;
  let id: string;

  before(async function () {
    h = await startHarness("collateral", PERIOD);
    [p1, p2] = h.ordered(h.wallet(1), h.wallet(2));
    outsider = h.wallet(3);
    for (const w of [p1, p2, outsider]) await h.fundAndApprove(w, 1_000n);
  });
  after(async function () {
    await h?.stop();
  });
  beforeEach(async function () {
    snap = await h.snapshot();
    id = await h.open(p1, p2);
    await h.deposit(id, p1, p2, 100n);
    await h.deposit(id, p2, p1, 50n);
  });
  afterEach(async function () {
    await h.revert(snap);
  });

  const all = () => [p1, p2, outsider];
  const total = async () => sum(await h.holdings(all()));

  function state(nonce: bigint, sent1 = 0n, sent2 = 0n, extra: Partial<StateValue> = {}): StateValue {
    return { ...emptyState(id, nonce), sent1, sent2, ...extra };
  }

  describe("open", function () {
    it("derives the channel id from chain id, contract, ordered participants and counter", async function () {
      const expected = keccak256(
        coder.encode(
          ["uint256", "address", "address", "address", "uint24"],
          [h.devnet.deployment.chainId, h.devnet.deployment.channels, p1.address, p2.address, 1],
        ),
      );
      expect(id).to.equal(expected);
      expect(await h.channels.getFunction("channelId")(p2.address, p1.address)).to.equal(expected);
      const c = await h.channel(p1, p2);
      expect(c.phase).to.equal(1n);
      expect(c.deposit1).to.equal(100n);
      expect(c.deposit2).to.equal(50n);
    });

    it("lets a third party open a channel for a pair and emits ChannelOpened", async function () {
      const receipt = await h.send(outsider, "open", "open", h.wallet(4).address, h.wallet(5).address);
      const log = receipt.logs.map((l) => h.channels.interface.parseLog(l)).find((l) => l?.name === "ChannelOpened");
      expect(log?.args[0]).to.equal(await h.channels.getFunction("channelId")(h.wallet(4).address, h.wallet(5).address));
    });

    it("refuses a second channel for the same pair, a self channel and the zero address", async function () {
      await expectRevert(h.channels.getFunction("open")(p2.address, p1.address), "WrongPhase");
      await expectRevert(h.channels.getFunction("open")(p1.address, p1.address), "InvalidParticipants");
      await expectRevert(h.channels.getFunction("open")(p1.address, "0x" + "00".repeat(20)), "InvalidParticipants");
    });
  });

  describe("deposit", function () {
    it("takes the difference to a monotonic total and refuses a repeat", async function () {
      const before = await h.balanceOf(p1.address);
      await h.deposit(id, p1, p2, 130n);
      expect(await h.balanceOf(p1.address)).to.equal(before - 30n);
      expect((await h.channel(p1, p2)).deposit1).to.equal(130n);
      await expectRevert(h.deposit(id, p1, p2, 130n), "TotalNotIncreasing");
      await expectRevert(h.deposit(id, p1, p2, 120n), "TotalNotIncreasing");
    });

    it("fails without allowance and changes nothing", async function () {
      const poor = h.wallet(6);
      await h.open(poor, p1);
      const pid = await h.channels.getFunction("channelId")(poor.address, p1.address);
      await expectRevert(h.deposit(pid, poor, p1, 10n), "ERC20InsufficientAllowance", h.token);
      expect((await h.channel(poor, p1)).deposit1 + (await h.channel(poor, p1)).deposit2).to.equal(0n);
    });

    it("refuses a wrong channel id and a non-participant", async function () {
      await expectRevert(h.deposit(ZERO32, p1, p2, 200n), "ChannelIdMismatch");
      await expectRevert(h.deposit(id, outsider, p2, 200n), "ChannelIdMismatch");
    });
  });

  describe("cooperative withdraw", function () {
    async function withdrawSigs(participant: HDNodeWallet, totalWithdraw: bigint, expiry?: bigint, channelId = id) {
      const v = { channelId, participant: participant.address, totalWithdraw, expiry: expiry ?? (await h.now()) + 100n };
      const partner = participant === p1 ? p2 : p1;
      return { v, mine: await h.signWithdraw(participant, v), theirs: await h.signWithdraw(partner, v), partner };
    }

    it("pays the participant, keeps the channel open, and is submitted by anyone", async function () {
      const t0 = await total();
      const { v, mine, theirs, partner } = await withdrawSigs(p2, 70n);
      const before = await h.balanceOf(p2.address);
      await h.send(outsider, "withdraw", "withdraw", id, p2.address, partner.address, v.totalWithdraw, v.expiry, mine, theirs);
      expect(await h.balanceOf(p2.address)).to.equal(before + 70n);
      expect((await h.channel(p1, p2)).phase).to.equal(1n);
      expect(await total()).to.equal(t0);
    });

    it("refuses a replay, an expired request and more than the channel holds", async function () {
      const { v, mine, theirs } = await withdrawSigs(p1, 20n);
      await h.send(p1, "withdraw", "withdraw", id, p1.address, p2.address, 20n, v.expiry, mine, theirs);
      await expectRevert(h.channels.getFunction("withdraw")(id, p1.address, p2.address, 20n, v.expiry, mine, theirs), "TotalNotIncreasing");
      const late = await withdrawSigs(p1, 30n, (await h.now()) + 5n);
      await h.increaseTime(10);
      await expectRevert(h.channels.getFunction("withdraw")(id, p1.address, p2.address, 30n, late.v.expiry, late.mine, late.theirs), "WithdrawExpired");
      const big = await withdrawSigs(p1, 151n);
      await expectRevert(h.channels.getFunction("withdraw")(id, p1.address, p2.address, 151n, big.v.expiry, big.mine, big.theirs), "WithdrawExceedsChannel");
    });

    it("refuses bad, swapped and foreign signatures", async function () {
      const { v, mine, theirs } = await withdrawSigs(p1, 20n);
      const w = h.channels.getFunction("withdraw");
      await expectRevert(w(id, p1.address, p2.address, 20n, v.expiry, theirs, mine), "InvalidSignature");
      const forged = await h.signWithdraw(outsider, v);
      await expectRevert(w(id, p1.address, p2.address, 20n, v.expiry, mine, forged), "InvalidSignature");
      await expectRevert(w(id, p1.address, p2.address, 21n, v.expiry, mine, theirs), "InvalidSignature");
      // Signed for another chain id, another contract, another channel.
      const otherChain = { ...h.domain, chainId: 1n };
      const otherContract = { ...h.domain, verifyingContract: h.devnet.deployment.token };
      for (const domain of [otherChain, otherContract]) {
        const a = await p1.signTypedData(domain, (await import("../src/chain/typed-data.js")).TYPES.Withdraw, v);
        const b = await p2.signTypedData(domain, (await import("../src/chain/typed-data.js")).TYPES.Withdraw, v);
        await expectRevert(w(id, p1.address, p2.address, 20n, v.expiry, a, b), "InvalidSignature");
      }
      const other = await withdrawSigs(p1, 20n, v.expiry, keccak256("0x01"));
      await expectRevert(w(id, p1.address, p2.address, 20n, v.expiry, other.mine, other.theirs), "InvalidSignature");
      // Malformed signature bytes.
      await expectRevert(w(id, p1.address, p2.address, 20n, v.expiry, "0x1234", theirs), "InvalidSignature");
    });
  });

  describe("cooperative close", function () {
    it("pays both final balances at once and ends the channel; a reopened channel has a new id", async function () {
      const t0 = await total();
      const terms = { channelId: id, balance1: 30n, balance2: 120n };
      const s1 = await h.signCoopClose(p1, terms);
      const s2 = await h.signCoopClose(p2, terms);
      const [b1, b2] = [await h.balanceOf(p1.address), await h.balanceOf(p2.address)];
      await h.send(outsider, "cooperativeClose", "cooperativeClose", id, p1.address, p2.address, 30n, 120n, s1, s2);
      expect(await h.balanceOf(p1.address)).to.equal(b1 + 30n);
      expect(await h.balanceOf(p2.address)).to.equal(b2 + 120n);
      expect((await h.channel(p1, p2)).phase).to.equal(0n);
      expect(await total()).to.equal(t0);
      const id2 = await h.open(p1, p2);
      expect(id2).to.not.equal(id);
      // The old channel's signatures do not close the new one.
      await expectRevert(h.channels.getFunction("cooperativeClose")(id, p1.address, p2.address, 0n, 0n, s1, s2), "ChannelIdMismatch");
    });

    it("refuses balances that do not add up, bad signatures and unordered participants", async function () {
      const bad = { channelId: id, balance1: 30n, balance2: 121n };
      const cc = h.channels.getFunction("cooperativeClose");
      await expectRevert(cc(id, p1.address, p2.address, 30n, 121n, await h.signCoopClose(p1, bad), await h.signCoopClose(p2, bad)), "BalancesMismatch");
      const ok = { channelId: id, balance1: 30n, balance2: 120n };
      const s1 = await h.signCoopClose(p1, ok);
      await expectRevert(cc(id, p1.address, p2.address, 30n, 120n, s1, await h.signCoopClose(outsider, ok)), "InvalidSignature");
      await expectRevert(cc(id, p2.address, p1.address, 120n, 30n, s1, s1), "ParticipantsNotOrdered");
    });
  });

  describe("unilateral close, update, settle", function () {
    it("pays the non-closer at close and the closer after the challenge period", async function () {
      const t0 = await total();
      // p1 paid p2 40, p2 paid p1 10: p1 = 100 - 40 + 10 = 70, p2 = 50 + 40 - 10 = 80
      const s = state(3n, 40n, 10n);
      const before2 = await h.balanceOf(p2.address);
      await h.send(p1, "close", "close", id, p2.address, s, await h.stateSig(p2, s, 2n));
      expect(await h.balanceOf(p2.address)).to.equal(before2 + 80n);
      const c = await h.channel(p1, p2);
      expect(c.phase).to.equal(2n);
      expect(c.closerAmount).to.equal(70n);
      await expectRevert(h.channels.getFunction("settle")(id, p1.address, p2.address), "ChallengePeriodRunning");
      await h.increaseTime(PERIOD + 1);
      const before1 = await h.balanceOf(p1.address);
      await h.send(outsider, "settle", "settle", id, p1.address, p2.address);
      expect(await h.balanceOf(p1.address)).to.equal(before1 + 70n);
      expect((await h.channel(p1, p2)).phase).to.equal(0n);
      expect(await total()).to.equal(t0);
    });

    it("closes without any off-chain state: each side keeps deposits minus withdrawals", async function () {
      const before1 = await h.balanceOf(p1.address);
      await h.send(p2, "close", "close", id, p1.address, emptyState(id), { revokedBelow: 0n, signature: "0x" });
      expect(await h.balanceOf(p1.address)).to.equal(before1 + 100n);
      await expectRevert(
        (h.channels.connect(p2) as typeof h.channels).getFunction("close")(id, p1.address, state(0n, 1n), { revokedBelow: 0n, signature: "0x" }),
        "WrongPhase",
      );
    });

    it("refuses a nonce-0 state with amounts, a state of another channel and a forged partner signature", async function () {
      const close = (h.channels.connect(p1) as typeof h.channels).getFunction("close");
      await expectRevert(close(id, p2.address, state(0n, 0n, 5n), { revokedBelow: 0n, signature: "0x" }), "InvalidState");
      const foreign = { ...state(1n), channelId: keccak256("0x02") };
      await expectRevert(close(id, p2.address, foreign, await h.stateSig(p2, foreign)), "ChannelIdMismatch");
      const s = state(1n, 0n, 50n);
      await expectRevert(close(id, p2.address, s, await h.stateSig(outsider, s)), "InvalidSignature");
      await expectRevert(close(id, p2.address, s, await h.stateSig(p1, s)), "InvalidSignature");
    });

    it("accepts a newer state from anyone during the period and pays the non-closer the increase", async function () {
      const t0 = await total();
      const s1 = state(1n, 0n, 0n);
      await h.send(p1, "close", "close", id, p2.address, s1, await h.stateSig(p2, s1));
      // p1 proposed nonce 2 paying p2 30; p2 countersigned (revoking 1); p1's revocation of 1 not yet sent.
      const s2 = state(2n, 30n, 0n);
      const sig1 = await h.stateSig(p1, s2, 0n);
      const sig2 = await h.stateSig(p2, s2, 2n);
      const before2 = await h.balanceOf(p2.address);
      await h.send(outsider, "updateState", "updateState", id, p1.address, p2.address, s2, sig1, sig2);
      expect(await h.balanceOf(p2.address)).to.equal(before2 + 30n);
      const u = h.channels.getFunction("updateState");
      await expectRevert(u(id, p1.address, p2.address, s2, sig1, sig2), "StaleNonce");
      await expectRevert(u(id, p1.address, p2.address, s1, await h.stateSig(p1, s1), await h.stateSig(p2, s1)), "StaleNonce");
      await h.increaseTime(PERIOD + 1);
      const s3 = state(3n, 40n, 0n);
      await expectRevert(u(id, p1.address, p2.address, s3, await h.stateSig(p1, s3), await h.stateSig(p2, s3)), "ChallengePeriodOver");
      await mined(await h.channels.getFunction("settle")(id, p1.address, p2.address));
      expect(await total()).to.equal(t0);
    });

    it("refuses an update that would lower what the non-closer was already paid", async function () {
      const s1 = state(1n, 0n, 0n);
      await h.send(p1, "close", "close", id, p2.address, s1, await h.stateSig(p2, s1));
      const s2 = state(2n, 0n, 20n); // p2 paid p1 20
      await expectRevert(
        h.channels.getFunction("updateState")(id, p1.address, p2.address, s2, await h.stateSig(p1, s2), await h.stateSig(p2, s2)),
        "LowersPaidShare",
      );
    });

    it("refuses an update with a wrong or swapped signature", async function () {
      const s1 = state(1n);
      await h.send(p1, "close", "close", id, p2.address, s1, await h.stateSig(p2, s1));
      const s2 = state(2n, 10n);
      const a = await h.stateSig(p1, s2);
      const b = await h.stateSig(p2, s2);
      const u = h.channels.getFunction("updateState");
      await expectRevert(u(id, p1.address, p2.address, s2, b, a), "InvalidSignature");
      await expectRevert(u(id, p1.address, p2.address, s2, a, await h.stateSig(outsider, s2)), "InvalidSignature");
      await expectRevert(u(id, p1.address, p2.address, s2, a, { ...b, revokedBelow: 7n }), "InvalidSignature");
    });
  });

  describe("penalty", function () {
    /** p1 and p2 went through nonces 1..3; returns what each holds. */
    async function history() {
      const s1 = state(1n, 0n, 10n); // p2 paid p1 10
      const s2 = state(2n, 0n, 40n); // p2 paid p1 30 more
      const s3 = state(3n, 20n, 40n); // p1 paid p2 20
      return { s1, s2, s3 };
    }

    it("forfeits the whole channel to the challenger when the closer closes with a revoked state", async function () {
      const t0 = await total();
      const { s1, s3 } = await history();
      // p1 cheats: closes with nonce 1 (good for p1: 110) although it revoked it when signing nonce 3.
      await h.send(p1, "close", "close", id, p2.address, s1, await h.stateSig(p2, s1));
      const revocation = await h.stateSig(p1, s3, 3n); // p1's Update signature on nonce 3 revokes < 3
      const before2 = await h.balanceOf(p2.address);
      const receipt = await h.send(outsider, "penalize", "penalize", id, p1.address, p2.address, revocation.revokedBelow, h.stateHash(s3), revocation.signature);
      // p2 got its share of s1 (40) at close, and now everything else (110).
      expect(await h.balanceOf(p2.address)).to.equal(before2 + 110n);
      const ev = receipt.logs.map((l) => h.channels.interface.parseLog(l)).find((l) => l?.name === "ChannelPenalized");
      expect(ev?.args[1]).to.equal(p1.address);
      expect((await h.channel(p1, p2)).phase).to.equal(0n);
      expect(await h.balanceOf(h.devnet.deployment.channels)).to.equal(0n);
      expect(await total()).to.equal(t0);
    });

    it("refuses a revocation that does not cover the closed nonce, one by the wrong party, and after the period", async function () {
      const { s2, s3 } = await history();
      await h.send(p1, "close", "close", id, p2.address, s2, await h.stateSig(p2, s2, 1n));
      const pen = h.channels.getFunction("penalize");
      const tooOld = await h.stateSig(p1, s2, 1n);
      await expectRevert(pen(id, p1.address, p2.address, 1n, h.stateHash(s2), tooOld.signature), "RevocationTooOld");
      await expectRevert(pen(id, p1.address, p2.address, 2n, h.stateHash(s3), (await h.stateSig(p1, s3, 2n)).signature), "RevocationTooOld");
      const byVictim = await h.stateSig(p2, s3, 3n);
      await expectRevert(pen(id, p1.address, p2.address, 3n, h.stateHash(s3), byVictim.signature), "InvalidSignature");
      const good = await h.stateSig(p1, s3, 3n);
      await expectRevert(pen(id, p1.address, p2.address, 4n, h.stateHash(s3), good.signature), "InvalidSignature");
      await h.increaseTime(PERIOD + 1);
      await expectRevert(pen(id, p1.address, p2.address, 3n, h.stateHash(s3), good.signature), "ChallengePeriodOver");
    });

    it("does not accept a revocation signed for another channel of the same closer", async function () {
      const third = h.wallet(4);
      await h.fundAndApprove(third, 100n);
      const otherId = await h.open(p1, third);
      const { s1 } = await history();
      await h.send(p1, "close", "close", id, p2.address, s1, await h.stateSig(p2, s1));
      const foreignState = { ...state(9n), channelId: otherId };
      const foreign = await p1.signTypedData(h.domain, (await import("../src/chain/typed-data.js")).TYPES.Update, {
        channelId: otherId,
        revokedBelow: 8n,
        state: foreignState,
      });
      await expectRevert(
        h.channels.getFunction("penalize")(id, p1.address, p2.address, 8n, h.stateHash(foreignState), foreign),
        "InvalidSignature",
      );
    });
  });

  describe("HTLC locks", function () {
    function lockList(locks: LockValue[]): string {
      return keccak256(coder.encode(["tuple(uint8,uint256,uint256,bytes32)[]"], [locks.map((l) => [l.sender, l.amount, l.expiry, l.secretHash])]));
    }

    it("pays a lock whose secret was registered before expiry to its receiver, returns the others", async function () {
      const t0 = await total();
      const now = await h.now();
      const secretA = hexlify(randomBytes(32));
      const secretB = hexlify(randomBytes(32));
      const secretC = hexlify(randomBytes(32));
      const locks: LockValue[] = [
        { sender: 1, amount: 25n, expiry: now + 100n, secretHash: keccak256(secretA) }, // revealed in time -> p2
        { sender: 1, amount: 5n, expiry: now + 100n, secretHash: keccak256(secretB) }, // never revealed -> p1
        { sender: 2, amount: 7n, expiry: now + 50n, secretHash: keccak256(secretC) }, // revealed late -> p2
      ];
      expect(await h.channels.getFunction("hashLocks")(locks)).to.equal(lockList(locks));
      const s = state(4n, 10n, 0n, { locked1: 30n, locked2: 7n, locksRoot: lockList(locks) });
      // balances: p1 = 100 - 10 - 30 = 60, p2 = 50 + 10 - 7 = 53, locked 37
      const before1 = await h.balanceOf(p1.address);
      const before2 = await h.balanceOf(p2.address);
      await h.send(p2, "close", "close", id, p1.address, s, await h.stateSig(p1, s));
      expect(await h.balanceOf(p1.address)).to.equal(before1 + 60n); // the non-closer, at once
      await mined(await h.registry.getFunction("registerSecret")(secretA));
      await h.increaseTime(PERIOD + 1); // past every expiry
      await mined(await h.registry.getFunction("registerSecret")(secretC)); // too late for its lock
      await expectRevert(h.channels.getFunction("unlock")(id, p1.address, p2.address, locks), "WrongPhase");
      await h.send(outsider, "settle", "settle", id, p1.address, p2.address);
      expect(await h.balanceOf(p2.address)).to.equal(before2 + 53n); // the closer, after the period
      await expectRevert(h.channels.getFunction("unlock")(id, p1.address, p2.address, locks.slice(0, 2)), "LocksRootMismatch");
      await h.send(outsider, "unlock", "unlock", id, p1.address, p2.address, locks);
      expect(await h.balanceOf(p1.address)).to.equal(before1 + 60n + 5n);
      expect(await h.balanceOf(p2.address)).to.equal(before2 + 53n + 25n + 7n);
      expect((await h.channel(p1, p2)).phase).to.equal(0n);
      expect(await total()).to.equal(t0);
    });

    it("keeps a lock waiting while its secret may still be revealed", async function () {
      const now = await h.now();
      const secret = hexlify(randomBytes(32));
      const locks: LockValue[] = [{ sender: 2, amount: 10n, expiry: now + BigInt(PERIOD) * 3n, secretHash: keccak256(secret) }];
      const s = state(1n, 0n, 0n, { locked2: 10n, locksRoot: lockList(locks) });
      await h.send(p2, "close", "close", id, p1.address, s, await h.stateSig(p1, s));
      await h.increaseTime(PERIOD + 1);
      await mined(await h.channels.getFunction("settle")(id, p1.address, p2.address));
      await expectRevert(h.channels.getFunction("unlock")(id, p1.address, p2.address, locks), "LockNotExpired");
      const before1 = await h.balanceOf(p1.address);
      await mined(await h.registry.getFunction("registerSecret")(secret));
      await mined(await h.channels.getFunction("unlock")(id, p1.address, p2.address, locks));
      expect(await h.balanceOf(p1.address)).to.equal(before1 + 10n);
    });

    it("registers a secret once and keeps the first time", async function () {
      const secret = hexlify(randomBytes(32));
      await mined(await h.registry.getFunction("registerSecret")(secret));
      const t1 = await h.registry.getFunction("revealedAt")(keccak256(secret));
      await h.increaseTime(5);
      await mined(await h.registry.getFunction("registerSecrets")([secret, hexlify(randomBytes(32))]));
      expect(await h.registry.getFunction("revealedAt")(keccak256(secret))).to.equal(t1);
    });
  });

  it("refuses the issuer-mode calls in collateral mode", async function () {
    await expectRevert(h.channels.getFunction("setCreditLimit")(p1.address, 1n), "NotIssuerMode");
    await expectRevert((h.channels.connect(p1) as typeof h.channels).getFunction("grantCredit")(id, p2.address, 1n), "NotIssuerMode");
  });
});
