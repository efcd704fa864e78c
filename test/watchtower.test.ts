/**
 * The delegated watchtower against the embedded chain, real libp2p and LevelDB: a node's hand-offs
 * are stored in O(1) per channel, a cheater's revoked close is penalised and an older close is
 * answered with the newer state while the victim is offline, bad hand-offs are refused, and a
 * tower restarted mid-dispute still acts.
 */
import "../src/p2p/polyfill.js";
import { expect } from "chai";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { getBytes, Wallet, type HDNodeWallet } from "ethers";
import { Level } from "level";
import { startHarness, type Harness } from "./helpers/channels.js";
import { loadBackend, type Secp256k1Backend, type Signer } from "../src/signer/index.js";
import { createTransport, type P2PTransport } from "../src/p2p/index.js";
import { MemoryStore } from "../src/store/index.js";
import {
  newChannel,
  transition,
  DEFAULT_POLICY,
  type ChannelData,
  type ChannelEffect,
  type ChannelInput,
  type Deps,
  type Funding,
  type Side,
} from "../src/protocol/channel.js";
import { normalizeAddress } from "../src/protocol/eip712.js";
import type { Address, Hex } from "../src/protocol/types.js";
import { TowerClient, Watchtower, buildHandOff, openSeal, type WatchRecord } from "../src/watcher/index.js";
import { signUpdate } from "../src/watcher/handoff.js";
import { mined } from "../src/chain/deploy.js";

const PERIOD = 600;
const DEPOSIT = 100n;

interface Stoppable {
  stop(): Promise<void>;
}

interface Pair {
  id: Hex;
  /** Side 1 and side 2 wallets. */
  wallets: Record<Side, HDNodeWallet>;
  data: Record<Side, ChannelData>;
  deps: Record<Side, Deps>;
}

describe("watchtower", function () {
  let h: Harness;
  let backend: Secp256k1Backend;
  let hub: HDNodeWallet;
  let towerWallet: HDNodeWallet;
  let dirs: string[] = [];
  let running: Stoppable[] = [];

  before(async function () {
    h = await startHarness("collateral", PERIOD);
    backend = await loadBackend("auto");
    hub = h.wallet(1);
    towerWallet = h.wallet(9);
    for (const i of [1, 2, 3, 4, 5, 6, 7]) await h.fundAndApprove(h.wallet(i), 10_000n);
  });
  after(async function () {
    await h?.stop();
  });
  afterEach(async function () {
    for (const s of running.reverse()) await s.stop().catch(() => undefined);
    running = [];
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    dirs = [];
  });

  // ------------------------------------------------------------------ helpers

  const signerOf = (w: { privateKey: string }): Signer => backend.createSigner(getBytes(w.privateKey));
  const sideOf = (p: Pair, w: HDNodeWallet): Side => (p.wallets[1].address === w.address ? 1 : 2);
  const other = (s: Side): Side => (s === 1 ? 2 : 1);
  const domain = () => ({ chainId: BigInt(h.devnet.deployment.chainId), verifyingContract: normalizeAddress(h.devnet.deployment.channels) });

  async function openPair(x: HDNodeWallet, y: HDNodeWallet): Promise<Pair> {
    const [w1, w2] = h.ordered(x, y);
    const id = (await h.open(w1, w2)) as Hex;
    await h.deposit(id, w1, w2, DEPOSIT);
    await h.deposit(id, w2, w1, DEPOSIT);
    const now = await h.now();
    const funding: Funding = { deposit1: DEPOSIT, deposit2: DEPOSIT, withdrawn1: 0n, withdrawn2: 0n, credit: 0n, creditSide: 0 };
    const config = (me: Side) => ({ channelId: id, domain: domain(), participant1: normalizeAddress(w1.address), participant2: normalizeAddress(w2.address), me });
    const deps = (w: HDNodeWallet): Deps => ({ signer: signerOf(w), verifier: backend.verifier, now, policy: DEFAULT_POLICY });
    return { id, wallets: { 1: w1, 2: w2 }, data: { 1: newChannel(config(1), funding), 2: newChannel(config(2), funding) }, deps: { 1: deps(w1), 2: deps(w2) } };
  }

  /** Applies an input to one side and carries every message to the other, to quiescence. */
  function run(p: Pair, side: Side, input: ChannelInput): ChannelEffect[] {
    const all: ChannelEffect[] = [];
    let queue: { to: Side; input: ChannelInput }[] = [{ to: side, input }];
    while (queue.length > 0) {
      const next: typeof queue = [];
      for (const { to, input: i } of queue) {
        const r = transition(p.data[to], i, p.deps[to]);
        if (!r.ok) throw new Error(`${r.error.code}: ${r.error.message}`);
        p.data[to] = r.channel;
        for (const e of r.effects) {
          all.push(e);
          if (e.type === "send") next.push({ to: other(to), input: { type: "receive", message: e.message } });
        }
      }
      queue = next;
    }
    return all;
  }

  /** `payer` pays its partner; the payer proposes. */
  function pay(p: Pair, payer: HDNodeWallet, amount: bigint): void {
    run(p, sideOf(p, payer), { type: "propose", ops: [{ type: "pay", amount, paymentId: `0x${randomBytes(32).toString("hex")}` }] });
  }

  function tempDir(): string {
    const d = mkdtempSync(join(tmpdir(), "starling-tower-"));
    dirs.push(d);
    return d;
  }

  async function startTower(dir: string, key: { privateKey: string } = towerWallet): Promise<Watchtower> {
    const tower = await Watchtower.start({
      dataDir: dir,
      deployment: h.devnet.deployment,
      rpcUrl: h.devnet.anvil.url,
      privateKey: getBytes(key.privateKey),
      backend,
      pollIntervalMs: 100,
      recheckMs: 300,
    });
    running.push(tower);
    return tower;
  }

  async function startTransport(w: { privateKey: string }): Promise<P2PTransport> {
    const t = createTransport({ signer: signerOf(w), verifier: backend.verifier, privateKey: randomBytes(32) });
    running.push(t);
    await t.start();
    return t;
  }

  /** The victim's node side: a transport and a tower client, fed like the node feeds it. */
  async function startVictim(w: HDNodeWallet, tower: Watchtower, channels: ChannelData[]) {
    const transport = await startTransport(w);
    const store = new MemoryStore();
    await store.open();
    const client = new TowerClient({
      transport,
      tower: { address: tower.address, multiaddrs: tower.multiaddrs },
      signer: signerOf(w),
      store,
      retryMinMs: 100,
      retryMaxMs: 500,
    });
    running.push(client);
    await client.start(channels);
    const observe = (c: ChannelData) => {
      client.track([c]);
      client.handOff([c]);
    };
    return { transport, client, observe };
  }

  async function waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await probe();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const recordOf = async (tower: Watchtower, id: Hex, client: HDNodeWallet): Promise<WatchRecord | undefined> =>
    (await tower.records()).find((r) => r.channelId === id.toLowerCase() && r.client === normalizeAddress(client.address));

  async function storeKeys(dir: string): Promise<string[]> {
    const db = new Level<string, string>(join(dir, "db"));
    await db.open();
    try {
      return await db.keys().all();
    } finally {
      await db.close();
    }
  }

  /**
   * A channel where the hub holds a state it has revoked: the victim pays 40 (nonce 1, the hub's
   * best state, kept as a "backup"), the hub pays 10 (2), the victim pays 5 (3, the hub revokes
   * below 3). Returns the pair and the backup.
   */
  async function revokedBackup(victim: HDNodeWallet, observe?: (c: ChannelData) => void) {
    const p = await openPair(hub, victim);
    const hs = sideOf(p, hub);
    const vs = sideOf(p, victim);
    pay(p, victim, 40n);
    observe?.(p.data[vs]);
    const backup = p.data[hs];
    pay(p, hub, 10n);
    observe?.(p.data[vs]);
    pay(p, victim, 5n);
    observe?.(p.data[vs]);
    expect(p.data[vs].partnerRevocation?.revokedBelow).to.equal(3n);
    return { p, backup, hs, vs };
  }

  /** The victim hands its channel (with a revoked state the hub keeps) to `tower`, then goes offline. */
  async function handedOffThenOffline(victim: HDNodeWallet, tower: Watchtower) {
    const victimSide = await startVictim(victim, tower, []);
    const r = await revokedBackup(victim, victimSide.observe);
    await waitFor("the hand-off", async () => (await recordOf(tower, r.p.id, victim))?.revocation?.revokedBelow === 3n);
    await victimSide.client.stop();
    await victimSide.transport.stop();
    return r;
  }

  async function cheat(p: Pair, backup: ChannelData, victim: HDNodeWallet): Promise<void> {
    const vs = sideOf(p, victim);
    const sig = vs === 1 ? backup.latest.sig1 : backup.latest.sig2;
    await h.send(hub, "close", "close", p.id, victim.address, backup.latest.state, sig);
  }

  const channelGone = (p: Pair) => async () => (await h.channel(p.wallets[1], p.wallets[2])).phase === 0n;

  // ------------------------------------------------------------------ tests

  it("keeps O(1) storage per channel across many updates and restarts, and seals the newest state", async function () {
    const victim = h.wallet(2);
    const dir = tempDir();
    let tower = await startTower(dir);
    const p = await openPair(hub, victim);
    const vs = sideOf(p, victim);
    const { transport, observe } = await startVictim(victim, tower, [p.data[vs]]);
    for (let i = 0; i < 12; i++) {
      pay(p, i % 2 === 0 ? hub : victim, 3n);
      observe(p.data[vs]);
    }
    await waitFor("the 12th hand-off", async () => (await recordOf(tower, p.id, victim))?.sealed?.nonce === 12n);
    expect(await tower.records()).to.have.length(1);
    await tower.stop();
    const before = await storeKeys(dir);

    tower = await startTower(dir);
    await transport.connect(tower.address, tower.multiaddrs);
    let prev = p.data[vs].latest;
    for (let i = 0; i < 24; i++) {
      prev = p.data[vs].latest;
      pay(p, i % 3 === 0 ? victim : hub, 2n);
      observe(p.data[vs]);
    }
    const record = await waitFor("the 36th hand-off", async () => {
      const r = await recordOf(tower, p.id, victim);
      return r?.sealed?.nonce === 36n && r.revocation && r.revocation.revokedBelow >= 35n ? r : undefined;
    });
    expect(record.revocation).to.deep.equal(p.data[vs].partnerRevocation);

    // The seal opens with the close of the previous state (the victim's signature the partner
    // would publish), not with the newest one's, and never holds amounts in the clear.
    const latest = p.data[vs].latest;
    const mine = (s: typeof latest) => (vs === 1 ? s.sig1 : s.sig2);
    const opened = openSeal(domain(), p.id, normalizeAddress(victim.address), record.sealed!, { state: prev.state, signature: mine(prev) });
    expect(opened?.state).to.deep.equal(latest.state);
    expect(openSeal(domain(), p.id, normalizeAddress(victim.address), record.sealed!, { state: latest.state, signature: mine(latest) })).to.equal(null);
    expect(JSON.stringify(record, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))).to.not.include(latest.state.sent1.toString(16).padStart(64, "0"));

    await tower.stop();
    const after = await storeKeys(dir);
    expect(after).to.deep.equal(before);
    expect(after.filter((k) => k.startsWith("p!"))).to.have.length(1);
    expect(after.length).to.be.at.most(3);
  });

  it("penalises a partner that closes with a revoked state while the victim is offline", async function () {
    const victim = h.wallet(3);
    const tower = await startTower(tempDir());
    const { p, backup } = await handedOffThenOffline(victim, tower);

    const before = await h.balanceOf(victim.address);
    await cheat(p, backup, victim);
    await waitFor("the penalty", channelGone(p));
    // 60 at close (its share of nonce 1) and the other 140 by the penalty: the whole channel.
    expect(await h.balanceOf(victim.address)).to.equal(before + 2n * DEPOSIT);
    await waitFor("the record to be dropped", async () => (await recordOf(tower, p.id, victim)) === undefined);
  });

  it("answers a close with an older, unrevoked state with the newer sealed one", async function () {
    const victim = h.wallet(4);
    const tower = await startTower(tempDir());
    const victimSide = await startVictim(victim, tower, []);
    const p = await openPair(hub, victim);
    const hs = sideOf(p, hub);
    const vs = sideOf(p, victim);
    pay(p, hub, 20n); // nonce 1
    victimSide.observe(p.data[vs]);
    const stale = p.data[hs];
    pay(p, hub, 30n); // nonce 2: the hub's proposal revokes below 1 only, so 1 is not revoked
    victimSide.observe(p.data[vs]);
    expect(p.data[vs].partnerRevocation?.revokedBelow).to.equal(1n);
    let acted: WatchRecord | undefined;
    tower.events.on("acted", (r) => (acted = r));
    await waitFor("the hand-off", async () => (await recordOf(tower, p.id, victim))?.sealed?.nonce === 2n);
    await victimSide.client.stop();
    await victimSide.transport.stop();

    const before = await h.balanceOf(victim.address);
    const sig = vs === 1 ? stale.latest.sig1 : stale.latest.sig2;
    await h.send(hub, "close", "close", p.id, victim.address, stale.latest.state, sig);
    await waitFor("the update", async () => (await h.channel(p.wallets[1], p.wallets[2])).nonce === 2n);
    // 120 at close (nonce 1), 30 more by the update: its share of nonce 2.
    expect(await h.balanceOf(victim.address)).to.equal(before + DEPOSIT + 50n);
    await waitFor("the outcome", async () => acted);
    expect(acted?.outcome?.action).to.equal("updateState");
    expect(acted?.outcome?.nonce).to.equal(2n);
  });

  it("refuses hand-offs from a non-participant or with a bad signature, and keeps each client's record apart", async function () {
    const victim = h.wallet(5);
    const tower = await startTower(tempDir());
    const p = await openPair(hub, victim);
    const vs = sideOf(p, victim);
    const hs = sideOf(p, hub);
    pay(p, victim, 10n);
    pay(p, hub, 4n);
    pay(p, victim, 1n);
    const good = buildHandOff(p.data[vs], null, signerOf(victim));
    const victimT = await startTransport(victim);
    const mallory = await startTransport(h.wallet(8));
    await victimT.connect(tower.address, tower.multiaddrs);
    await mallory.connect(tower.address, tower.multiaddrs);
    const refusals: string[] = [];
    tower.events.on("refused", (_from, err) => refusals.push(err.code));

    await expectNack(mallory.send(tower.address, good), /^NOT_PARTICIPANT/);
    const rev = good.revocation!;
    const flipped = `${rev.signature.slice(0, 10)}${rev.signature[10] === "0" ? "1" : "0"}${rev.signature.slice(11)}` as Hex;
    await expectNack(victimT.send(tower.address, { ...good, revocation: { ...rev, signature: flipped } }), /^BAD_SIGNATURE/);
    // The victim's own signature is no revocation by its partner.
    const own = vs === 1 ? p.data[vs].latest.sig1! : p.data[vs].latest.sig2!;
    const ownRevocation = { revokedBelow: own.revokedBelow, stateHash: rev.stateHash, signature: own.signature };
    await expectNack(victimT.send(tower.address, { ...good, revocation: ownRevocation }), /^BAD_SIGNATURE/);
    // The partner's signature, but for another deployment (another verifying contract).
    const foreign = { ...domain(), verifyingContract: `0x${"11".repeat(20)}` as Address };
    const foreignRev = { ...rev, signature: signUpdate(signerOf(hub), foreign, p.data[vs].latest.state, rev.revokedBelow).signature };
    await expectNack(victimT.send(tower.address, { ...good, revocation: foreignRev }), /^BAD_SIGNATURE/);
    await expectNack(victimT.send(tower.address, { ...good, channelId: `0x${"ab".repeat(32)}`, revocation: null }), /^UNKNOWN_CHANNEL/);
    await expectNack(victimT.send(tower.address, { kind: "starling.tower.handoff", v: 1, channelId: "0x12" }), /^BAD_HANDOFF/);
    expect(refusals).to.deep.equal(["NOT_PARTICIPANT", "BAD_SIGNATURE", "BAD_SIGNATURE", "BAD_SIGNATURE", "UNKNOWN_CHANNEL", "BAD_HANDOFF"]);
    expect(await tower.records()).to.have.length(0);

    await victimT.send(tower.address, good);
    // The partner may use the same tower: its hand-off is its own record and cannot weaken the victim's.
    const hubT = await startTransport(hub);
    await hubT.connect(tower.address, tower.multiaddrs);
    await hubT.send(tower.address, buildHandOff(p.data[hs], null, signerOf(hub)));
    const records = await tower.records();
    expect(records).to.have.length(2);
    expect((await recordOf(tower, p.id, victim))?.revocation).to.deep.equal(p.data[vs].partnerRevocation);
    expect((await recordOf(tower, p.id, hub))?.revocation).to.deep.equal(p.data[hs].partnerRevocation);
  });

  it("lands the penalty after a restart when it was down during the close", async function () {
    const victim = h.wallet(6);
    const dir = tempDir();
    let tower = await startTower(dir);
    const { p, backup } = await handedOffThenOffline(victim, tower);
    await tower.stop();

    const before = await h.balanceOf(victim.address);
    await cheat(p, backup, victim);
    await h.increaseTime(60);
    tower = await startTower(dir);
    await waitFor("the penalty", channelGone(p));
    expect(await h.balanceOf(victim.address)).to.equal(before + 2n * DEPOSIT);
  });

  it("lands the penalty after a restart mid-dispute (the close seen, the transaction not sent)", async function () {
    const victim = h.wallet(7);
    const dir = tempDir();
    // A tower whose gas account is empty sees the close but cannot send.
    const key = Wallet.createRandom();
    let tower = await startTower(dir, key);
    const { p, backup } = await handedOffThenOffline(victim, tower);

    const before = await h.balanceOf(victim.address);
    await cheat(p, backup, victim);
    const disputed = await waitFor("the dispute to be recorded", async () => (await recordOf(tower, p.id, victim))?.dispute);
    expect(disputed.closer).to.equal(normalizeAddress(hub.address));
    await new Promise((r) => setTimeout(r, 500));
    expect((await h.channel(p.wallets[1], p.wallets[2])).phase).to.equal(2n); // still closed: nothing landed
    await tower.stop();

    await mined(await h.wallet(0).sendTransaction({ to: key.address, value: 10n ** 18n }));
    tower = await startTower(dir, key);
    await waitFor("the penalty", channelGone(p));
    expect(await h.balanceOf(victim.address)).to.equal(before + 2n * DEPOSIT);
  });
});

async function expectNack(p: Promise<void>, pattern: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    expect((err as { code?: string }).code).to.equal("nack");
    expect((err as Error).message).to.match(pattern);
    return;
  }
  throw new Error(`expected a refusal matching ${pattern}`);
}
