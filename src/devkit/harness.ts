/**
 * Development harness over a devnet, shared by the tests and the gas report: typed contract handles, EIP-712 signing with ethers wallets, time
 * travel and snapshots, and token-balance bookkeeping for conservation checks.
 */
import { Contract, TypedDataEncoder, type HDNodeWallet, type TransactionReceipt } from "ethers";
import { artifact } from "../chain/artifacts.js";
import { startDevnet, type Devnet } from "../chain/devnet.js";
import { mined, type Mode } from "../chain/deploy.js";
import { TYPES, typedDataDomain } from "../chain/typed-data.js";

export const ZERO32 = "0x" + "00".repeat(32);

export interface StateValue {
  channelId: string;
  nonce: bigint;
  sent1: bigint;
  sent2: bigint;
  locked1: bigint;
  locked2: bigint;
  locksRoot: string;
}

export interface LockValue {
  sender: 1 | 2;
  amount: bigint;
  expiry: bigint;
  secretHash: string;
}

export class Harness {
  readonly channels: Contract;
  readonly token: Contract;
  readonly registry: Contract;
  readonly gas = new Map<string, bigint[]>();

  private constructor(readonly devnet: Devnet) {
    const { deployment, wallets } = devnet;
    const owner = wallets[0]!;
    this.channels = new Contract(deployment.channels, artifact("StarlingChannels").abi, owner);
    this.token = new Contract(deployment.token, artifact("StarlingToken").abi, owner);
    this.registry = new Contract(deployment.secretRegistry, artifact("SecretRegistry").abi, owner);
  }

  static async start(mode: Mode = "collateral", challengePeriod = 600): Promise<Harness> {
    return new Harness(await startDevnet({ mode, challengePeriod }));
  }

  stop(): Promise<void> {
    return this.devnet.stop();
  }

  wallet(i: number): HDNodeWallet {
    const w = this.devnet.wallets[i];
    if (!w) throw new Error(`no dev wallet ${i}`);
    return w;
  }

  get domain() {
    return typedDataDomain(this.devnet.deployment.chainId, this.devnet.deployment.channels);
  }

  /** Sends a contract call from `from`, records its gas under `label`, returns the receipt. */
  async send(from: HDNodeWallet, label: string, method: string, ...args: unknown[]): Promise<TransactionReceipt> {
    const c = this.channels.connect(from) as Contract;
    const tx = await c.getFunction(method)(...args);
    const receipt = await mined(tx);
    const list = this.gas.get(label) ?? [];
    list.push(receipt.gasUsed);
    this.gas.set(label, list);
    return receipt;
  }

  async snapshot(): Promise<string> {
    return (await this.devnet.provider.send("evm_snapshot", [])) as string;
  }

  async revert(id: string): Promise<void> {
    await this.devnet.provider.send("evm_revert", [id]);
  }

  async increaseTime(seconds: number): Promise<void> {
    await this.devnet.provider.send("evm_increaseTime", [seconds]);
    await this.devnet.provider.send("evm_mine", []);
  }

  async now(): Promise<bigint> {
    const block = await this.devnet.provider.getBlock("latest");
    return BigInt(block!.timestamp);
  }

  ordered(a: HDNodeWallet, b: HDNodeWallet): [HDNodeWallet, HDNodeWallet] {
    return BigInt(a.address) < BigInt(b.address) ? [a, b] : [b, a];
  }

  async open(a: HDNodeWallet, b: HDNodeWallet): Promise<string> {
    await this.send(a, "open", "open", a.address, b.address);
    return (await this.channels.getFunction("channelId")(a.address, b.address)) as string;
  }

  async fundAndApprove(w: HDNodeWallet, amount: bigint): Promise<void> {
    await mined(await (this.token.connect(this.wallet(0)) as Contract).getFunction("mint")(w.address, amount));
    await mined(await (this.token.connect(w) as Contract).getFunction("approve")(this.devnet.deployment.channels, amount));
  }

  async deposit(id: string, w: HDNodeWallet, partner: HDNodeWallet, total: bigint): Promise<TransactionReceipt> {
    return this.send(w, "deposit", "deposit", id, w.address, partner.address, total);
  }

  signUpdate(w: HDNodeWallet, state: StateValue, revokedBelow: bigint): Promise<string> {
    return w.signTypedData(this.domain, TYPES.Update, { channelId: state.channelId, revokedBelow, state });
  }

  async stateSig(w: HDNodeWallet, state: StateValue, revokedBelow = 0n) {
    return { revokedBelow, signature: await this.signUpdate(w, state, revokedBelow) };
  }

  signWithdraw(w: HDNodeWallet, v: { channelId: string; participant: string; totalWithdraw: bigint; expiry: bigint }) {
    return w.signTypedData(this.domain, TYPES.Withdraw, v);
  }

  signCoopClose(w: HDNodeWallet, v: { channelId: string; balance1: bigint; balance2: bigint }) {
    return w.signTypedData(this.domain, TYPES.CooperativeClose, v);
  }

  stateHash(state: StateValue): string {
    return TypedDataEncoder.hashStruct("State", TYPES.State, state);
  }

  async balanceOf(address: string): Promise<bigint> {
    return (await this.token.getFunction("balanceOf")(address)) as bigint;
  }

  async totalSupply(): Promise<bigint> {
    return (await this.token.getFunction("totalSupply")()) as bigint;
  }

  async channel(a: HDNodeWallet, b: HDNodeWallet) {
    const [id, c] = (await this.channels.getFunction("getChannel")(a.address, b.address)) as [string, { toObject(): Record<string, bigint> }];
    return { id, ...c.toObject() } as unknown as { id: string; phase: bigint; counter: bigint; deposit1: bigint; deposit2: bigint; nonce: bigint; closerAmount: bigint; locked1: bigint; locked2: bigint; settleAt: bigint; credit: bigint; creditAbsorbed: bigint };
  }

  /** Token balances of the given holders plus the channel contract. */
  async holdings(holders: HDNodeWallet[]): Promise<bigint[]> {
    return Promise.all([...holders.map((h) => this.balanceOf(h.address)), this.balanceOf(this.devnet.deployment.channels)]);
  }
}

export function emptyState(channelId: string, nonce = 0n): StateValue {
  return { channelId, nonce, sent1: 0n, sent2: 0n, locked1: 0n, locked2: 0n, locksRoot: ZERO32 };
}

export const sum = (xs: bigint[]): bigint => xs.reduce((a, b) => a + b, 0n);
