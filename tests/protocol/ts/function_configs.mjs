// Prints, as JSON, the function configs an unmodified official TypeScript
// worker registers in WORKER_CONNECT, built the way its connect layer builds
// them (components/connect/config.js: getConfig with isConnect, then
// JSON.stringify), for one function per option form.
import { Inngest } from "inngest";

const inngest = new Inngest({ id: "ts-forms", isDev: true });
const handler = async () => "ok";
const on = (name) => [{ event: `forms/${name}` }];

const functions = [
  inngest.createFunction({ id: "plain", triggers: on("plain") }, handler),
  inngest.createFunction({ id: "conc-number", triggers: on("n"), concurrency: 5 }, handler),
  inngest.createFunction(
    { id: "conc-object", triggers: on("o"), concurrency: { limit: 2, key: "event.data.user" } },
    handler,
  ),
  inngest.createFunction(
    {
      id: "conc-array",
      triggers: on("a"),
      concurrency: [{ limit: 10, scope: "account", key: '"shared"' }, { limit: 2, key: "event.data.user" }],
    },
    handler,
  ),
  inngest.createFunction(
    {
      id: "flow",
      name: "Flow control",
      triggers: [{ event: "forms/flow", if: "event.data.go == true" }, { cron: "TZ=Europe/Paris 0 3 * * *" }],
      throttle: { limit: 3, period: "1m", key: "event.data.k", burst: 2 },
      rateLimit: { limit: 10, period: "1h", key: "event.data.k" },
      debounce: { period: "30s", key: "event.data.k", timeout: "5m" },
      idempotency: "event.data.id",
      priority: { run: "event.data.p" },
      singleton: { mode: "cancel", key: "event.data.u" },
      retries: 3,
      cancelOn: [{ event: "forms/stop", match: "data.id" }, { event: "forms/halt", if: "async.data.x == 1", timeout: "1h" }],
      timeouts: { start: "10s", finish: "2m" },
      onFailure: handler,
    },
    handler,
  ),
  inngest.createFunction({ id: "jitter", triggers: [{ cron: "*/5 * * * *", jitter: "30s" }] }, handler),
  // Batching is refused with cancelOn, debounce, singleton and priority.run: a function of its own.
  inngest.createFunction(
    {
      id: "batched",
      triggers: on("batched"),
      batchEvents: { maxSize: 10, timeout: "5s", key: "event.data.k", if: "event.data.ok" },
      concurrency: 2,
      throttle: { limit: 1, period: "1s" },
    },
    handler,
  ),
];

const configs = functions.flatMap((f) =>
  f["getConfig"]({ baseUrl: new URL("wss://connect"), appPrefix: inngest.id, isConnect: true }),
);
process.stdout.write(JSON.stringify(configs));
