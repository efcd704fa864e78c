/** Loads the compiled contracts written by `npm run build:contracts` (scripts/build-contracts.ts). */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { InterfaceAbi } from "ethers";

export type ContractName = "StarlingChannels" | "SecretRegistry" | "StarlingToken";

export interface Artifact {
  abi: InterfaceAbi;
  bytecode: string;
}

/** The package root: the nearest directory above this module holding package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("package root not found");
    dir = parent;
  }
  return dir;
}

let cache: Record<string, Artifact> | undefined;

export function artifact(name: ContractName): Artifact {
  if (!cache) {
    const file = join(packageRoot(), "artifacts", "contracts.json");
    if (!existsSync(file)) throw new Error(`${file} is missing: run \`npm run build\` first`);
    cache = (JSON.parse(readFileSync(file, "utf8")) as { contracts: Record<string, Artifact> }).contracts;
  }
  const found = cache[name];
  if (!found) throw new Error(`contract ${name} is not in the artifacts: run \`npm run build\``);
  return found;
}
