/**
 * Node configuration: one JSON file (`<dataDir>/config.json`, written by `starling init`),
 * validated by a schema, with every field overridable by environment variables and CLI flags.
 * Precedence: flags > environment > file > defaults.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { z } from "zod";

const address = z.string().regex(/^0x[0-9a-fA-F]{40}$/, "an Ethereum address (0x + 40 hex digits)");
const amount = z
  .union([z.string().regex(/^\d{1,78}$/, "a non-negative integer in base units"), z.bigint()])
  .transform((v) => BigInt(v));

export const peerSchema = z.object({
  address,
  /** libp2p multiaddrs, e.g. /ip4/127.0.0.1/tcp/9000/p2p/12D3Koo... */
  multiaddrs: z.array(z.string().min(1)).min(1),
});

export const configSchema = z.object({
  /**
   * hub: the system account, serves users' channels; user: one channel with a hub; watchtower:
   * defends other nodes' channels while they are offline (`starling watchtower`).
   */
  role: z.enum(["hub", "user", "watchtower"]),
  /** Where the keystore, LevelDB, deployment and RPC token live. Relative paths are resolved against it. */
  dataDir: z.string().min(1),
  keystore: z.string().default("keystore.json"),
  chain: z
    .object({
      /** JSON-RPC URL of the Ethereum node (the embedded anvil by default). */
      rpcUrl: z.string().url().default("http://127.0.0.1:8545"),
      /** The deployment file written by `starling devnet` or a deploy script. */
      deployment: z.string().default("deployment.json"),
      /** Blocks a transaction or event needs before it counts. */
      confirmations: z.number().int().min(1).max(64).default(1),
      pollIntervalMs: z.number().int().min(50).max(60_000).default(500),
    })
    .prefault({}),
  p2p: z
    .object({
      listen: z.array(z.string()).default(["/ip4/127.0.0.1/tcp/0"]),
      /** Peers to connect to at start: a user's hub, or a hub's partner hubs. */
      peers: z.array(peerSchema).default([]),
    })
    .prefault({}),
  rpc: z
    .object({
      host: z.string().default("127.0.0.1"),
      port: z.number().int().min(0).max(65_535).default(8760),
      /** File holding the auth token; created by `starling init`. */
      tokenFile: z.string().default("rpc-token"),
    })
    .prefault({}),
  hub: z
    .object({
      /** Issuer mode: credit line granted in each new user channel (base units). */
      creditPerChannel: amount.default(10_000_000_000n * 10n ** 18n),
      /** Collateral mode: what the hub deposits in each new user channel (base units). */
      depositPerChannel: amount.default(0n),
    })
    .prefault({}),
  /** A watchtower this node hands its channels to after every update; none when absent. */
  watchtower: peerSchema.optional(),
  /** Prometheus metrics on 127.0.0.1:<port>; off when absent. */
  metricsPort: z.number().int().min(1).max(65_535).optional(),
  log: z.object({ level: z.enum(["trace", "debug", "info", "warn", "error", "silent"]).default("info") }).prefault({}),
});

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

/** Resolves a path from the config against the data dir. */
export function dataPath(config: Pick<Config, "dataDir">, path: string): string {
  return isAbsolute(path) ? path : join(config.dataDir, path);
}

export function configFile(dataDir: string): string {
  return join(resolve(dataDir), "config.json");
}

/**
 * Environment overrides: STARLING_ROLE, STARLING_RPC_URL, STARLING_RPC_PORT, STARLING_RPC_HOST,
 * STARLING_CONFIRMATIONS, STARLING_LOG_LEVEL, STARLING_METRICS_PORT, STARLING_P2P_LISTEN
 * (comma separated).
 */
export function envOverrides(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const set = (path: string[], value: unknown) => {
    let cur = o;
    for (const key of path.slice(0, -1)) cur = (cur[key] ??= {}) as Record<string, unknown>;
    cur[path[path.length - 1]!] = value;
  };
  const num = (name: string, v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${v}`);
    return n;
  };
  if (env.STARLING_ROLE) set(["role"], env.STARLING_ROLE);
  if (env.STARLING_RPC_URL) set(["chain", "rpcUrl"], env.STARLING_RPC_URL);
  if (env.STARLING_CONFIRMATIONS) set(["chain", "confirmations"], num("STARLING_CONFIRMATIONS", env.STARLING_CONFIRMATIONS));
  if (env.STARLING_RPC_PORT) set(["rpc", "port"], num("STARLING_RPC_PORT", env.STARLING_RPC_PORT));
  if (env.STARLING_RPC_HOST) set(["rpc", "host"], env.STARLING_RPC_HOST);
  if (env.STARLING_LOG_LEVEL) set(["log", "level"], env.STARLING_LOG_LEVEL);
  if (env.STARLING_METRICS_PORT) set(["metricsPort"], num("STARLING_METRICS_PORT", env.STARLING_METRICS_PORT));
  if (env.STARLING_P2P_LISTEN) set(["p2p", "listen"], env.STARLING_P2P_LISTEN.split(",").map((s) => s.trim()));
  return o;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Deep merge of plain objects; arrays and scalars from `over` replace. */
export function mergeConfig(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? mergeConfig(b, v) : v;
  }
  return out;
}

/** Validates and explains: every problem with its path, in one error. */
export function parseConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new Error(`invalid configuration:\n${lines.join("\n")}`);
  }
  return { ...result.data, dataDir: resolve(result.data.dataDir) };
}

/** Loads `<dataDir>/config.json` and applies environment and flag overrides. */
export function loadConfig(dataDir: string, flags: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const file = configFile(dataDir);
  if (!existsSync(file)) throw new Error(`no configuration at ${file}: run \`starling init --data-dir ${dataDir}\` first`);
  let fromFile: unknown;
  try {
    fromFile = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${String(err)}`);
  }
  if (!isObject(fromFile)) throw new Error(`${file} must hold a JSON object`);
  const merged = mergeConfig(mergeConfig(fromFile, envOverrides(env)), flags);
  return parseConfig({ ...merged, dataDir });
}

/** Writes a config file; bigints as decimal strings. */
export function writeConfig(config: ConfigInput): string {
  const file = configFile(config.dataDir);
  mkdirSync(dirname(file), { recursive: true });
  const { dataDir: _dataDir, ...rest } = config;
  writeFileSync(file, JSON.stringify(rest, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n");
  return file;
}
