/**
 * The embedded default chain: anvil from the npm package @foundry-rs/anvil (its binary ships in a
 * platform package, nothing is downloaded), started on 127.0.0.1 with a free port.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);

/** Anvil's default dev mnemonic: 10 accounts with 10,000 ETH each. Dev chains only. */
export const DEV_MNEMONIC = "test test test test test test test test test test test junk";

export interface AnvilOptions {
  /** Port to bind; 0 (default) picks a free one. */
  port?: number;
  /** Seconds between blocks; undefined mines one block per transaction. */
  blockTime?: number;
  /** Chain id; default 31337. */
  chainId?: number;
  /** Number of funded dev accounts; default 10. */
  accounts?: number;
  /** Directory to persist the chain state in (anvil --state); in memory if absent. */
  stateFile?: string;
  /** Milliseconds to wait for anvil to listen. */
  startTimeoutMs?: number;
}

export interface Anvil {
  readonly url: string;
  readonly port: number;
  readonly chainId: number;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

/** Path of the anvil binary inside the installed platform package. */
export function anvilBinary(): string {
  const platform = `${process.platform === "win32" ? "win32" : process.platform}-${process.arch === "x64" ? "amd64" : process.arch}`;
  const pkg = `@foundry-rs/anvil-${platform}`;
  let dir: string;
  try {
    dir = dirname(require.resolve(`${pkg}/package.json`));
  } catch {
    throw new Error(`anvil binary package ${pkg} is not installed (platform ${process.platform}/${process.arch})`);
  }
  const bin = join(dir, "bin", process.platform === "win32" ? "anvil.exe" : "anvil");
  if (!existsSync(bin)) throw new Error(`anvil binary missing at ${bin}`);
  return bin;
}

/** Block states anvil keeps (in memory) for calls at past blocks. */
const RECENT_STATES = 256;

/** Starts anvil on 127.0.0.1 and resolves once it listens. */
export async function startAnvil(options: AnvilOptions = {}): Promise<Anvil> {
  const chainId = options.chainId ?? 31337;
  const args = [
    "--host", "127.0.0.1",
    "--port", String(options.port ?? 0),
    "--chain-id", String(chainId),
    "--accounts", String(options.accounts ?? 10),
    "--mnemonic", DEV_MNEMONIC,
  ];
  // The states of the newest blocks are kept in memory and none on disk: without this anvil
  // writes older states to ~/.foundry/anvil/tmp and never removes them (about 500 MB per
  // benchmark run). Calls at a recent block (a reverted transaction replayed at the block before
  // its own, in src/chain/tx-sender.ts) stay possible.
  args.push("--prune-history", String(RECENT_STATES));
  if (options.blockTime !== undefined) args.push("--block-time", String(options.blockTime));
  if (options.stateFile) args.push("--state", options.stateFile);
  // Not --silent: the "Listening on" line is how the chosen port is learnt.
  const child = spawn(anvilBinary(), args, { stdio: ["ignore", "pipe", "pipe"] });
  // The chain must not outlive the process that started it (killed, or exiting without stop()).
  const killChain = (): void => void child.kill("SIGTERM");
  process.once("exit", killChain);
  child.once("exit", () => process.off("exit", killChain));
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`anvil did not start within ${options.startTimeoutMs ?? 15_000} ms: ${out.slice(-500)}`));
    }, options.startTimeoutMs ?? 15_000);
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      const m = /Listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", (c: Buffer) => (out += c.toString()));
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`anvil exited with code ${code}: ${out.slice(-500)}`));
    });
  });
  // Keep draining both pipes so anvil never blocks on a full one.
  child.stdout?.removeAllListeners("data");
  child.stderr?.removeAllListeners("data");
  child.stdout?.resume();
  child.stderr?.resume();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    chainId,
    process: child,
    stop: () => stopProcess(child),
  };
}

function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}
