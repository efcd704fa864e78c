/**
 * The Starling story in one command (`npm run demo`): the embedded chain in issuer mode, two hubs
 * and three users as separate daemon processes driven over JSON-RPC, doing real payments.
 *
 *   1. the issuer sets each hub's credit line; each hub opens its users' channels (credit granted);
 *   2. Alice deposits tokens she holds; the hubs issue to their users;
 *   3. Alice pays Bob through hub 1 (HTLC, A -> hub1 -> B), many times;
 *   4. Alice pays Carol across two hubs (A -> hub1 -> hub2 -> C);
 *   5. Bob withdraws to the chain while his channel stays open;
 *   6. Carol closes her channel cooperatively;
 *   7. every balance is printed, on chain and off chain, and checked: both ends of every channel
 *      agree, every user holds what the payments say, and the token supply grew by exactly what
 *      users took out of the hubs' credit. Exit code 1 if anything does not add up.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Contract } from "ethers";
import { startDevnet, type Devnet } from "../src/chain/devnet.js";
import { artifact, packageRoot } from "../src/chain/artifacts.js";
import { RpcClient } from "../src/rpc/index.js";
import type { NodeEventMap, NodeMethods } from "../src/node/api.js";

type Client = RpcClient<NodeMethods, NodeEventMap>;

const PASSWORD = "demo-password-not-secret";
const keep = process.argv.includes("--keep");
const dir = mkdtempSync(join(tmpdir(), "starling-demo-"));
const cli = join(packageRoot(), "bin", "starling.js");
const children: ChildProcess[] = [];
let devnet: Devnet | undefined;

function step(text: string): void {
  console.log(`\n== ${text}`);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function run(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, STARLING_PASSWORD: PASSWORD } });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`starling ${args[0]} failed: ${err || out}`))));
  });
}

interface Started {
  name: string;
  address: string;
  rpc: Client;
  p2p: string;
  process: ChildProcess;
}

async function startNode(name: string, dataDir: string, rpcPort: number): Promise<Started> {
  const log = createWriteStream(join(dir, `${name}.log`));
  const child = spawn(process.execPath, [cli, "start", "-d", dataDir, "--log-level", "info"], {
    env: { ...process.env, STARLING_PASSWORD: PASSWORD },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const token = readFileSync(join(dataDir, "rpc-token"), "utf8").trim();
  const url = `ws://127.0.0.1:${rpcPort}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const rpc = await RpcClient.connect<NodeMethods, NodeEventMap>(url, token, { timeoutMs: 60_000 });
      const info = (await rpc.call("node.info", {})) as { address: string; p2p: { multiaddrs: string[] } };
      return { name, address: info.address, rpc, p2p: info.p2p.multiaddrs[0]!, process: child };
    } catch (err) {
      if (child.exitCode !== null) throw new Error(`${name} exited; see ${join(dir, `${name}.log`)}`);
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

async function main(): Promise<number> {
  step(`embedded chain (anvil on 127.0.0.1), issuer mode; logs in ${dir}`);
  devnet = await startDevnet({ mode: "issuer", challengePeriod: 600 });
  const deploymentFile = join(dir, "deployment.json");
  writeFileSync(deploymentFile, JSON.stringify({ ...devnet.deployment, rpcUrl: devnet.anvil.url }, null, 2));
  const issuer = devnet.wallets[0]!;
  const token = new Contract(devnet.deployment.token, artifact("StarlingToken").abi, issuer);
  const channels = new Contract(devnet.deployment.channels, artifact("StarlingChannels").abi, issuer);
  console.log(`chain ${devnet.anvil.url}, token ${devnet.deployment.token}, channels ${devnet.deployment.channels}`);

  // Dev accounts 1..5 hold ether for gas; each node imports one (never do this on a real network).
  const names = ["hub1", "hub2", "alice", "bob", "carol"] as const;
  const ports = new Map<string, { rpc: number; p2p: number }>();
  for (const n of names) ports.set(n, { rpc: await freePort(), p2p: await freePort() });
  const keyFile = (i: number) => {
    const f = join(dir, `key${i}`);
    writeFileSync(f, devnet!.wallets[i]!.privateKey, { mode: 0o600 });
    return f;
  };
  const init = (name: string, role: string, index: number, peers: string[]) =>
    run([
      "init", "--role", role, "-d", join(dir, name), "--private-key-file", keyFile(index),
      "--chain-rpc", devnet!.anvil.url, "--deployment", deploymentFile,
      "--rpc-port", String(ports.get(name)!.rpc), "--p2p-port", String(ports.get(name)!.p2p),
      "--scrypt-n", "1024", ...peers.flatMap((p) => ["--peer", p]),
    ]);

  step("issuer sets the hubs' credit lines (10,000,000,000 tokens per channel, the seed's figure)");
  const CREDIT = 10_000_000_000n * 10n ** 18n;
  for (const i of [1, 2]) await (await channels.getFunction("setCreditLimit")(devnet.wallets[i]!.address, CREDIT)).wait();

  step("start two hubs and three users, each its own process");
  const addr = (i: number) => devnet!.wallets[i]!.address.toLowerCase();
  const peerOf = (name: string, i: number, peerId: string) => `${addr(i)}@/ip4/127.0.0.1/tcp/${ports.get(name)!.p2p}/p2p/${peerId}`;
  // Hubs first with no peers, to learn their peer ids; then restart hub1/hub2 knowing each other.
  await init("hub1", "hub", 1, []);
  await init("hub2", "hub", 2, []);
  let hub1 = await startNode("hub1", join(dir, "hub1"), ports.get("hub1")!.rpc);
  let hub2 = await startNode("hub2", join(dir, "hub2"), ports.get("hub2")!.rpc);
  const hub1Peer = peerOf("hub1", 1, hub1.p2p.split("/p2p/")[1]!);
  const hub2Peer = peerOf("hub2", 2, hub2.p2p.split("/p2p/")[1]!);
  for (const h of [hub1, hub2]) {
    await h.rpc.close();
    h.process.kill("SIGTERM");
    await new Promise((r) => h.process.once("exit", r));
  }
  for (const [name, peer] of [["hub1", hub2Peer], ["hub2", hub1Peer]] as const) {
    const cfgFile = join(dir, name, "config.json");
    const cfg = JSON.parse(readFileSync(cfgFile, "utf8")) as { p2p: { peers: unknown[] } };
    const at = peer.indexOf("@");
    cfg.p2p.peers = [{ address: peer.slice(0, at), multiaddrs: [peer.slice(at + 1)] }];
    writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
  }
  hub1 = await startNode("hub1", join(dir, "hub1"), ports.get("hub1")!.rpc);
  hub2 = await startNode("hub2", join(dir, "hub2"), ports.get("hub2")!.rpc);
  await init("alice", "user", 3, [hub1Peer]);
  await init("bob", "user", 4, [hub1Peer]);
  await init("carol", "user", 5, [hub2Peer]);
  const alice = await startNode("alice", join(dir, "alice"), ports.get("alice")!.rpc);
  const bob = await startNode("bob", join(dir, "bob"), ports.get("bob")!.rpc);
  const carol = await startNode("carol", join(dir, "carol"), ports.get("carol")!.rpc);
  for (const n of [hub1, hub2, alice, bob, carol]) console.log(`${n.name.padEnd(6)} ${n.address}  ${n.p2p}`);

  step("hubs open their users' channels (the hub pays the gas; its credit line is granted at once)");
  await hub1.rpc.call("channel.open", { partner: alice.address });
  await hub1.rpc.call("channel.open", { partner: bob.address });
  await hub2.rpc.call("channel.open", { partner: carol.address });
  await hub1.rpc.call("channel.open", { partner: hub2.address });
  await waitFor(async () => (await channelsOf(alice)).length === 1 && (await channelsOf(carol)).length === 1, "users see their channels");

  step("alice deposits 50 tokens she holds (burned into the channel: issuer mode)");
  const T = 10n ** 18n; // one token in base units
  await (await token.getFunction("mint")(alice.address, 50n * T)).wait();
  await alice.rpc.call("channel.deposit", { amount: (50n * T).toString() });

  step("issuance: hub1 issues 1,000 tokens to alice and 200 to bob; hub2 issues 10 to carol");
  await hub1.rpc.call("payment.issue", { paymentId: id(), to: alice.address, amount: (1000n * T).toString() });
  await hub1.rpc.call("payment.issue", { paymentId: id(), to: bob.address, amount: (200n * T).toString() });
  await hub2.rpc.call("payment.issue", { paymentId: id(), to: carol.address, amount: (10n * T).toString() });

  step("transfers: alice pays bob 1 token, 50 times, through hub1 (HTLC A -> hub1 -> B)");
  const t0 = performance.now();
  const latencies: number[] = [];
  for (let i = 0; i < 50; i++) {
    const s = performance.now();
    const p = (await alice.rpc.call("payment.pay", { paymentId: id(), to: bob.address, amount: T.toString() })) as { status: string };
    latencies.push(performance.now() - s);
    if (p.status !== "completed") throw new Error(`payment ${i} ended ${p.status}`);
  }
  const elapsed = performance.now() - t0;
  latencies.sort((a, b) => a - b);
  console.log(`50 payments in ${elapsed.toFixed(0)} ms; median ${latencies[25]!.toFixed(1)} ms each (one at a time, over the RPC)`);
  const repeatId = id();
  await alice.rpc.call("payment.pay", { paymentId: repeatId, to: bob.address, amount: (5n * T).toString() });
  await alice.rpc.call("payment.pay", { paymentId: repeatId, to: bob.address, amount: (5n * T).toString() });
  console.log("the same payment id sent twice paid once (5 tokens)");

  step("across two hubs: alice pays carol 25 tokens (A -> hub1 -> hub2 -> C)");
  const cross = (await alice.rpc.call("payment.pay", { paymentId: id(), to: carol.address, amount: (25n * T).toString() })) as { status: string };
  console.log(`status: ${cross.status}`);

  step("bob withdraws 100 tokens to the chain; his channel stays open");
  await bob.rpc.call("channel.withdraw", { amount: (100n * T).toString() });

  step("carol closes her channel cooperatively (paid at once)");
  await carol.rpc.call("channel.close", {});

  step("final balances");
  const expected = new Map<string, { onChain: bigint; offChain: bigint }>([
    [alice.name, { onChain: 0n, offChain: (50n + 1000n - 50n - 5n - 25n) * T }],
    [bob.name, { onChain: 100n * T, offChain: (200n + 50n + 5n - 100n) * T }],
    [carol.name, { onChain: (10n + 25n) * T, offChain: 0n }],
  ]);
  let ok = true;
  const fmt = (v: bigint) => (Number(v / 10n ** 14n) / 1e4).toFixed(4);
  console.log(`${"node".padEnd(6)} ${"on chain".padStart(12)} ${"in channels".padStart(14)} ${"expected".padStart(24)}`);
  for (const n of [alice, bob, carol]) {
    const b = (await n.rpc.call("balances", {})) as { onChain: string; channels: string };
    const e = expected.get(n.name)!;
    const good = BigInt(b.onChain) === e.onChain && BigInt(b.channels) === e.offChain;
    ok &&= good;
    console.log(
      `${n.name.padEnd(6)} ${fmt(BigInt(b.onChain)).padStart(12)} ${fmt(BigInt(b.channels)).padStart(14)} ${`${fmt(e.onChain)} / ${fmt(e.offChain)}`.padStart(24)} ${good ? "ok" : "MISMATCH"}`,
    );
  }

  // Both ends of every channel hold the same newest state.
  for (const [a, b] of [[hub1, alice], [hub1, bob], [hub1, hub2]] as const) {
    const mine = (await channelsOf(a)).find((c) => c.partner === b.address);
    const theirs = (await channelsOf(b)).find((c) => c.partner === a.address);
    const agree = !!mine && !!theirs && mine.nonce === theirs.nonce && mine.balance === theirs.partnerBalance && mine.partnerBalance === theirs.balance;
    ok &&= agree;
    console.log(`channel ${a.name}-${b.name}: nonce ${mine?.nonce}, ${agree ? "both ends agree" : "ENDS DISAGREE"}`);
  }

  // Issuer mode: the supply changed by what users took out (withdrawals and closes) minus what
  // they put in (alice's deposit burned), on top of the 50 tokens minted to alice.
  const supply = (await token.getFunction("totalSupply")()) as bigint;
  const expectedSupply = 50n * T - 50n * T + 100n * T + 35n * T;
  const supplyOk = supply === expectedSupply;
  ok &&= supplyOk;
  console.log(`token supply ${fmt(supply)} (expected ${fmt(expectedSupply)}): ${supplyOk ? "ok" : "MISMATCH"}`);

  for (const n of [hub1, hub2, alice, bob, carol]) await n.rpc.close();
  console.log(ok ? "\nall balances add up" : "\nBALANCES DO NOT ADD UP");
  return ok ? 0 : 1;
}

const id = () => `0x${randomBytes(32).toString("hex")}`;

async function channelsOf(n: Started) {
  return (await n.rpc.call("channel.list", {})) as { partner: string; nonce: string; balance: string; partnerBalance: string; status: string }[];
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function shutdown(removeDir: boolean): Promise<void> {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null) return resolve();
          const t = setTimeout(() => c.kill("SIGKILL"), 5_000);
          c.once("exit", () => {
            clearTimeout(t);
            resolve();
          });
          c.kill("SIGTERM");
        }),
    ),
  );
  await devnet?.stop();
  if (removeDir) rmSync(dir, { recursive: true, force: true });
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`);
  console.error(`node logs are in ${dir} (kept)`);
} finally {
  await shutdown(code === 0 && !keep).catch((err: unknown) => console.error(`shutdown: ${String(err)}`));
}
process.exit(code);
