import { z } from "zod";

const DIGITS = /^[0-9]{1,78}$/;
const UINT256_MAX = (1n << 256n) - 1n;

/**
 * Token amount in base units. On the wire a decimal string (never a JSON number, which
 * would silently lose precision above 2^53); parsed to bigint. 78 digits is the width of
 * uint256, and values above uint256 max are rejected since no ERC20 amount can exceed it.
 */
export const amountSchema = z
  .string()
  .regex(DIGITS, "expected a non-negative integer as a decimal string of at most 78 digits")
  // The regex check does not abort, so guard before BigInt() to avoid a SyntaxError.
  .refine((s) => !DIGITS.test(s) || BigInt(s) <= UINT256_MAX, "amount exceeds uint256 max")
  .transform((s) => BigInt(s))
  .meta({ title: "Amount", description: 'Base units as a decimal string, e.g. "1000000"; at most 2^256-1' });

export const addressSchema = z
  .string()
  .regex(/^0x[0-9a-fA-F]{40}$/, "expected a 0x-prefixed 20-byte hex address")
  .meta({ title: "Address", description: "0x + 40 hex digits" });

export const hash32Schema = z
  .string()
  .regex(/^0x[0-9a-fA-F]{64}$/, "expected a 0x-prefixed 32-byte hex value")
  .meta({ title: "Hash32", description: "0x + 64 hex digits (channel ids, payment hashes, tx hashes)" });

// Built-in methods handled by the server itself.

export const authParamsSchema = z.object({ token: z.string() });
export const authResultSchema = z.literal(true);

export const subscribeParamsSchema = z.object({
  event: z.string().describe("A registered event name"),
  filter: z
    .record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()]))
    .optional()
    .describe("Deliver only payloads whose fields equal these values"),
});
export const subscribeResultSchema = z.string().describe("Subscription id");

export const unsubscribeParamsSchema = z.object({ subscription: z.string() });
export const unsubscribeResultSchema = z.boolean().describe("false if the id was not an active subscription");
