/**
 * In-memory walk-through: a hub issues to Alice, Alice pays Bob through the hub, and a payment to
 * an unreachable Carol is refunded after its lock expires. Run: npx tsx src/engine/demo.ts
 */
import { randomBytes } from "node:crypto";
import { balances } from "../protocol/channel.js";
import { bytesToHex } from "../protocol/eip712.js";
import type { Domain, Hex } from "../protocol/types.js";
import { loadBackend } from "../signer/index.js";
import { LocalNetwork, openLocalChannel } from "./local-network.js";
import { NodeCore } from "./node-core.js";

const domain: Domain = { chainId: 31337n, verifyingContract: `0x${"11".repeat(20)}` };
const random32 = (): Hex => bytesToHex(randomBytes(32));

async function main(): Promise<void> {
  const backend = await loadBackend("auto");
  const net = new LocalNetwork();
  const make = (): NodeCore =>
    net.add(new NodeCore({ signer: backend.createSigner(randomBytes(32)), verifier: backend.verifier, clock: net.clock }));
  const [hub, alice, bob, carol] = [make(), make(), make(), make()];
  const names = new Map([[hub.address, "hub"], [alice.address, "alice"], [bob.address, "bob"], [carol.address, "carol"]]);
  const channels = [alice, bob, carol].map((user) => openLocalChannel({ domain, a: user, b: hub, depositA: 0n, depositB: 1_000n }).channelId);

  const show = (title: string): void => {
    console.log(`\n${title} (t = ${net.now})`);
    for (const [i, user] of [alice, bob, carol].entries()) {
      const c = user.channel(channels[i]!)!;
      const b = balances(c);
      console.log(`  ${names.get(user.address)!.padEnd(6)} ${b.mine} (locked ${b.lockedMine} out, ${b.lockedPartner} in), nonce ${c.latest.state.nonce}`);
    }
  };

  net.submit(hub.address, { type: "issue", paymentId: random32(), target: alice.address, amount: 500n });
  net.run();
  show("hub issued 500 to alice");

  const paid = net.submit(alice.address, { type: "pay", paymentId: random32(), target: bob.address, amount: 120n, secret: random32() });
  net.run();
  show(`alice paid bob 120: ${alice.payment(paid.payment!.paymentId)?.status}`);

  net.dropIf = (wire) => wire.to === carol.address;
  const lost = net.submit(alice.address, { type: "pay", paymentId: random32(), target: carol.address, amount: 50n, secret: random32() });
  net.run();
  show("alice pays carol 50, carol is offline");
  net.advance(601n);
  net.tickAll();
  net.run();
  show(`after the lock expired: ${alice.payment(lost.payment!.paymentId)?.status}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
