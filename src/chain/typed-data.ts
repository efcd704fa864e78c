/**
 * The EIP-712 types of Starling's signed payloads in the shape ethers' `signTypedData` and
 * `TypedDataEncoder` take, so any wallet or library can sign and verify them. The protocol core
 * hashes the same types itself (src/protocol/eip712.ts); tests check the two agree.
 */
import type { TypedDataDomain, TypedDataField } from "ethers";

export const DOMAIN_NAME = "Starling";
export const DOMAIN_VERSION = "1";

export function typedDataDomain(chainId: bigint | number, verifyingContract: string): TypedDataDomain {
  return { name: DOMAIN_NAME, version: DOMAIN_VERSION, chainId, verifyingContract };
}

const STATE: TypedDataField[] = [
  { name: "channelId", type: "bytes32" },
  { name: "nonce", type: "uint64" },
  { name: "sent1", type: "uint256" },
  { name: "sent2", type: "uint256" },
  { name: "locked1", type: "uint256" },
  { name: "locked2", type: "uint256" },
  { name: "locksRoot", type: "bytes32" },
];

export const TYPES = {
  Update: {
    Update: [
      { name: "channelId", type: "bytes32" },
      { name: "revokedBelow", type: "uint64" },
      { name: "state", type: "State" },
    ],
    State: STATE,
  },
  State: { State: STATE },
  Withdraw: {
    Withdraw: [
      { name: "channelId", type: "bytes32" },
      { name: "participant", type: "address" },
      { name: "totalWithdraw", type: "uint256" },
      { name: "expiry", type: "uint256" },
    ],
  },
  CooperativeClose: {
    CooperativeClose: [
      { name: "channelId", type: "bytes32" },
      { name: "balance1", type: "uint256" },
      { name: "balance2", type: "uint256" },
    ],
  },
} satisfies Record<string, Record<string, TypedDataField[]>>;
