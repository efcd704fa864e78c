/**
 * Typed access to a Starling deployment (StarlingChannels, SecretRegistry and the token) for one
 * node key: every write goes through a TxSender, every read is a plain eth_call.
 */
import { Interface, type BaseWallet, type Result, type TransactionReceipt } from "ethers";
import { artifact } from "./artifacts.js";
import type { Deployment } from "./deploy.js";
import { ChainError, toChainError } from "./errors.js";
import { TxSender, type SendOptions, type TxResult, type TxSenderOptions } from "./tx-sender.js";
import type { Funding, StateSignature } from "../protocol/channel.js";
import type { Address, ChannelState, CooperativeCloseTerms, Domain, Hex, Lock, WithdrawRequest } from "../protocol/types.js";

export type ChannelPhase = "none" | "open" | "closed" | "settled";

const PHASES: readonly ChannelPhase[] = ["none", "open", "closed", "settled"];

/** A pair's channel record as the contract stores it. */
export interface ChannelInfo extends Funding {
  id: Hex;
  /** The lower address (side 1). */
  participant1: Address;
  participant2: Address;
  /** Channels this pair has opened; part of the id. */
  counter: number;
  phase: ChannelPhase;
  /** Payouts to the credit side absorbed by its credit so far (issuer mode). */
  creditAbsorbed: bigint;
  // Close data: zero unless the phase is "closed" (settle clears all but the locks).
  /** End of the challenge period, unix seconds. */
  settleAt: bigint;
  /** Nonce of the state on record. */
  nonce: bigint;
  closerSide: 0 | 1 | 2;
  /** The closer's share, paid at settle. */
  closerAmount: bigint;
  locked1: bigint;
  locked2: bigint;
  locksRoot: Hex;
}

export interface OpenResult extends TxResult {
  channelId: Hex;
}

export interface DepositResult {
  /** Present when the allowance had to be raised. */
  approval?: TxResult;
  deposit: TxResult;
}

/** Orders two addresses as the contract does: side 1 is the numerically lower. */
export function orderParticipants(a: Address, b: Address): [Address, Address] {
  return BigInt(a) < BigInt(b) ? [a, b] : [b, a];
}

let interfaces: { channels: Interface; registry: Interface; token: Interface } | undefined;

function contractInterfaces(): { channels: Interface; registry: Interface; token: Interface } {
  interfaces ??= {
    channels: new Interface(artifact("StarlingChannels").abi),
    registry: new Interface(artifact("SecretRegistry").abi),
    token: new Interface(artifact("StarlingToken").abi),
  };
  return interfaces;
}

export class ChannelsClient {
  readonly deployment: Deployment;
  readonly sender: TxSender;
  readonly channels: Interface;
  readonly registry: Interface;
  readonly token: Interface;

  constructor(deployment: Deployment, sender: TxSender) {
    this.deployment = deployment;
    this.sender = sender;
    ({ channels: this.channels, registry: this.registry, token: this.token } = contractInterfaces());
  }

  /** A client sending from `wallet` through a new TxSender. */
  static connect(deployment: Deployment, wallet: BaseWallet, options: TxSenderOptions = {}): ChannelsClient {
    return new ChannelsClient(deployment, new TxSender(wallet, options));
  }

  /** The sending account. */
  get address(): Address {
    return this.sender.address;
  }

  /** The EIP-712 domain signatures for this deployment are made under. */
  get domain(): Domain {
    return { chainId: BigInt(this.deployment.chainId), verifyingContract: this.deployment.channels as Address };
  }

  // ------------------------------------------------------------- writes

  /** Opens the channel between this account and `partner`. */
  async open(partner: Address, options?: SendOptions): Promise<OpenResult> {
    const result = await this.sendChannels("open", [this.address, partner], options);
    const channelId = this.channelIdFromReceipt(result.receipt);
    return { ...result, channelId };
  }

  /** Raises this account's total deposit; the allowance must already cover the difference. */
  deposit(channelId: Hex, partner: Address, totalDeposit: bigint, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("deposit", [channelId, this.address, partner, totalDeposit], options);
  }

  /**
   * Raises this account's total deposit to `totalDeposit`, first approving the difference if the
   * current allowance does not cover it (exactly the difference: no standing allowance is left).
   */
  async approveAndDeposit(channelId: Hex, partner: Address, totalDeposit: bigint, options?: SendOptions): Promise<DepositResult> {
    const channel = await this.getChannel(this.address, partner);
    if (channel.id.toLowerCase() !== channelId.toLowerCase()) {
      throw new ChainError("INVALID_ARGUMENT", `channel ${channelId} is not the current channel with ${partner} (${channel.id})`);
    }
    const current = sameAddress(channel.participant1, this.address) ? channel.deposit1 : channel.deposit2;
    const missing = totalDeposit - current;
    let approval: TxResult | undefined;
    if (missing > 0n && (await this.tokenAllowance(this.address)) < missing) {
      // Mined before the deposit is estimated, since a node may estimate against the latest block.
      approval = await this.sendToken("approve", [this.deployment.channels, missing], { ...options, confirmations: 1, label: "approve" });
    }
    const deposit = await this.deposit(channelId, partner, totalDeposit, options);
    return approval ? { approval, deposit } : { deposit };
  }

  /** Issuer mode: raises this account's (a hub's) credit line in its channel with `partner`. */
  grantCredit(channelId: Hex, partner: Address, totalCredit: bigint, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("grantCredit", [channelId, partner, totalCredit], options);
  }

  /** Issuer mode, issuer only: sets a hub's largest credit line per channel. */
  setCreditLimit(hub: Address, limit: bigint, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("setCreditLimit", [hub, limit], options);
  }

  /**
   * Pays `request.participant` up to its new total withdrawn amount. A signature of the account
   * sending may be "0x".
   */
  withdraw(request: WithdrawRequest, partner: Address, participantSig: Hex, partnerSig: Hex, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels(
      "withdraw",
      [request.channelId, request.participant, partner, request.totalWithdraw, request.expiry, participantSig, partnerSig],
      options,
    );
  }

  /**
   * Ends the channel with both balances at once. Participants in contract order (see
   * orderParticipants); a signature of the account sending may be "0x".
   */
  cooperativeClose(
    terms: CooperativeCloseTerms,
    participant1: Address,
    participant2: Address,
    signature1: Hex,
    signature2: Hex,
    options?: SendOptions,
  ): Promise<TxResult> {
    return this.sendChannels(
      "cooperativeClose",
      [terms.channelId, participant1, participant2, terms.balance1, terms.balance2, signature1, signature2],
      options,
    );
  }

  /** Closes unilaterally with `state`, signed by the partner (a nonce-0 empty state needs none). */
  close(channelId: Hex, partner: Address, state: ChannelState, partnerSig: StateSignature, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("close", [channelId, partner, stateArg(state), sigArg(partnerSig)], options);
  }

  /** Records a newer state during the challenge period. Participants in contract order. */
  updateState(
    channelId: Hex,
    participant1: Address,
    participant2: Address,
    state: ChannelState,
    signature1: StateSignature,
    signature2: StateSignature,
    options?: SendOptions,
  ): Promise<TxResult> {
    return this.sendChannels(
      "updateState",
      [channelId, participant1, participant2, stateArg(state), sigArg(signature1), sigArg(signature2)],
      options,
    );
  }

  /** Shows the closer's revocation of the closed state. Participants in contract order. */
  penalize(
    channelId: Hex,
    participant1: Address,
    participant2: Address,
    revokedBelow: bigint,
    stateHash: Hex,
    signature: Hex,
    options?: SendOptions,
  ): Promise<TxResult> {
    return this.sendChannels("penalize", [channelId, participant1, participant2, revokedBelow, stateHash, signature], options);
  }

  /** Pays the closer after the challenge period. Participants in contract order. */
  settle(channelId: Hex, participant1: Address, participant2: Address, options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("settle", [channelId, participant1, participant2], options);
  }

  /** Resolves a settled channel's pending locks (all of them, in hashing order). */
  unlock(channelId: Hex, participant1: Address, participant2: Address, locks: readonly Lock[], options?: SendOptions): Promise<TxResult> {
    return this.sendChannels("unlock", [channelId, participant1, participant2, locks.map(lockArg)], options);
  }

  registerSecret(secret: Hex, options?: SendOptions): Promise<TxResult> {
    return this.sendRegistry("registerSecret", [secret], options);
  }

  registerSecrets(secrets: readonly Hex[], options?: SendOptions): Promise<TxResult> {
    return this.sendRegistry("registerSecrets", [[...secrets]], options);
  }

  // -------------------------------------------------------------- reads

  /** The current (or most recent) channel id of a pair, in either order. */
  async channelId(a: Address, b: Address): Promise<Hex> {
    const [id] = await this.read(this.channels, this.deployment.channels, "channelId", [a, b]);
    return hexValue(id, "channelId");
  }

  /** The stored record of a pair's channel, in either order. */
  async getChannel(a: Address, b: Address): Promise<ChannelInfo> {
    const [id, record] = await this.read(this.channels, this.deployment.channels, "getChannel", [a, b]);
    const [participant1, participant2] = orderParticipants(a, b);
    const c = record as Result;
    const field = (name: string): unknown => c.getValue(name);
    const phase = PHASES[Number(bigintValue(field("phase"), "phase"))];
    if (!phase) throw new ChainError("INVALID_ARGUMENT", `unknown channel phase ${String(field("phase"))}`);
    return {
      id: hexValue(id, "id"),
      participant1,
      participant2,
      counter: Number(bigintValue(field("counter"), "counter")),
      phase,
      deposit1: bigintValue(field("deposit1"), "deposit1"),
      deposit2: bigintValue(field("deposit2"), "deposit2"),
      withdrawn1: bigintValue(field("withdrawn1"), "withdrawn1"),
      withdrawn2: bigintValue(field("withdrawn2"), "withdrawn2"),
      credit: bigintValue(field("credit"), "credit"),
      creditSide: sideValue(field("creditSide"), "creditSide"),
      creditAbsorbed: bigintValue(field("creditAbsorbed"), "creditAbsorbed"),
      settleAt: bigintValue(field("settleAt"), "settleAt"),
      nonce: bigintValue(field("nonce"), "nonce"),
      closerSide: sideValue(field("closerSide"), "closerSide"),
      closerAmount: bigintValue(field("closerAmount"), "closerAmount"),
      locked1: bigintValue(field("locked1"), "locked1"),
      locked2: bigintValue(field("locked2"), "locked2"),
      locksRoot: hexValue(field("locksRoot"), "locksRoot"),
    };
  }

  async tokenBalance(address: Address): Promise<bigint> {
    const [balance] = await this.read(this.token, this.deployment.token, "balanceOf", [address]);
    return bigintValue(balance, "balance");
  }

  /** What `owner` allows the channel contract to pull. */
  async tokenAllowance(owner: Address): Promise<bigint> {
    const [allowance] = await this.read(this.token, this.deployment.token, "allowance", [owner, this.deployment.channels]);
    return bigintValue(allowance, "allowance");
  }

  /** Unix time the secret of `secretHash` was registered, 0n if never. */
  async secretRevealedAt(secretHash: Hex): Promise<bigint> {
    const [at] = await this.read(this.registry, this.deployment.secretRegistry, "revealedAt", [secretHash]);
    return bigintValue(at, "revealedAt");
  }

  /** Issuer mode: a hub's largest credit line per channel. */
  async creditLimit(hub: Address): Promise<bigint> {
    const [limit] = await this.read(this.channels, this.deployment.channels, "creditLimit", [hub]);
    return bigintValue(limit, "creditLimit");
  }

  /** Timestamp of the latest block: the clock withdraw expiries and lock expiries are judged by. */
  async chainTime(): Promise<bigint> {
    const block = await this.sender.provider.getBlock("latest");
    if (!block) throw new ChainError("NETWORK", "the node returned no latest block");
    return BigInt(block.timestamp);
  }

  // ---------------------------------------------------------- internals

  private sendChannels(method: string, args: readonly unknown[], options?: SendOptions): Promise<TxResult> {
    return this.sendTo(this.channels, this.deployment.channels, method, args, options);
  }

  private sendRegistry(method: string, args: readonly unknown[], options?: SendOptions): Promise<TxResult> {
    return this.sendTo(this.registry, this.deployment.secretRegistry, method, args, options);
  }

  private sendToken(method: string, args: readonly unknown[], options?: SendOptions): Promise<TxResult> {
    return this.sendTo(this.token, this.deployment.token, method, args, options);
  }

  private sendTo(iface: Interface, to: string, method: string, args: readonly unknown[], options: SendOptions = {}): Promise<TxResult> {
    const data = this.encode(iface, method, args);
    return this.sender.send({ to: to as Address, data, label: options.label ?? method }, options);
  }

  private encode(iface: Interface, method: string, args: readonly unknown[]): Hex {
    try {
      return iface.encodeFunctionData(method, [...args]) as Hex;
    } catch (err) {
      throw new ChainError("INVALID_ARGUMENT", `${method}: cannot encode arguments: ${(err as Error).message.slice(0, 200)}`, { cause: err });
    }
  }

  private async read(iface: Interface, to: string, method: string, args: readonly unknown[]): Promise<Result> {
    const data = this.encode(iface, method, args);
    let raw: string;
    try {
      raw = await this.sender.provider.call({ to, data });
    } catch (err) {
      throw toChainError(err, this.sender.errors, method);
    }
    try {
      return iface.decodeFunctionResult(method, raw);
    } catch (err) {
      throw new ChainError("INVALID_ARGUMENT", `${method}: cannot decode the result ${raw.slice(0, 80)}`, { cause: err });
    }
  }

  private channelIdFromReceipt(receipt: TransactionReceipt): Hex {
    for (const log of receipt.logs) {
      if (log.address.toLowerCase() !== this.deployment.channels.toLowerCase()) continue;
      const parsed = this.channels.parseLog(log);
      if (parsed?.name === "ChannelOpened") return hexValue(parsed.args.getValue("channelId"), "channelId");
    }
    throw new ChainError("INVALID_ARGUMENT", `open ${receipt.hash}: no ChannelOpened event in the receipt`);
  }
}

function stateArg(s: ChannelState): Record<string, unknown> {
  return {
    channelId: s.channelId,
    nonce: s.nonce,
    sent1: s.sent1,
    sent2: s.sent2,
    locked1: s.locked1,
    locked2: s.locked2,
    locksRoot: s.locksRoot,
  };
}

function sigArg(s: StateSignature): Record<string, unknown> {
  return { revokedBelow: s.revokedBelow, signature: s.signature };
}

function lockArg(l: Lock): Record<string, unknown> {
  return { sender: l.sender, amount: l.amount, expiry: l.expiry, secretHash: l.secretHash };
}

function sameAddress(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

function bigintValue(value: unknown, name: string): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" && Number.isInteger(value)) return BigInt(value);
  throw new ChainError("INVALID_ARGUMENT", `${name}: expected an integer, got ${String(value)}`);
}

function hexValue(value: unknown, name: string): Hex {
  if (typeof value === "string" && /^0x[0-9a-fA-F]*$/.test(value)) return value.toLowerCase() as Hex;
  throw new ChainError("INVALID_ARGUMENT", `${name}: expected hex, got ${String(value)}`);
}

function sideValue(value: unknown, name: string): 0 | 1 | 2 {
  const n = Number(bigintValue(value, name));
  if (n === 0 || n === 1 || n === 2) return n;
  throw new ChainError("INVALID_ARGUMENT", `${name}: expected 0, 1 or 2, got ${n}`);
}
