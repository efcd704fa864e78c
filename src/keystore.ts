/**
 * The node's key in an Ethereum keystore file (Web3 Secret Storage v3, scrypt + AES-128-CTR), the
 * format every Ethereum wallet reads. The key never appears in plain config.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { Wallet, encryptKeystoreJson, getBytes, type HDNodeWallet } from "ethers";

export interface KeystoreOptions {
  /** scrypt cost (N). ethers' default 131072 takes ~1 s; tests may lower it. */
  scryptN?: number;
}

/** Creates a new random key, or imports `privateKey`, and writes it encrypted to `file`. */
export async function createKeystore(
  file: string,
  password: string,
  options: KeystoreOptions & { privateKey?: string } = {},
): Promise<string> {
  if (existsSync(file)) throw new Error(`keystore ${file} already exists; refusing to overwrite a key`);
  if (password.length < 8) throw new Error("the keystore password must have at least 8 characters");
  const wallet: Wallet | HDNodeWallet = options.privateKey ? new Wallet(options.privateKey) : Wallet.createRandom();
  const json = await encryptKeystoreJson(
    { address: wallet.address, privateKey: wallet.privateKey },
    password,
    options.scryptN ? { scrypt: { N: options.scryptN } } : {},
  );
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, json, { mode: 0o600 });
  return wallet.address;
}

/** Decrypts the keystore; returns the private key bytes and the address. */
export async function unlockKeystore(file: string, password: string): Promise<{ address: string; privateKey: Uint8Array }> {
  if (!existsSync(file)) throw new Error(`keystore ${file} not found: run \`starling init\` first`);
  let wallet: Wallet | HDNodeWallet;
  try {
    wallet = await Wallet.fromEncryptedJson(readFileSync(file, "utf8"), password);
  } catch (err) {
    throw new Error(`cannot unlock keystore ${file}: ${err instanceof Error && /password/i.test(err.message) ? "wrong password" : String(err)}`);
  }
  return { address: wallet.address, privateKey: getBytes(wallet.privateKey) };
}

/** The address a keystore holds, read without the password. */
export function keystoreAddress(file: string): string {
  const parsed = JSON.parse(readFileSync(file, "utf8")) as { address?: string };
  if (!parsed.address) throw new Error(`${file} is not an Ethereum keystore`);
  return parsed.address.startsWith("0x") ? parsed.address : `0x${parsed.address}`;
}
