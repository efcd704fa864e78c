/**
 * Compiles contracts/*.sol with the npm `solc` package (no compiler download) and writes
 * artifacts/contracts.json: { compiler, sourceHash, contracts: { Name: { abi, bytecode } } }.
 * Skips the compile when the sources and settings have not changed.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const contractsDir = join(root, "contracts");
const outFile = join(root, "artifacts", "contracts.json");

interface SolcOutput {
  errors?: { severity: string; formattedMessage: string; sourceLocation?: { file: string } }[];
  contracts: Record<string, Record<string, { abi: unknown[]; evm: { bytecode: { object: string } } }>>;
}

const settings = {
  optimizer: { enabled: true, runs: 100_000 },
  viaIR: true,
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

export function buildContracts(force = false): string {
  const sources: Record<string, { content: string }> = {};
  for (const file of readdirSync(contractsDir).filter((f) => f.endsWith(".sol")).sort()) {
    sources[file] = { content: readFileSync(join(contractsDir, file), "utf8") };
  }
  const solc = require("solc") as { version(): string; compile(input: string, cb: object): string };
  const sourceHash = createHash("sha256")
    .update(JSON.stringify({ sources, settings, version: solc.version() }))
    .digest("hex");
  if (!force && existsSync(outFile)) {
    const previous = JSON.parse(readFileSync(outFile, "utf8")) as { sourceHash?: string };
    if (previous.sourceHash === sourceHash) return outFile;
  }
  const findImports = (path: string): { contents: string } | { error: string } => {
    try {
      return { contents: readFileSync(require.resolve(path), "utf8") };
    } catch {
      return { error: `import not found: ${path}` };
    }
  };
  const input = { language: "Solidity", sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports })) as SolcOutput;
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  // Warnings about the project's own sources only; OpenZeppelin's are known and reviewed upstream.
  for (const w of output.errors ?? []) {
    if (w.severity !== "error" && !w.sourceLocation?.file.startsWith("@openzeppelin/")) console.warn(w.formattedMessage);
  }
  if (errors.length > 0) {
    throw new Error("solc failed:\n" + errors.map((e) => e.formattedMessage).join("\n"));
  }
  const contracts: Record<string, { abi: unknown[]; bytecode: string }> = {};
  for (const file of Object.keys(sources)) {
    for (const [name, c] of Object.entries(output.contracts[file] ?? {})) {
      contracts[name] = { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
    }
  }
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify({ compiler: solc.version(), sourceHash, contracts }, null, 1));
  return outFile;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const t0 = Date.now();
  const file = buildContracts(process.argv.includes("--force"));
  console.error(`contracts: ${file} (${Date.now() - t0} ms)`);
}
