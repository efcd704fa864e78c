/**
 * `starling start`: unlocks the key, starts the node, serves JSON-RPC over WebSocket on
 * 127.0.0.1 (unless configured otherwise), optional Prometheus metrics, and stops cleanly on
 * SIGINT/SIGTERM.
 */
import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { pino, type Logger } from "pino";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { dataPath, type Config } from "../config.js";
import { unlockKeystore } from "../keystore.js";
import { RpcServer } from "../rpc/index.js";
import { nodeRegistry } from "./api.js";
import { StarlingNode, type NodeStats } from "./node.js";

export interface Daemon {
  node: StarlingNode;
  rpc: RpcServer;
  stop(): Promise<void>;
}

export function readRpcToken(config: Config): string {
  const file = dataPath(config, config.rpc.tokenFile);
  if (!existsSync(file)) throw new Error(`RPC token file ${file} is missing: run \`starling init\``);
  const token = readFileSync(file, "utf8").trim();
  if (token.length < 16) throw new Error(`RPC token in ${file} is too short (at least 16 characters)`);
  return token;
}

/**
 * STARLING_CLOCK_OFFSET_SECONDS=<n> runs the node's clock n seconds ahead (lock and withdrawal
 * expiries), so tests can let expiries pass without waiting; they move chain time to match
 * (`evm_increaseTime`). Not for real nodes.
 */
export function clockFromEnv(env: NodeJS.ProcessEnv): (() => bigint) | undefined {
  const v = env.STARLING_CLOCK_OFFSET_SECONDS;
  if (v === undefined || v === "") return undefined;
  if (!/^-?\d+$/.test(v)) throw new Error(`STARLING_CLOCK_OFFSET_SECONDS must be an integer, got ${v}`);
  const offset = BigInt(v);
  return () => BigInt(Math.floor(Date.now() / 1000)) + offset;
}

export function createLogger(config: Config): Logger {
  return pino({ level: config.log.level, base: { role: config.role } }, pino.destination(2));
}

export async function startDaemon(config: Config, password: string, logger = createLogger(config)): Promise<Daemon> {
  const token = readRpcToken(config);
  const key = await unlockKeystore(dataPath(config, config.keystore), password);
  const clock = clockFromEnv(process.env);
  if (clock) logger.warn({ offsetSeconds: process.env.STARLING_CLOCK_OFFSET_SECONDS }, "the node's clock is shifted: tests only");
  const node = await StarlingNode.start({ config, privateKey: key.privateKey, logger, ...(clock ? { clock } : {}) });
  let rpc: RpcServer;
  try {
    rpc = await RpcServer.start({ registry: nodeRegistry(node), token, host: config.rpc.host, port: config.rpc.port });
  } catch (err) {
    await node.stop();
    throw err;
  }
  node.events.on("paymentReceived", (p) => rpc.publish("payment.received", p));
  node.events.on("paymentSent", (p) => rpc.publish("payment.sent", p));
  node.events.on("paymentFailed", (p) => rpc.publish("payment.failed", p));
  node.events.on("channelChanged", (c) => rpc.publish("channel.changed", c));
  const metrics = config.metricsPort ? await startMetrics(config.metricsPort, node) : undefined;
  logger.info({ rpc: rpc.url, metrics: config.metricsPort ? `http://127.0.0.1:${config.metricsPort}/metrics` : null }, "serving");
  return {
    node,
    rpc,
    stop: async () => {
      await rpc.close();
      if (metrics) await new Promise<void>((r) => metrics.close(() => r()));
      await node.stop();
    },
  };
}

async function startMetrics(port: number, node: StarlingNode): Promise<Server> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const received = new Counter({ name: "starling_payments_received_total", help: "Payments received", registers: [registry] });
  const sent = new Counter({ name: "starling_payments_sent_total", help: "Payments sent and completed", registers: [registry] });
  const failed = new Counter({ name: "starling_payments_failed_total", help: "Payments failed", registers: [registry] });
  new Gauge({
    name: "starling_channels",
    help: "Channels known to the node",
    registers: [registry],
    collect() {
      this.set(node.info().channels);
    },
  });
  new Gauge({
    name: "starling_store_level0_files",
    help: "LevelDB files at level 0: its compaction backlog (writes slow down from 8 and stop at 12)",
    registers: [registry],
    collect() {
      this.set(node.storeLevel0Files());
    },
  });
  // Totals kept by the node, exported as counters.
  const totals: [string, string, (s: NodeStats) => number][] = [
    ["starling_signatures_total", "secp256k1 signatures made", (s) => s.signatures],
    ["starling_signature_recoveries_total", "secp256k1 signatures checked (ecrecover)", (s) => s.recoveries],
    ["starling_store_commits_total", "Store commits (one per engine step that changed anything)", (s) => s.commits],
    ["starling_store_writes_total", "LevelDB batch writes the commits were grouped into", (s) => s.writes],
    ["starling_store_write_bytes_total", "Bytes of keys and values written to LevelDB", (s) => s.writeBytes],
    ["starling_store_write_seconds_total", "Time spent waiting for LevelDB writes to complete", (s) => s.writeMs / 1000],
  ];
  for (const [name, help, pick] of totals) {
    let last = 0;
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = pick(node.stats());
        if (now > last) this.inc(now - last);
        last = now;
      },
    });
  }
  node.events.on("paymentReceived", () => received.inc());
  node.events.on("paymentSent", () => sent.inc());
  node.events.on("paymentFailed", () => failed.inc());
  const server = createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    registry
      .metrics()
      .then((body) => res.writeHead(200, { "content-type": registry.contentType }).end(body))
      .catch(() => res.writeHead(500).end());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return server;
}
