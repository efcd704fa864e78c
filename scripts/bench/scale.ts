/**
 * A hub store with many user channels, made without opening them on chain: every record is a real
 * ChannelData (newChannel) that went through one real signed update (the hub pays the user one
 * base unit: Propose, Countersign) and the hub's explicit Revoke of the initial state, as a hub's
 * record looks once the channel is idle. A sample of channels gets many more updates, to show that
 * a channel's record does not grow with its payments.
 */
import { keccak256 } from "../../src/protocol/keccak.js";
import { DEFAULT_POLICY, newChannel, transition, type ChannelData, type ChannelMessage, type Deps, type Op } from "../../src/protocol/channel.js";
import { bytesToHex, normalizeAddress, orderParticipants } from "../../src/protocol/eip712.js";
import type { Address, Domain, Hex } from "../../src/protocol/types.js";
import type { Secp256k1Backend, Signer } from "../../src/signer/index.js";
import { encodeBytes, LevelStore } from "../../src/store/index.js";

const utf8 = new TextEncoder();
const seed = (label: string): Uint8Array => keccak256(utf8.encode(label));

function step(c: ChannelData, input: Parameters<typeof transition>[1], deps: Deps): { c: ChannelData; sent: ChannelMessage[] } {
  const r = transition(c, input, deps);
  if (!r.ok) throw new Error(`synthetic channel: ${r.error.code}: ${r.error.message}`);
  return { c: r.channel, sent: r.effects.flatMap((e) => (e.type === "send" ? [e.message] : [])) };
}

/** One update: the hub pays the user `amount`; returns both sides' new records. */
function update(hub: ChannelData, user: ChannelData, hubDeps: Deps, userDeps: Deps, n: number): [ChannelData, ChannelData] {
  const ops: Op[] = [{ type: "pay", amount: 1n, paymentId: bytesToHex(seed(`${hub.config.channelId}:${n}`)) }];
  const p = step(hub, { type: "propose", ops }, hubDeps);
  const c = step(user, { type: "receive", message: p.sent[0]! }, userDeps);
  const done = step(p.c, { type: "receive", message: c.sent[0]! }, hubDeps);
  return [done.c, c.c];
}

/** The hub revokes the state before its latest, as its tick does once the channel is idle. */
function revoke(hub: ChannelData, user: ChannelData, hubDeps: Deps, userDeps: Deps): [ChannelData, ChannelData] {
  const r = step(hub, { type: "revoke" }, hubDeps);
  const u = r.sent[0] ? step(user, { type: "receive", message: r.sent[0] }, userDeps).c : user;
  return [r.c, u];
}

export interface SyntheticResult {
  channels: number;
  /** Encoded bytes of a hub channel record after 1 update, averaged over all channels. */
  recordBytes: number;
  /** Record bytes of the sample after n updates each. */
  growth: { updates: number; recordBytes: number }[];
  buildMs: number;
}

export async function buildSyntheticHubStore(opts: {
  dbDir: string;
  hubKey: Uint8Array;
  domain: Domain;
  channels: number;
  sample: number;
  backend: Secp256k1Backend;
  /** Chain block the hub's event scanner resumes after (nothing to adopt from before). */
  cursorBlock: number;
  progress?: (done: number) => void;
}): Promise<SyntheticResult> {
  const t0 = performance.now();
  const { backend } = opts;
  const hubSigner = backend.createSigner(opts.hubKey);
  const hub = normalizeAddress(hubSigner.address);
  const now = BigInt(Math.floor(Date.now() / 1000));
  const deps = (signer: Signer): Deps => ({ signer, verifier: backend.verifier, now, policy: DEFAULT_POLICY });
  const hubDeps = deps(hubSigner);
  const store = new LevelStore(opts.dbDir);
  await store.open();
  let recordBytes = 0;
  const growth = new Map<number, number>();
  const checkpoints = [1, 10, 100];
  try {
    await store.commit({ meta: [{ key: "chainCursor", value: opts.cursorBlock }] });
    const CHUNK = 500;
    for (let start = 0; start < opts.channels; start += CHUNK) {
      const records: { channelId: string; record: unknown }[] = [];
      for (let i = start; i < Math.min(opts.channels, start + CHUNK); i++) {
        const userSigner = backend.createSigner(seed(`starling-bench-scale-user-${i}`));
        const user = normalizeAddress(userSigner.address) as Address;
        const userDeps = deps(userSigner);
        const [p1, p2] = orderParticipants(hub, user);
        const hubSide = p1 === hub ? 1 : 2;
        const channelId = bytesToHex(seed(`starling-bench-scale-channel-${i}`)) as Hex;
        const funding = { deposit1: 0n, deposit2: 0n, withdrawn1: 0n, withdrawn2: 0n, credit: 10n ** 28n, creditSide: hubSide } as const;
        let h = newChannel({ channelId, domain: opts.domain, participant1: p1, participant2: p2, me: hubSide }, funding);
        let u = newChannel({ channelId, domain: opts.domain, participant1: p1, participant2: p2, me: hubSide === 1 ? 2 : 1 }, funding);
        const rounds = i < opts.sample ? checkpoints[checkpoints.length - 1]! : 1;
        for (let n = 1; n <= rounds; n++) {
          [h, u] = update(h, u, hubDeps, userDeps, n);
          if (i < opts.sample && checkpoints.includes(n)) {
            const [idle] = revoke(h, u, hubDeps, userDeps);
            growth.set(n, (growth.get(n) ?? 0) + encodeBytes(idle).length);
          }
        }
        [h, u] = revoke(h, u, hubDeps, userDeps);
        recordBytes += encodeBytes(h).length;
        records.push({ channelId, record: h });
      }
      await store.commit({ channels: records });
      opts.progress?.(Math.min(opts.channels, start + CHUNK));
    }
  } finally {
    await store.close();
  }
  return {
    channels: opts.channels,
    recordBytes: recordBytes / opts.channels,
    growth: checkpoints.map((updates) => ({ updates, recordBytes: (growth.get(updates) ?? 0) / Math.max(1, opts.sample) })),
    buildMs: performance.now() - t0,
  };
}
