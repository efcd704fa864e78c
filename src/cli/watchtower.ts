/** `starling watchtower`: runs a watchtower from a data dir made by `starling init --role watchtower`. */
import type { Command } from "commander";
import { pino } from "pino";
import { readDeployment } from "../chain/deploy.js";
import { dataPath, loadConfig } from "../config.js";
import { unlockKeystore } from "../keystore.js";
import { Watchtower } from "../watcher/index.js";
import { password } from "./node-commands.js";

export function registerWatchtower(program: Command): void {
  program
    .command("watchtower")
    .description("run a watchtower: it defends the channels nodes hand it while they are offline (penalize or updateState), paying gas from its own key")
    .option("-d, --data-dir <dir>", "the watchtower's data directory (made by `starling init --role watchtower`)", ".data/watchtower")
    .option("--password-file <file>", "file holding the keystore password (or set STARLING_PASSWORD)")
    .option("--log-level <level>", "trace, debug, info, warn, error or silent")
    .addHelpText(
      "after",
      `
Set up once, then run:
  STARLING_PASSWORD=... starling init --role watchtower -d .data/tower --deployment .data/devnet/deployment.json --p2p-port 9790
  STARLING_PASSWORD=... starling watchtower -d .data/tower
Fund the printed address with ETH: the tower pays the gas of the penalties and updates it sends.
A node uses it when its config names it (printed at start):
  starling init --role user ... --watchtower <tower address>@/ip4/127.0.0.1/tcp/9790/p2p/<tower peer id>
or "watchtower": { "address": ..., "multiaddrs": [...] } in the node's config.json.

What the tower learns: the channel, its participants and the partner's newest revocation (no
amounts). The newest state is sealed with a key only a close by the partner reveals, so the
tower sees balances only when a dispute makes them public (the channel's first state excepted).`,
    )
    .action(async (opts: { dataDir: string; passwordFile?: string; logLevel?: string }) => {
      const config = loadConfig(opts.dataDir, opts.logLevel ? { log: { level: opts.logLevel } } : {});
      if (config.role !== "watchtower") {
        throw new Error(`${config.dataDir} holds a ${config.role} node, not a watchtower: make one with \`starling init --role watchtower\``);
      }
      const key = await unlockKeystore(dataPath(config, config.keystore), password(opts));
      const logger = pino({ level: config.log.level, base: { role: "watchtower" } }, pino.destination(2));
      const tower = await Watchtower.start({
        dataDir: config.dataDir,
        deployment: readDeployment(dataPath(config, config.chain.deployment)),
        rpcUrl: config.chain.rpcUrl,
        privateKey: key.privateKey,
        listen: config.p2p.listen,
        confirmations: config.chain.confirmations,
        pollIntervalMs: config.chain.pollIntervalMs,
        logger,
      });
      console.log(`watchtower ${tower.address}`);
      for (const ma of tower.multiaddrs) console.log(`  nodes use it with --watchtower ${tower.address}@${ma}`);
      await new Promise<void>((done) => {
        const stop = () => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          void tower.stop().then(done);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
    });
}
