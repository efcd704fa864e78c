import { z } from "zod";
import {
  authParamsSchema,
  authResultSchema,
  subscribeParamsSchema,
  subscribeResultSchema,
  unsubscribeParamsSchema,
  unsubscribeResultSchema,
} from "./schemas.js";

/** Params are always an object schema so by-position arrays can be mapped onto its keys. */
export type ParamsSchema = z.ZodObject<z.core.$ZodShape, z.core.$ZodObjectConfig>;

export interface RpcContext {
  /** Stable for the life of one WebSocket connection. */
  readonly connectionId: string;
  readonly remoteAddress: string | undefined;
  /** Aborted when the connection closes, so long-running handlers can stop early. */
  readonly signal: AbortSignal;
}

export interface MethodSpec<N extends string, P extends ParamsSchema, R extends z.ZodType> {
  name: N;
  params: P;
  /** Describes the result in its parsed form; its input form is what goes on the wire. */
  result?: R;
  description: string;
  // Method syntax keeps handlers bivariant so concrete definitions fit AnyMethodDefinition.
  handler(params: z.output<P>, ctx: RpcContext): Promise<z.output<R>>;
}

export interface MethodDefinition<
  N extends string = string,
  P extends ParamsSchema = ParamsSchema,
  R extends z.ZodType = z.ZodType,
> extends MethodSpec<N, P, R> {
  readonly kind: "method";
  /** Declaration order of params keys, used for by-position calls. */
  readonly paramNames: readonly string[];
  /** `params` with unknown keys rejected, unless the schema chose loose/catchall itself. */
  readonly paramsValidator: ParamsSchema;
}

export type AnyMethodDefinition = MethodDefinition<string, ParamsSchema, z.ZodType>;

export interface EventDefinition<N extends string = string, S extends z.ZodType = z.ZodType> {
  readonly kind: "event";
  readonly name: N;
  /** Validates the wire form of published payloads; object schemas also validate filters. */
  readonly payload: S;
  readonly description: string;
}

export type AnyEventDefinition = EventDefinition<string, z.ZodType>;

/** Names the server answers itself; registering them is refused. */
export const BUILTIN_METHODS = [
  {
    name: "auth",
    params: authParamsSchema,
    result: authResultSchema,
    description:
      "Authenticate with the node's token when the Authorization header cannot be set. A wrong token closes the connection.",
  },
  {
    name: "subscribe",
    params: subscribeParamsSchema,
    result: subscribeResultSchema,
    description:
      "Subscribe to a registered event; notifications arrive as `subscription` messages with `{ subscription, event, result }`.",
  },
  {
    name: "unsubscribe",
    params: unsubscribeParamsSchema,
    result: unsubscribeResultSchema,
    description: "Cancel a subscription made on this connection.",
  },
] as const;

const RESERVED = new Set<string>([...BUILTIN_METHODS.map((m) => m.name), "subscription"]);

function strictParams(schema: ParamsSchema): ParamsSchema {
  // Strip mode (the default) would silently drop a misspelt optional param; reject instead.
  return schema._zod.def.catchall === undefined ? schema.strict() : schema;
}

/** Builds a method definition without registering it, so modules can export their methods. */
export function defineMethod<N extends string, P extends ParamsSchema, R extends z.ZodType = z.ZodUnknown>(
  spec: MethodSpec<N, P, R>,
): MethodDefinition<N, P, R> {
  if (spec.name === "" || spec.name.startsWith("rpc.")) throw new Error(`invalid method name "${spec.name}"`);
  return {
    ...spec,
    kind: "method",
    paramNames: Object.keys(spec.params.shape),
    paramsValidator: strictParams(spec.params),
  };
}

export function defineEvent<N extends string, S extends z.ZodType>(
  name: N,
  payload: S,
  description: string,
): EventDefinition<N, S> {
  if (name === "") throw new Error("event name must not be empty");
  return { kind: "event", name, payload, description };
}

export class RpcRegistry {
  private readonly methodMap = new Map<string, AnyMethodDefinition>();
  private readonly eventMap = new Map<string, AnyEventDefinition>();

  /** Registers already-built method and event definitions. */
  add(...defs: (AnyMethodDefinition | AnyEventDefinition)[]): this {
    for (const def of defs) {
      if (def.kind === "method") {
        if (RESERVED.has(def.name)) throw new Error(`method name "${def.name}" is reserved`);
        if (this.methodMap.has(def.name)) throw new Error(`method "${def.name}" already registered`);
        this.methodMap.set(def.name, def);
      } else {
        if (this.eventMap.has(def.name)) throw new Error(`event "${def.name}" already registered`);
        this.eventMap.set(def.name, def);
      }
    }
    return this;
  }

  defineMethod<N extends string, P extends ParamsSchema, R extends z.ZodType = z.ZodUnknown>(
    spec: MethodSpec<N, P, R>,
  ): MethodDefinition<N, P, R> {
    const def = defineMethod(spec);
    this.add(def);
    return def;
  }

  defineEvent<N extends string, S extends z.ZodType>(name: N, payload: S, description: string): EventDefinition<N, S> {
    const def = defineEvent(name, payload, description);
    this.add(def);
    return def;
  }

  getMethod(name: string): AnyMethodDefinition | undefined {
    return this.methodMap.get(name);
  }

  getEvent(name: string): AnyEventDefinition | undefined {
    return this.eventMap.get(name);
  }

  methods(): AnyMethodDefinition[] {
    return [...this.methodMap.values()];
  }

  events(): AnyEventDefinition[] {
    return [...this.eventMap.values()];
  }
}

/** Shape the typed client expects: wire-level params and result per method name. */
export type MethodMapBase = Record<string, { params: unknown; result: unknown }>;
/** Wire-level payload per event name. */
export type EventMapBase = Record<string, unknown>;

type ResultWire<R extends z.ZodType> = unknown extends z.output<R> ? unknown : z.input<R>;

/**
 * Derives the client's method map from definitions, e.g.
 * `type Methods = MethodMapOf<[typeof getBalance, typeof pay]>`.
 */
export type MethodMapOf<Defs extends readonly AnyMethodDefinition[]> = {
  [D in Defs[number] as D["name"]]: D extends MethodDefinition<string, infer P, infer R>
    ? { params: z.input<P>; result: ResultWire<R> }
    : never;
};

export type EventMapOf<Defs extends readonly AnyEventDefinition[]> = {
  [D in Defs[number] as D["name"]]: D extends EventDefinition<string, infer S> ? z.input<S> : never;
};
