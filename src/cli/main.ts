/** The `starling` command line. */
import { Command } from "commander";
import { registerDevnet } from "./devnet.js";
import { registerNodeCommands } from "./node-commands.js";
import { registerWatchtower } from "./watchtower.js";

export function buildProgram(): Command {
  const program = new Command()
    .name("starling")
    .description("Starling: payment-channel accounts for ERC20 tokens (hub-and-spoke RSMC channels with HTLC transfers)")
    .showHelpAfterError();
  registerDevnet(program);
  registerNodeCommands(program);
  registerWatchtower(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
}
