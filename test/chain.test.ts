/**
 * The chain adapter against the embedded chain: TxSender (nonces, reverts, confirmations,
 * re-broadcast and replacement), ChannelsClient happy paths, and the ChainEvents scanner.
 */
import { expect } from "chai";
import { Interface, JsonRpcProvider, hexlify, keccak256, randomBytes, AbiCoder, type HDNodeWallet, type TransactionReceipt } from "ethers";
import { startDevnet, type Devnet } from "../src/chain/devnet.js";
import { artifact } from "../src/chain/artifacts.js";
import { TYPES, typedDataDomain } from "../src/chain/typed-data.js";
import { ChainError } from "../src/chain/errors.js";
import { TxSender, type TxProgress } from "../src/chain/tx-sender.js";
import { ChannelsClient, orderParticipants } from "../src/chain/adapter.js";
import { ChainEvents, memoryCursor, type ChainEvent } from "../src/chain/events.js";
import type { Address, ChannelState, Hex } from "../src/protocol/types.js";
import type { StateSignature } from "../src/protocol/channel.js";
import { mined } from "../src/chain/deploy.js";
import { startAnvil } from "../src/chain/anvil.js";
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

const PERIOD = 600;
const ZERO32 = `0x${"00".repeat(32)}` as Hex;
const tokenIface = new Interface(artifact("StarlingToken").abi);

const randomSecret = (): Hex => hexlify(randomBytes(32)) as Hex;
const secretHash = (secret: Hex): Hex => keccak256(AbiCoder.defaultAbiCoder().encode(["bytes32"], [secret])) as Hex;

async function expectChainError(promise: Promise<unknown>, code: string, errorName?: string): Promise<ChainError> {
  try {
    await promise;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(ChainError);
    const e = err as ChainError;
    expect(e.code, e.message).to.equal(code);
    if (errorName) expect(e.errorName, e.message).to.equal(errorName);
    return e;
  }
  return expect.fail(`expected ChainError ${code}${errorName ? ` (${errorName})` : ""}`);
}

async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) expect.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function nextEvent(events: TxProgress[], phase: TxProgress["phase"], timeoutMs = 10_000): Promise<TxProgress> {
  return (async () => {
    await waitUntil(() => events.some((e) => e.phase === phase), timeoutMs, `progress "${phase}"`);
    return events.find((e) => e.phase === phase)!;
  })();
}

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;

describe("chain adapter (embedded chain)", function () {
  let devnet: Devnet;
  let minter: TxSender;

  const wallet = (i: number): HDNodeWallet => devnet.wallets[i]!;
  const addr = (i: number): Address => wallet(i).address as Address;
  const domain = () => typedDataDomain(devnet.deployment.chainId, devnet.deployment.channels);

  async function mint(to: Address, amount: bigint): Promise<void> {
    await minter.send({ to: devnet.deployment.token as Address, data: tokenIface.encodeFunctionData("mint", [to, amount]) as Hex });
  }

  async function increaseTime(seconds: number): Promise<void> {
    await devnet.provider.send("evm_increaseTime", [seconds]);
    await devnet.provider.send("evm_mine", []);
  }

  before(async function () {
    devnet = await startDevnet({ challengePeriod: PERIOD });
    minter = new TxSender(wallet(0));
  });
  after(async function () {
    minter?.stop();
    await devnet?.stop();
  });

  describe("TxSender", function () {
    it("sends 20 concurrent transactions from one wallet with consecutive nonces, all mined", async function () {
      const client = ChannelsClient.connect(devnet.deployment, wallet(1));
      const start = await devnet.provider.getTransactionCount(addr(1), "latest");
      const secrets = Array.from({ length: 20 }, randomSecret);
      const t0 = Date.now();
      const results = await Promise.all(secrets.map((s) => client.registerSecret(s)));
      const ms = Date.now() - t0;
      expect(results.map((r) => r.nonce).sort((a, b) => a - b)).to.deep.equal(Array.from({ length: 20 }, (_, i) => start + i));
      expect(results.every((r) => r.receipt.status === 1)).to.equal(true);
      expect(await devnet.provider.getTransactionCount(addr(1), "latest")).to.equal(start + 20);
      for (const s of secrets) expect(await client.secretRevealedAt(secretHash(s)), "revealedAt").to.not.equal(0n);
      console.log(`      20 concurrent sends: ${ms} ms`);
    });

    it("reports a revert by its custom error name without sending anything", async function () {
      const a = ChannelsClient.connect(devnet.deployment, wallet(2));
      const { channelId } = await a.open(addr(3));
      const nonce = await a.sender.nextNonce();
      const onChain = await devnet.provider.getTransactionCount(addr(2), "pending");

      const twice = await expectChainError(a.open(addr(3)), "REVERTED", "WrongPhase");
      expect(twice.args?.[0]).to.equal(channelId);
      expect(twice.args?.slice(1)).to.deep.equal([0n, 1n]); // expected None, actual Open
      // The revert bubbles up from the token and is still decoded.
      const noAllowance = await expectChainError(a.deposit(channelId, addr(3), 10n), "REVERTED", "ERC20InsufficientAllowance");
      expect(noAllowance.args?.[0]).to.equal(devnet.deployment.channels);
      await expectChainError(a.settle(channelId, addr(3), addr(2)), "REVERTED");

      expect(await a.sender.nextNonce()).to.equal(nonce);
      expect(await devnet.provider.getTransactionCount(addr(2), "pending")).to.equal(onChain);
      // The sender keeps working after a revert.
      const next = await a.registerSecret(randomSecret());
      expect(next.nonce).to.equal(nonce);
    });

    it("recovers when the key's nonce was used by another sender", async function () {
      const client = ChannelsClient.connect(devnet.deployment, wallet(2));
      const cached = await client.sender.nextNonce();
      await mined(await wallet(2).sendTransaction({ to: addr(2), value: 1n }));
      const result = await client.registerSecret(randomSecret());
      expect(result.nonce).to.equal(cached + 1);
      expect(await client.sender.nextNonce()).to.equal(cached + 2);
    });

    it("re-broadcasts a transaction the node dropped from its mempool", async function () {
      const events: TxProgress[] = [];
      const sender = new TxSender(wallet(4), { stuckAfterMs: 300, onProgress: (e) => events.push(e) });
      const client = new ChannelsClient(devnet.deployment, sender);
      await devnet.provider.send("evm_setAutomine", [false]);
      try {
        const secret = randomSecret();
        const pending = client.registerSecret(secret);
        const sent = await nextEvent(events, "sent");
        await devnet.provider.send("anvil_dropTransaction", [sent.hash]);
        await devnet.provider.send("evm_mine", []);
        expect(await devnet.provider.getTransactionReceipt(sent.hash)).to.equal(null);
        const resent = await nextEvent(events, "resent");
        expect(resent.hash).to.equal(sent.hash); // the same signed transaction
        await devnet.provider.send("evm_mine", []);
        const result = await pending;
        expect(result.hash).to.equal(sent.hash);
        expect(await client.secretRevealedAt(secretHash(secret)), "revealedAt").to.not.equal(0n);
        expect(events.map((e) => e.phase)).to.deep.equal(["sent", "resent", "mined", "confirmed"]);
        expect(events.every((e) => e.label === "registerSecret")).to.equal(true);
      } finally {
        await devnet.provider.send("evm_setAutomine", [true]);
        sender.stop();
      }
    });

    it("replaces a transaction stuck in the mempool with a 20% higher fee", async function () {
      const events: TxProgress[] = [];
      const sender = new TxSender(wallet(4), { stuckAfterMs: 300, onProgress: (e) => events.push(e) });
      const client = new ChannelsClient(devnet.deployment, sender);
      await devnet.provider.send("evm_setAutomine", [false]);
      try {
        const pending = client.registerSecret(randomSecret());
        const sent = await nextEvent(events, "sent");
        const original = await devnet.provider.getTransaction(sent.hash); // still pending
        const replaced = await nextEvent(events, "replaced");
        expect(replaced.hash).to.not.equal(sent.hash);
        expect(replaced.nonce).to.equal(sent.nonce);
        await devnet.provider.send("evm_mine", []);
        const result = await pending;
        expect(result.hash).to.equal(replaced.hash);
        expect(await devnet.provider.getTransaction(sent.hash)).to.equal(null); // evicted by the replacement
        const replacement = await devnet.provider.getTransaction(replaced.hash);
        const bumped = (fee: bigint | null | undefined): bigint => ((fee ?? 0n) * 120n) / 100n;
        expect((replacement?.maxPriorityFeePerGas ?? 0n) >= bumped(original?.maxPriorityFeePerGas), "priority fee +20%").to.equal(true);
        expect((replacement?.maxFeePerGas ?? 0n) >= bumped(original?.maxFeePerGas), "max fee +20%").to.equal(true);
      } finally {
        await devnet.provider.send("evm_setAutomine", [true]);
        sender.stop();
      }
    });

    it("gives up waiting with TIMEOUT; the transaction keeps its nonce and later sends follow it", async function () {
      const sender = new TxSender(wallet(9), { timeoutMs: 400, stuckAfterMs: 60_000 });
      const client = new ChannelsClient(devnet.deployment, sender);
      await devnet.provider.send("evm_setAutomine", [false]);
      let timedOut: ChainError;
      try {
        timedOut = await expectChainError(client.registerSecret(randomSecret()), "TIMEOUT");
      } finally {
        await devnet.provider.send("evm_setAutomine", [true]);
      }
      expect(timedOut.hash).to.match(/^0x[0-9a-f]{64}$/);
      const next = await client.registerSecret(randomSecret());
      const stuck = await devnet.provider.getTransactionReceipt(timedOut.hash!);
      expect(stuck?.status).to.equal(1);
      expect(next.nonce).to.equal((await devnet.provider.getTransaction(timedOut.hash!))!.nonce + 1);
      sender.stop();
      await expectChainError(client.registerSecret(randomSecret()), "ABORTED");
    });

    it("waits for the required confirmations (block time 1 s)", async function () {
      this.timeout(60_000);
      const slow = await startDevnet({ blockTime: 1, challengePeriod: PERIOD });
      try {
        const events: TxProgress[] = [];
        const sender = new TxSender(slow.wallets[1]!, { confirmations: 2, onProgress: (e) => events.push(e) });
        const client = new ChannelsClient(slow.deployment, sender);
        const t0 = Date.now();
        const result = await client.registerSecret(randomSecret());
        const ms = Date.now() - t0;
        const head = await slow.provider.getBlockNumber();
        expect(head).to.be.greaterThanOrEqual(result.blockNumber + 1);
        expect(ms).to.be.greaterThanOrEqual(900);
        expect(events.map((e) => `${e.phase}${e.confirmations ?? ""}`)).to.deep.equal(["sent", "mined1", "confirmed2"]);
        const one = Date.now();
        await client.registerSecret(randomSecret(), { confirmations: 1 });
        console.log(`      2 confirmations: ${ms} ms; 1 confirmation: ${Date.now() - one} ms`);
      } finally {
        await slow.stop();
      }
    });
  });

  describe("ChannelsClient", function () {
    let a: ChannelsClient;
    let b: ChannelsClient;
    let p1: Address;
    let p2: Address;

    before(async function () {
      a = ChannelsClient.connect(devnet.deployment, wallet(5));
      b = ChannelsClient.connect(devnet.deployment, wallet(6));
      [p1, p2] = orderParticipants(a.address, b.address);
      await mint(a.address, 1_000n);
      await mint(b.address, 1_000n);
    });

    const signUpdate = async (w: HDNodeWallet, state: ChannelState, revokedBelow: bigint): Promise<StateSignature> => ({
      revokedBelow,
      signature: (await w.signTypedData(domain(), TYPES.Update, { channelId: state.channelId, revokedBelow, state })) as Hex,
    });

    it("opens, deposits (approving only what is missing), withdraws and closes cooperatively", async function () {
      const { channelId } = await a.open(b.address);
      expect(channelId).to.equal(await a.channelId(b.address, a.address));
      let info = await a.getChannel(a.address, b.address);
      expect(info).to.include({ id: channelId, phase: "open", counter: 1, participant1: p1, participant2: p2 });

      const first = await a.approveAndDeposit(channelId, b.address, 100n);
      expect(first.approval).to.not.equal(undefined);
      expect(await a.tokenAllowance(a.address)).to.equal(0n);
      const raise = await a.approveAndDeposit(channelId, b.address, 130n);
      expect(raise.approval?.receipt.status).to.equal(1);
      await b.approveAndDeposit(channelId, a.address, 50n);
      info = await a.getChannel(a.address, b.address);
      const [depA, depB] = a.address === p1 ? [info.deposit1, info.deposit2] : [info.deposit2, info.deposit1];
      expect([depA, depB]).to.deep.equal([130n, 50n]);
      expect(await a.tokenBalance(devnet.deployment.channels as Address)).to.equal(180n);

      // An allowance already in place is used without a new approval.
      await b.sender.send({
        to: devnet.deployment.token as Address,
        data: tokenIface.encodeFunctionData("approve", [devnet.deployment.channels, 20n]) as Hex,
      });
      const covered = await b.approveAndDeposit(channelId, a.address, 70n);
      expect(covered.approval).to.equal(undefined);

      // a withdraws 30 with b's signature; its own may be empty as it sends the transaction.
      const request = { channelId, participant: a.address, totalWithdraw: 30n, expiry: (await a.chainTime()) + 100n };
      const partnerSig = (await wallet(6).signTypedData(domain(), TYPES.Withdraw, request)) as Hex;
      const before = await a.tokenBalance(a.address);
      await a.withdraw(request, b.address, "0x", partnerSig);
      expect(await a.tokenBalance(a.address)).to.equal(before + 30n);
      info = await a.getChannel(a.address, b.address);
      expect(a.address === p1 ? info.withdrawn1 : info.withdrawn2).to.equal(30n);

      // Funds 130 + 70 - 30 = 170: split 100 / 70 in contract order, submitted by b.
      const terms = { channelId, balance1: 100n, balance2: 70n };
      const sigOfA = (await wallet(5).signTypedData(domain(), TYPES.CooperativeClose, terms)) as Hex;
      const [sig1, sig2] = a.address === p1 ? [sigOfA, "0x" as Hex] : ["0x" as Hex, sigOfA];
      const [before1, before2] = [await a.tokenBalance(p1), await a.tokenBalance(p2)];
      await b.cooperativeClose(terms, p1, p2, sig1, sig2);
      expect(await a.tokenBalance(p1)).to.equal(before1 + 100n);
      expect(await a.tokenBalance(p2)).to.equal(before2 + 70n);
      expect((await a.getChannel(a.address, b.address)).phase).to.equal("none");
    });

    it("closes unilaterally with a signed state, settles after the challenge period, registers secrets", async function () {
      const { channelId } = await b.open(a.address);
      expect((await a.getChannel(a.address, b.address)).counter).to.equal(2);
      await a.approveAndDeposit(channelId, b.address, 100n);
      await b.approveAndDeposit(channelId, a.address, 100n);

      // a closes with a state in which p1 paid p2 10 and p2 paid p1 25, signed by b.
      const state: ChannelState = { channelId, nonce: 4n, sent1: 10n, sent2: 25n, locked1: 0n, locked2: 0n, locksRoot: ZERO32 };
      const balanceB = await a.tokenBalance(b.address);
      const closed = await a.close(channelId, b.address, state, await signUpdate(wallet(6), state, 3n));
      const bShare = b.address === p1 ? 100n - 10n + 25n : 100n - 25n + 10n;
      expect(await a.tokenBalance(b.address)).to.equal(balanceB + bShare);
      const info = await a.getChannel(b.address, a.address);
      expect(info.phase).to.equal("closed");
      expect(info.nonce).to.equal(4n);
      expect(info.closerSide).to.equal(a.address === p1 ? 1 : 2);
      expect(info.closerAmount).to.equal(200n - bShare);
      const closeBlock = await devnet.provider.getBlock(closed.blockNumber);
      expect(info.settleAt).to.equal(BigInt(closeBlock!.timestamp + PERIOD));

      await expectChainError(b.settle(channelId, p1, p2), "REVERTED", "ChallengePeriodRunning");
      await increaseTime(PERIOD + 1);
      const balanceA = await a.tokenBalance(a.address);
      await b.settle(channelId, p1, p2); // anyone may settle
      expect(await a.tokenBalance(a.address)).to.equal(balanceA + 200n - bShare);
      expect((await a.getChannel(a.address, b.address)).phase).to.equal("none");

      const secret = randomSecret();
      expect(await a.secretRevealedAt(secretHash(secret))).to.equal(0n);
      const reg = await a.registerSecret(secret);
      const block = await devnet.provider.getBlock(reg.blockNumber);
      expect(await a.secretRevealedAt(secretHash(secret))).to.equal(BigInt(block!.timestamp));
      const more = [randomSecret(), randomSecret()];
      await b.registerSecrets(more);
      for (const s of more) expect(await b.secretRevealedAt(secretHash(s)), "revealedAt").to.not.equal(0n);
    });
  });

  describe("ChainEvents", function () {
    it("delivers a channel's life cycle in order and resumes from the persisted cursor", async function () {
      const a = ChannelsClient.connect(devnet.deployment, wallet(7));
      const b = ChannelsClient.connect(devnet.deployment, wallet(8));
      const [p1, p2] = orderParticipants(a.address, b.address);
      await mint(a.address, 500n);
      await mint(b.address, 500n);
      const cursor = memoryCursor();
      const all: ChainEvent[] = [];
      const mine: ChainEvent[] = [];
      const scanner = (into: ChainEvent[], involving?: Address, store = cursor) =>
        new ChainEvents({
          provider: devnet.provider,
          deployment: devnet.deployment,
          cursor: store,
          pollIntervalMs: 50,
          maxBlockRange: 7, // several ranges per scan
          ...(involving ? { involving } : {}),
          handler: async (e) => {
            into.push(e);
          },
        });
      const mineCursor = memoryCursor();
      const timersBefore = timers();
      let unfiltered = scanner(all);
      let filtered = scanner(mine, a.address, mineCursor);
      await unfiltered.start();
      await filtered.start();

      const { channelId } = await a.open(b.address);
      await a.approveAndDeposit(channelId, b.address, 100n);
      await b.approveAndDeposit(channelId, a.address, 40n);
      await a.close(channelId, b.address, { channelId, nonce: 0n, sent1: 0n, sent2: 0n, locked1: 0n, locked2: 0n, locksRoot: ZERO32 }, { revokedBelow: 0n, signature: "0x" });
      await increaseTime(PERIOD + 1);
      await a.settle(channelId, p1, p2);
      const head = await devnet.provider.getBlockNumber();
      await waitUntil(() => (unfiltered.lastProcessedBlock ?? 0) >= head && (filtered.lastProcessedBlock ?? 0) >= head, 10_000, "scanners to reach the head");
      await unfiltered.stop();
      await filtered.stop();
      expect(timers()).to.equal(timersBefore);
      expect(cursor.block).to.equal(head);

      const ofChannel = (list: ChainEvent[]) => list.filter((e) => "channelId" in e && e.channelId === channelId);
      const expected = ["ChannelOpened", "Deposited", "Deposited", "ChannelClosed", "ChannelSettled"];
      expect(ofChannel(all).map((e) => e.type)).to.deep.equal(expected);
      expect(mine.filter((e) => e.type !== "SecretRevealed").map((e) => e.type)).to.deep.equal(expected);
      const opened = ofChannel(all)[0];
      expect(opened).to.include({ type: "ChannelOpened", participant1: p1, participant2: p2 });
      const deposits = ofChannel(all).filter((e) => e.type === "Deposited");
      expect(deposits.map((e) => (e.type === "Deposited" ? [e.participant, e.totalDeposit] : []))).to.deep.equal([
        [a.address, 100n],
        [b.address, 40n],
      ]);
      // Chain order, each with its position.
      const positions = all.map((e) => [e.blockNumber, e.logIndex] as const);
      expect(positions).to.deep.equal([...positions].sort((x, y) => x[0] - y[0] || x[1] - y[1]));
      expect(all.some((e) => e.type === "SecretRevealed")).to.equal(true); // earlier tests' secrets
      expect(all.every((e) => /^0x[0-9a-f]{64}$/.test(e.txHash))).to.equal(true);
      // The filtered scanner saw none of the other pairs' channels.
      expect(mine.every((e) => e.type === "SecretRevealed" || ("channelId" in e && e.channelId === channelId))).to.equal(true);

      // After a restart from the saved cursors only new events arrive.
      const secret = randomSecret();
      const reopened = await b.open(a.address);
      await a.registerSecret(secret);
      const countAll = all.length;
      const countMine = mine.length;
      unfiltered = scanner(all);
      filtered = scanner(mine, a.address, mineCursor);
      // The filtered scanner learns the reopened channel from its ChannelOpened event.
      await unfiltered.start();
      await filtered.start();
      const head2 = await devnet.provider.getBlockNumber();
      await waitUntil(() => (unfiltered.lastProcessedBlock ?? 0) >= head2 && (filtered.lastProcessedBlock ?? 0) >= head2, 10_000, "restarted scanners");
      await unfiltered.stop();
      await filtered.stop();
      const fresh = all.slice(countAll);
      expect(fresh.map((e) => e.type)).to.deep.equal(["ChannelOpened", "SecretRevealed"]);
      expect(fresh[0]).to.include({ channelId: reopened.channelId });
      expect(fresh[1]).to.include({ secret, secretHash: secretHash(secret) });
      expect(mine.slice(countMine).map((e) => e.type)).to.deep.equal(["ChannelOpened", "SecretRevealed"]);
      const keys = all.map((e) => `${e.blockNumber}:${e.logIndex}`);
      expect(new Set(keys).size).to.equal(keys.length);
      expect(timers()).to.equal(timersBefore);
    });

    it("redelivers from the failing event after a handler error, never an event already handled", async function () {
      const got: ChainEvent[] = [];
      let failOnce = true;
      const errors: unknown[] = [];
      const scanner = new ChainEvents({
        provider: devnet.provider,
        deployment: devnet.deployment,
        cursor: memoryCursor(),
        pollIntervalMs: 20,
        onError: (e) => errors.push(e),
        handler: async (e) => {
          if (e.type === "ChannelClosed" && failOnce) {
            failOnce = false;
            throw new Error("handler failed");
          }
          got.push(e);
        },
      });
      const head = await devnet.provider.getBlockNumber();
      await scanner.start();
      await waitUntil(() => (scanner.lastProcessedBlock ?? 0) >= head, 10_000, "scanner");
      await scanner.stop();
      expect(errors).to.have.length(1);
      const keys = got.map((e) => `${e.blockNumber}:${e.logIndex}`);
      expect(new Set(keys).size).to.equal(keys.length);
      expect(got.filter((e) => e.type === "ChannelClosed").length).to.be.greaterThan(0);
    });
  });
});

describe("mined (waiting for a receipt by polling)", function () {
  const hash = `0x${"ab".repeat(32)}`;
  const provider = (receipt: unknown) => ({ getTransactionReceipt: async () => receipt as TransactionReceipt | null });

  it("returns the receipt of a mined transaction", async () => {
    const receipt = { status: 1, blockNumber: 7 };
    expect(await mined({ hash, provider: provider(receipt) })).to.equal(receipt);
  });

  it("throws for a reverted transaction, and after the timeout for one never mined", async () => {
    await mined({ hash, provider: provider({ status: 0, blockNumber: 7 }) }).then(
      () => expect.fail("a reverted transaction was accepted"),
      (err: Error) => expect(err.message).to.match(/reverted \(block 7\)/),
    );
    const t0 = Date.now();
    await mined({ hash, provider: provider(null) }, 100).then(
      () => expect.fail("a missing receipt was accepted"),
      (err: Error) => expect(err.message).to.match(/not mined within 100 ms/),
    );
    expect(Date.now() - t0).to.be.at.least(100);
  });
});

describe("the embedded chain's leftovers", function () {
  this.timeout(60_000);

  it("stops with the process that started it, also one that fails without stopping it", async () => {
    const script = `import { startAnvil } from ${JSON.stringify(new URL("../src/chain/anvil.ts", import.meta.url).href)};
      const a = await startAnvil(); console.log(a.process.pid); throw new Error("crash");`;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).to.not.equal(0);
    const pid = Number(out.trim());
    expect(pid).to.be.greaterThan(0);
    const alive = (): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
    const running = alive();
    if (running) process.kill(pid, "SIGKILL");
    expect(running, "anvil still running").to.equal(false);
  });

  it("leaves no block states on disk after thousands of blocks (anvil keeps recent ones in memory)", async () => {
    const tmp = join(homedir(), ".foundry", "anvil", "tmp");
    const states = (): string[] => (existsSync(tmp) ? readdirSync(tmp) : []);
    const before = new Set(states());
    const anvil = await startAnvil();
    try {
      const rpc = new JsonRpcProvider(anvil.url, undefined, { staticNetwork: true });
      // Enough blocks that anvil without --prune-history writes older states to disk.
      for (let i = 0; i < 30; i++) await rpc.send("anvil_mine", ["0x64"]);
      const head = await rpc.getBlockNumber();
      expect(head).to.equal(3000);
      // Recent states stay queryable: a call at the block before the newest.
      expect(await rpc.getBalance("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", head - 1) > 0n).to.equal(true);
      rpc.destroy();
    } finally {
      await anvil.stop();
    }
    expect(states().filter((d) => !before.has(d))).to.deep.equal([]);
  });
});
