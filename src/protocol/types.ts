/** Core value types shared by the protocol: hashes and addresses are 0x-prefixed hex, amounts bigint. */

export type Hex = `0x${string}`;
export type Address = Hex;

/** The variable part of the EIP-712 domain; name "Starling" and version "1" are fixed. */
export interface Domain {
  chainId: bigint;
  verifyingContract: Address;
}

/** Mirrors the on-chain `State` struct. */
export interface ChannelState {
  channelId: Hex;
  nonce: bigint;
  sent1: bigint;
  sent2: bigint;
  locked1: bigint;
  locked2: bigint;
  locksRoot: Hex;
}

/** A pending HTLC lock; `sender` is the side (1 or 2) whose funds are locked. */
export interface Lock {
  sender: 1 | 2;
  amount: bigint;
  expiry: bigint;
  secretHash: Hex;
}

export interface WithdrawRequest {
  channelId: Hex;
  participant: Address;
  totalWithdraw: bigint;
  expiry: bigint;
}

export interface CooperativeCloseTerms {
  channelId: Hex;
  balance1: bigint;
  balance2: bigint;
}
