/**
 * A local Starling cluster for end-to-end runs: the embedded chain with the contracts deployed,
 * and hubs and users as separate `starling start` processes (bin/starling.js, so dist/ must be
 * built), each with its own data dir, dev key, ports and log file. Nodes are driven over their
 * JSON-RPC API with typed clients and through the CLI. `stop()` ends every process, the chain and
 * the temporary directory, whatever state the run is in.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, type WriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Contract, type HDNodeWallet } from "ethers";
import { startDevnet, type Devnet } from "../chain/devnet.js";
import { mined, type Mode } from "../chain/deploy.js";
import { artifact, packageRoot } from "../chain/artifacts.js";
import { mergeConfig, type ConfigInput } from "../config.js";
import { RpcClient } from "../rpc/index.js";
import type { NodeEventMap, NodeMethods } from "../node/api.js";

export type NodeClient = RpcClient<NodeMethods, NodeEventMap>;
export type NodeRole = "hub" | "user";

/** Per-section overrides written into a node's config.json after `starling init`. */
export type ConfigOverrides = {
  [K in keyof ConfigInput]?: NonNullable<ConfigInput[K]> extends object ? Partial<NonNullable<ConfigInput[K]>> : ConfigInput[K];
};

/** Wire forms (amounts as decimal strings) of results the API does not describe by a schema. */
export type ChannelWire = NodeMethods["channel.list"]["result"][number];
export type PaymentWire = NodeEventMap["payment.received"];
export interface NodeInfoWire {
  address: string;
  role: NodeRole;
  chainId: number;
  mode: Mode;
  contracts: { channels: string; token: string; secretRegistry: string };
  p2p: { peerId: string; multiaddrs: string[]; connected: string[] };
  channels: number;
}
export interface OnChainChannelWire {
  id: string;
  participant1: string;
  participant2: string;
  phase: "none" | "open" | "closed" | "settled";
  deposit1: string;
  deposit2: string;
  withdrawn1: string;
  withdrawn2: string;
  settleAt: string;
  nonce: string;
  closerSide: 0 | 1 | 2;
  closerAmount: string;
}
export type ChannelDetailWire = ChannelWire & { onChain: OnChainChannelWire };
export interface PaymentLookupWire {
  outgoing: PaymentWire | null;
  incoming: PaymentWire[];
}

export interface ClusterOptions {
  mode?: Mode;
  /** Seconds between a unilateral close and settlement; default 600. */
  challengePeriod?: number;
  /** Seconds between blocks; one block per transaction when absent. */
  blockTime?: number;
  /** Keep the temporary directory (logs, data dirs) after `stop()`. */
  keep?: boolean;
  /** Log level of the daemons; default info. */
  logLevel?: "trace" | "debug" | "info" | "warn" | "error" | "silent";
  /** How long a node may take to answer its first RPC call; default 30 s. */
  startTimeoutMs?: number;
  /** Funded dev accounts on the chain; default 10 (account 0 is the deployer). */
  accounts?: number;
}

export interface NodeSpec {
  name: string;
  role: NodeRole;
  /** Dev account index (anvil's mnemonic) whose key the node imports; default the next unused from 1. */
  account?: number;
  /** Running hubs this node connects to at start (a user's hub, a hub's partner hubs). */
  peers?: ClusterNode[];
  config?: ConfigOverrides;
  /** Start the daemon right away (default true). */
  start?: boolean;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Appends `-d <its data dir>`, so client commands reach that node. */
  node?: ClusterNode;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

const PASSWORD = "cluster-password-not-secret";
const ROOT = packageRoot();
const CLI = join(ROOT, "bin", "starling.js");

/**
 * Node flags a daemon runs with (docs/operating.md): a 32 MiB young generation, in which a busy
 * hub's short-lived objects die instead of being copied (~15% less CPU per payment under load,
 * docs/performance.md). The benchmark's own process gets the same (package.json `bench`).
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=32"];

/** Arguments for `process.execPath` that run the launcher `bin` with {@link DAEMON_NODE_FLAGS}. */
export function launchArgs(bin: string = CLI): string[] {
  return [...DAEMON_NODE_FLAGS, bin];
}
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const randomId = (): string => `0x${randomBytes(32).toString("hex")}`;

/** Polls `check` until it holds; throws after `timeoutMs` naming `what`. */
export async function waitFor(check: () => Promise<boolean> | boolean, what: string, timeoutMs = 30_000, everyMs = 200): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(everyMs);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Whether the daemons run the current sources: bin/starling.js runs the compiled dist/, which
 * may be missing, or older than some file under src/.
 */
export function cliBuildStatus(): "current" | "stale" | "missing" {
  const entry = join(ROOT, "dist", "src", "cli", "main.js");
  if (!existsSync(entry)) return "missing";
  const built = statSync(entry).mtimeMs;
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const path = join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(path) : e.name.endsWith(".ts") ? statSync(path).mtimeMs : 0);
    }, 0);
  return newest(join(ROOT, "src")) > built ? "stale" : "current";
}

const exited = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null;

/** Sends `signal` and waits for the exit; escalates to SIGKILL after `graceMs`. */
function terminate(child: ChildProcess, signal: NodeJS.Signals, graceMs = 10_000): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
    // A frozen process (`Cluster.freeze`) handles anything but SIGKILL only once it runs again.
    if (signal !== "SIGKILL") child.kill("SIGCONT");
  });
}

/** A process of the cluster with its own key, data directory and log; restarted in place. */
abstract class ClusterProcess {
  /** Lowercase, as the process reports it. */
  readonly address: string;
  readonly dataDir: string;
  readonly logFile: string;
  multiaddr = "";
  process: ChildProcess | undefined;

  constructor(
    readonly name: string,
    readonly wallet: HDNodeWallet,
    readonly p2pPort: number,
    dir: string,
  ) {
    this.address = wallet.address.toLowerCase();
    this.dataDir = join(dir, name);
    this.logFile = join(dir, `${name}.log`);
  }

  get running(): boolean {
    return this.process !== undefined && !exited(this.process);
  }
}

/** One daemon of the cluster; its process and RPC client change across restarts. */
export class ClusterNode extends ClusterProcess {
  peerId = "";
  /** Extra environment of the daemon from its next start on (e.g. STARLING_CLOCK_OFFSET_SECONDS). */
  env: Record<string, string> = {};
  private client: NodeClient | undefined;

  constructor(
    name: string,
    readonly role: NodeRole,
    wallet: HDNodeWallet,
    readonly rpcPort: number,
    p2pPort: number,
    dir: string,
  ) {
    super(name, wallet, p2pPort, dir);
  }

  /** The node's RPC client; throws while the node is not running. */
  get rpc(): NodeClient {
    if (!this.client || !this.running) throw new Error(`${this.name} is not running`);
    return this.client;
  }

  get rpcUrl(): string {
    return `ws://127.0.0.1:${this.rpcPort}`;
  }

  get token(): string {
    return readFileSync(join(this.dataDir, "rpc-token"), "utf8").trim();
  }

  /** `address@multiaddr`, the form `starling init --peer` takes. */
  get peerRef(): string {
    if (!this.multiaddr) throw new Error(`${this.name} has not been started yet: its peer id is unknown`);
    return `${this.address}@${this.multiaddr}`;
  }

  async info(): Promise<NodeInfoWire> {
    return (await this.rpc.call("node.info", {})) as NodeInfoWire;
  }

  channelList(): Promise<ChannelWire[]> {
    return this.rpc.call("channel.list", {});
  }

  /** The channel with `partner`, if this node has one (the newest, when there were several). */
  async channelWith(partner: ClusterNode): Promise<ChannelWire | undefined> {
    return (await this.channelList()).filter((c) => c.partner === partner.address).at(-1);
  }

  async channel(channelId: string): Promise<ChannelDetailWire> {
    return (await this.rpc.call("channel.get", { channelId })) as ChannelDetailWire;
  }

  async payment(paymentId: string): Promise<PaymentLookupWire> {
    return (await this.rpc.call("payment.get", { paymentId })) as PaymentLookupWire;
  }

  async history(limit?: number): Promise<PaymentWire[]> {
    return (await this.rpc.call("history", limit === undefined ? {} : { limit })) as PaymentWire[];
  }

  /** Balances as bigints. */
  async balances(): Promise<{ onChain: bigint; channels: bigint; available: bigint; locked: bigint }> {
    const b = await this.rpc.call("balances", {});
    return { onChain: BigInt(b.onChain), channels: BigInt(b.channels), available: BigInt(b.available), locked: BigInt(b.locked) };
  }

  /** @internal */
  attach(child: ChildProcess, client: NodeClient, multiaddr: string): void {
    this.process = child;
    this.client = client;
    this.multiaddr = multiaddr;
    this.peerId = multiaddr.split("/p2p/")[1] ?? "";
  }

  /** @internal Closes the client; the process is left alone. */
  async detach(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    await c?.close().catch(() => undefined);
  }
}

/** A `starling watchtower` process of the cluster (its log at debug level, so hand-offs show). */
export class ClusterTower extends ClusterProcess {
  /** The `watchtower` config section of a node that hands its channels to this tower. */
  get peer(): { address: string; multiaddrs: string[] } {
    if (!this.multiaddr) throw new Error(`${this.name} has not been started yet`);
    return { address: this.address, multiaddrs: [this.multiaddr] };
  }

  /** Hand-offs the tower stored, from its log: the channel, the client and the sealed state's nonce. */
  storedHandOffs(): { channelId: string; client: string; sealedNonce: bigint | null }[] {
    if (!existsSync(this.logFile)) return [];
    const out: { channelId: string; client: string; sealedNonce: bigint | null }[] = [];
    for (const line of readFileSync(this.logFile, "utf8").split("\n")) {
      if (!line.includes('"hand-off stored"')) continue;
      try {
        const e = JSON.parse(line) as { channelId?: string; client?: string; sealedNonce?: string };
        if (e.channelId && e.client) {
          out.push({ channelId: e.channelId.toLowerCase(), client: e.client.toLowerCase(), sealedNonce: e.sealedNonce ? BigInt(e.sealedNonce) : null });
        }
      } catch {
        // a partial last line
      }
    }
    return out;
  }
}

export class Cluster {
  readonly nodes = new Map<string, ClusterNode>();
  readonly towers = new Map<string, ClusterTower>();
  readonly token: Contract;
  readonly channels: Contract;
  readonly deploymentFile: string;
  private readonly children = new Set<ChildProcess>();
  private readonly clients = new Set<NodeClient>();
  private readonly logs = new Set<WriteStream>();
  private nextAccount = 1;
  /** Ports handed out to this cluster's processes: two probes in a row can return the same free port. */
  private readonly ports = new Set<number>();
  private stopping: Promise<void> | undefined;
  private readonly onExit = () => this.killAllNow();

  private constructor(
    readonly devnet: Devnet,
    readonly dir: string,
    private readonly options: ClusterOptions,
  ) {
    const issuer = devnet.wallets[0]!;
    this.token = new Contract(devnet.deployment.token, artifact("StarlingToken").abi, issuer);
    this.channels = new Contract(devnet.deployment.channels, artifact("StarlingChannels").abi, issuer);
    this.deploymentFile = join(dir, "deployment.json");
    writeFileSync(this.deploymentFile, JSON.stringify({ ...devnet.deployment, rpcUrl: devnet.anvil.url }, null, 2));
    // If the parent dies without running stop(), its daemons and chain must not outlive it.
    process.once("exit", this.onExit);
  }

  /** Starts the chain and deploys the contracts; nodes are added with `addNode`. */
  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    if (cliBuildStatus() === "missing") throw new Error("dist/ is not built: run `npx tsc -p .` (or `npm run build`) first");
    const dir = mkdtempSync(join(tmpdir(), "starling-cluster-"));
    let devnet: Devnet;
    try {
      devnet = await startDevnet({
        mode: options.mode ?? "collateral",
        challengePeriod: options.challengePeriod ?? 600,
        ...(options.accounts !== undefined ? { accounts: options.accounts } : {}),
        ...(options.blockTime !== undefined ? { blockTime: options.blockTime } : {}),
      });
    } catch (err) {
      if (!options.keep) rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return new Cluster(devnet, dir, options);
  }

  get chainUrl(): string {
    return this.devnet.anvil.url;
  }

  get issuer(): HDNodeWallet {
    return this.devnet.wallets[0]!;
  }

  node(name: string): ClusterNode {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`no node ${name}`);
    return n;
  }

  /** Initialises a node (dev key imported, free ports, peers, config overrides) and starts it. */
  async addNode(spec: NodeSpec): Promise<ClusterNode> {
    if (this.nodes.has(spec.name)) throw new Error(`node ${spec.name} exists already`);
    const account = spec.account ?? this.nextAccount;
    this.nextAccount = Math.max(this.nextAccount, account + 1);
    const wallet = this.devnet.wallets[account];
    if (!wallet) throw new Error(`no dev account ${account}`);
    // Two nodes with one key would fight over nonces and channels.
    const holder = [...this.nodes.values(), ...this.towers.values()].find((n) => n.address === wallet.address.toLowerCase());
    if (holder) throw new Error(`dev account ${account} is ${holder.name}'s already`);
    const node = new ClusterNode(spec.name, spec.role, wallet, await this.port(), await this.port(), this.dir);
    this.nodes.set(spec.name, node);
    // Dev keys only: never import a key this way on a real network.
    const keyFile = join(this.dir, `${spec.name}.key`);
    writeFileSync(keyFile, wallet.privateKey, { mode: 0o600 });
    const init = await this.cli([
      "init", "--role", spec.role, "-d", node.dataDir, "--private-key-file", keyFile,
      "--chain-rpc", this.chainUrl, "--deployment", this.deploymentFile,
      "--rpc-port", String(node.rpcPort), "--p2p-port", String(node.p2pPort),
      "--scrypt-n", "1024", ...(spec.peers ?? []).flatMap((p) => ["--peer", p.peerRef]),
    ]);
    rmSync(keyFile, { force: true });
    if (init.code !== 0) throw new Error(`starling init ${spec.name} failed: ${init.stderr || init.stdout}`);
    if (spec.config) this.editConfig(node, (cfg) => mergeConfig(cfg, spec.config as Record<string, unknown>));
    if (spec.start ?? true) await this.startNode(node);
    return node;
  }

  /**
   * Initialises a watchtower (`starling init --role watchtower`, a dev key that pays its gas) and
   * starts it (`starling watchtower`). Nodes name it with `config: { watchtower: tower.peer }`.
   */
  async addWatchtower(name: string, account?: number): Promise<ClusterTower> {
    if (this.towers.has(name) || this.nodes.has(name)) throw new Error(`${name} exists already`);
    const index = account ?? this.nextAccount;
    this.nextAccount = Math.max(this.nextAccount, index + 1);
    const wallet = this.devnet.wallets[index];
    if (!wallet) throw new Error(`no dev account ${index}`);
    const holder = [...this.nodes.values(), ...this.towers.values()].find((n) => n.address === wallet.address.toLowerCase());
    if (holder) throw new Error(`dev account ${index} is ${holder.name}'s already`);
    const tower = new ClusterTower(name, wallet, await this.port(), this.dir);
    this.towers.set(name, tower);
    const keyFile = join(this.dir, `${name}.key`);
    writeFileSync(keyFile, wallet.privateKey, { mode: 0o600 });
    const init = await this.cli([
      "init", "--role", "watchtower", "-d", tower.dataDir, "--private-key-file", keyFile,
      "--chain-rpc", this.chainUrl, "--deployment", this.deploymentFile,
      "--p2p-port", String(tower.p2pPort), "--scrypt-n", "1024",
    ]);
    rmSync(keyFile, { force: true });
    if (init.code !== 0) throw new Error(`starling init ${name} failed: ${init.stderr || init.stdout}`);
    await this.startTower(tower);
    return tower;
  }

  /** Starts `starling watchtower` and waits until it prints the address nodes reach it at. */
  async startTower(tower: ClusterTower): Promise<ClusterTower> {
    if (tower.running) throw new Error(`${tower.name} is running already`);
    if (this.stopping) throw new Error("the cluster is stopping");
    const log = createWriteStream(tower.logFile, { flags: "a" });
    this.logs.add(log);
    const child = spawn(process.execPath, [...launchArgs(), "watchtower", "-d", tower.dataDir, "--log-level", "debug"], {
      env: { ...process.env, STARLING_PASSWORD: PASSWORD },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.children.add(child);
    child.once("close", () => {
      this.children.delete(child);
      log.end();
      this.logs.delete(log);
    });
    child.stderr!.pipe(log, { end: false });
    const multiaddr = await new Promise<string>((resolve, reject) => {
      let out = "";
      const startTimeout = this.options.startTimeoutMs ?? 30_000;
      const timer = setTimeout(() => done(new Error(`${tower.name} did not start within ${startTimeout} ms; see ${tower.logFile}`)), startTimeout);
      const onData = (d: Buffer) => {
        out += d.toString();
        log.write(d);
        const m = /--watchtower \S+@(\S+)/.exec(out);
        if (m) done(null, m[1]!);
      };
      const onExit = () => done(new Error(`${tower.name} exited with ${child.exitCode ?? child.signalCode}; see ${tower.logFile}`));
      const done = (err: Error | null, ma?: string) => {
        clearTimeout(timer);
        child.stdout!.off("data", onData);
        child.off("exit", onExit);
        // Later output still goes to the log.
        child.stdout!.pipe(log, { end: false });
        if (err) reject(err);
        else resolve(ma!);
      };
      child.stdout!.on("data", onData);
      child.once("exit", onExit);
    }).catch(async (err: unknown) => {
      await terminate(child, "SIGKILL");
      throw err;
    });
    tower.process = child;
    tower.multiaddr = multiaddr;
    return tower;
  }

  async stopTower(tower: ClusterTower, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (tower.process) await terminate(tower.process, signal);
  }

  /** A free port not yet given to a process of this cluster (the OS may return a just-probed one again). */
  private async port(): Promise<number> {
    for (;;) {
      const port = await freePort();
      if (this.ports.has(port)) continue;
      this.ports.add(port);
      return port;
    }
  }

  /** Starts the node's daemon and waits until its RPC answers. */
  async startNode(node: ClusterNode): Promise<ClusterNode> {
    if (node.running) throw new Error(`${node.name} is running already`);
    if (this.stopping) throw new Error("the cluster is stopping");
    const log = createWriteStream(node.logFile, { flags: "a" });
    this.logs.add(log);
    const child = spawn(process.execPath, [...launchArgs(), "start", "-d", node.dataDir, "--log-level", this.options.logLevel ?? "info"], {
      env: { ...process.env, STARLING_PASSWORD: PASSWORD, ...node.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.children.add(child);
    // "close" comes after the pipes drained, so nothing is written to an ended log.
    child.once("close", () => {
      this.children.delete(child);
      log.end();
      this.logs.delete(log);
    });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 30_000);
    for (;;) {
      try {
        const rpc = await this.client(node);
        try {
          const info = (await rpc.call("node.info", {})) as NodeInfoWire;
          node.attach(child, rpc, info.p2p.multiaddrs[0] ?? "");
          return node;
        } catch (err) {
          await this.closeClient(rpc);
          throw err;
        }
      } catch (err) {
        if (exited(child)) throw new Error(`${node.name} exited with ${child.exitCode ?? child.signalCode}; see ${node.logFile}`);
        if (Date.now() > deadline) {
          await terminate(child, "SIGKILL");
          throw new Error(`${node.name} did not answer within the start timeout: ${String(err)}; see ${node.logFile}`);
        }
        await sleep(250);
      }
    }
  }

  /** Stops the node's daemon: SIGTERM is a clean shutdown, SIGKILL a crash. */
  async stopNode(node: ClusterNode, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await node.detach();
    if (node.process) await terminate(node.process, signal);
  }

  /** kill -9: the daemon dies without any shutdown work. */
  kill(node: ClusterNode): Promise<void> {
    return this.stopNode(node, "SIGKILL");
  }

  /**
   * SIGSTOP: the daemon stops executing but keeps its sockets open, so its peers see a partner
   * that has gone silent rather than one that has gone away. `thaw` resumes it.
   */
  freeze(node: ClusterNode): void {
    if (!node.running) throw new Error(`${node.name} is not running`);
    node.process!.kill("SIGSTOP");
  }

  thaw(node: ClusterNode): void {
    if (node.running) node.process!.kill("SIGCONT");
  }

  /** Stops the node (cleanly or not) and starts it again on the same data dir and ports. */
  async restart(node: ClusterNode, signal: NodeJS.Signals = "SIGTERM"): Promise<ClusterNode> {
    await this.stopNode(node, signal);
    return this.startNode(node);
  }

  /** Replaces the node's configured peers; a running node is restarted to pick them up. */
  async setPeers(node: ClusterNode, peers: ClusterNode[]): Promise<void> {
    this.editConfig(node, (cfg) => ({
      ...cfg,
      p2p: { ...(cfg.p2p as Record<string, unknown>), peers: peers.map((p) => ({ address: p.address, multiaddrs: [p.multiaddr] })) },
    }));
    if (node.running) await this.restart(node);
  }

  /** Rewrites `<dataDir>/config.json`; takes effect at the next start. */
  editConfig(node: ClusterNode, edit: (cfg: Record<string, unknown>) => Record<string, unknown>): void {
    const file = join(node.dataDir, "config.json");
    const cfg = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
    writeFileSync(file, JSON.stringify(edit(cfg), (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n");
  }

  /** A new RPC connection to the node (e.g. for subscriptions); closed by `stop()` at the latest. */
  async client(node: ClusterNode, token = node.token): Promise<NodeClient> {
    const c = await RpcClient.connect<NodeMethods, NodeEventMap>(node.rpcUrl, token, { timeoutMs: 60_000, connectTimeoutMs: 5_000 });
    this.clients.add(c);
    void c.closed.then(() => this.clients.delete(c));
    return c;
  }

  async closeClient(c: NodeClient): Promise<void> {
    this.clients.delete(c);
    await c.close().catch(() => undefined);
  }

  /** Runs `starling <args>` to completion; never throws for a non-zero exit. */
  cli(args: string[], options: CliOptions = {}): Promise<CliResult> {
    const full = options.node ? [...args, "-d", options.node.dataDir] : args;
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [...launchArgs(), ...full], {
        env: { ...process.env, STARLING_PASSWORD: PASSWORD, ...options.env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      this.children.add(child);
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
      child.once("error", (err) => {
        clearTimeout(timer);
        this.children.delete(child);
        reject(err);
      });
      child.once("close", (code, signal) => {
        clearTimeout(timer);
        this.children.delete(child);
        resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
      });
    });
  }

  // ------------------------------------------------------------------ chain helpers

  async mint(to: string, amount: bigint): Promise<void> {
    await mined(await this.token.getFunction("mint")(to, amount));
  }

  async tokenBalance(address: string): Promise<bigint> {
    return (await this.token.getFunction("balanceOf")(address)) as bigint;
  }

  async totalSupply(): Promise<bigint> {
    return (await this.token.getFunction("totalSupply")()) as bigint;
  }

  /** Issuer mode: the issuer sets a hub's credit line. */
  async setCreditLimit(hub: ClusterNode, amount: bigint): Promise<void> {
    await mined(await this.channels.getFunction("setCreditLimit")(hub.address, amount));
  }

  /** Moves chain time forward and mines a block at the new time. */
  async increaseTime(seconds: number): Promise<void> {
    await this.devnet.provider.send("evm_increaseTime", [seconds]);
    await this.devnet.provider.send("evm_mine", []);
  }

  async chainTime(): Promise<bigint> {
    const block = await this.devnet.provider.getBlock("latest");
    if (!block) throw new Error("no latest block");
    return BigInt(block.timestamp);
  }

  // ------------------------------------------------------------------ shutdown

  /**
   * Closes every client, stops every daemon (SIGTERM, SIGKILL after 10 s), stops the chain and
   * removes the temporary directory unless kept. Safe to call more than once and after failures.
   */
  stop(options: { keep?: boolean } = {}): Promise<void> {
    this.stopping ??= this.shutdown(options.keep ?? this.options.keep ?? false);
    return this.stopping;
  }

  private async shutdown(keep: boolean): Promise<void> {
    const problems: string[] = [];
    await Promise.all([...this.clients].map((c) => c.close().catch(() => undefined)));
    this.clients.clear();
    for (const n of this.nodes.values()) await n.detach();
    await Promise.all([...this.children].map((c) => terminate(c, "SIGTERM")));
    await this.devnet.stop().catch((err: unknown) => problems.push(`chain: ${String(err)}`));
    this.killAllNow();
    await Promise.all([...this.logs].map((l) => new Promise<void>((r) => l.end(() => r()))));
    process.off("exit", this.onExit);
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
    if (problems.length > 0) throw new Error(`cluster shutdown: ${problems.join("; ")}`);
  }

  /** Synchronous last resort: SIGKILL to whatever is still alive. */
  private killAllNow(): void {
    for (const c of this.children) if (!exited(c)) c.kill("SIGKILL");
    const anvil = this.devnet.anvil.process;
    if (!exited(anvil)) anvil.kill("SIGKILL");
  }
}

/** Runs `work` on a fresh cluster and always stops it; the directory is kept if `work` throws. */
export async function withCluster<T>(options: ClusterOptions, work: (cluster: Cluster) => Promise<T>): Promise<T> {
  const cluster = await Cluster.start(options);
  let failed = true;
  try {
    const result = await work(cluster);
    failed = false;
    return result;
  } finally {
    await cluster.stop({ keep: (options.keep ?? false) || failed });
  }
}
