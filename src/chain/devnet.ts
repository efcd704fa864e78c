/**
 * A development network in one call: the embedded anvil chain, Starling's contracts deployed on
 * it, and anvil's funded dev accounts as ethers wallets. Used by `starling devnet`, the demo, the
 * gas report and the tests.
 */
import { HDNodeWallet, Mnemonic, type JsonRpcProvider } from "ethers";
import { DEV_MNEMONIC, startAnvil, type Anvil, type AnvilOptions } from "./anvil.js";
import { connectProvider, deployStarling, type Deployment, type Mode } from "./deploy.js";

export interface Devnet {
  anvil: Anvil;
  provider: JsonRpcProvider;
  deployment: Deployment;
  /** anvil's dev accounts; wallets[0] deployed the contracts (and is the issuer in issuer mode). */
  wallets: HDNodeWallet[];
  stop(): Promise<void>;
}

export interface DevnetOptions extends AnvilOptions {
  mode?: Mode;
  challengePeriod?: number;
}

/** The i-th dev account of anvil's default mnemonic. */
export function devWallet(index: number, provider?: JsonRpcProvider): HDNodeWallet {
  const wallet = HDNodeWallet.fromMnemonic(Mnemonic.fromPhrase(DEV_MNEMONIC), `m/44'/60'/0'/0/${index}`);
  return provider ? wallet.connect(provider) : wallet;
}

/**
 * STARLING_DEVNET_BLOCK_TIME=<seconds> makes every devnet that does not choose its own block time
 * mine on an interval instead of per transaction, so the whole test suite can run against a slow
 * chain (`npm run test:slow-chain`).
 */
function envBlockTime(): number | undefined {
  const v = process.env.STARLING_DEVNET_BLOCK_TIME;
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`STARLING_DEVNET_BLOCK_TIME must be a positive integer, got ${v}`);
  return n;
}

export async function startDevnet(options: DevnetOptions = {}): Promise<Devnet> {
  const blockTime = options.blockTime ?? envBlockTime();
  if (blockTime !== undefined) options = { ...options, blockTime };
  const anvil = await startAnvil(options);
  try {
    const provider = connectProvider(anvil.url, options.blockTime ? 250 : 50);
    const wallets = Array.from({ length: options.accounts ?? 10 }, (_, i) => devWallet(i, provider));
    const deployer = wallets[0];
    if (!deployer) throw new Error("devnet needs at least one account");
    const deployment = await deployStarling({
      deployer,
      mode: options.mode ?? "collateral",
      challengePeriod: options.challengePeriod ?? 600,
    });
    return {
      anvil,
      provider,
      deployment,
      wallets,
      stop: async () => {
        provider.destroy();
        await anvil.stop();
      },
    };
  } catch (err) {
    await anvil.stop();
    throw err;
  }
}
