import { expect } from "chai";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Level } from "level";
import { DecodeError, EncodeError, Encoded, decode, decodeBytes, encode, encodeBytes } from "../src/store/codec.js";
import { CorruptValueError, LAZY_ACK_MS, LevelStore, MemoryStore, StoreClosedError, type Store } from "../src/store/store.js";

describe("store codec", () => {
  const leaf = fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Object.is(d, -0)),
    fc.string({ unit: "binary" }),
    fc.bigInt(),
    fc.bigInt().map((n) => `$${n}`),
    fc.string().map((s) => `$${s}`),
    fc.constantFrom("$", "$$", "$-", "$-0", "$01", "$$1", "$abc", '{"$n":"1"}'),
  );
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: "small", withCrossShrink: true }, leaf, tie("array"), tie("object")),
    array: fc.array(tie("value"), { maxLength: 6 }),
    object: fc.dictionary(fc.oneof(fc.string(), fc.constantFrom("$1", "__proto__", "$n")), tie("value"), { maxKeys: 6 }),
  }));

  it("round-trips plain data with bigints", () => {
    fc.assert(
      fc.property(value, (x) => {
        const text = encode(x);
        expect(decode(text)).to.deep.equal(x);
        expect(encode(decode(text))).to.equal(text);
      }),
      { numRuns: 2000 },
    );
  });

  it("writes strings and keys exactly as JSON.stringify does (the fast path for plain ASCII changes no byte)", () => {
    const ascii = Array.from({ length: 128 }, (_, i) => String.fromCharCode(i)).join("");
    const asciiUnit = fc.constantFrom(...ascii);
    // Long strings take the native path (regular expression and latin1 write), short ones the loop.
    const long = (unit: fc.Arbitrary<string> | "binary") => fc.string({ unit, minLength: 24, maxLength: 200 });
    const text = fc.oneof(
      fc.string({ unit: "binary" }),
      fc.string({ unit: asciiUnit }),
      long(asciiUnit),
      long("binary"),
      long(fc.constantFrom(..."0123456789abcdef")).map((h) => `0x${h}`),
      fc.tuple(long(fc.constantFrom("a", "b")), fc.constantFrom(...ascii, "é", "\u2028", "\ud800", "😀"), fc.nat(200)).map(([s, c, i]) => s.slice(0, i % s.length) + c + s.slice(i % s.length)),
      fc.constantFrom(ascii, "\u2028", "\ud800", "é", '"', "\\"),
    );
    fc.assert(
      fc.property(text, text, (s, key) => {
        const escaped = s.startsWith("$") ? `$${s}` : s;
        expect(encode(s)).to.equal(JSON.stringify(escaped));
        expect(encode({ [key]: 1 })).to.equal(`{${JSON.stringify(key)}:1}`);
      }),
      { numRuns: 3000 },
    );
  });

  it("encodes to the UTF-8 bytes of the text; each result is its own copy, at any size", () => {
    fc.assert(
      fc.property(value, value, (x, y) => {
        const bx = encodeBytes(x);
        const copy = Uint8Array.from(bx);
        const by = encodeBytes(y);
        expect(Buffer.from(bx).equals(Buffer.from(copy)), "an earlier result changed").to.equal(true);
        expect(Buffer.from(by).toString("utf8")).to.equal(encode(y));
        expect(Buffer.from(bx).equals(Buffer.from(JSON.stringify(JSON.parse(Buffer.from(bx).toString("utf8"))), "utf8"))).to.equal(true);
        expect(decodeBytes(bx)).to.deep.equal(x);
      }),
      { numRuns: 1000 },
    );
    // Larger than the encoder's buffer, with multi-byte characters at the growth boundary.
    const big = { a: "0x" + "ab".repeat(70_000), b: "é€😀".repeat(30_000), n: 10n ** 40n };
    const bytes = encodeBytes(big);
    expect(decodeBytes(bytes)).to.deep.equal(big);
    expect(bytes.length).to.equal(Buffer.byteLength(JSON.stringify({ ...big, n: `$${big.n}` }), "utf8"));
  });

  it("writes an Encoded value as the bytes of the value it was made from", () => {
    fc.assert(
      fc.property(value, (x) => {
        const once = Encoded.of(x);
        expect(encodeBytes(once)).to.equal(once.bytes);
        expect(encode({ v: 1, body: once, list: [once] })).to.equal(encode({ v: 1, body: x, list: [x] }));
      }),
      { numRuns: 500 },
    );
    expect(() => Encoded.of({ f: () => 1 })).to.throw(EncodeError, /function at \$\.f/);
  });

  it("stays usable after a value it cannot encode, and refuses a getter that encodes", () => {
    expect(() => encodeBytes({ a: "x".repeat(100), b: [1, () => 1] })).to.throw(EncodeError, /function at \$\.b\[1\]/);
    expect(decodeBytes(encodeBytes({ a: 1n }))).to.deep.equal({ a: 1n });
    const sneaky = {};
    Object.defineProperty(sneaky, "x", { enumerable: true, get: () => encodeBytes(1) });
    expect(() => encodeBytes(sneaky)).to.throw(EncodeError, /encodes another/);
    expect(decodeBytes(encodeBytes([1, "two"]))).to.deep.equal([1, "two"]);
    expect(() => decodeBytes(Uint8Array.of(0x22, 0xff, 0x22))).to.throw(DecodeError, /not UTF-8/);
  });

  it("writes own keys only, as JSON.stringify does, even with Object.prototype polluted", () => {
    const proto = Object.prototype as Record<string, unknown>;
    const record = { b: 1, a: [2n, { c: "0x" + "ab".repeat(40) }], 7: "seven" };
    const clean = encode(record);
    proto.polluted = "yes";
    try {
      expect(encode(record)).to.equal(clean);
      expect(encode({ x: {} })).to.equal('{"x":{}}');
    } finally {
      delete proto.polluted;
    }
    expect(clean).to.equal('{"7":"seven","b":1,"a":["$2",{"c":"0x' + "ab".repeat(40) + '"}]}');
  });

  it("keeps strings that look like encoded bigints as strings", () => {
    const x = { a: "$123", b: 123n, c: ["$$", "$", "$-1", -1n], $d: "$" };
    expect(decode(encode(x))).to.deep.equal(x);
    expect(encode(5n)).to.equal('"$5"');
    expect(encode("$5")).to.equal('"$$5"');
  });

  it("keeps an own __proto__ property", () => {
    const x: Record<string, unknown> = {};
    Object.defineProperty(x, "__proto__", { value: 7n, enumerable: true, writable: true, configurable: true });
    const out = decode(encode(x)) as object;
    expect(Object.getPrototypeOf(out)).to.equal(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(out, "__proto__")?.value).to.equal(7n);
  });

  it("drops undefined object properties and stores -0 as 0", () => {
    expect(decode(encode({ a: undefined, b: 1 }))).to.deep.equal({ b: 1 });
    expect(Object.is(decode(encode(-0)), 0)).to.equal(true);
  });

  it("rejects values that are not plain data, naming where they are", () => {
    class Point {
      x = 1;
    }
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const cases: [unknown, RegExp][] = [
      [undefined, /undefined at \$$/],
      [[1, undefined], /undefined \(array element\) at \$\[1\]/],
      // eslint-disable-next-line no-sparse-arrays
      [[1, , 2], /undefined \(array element\) at \$\[1\]/],
      [{ a: [1, { b: () => 1 }] }, /function at \$\.a\[1\]\.b/],
      [{ "odd key": Symbol("s") }, /symbol at \$\["odd key"\]/],
      [NaN, /NaN/],
      [{ x: Infinity }, /Infinity at \$\.x/],
      [new Date(0), /instance of Date/],
      [new Map(), /instance of Map/],
      [{ p: new Point() }, /instance of Point.*at \$\.p/],
      [new Uint8Array(2), /Uint8Array \(hex-encode/],
      [{ b: Buffer.from("ab") }, /Buffer \(hex-encode.*at \$\.b/],
      [cyclic, /cyclic reference at \$\.self/],
    ];
    for (const [input, message] of cases) {
      expect(() => encode(input), String(message)).to.throw(EncodeError, message);
    }
  });

  it("rejects text it did not write", () => {
    for (const text of ["{", "", '"$abc"', '"$01"', '"$-"', '"$"', '["$1x"]', '{"a":"$ 1"}']) {
      expect(() => decode(text), text).to.throw(DecodeError);
    }
  });
});

interface Disk {
  /** A new, unopened store over this disk's data. */
  store(): LevelStore | MemoryStore;
  /** Every raw key; call with no store open on the disk. */
  keys(): Promise<string[]>;
  /** Writes a raw value; call with no store open on the disk. */
  putRaw(key: string, value: string): Promise<void>;
  dispose(): void;
}

function levelDisk(): Disk {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "starling-store-"));
  const raw = async <R>(use: (db: Level<string, string>) => Promise<R>): Promise<R> => {
    const db = new Level<string, string>(dir, { keyEncoding: "utf8", valueEncoding: "utf8" });
    await db.open();
    try {
      return await use(db);
    } finally {
      await db.close();
    }
  };
  return {
    store: () => new LevelStore(dir),
    keys: () => raw((db) => db.keys().all()),
    putRaw: (key, value) => raw((db) => db.put(key, value)),
    dispose: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

function memoryDisk(): Disk {
  const data = new Map<string, Uint8Array>();
  return {
    store: () => new MemoryStore(data),
    keys: () => Promise.resolve([...data.keys()].sort()),
    putRaw: (key, value) => {
      data.set(key, new TextEncoder().encode(value));
      return Promise.resolve();
    },
    dispose: () => data.clear(),
  };
}

interface ChannelRecord {
  id: string;
  nonce: bigint;
  balances: [bigint, bigint];
  locks: { hash: string; amount: bigint; expiry: number }[];
  closed: boolean;
  note: string | null;
}

const channel = (id: string, nonce: bigint): ChannelRecord => ({
  id,
  nonce,
  balances: [10n ** 24n - nonce, nonce],
  locks: [{ hash: `0x${"ab".repeat(32)}`, amount: 5n, expiry: 1_700_000_000 }],
  closed: false,
  note: nonce % 2n === 0n ? "$even" : null,
});

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`rejected with a non-Error: ${String(err)}`);
  }
  throw new Error("expected a rejection");
}

function storeSuite(name: string, makeDisk: () => Disk): void {
  describe(name, () => {
    let disk: Disk;
    let store: LevelStore | MemoryStore;

    /** Closes the current store and opens a new instance over the same data. */
    async function restart(): Promise<void> {
      await store.close();
      store = disk.store();
      await store.open();
    }

    beforeEach(async () => {
      disk = makeDisk();
      store = disk.store();
      await store.open();
    });

    afterEach(async () => {
      await store.close();
      disk.dispose();
    });

    it("round-trips every kind of record, and misses return undefined", async () => {
      const a = channel("a", 1n);
      const b = channel("b", 2n);
      const payment = { id: "pay1", amount: 123n, route: ["x", "y"], meta: { "$weird": "$1" } };
      const result = await store.commit({
        channels: [
          { channelId: "b", record: b },
          { channelId: "a", record: a },
        ],
        payments: [{ paymentId: "pay1", record: payment }],
        secrets: [{ secretHash: "0xhash", secret: "0xsecret" }],
        meta: [
          { key: "height", value: 42n },
          { key: "cfg", value: { peers: ["p"], fee: 0.5 } },
        ],
        outboxAdd: [
          { peer: "p1", message: { kind: "update", nonce: 1n } },
          { peer: "p2", message: { kind: "update", nonce: 2n } },
          { peer: "p1", message: { kind: "lock", nonce: 3n } },
        ],
      });
      expect(result.outboxSeqs).to.deep.equal([1n, 1n, 2n]);

      for (let pass = 0; pass < 2; pass++) {
        expect(await store.getChannel<ChannelRecord>("a")).to.deep.equal(a);
        expect(await store.listChannels<ChannelRecord>()).to.deep.equal([a, b]);
        expect(await store.getPayment("pay1")).to.deep.equal(payment);
        expect(await store.getSecret("0xhash")).to.equal("0xsecret");
        expect(await store.getMeta("height")).to.equal(42n);
        expect(await store.getMeta("cfg")).to.deep.equal({ peers: ["p"], fee: 0.5 });
        expect(await store.listOutbox("p1")).to.deep.equal([
          { peer: "p1", seq: 1n, message: { kind: "update", nonce: 1n } },
          { peer: "p1", seq: 2n, message: { kind: "lock", nonce: 3n } },
        ]);
        expect((await store.listOutbox()).map((e) => [e.peer, e.seq])).to.deep.equal([
          ["p1", 1n],
          ["p1", 2n],
          ["p2", 1n],
        ]);
        expect(await store.getChannel("zz")).to.equal(undefined);
        expect(await store.getPayment("zz")).to.equal(undefined);
        expect(await store.getSecret("zz")).to.equal(undefined);
        expect(await store.getMeta("zz")).to.equal(undefined);
        expect(await store.listOutbox("nobody")).to.deep.equal([]);
        await restart();
      }
    });

    it("hands out copies: mutating a record after commit or read changes nothing stored", async () => {
      const rec = channel("a", 1n);
      await store.commit({ channels: [{ channelId: "a", record: rec }] });
      rec.nonce = 99n;
      const read = (await store.getChannel<ChannelRecord>("a"))!;
      read.balances[0] = 0n;
      expect(await store.getChannel("a")).to.deep.equal(channel("a", 1n));
    });

    it("lists meta values by prefix in key order, and deletes them (a delete in the same batch wins)", async () => {
      await store.commit({
        meta: [
          { key: "t!b", value: 2n },
          { key: "t!a", value: 1n },
          { key: "u!a", value: 3 },
          { key: "t", value: 0 },
        ],
      });
      expect(await store.listMeta("t!")).to.deep.equal([
        ["t!a", 1n],
        ["t!b", 2n],
      ]);
      await store.commit({ meta: [{ key: "t!c", value: 4n }], deleteMeta: ["t!a", "t!c", "never-existed"] });
      expect(await store.listMeta("t!")).to.deep.equal([["t!b", 2n]]);
      expect(await store.getMeta("u!a")).to.equal(3);
      expect((await store.listMeta("")).map(([key]) => key)).to.deep.equal(["t", "t!b", "u!a"]);
      await restart();
      expect(await store.listMeta("t!")).to.deep.equal([["t!b", 2n]]);
    });

    it("replaces channels in place and prunes payments", async () => {
      await store.commit({
        channels: [{ channelId: "a", record: channel("a", 1n) }],
        payments: [
          { paymentId: "p1", record: { n: 1n } },
          { paymentId: "p2", record: { n: 2n } },
        ],
      });
      await store.commit({
        channels: [{ channelId: "a", record: channel("a", 2n) }],
        payments: [{ paymentId: "p3", record: { n: 3n } }],
        deletePayments: ["p1", "p3", "never-existed"],
      });
      expect(await store.getChannel("a")).to.deep.equal(channel("a", 2n));
      expect(await store.getPayment("p1")).to.equal(undefined);
      expect(await store.getPayment("p2")).to.deep.equal({ n: 2n });
      // A delete in the same batch as the put wins.
      expect(await store.getPayment("p3")).to.equal(undefined);
    });

    it("writes nothing of a batch that holds an invalid value, and consumes no seq", async () => {
      await store.commit({ outboxAdd: [{ peer: "p", message: "first" }] });
      const before = await (async () => {
        await store.close();
        const keys = await disk.keys();
        await store.open();
        return keys;
      })();

      const err = await rejection(
        store.commit({
          channels: [
            { channelId: "good", record: channel("good", 1n) },
            { channelId: "bad", record: { ...channel("bad", 1n), sign: () => "nope" } },
          ],
          payments: [{ paymentId: "pay", record: { n: 1n } }],
          secrets: [{ secretHash: "h", secret: "s" }],
          meta: [{ key: "m", value: 1 }],
          outboxAdd: [
            { peer: "p", message: "second" },
            { peer: "q", message: "other" },
          ],
          outboxAck: [{ peer: "p", seq: 1n }],
        }),
      );
      expect(err).to.be.instanceOf(EncodeError);
      expect(err.message).to.match(/function at \$\.channels\[1\]\.record\.sign/);

      const bytes = await rejection(store.commit({ outboxAdd: [{ peer: "p", message: { sig: new Uint8Array(65) } }] }));
      expect(bytes.message).to.match(/hex-encode.*\$\.outboxAdd\[0\]\.message\.sig/);

      expect(await store.getChannel("good")).to.equal(undefined);
      expect(await store.getChannel("bad")).to.equal(undefined);
      expect(await store.getPayment("pay")).to.equal(undefined);
      expect(await store.getSecret("h")).to.equal(undefined);
      expect(await store.getMeta("m")).to.equal(undefined);
      expect(await store.listOutbox()).to.deep.equal([{ peer: "p", seq: 1n, message: "first" }]);
      await store.close();
      expect(await disk.keys()).to.deep.equal(before);
      await store.open();

      // The rejected batch took no seqs: the next message is 2, not 3.
      expect((await store.commit({ outboxAdd: [{ peer: "p", message: "second" }] })).outboxSeqs).to.deep.equal([2n]);
    });

    it("a rejected commit does not disturb commits issued alongside it", async () => {
      const results = await Promise.allSettled([
        store.commit({ channels: [{ channelId: "x", record: 1n }], outboxAdd: [{ peer: "p", message: 1 }] }),
        store.commit({ channels: [{ channelId: "y", record: Symbol("no") }], outboxAdd: [{ peer: "p", message: 2 }] }),
        store.commit({ channels: [{ channelId: "z", record: 3n }], outboxAdd: [{ peer: "p", message: 3 }] }),
      ]);
      expect(results.map((r) => r.status)).to.deep.equal(["fulfilled", "rejected", "fulfilled"]);
      expect(await store.listChannels()).to.deep.equal([1n, 3n]);
      expect((await store.listOutbox("p")).map((e) => [e.seq, e.message])).to.deep.equal([
        [1n, 1],
        [2n, 3],
      ]);
    });

    it("keeps outbox seqs monotonic across acks, close and reopen", async () => {
      const first = await store.commit({ outboxAdd: [1, 2, 3].map((n) => ({ peer: "p", message: n })) });
      expect(first.outboxSeqs).to.deep.equal([1n, 2n, 3n]);
      await store.commit({ outboxAck: first.outboxSeqs.map((seq) => ({ peer: "p", seq })) });
      expect(await store.listOutbox("p")).to.deep.equal([]);

      // Same instance reopened, then a fresh instance over the same data.
      await store.close();
      await store.open();
      expect((await store.commit({ outboxAdd: [{ peer: "p", message: 4 }] })).outboxSeqs).to.deep.equal([4n]);
      await restart();
      expect((await store.commit({ outboxAdd: [{ peer: "p", message: 5 }] })).outboxSeqs).to.deep.equal([5n]);
      expect((await store.commit({ outboxAdd: [{ peer: "new", message: 1 }] })).outboxSeqs).to.deep.equal([1n]);
      expect((await store.listOutbox("p")).map((e) => e.seq)).to.deep.equal([4n, 5n]);
    });

    it("acks only the given seq; acking an absent seq or in the adding batch works", async () => {
      await store.commit({ outboxAdd: [1, 2, 3].map((n) => ({ peer: "p", message: n })) });
      await store.commit({ outboxAck: [{ peer: "p", seq: 2n }, { peer: "p", seq: 77n }, { peer: "q", seq: 1n }] });
      expect((await store.listOutbox("p")).map((e) => e.seq)).to.deep.equal([1n, 3n]);
      const r = await store.commit({ outboxAdd: [{ peer: "p", message: 4 }], outboxAck: [{ peer: "p", seq: 4n }] });
      expect(r.outboxSeqs).to.deep.equal([4n]);
      expect((await store.listOutbox("p")).map((e) => e.seq)).to.deep.equal([1n, 3n]);
      expect(await rejection(store.commit({ outboxAck: [{ peer: "p", seq: -1n }] }))).to.be.instanceOf(TypeError);
    });

    it("acks later: the delete rides with the next commit, or is written on a timer, or at close", async () => {
      await store.commit({ outboxAdd: [1, 2, 3, 4].map((n) => ({ peer: "p", message: n })) });
      const seqs = async () => (await store.listOutbox("p")).map((e) => e.seq);
      const w0 = store.stats.writes;
      store.ackLater("p", 1n);
      expect(() => store.ackLater("p", -1n)).to.throw(TypeError);
      await store.commit({ channels: [{ channelId: "x", record: 1n }] });
      expect(store.stats.writes - w0).to.equal(1);
      expect(await seqs()).to.deep.equal([2n, 3n, 4n]);

      store.ackLater("p", 2n);
      await new Promise((r) => setTimeout(r, LAZY_ACK_MS + 100));
      expect(store.stats.writes - w0).to.equal(2);
      expect(await seqs()).to.deep.equal([3n, 4n]);

      store.ackLater("p", 3n);
      await restart();
      expect(await seqs()).to.deep.equal([4n]);
      await store.close();
      expect(() => store.ackLater("p", 4n)).to.throw(StoreClosedError);
      await store.open();
      expect(await seqs()).to.deep.equal([4n]);
    });

    it("writes nothing for a message added and acked in one write", async () => {
      await store.commit({ outboxAdd: [{ peer: "p", message: 0 }] });
      const before = store.stats.writeBytes;
      const big = "x".repeat(10_000);
      const added = store.commit({ outboxAdd: [{ peer: "p", message: big }] });
      store.ackLater("p", 2n);
      await Promise.all([added, store.commit({})]);
      expect(store.stats.writeBytes - before).to.be.lessThan(200);
      expect((await store.listOutbox("p")).map((e) => e.seq)).to.deep.equal([1n]);
    });

    it("lists the outbox in numeric seq order per peer, past 0x10 and 0x100", async () => {
      // Peers whose names contain the key separator and the escape char must stay apart.
      const peers = ["a", "a!b", "a%21b", "b"];
      const expected = new Map<string, bigint[]>(peers.map((p) => [p, []]));
      for (let i = 0; i < 400; i++) {
        const peer = peers[Math.max(0, (i % 10) - 6)]!;
        const { outboxSeqs } = await store.commit({ outboxAdd: [{ peer, message: { i } }] });
        expected.get(peer)!.push(outboxSeqs[0]!);
      }
      for (const peer of peers) {
        const seqs = expected.get(peer)!;
        expect(seqs).to.deep.equal(seqs.map((_, i) => BigInt(i + 1)));
        const listed = await store.listOutbox<{ i: number }>(peer);
        expect(listed.map((e) => e.peer)).to.deep.equal(seqs.map(() => peer));
        expect(listed.map((e) => e.seq)).to.deep.equal(seqs);
        const is = listed.map((e) => e.message.i);
        expect(is).to.deep.equal([...is].sort((x, y) => x - y));
      }
      expect(expected.get("a")!.length).to.be.greaterThan(0x100);

      const all = await store.listOutbox();
      expect(all.length).to.equal(400);
      for (const peer of peers) {
        expect(all.filter((e) => e.peer === peer).map((e) => e.seq)).to.deep.equal(expected.get(peer));
      }
      // Grouped: each peer's entries are contiguous.
      const runs = all.map((e) => e.peer).filter((p, i, xs) => i === 0 || xs[i - 1] !== p);
      expect(new Set(runs).size).to.equal(runs.length);
    });

    it("writes a key that several commits of one write change once, with the last value", async () => {
      const record = (nonce: bigint) => ({ channelId: "hot", record: channel("hot", nonce) });
      await store.commit({ channels: [record(0n)], meta: [{ key: "gone", value: 1 }], outboxAdd: [{ peer: "p", message: { n: 0 } }] });
      const before = store.stats;
      const oneRecord = encode(channel("hot", 99n)).length + "c!hot".length;
      const results = await Promise.all([
        ...Array.from({ length: 50 }, (_, i) => store.commit({ channels: [record(BigInt(i + 1))] })),
        store.commit({ outboxAdd: [{ peer: "p", message: { n: 1 } }] }),
        store.commit({ deleteMeta: ["gone"], outboxAck: [{ peer: "p", seq: 1n }] }),
        store.commit({ channels: [record(99n)], outboxAck: [{ peer: "p", seq: 2n }] }),
      ]);
      expect(results).to.have.length(53);
      const after = store.stats;
      expect(after.commits - before.commits).to.equal(53);
      expect(after.writes - before.writes).to.equal(1);
      // One channel record, two outbox deletes, a meta delete and the outbox counter: not 51 records.
      expect(after.writeBytes - before.writeBytes).to.be.lessThan(oneRecord + 200);
      expect(await store.getChannel("hot")).to.deep.equal(channel("hot", 99n));
      expect(await store.getMeta("gone")).to.equal(undefined);
      expect(await store.listOutbox("p")).to.deep.equal([]);
    });

    it("makes 200 concurrent commits durable, with unique seqs in call order", async () => {
      const N = 200;
      const pending = Array.from({ length: N }, (_, i) =>
        store.commit({
          channels: [{ channelId: `ch${i}`, record: channel(`ch${i}`, BigInt(i)) }],
          outboxAdd: [{ peer: `peer${i % 3}`, message: { i } }],
        }),
      );
      const results = await Promise.all(pending);
      // Issued in one tick, so they share a single write.
      expect(store.stats).to.deep.include({ commits: N, writes: 1 });
      expect(store.stats.writeBytes).to.be.greaterThan(N * 50);

      const seqsByPeer = new Map<string, bigint[]>();
      results.forEach((r, i) => {
        expect(r.outboxSeqs.length).to.equal(1);
        const list = seqsByPeer.get(`peer${i % 3}`) ?? [];
        list.push(r.outboxSeqs[0]!);
        seqsByPeer.set(`peer${i % 3}`, list);
      });
      for (const seqs of seqsByPeer.values()) expect(seqs).to.deep.equal(seqs.map((_, i) => BigInt(i + 1)));

      await restart();
      const channels = await store.listChannels<ChannelRecord>();
      expect(channels.length).to.equal(N);
      for (let i = 0; i < N; i++) expect(await store.getChannel(`ch${i}`)).to.deep.equal(channel(`ch${i}`, BigInt(i)));
      for (const [peer, seqs] of seqsByPeer) {
        const listed = await store.listOutbox<{ i: number }>(peer);
        expect(listed.map((e) => e.seq)).to.deep.equal(seqs);
        expect(listed.map((e) => e.message.i % 3)).to.deep.equal(seqs.map(() => Number(peer.slice(4))));
      }
      // The counters were persisted with the coalesced writes.
      expect((await store.commit({ outboxAdd: [{ peer: "peer0", message: null }] })).outboxSeqs).to.deep.equal([
        BigInt(seqsByPeer.get("peer0")!.length + 1),
      ]);
    });

    it("close waits for commits already accepted", async () => {
      const pending = Array.from({ length: 50 }, (_, i) => store.commit({ meta: [{ key: `k${i}`, value: i }] }));
      await store.close();
      await Promise.all(pending);
      await store.open();
      expect(await store.getMeta("k49")).to.equal(49);
    });

    it("returns the same data from a new instance after close", async () => {
      await store.commit({
        channels: [{ channelId: "a", record: channel("a", 7n) }],
        payments: [{ paymentId: "p", record: { n: 1n } }],
        secrets: [{ secretHash: "h", secret: "s" }],
        meta: [{ key: "m", value: [1n, "$2"] }],
        outboxAdd: [{ peer: "x", message: "hello" }],
      });
      await restart();
      expect(await store.getChannel("a")).to.deep.equal(channel("a", 7n));
      expect(await store.getPayment("p")).to.deep.equal({ n: 1n });
      expect(await store.getSecret("h")).to.equal("s");
      expect(await store.getMeta("m")).to.deep.equal([1n, "$2"]);
      expect(await store.listOutbox()).to.deep.equal([{ peer: "x", seq: 1n, message: "hello" }]);
    });

    it("keeps one key per channel however often it is written (O(1) in payments)", async () => {
      for (let i = 0; i < 5000; i++) {
        await store.commit({
          channels: [{ channelId: "hot", record: channel("hot", BigInt(i)) }],
          payments: [{ paymentId: `pay${i}`, record: { i } }],
          deletePayments: i > 0 ? [`pay${i - 1}`] : [],
        });
      }
      expect(store.stats.writes).to.equal(5000);
      expect(await store.getChannel("hot")).to.deep.equal(channel("hot", 4999n));
      await store.close();
      const keys = await disk.keys();
      expect(keys.filter((k) => k.startsWith("c!"))).to.deep.equal(["c!hot"]);
      expect(keys).to.deep.equal(["c!hot", "p!pay4999"]);
      await store.open();
    });

    it("stores a channel's config and funding apart, rewritten only when either changes", async () => {
      const config = { channelId: "0xa1", me: 1 };
      const funding = { deposit1: 5n, deposit2: 0n };
      const v1 = { config, funding, status: "open", latest: { nonce: 1n } };
      const v2 = { ...v1, latest: { nonce: 2n } };
      const funded = { ...v2, funding: { deposit1: 7n, deposit2: 0n }, latest: { nonce: 3n } };
      const bytesOf = async (write: () => Promise<unknown>): Promise<number> => {
        const before = store.stats.writeBytes;
        await write();
        return store.stats.writeBytes - before;
      };
      const first = await bytesOf(() => store.commit({ channels: [{ channelId: "x", record: v1 }] }));
      const update = await bytesOf(() => store.commit({ channels: [{ channelId: "x", record: v2 }] }));
      // The update writes the rest of the record only.
      expect(first - update).to.equal(encodeBytes({ config, funding }).length + "f!x".length);
      expect(await store.getChannel("x")).to.deep.equal(v2);
      const changed = await bytesOf(() => store.commit({ channels: [{ channelId: "x", record: funded }] }));
      expect(changed).to.equal(first);
      // A commit with an invalid value writes neither part and changes what later commits write in no way.
      const bad = { ...funded, funding: { deposit1: () => 1 } };
      await rejection(store.commit({ channels: [{ channelId: "x", record: bad }] }));
      expect(await bytesOf(() => store.commit({ channels: [{ channelId: "x", record: { ...funded, latest: { nonce: 4n } } }] }))).to.equal(update);
      for (let pass = 0; pass < 2; pass++) {
        const read = await store.getChannel<typeof funded>("x");
        expect(read).to.deep.equal({ ...funded, latest: { nonce: 4n } });
        expect(Object.keys(read!)).to.deep.equal(["config", "funding", "status", "latest"]);
        expect(await store.listChannels()).to.deep.equal([{ ...funded, latest: { nonce: 4n } }]);
        await restart();
      }
      // After a restart the first write of a channel carries its fixed parts again.
      expect(await bytesOf(() => store.commit({ channels: [{ channelId: "x", record: { ...funded, latest: { nonce: 5n } } }] }))).to.equal(first);
      await store.close();
      expect((await disk.keys()).sort()).to.deep.equal(["c!x", "f!x"]);
      await store.open();
    });

    it("reads a channel record stored whole, with or without a config, and splits it at its next write", async () => {
      const whole = { config: { channelId: "0xb2" }, funding: { credit: 9n }, status: "open" };
      await store.close();
      await disk.putRaw("c!w", encode(whole));
      await disk.putRaw("c!plain", encode(channel("plain", 1n)));
      await store.open();
      expect(await store.getChannel("w")).to.deep.equal(whole);
      expect(await store.listChannels()).to.deep.equal([channel("plain", 1n), whole]);
      await store.commit({ channels: [{ channelId: "w", record: { ...whole, status: "closing" } }] });
      expect(await store.getChannel("w")).to.deep.equal({ ...whole, status: "closing" });
      // A record without the parts written over a split one: nothing of the old parts is joined to it.
      await store.commit({ channels: [{ channelId: "w", record: channel("w", 2n) }] });
      expect(await store.getChannel("w")).to.deep.equal(channel("w", 2n));
      await restart();
      expect(await store.listChannels()).to.deep.equal([channel("plain", 1n), channel("w", 2n)]);
    });

    it("names a stored config and funding record it cannot use", async () => {
      await store.commit({ channels: [{ channelId: "x", record: { config: { id: 1 }, funding: { f: 2n }, status: "open" } }] });
      await store.close();
      await disk.putRaw("f!x", encode([1, 2]));
      await store.open();
      const err = await rejection(store.getChannel("x"));
      expect(err).to.be.instanceOf(CorruptValueError);
      expect((err as CorruptValueError).key).to.equal("f!x");
    });

    it("rejects every call on a closed store with a clear error", async () => {
      await store.close();
      await store.close(); // idempotent
      const calls: [string, () => Promise<unknown>][] = [
        ["getChannel", () => store.getChannel("a")],
        ["listChannels", () => store.listChannels()],
        ["getPayment", () => store.getPayment("a")],
        ["getSecret", () => store.getSecret("a")],
        ["listOutbox", () => store.listOutbox()],
        ["getMeta", () => store.getMeta("a")],
        ["listMeta", () => store.listMeta("a")],
        ["commit", () => store.commit({ meta: [{ key: "a", value: 1 }] })],
      ];
      for (const [what, call] of calls) {
        const err = await rejection(call());
        expect(err, what).to.be.instanceOf(StoreClosedError);
        expect(err.message, what).to.match(/is not open: it is closed/);
      }
      const fresh = disk.store();
      expect((await rejection(fresh.getChannel("a"))).message).to.match(/not open/);
      await store.open();
      expect((await rejection(store.open())).message).to.match(/already open/);
    });

    it("names the key of a value it cannot decode", async () => {
      await store.commit({ channels: [{ channelId: "ok", record: 1n }] });
      await store.close();
      await disk.putRaw("c!broken", "{not json");
      await disk.putRaw("p!pay", '"$12x"');
      await disk.putRaw("s!h", "5");
      await store.open();

      const cases: [Promise<unknown>, string][] = [
        [store.getChannel("broken"), "c!broken"],
        [store.listChannels(), "c!broken"],
        [store.getPayment("pay"), "p!pay"],
        [store.getSecret("h"), "s!h"],
      ];
      for (const [call, key] of cases) {
        const err = await rejection(call);
        expect(err).to.be.instanceOf(CorruptValueError);
        expect((err as CorruptValueError).key).to.equal(key);
        expect(err.message).to.contain(`corrupt value at key "${key}"`);
      }
      expect(await store.getChannel("ok")).to.equal(1n);
    });

    it("refuses to open over a corrupt outbox counter", async () => {
      await store.close();
      await disk.putRaw("q!p", '"nope"');
      const err = await rejection(store.open());
      expect(err).to.be.instanceOf(CorruptValueError);
      expect(err.message).to.contain('"q!p"');
      await disk.putRaw("q!p", '"$9"');
      await store.open();
      expect((await store.commit({ outboxAdd: [{ peer: "p", message: 0 }] })).outboxSeqs).to.deep.equal([9n]);
    });
  });
}

storeSuite("LevelStore", levelDisk);
storeSuite("MemoryStore", memoryDisk);

describe("LevelStore specifics", () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "starling-store-"));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("reports a clear error when the directory is locked by another open store", async () => {
    const a = new LevelStore(dir);
    await a.open();
    try {
      const err = await rejection(new LevelStore(dir).open());
      expect(err.message).to.contain(dir).and.to.match(/cannot open/);
    } finally {
      await a.close();
    }
  });

  it("reports its level-0 file count while open (the compaction backlog the daemon exports)", async () => {
    const store = new LevelStore(dir);
    expect(store.level0Files()).to.equal(null);
    await store.open();
    expect(store.level0Files()).to.equal(0);
    // More than one 4 MiB write buffer: LevelDB flushes a table (to level 0, or lower down when
    // nothing overlaps it), so the count stays a small whole number.
    const value = "v".repeat(64 * 1024);
    for (let i = 0; i < 80; i++) await store.commit({ meta: [{ key: `k${i}`, value }] });
    const files = store.level0Files();
    expect(Number.isInteger(files) && files! >= 0 && files! < 12, `level-0 files: ${files}`).to.equal(true);
    await store.close();
    expect(store.level0Files()).to.equal(null);
  });

  it("writes with sync: true", async () => {
    const store: Store = new LevelStore(dir, { sync: true });
    await store.open();
    const seqs = await Promise.all(Array.from({ length: 20 }, (_, i) => store.commit({ outboxAdd: [{ peer: "p", message: i }] })));
    expect(seqs.map((r) => r.outboxSeqs[0])).to.deep.equal(seqs.map((_, i) => BigInt(i + 1)));
    await store.close();
    const again = new LevelStore(dir);
    await again.open();
    expect((await again.listOutbox()).length).to.equal(20);
    await again.close();
  });
});

describe("a failed write and the channels' config and funding records", () => {
  /** A store's data that refuses the first put of the next write, after running `during` (as if it came in while that write was in flight). */
  class FailingData extends Map<string, Uint8Array> {
    failNext: (() => void) | null = null;
    override set(key: string, value: Uint8Array): this {
      const during = this.failNext;
      if (during) {
        this.failNext = null;
        during();
        throw new Error("disk full");
      }
      return super.set(key, value);
    }
  }

  it("writes them with the next group when the write that carried them failed", async () => {
    const data = new FailingData();
    const store = new MemoryStore(data);
    await store.open();
    try {
      const config = { channelId: "0xc3" };
      const funding = { deposit1: 1n };
      const v = (nonce: bigint) => ({ config, funding, latest: { nonce } });
      let later: Promise<unknown> | null = null;
      // The first write of the channel (with its parts) fails; an update of the same channel,
      // committed while it was in flight, went to the next group without the parts.
      data.failNext = () => {
        later = store.commit({ channels: [{ channelId: "x", record: v(2n) }] });
      };
      const err = await rejection(store.commit({ channels: [{ channelId: "x", record: v(1n) }] }));
      expect(err.message).to.match(/write failed/);
      await later;
      expect(await store.getChannel("x")).to.deep.equal(v(2n));
      expect([...data.keys()].sort()).to.deep.equal(["c!x", "f!x"]);
    } finally {
      await store.close();
    }
  });
});
