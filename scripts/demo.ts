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
import { keccak256 } from "ethers";
import { Cluster, randomId as id, waitFor, type ChannelWire } from "../src/devkit/cluster.js";
import { mined } from "../src/chain/deploy.js";

const keep = process.argv.includes("--keep");

function step(text: string): void {
  console.log(`\n== ${text}`);
}

async function main(cluster: Cluster): Promise<number> {
  const { devnet } = cluster;
  console.log(`chain ${cluster.chainUrl}, token ${devnet.deployment.token}, channels ${devnet.deployment.channels}`);

  // Dev accounts 1..5 hold ether for gas; each node imports one (never do this on a real network).
  step("issuer sets the hubs' credit lines (10,000,000,000 tokens per channel, the seed's figure)");
  const CREDIT = 10_000_000_000n * 10n ** 18n;
  for (const i of [1, 2]) await mined(await cluster.channels.getFunction("setCreditLimit")(devnet.wallets[i]!.address, CREDIT));

  step("start two hubs and three users, each its own process");
  // Hubs first with no peers, to learn their peer ids; then restart hub1/hub2 knowing each other.
  const hub1 = await cluster.addNode({ name: "hub1", role: "hub", account: 1 });
  const hub2 = await cluster.addNode({ name: "hub2", role: "hub", account: 2 });
  await cluster.setPeers(hub1, [hub2]);
  await cluster.setPeers(hub2, [hub1]);
  const alice = await cluster.addNode({ name: "alice", role: "user", peers: [hub1] });
  const bob = await cluster.addNode({ name: "bob", role: "user", peers: [hub1] });
  const carol = await cluster.addNode({ name: "carol", role: "user", peers: [hub2] });
  for (const n of [hub1, hub2, alice, bob, carol]) console.log(`${n.name.padEnd(6)} ${n.address}  ${n.multiaddr}`);

  step("hubs open their users' channels (the hub pays the gas; its credit line is granted at once)");
  await hub1.rpc.call("channel.open", { partner: alice.address });
  await hub1.rpc.call("channel.open", { partner: bob.address });
  await hub2.rpc.call("channel.open", { partner: carol.address });
  await hub1.rpc.call("channel.open", { partner: hub2.address });
  await waitFor(async () => (await alice.channelList()).length === 1 && (await carol.channelList()).length === 1, "users see their channels");

  step("alice deposits 50 tokens she holds (burned into the channel: issuer mode)");
  const T = 10n ** 18n; // one token in base units
  await cluster.mint(alice.address, 50n * T);
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

  step("an invoice: bob asks for 7 tokens, alice pays its secret hash; bob unlocks on arrival");
  const invoice = (await bob.rpc.call("payment.invoice", { amount: (7n * T).toString() })) as { secretHash: string };
  const paid = (await alice.rpc.call("payment.pay", { paymentId: id(), to: bob.address, amount: (7n * T).toString(), secretHash: invoice.secretHash })) as {
    status: string;
    secret?: string | null;
  };
  if (paid.status !== "completed" || !paid.secret || keccak256(paid.secret) !== invoice.secretHash) throw new Error(`invoice payment ended ${paid.status} without its receipt`);
  console.log(`status: ${paid.status}; alice's receipt, the secret only bob knew: ${paid.secret.slice(0, 18)}...`);

  step("across two hubs: alice pays carol 25 tokens (A -> hub1 -> hub2 -> C)");
  const cross = (await alice.rpc.call("payment.pay", { paymentId: id(), to: carol.address, amount: (25n * T).toString() })) as { status: string };
  console.log(`status: ${cross.status}`);

  step("bob withdraws 100 tokens to the chain; his channel stays open");
  await bob.rpc.call("channel.withdraw", { amount: (100n * T).toString() });

  step("carol closes her channel cooperatively (paid at once)");
  await carol.rpc.call("channel.close", {});

  step("final balances");
  const expected = new Map<string, { onChain: bigint; offChain: bigint }>([
    [alice.name, { onChain: 0n, offChain: (50n + 1000n - 50n - 5n - 7n - 25n) * T }],
    [bob.name, { onChain: 100n * T, offChain: (200n + 50n + 5n + 7n - 100n) * T }],
    [carol.name, { onChain: (10n + 25n) * T, offChain: 0n }],
  ]);
  let ok = true;
  const fmt = (v: bigint) => (Number(v / 10n ** 14n) / 1e4).toFixed(4);
  console.log(`${"node".padEnd(6)} ${"on chain".padStart(12)} ${"in channels".padStart(14)} ${"expected".padStart(24)}`);
  for (const n of [alice, bob, carol]) {
    const b = await n.balances();
    const e = expected.get(n.name)!;
    const good = b.onChain === e.onChain && b.channels === e.offChain;
    ok &&= good;
    console.log(
      `${n.name.padEnd(6)} ${fmt(b.onChain).padStart(12)} ${fmt(b.channels).padStart(14)} ${`${fmt(e.onChain)} / ${fmt(e.offChain)}`.padStart(24)} ${good ? "ok" : "MISMATCH"}`,
    );
  }

  // Both ends of every channel hold the same newest state. Each node learns an on-chain change
  // (bob's withdrawal) from its own chain scan, so the ends may need a poll interval to agree.
  for (const [a, b] of [[hub1, alice], [hub1, bob], [hub1, hub2]] as const) {
    let mine: ChannelWire | undefined;
    const agree = await waitFor(
      async () => {
        mine = await a.channelWith(b);
        const theirs = await b.channelWith(a);
        return !!mine && !!theirs && mine.nonce === theirs.nonce && mine.balance === theirs.partnerBalance && mine.partnerBalance === theirs.balance;
      },
      `${a.name} and ${b.name} agree`,
      10_000,
    ).then(
      () => true,
      () => false,
    );
    ok &&= agree;
    console.log(`channel ${a.name}-${b.name}: nonce ${mine?.nonce}, ${agree ? "both ends agree" : "ENDS DISAGREE"}`);
  }

  // Issuer mode: the supply changed by what users took out (withdrawals and closes) minus what
  // they put in (alice's deposit burned), on top of the 50 tokens minted to alice.
  const supply = await cluster.totalSupply();
  const expectedSupply = 50n * T - 50n * T + 100n * T + 35n * T;
  const supplyOk = supply === expectedSupply;
  ok &&= supplyOk;
  console.log(`token supply ${fmt(supply)} (expected ${fmt(expectedSupply)}): ${supplyOk ? "ok" : "MISMATCH"}`);

  console.log(ok ? "\nall balances add up" : "\nBALANCES DO NOT ADD UP");
  return ok ? 0 : 1;
}

let code = 1;
let cluster: Cluster | undefined;
try {
  cluster = await Cluster.start({ mode: "issuer", challengePeriod: 600 });
  step(`embedded chain (anvil on 127.0.0.1), issuer mode; logs in ${cluster.dir}`);
  code = await main(cluster);
} catch (err) {
  console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`);
  if (cluster) console.error(`node logs are in ${cluster.dir} (kept)`);
} finally {
  await cluster?.stop({ keep: code !== 0 || keep }).catch((err: unknown) => console.error(`shutdown: ${String(err)}`));
}
process.exit(code);
