/** The RPC reference is generated from the code; this fails when the two drift apart. */
import { expect } from "chai";
import { readFileSync } from "node:fs";
import { RPC_DOCS_FILE, renderRpcDocs } from "../scripts/rpc-docs.js";

describe("docs", function () {
  it("docs/rpc.md matches the node's method and event definitions (run `npm run docs` after changing them)", function () {
    expect(readFileSync(RPC_DOCS_FILE, "utf8")).to.equal(renderRpcDocs());
  });
});
