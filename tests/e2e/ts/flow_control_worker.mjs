// An unmodified official TypeScript worker whose functions register flow
// control options: concurrency (honoured) and throttle and rate limit (not
// honoured by the platform yet: reported, still served).
// CONNECT_API_URL: the platform's API. Prints "slow started" when the slow
// function's handler begins.
import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const inngest = new Inngest({
  id: "ts-flow",
  isDev: true,
  baseUrl: process.env.CONNECT_API_URL,
});

const echo = (name) => async ({ event }) => ({ fn: name, user: event.data.user ?? null });

const functions = [
  inngest.createFunction({ id: "conc-number", triggers: [{ event: "ts-flow/number" }], concurrency: 5 }, echo("number")),
  inngest.createFunction(
    { id: "conc-key", triggers: [{ event: "ts-flow/key" }], concurrency: { limit: 2, key: "event.data.user" } },
    echo("key"),
  ),
  inngest.createFunction(
    { id: "throttled", triggers: [{ event: "ts-flow/throttled" }], throttle: { limit: 10, period: "1m" } },
    echo("throttled"),
  ),
  inngest.createFunction(
    { id: "rated", triggers: [{ event: "ts-flow/rated" }], rateLimit: { limit: 10, period: "1h", key: "event.data.user" } },
    echo("rated"),
  ),
  inngest.createFunction({ id: "slow", triggers: [{ event: "ts-flow/slow" }] }, async ({ event }) => {
    console.log("slow started");
    await new Promise((resolve) => setTimeout(resolve, event.data.ms ?? 2000));
    return "slow done";
  }),
];

await connect({ apps: [{ client: inngest, functions }], instanceId: "ts-flow-worker" });
console.log("ts worker connected");
