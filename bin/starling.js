#!/usr/bin/env -S node --max-semi-space-size=32
// Runs the compiled CLI (npm run build writes dist/). The flag above doubles V8's young
// generation: a busy hub's short-lived objects then die young instead of being copied, ~15% less
// CPU per payment (docs/performance.md). `launchArgs()` in src/devkit/cluster.ts reads it from here.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const entry = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  console.error("starling is not built yet: run `npm run build` in the package directory");
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
