/** The devkit starts daemons as an installed `starling` runs: with its launcher's node flags. */
import { expect } from "chai";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchArgs } from "../src/devkit/cluster.js";

describe("devkit launchArgs", function () {
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), "starling-launch-"))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const launcher = (firstLine: string): string => {
    const file = join(dir, `bin-${Math.random().toString(36).slice(2)}.js`);
    writeFileSync(file, `${firstLine}\nconsole.log("hi");\n`);
    return file;
  };

  it("gives the project's launcher with the flags of its first line", function () {
    const args = launchArgs();
    expect(args.at(-1)).to.match(/bin[/\\]starling\.js$/);
    expect(args.slice(0, -1)).to.deep.equal(["--max-semi-space-size=32"]);
  });

  it("reads plain and -S shebangs, with and without flags", function () {
    const plain = launcher("#!/usr/bin/env node");
    expect(launchArgs(plain)).to.deep.equal([plain]);
    const flags = launcher("#!/usr/bin/env -S node --max-semi-space-size=64 --stack-size=2000");
    expect(launchArgs(flags)).to.deep.equal(["--max-semi-space-size=64", "--stack-size=2000", flags]);
  });

  it("refuses a first line it cannot run as node would", function () {
    expect(() => launchArgs(launcher("// no shebang"))).to.throw(/first line is not/);
    expect(() => launchArgs(launcher("#!/bin/sh"))).to.throw(/first line is not/);
    expect(() => launchArgs(launcher("#!/usr/bin/env -S node script.js"))).to.throw(/first line is not/);
  });
});
