/**
 * Writes docs/rpc.md from the node's method and event definitions (src/node/api.ts) and the error
 * table (src/rpc/errors.ts), so the reference cannot drift from the code. `npm run docs`.
 */
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { packageRoot } from "../src/chain/artifacts.js";
import { nodeEvents, nodeMethods } from "../src/node/api.js";
import type { StarlingNode } from "../src/node/node.js";
import { RpcRegistry, renderMethodDocs } from "../src/rpc/index.js";

const intro = `# JSON-RPC API

A running node (\`starling start\`) serves JSON-RPC 2.0 over WebSocket, by default on
\`ws://127.0.0.1:8760\` (config \`rpc.host\`, \`rpc.port\`; bound to 127.0.0.1 unless configured
otherwise). Every connection must authenticate with the token in \`<data-dir>/rpc-token\`:

- as an HTTP header on the WebSocket upgrade: \`Authorization: Bearer <token>\`, or
- as the first message: \`{"jsonrpc":"2.0","id":1,"method":"auth","params":{"token":"<token>"}}\`.

Conventions:
- **Amounts** are token base units as **decimal strings** (\`"1000000"\`), never JSON numbers.
- Addresses are \`0x\` + 40 hex digits; ids and hashes \`0x\` + 64 hex digits.
- Params are an object (by name) or an array in the order listed (by position).
- Batches (arrays of requests) are supported, up to 100 entries.
- Payments carry a caller-chosen \`paymentId\`: sending twice with one id pays once; reusing an
  id with other parameters fails with \`CONFLICT\`.

A typed TypeScript client ships in the package:

\`\`\`ts
import { RpcClient } from "starling/dist/src/rpc/index.js";
import type { NodeMethods, NodeEventMap } from "starling/dist/src/node/api.js";

const node = await RpcClient.connect<NodeMethods, NodeEventMap>("ws://127.0.0.1:8760", token);
const payment = await node.call("payment.pay", { paymentId, to, amount: "1000" });
const stop = await node.subscribe("payment.received", {}, (p) => console.log(p.amount));
\`\`\`

Subscriptions: \`subscribe {event, filter?}\` returns a subscription id; notifications arrive as
\`{"jsonrpc":"2.0","method":"subscription","params":{"subscription","event","result"}}\`; a
\`filter\` delivers only payloads whose fields equal the given values.

`;
export const RPC_DOCS_FILE = join(packageRoot(), "docs", "rpc.md");

export function renderRpcDocs(): string {
  // Only the definitions are rendered; no handler runs, so no node is needed.
  const registry = new RpcRegistry().add(...nodeMethods(null as unknown as StarlingNode), ...nodeEvents);
  return intro + renderMethodDocs(registry) + "\n";
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(RPC_DOCS_FILE, renderRpcDocs());
  console.log(`wrote ${RPC_DOCS_FILE}`);
}
