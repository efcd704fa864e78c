/**
 * The protocol core against the deployed contract: states, revocations, withdrawals and close
 * terms produced by src/protocol/channel.ts (hashed by src/protocol/eip712.ts, signed by
 * src/signer) are accepted by StarlingChannels byte for byte, and corrupted ones are refused.
 */
import { expect } from "chai";
import { getBytes, type HDNodeWallet } from "ethers";
import { startHarness, type Harness } from "./helpers/channels.js";
import { expectRevert } from "./helpers/revert.js";
import { loadBackend, type Secp256k1Backend } from "../src/signer/index.js";
import {
  newChannel,
  transition,
  DEFAULT_POLICY,
  type ChannelData,
  type ChannelInput,
  type ChannelEffect,
  type Deps,
  type Funding,
  type Side,
} from "../src/protocol/channel.js";
import { hashState, normalizeAddress } from "../src/protocol/eip712.js";
import type { Hex } from "../src/protocol/types.js";

const PERIOD = 600;

describe("protocol core against the contract", function () {
  let h: Harness;
  let snap: string;
  let backend: Secp256k1Backend;
  let w1: HDNodeWallet;
  let w2: HDNodeWallet;
  let id: Hex;
  let a: ChannelData; // side 1's copy
  let b: ChannelData; // side 2's copy
  let deps1: Deps;
  let deps2: Deps;

  before(async function () {
    h = await startHarness("collateral", PERIOD);
    backend = await loadBackend("auto");
    [w1, w2] = h.ordered(h.wallet(1), h.wallet(2));
    for (const w of [w1, w2]) await h.fundAndApprove(w, 1_000n);
  });
  after(async function () {
    await h?.stop();
  });
  beforeEach(async function () {
    snap = await h.snapshot();
    id = (await h.open(w1, w2)) as Hex;
    await h.deposit(id, w1, w2, 100n);
    await h.deposit(id, w2, w1, 100n);
    const now = await h.now();
    const mk = (w: HDNodeWallet): Deps => ({
      signer: backend.createSigner(getBytes(w.privateKey)),
      verifier: backend.verifier,
      now,
      policy: DEFAULT_POLICY,
    });
    deps1 = mk(w1);
    deps2 = mk(w2);
    const funding: Funding = { deposit1: 100n, deposit2: 100n, withdrawn1: 0n, withdrawn2: 0n, credit: 0n, creditSide: 0 };
    const config = (me: Side) => ({
      channelId: id,
      domain: { chainId: BigInt(h.devnet.deployment.chainId), verifyingContract: normalizeAddress(h.devnet.deployment.channels) },
      participant1: normalizeAddress(w1.address),
      participant2: normalizeAddress(w2.address),
      me,
    });
    a = newChannel(config(1), funding);
    b = newChannel(config(2), funding);
  });
  afterEach(async function () {
    await h.revert(snap);
  });

  /** Applies an input to one side and delivers every message it sends to the other, to quiescence. */
  function run(side: Side, input: ChannelInput): ChannelEffect[] {
    const all: ChannelEffect[] = [];
    let queue: { to: Side; input: ChannelInput }[] = [{ to: side, input }];
    while (queue.length > 0) {
      const next: typeof queue = [];
      for (const { to, input: i } of queue) {
        const r = transition(to === 1 ? a : b, i, to === 1 ? deps1 : deps2);
        if (!r.ok) throw new Error(`${r.error.code}: ${r.error.message}`);
        if (to === 1) a = r.channel;
        else b = r.channel;
        for (const e of r.effects) {
          all.push(e);
          if (e.type === "send") next.push({ to: to === 1 ? 2 : 1, input: { type: "receive", message: e.message } });
        }
      }
      queue = next;
    }
    return all;
  }
  const pay = (side: Side, amount: bigint) =>
    run(side, { type: "propose", ops: [{ type: "pay", amount, paymentId: ("0x" + "ab".repeat(32)) as Hex }] });

  it("closes with a TypeScript-signed state and settles per the protocol's balances", async function () {
    pay(1, 30n); // nonce 1
    pay(2, 5n); // nonce 2
    expect(a.latest.state.nonce).to.equal(2n);
    expect(a.latest.state).to.deep.equal(b.latest.state);
    // Side 2 closes with side 1's signature: side 1 = 100 - 30 + 5 = 75 is paid at once.
    const before1 = await h.balanceOf(w1.address);
    await h.send(w2, "close", "close", id, w1.address, b.latest.state, b.latest.sig1);
    expect(await h.balanceOf(w1.address)).to.equal(before1 + 75n);
    const c = await h.channel(w1, w2);
    expect(c.closerAmount).to.equal(125n);
    expect(c.nonce).to.equal(2n);
  });

  it("penalises with the revocation the core kept, and refuses a corrupted one", async function () {
    pay(2, 40n); // nonce 1: side 2 pays 40 (side 2 has 60)
    pay(1, 10n); // nonce 2
    pay(1, 10n); // nonce 3
    const revocation = a.partnerRevocation;
    expect(revocation, "side 1 holds side 2's revocation").to.not.equal(null);
    expect(revocation!.revokedBelow > 1n, "it covers nonce 1").to.equal(true);
    // Side 2 restores a backup from nonce 1 (its best state) and closes with it. Replaying the
    // first update reproduces that backup byte for byte (signatures are deterministic).
    const replay = newChannel(b.config, b.funding);
    const r1 = transition(replay, { type: "propose", ops: [{ type: "pay", amount: 40n, paymentId: ("0x" + "ab".repeat(32)) as Hex }] }, deps2);
    if (!r1.ok) throw new Error(r1.error.message);
    const proposal = r1.effects.find((e) => e.type === "send");
    if (!proposal || proposal.type !== "send" || proposal.message.type !== "Propose") throw new Error("no proposal");
    const fresh1 = newChannel(a.config, a.funding);
    const r2 = transition(fresh1, { type: "receive", message: proposal.message }, deps1);
    if (!r2.ok) throw new Error(r2.error.message);
    const oldState = r2.channel.latest.state;
    const oldSig1 = r2.channel.latest.sig1!;
    const before1 = await h.balanceOf(w1.address);
    await h.send(w2, "close", "close", id, w1.address, oldState, oldSig1);
    const pen = h.channels.getFunction("penalize");
    const corrupted = revocation!.signature.slice(0, -4) + (revocation!.signature.endsWith("1b") ? "001c" : "001b");
    await expectRevert(pen(id, w1.address, w2.address, revocation!.revokedBelow, revocation!.stateHash, corrupted), "InvalidSignature");
    await expectRevert(pen(id, w1.address, w2.address, revocation!.revokedBelow, hashState(oldState), revocation!.signature), "InvalidSignature");
    await h.send(w1, "penalize", "penalize", id, w1.address, w2.address, revocation!.revokedBelow, revocation!.stateHash, revocation!.signature);
    // Side 1 got 140 at close (its share of nonce 1) and now the remaining 60: the whole channel.
    expect(await h.balanceOf(w1.address)).to.equal(before1 + 200n);
  });

  it("updates a closed state with the newer one the core holds", async function () {
    pay(1, 20n); // nonce 1, side 1 proposes
    // Side 1 proposes nonce 2 (pays 30 more), side 2 countersigns; side 1 closes with nonce 1,
    // which it has not yet revoked explicitly (its revocation rides on its next signature).
    pay(1, 30n);
    // Side 1's copy of nonce 1 with side 2's signature is what a stale side-1 backup holds.
    const stale = transition(newChannel(a.config, a.funding), { type: "propose", ops: [{ type: "pay", amount: 20n, paymentId: ("0x" + "ab".repeat(32)) as Hex }] }, deps1);
    if (!stale.ok) throw new Error(stale.error.message);
    const msg = stale.effects.find((e) => e.type === "send");
    if (!msg || msg.type !== "send" || msg.message.type !== "Propose") throw new Error("no proposal");
    const counter = transition(newChannel(b.config, b.funding), { type: "receive", message: msg.message }, deps2);
    if (!counter.ok) throw new Error(counter.error.message);
    const s1 = counter.channel.latest;
    await h.send(w1, "close", "close", id, w2.address, s1.state, s1.sig2);
    const before2 = await h.balanceOf(w2.address);
    await h.send(w2, "updateState", "updateState", id, w1.address, w2.address, b.latest.state, b.latest.sig1, { revokedBelow: 0n, signature: "0x" });
    expect(await h.balanceOf(w2.address)).to.equal(before2 + 30n);
    const corrupted = { ...b.latest.state, sent1: b.latest.state.sent1 + 1n };
    await expectRevert(
      h.channels.getFunction("updateState")(id, w1.address, w2.address, corrupted, b.latest.sig1, b.latest.sig2),
      "StaleNonce",
    );
  });

  it("executes a withdrawal and a cooperative close signed by the core", async function () {
    pay(1, 10n);
    const now = await h.now();
    const effects = run(2, { type: "requestWithdraw", amount: 50n, expiry: now + 600n });
    const ready = effects.find((e) => e.type === "withdrawReady");
    if (!ready || ready.type !== "withdrawReady") throw new Error("withdrawal not ready");
    const { request, sig1, sig2 } = ready.withdraw;
    const before2 = await h.balanceOf(w2.address);
    const bad = sig1!.slice(0, 10) + (sig1![10] === "0" ? "1" : "0") + sig1!.slice(11);
    await expectRevert(
      h.channels.getFunction("withdraw")(id, w2.address, w1.address, request.totalWithdraw, request.expiry, sig2, bad),
      "InvalidSignature",
    );
    await h.send(h.wallet(3), "withdraw", "withdraw", id, w2.address, w1.address, request.totalWithdraw, request.expiry, sig2, sig1);
    expect(await h.balanceOf(w2.address)).to.equal(before2 + 50n);
    const funding = { ...a.funding, withdrawn2: 50n };
    run(1, { type: "fundingChanged", funding });
    run(2, { type: "fundingChanged", funding });
    const closing = run(1, { type: "requestCooperativeClose" });
    const terms = closing.find((e) => e.type === "cooperativeCloseReady");
    if (!terms || terms.type !== "cooperativeCloseReady") throw new Error("close not ready");
    expect(terms.terms.balance1 + terms.terms.balance2).to.equal(150n);
    const before1 = await h.balanceOf(w1.address);
    await h.send(h.wallet(3), "cooperativeClose", "cooperativeClose", id, w1.address, w2.address, terms.terms.balance1, terms.terms.balance2, terms.sig1, terms.sig2);
    expect(await h.balanceOf(w1.address)).to.equal(before1 + 90n);
  });
});
