/**
 * The hub under test: a real `starling start` daemon in its own process, created the way
 * `starling init` creates one (config, keystore, RPC token, deployment file).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync, type Dirent } from "node:fs";
import { join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { packageRoot } from "../../src/chain/artifacts.js";
import { writeConfig } from "../../src/config.js";
import { writeDeployment, type Deployment } from "../../src/chain/deploy.js";
import { freePort, launchArgs } from "../../src/devkit/cluster.js";
import { createKeystore } from "../../src/keystore.js";
import type { NodeEventMap, NodeMethods } from "../../src/node/api.js";
import { RpcClient } from "../../src/rpc/index.js";

const ROOT = packageRoot();
/** BENCH_HUB_ROOT runs the hub from another checkout (built), e.g. to compare an older version. */
const BIN = join(process.env.BENCH_HUB_ROOT ? resolve(process.env.BENCH_HUB_ROOT) : ROOT, "bin", "starling.js");
const PASSWORD = "bench-password";

export type HubRpc = RpcClient<NodeMethods, NodeEventMap>;

/** What `starling init --role hub` writes, with a cheap keystore (scrypt N = 1024). */
export async function initHub(dir: string, deployment: Deployment, privateKey: string, rpcUrl: string): Promise<void> {
  const dataDir = resolve(dir);
  mkdirSync(dataDir, { recursive: true });
  writeConfig({
    role: "hub",
    dataDir,
    chain: { rpcUrl, confirmations: 1 },
    p2p: { listen: ["/ip4/127.0.0.1/tcp/0"], peers: [] },
    rpc: { port: await freePort() },
    log: { level: "warn" },
  });
  await createKeystore(join(dataDir, "keystore.json"), PASSWORD, { privateKey, scryptN: 1024 });
  writeFileSync(join(dataDir, "rpc-token"), randomBytes(24).toString("hex") + "\n", { mode: 0o600 });
  writeDeployment(join(dataDir, "deployment.json"), deployment);
}

export interface HubProcess {
  child: ChildProcess;
  pid: number;
  rpc: HubRpc;
  address: string;
  multiaddr: string;
  metricsPort: number;
  /** Spawn to "serving JSON-RPC" (store opened, channels loaded, p2p, chain scanner and RPC up). */
  startMs: number;
  stop(): Promise<void>;
}

export interface StartHubOptions {
  /** Write a V8 CPU profile of the hub into this directory when it stops. */
  cpuProfDir?: string;
  /** Extra lines of the hub's stderr are kept here (warnings, errors). */
  log?: string[];
}

export async function startHub(dir: string, opts: StartHubOptions = {}): Promise<HubProcess> {
  const dataDir = resolve(dir);
  const metricsPort = await freePort();
  const args = [
    ...(opts.cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${opts.cpuProfDir}`] : []),
    ...launchArgs(BIN),
    "start",
    "-d",
    dataDir,
    "--metrics-port",
    String(metricsPort),
  ];
  const t0 = performance.now();
  const child = spawn(process.execPath, args, {
    env: { ...process.env, STARLING_PASSWORD: PASSWORD },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // The hub is a process of its own: it must not outlive the benchmark (killed or failed).
  const killHub = (): void => void child.kill("SIGTERM");
  process.once("exit", killHub);
  child.once("exit", () => process.off("exit", killHub));
  const log = opts.log ?? [];
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    for (const line of d.split("\n")) if (line.trim() && log.length < 200) log.push(line);
    if (process.env.BENCH_HUB_STDERR) process.stderr.write(d);
  });
  const url = await new Promise<string>((res, rej) => {
    let out = "";
    const onData = (d: string) => {
      out += d;
      const m = /serving JSON-RPC at (\S+)/.exec(out);
      if (m?.[1]) {
        child.stdout.off("data", onData);
        res(m[1]);
      }
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.once("exit", (code) => rej(new Error(`hub exited with ${code} before serving:\n${log.join("\n")}`)));
  });
  const startMs = performance.now() - t0;
  child.stdout.resume();
  const token = readFileSync(join(dataDir, "rpc-token"), "utf8").trim();
  const rpc = await RpcClient.connect<NodeMethods, NodeEventMap>(url, token, { timeoutMs: 300_000 });
  const info = (await rpc.call("node.info", {})) as { address: string; p2p: { multiaddrs: string[] } };
  const multiaddr = info.p2p.multiaddrs[0];
  if (!multiaddr) throw new Error("hub has no p2p address");
  return {
    child,
    pid: child.pid ?? 0,
    rpc,
    address: info.address.toLowerCase(),
    multiaddr,
    metricsPort,
    startMs,
    stop: async () => {
      await rpc.close().catch(() => undefined);
      if (child.exitCode !== null) return;
      const exited = new Promise<void>((res) => child.once("exit", () => res()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The hub's counters from its Prometheus endpoint. */
export async function hubMetrics(port: number): Promise<Record<string, number>> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\s+([0-9.e+-]+)$/.exec(line);
    if (m?.[1] && m[2]) out[m[1]] = Number(m[2]);
  }
  return out;
}

/** Resident set size of a process, from /proc (Linux). */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m?.[1] ? Number(m[1]) * 1024 : NaN;
}

/** CPU seconds (user + system) a process has used, from /proc (Linux). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / 100;
}

export function dirBytes(dir: string): number {
  if (!existsSync(dir)) return 0;
  let total = 0;
  const walk = (d: string): void => {
    for (const e of readdirSyncSafe(d)) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else total += statSize(p);
    }
  };
  walk(dir);
  return total;
}

function readdirSyncSafe(d: string): Dirent[] {
  try {
    return readdirSync(d, { withFileTypes: true });
  } catch {
    return [];
  }
}
function statSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}
