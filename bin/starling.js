#!/usr/bin/env node
// Runs the compiled CLI (npm run build writes dist/). A busy daemon runs best with node's
// --max-semi-space-size=32 (docs/operating.md); node flags cannot be set from in here, and
// `env -S` in the line above is not portable (busybox's env has no -S), so the caller passes it.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const entry = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  console.error("starling is not built yet: run `npm run build` in the package directory");
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
