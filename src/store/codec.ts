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
 * Object.prototype or null) of those. Object properties whose value is `undefined` are left out,
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

/** Encodes `value` to JSON text; throws {@link EncodeError} on anything but plain data. */
export function encode(value: unknown): string {
  if (value === undefined) throw new EncodeError("undefined");
  const text = encodeValue(value, []);
  // Built by concatenation, the text is a tree of pieces in V8 until something flattens it. A
  // record waits in a commit group while other work runs, and each young-generation collection
  // then copies every piece; LevelDB's binding later walks them one by one. charCodeAt flattens
  // it into one string now: encoding a group of 12,000 records and handing it to LevelDB takes
  // ~8.5 instead of ~19 microseconds per record (scripts/bench-store.ts).
  text.charCodeAt(0);
  return text;
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

// Strings of printable ASCII without quote or backslash (hex, addresses, names: nearly all that
// is stored) need no escaping; others go through JSON.stringify.
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;
function encodeString(s: string): string {
  const t = s.charCodeAt(0) === DOLLAR ? "$" + s : s;
  return PLAIN.test(t) ? '"' + t + '"' : JSON.stringify(t);
}

// Object keys repeat from record to record: quote each once.
const quotedKeys = new Map<string, string>();
function quoteKey(key: string): string {
  let q = quotedKeys.get(key);
  if (q === undefined) {
    q = JSON.stringify(key);
    if (quotedKeys.size < 10_000) quotedKeys.set(key, q);
  }
  return q;
}

// `ancestors` holds the objects being encoded above this one, to report cycles instead of
// overflowing the stack; records are shallow, so a linear scan is cheaper than a Set.
function encodeValue(value: unknown, ancestors: object[]): string {
  switch (typeof value) {
    case "string":
      return encodeString(value);
    case "number":
      if (!Number.isFinite(value)) throw new EncodeError(String(value));
      return String(value);
    case "boolean":
      return value ? "true" : "false";
    case "bigint":
      return `"$${value.toString()}"`;
    case "object":
      if (value === null) return "null";
      return encodeObject(value, ancestors);
    default:
      throw new EncodeError(typeof value);
  }
}

function encodeObject(value: object, ancestors: object[]): string {
  if (ancestors.includes(value)) throw new EncodeError("a cyclic reference");
  const proto: unknown = Object.getPrototypeOf(value);
  if (Array.isArray(value)) {
    if (proto !== Array.prototype) throw new EncodeError("an Array subclass instance");
    ancestors.push(value);
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (i > 0) out += ",";
      try {
        if (item === undefined) throw new EncodeError("undefined (array element)");
        out += encodeValue(item, ancestors);
      } catch (err) {
        throw err instanceof EncodeError ? err.prepend(i) : err;
      }
    }
    ancestors.pop();
    return out + "]";
  }
  if (proto !== Object.prototype && proto !== null) {
    if (ArrayBuffer.isView(value)) {
      throw new EncodeError(`a ${value.constructor.name} (hex-encode bytes to a string first)`);
    }
    const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
    throw new EncodeError(`an instance of ${typeof name === "string" && name !== "" ? name : "a class"} (only plain objects)`);
  }
  ancestors.push(value);
  let out = "{";
  let first = true;
  for (const key of Object.keys(value)) {
    const item: unknown = (value as Record<string, unknown>)[key];
    if (item === undefined) continue;
    try {
      const encoded = encodeValue(item, ancestors);
      out += (first ? "" : ",") + quoteKey(key) + ":" + encoded;
    } catch (err) {
      throw err instanceof EncodeError ? err.prepend(key) : err;
    }
    first = false;
  }
  ancestors.pop();
  return out + "}";
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
