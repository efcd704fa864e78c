/**
 * `Promise.withResolvers` for Node 20. libp2p v3 calls it while upgrading connections; without it
 * every upgrade fails (seen as ECONNRESET). Import this module before anything from libp2p.
 */

interface Resolvers<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
}

const ctor = Promise as unknown as { withResolvers?: <T>() => Resolvers<T> };

if (typeof ctor.withResolvers !== "function") {
  Object.defineProperty(Promise, "withResolvers", {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers<T>(this: PromiseConstructor): Resolvers<T> {
      let resolve!: Resolvers<T>["resolve"];
      let reject!: Resolvers<T>["reject"];
      // `this` keeps subclass semantics, as the spec's version does.
      const promise = new this<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

export {};
