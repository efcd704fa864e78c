/** The devkit and the benchmark start daemons with the node flags docs/operating.md recommends. */
import { expect } from "chai";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../src/chain/artifacts.js";
import { DAEMON_NODE_FLAGS, launchArgs } from "../src/devkit/cluster.js";

describe("devkit launchArgs", function () {
  const root = packageRoot();

  it("runs the project's launcher with the daemon's node flags", function () {
    expect(DAEMON_NODE_FLAGS).to.deep.equal(["--max-semi-space-size=32"]);
    expect(launchArgs()).to.deep.equal([...DAEMON_NODE_FLAGS, join(root, "bin", "starling.js")]);
    expect(launchArgs("/elsewhere/bin/starling.js")).to.deep.equal([...DAEMON_NODE_FLAGS, "/elsewhere/bin/starling.js"]);
  });

  it("the operator docs give the daemon's flags and performance.md the benchmark process's own; the launcher's first line stays portable", function () {
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> };
    // The benchmark's process is the load generator, with heap settings of its own; the hub it
    // starts gets DAEMON_NODE_FLAGS (launchArgs), as operating.md tells operators.
    const bench = /node ((?:--\S+ )+)dist\/scripts\/bench\.js/.exec(pkg.scripts.bench ?? "");
    expect(bench, "package.json's bench script runs node with flags").to.not.equal(null);
    expect(readFileSync(join(root, "docs", "performance.md"), "utf8")).to.contain(`node ${bench![1]!.trim()}`);
    expect(readFileSync(join(root, "docs", "operating.md"), "utf8")).to.contain(`node ${DAEMON_NODE_FLAGS.join(" ")}`);
    expect(readFileSync(join(root, "bin", "starling.js"), "utf8").split("\n", 1)[0]).to.equal("#!/usr/bin/env node");
  });
});
