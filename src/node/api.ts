/**
 * The node's JSON-RPC methods and events. Amounts are decimal strings of base units on the wire;
 * addresses and ids are 0x hex. docs/rpc.md is generated from these definitions.
 */
import { z } from "zod";
import {
  RpcRegistry,
  addressSchema,
  amountSchema,
  defineEvent,
  defineMethod,
  hash32Schema,
  type EventMapOf,
  type MethodMapOf,
} from "../rpc/index.js";
import type { Address, Hex } from "../protocol/types.js";
import type { StarlingNode } from "./node.js";

const channelRef = {
  channelId: hash32Schema.optional().describe("The channel; or give `partner`. A user with one channel may omit both."),
  partner: addressSchema.optional().describe("The channel partner's address, instead of `channelId`"),
};

/** Results carry bigints; on the wire they are decimal strings (the schema's input form). */
const wireAmount = amountSchema;

const channelSummarySchema = z.object({
  channelId: z.string(),
  partner: z.string(),
  status: z.enum(["open", "closing", "closed"]),
  nonce: wireAmount,
  balance: wireAmount,
  partnerBalance: wireAmount,
  locked: wireAmount,
  partnerLocked: wireAmount,
  available: wireAmount,
  deposit: wireAmount,
  partnerDeposit: wireAmount,
  withdrawn: wireAmount,
  partnerWithdrawn: wireAmount,
  credit: wireAmount,
  creditSide: z.enum(["me", "partner", "none"]),
});

const paymentSchema = z.object({
  direction: z.enum(["out", "in"]),
  kind: z.enum(["transfer", "issue"]),
  paymentId: z.string(),
  amount: wireAmount,
  channelId: z.string(),
  status: z.enum(["pending", "completed", "failed", "received"]),
  reason: z.string().nullable(),
  target: z.string().optional().describe("outgoing: the payee"),
  initiator: z.string().optional().describe("incoming: the payer, as the routing metadata claims"),
  secretHash: z.string().nullable(),
  secret: z
    .string()
    .nullable()
    .optional()
    .describe("outgoing transfer: its secret (made by this node; for an invoice, learnt from the hub when the payee was paid: the payer's receipt)"),
});

/** Every method, bound to a node. */
export function nodeMethods(node: StarlingNode) {
  const ref = (p: { channelId?: string | undefined; partner?: string | undefined }) => ({
    ...(p.channelId ? { channelId: p.channelId as Hex } : {}),
    ...(p.partner ? { partner: p.partner as Address } : {}),
  });
  return [
    defineMethod({
      name: "node.info",
      params: z.object({}),
      description: "The node's address, role, chain, contracts and p2p addresses.",
      handler: async () => node.info(),
    }),
    defineMethod({
      name: "channel.open",
      params: z.object({
        partner: addressSchema.describe("The other participant (a user's hub, or a hub's user or partner hub)"),
        deposit: amountSchema.optional().describe("Deposit right after opening (needs token balance; approves it)"),
      }),
      result: z.object({ channelId: z.string(), txHash: z.string() }),
      description: "Opens a channel on chain (this node pays the gas), optionally with a deposit.",
      handler: async (p) => node.openChannel(p.partner as Address, p.deposit ?? 0n),
    }),
    defineMethod({
      name: "channel.deposit",
      params: z.object({ ...channelRef, amount: amountSchema.describe("Amount to add to this node's deposit") }),
      result: z.object({ totalDeposit: wireAmount }),
      description: "Deposits more tokens into a channel (approves the token as needed).",
      handler: async (p) => node.deposit(ref(p), p.amount),
    }),
    defineMethod({
      name: "channel.withdraw",
      params: z.object({
        ...channelRef,
        amount: amountSchema.describe("Amount to take out to this node's address on chain"),
        timeoutMs: z.number().int().min(1_000).max(600_000).optional().describe("How long to wait for the partner and the chain (default 30000)"),
      }),
      result: z.object({ totalWithdraw: wireAmount }),
      description: "Withdraws part of this node's channel balance on chain while the channel stays open (both sign; the partner must be online).",
      handler: async (p) => node.withdraw(ref(p), p.amount, p.timeoutMs),
    }),
    defineMethod({
      name: "channel.close",
      params: z.object({
        ...channelRef,
        force: z.boolean().optional().describe("Close unilaterally with the newest signed state instead of cooperatively"),
        timeoutMs: z.number().int().min(1_000).max(600_000).optional().describe("Cooperative close: how long to wait for the partner (default 30000)"),
      }),
      result: z.object({ mode: z.enum(["cooperative", "unilateral"]) }),
      description:
        "Closes a channel. Cooperative (both sign final balances, paid at once) by default; `force` closes unilaterally: the partner is paid at once, this node after the challenge period (the node settles by itself).",
      handler: async (p) => node.close(ref(p), p.force ?? false, p.timeoutMs),
    }),
    defineMethod({
      name: "channel.settle",
      params: z.object({ channelId: hash32Schema }),
      result: z.object({ txHash: z.string() }),
      description: "Settles a unilaterally closed channel after its challenge period (the node also does this by itself).",
      handler: async (p) => node.settle(p.channelId as Hex),
    }),
    defineMethod({
      name: "channel.list",
      params: z.object({}),
      result: z.array(channelSummarySchema),
      description: "Every channel of this node with its balances.",
      handler: async () => node.listChannels(),
    }),
    defineMethod({
      name: "channel.get",
      params: z.object({ channelId: hash32Schema }),
      description: "One channel with its balances and its on-chain record.",
      handler: async (p) => node.getChannel(p.channelId as Hex),
    }),
    defineMethod({
      name: "payment.issue",
      params: z.object({
        paymentId: hash32Schema.describe("Caller-chosen id: issuing twice with one id pays once"),
        to: addressSchema.describe("A user with a channel to this hub"),
        amount: amountSchema,
      }),
      result: paymentSchema,
      description: "Hub only: issues value to a user directly (one channel update, no lock).",
      handler: async (p) => {
        const payment = await node.issue(p.paymentId as Hex, p.to as Address, p.amount);
        return payment.status === "pending" ? node.waitForPayment(payment.paymentId, 30_000) : payment;
      },
    }),
    defineMethod({
      name: "payment.pay",
      params: z.object({
        paymentId: hash32Schema.describe("Caller-chosen id: paying twice with one id pays once"),
        to: addressSchema.describe("The payee, reached through the hub(s)"),
        amount: amountSchema,
        secretHash: hash32Schema
          .optional()
          .describe("The payee's invoice (payment.invoice): the payee unlocks at once, and the completed payment carries the secret as a receipt"),
        wait: z.boolean().optional().describe("Wait until the payment completes or fails (default true)"),
        timeoutMs: z.number().int().min(100).max(3_600_000).optional().describe("How long to wait (default 30000)"),
      }),
      result: paymentSchema,
      description:
        "Pays any address reachable through the hub(s) with an HTLC payment. The same payment id pays once. " +
        "Without secretHash this node makes the secret and reveals it when the payee asks; with an invoice's secretHash the payee holds it, which saves a round trip.",
      handler: async (p) => {
        const payment = await node.pay(p.paymentId as Hex, p.to as Address, p.amount, p.secretHash as Hex | undefined);
        if (p.wait === false || payment.status !== "pending") return payment;
        return node.waitForPayment(payment.paymentId, p.timeoutMs ?? 30_000);
      },
    }),
    defineMethod({
      name: "payment.invoice",
      params: z.object({
        amount: amountSchema.refine((a) => a > 0n, "an invoice asks for a positive amount").describe("The least a payment must lock to be accepted (base units)"),
        expiresInSeconds: z.number().int().min(1).max(7 * 24 * 3600).optional().describe("How long the invoice is open (default 3600)"),
      }),
      result: z.object({ secretHash: hash32Schema, amount: wireAmount, expiresAt: wireAmount, target: addressSchema }),
      description:
        "Asks for a payment: returns the secret hash a payer passes to payment.pay (with this node as `to`). " +
        "A lock with that hash, of at least `amount`, is unlocked as soon as it arrives. Each invoice is paid once.",
      handler: async (p) => node.invoice(p.amount, p.expiresInSeconds ?? 3600),
    }),
    defineMethod({
      name: "payment.get",
      params: z.object({ paymentId: hash32Schema }),
      description: "A payment's status: the outgoing one with this id, and any incoming ones.",
      handler: async (p) => node.payment(p.paymentId as Hex),
    }),
    defineMethod({
      name: "balances",
      params: z.object({}),
      result: z.object({ onChain: wireAmount, channels: wireAmount, available: wireAmount, locked: wireAmount }),
      description: "Token balance on chain, and off chain: in channels (a hub's unused credit excluded), available to pay, locked in pending payments.",
      handler: async () => node.balances(),
    }),
    defineMethod({
      name: "history",
      params: z.object({ limit: z.number().int().min(1).max(10_000).optional().describe("Newest first; default 100") }),
      description: "Recent payments, outgoing and incoming, newest first.",
      handler: async (p) => node.history(p.limit ?? 100),
    }),
  ] as const;
}

export const nodeEvents = [
  defineEvent("payment.received", paymentSchema, "A payment to this node completed (its funds are in a signed state)."),
  defineEvent("payment.sent", paymentSchema, "An outgoing payment completed: the payee holds it and this node has the secret (its unlock settles in the channel with the next update, or within 20 ms)."),
  defineEvent("payment.failed", paymentSchema, "A payment failed; its locked funds returned."),
  defineEvent("channel.changed", channelSummarySchema, "A channel's state, funding or status changed."),
] as const;

export type NodeMethods = MethodMapOf<ReturnType<typeof nodeMethods>>;
export type NodeEventMap = EventMapOf<typeof nodeEvents>;

/** Registers every method and event, and forwards the node's events to subscribers. */
export function nodeRegistry(node: StarlingNode): RpcRegistry {
  return new RpcRegistry().add(...nodeMethods(node), ...nodeEvents);
}
