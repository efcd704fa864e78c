/**
 * Disputes and crashes with real daemons on the embedded chain: "nobody honest loses funds, a
 * cheater loses the channel". Cheaters restore old copies of their LevelDB and close with revoked
 * states (against the hub's own watcher, a delegated watchtower, and a hub restarted mid-dispute);
 * the hub is killed with SIGKILL during a stream of payments and while a secret goes on chain; a
 * partner is offline during a withdrawal and a cooperative close.
 *
 * One chain and one hub serve the file (a second hub cheats in its own channel); the scenarios run
 * in order, and the last one moves chain time forward. Nodes' clocks are shifted with
 * STARLING_CLOCK_OFFSET_SECONDS where a lock's expiry must pass. Needs dist/ built (`npx tsc -p .`).
 */
import { expect } from "chai";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Contract, keccak256, type EventLog, type Log } from "ethers";
import {
  Cluster,
  cliBuildStatus,
  randomId,
  waitFor,
  type ChannelWire,
  type ClusterNode,
  type ClusterTower,
  type PaymentLookupWire,
} from "../src/devkit/cluster.js";
import { artifact } from "../src/chain/artifacts.js";
import { DEFAULT_TRANSFER_POLICY } from "../src/protocol/transfer.js";
import { agreed, eventually, rpcError } from "./helpers/daemon-asserts.js";
import { mined } from "../src/chain/deploy.js";

const T = 10n ** 18n;
const HUB_DEPOSIT = 1_000n * T; // hub.depositPerChannel of both hubs
const USER_DEPOSIT = 100n * T; // what the cheating users put in themselves
const CHALLENGE_PERIOD = 600;
/** The payer's lock lives 600 s, each forwarded lock 120 s less. */
const PAYER_LOCK_SECONDS = Number(DEFAULT_TRANSFER_POLICY.initiatorLockSeconds);
const REVEAL_TIMEOUT = Number(DEFAULT_TRANSFER_POLICY.revealTimeout);

const s = (v: bigint) => v.toString();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/** A field the typed wire form leaves out (the node sends the whole record). */
function extra(record: unknown, key: string): string {
  const v = (record as Record<string, unknown> | null)?.[key];
  if (typeof v !== "string") throw new Error(`no ${key} in ${JSON.stringify(record)}`);
  return v;
}

describe("disputes: nobody honest loses funds, a cheater loses the channel", function () {
  this.timeout(180_000);
  let cluster: Cluster | undefined;
  let failed = false;
  const snapshots: string[] = [];
  let hub: ClusterNode;
  let alice: ClusterNode;
  let bob: ClusterNode;

  const c = (): Cluster => {
    if (!cluster) throw new Error("no cluster");
    return cluster;
  };


  const channelOf = async (a: ClusterNode, b: ClusterNode): Promise<ChannelWire> => {
    const ch = await a.channelWith(b);
    if (!ch) throw new Error(`${a.name} has no channel with ${b.name}`);
    return ch;
  };

  const pay = (from: ClusterNode, to: ClusterNode, amount: bigint, paymentId = randomId()) =>
    from.rpc.call("payment.pay", { paymentId, to: to.address, amount: s(amount), timeoutMs: 30_000 });

  const issue = (from: ClusterNode, to: ClusterNode, amount: bigint) =>
    from.rpc.call("payment.issue", { paymentId: randomId(), to: to.address, amount: s(amount) });

  /** A copy of a stopped node's data dir (LevelDB, keystore, config). */
  function snapshot(node: ClusterNode): string {
    if (node.running) throw new Error(`stop ${node.name} before copying its data`);
    const dir = mkdtempSync(join(tmpdir(), `starling-snapshot-${node.name}-`));
    snapshots.push(dir);
    cpSync(node.dataDir, dir, { recursive: true });
    return dir;
  }

  function restore(node: ClusterNode, dir: string): void {
    if (node.running) throw new Error(`stop ${node.name} before restoring its data`);
    rmSync(node.dataDir, { recursive: true, force: true });
    cpSync(dir, node.dataDir, { recursive: true });
  }

  /** Stops the node, copies its data dir and starts it again. */
  async function backup(node: ClusterNode): Promise<string> {
    await c().stopNode(node);
    const dir = snapshot(node);
    await c().startNode(node);
    return dir;
  }

  async function events(name: string, channelId: string): Promise<EventLog[]> {
    const logs = (await c().channels.queryFilter(c().channels.filters[name]!())) as (EventLog | Log)[];
    return logs.filter((l): l is EventLog => "args" in l && String(l.args[0]).toLowerCase() === channelId.toLowerCase());
  }

  /** The chain's ChannelPenalized event of a channel: who cheated, who got the rest, and how much. */
  async function penalty(channelId: string): Promise<{ cheater: string; beneficiary: string; amount: bigint; from: string }> {
    const [e] = await events("ChannelPenalized", channelId);
    if (!e) throw new Error(`no penalty in ${channelId}`);
    const tx = await e.getTransaction();
    return {
      cheater: String(e.args[1]).toLowerCase(),
      beneficiary: String(e.args[2]).toLowerCase(),
      amount: e.args[3] as bigint,
      from: tx.from.toLowerCase(),
    };
  }

  /**
   * A hub opens a channel to a user and deposits; both ends see the deposit before anything is
   * paid in it (a user's node learns of the channel and the deposit from the chain a little later).
   */
  async function openFromHub(h: ClusterNode, u: ClusterNode): Promise<string> {
    const { channelId } = await h.rpc.call("channel.open", { partner: u.address });
    await waitFor(async () => (await u.channelWith(h))?.partnerDeposit === s(HUB_DEPOSIT), `${u.name} sees ${h.name}'s deposit`);
    await agreed(h, u);
    return channelId;
  }

  before(async function () {
    const build = cliBuildStatus();
    if (build === "missing") throw new Error("the daemons run dist/, which is not built: run `npx tsc -p .`");
    if (build === "stale") console.warn("    note: dist/ is older than src/; the daemons run the last build (npx tsc -p .)");
    cluster = await Cluster.start({ mode: "collateral", challengePeriod: CHALLENGE_PERIOD, accounts: 14, logLevel: "debug" });
    hub = await cluster.addNode({ name: "hub", role: "hub", account: 1, config: { hub: { depositPerChannel: HUB_DEPOSIT } } });
    await cluster.mint(hub.address, 20n * HUB_DEPOSIT);
    [alice, bob] = (await Promise.all(
      ["alice", "bob"].map((name, i) => c().addNode({ name, role: "user", account: 2 + i, peers: [hub] })),
    )) as [ClusterNode, ClusterNode];
    for (const u of [alice, bob]) await openFromHub(hub, u);
    expect((await issue(hub, alice, 500n * T)).status).to.equal("completed");
    await agreed(alice, hub);
    await agreed(bob, hub);
  });

  afterEach(async function () {
    if (this.currentTest?.state === "failed") failed = true;
    if (!cluster) return;
    // The scenarios share the hub, alice and bob: none is left stopped, frozen or on a shifted clock.
    for (const n of [hub, alice, bob]) {
      cluster.thaw(n);
      const shifted = Object.keys(n.env).length > 0;
      n.env = {};
      if (!n.running) await cluster.startNode(n);
      else if (shifted) await cluster.restart(n);
    }
  });

  after(async () => {
    await cluster?.stop({ keep: failed });
    if (failed && cluster) console.log(`    node logs kept in ${cluster.dir}`);
    for (const d of snapshots) rmSync(d, { recursive: true, force: true });
  });

  /** A user with its own deposit in a channel with the hub (which deposits HUB_DEPOSIT too). */
  async function depositedUser(name: string, account: number): Promise<ClusterNode> {
    const u = await c().addNode({ name, role: "user", account, peers: [hub] });
    await c().mint(u.address, USER_DEPOSIT);
    await u.rpc.call("channel.open", { partner: hub.address, deposit: s(USER_DEPOSIT) });
    await waitFor(async () => (await u.channelWith(hub))?.partnerDeposit === s(HUB_DEPOSIT), `the hub deposits in ${name}'s channel`);
    const { mine } = await agreed(u, hub);
    expect(mine).to.include({ status: "open", balance: s(USER_DEPOSIT), partnerBalance: s(HUB_DEPOSIT) });
    return u;
  }

  /**
   * The cheat of scenarios 1 and 6: the user pays 10, its data dir is copied, it pays 60 more
   * (so the copy's newest state is revoked), and the copy is put back. Returns the channel and
   * the restored node's view of it.
   */
  async function restoreRevoked(u: ClusterNode): Promise<{ channelId: string; old: ChannelWire; latest: ChannelWire }> {
    expect((await pay(u, bob, 10n * T)).status).to.equal("completed");
    const { mine: atCopy } = await agreed(u, hub);
    const copy = await backup(u);
    expect((await pay(u, bob, 30n * T)).status).to.equal("completed");
    expect((await pay(u, bob, 30n * T)).status).to.equal("completed");
    const { mine: latest, theirs: hubView } = await agreed(u, hub);
    expect(latest.balance).to.equal(s(USER_DEPOSIT - 70n * T));
    expect(hubView.balance).to.equal(s(HUB_DEPOSIT + 70n * T));
    expect(BigInt(latest.nonce) > BigInt(atCopy.nonce) + 1n, "the copy's state is superseded").to.equal(true);

    await c().stopNode(u);
    restore(u, copy);
    await c().startNode(u);
    const old = await channelOf(u, hub);
    // The restored node holds the old state, which it has revoked since.
    expect(old).to.include({ nonce: atCopy.nonce, balance: s(USER_DEPOSIT - 10n * T), partnerBalance: s(HUB_DEPOSIT + 10n * T) });
    return { channelId: latest.channelId, old, latest };
  }

  describe("1. a user restores an old copy of its LevelDB and closes with a revoked state", () => {
    it("the hub's watcher penalises: the hub is paid its old share at close and the rest by the penalty", async () => {
      const mallory = await depositedUser("mallory", 4);
      const bob0 = await channelOf(bob, hub);
      const { channelId, old } = await restoreRevoked(mallory);
      const [hub0, mallory0] = [await c().tokenBalance(hub.address), await c().tokenBalance(mallory.address)];

      const r = await mallory.rpc.call("channel.close", { force: true });
      expect(r.mode).to.equal("unilateral");
      // Closed with the revoked state; the hub, the non-closer, is paid its share in it at once.
      const [closed] = await events("ChannelClosed", channelId);
      expect([closed?.args[2], closed?.args[4]]).to.deep.equal([BigInt(old.nonce), HUB_DEPOSIT + 10n * T]);

      // The whole channel (both deposits) ends up with the hub; mallory gets nothing.
      await eventually(() => c().tokenBalance(hub.address), hub0 + HUB_DEPOSIT + USER_DEPOSIT, "the hub holds the whole channel");
      expect(await penalty(channelId)).to.deep.equal({
        cheater: mallory.address,
        beneficiary: hub.address,
        amount: USER_DEPOSIT - 10n * T, // the closer's share in the revoked state
        from: hub.address,
      });
      expect(await c().tokenBalance(mallory.address)).to.equal(mallory0);
      expect((await hub.channel(channelId)).onChain.phase).to.equal("none");
      await waitFor(async () => (await hub.channelWith(mallory))?.status === "closed", "the hub marks the channel closed");
      await waitFor(async () => (await mallory.channelWith(hub))?.status === "closed", "mallory's node marks it closed");
      // Bob, paid by mallory before, keeps it and his channel carries on.
      const { mine: bob1 } = await agreed(bob, hub);
      expect(bob1).to.include({ status: "open", balance: s(BigInt(bob0.balance) + 70n * T) });
    });
  });

  describe("2. a hub restores an old copy and closes with a revoked state against an offline user", () => {
    let tower: ClusterTower;
    let hub2: ClusterNode;
    let victor: ClusterNode;

    it("the user's watchtower penalises: the offline user ends up with the whole channel on chain", async () => {
      [tower, hub2] = await Promise.all([
        c().addWatchtower("tower", 11),
        c().addNode({ name: "hub2", role: "hub", account: 9, config: { hub: { depositPerChannel: HUB_DEPOSIT } } }),
      ]);
      await c().mint(hub2.address, 2n * HUB_DEPOSIT);
      victor = await c().addNode({ name: "victor", role: "user", account: 10, peers: [hub2], config: { watchtower: tower.peer } });
      const channelId = await openFromHub(hub2, victor);
      expect((await issue(hub2, victor, 100n * T)).status).to.equal("completed");
      const { mine: atCopy } = await agreed(hub2, victor);
      const copy = await backup(hub2);
      expect((await issue(hub2, victor, 200n * T)).status).to.equal("completed");
      expect((await issue(hub2, victor, 50n * T)).status).to.equal("completed");
      const { theirs: latest } = await agreed(hub2, victor);
      expect(latest.balance).to.equal(s(350n * T));
      // Two updates past the copy: hub2's signature on the newest revokes everything up to the copy's.
      expect(BigInt(latest.nonce) >= BigInt(atCopy.nonce) + 2n).to.equal(true);
      // Victor hands every update to the tower; wait for the newest (its revocation covers the copy).
      await waitFor(
        () =>
          tower
            .storedHandOffs()
            .some((h) => h.channelId === channelId.toLowerCase() && h.client === victor.address && h.sealedNonce === BigInt(latest.nonce)),
        "the tower holds victor's newest hand-off",
      );

      await c().stopNode(victor);
      await c().stopNode(hub2);
      restore(hub2, copy);
      await c().startNode(hub2);
      const old = await channelOf(hub2, victor);
      expect(old).to.include({ nonce: atCopy.nonce, balance: s(HUB_DEPOSIT - 100n * T), partnerBalance: s(100n * T) });
      const [hub20, victor0] = [await c().tokenBalance(hub2.address), await c().tokenBalance(victor.address)];

      expect((await hub2.rpc.call("channel.close", { force: true })).mode).to.equal("unilateral");
      const [closed] = await events("ChannelClosed", channelId);
      expect([closed?.args[2], closed?.args[4]]).to.deep.equal([BigInt(atCopy.nonce), 100n * T]);
      await eventually(() => c().tokenBalance(victor.address), victor0 + HUB_DEPOSIT, "victor holds the whole channel");
      expect(await penalty(channelId)).to.deep.equal({
        cheater: hub2.address,
        beneficiary: victor.address,
        amount: HUB_DEPOSIT - 100n * T,
        from: tower.address,
      });
      expect(await c().tokenBalance(hub2.address)).to.equal(hub20);
      expect((await hub2.channel(channelId)).onChain.phase).to.equal("none");

      // Back online, victor's node sees the channel ended.
      await c().startNode(victor);
      await waitFor(async () => (await victor.channelWith(hub2))?.status === "closed", "victor's node marks the channel closed");
      expect(await c().tokenBalance(victor.address)).to.equal(victor0 + HUB_DEPOSIT);
      await Promise.all([c().stopNode(hub2), c().stopNode(victor), c().stopTower(tower)]);
    });
  });

  describe("3. kill -9 of the hub at random moments during a stream of payments", () => {
    it("every payment completes or fails with its lock returned; both ends agree; nothing is lost; no channel closes", async () => {
      const { mine: a0, theirs: ha0 } = await agreed(alice, hub);
      const { mine: b0, theirs: hb0 } = await agreed(bob, hub);
      const payments = Array.from({ length: 40 }, (_, i) => ({ id: randomId(), amount: T + BigInt(i) * 10n ** 15n }));
      const started: string[] = [];
      const startErrors: string[] = [];
      const killedAt: number[] = [];
      let lastIssuedAt = 0;

      const issuing = (async () => {
        for (const p of payments) {
          try {
            const r = await alice.rpc.call("payment.pay", { paymentId: p.id, to: bob.address, amount: s(p.amount), wait: false });
            started.push(r.status);
          } catch (err) {
            startErrors.push(String(err));
          }
          lastIssuedAt = Date.now();
          await sleep(Math.random() * 250);
        }
      })();
      const kills = (async () => {
        for (let k = 0; k < 3; k++) {
          await sleep(100 + Math.random() * 600);
          killedAt.push(Date.now());
          await c().kill(hub);
          await c().startNode(hub);
        }
      })();
      await Promise.all([issuing, kills]);
      expect(startErrors).to.deep.equal([]);
      expect(started).to.have.length(40);
      expect(killedAt.filter((t) => t < lastIssuedAt).length, "kills while payments were being issued").to.be.greaterThanOrEqual(2);

      const outcome = new Map<string, PaymentLookupWire>();
      await waitFor(
        async () => {
          for (const p of payments) {
            if (outcome.has(p.id)) continue;
            const r = await alice.payment(p.id);
            if (r.outgoing && r.outgoing.status !== "pending") outcome.set(p.id, r);
          }
          return outcome.size === payments.length;
        },
        "every payment is finished at alice",
        90_000,
        500,
      );

      // Every lock is resolved: the payee's unlock may come after the payer saw its payment complete.
      const { mine: a1, theirs: ha1 } = await agreed(alice, hub, { timeoutMs: 60_000 });
      const { mine: b1, theirs: hb1 } = await agreed(bob, hub, { timeoutMs: 60_000 });
      let paid = 0n;
      let completed = 0;
      for (const p of payments) {
        const out = outcome.get(p.id)!.outgoing!;
        expect(out.amount).to.equal(s(p.amount));
        expect(out.status).to.be.oneOf(["completed", "failed"]);
        const atBob = (await bob.payment(p.id)).incoming;
        if (out.status === "completed") {
          paid += p.amount;
          completed++;
          expect(atBob.map((x) => [x.status, x.amount])).to.deep.equal([["received", s(p.amount)]]);
        } else {
          expect(atBob.filter((x) => x.status === "received")).to.deep.equal([]);
        }
      }
      expect(completed, "some payments went through").to.be.greaterThan(0);

      for (const ch of [a1, ha1, b1, hb1]) expect(ch).to.include({ status: "open", locked: "0", partnerLocked: "0" });
      expect(BigInt(a0.balance) - BigInt(a1.balance)).to.equal(paid);
      expect(BigInt(b1.balance) - BigInt(b0.balance)).to.equal(paid);
      expect(BigInt(ha1.balance) + BigInt(hb1.balance)).to.equal(BigInt(ha0.balance) + BigInt(hb0.balance));
      for (const ch of [a1, b1]) expect((await hub.channel(ch.channelId)).onChain.phase).to.equal("open");
      expect(await events("ChannelClosed", a1.channelId)).to.deep.equal([]);
      expect(await events("ChannelClosed", b1.channelId)).to.deep.equal([]);
    });
  });

  describe("4. the secret goes on chain while the hub is down", () => {
    /**
     * Alice pays bob and is frozen (SIGSTOP) once both locks are signed, before she can answer
     * bob's request for the secret: it never travels off chain, so neither the hub nor bob's node
     * has it. The hub is killed, and the secret is registered on chain from bob's key (taken from
     * alice's record, as a payee holding it would): the chain is the only place to learn it.
     */
    async function lockedWhileHubDown(amount: bigint): Promise<{ paymentId: string; secret: string; payeeExpiry: bigint; payerExpiry: bigint }> {
      await c().stopNode(bob);
      const paymentId = randomId();
      const started = await alice.rpc.call("payment.pay", { paymentId, to: bob.address, amount: s(amount), wait: false });
      expect(started.status).to.equal("pending");
      const out = (await alice.payment(paymentId)).outgoing;
      const secret = extra(out, "secret");
      const payerExpiry = BigInt(extra(out, "expiry"));
      await waitFor(async () => (await alice.channelWith(hub))?.locked === s(amount), "alice's lock is signed");
      c().freeze(alice);
      await c().startNode(bob);
      await waitFor(async () => (await bob.channelWith(hub))?.partnerLocked === s(amount), "the hub's lock to bob is signed");
      const incoming = (await bob.payment(paymentId)).incoming;
      expect(incoming.map((p) => p.status)).to.deep.equal(["pending"]);
      const payeeExpiry = BigInt(extra(incoming[0], "expiry"));
      expect(payerExpiry - payeeExpiry).to.equal(BigInt(REVEAL_TIMEOUT));

      await c().kill(hub);
      const registry = new Contract(c().devnet.deployment.secretRegistry, artifact("SecretRegistry").abi, bob.wallet);
      await mined(await registry.getFunction("registerSecret")(secret));
      const revealedAt = (await registry.getFunction("revealedAt")(keccak256(secret))) as bigint;
      expect(revealedAt > 0n && revealedAt <= payeeExpiry, "registered on chain before bob's lock expires").to.equal(true);
      return { paymentId, secret, payeeExpiry, payerExpiry };
    }

    async function settledPayment(paymentId: string, amount: bigint, before: { a: ChannelWire; ha: ChannelWire; b: ChannelWire; hb: ChannelWire }) {
      await waitFor(async () => (await alice.payment(paymentId)).outgoing?.status === "completed", "alice's payment completes", 30_000);
      await waitFor(async () => (await bob.payment(paymentId)).incoming.some((p) => p.status === "received"), "bob receives", 30_000);
      const { mine: a1, theirs: ha1 } = await agreed(alice, hub);
      const { mine: b1, theirs: hb1 } = await agreed(bob, hub);
      for (const ch of [a1, ha1, b1, hb1]) expect(ch).to.include({ status: "open", locked: "0", partnerLocked: "0" });
      expect(BigInt(before.a.balance) - BigInt(a1.balance)).to.equal(amount);
      expect(BigInt(b1.balance) - BigInt(before.b.balance)).to.equal(amount);
      // The hub passed on exactly what it got.
      expect(BigInt(ha1.balance) + BigInt(hb1.balance)).to.equal(BigInt(before.ha.balance) + BigInt(before.hb.balance));
    }

    it("restarted late (bob's lock still running), the hub learns the secret from SecretRevealed and claims from alice", async () => {
      const { mine: a, theirs: ha } = await agreed(alice, hub);
      const { mine: b, theirs: hb } = await agreed(bob, hub);
      const amount = 7n * T;
      const { paymentId } = await lockedWhileHubDown(amount);
      try {
        // The hub comes back 400 s later by its clock: 80 s before bob's lock expires, 200 s before alice's.
        hub.env = { STARLING_CLOCK_OFFSET_SECONDS: String(PAYER_LOCK_SECONDS - 200) };
        await c().startNode(hub);
      } finally {
        c().thaw(alice);
      }
      await settledPayment(paymentId, amount, { a, ha, b, hb });
    });

    it("restarted after bob's lock expired (bob registered the secret in time), bob is still paid and the hub is not up at his expense", async () => {
      const { mine: a, theirs: ha } = await agreed(alice, hub);
      const { mine: b, theirs: hb } = await agreed(bob, hub);
      const amount = 3n * T;
      const { paymentId } = await lockedWhileHubDown(amount);
      // 500 s later: bob's lock (480 s) has expired, alice's (600 s) has not.
      const later = String(PAYER_LOCK_SECONDS - REVEAL_TIMEOUT + 20);
      try {
        hub.env = { STARLING_CLOCK_OFFSET_SECONDS: later };
        bob.env = { STARLING_CLOCK_OFFSET_SECONDS: later };
        await c().restart(bob);
        await c().startNode(hub);
      } finally {
        c().thaw(alice);
      }
      await settledPayment(paymentId, amount, { a, ha, b, hb });
    });
  });

  describe("5. the partner is offline during a withdrawal or a cooperative close", () => {
    it("TIMEOUT (-32030) within the requested time; nothing is stuck once the hub is back", async () => {
      const [walt, wendy, xena] = (await Promise.all(
        ["walt", "wendy", "xena"].map((name, i) => c().addNode({ name, role: "user", account: 5 + i, peers: [hub] })),
      )) as [ClusterNode, ClusterNode, ClusterNode];
      for (const u of [walt, wendy, xena]) {
        await openFromHub(hub, u);
        expect((await issue(hub, u, 50n * T)).status).to.equal("completed");
      }
      const before = new Map<string, ChannelWire>();
      for (const u of [walt, wendy, xena]) before.set(u.name, (await agreed(u, hub)).mine);

      await c().stopNode(hub);
      const timed = async (call: () => Promise<unknown>) => {
        const t0 = Date.now();
        const err = await rpcError(call());
        return { err, ms: Date.now() - t0 };
      };
      const [w, cw, cx] = await Promise.all([
        timed(() => walt.rpc.call("channel.withdraw", { amount: s(10n * T), timeoutMs: 3_000 })),
        timed(() => wendy.rpc.call("channel.close", { timeoutMs: 3_000 })),
        timed(() => xena.rpc.call("channel.close", { timeoutMs: 3_000 })),
      ]);
      for (const r of [w, cw, cx]) {
        expect(r.err.code).to.equal(-32030);
        expect(r.err.appCode).to.equal("TIMEOUT");
        expect(r.ms).to.be.within(2_900, 5_000);
      }
      // What happens next is said: the requests stand (their signatures may already be with the hub).
      expect(w.err.message).to.match(/request stands until its expiry and executes if the partner confirms it/);
      expect(cw.err.message).to.match(/request stands and completes when the partner signs it, or use force/);
      // Nothing moved while the hub was away.
      expect(await walt.channelWith(hub)).to.deep.include({ withdrawn: "0", balance: s(50n * T), nonce: before.get("walt")!.nonce });
      expect(await c().tokenBalance(walt.address)).to.equal(0n);
      const wendyClosing = await channelOf(wendy, hub);
      expect(wendyClosing).to.include({ status: "closing", balance: s(50n * T) });
      // A closing channel takes no payments: a clear refusal, and nothing changes.
      const refused = await rpcError(pay(wendy, alice, 1n * T));
      expect(refused.code).to.equal(-32011);
      expect(await channelOf(wendy, hub)).to.deep.equal(wendyClosing);

      // Xena follows the advice of the timeout and closes unilaterally (the hub is paid at once).
      const hubTokens0 = await c().tokenBalance(hub.address);
      expect((await xena.rpc.call("channel.close", { force: true })).mode).to.equal("unilateral");
      expect(await c().tokenBalance(hub.address)).to.equal(hubTokens0 + HUB_DEPOSIT - 50n * T);
      const xenaChannel = before.get("xena")!.channelId;
      expect((await xena.channel(xenaChannel)).onChain).to.include({ phase: "closed", closerAmount: s(50n * T), nonce: before.get("xena")!.nonce });

      await c().startNode(hub);

      // Wendy's close request still stands: the hub signs it when it is back, and both are paid.
      await waitFor(async () => (await wendy.channelWith(hub))?.status === "closed", "wendy's cooperative close completes", 30_000);
      const [coop] = await events("CooperativelyClosed", wendyClosing.channelId);
      const wendyIs1 = BigInt(wendy.address) < BigInt(hub.address);
      expect([coop?.args[1], coop?.args[2]]).to.deep.equal(wendyIs1 ? [50n * T, HUB_DEPOSIT - 50n * T] : [HUB_DEPOSIT - 50n * T, 50n * T]);
      expect(await c().tokenBalance(wendy.address)).to.equal(50n * T);
      await waitFor(async () => (await hub.channelWith(wendy))?.status === "closed", "the hub marks wendy's channel closed");

      // The hub sees xena's close with the newest state: nothing to answer, the channel is closed.
      await waitFor(async () => (await hub.channelWith(xena))?.status === "closed", "the hub marks xena's channel closed");
      expect(await events("ChannelPenalized", xenaChannel)).to.deep.equal([]);
      expect(await events("StateUpdated", xenaChannel)).to.deep.equal([]);

      // Walt's request stood too: it executes once the hub has signed it; a new one works after it.
      await waitFor(async () => (await c().tokenBalance(walt.address)) === 10n * T, "walt's first withdrawal executes", 30_000);
      await waitFor(async () => (await walt.channelWith(hub))?.withdrawn === s(10n * T), "walt's node sees it on chain");
      // The hub counts the first withdrawal as pending until its own chain scan sees it executed.
      await waitFor(async () => (await hub.channelWith(walt))?.partnerWithdrawn === s(10n * T), "the hub sees it on chain");
      const second = await walt.rpc.call("channel.withdraw", { amount: s(5n * T), timeoutMs: 20_000 });
      expect(second.totalWithdraw).to.equal(s(15n * T));
      expect(await c().tokenBalance(walt.address)).to.equal(15n * T);
      expect((await pay(alice, walt, 2n * T)).status).to.equal("completed");
      const { mine: walt1 } = await agreed(walt, hub);
      expect(walt1).to.include({ status: "open", withdrawn: s(15n * T), balance: s(37n * T) });
    });
  });

  describe("6. the hub restarts in the middle of a dispute", () => {
    it("stopped before it saw a revoked close, restarted late in the challenge period, it still lands the penalty", async () => {
      const trudy = await depositedUser("trudy", 8);
      const { channelId, old } = await restoreRevoked(trudy);
      const [hub0, trudy0] = [await c().tokenBalance(hub.address), await c().tokenBalance(trudy.address)];

      // Frozen before the close and killed before it ran again: the hub never sees the close live.
      c().freeze(hub);
      let settleAt: bigint;
      try {
        expect((await trudy.rpc.call("channel.close", { force: true })).mode).to.equal("unilateral");
        const info = (await trudy.channel(channelId)).onChain;
        expect(info).to.include({ phase: "closed", nonce: old.nonce });
        settleAt = BigInt(info.settleAt);
      } finally {
        await c().kill(hub);
      }
      expect(await c().tokenBalance(hub.address)).to.equal(hub0 + HUB_DEPOSIT + 10n * T);
      await c().increaseTime(CHALLENGE_PERIOD - 90);
      expect((await c().chainTime()) < settleAt, "still inside the challenge period").to.equal(true);

      await c().startNode(hub);
      await eventually(() => c().tokenBalance(hub.address), hub0 + HUB_DEPOSIT + USER_DEPOSIT, "the hub holds the whole channel");
      const p = await penalty(channelId);
      expect(p).to.deep.equal({ cheater: trudy.address, beneficiary: hub.address, amount: USER_DEPOSIT - 10n * T, from: hub.address });
      const [e] = await events("ChannelPenalized", channelId);
      const block = await c().devnet.provider.getBlock(e!.blockNumber);
      expect(BigInt(block!.timestamp) <= settleAt, "the penalty landed inside the period").to.equal(true);
      expect(await c().tokenBalance(trudy.address)).to.equal(trudy0);
      await waitFor(async () => (await hub.channelWith(trudy))?.status === "closed", "the hub marks the channel closed");
    });
  });
});
