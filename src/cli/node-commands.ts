/**
 * `starling init`, `starling start` and the client commands that drive a running node over its
 * JSON-RPC API.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import { configFile, dataPath, loadConfig, parseConfig, writeConfig, type ConfigInput } from "../config.js";
import { createKeystore } from "../keystore.js";
import { startDaemon, readRpcToken } from "../node/daemon.js";
import type { NodeEventMap, NodeMethods } from "../node/api.js";
import { RpcClient } from "../rpc/index.js";

/** The keystore password: --password-file, else STARLING_PASSWORD. */
export function password(opts: { passwordFile?: string }): string {
  if (opts.passwordFile) return readFileSync(opts.passwordFile, "utf8").replace(/\r?\n$/, "");
  const env = process.env.STARLING_PASSWORD;
  if (env) return env;
  throw new Error("no keystore password: pass --password-file <file> or set STARLING_PASSWORD");
}

/** "address@multiaddr" as used by --peer. */
function parsePeer(value: string, previous: { address: string; multiaddrs: string[] }[] = []) {
  const at = value.indexOf("@");
  if (at < 0) throw new Error(`--peer takes address@multiaddr, got ${value}`);
  return [...previous, { address: value.slice(0, at), multiaddrs: [value.slice(at + 1)] }];
}

function towerPeer(value: string): { address: string; multiaddrs: string[] } {
  const at = value.indexOf("@");
  if (at < 0) throw new Error(`--watchtower takes address@multiaddr, got ${value}`);
  return { address: value.slice(0, at), multiaddrs: [value.slice(at + 1)] };
}

interface ClientOptions {
  dataDir: string;
  rpc?: string;
  token?: string;
  json?: boolean;
}

async function client(opts: ClientOptions): Promise<RpcClient<NodeMethods, NodeEventMap>> {
  let url = opts.rpc;
  let token = opts.token ?? process.env.STARLING_RPC_TOKEN;
  if (!url || !token) {
    const config = loadConfig(opts.dataDir);
    url ??= `ws://${config.rpc.host}:${config.rpc.port}`;
    token ??= readRpcToken(config);
  }
  try {
    return await RpcClient.connect<NodeMethods, NodeEventMap>(url, token, { timeoutMs: 120_000 });
  } catch (err) {
    throw new Error(`cannot reach the node at ${url}: ${err instanceof Error ? err.message : String(err)} (is \`starling start\` running?)`);
  }
}

function print(value: unknown, json: boolean | undefined): void {
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v), 2);
  if (json) {
    console.log(text);
    return;
  }
  if (Array.isArray(value) && value.every((v) => typeof v === "object" && v !== null)) {
    if (value.length === 0) console.log("(none)");
    else console.table(value);
    return;
  }
  console.log(text);
}

const newId = () => `0x${randomBytes(32).toString("hex")}`;

function clientCommand(program: Command, name: string, description: string): Command {
  return program
    .command(name)
    .description(description)
    .option("-d, --data-dir <dir>", "the node's data directory (its config names the RPC port and token)", ".data/node")
    .option("--rpc <url>", "RPC URL instead of the data dir's config, e.g. ws://127.0.0.1:8760")
    .option("--token <token>", "RPC token (or STARLING_RPC_TOKEN); default: the data dir's token file")
    .option("--json", "print raw JSON");
}

async function withClient(opts: ClientOptions, work: (c: RpcClient<NodeMethods, NodeEventMap>) => Promise<unknown>): Promise<void> {
  const c = await client(opts);
  try {
    print(await work(c), opts.json);
  } finally {
    await c.close();
  }
}

export function registerNodeCommands(program: Command): void {
  program
    .command("init")
    .description("create a node: an encrypted keystore, an RPC token and <data-dir>/config.json")
    .requiredOption("--role <role>", "hub (the system account), user, or watchtower (see `starling watchtower --help`)")
    .option("-d, --data-dir <dir>", "where the node keeps its key, database and config", ".data/node")
    .option("--password-file <file>", "file holding the keystore password (or set STARLING_PASSWORD)")
    .option("--private-key-file <file>", "import this hex private key instead of generating one")
    .option("--chain-rpc <url>", "Ethereum JSON-RPC URL", "http://127.0.0.1:8545")
    .option("--deployment <file>", "deployment file to copy into the data dir (written by `starling devnet`)")
    .option("--rpc-port <port>", "port of the node's JSON-RPC WebSocket server (127.0.0.1)", "8760")
    .option("--p2p-port <port>", "libp2p TCP port on 127.0.0.1 (0 picks one)", "0")
    .option("--peer <address@multiaddr>", "a peer to connect to at start (a user's hub; a hub's partner hub); repeatable", parsePeer)
    .option("--watchtower <address@multiaddr>", "hand this node's channels to this watchtower after every update")
    .option("--confirmations <n>", "blocks a transaction or event needs", "1")
    .option("--scrypt-n <n>", "keystore scrypt cost (default 131072; lower only for tests)")
    .addHelpText(
      "after",
      `
Examples:
  STARLING_PASSWORD=... starling init --role hub  -d .data/hub  --deployment .data/devnet/deployment.json --rpc-port 8760 --p2p-port 9760
  STARLING_PASSWORD=... starling init --role user -d .data/alice --deployment .data/devnet/deployment.json --rpc-port 8761 \\
      --peer 0xHubAddress@/ip4/127.0.0.1/tcp/9760/p2p/<hub peer id>
The hub's address and multiaddr are printed by \`starling info -d .data/hub\`.`,
    )
    .action(async (opts: {
      role: string;
      dataDir: string;
      passwordFile?: string;
      privateKeyFile?: string;
      chainRpc: string;
      deployment?: string;
      rpcPort: string;
      p2pPort: string;
      peer?: { address: string; multiaddrs: string[] }[];
      watchtower?: string;
      confirmations: string;
      scryptN?: string;
    }) => {
      const dataDir = resolve(opts.dataDir);
      if (existsSync(configFile(dataDir))) throw new Error(`${configFile(dataDir)} exists already: this node is initialised`);
      const input: ConfigInput = {
        role: opts.role as "hub" | "user" | "watchtower",
        dataDir,
        chain: { rpcUrl: opts.chainRpc, confirmations: Number(opts.confirmations) },
        p2p: { listen: [`/ip4/127.0.0.1/tcp/${Number(opts.p2pPort)}`], peers: opts.peer ?? [] },
        rpc: { port: Number(opts.rpcPort) },
        ...(opts.watchtower ? { watchtower: towerPeer(opts.watchtower) } : {}),
      };
      const config = parseConfig(input); // validate before creating anything
      const privateKey = opts.privateKeyFile ? readFileSync(opts.privateKeyFile, "utf8").trim() : undefined;
      const address = await createKeystore(dataPath(config, config.keystore), password(opts), {
        ...(privateKey ? { privateKey } : {}),
        ...(opts.scryptN ? { scryptN: Number(opts.scryptN) } : {}),
      });
      writeFileSync(dataPath(config, config.rpc.tokenFile), randomBytes(24).toString("hex") + "\n", { mode: 0o600 });
      if (opts.deployment) copyFileSync(opts.deployment, dataPath(config, config.chain.deployment));
      const file = writeConfig(input);
      console.log(`address ${address}`);
      console.log(`config  ${file}`);
      console.log(`start it with: starling ${config.role === "watchtower" ? "watchtower" : "start"} -d ${opts.dataDir}`);
    });

  program
    .command("start")
    .description("run the node daemon (hub or user per its config) until SIGINT/SIGTERM")
    .option("-d, --data-dir <dir>", "the node's data directory", ".data/node")
    .option("--password-file <file>", "file holding the keystore password (or set STARLING_PASSWORD)")
    .option("--rpc-port <port>", "override the RPC port")
    .option("--log-level <level>", "trace, debug, info, warn, error or silent")
    .option("--metrics-port <port>", "serve Prometheus metrics on 127.0.0.1:<port>/metrics")
    .action(async (opts: { dataDir: string; passwordFile?: string; rpcPort?: string; logLevel?: string; metricsPort?: string }) => {
      const flags: Record<string, unknown> = {};
      if (opts.rpcPort) flags.rpc = { port: Number(opts.rpcPort) };
      if (opts.logLevel) flags.log = { level: opts.logLevel };
      if (opts.metricsPort) flags.metricsPort = Number(opts.metricsPort);
      const config = loadConfig(opts.dataDir, flags);
      const daemon = await startDaemon(config, password(opts));
      console.log(`${config.role} ${daemon.node.address} serving JSON-RPC at ${daemon.rpc.url}`);
      await new Promise<void>((done) => {
        const stop = () => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          void daemon.stop().then(done);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
    });

  clientCommand(program, "info", "the node's address, role, chain, contracts and p2p addresses").action((o: ClientOptions) =>
    withClient(o, (c) => c.call("node.info", {})),
  );
  clientCommand(program, "channels", "list channels with balances").action((o: ClientOptions) =>
    withClient(o, (c) => c.call("channel.list", {})),
  );
  clientCommand(program, "channel", "one channel, with its on-chain record")
    .argument("<channelId>")
    .action((channelId: string, o: ClientOptions) => withClient(o, (c) => c.call("channel.get", { channelId })));
  clientCommand(program, "open", "open a channel with a partner (this node pays the gas)")
    .argument("<partner>", "the partner's address")
    .option("--deposit <amount>", "deposit right away (base units)")
    .action((partner: string, o: ClientOptions & { deposit?: string }) =>
      withClient(o, (c) => c.call("channel.open", { partner, ...(o.deposit ? { deposit: o.deposit } : {}) })),
    );
  const ref = (o: { channel?: string; partner?: string }) => ({
    ...(o.channel ? { channelId: o.channel } : {}),
    ...(o.partner ? { partner: o.partner } : {}),
  });
  clientCommand(program, "deposit", "deposit tokens into a channel")
    .argument("<amount>", "base units")
    .option("--channel <id>", "the channel (default: the only one)")
    .option("--partner <address>", "the channel with this partner")
    .action((amount: string, o: ClientOptions & { channel?: string; partner?: string }) =>
      withClient(o, (c) => c.call("channel.deposit", { ...ref(o), amount })),
    );
  clientCommand(program, "withdraw", "withdraw channel balance to the chain; the channel stays open")
    .argument("<amount>", "base units")
    .option("--channel <id>", "the channel (default: the only one)")
    .option("--partner <address>", "the channel with this partner")
    .action((amount: string, o: ClientOptions & { channel?: string; partner?: string }) =>
      withClient(o, (c) => c.call("channel.withdraw", { ...ref(o), amount })),
    );
  clientCommand(program, "close", "close a channel (cooperatively unless --force)")
    .option("--channel <id>", "the channel (default: the only one)")
    .option("--partner <address>", "the channel with this partner")
    .option("--force", "close unilaterally with the newest signed state")
    .action((o: ClientOptions & { channel?: string; partner?: string; force?: boolean }) =>
      withClient(o, (c) => c.call("channel.close", { ...ref(o), ...(o.force ? { force: true } : {}) })),
    );
  clientCommand(program, "settle", "settle a closed channel after its challenge period")
    .argument("<channelId>")
    .action((channelId: string, o: ClientOptions) => withClient(o, (c) => c.call("channel.settle", { channelId })));
  clientCommand(program, "issue", "hub: issue value to a user (no lock)")
    .argument("<to>", "the user's address")
    .argument("<amount>", "base units")
    .option("--id <paymentId>", "payment id (32 bytes hex); the same id pays once. Default: random")
    .action((to: string, amount: string, o: ClientOptions & { id?: string }) =>
      withClient(o, (c) => c.call("payment.issue", { paymentId: o.id ?? newId(), to, amount })),
    );
  clientCommand(program, "pay", "pay any address reachable through the hub(s)")
    .argument("<to>", "the payee's address")
    .argument("<amount>", "base units")
    .option("--id <paymentId>", "payment id (32 bytes hex); the same id pays once. Default: random")
    .option("--invoice <secretHash>", "pay the payee's invoice (from its `starling invoice`): saves a round trip")
    .action((to: string, amount: string, o: ClientOptions & { id?: string; invoice?: string }) =>
      withClient(o, (c) =>
        c.call("payment.pay", { paymentId: o.id ?? newId(), to, amount, ...(o.invoice !== undefined ? { secretHash: o.invoice } : {}) }),
      ),
    );
  clientCommand(program, "invoice", "ask for a payment: prints the secret hash a payer passes to `pay --invoice`")
    .argument("<amount>", "the least the payment must be, base units")
    .option("--expires <seconds>", "how long the invoice is open", "3600")
    .action((amount: string, o: ClientOptions & { expires: string }) =>
      withClient(o, (c) => c.call("payment.invoice", { amount, expiresInSeconds: Number(o.expires) })),
    );
  clientCommand(program, "payment", "a payment's status")
    .argument("<paymentId>")
    .action((paymentId: string, o: ClientOptions) => withClient(o, (c) => c.call("payment.get", { paymentId })));
  clientCommand(program, "balances", "token balance on chain and in channels").action((o: ClientOptions) =>
    withClient(o, (c) => c.call("balances", {})),
  );
  clientCommand(program, "history", "recent payments, newest first")
    .option("--limit <n>", "how many", "20")
    .action((o: ClientOptions & { limit: string }) => withClient(o, (c) => c.call("history", { limit: Number(o.limit) })));
}
