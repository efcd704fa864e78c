/**
 * `starling devnet`: starts the embedded chain (anvil on 127.0.0.1), deploys Starling's contracts
 * and writes the deployment file nodes read, then keeps the chain running until interrupted.
 */
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { startDevnet } from "../chain/devnet.js";
import { writeDeployment, type Mode } from "../chain/deploy.js";

export interface DevnetCommandOptions {
  dataDir: string;
  port: string;
  mode: string;
  challengePeriod: string;
  blockTime?: string;
}

function parseIntOption(name: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${value}`);
  return n;
}

export function registerDevnet(program: Command): void {
  program
    .command("devnet")
    .description("start the embedded chain (anvil on 127.0.0.1), deploy the contracts, write <data-dir>/deployment.json")
    .option("-d, --data-dir <dir>", "directory the deployment file is written to", ".data/devnet")
    .option("-p, --port <port>", "port for the chain's JSON-RPC (0 picks a free one)", "8545")
    .option("-m, --mode <mode>", "collateral (any ERC20 deposits) or issuer (hubs get credit lines, value is minted on exit)", "collateral")
    .option("--challenge-period <seconds>", "seconds between a unilateral close and settlement", "600")
    .option("--block-time <seconds>", "mine a block every N seconds instead of one per transaction")
    .addHelpText(
      "after",
      `
The chain uses anvil's well-known dev accounts (mnemonic "test test ... junk"): never use them
on a real network. Account 0 deploys the contracts and, in issuer mode, is the token issuer.

Example:
  starling devnet --data-dir .data/devnet --mode issuer
  # in another terminal, nodes read .data/devnet/deployment.json and connect to the printed URL`,
    )
    .action(async (opts: DevnetCommandOptions) => {
      const mode = opts.mode;
      if (mode !== "collateral" && mode !== "issuer") throw new Error(`--mode must be collateral or issuer, got ${mode}`);
      const devnet = await startDevnet({
        port: parseIntOption("port", opts.port, 0),
        mode: mode as Mode,
        challengePeriod: parseIntOption("challenge-period", opts.challengePeriod, 1),
        ...(opts.blockTime !== undefined ? { blockTime: parseIntOption("block-time", opts.blockTime, 1) } : {}),
      });
      const file = join(resolve(opts.dataDir), "deployment.json");
      writeDeployment(file, { ...devnet.deployment, rpcUrl: devnet.anvil.url });
      console.log(`chain      ${devnet.anvil.url} (chain id ${devnet.deployment.chainId})`);
      console.log(`token      ${devnet.deployment.token}`);
      console.log(`channels   ${devnet.deployment.channels} (${mode} mode, challenge period ${devnet.deployment.challengePeriod} s)`);
      console.log(`registry   ${devnet.deployment.secretRegistry}`);
      console.log(`deployment ${file}`);
      console.log("press Ctrl-C to stop the chain");
      await new Promise<void>((done) => {
        const stop = () => void devnet.stop().then(done);
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
    });
}
