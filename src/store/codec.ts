/**
 * JSON codec for stored records: plain data plus `bigint`.
 *
 * A bigint is written as the JSON string "$" + its decimal digits ("$-12" for -12n). A string
 * that itself starts with "$" is written with one more "$" in front ("$5" becomes "$$5"), so
 * every stored string starting with "$" is either "$$…" (a string) or "$-?digits" (a bigint)
 * and the two can never be confused. Strings not starting with "$" are stored unchanged, which
 * keeps the common case free and the stored JSON readable.
 *
 * Accepted: null, booleans, finite numbers, strings, bigints, arrays and plain objects (prototype
 * Object.prototype or null) of those, and {@link Encoded} values. Object properties whose value is `undefined` are left out,
 * as JSON.stringify does, so optional fields work; -0 is stored as 0. Everything else throws an
 * {@link EncodeError} naming the path of the offending value: undefined in an array or at the
 * top, functions, symbols, NaN and ±Infinity, class instances (Date, Map, …), typed arrays and
 * cycles.
 */

const DOLLAR = 0x24; // "$"
const BIGINT_BODY = /^-?(0|[1-9][0-9]*)$/;

/** A value that can't be encoded; `path` locates it, e.g. `$.locks[2].amount`. */
export class EncodeError extends Error {
  readonly path: (string | number)[];
  private readonly reason: string;

  constructor(reason: string, path: (string | number)[] = []) {
    super(reason);
    this.name = "EncodeError";
    this.reason = reason;
    this.path = path;
    this.message = this.describe();
  }

  /** Called while unwinding so the path is built only on failure. */
  prepend(step: string | number): this {
    this.path.unshift(step);
    this.message = this.describe();
    return this;
  }

  private describe(): string {
    let at = "$";
    for (const step of this.path) {
      at += typeof step === "number" ? `[${step}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(step) ? `.${step}` : `[${JSON.stringify(step)}]`;
    }
    return `cannot encode ${this.reason} at ${at}`;
  }
}

/** Text that isn't a value written by {@link encode}. */
export class DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DecodeError";
  }
}

/**
 * Encodes `value` to the UTF-8 bytes of its JSON text; throws {@link EncodeError} on anything
 * but plain data. This is the encoder: stored values and wire frames are these bytes.
 *
 * The text is written byte by byte into one reused buffer and copied out once. Built as a
 * string by concatenation instead, a record was a tree of short-lived pieces that the young
 * generation had to collect (about a third of a node's allocation under load), and LevelDB's
 * binding and the wire's TextEncoder then converted it to UTF-8 again (docs/performance.md,
 * Ninth round).
 */
export function encodeBytes(value: unknown): Uint8Array {
  if (value === undefined) throw new EncodeError("undefined");
  if (value instanceof Encoded) return value.bytes;
  if (writing) throw new EncodeError("a value whose encoding encodes another (a getter?)");
  writing = true;
  at = 0;
  try {
    writeValue(value, []);
    const bytes = Buffer.allocUnsafe(at);
    out.copy(bytes, 0, 0, at);
    return bytes;
  } finally {
    writing = false;
    // One huge record should not pin a huge buffer.
    if (out.length > MAX_KEPT_BUFFER) out = Buffer.allocUnsafe(INITIAL_BUFFER);
  }
}

/**
 * A value encoded once, written as those bytes wherever it is encoded again: a message is stored
 * in the outbox and then sent inside a frame, and is encoded only for the first.
 */
export class Encoded {
  private constructor(readonly bytes: Uint8Array) {}

  /** Throws {@link EncodeError} as {@link encodeBytes} does. */
  static of(value: unknown): Encoded {
    return new Encoded(encodeBytes(value));
  }
}

/** Encodes `value` to JSON text (the text of {@link encodeBytes}). */
export function encode(value: unknown): string {
  return strictUtf8.decode(encodeBytes(value));
}

/** Decodes text produced by {@link encode}; throws {@link DecodeError} if it isn't such text. */
export function decode(text: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new DecodeError(`not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  return revive(parsed);
}

/** Decodes bytes produced by {@link encodeBytes}; throws {@link DecodeError} if they aren't such bytes. */
export function decodeBytes(bytes: Uint8Array): unknown {
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw new DecodeError("not UTF-8");
  }
  return decode(text);
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

const INITIAL_BUFFER = 64 * 1024;
const MAX_KEPT_BUFFER = 4 * 1024 * 1024;
let out = Buffer.allocUnsafe(INITIAL_BUFFER);
let at = 0;
let writing = false;

/** Makes room for `n` more bytes. */
function reserve(n: number): void {
  if (at + n <= out.length) return;
  let size = out.length * 2;
  while (size < at + n) size *= 2;
  const bigger = Buffer.allocUnsafe(size);
  out.copy(bigger, 0, 0, at);
  out = bigger;
}

/** Writes `s`, known to be ASCII. */
function writeAscii(s: string): void {
  const n = s.length;
  reserve(n);
  const b = out;
  let p = at;
  for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
  at = p;
}

/** Writes a short constant: one byte. */
function writeByte(c: number): void {
  reserve(1);
  out[at++] = c;
}

/** A character a JSON string cannot hold as it is, or one outside printable ASCII. */
const NOT_PLAIN = /[^\x20\x21\x23-\x5b\x5d-\x7e]/;
/**
 * From this length a string is checked by the regular expression and copied by Buffer's native
 * latin1 write (about twice as fast as the loop for a 132-character signature; slower for short
 * strings, which pay the call overheads).
 */
const NATIVE_FROM = 24;

// Strings of printable ASCII without quote or backslash (hex, addresses, names: nearly all that
// is stored) are copied as they are; any other goes through JSON.stringify and UTF-8.
function writeString(s: string): void {
  const n = s.length;
  const dollar = n > 0 && s.charCodeAt(0) === DOLLAR;
  if (n >= NATIVE_FROM) {
    if (NOT_PLAIN.test(s)) return writeEscaped(dollar ? "$" + s : s);
    reserve(n + 3);
    out[at++] = 0x22;
    if (dollar) out[at++] = DOLLAR;
    at += out.write(s, at, "latin1");
    out[at++] = 0x22;
    return;
  }
  reserve(n + 3);
  const b = out;
  let p = at;
  b[p++] = 0x22;
  if (dollar) b[p++] = DOLLAR;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) {
      writeEscaped(dollar ? "$" + s : s);
      return;
    }
    b[p++] = c;
  }
  b[p++] = 0x22;
  at = p;
}

function writeEscaped(s: string): void {
  const json = JSON.stringify(s);
  reserve(json.length * 3);
  at += utf8.encodeInto(json, out.subarray(at)).written;
}

// Object keys repeat from record to record: quote and encode each once (with its colon).
const keyBytes = new Map<string, Uint8Array>();
function writeKey(key: string): void {
  let k = keyBytes.get(key);
  if (k === undefined) {
    k = utf8.encode(JSON.stringify(key) + ":");
    if (keyBytes.size < 10_000) keyBytes.set(key, k);
  }
  const n = k.length;
  reserve(n);
  const b = out;
  let p = at;
  for (let i = 0; i < n; i++) b[p++] = k[i]!;
  at = p;
}

function writeEncoded(bytes: Uint8Array): void {
  reserve(bytes.length);
  out.set(bytes, at);
  at += bytes.length;
}

// `ancestors` holds the objects being encoded above this one, to report cycles instead of
// overflowing the stack; records are shallow, so a linear scan is cheaper than a Set.
function writeValue(value: unknown, ancestors: object[]): void {
  switch (typeof value) {
    case "string":
      return writeString(value);
    case "number":
      if (!Number.isFinite(value)) throw new EncodeError(String(value));
      return writeAscii(String(value));
    case "boolean":
      return writeAscii(value ? "true" : "false");
    case "bigint":
      writeByte(0x22);
      writeByte(DOLLAR);
      writeAscii(value.toString());
      return writeByte(0x22);
    case "object":
      if (value === null) return writeAscii("null");
      return writeObject(value, ancestors);
    default:
      throw new EncodeError(typeof value);
  }
}

function writeObject(value: object, ancestors: object[]): void {
  if (ancestors.includes(value)) throw new EncodeError("a cyclic reference");
  const proto: unknown = Object.getPrototypeOf(value);
  if (Array.isArray(value)) {
    if (proto !== Array.prototype) throw new EncodeError("an Array subclass instance");
    ancestors.push(value);
    writeByte(0x5b);
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (i > 0) writeByte(0x2c);
      try {
        if (item === undefined) throw new EncodeError("undefined (array element)");
        writeValue(item, ancestors);
      } catch (err) {
        throw err instanceof EncodeError ? err.prepend(i) : err;
      }
    }
    ancestors.pop();
    return writeByte(0x5d);
  }
  if (proto !== Object.prototype && proto !== null) {
    if (value instanceof Encoded) return writeEncoded(value.bytes);
    if (ArrayBuffer.isView(value)) {
      throw new EncodeError(`a ${value.constructor.name} (hex-encode bytes to a string first)`);
    }
    const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
    throw new EncodeError(`an instance of ${typeof name === "string" && name !== "" ? name : "a class"} (only plain objects)`);
  }
  ancestors.push(value);
  writeByte(0x7b);
  let first = true;
  // for-in walks V8's cached key list without copying it (Object.keys allocates an array per
  // object: ~5% of a node's allocation under load). It also yields inherited enumerable keys,
  // which only a polluted Object.prototype has (the prototype is that or null here): then the
  // own keys are listed instead.
  const keys = prototypeHasEnumerableKeys() ? Object.keys(value) : null;
  if (keys !== null) {
    for (const key of keys) first = writeEntry(value, key, first, ancestors);
  } else {
    for (const key in value) first = writeEntry(value, key, first, ancestors);
  }
  ancestors.pop();
  return writeByte(0x7d);
}

function prototypeHasEnumerableKeys(): boolean {
  for (const _ in Object.prototype) return true;
  return false;
}

/** Writes `key` and its value unless the value is undefined; returns whether the object is still empty. */
function writeEntry(value: object, key: string, first: boolean, ancestors: object[]): boolean {
  const item: unknown = (value as Record<string, unknown>)[key];
  if (item === undefined) return first;
  if (!first) writeByte(0x2c);
  writeKey(key);
  try {
    writeValue(item, ancestors);
  } catch (err) {
    throw err instanceof EncodeError ? err.prepend(key) : err;
  }
  return false;
}

function reviveString(s: string): string | bigint {
  if (s.charCodeAt(0) !== DOLLAR) return s;
  if (s.charCodeAt(1) === DOLLAR) return s.slice(1);
  const body = s.slice(1);
  if (!BIGINT_BODY.test(body)) throw new DecodeError(`bad bigint ${JSON.stringify(s)}`);
  return BigInt(body);
}

// JSON.parse returns a fresh tree, so converting in place is safe and avoids copying.
function revive(value: unknown): unknown {
  if (typeof value === "string") return reviveString(value);
  if (typeof value !== "object" || value === null) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (typeof item === "string") {
        if (item.charCodeAt(0) === DOLLAR) value[i] = reviveString(item);
      } else if (typeof item === "object" && item !== null) {
        revive(item);
      }
    }
    return value;
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    const item = record[key];
    if (typeof item === "string") {
      if (item.charCodeAt(0) === DOLLAR) setOwn(record, key, reviveString(item));
    } else if (typeof item === "object" && item !== null) {
      revive(item);
    }
  }
  return value;
}

// Plain assignment to "__proto__" would hit the prototype setter rather than the own property
// JSON.parse created.
function setOwn(record: Record<string, unknown>, key: string, item: unknown): void {
  if (key === "__proto__") Object.defineProperty(record, key, { value: item, writable: true, enumerable: true, configurable: true });
  else record[key] = item;
}
