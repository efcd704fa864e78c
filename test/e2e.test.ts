/**
 * End to end: one hub and three users as separate `starling start` processes on the embedded
 * chain (collateral mode), driven only through the JSON-RPC API and the CLI. One cluster serves
 * the whole file; the tests run in order and each measures the values it checks before acting,
 * so a failure points at one step. Needs dist/ built (`npx tsc -p .`).
 */
import { expect } from "chai";
import { keccak256 } from "ethers";
import { WebSocket } from "ws";
import {
  Cluster,
  cliBuildStatus,
  randomId,
  waitFor,
  type ChannelWire,
  type ClusterNode,
  type NodeClient,
  type PaymentWire,
} from "../src/devkit/cluster.js";
import { RpcClient } from "../src/rpc/index.js";
import type { NodeEventMap, NodeMethods } from "../src/node/api.js";
import { agreed, eventually, rpcError } from "./helpers/daemon-asserts.js";

const T = 10n ** 18n; // one token in base units
const HUB_FUNDS = 10_000n * T;
const HUB_DEPOSIT = 1_000n * T; // config hub.depositPerChannel
const CAROL_DEPOSIT = 300n * T;
const CHALLENGE_PERIOD = 5;

const s = (v: bigint) => v.toString();

/** The JSON-RPC error a call failed with. */

interface RawReply {
  result?: unknown;
  error?: { code: number; message: string; data?: unknown };
}

/** One request over a bare WebSocket, so params the typed client would refuse reach the node. */
async function rawCall(url: string, body: string, headers: Record<string, string> = {}): Promise<RawReply> {
  const ws = new WebSocket(url, { headers });
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    const reply = new Promise<string>((resolve, reject) => {
      ws.once("message", (d: Buffer) => resolve(d.toString("utf8")));
      ws.once("close", (code) => reject(new Error(`connection closed (${code}) before a reply`)));
    });
    ws.send(body);
    return JSON.parse(await reply) as RawReply;
  } finally {
    ws.terminate();
  }
}

const bearer = (node: ClusterNode) => ({ Authorization: `Bearer ${node.token}` });

describe("end to end: hub and users as daemons on the embedded chain", function () {
  this.timeout(120_000);
  let cluster: Cluster | undefined;
  let hub: ClusterNode;
  let alice: ClusterNode;
  let bob: ClusterNode;
  let carol: ClusterNode;
  let failed = false;
  /** Connections a test opens besides the nodes' own clients; closed after each test. */
  const extra: NodeClient[] = [];

  const c = (): Cluster => {
    if (!cluster) throw new Error("no cluster");
    return cluster;
  };


  const pay = (from: ClusterNode, to: ClusterNode, amount: bigint, paymentId = randomId()) =>
    from.rpc.call("payment.pay", { paymentId, to: to.address, amount: s(amount) });

  const channelBalance = async (n: ClusterNode) => (await n.balances()).channels;

  before(async function () {
    // `npm test` builds dist/ first (pretest); the daemons run it.
    const build = cliBuildStatus();
    if (build === "missing") throw new Error("the daemons run dist/, which is not built: run `npm run build` (npm test does)");
    if (build === "stale") console.warn("    note: dist/ is older than src/; the daemons run the last build (npm run build)");
    cluster = await Cluster.start({ mode: "collateral", challengePeriod: CHALLENGE_PERIOD });
    hub = await cluster.addNode({ name: "hub", role: "hub", config: { hub: { depositPerChannel: HUB_DEPOSIT } } });
    await cluster.mint(hub.address, HUB_FUNDS);
    [alice, bob, carol] = await Promise.all(
      ["alice", "bob", "carol"].map((name, i) => c().addNode({ name, role: "user", account: 2 + i, peers: [hub] })),
    ) as [ClusterNode, ClusterNode, ClusterNode];
    await cluster.mint(carol.address, CAROL_DEPOSIT);
  });

  afterEach(async function () {
    if (this.currentTest?.state === "failed") failed = true;
    await Promise.all(extra.splice(0).map((x) => c().closeClient(x)));
  });

  after(async () => {
    await cluster?.stop({ keep: failed });
    if (failed && cluster) console.log(`    node logs kept in ${cluster.dir}`);
  });

  describe("channels", () => {
    it("the hub opens deposited channels to alice and bob; carol opens hers with her own tokens", async () => {
      const openA = await hub.rpc.call("channel.open", { partner: alice.address });
      const openB = await hub.rpc.call("channel.open", { partner: bob.address });
      const openC = await carol.rpc.call("channel.open", { partner: hub.address, deposit: s(CAROL_DEPOSIT) });
      for (const o of [openA, openB, openC]) {
        expect(o.channelId).to.match(/^0x[0-9a-f]{64}$/i);
        expect(o.txHash).to.match(/^0x[0-9a-f]{64}$/i);
      }

      // The hub deposits hub.depositPerChannel into every user channel, also one a user opened
      // (it learns of that one from the chain, so its deposit follows a little later).
      await waitFor(async () => (await carol.channelWith(hub))?.partnerDeposit === s(HUB_DEPOSIT), "the hub deposits in carol's channel");
      const { mine: hubCarol, theirs: carolHub } = await agreed(hub, carol);
      expect(carolHub.channelId).to.equal(openC.channelId);
      expect(carolHub).to.include({ status: "open", deposit: s(CAROL_DEPOSIT), partnerDeposit: s(HUB_DEPOSIT), balance: s(CAROL_DEPOSIT) });
      expect(hubCarol).to.include({ deposit: s(HUB_DEPOSIT), partnerDeposit: s(CAROL_DEPOSIT), balance: s(HUB_DEPOSIT) });
      for (const user of [alice, bob]) {
        const { mine, theirs } = await agreed(hub, user);
        expect(mine).to.include({ status: "open", nonce: "0", deposit: s(HUB_DEPOSIT), partnerDeposit: "0", balance: s(HUB_DEPOSIT), available: s(HUB_DEPOSIT) });
        expect(theirs).to.include({ partner: hub.address, balance: "0", partnerBalance: s(HUB_DEPOSIT), creditSide: "none" });
      }

      const list = await hub.channelList();
      expect(list.map((x) => x.channelId).sort()).to.deep.equal([openA.channelId, openB.channelId, openC.channelId].sort());
      expect(list.every((x) => x.status === "open")).to.equal(true);

      const detail = await alice.channel(openA.channelId);
      expect(detail.channelId).to.equal(openA.channelId);
      expect(detail.onChain.phase).to.equal("open");
      expect(detail.onChain.id).to.equal(openA.channelId);
      const hubSide = detail.onChain.participant1 === hub.address ? "deposit1" : "deposit2";
      expect(detail.onChain[hubSide]).to.equal(s(HUB_DEPOSIT));

      // On chain the tokens left the hub and carol; off chain they are channel balances.
      expect(await c().tokenBalance(hub.address)).to.equal(HUB_FUNDS - 3n * HUB_DEPOSIT);
      expect(await hub.balances()).to.deep.equal({ onChain: HUB_FUNDS - 3n * HUB_DEPOSIT, channels: 3n * HUB_DEPOSIT, available: 3n * HUB_DEPOSIT, locked: 0n });
      expect(await carol.balances()).to.deep.equal({ onChain: 0n, channels: CAROL_DEPOSIT, available: CAROL_DEPOSIT, locked: 0n });
      expect(await alice.balances()).to.deep.equal({ onChain: 0n, channels: 0n, available: 0n, locked: 0n });
    });
  });

  describe("payments", () => {
    it("payment.issue: the hub pays a user directly", async () => {
      const paymentId = randomId();
      const p = await hub.rpc.call("payment.issue", { paymentId, to: alice.address, amount: s(100n * T) });
      expect(p).to.include({ direction: "out", kind: "issue", paymentId, status: "completed", amount: s(100n * T) });
      expect(p.target).to.equal(alice.address);
      const { mine, theirs } = await agreed(hub, alice);
      expect(mine.balance).to.equal(s(HUB_DEPOSIT - 100n * T));
      expect(theirs.balance).to.equal(s(100n * T));
      expect(await channelBalance(alice)).to.equal(100n * T);
      expect(await channelBalance(hub)).to.equal(3n * HUB_DEPOSIT - 100n * T);
    });

    it("payment.pay A -> hub -> B waits for completion; payment.get, history and balances show it", async () => {
      const paymentId = randomId();
      const p = await pay(alice, bob, 30n * T, paymentId);
      expect(p).to.include({ direction: "out", kind: "transfer", paymentId, status: "completed", amount: s(30n * T), reason: null });
      expect(p.target).to.equal(bob.address);
      expect(p.secretHash).to.match(/^0x[0-9a-f]{64}$/);

      const outgoing = await alice.payment(paymentId);
      expect(outgoing.outgoing).to.include({ status: "completed", amount: s(30n * T), target: bob.address });
      expect(outgoing.incoming).to.deep.equal([]);
      await waitFor(async () => (await bob.payment(paymentId)).incoming.some((x) => x.status === "received"), "bob records the payment");
      const incoming = (await bob.payment(paymentId)).incoming;
      expect(incoming).to.have.length(1);
      expect(incoming[0]).to.include({ direction: "in", kind: "transfer", status: "received", amount: s(30n * T), initiator: alice.address });
      expect((await bob.payment(paymentId)).outgoing).to.equal(null);

      expect((await alice.history(1))[0]).to.include({ paymentId, direction: "out", status: "completed" });
      expect((await bob.history()).find((x) => x.paymentId === paymentId)).to.include({ direction: "in", status: "received" });

      await eventually(() => alice.balances(), { onChain: 0n, channels: 70n * T, available: 70n * T, locked: 0n }, "alice's balances");
      await eventually(() => bob.balances(), { onChain: 0n, channels: 30n * T, available: 30n * T, locked: 0n }, "bob's balances");
      // The hub forwarded: what it got from alice it paid to bob.
      await eventually(() => channelBalance(hub), 3n * HUB_DEPOSIT - 100n * T, "the hub's channel balance");
      await agreed(hub, bob);
      await agreed(hub, alice);

      // To a user who funded her own channel.
      expect((await pay(alice, carol, 20n * T)).status).to.equal("completed");
      await eventually(() => channelBalance(carol), CAROL_DEPOSIT + 20n * T, "carol is paid");
      const { mine: hubCarol } = await agreed(hub, carol);
      expect(hubCarol.balance).to.equal(s(HUB_DEPOSIT - 20n * T));
    });

    it("one payment id pays once; reusing it for another payment is CONFLICT (-32009)", async () => {
      const [a0, b0] = [await channelBalance(alice), await channelBalance(bob)];
      const paymentId = randomId();
      const first = await pay(alice, bob, 5n * T, paymentId);
      const second = await pay(alice, bob, 5n * T, paymentId);
      expect(first.status).to.equal("completed");
      // The repeat answers with the stored record of the first.
      expect(second).to.deep.include(first);
      await eventually(() => channelBalance(alice), a0 - 5n * T, "alice paid 5 once");
      await eventually(() => channelBalance(bob), b0 + 5n * T, "bob got 5 once");

      const otherAmount = await rpcError(pay(alice, bob, 6n * T, paymentId));
      expect(otherAmount.code).to.equal(-32009);
      expect(otherAmount.appCode).to.equal("CONFLICT");
      const otherPayee = await rpcError(pay(alice, carol, 5n * T, paymentId));
      expect(otherPayee.code).to.equal(-32009);
      expect(await channelBalance(alice)).to.equal(a0 - 5n * T);
      expect(await channelBalance(bob)).to.equal(b0 + 5n * T);
      expect((await alice.payment(paymentId)).outgoing).to.include({ amount: s(5n * T), status: "completed" });
    });

    it("payment.invoice: bob asks, alice pays his secret hash, and her completed payment carries the secret", async () => {
      const [a0, b0] = [await channelBalance(alice), await channelBalance(bob)];
      const invoice = await bob.rpc.call("payment.invoice", { amount: s(3n * T), expiresInSeconds: 600 });
      expect(invoice.target).to.equal(bob.address);
      expect(invoice.secretHash).to.match(/^0x[0-9a-f]{64}$/);
      const paymentId = randomId();
      const p = await alice.rpc.call("payment.pay", { paymentId, to: bob.address, amount: s(3n * T), secretHash: invoice.secretHash });
      expect(p).to.include({ status: "completed", secretHash: invoice.secretHash });
      expect(p.secret).to.match(/^0x[0-9a-f]{64}$/);
      expect(keccak256(p.secret as string)).to.equal(invoice.secretHash);
      await waitFor(async () => (await bob.payment(paymentId)).incoming.some((x) => x.status === "received"), "bob records the payment");
      await eventually(() => channelBalance(alice), a0 - 3n * T, "alice paid 3");
      await eventually(() => channelBalance(bob), b0 + 3n * T, "bob got 3");
      // An invoice is paid once: a second lock with its hash is not unlocked (alice cannot reuse it either).
      const again = await rpcError(alice.rpc.call("payment.pay", { paymentId: randomId(), to: bob.address, amount: s(3n * T), secretHash: invoice.secretHash }));
      expect(again.code).to.equal(-32009);
      expect(again.appCode).to.equal("CONFLICT");
      const bad = await rpcError(bob.rpc.call("payment.invoice", { amount: "0" }));
      expect(bad.code).to.equal(-32602);
    });

    it("more than the available balance is INSUFFICIENT_BALANCE (-32010) and changes nothing", async () => {
      // Once the previous payment's settle (held up to the settle batching interval) has landed.
      await agreed(alice, hub);
      const before = { alice: await alice.channelWith(hub), hub: await hub.channelWith(alice), balances: await alice.balances() };
      const paymentId = randomId();
      const err = await rpcError(pay(alice, bob, before.balances.available + 1n, paymentId));
      expect(err.code).to.equal(-32010);
      expect(err.appCode).to.equal("INSUFFICIENT_BALANCE");
      expect(await alice.channelWith(hub)).to.deep.equal(before.alice);
      expect(await hub.channelWith(alice)).to.deep.equal(before.hub);
      expect(await alice.balances()).to.deep.equal(before.balances);
      expect((await alice.payment(paymentId)).outgoing).to.equal(null);
    });

    it("invalid params are -32602, unknown methods -32601, and a call without the token is refused", async () => {
      const a0 = await alice.balances();
      const call = (params: Record<string, unknown>, method = "payment.pay") =>
        rawCall(alice.rpcUrl, JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }), bearer(alice));

      const numeric = await call({ paymentId: randomId(), to: bob.address, amount: 5 });
      expect(numeric.error?.code).to.equal(-32602);
      expect(JSON.stringify(numeric.error?.data)).to.contain("amount");
      const badAddress = await call({ paymentId: randomId(), to: "0x1234", amount: "5" });
      expect(badAddress.error?.code).to.equal(-32602);
      expect(JSON.stringify(badAddress.error?.data)).to.contain("to");
      const badId = await call({ paymentId: "0x12", to: bob.address, amount: "5" });
      expect(badId.error?.code).to.equal(-32602);
      const unknown = await call({}, "payment.steal");
      expect(unknown.error?.code).to.equal(-32601);

      // No token: the connection opens but every call is refused; a wrong token never connects.
      const anonymous = await rawCall(alice.rpcUrl, JSON.stringify({ jsonrpc: "2.0", id: 1, method: "balances", params: {} }));
      expect(anonymous.error?.code).to.equal(-32001);
      expect(anonymous.result).to.equal(undefined);
      const wrong = await rpcError(RpcClient.connect<NodeMethods, NodeEventMap>(alice.rpcUrl, "not-the-token-0123456789"));
      expect(wrong.code).to.equal(-32001);
      expect(await alice.balances()).to.deep.equal(a0);
    });

    it("subscriptions: bob receives payment.received for alice's payment; channel.changed fires", async () => {
      const bobEvents = await c().client(bob);
      const aliceEvents = await c().client(alice);
      extra.push(bobEvents, aliceEvents);
      const paymentId = randomId();
      const received: PaymentWire[] = [];
      const changed: ChannelWire[] = [];
      await bobEvents.subscribe("payment.received", { paymentId }, (p) => received.push(p));
      await aliceEvents.subscribe("channel.changed", undefined, (ch) => changed.push(ch));

      expect((await pay(alice, bob, 2n * T, paymentId)).status).to.equal("completed");
      await waitFor(() => received.length > 0, "payment.received reaches bob's subscriber", 10_000);
      expect(received).to.have.length(1);
      expect(received[0]).to.include({ paymentId, direction: "in", status: "received", amount: s(2n * T), initiator: alice.address });

      // Alice's channel changed (lock, then unlock); the last event is her channel as it is now.
      await waitFor(async () => changed.at(-1)?.nonce === (await alice.channelWith(hub))?.nonce, "channel.changed catches up", 10_000);
      expect(changed.length).to.be.greaterThanOrEqual(2);
      const now = await alice.channelWith(hub);
      expect(changed.at(-1)).to.deep.equal(now);
      expect(changed.some((ch) => ch.locked === s(2n * T))).to.equal(true);
    });
  });

  describe("withdraw while open", () => {
    it("bob takes tokens out to the chain; the channel stays open and both ends agree", async () => {
      const { mine: before } = await agreed(bob, hub);
      const onChain0 = await c().tokenBalance(bob.address);
      const result = await bob.rpc.call("channel.withdraw", { amount: s(10n * T) });
      expect(result.totalWithdraw).to.equal(s(10n * T));
      expect(await c().tokenBalance(bob.address)).to.equal(onChain0 + 10n * T);

      const { mine, theirs } = await agreed(bob, hub);
      expect(mine).to.include({ status: "open", withdrawn: s(10n * T), balance: s(BigInt(before.balance) - 10n * T) });
      expect(theirs).to.include({ status: "open", partnerWithdrawn: s(10n * T) });
      const detail = await bob.channel(mine.channelId);
      expect(detail.onChain.phase).to.equal("open");
      expect(detail.onChain[detail.onChain.participant1 === bob.address ? "withdrawn1" : "withdrawn2"]).to.equal(s(10n * T));
      expect(await bob.balances()).to.include({ onChain: onChain0 + 10n * T, channels: BigInt(before.balance) - 10n * T });

      // The channel still carries payments.
      expect((await pay(alice, bob, 1n * T)).status).to.equal("completed");
      await eventually(async () => (await bob.channelWith(hub))?.balance, s(BigInt(before.balance) - 9n * T), "bob is paid after the withdrawal");
      await agreed(bob, hub);
    });
  });

  describe("the CLI against running nodes", () => {
    it("info, channels --json, pay --json and balances --json", async () => {
      const info = await c().cli(["info", "--json"], { node: alice });
      expect(info.code).to.equal(0);
      const parsedInfo = JSON.parse(info.stdout) as { address: string; role: string; chainId: number };
      expect(parsedInfo).to.include({ address: alice.address, role: "user", chainId: c().devnet.deployment.chainId });
      const plainInfo = await c().cli(["info"], { node: hub });
      expect(plainInfo.code).to.equal(0);
      expect(plainInfo.stdout).to.contain(hub.address);

      const channels = await c().cli(["channels", "--json"], { node: alice });
      expect(channels.code).to.equal(0);
      expect(JSON.parse(channels.stdout)).to.deep.equal(await alice.channelList());

      const b0 = await channelBalance(bob);
      const paymentId = randomId();
      const paid = await c().cli(["pay", bob.address, s(3n * T), "--id", paymentId, "--json"], { node: alice });
      expect(paid.code, paid.stderr).to.equal(0);
      expect(JSON.parse(paid.stdout)).to.include({ paymentId, status: "completed", amount: s(3n * T), target: bob.address });
      await eventually(() => channelBalance(bob), b0 + 3n * T, "bob is paid through the CLI");

      const balances = await c().cli(["balances", "--json"], { node: bob });
      expect(balances.code).to.equal(0);
      const parsed = JSON.parse(balances.stdout) as Record<string, string>;
      const rpc = await bob.balances();
      expect(parsed).to.deep.equal({ onChain: s(rpc.onChain), channels: s(rpc.channels), available: s(rpc.available), locked: s(rpc.locked) });

      // A refused payment: non-zero exit, the reason on stderr, nothing on stdout.
      const tooMuch = await c().cli(["pay", bob.address, s(1_000_000n * T), "--json"], { node: alice });
      expect(tooMuch.code).to.equal(1);
      expect(tooMuch.stdout).to.equal("");
      expect(tooMuch.stderr).to.match(/^error: .*exceeds the available/m);
    });

    it("fails clearly when the node is not running or not initialised", async () => {
      const dave = await c().addNode({ name: "dave", role: "user", peers: [hub], start: false });
      const down = await c().cli(["balances", "--json"], { node: dave });
      expect(down.code).to.equal(1);
      expect(down.stdout).to.equal("");
      expect(down.stderr).to.match(/cannot reach the node at ws:\/\/127\.0\.0\.1:\d+.*is `starling start` running\?/);

      const nowhere = await c().cli(["channels", "-d", `${c().dir}/no-such-node`]);
      expect(nowhere.code).to.equal(1);
      expect(nowhere.stderr).to.match(/no configuration at .*run `starling init/);
    });
  });

  describe("restarts", () => {
    it("alice restarted with SIGTERM keeps her channel and balances, and pays on", async () => {
      const { mine: before } = await agreed(alice, hub);
      const balances0 = await alice.balances();
      const history0 = await alice.history();
      await c().restart(alice, "SIGTERM");
      expect(await alice.channelWith(hub)).to.deep.equal(before);
      expect(await alice.balances()).to.deep.equal(balances0);
      expect(await alice.history()).to.deep.equal(history0);

      const b0 = await channelBalance(bob);
      expect((await pay(alice, bob, 4n * T)).status).to.equal("completed");
      await eventually(() => channelBalance(bob), b0 + 4n * T, "bob is paid by the restarted alice");
      const { mine } = await agreed(alice, hub);
      expect(mine.balance).to.equal(s(BigInt(before.balance) - 4n * T));
    });

    it("the hub killed with SIGKILL comes back with every channel, and payments continue", async () => {
      const before = await hub.channelList();
      const balances0 = await hub.balances();
      await c().restart(hub, "SIGKILL");
      expect(await hub.channelList()).to.deep.equal(before);
      expect(await hub.balances()).to.deep.equal(balances0);

      const [a0, b0] = [await channelBalance(alice), await channelBalance(bob)];
      const p = await alice.rpc.call("payment.pay", { paymentId: randomId(), to: bob.address, amount: s(2n * T), timeoutMs: 60_000 });
      expect(p.status).to.equal("completed");
      await eventually(() => channelBalance(bob), b0 + 2n * T, "bob is paid through the restarted hub");
      await eventually(() => channelBalance(alice), a0 - 2n * T, "alice paid");
      await eventually(() => channelBalance(hub), balances0.channels, "the hub forwarded all it got");
      await agreed(hub, bob);
      await agreed(hub, alice);
    });
  });

  describe("closing", () => {
    it("cooperative close: both are paid at once and the channel is closed on both ends", async () => {
      const { mine: aliceView, theirs: hubView } = await agreed(alice, hub);
      const [alice0, hub0] = [await c().tokenBalance(alice.address), await c().tokenBalance(hub.address)];
      expect(BigInt(aliceView.balance) > 0n, "alice has something to take out").to.equal(true);

      const r = await alice.rpc.call("channel.close", {});
      expect(r.mode).to.equal("cooperative");
      expect(await c().tokenBalance(alice.address)).to.equal(alice0 + BigInt(aliceView.balance));
      expect(await c().tokenBalance(hub.address)).to.equal(hub0 + BigInt(hubView.balance));

      const { mine, theirs } = await agreed(alice, hub);
      expect(mine.status).to.equal("closed");
      expect(theirs.status).to.equal("closed");
      expect((await alice.channel(aliceView.channelId)).onChain.phase).to.equal("none");
      expect(await alice.balances()).to.include({ onChain: alice0 + BigInt(aliceView.balance), channels: 0n });
      expect(await hub.channelList()).to.have.length(3);
    });

    it("unilateral close: the hub is paid at once, carol after the challenge period by her own node", async () => {
      const { mine: carolView, theirs: hubView } = await agreed(carol, hub);
      const [carol0, hub0] = [await c().tokenBalance(carol.address), await c().tokenBalance(hub.address)];
      expect(BigInt(carolView.nonce) > 0n, "carol's channel has signed states").to.equal(true);

      const r = await carol.rpc.call("channel.close", { force: true });
      expect(r.mode).to.equal("unilateral");
      // The partner is paid in the close transaction; the closer waits for the challenge period.
      expect(await c().tokenBalance(hub.address)).to.equal(hub0 + BigInt(hubView.balance));
      expect(await c().tokenBalance(carol.address)).to.equal(carol0);
      const closing = await carol.channel(carolView.channelId);
      expect(closing.status).to.equal("closed");
      expect(closing.onChain).to.include({ phase: "closed", nonce: carolView.nonce });
      expect(BigInt(closing.onChain.settleAt) > (await c().chainTime()), "settleAt is ahead").to.equal(true);
      await waitFor(async () => (await hub.channelWith(carol))?.status === "closed", "the hub sees the close", 15_000);


      // Past settleAt the closer's node settles by itself; the hub is stopped so that it cannot
      // settle first (anyone may).
      await c().stopNode(hub);
      await c().increaseTime(CHALLENGE_PERIOD + 1);
      await waitFor(async () => (await c().tokenBalance(carol.address)) === carol0 + BigInt(carolView.balance), "carol is paid", 30_000);
      expect(await c().tokenBalance(hub.address)).to.equal(hub0 + BigInt(hubView.balance));
      expect((await carol.channel(carolView.channelId)).onChain.phase).to.be.oneOf(["none", "settled"]);
      expect(await carol.balances()).to.include({ onChain: carol0 + BigInt(carolView.balance), channels: 0n });
    });
  });
});
