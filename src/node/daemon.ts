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
import { StarlingNode } from "./node.js";

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

export function createLogger(config: Config): Logger {
  return pino({ level: config.log.level, base: { role: config.role } }, pino.destination(2));
}

export async function startDaemon(config: Config, password: string, logger = createLogger(config)): Promise<Daemon> {
  const token = readRpcToken(config);
  const key = await unlockKeystore(dataPath(config, config.keystore), password);
  const node = await StarlingNode.start({ config, privateKey: key.privateKey, logger });
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
