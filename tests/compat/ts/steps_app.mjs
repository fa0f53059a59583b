// The step and trigger test functions, written with the unmodified official
// TypeScript SDK (npm `inngest`, `connect()` from `inngest/connect`).
//
// The same functions as tests/e2e/steps_app.py and
// tests/compat/official_steps_app.py (same ids, events and outputs), so each
// end-to-end scenario runs against all three SDKs. Run with `node` next to a
// node_modules holding the SDK (tests/compat/npm.py `prepare_script`):
//
//   node steps_app.mjs [main|cron]
//
// Environment: CONNECT_API_URL (the `connect dev` API), STEPS_LOG (a JSON
// line per observed event), WORKER_NAME (the instance id),
// INNGEST_CONNECT_MAX_WORKER_CONCURRENCY (read by the SDK itself),
// TS_CHECKPOINTING=off (the SDK's `checkpointing: false`; its default is on),
// TS_APP_PREFIX (app ids `<prefix>-steps`, `<prefix>-other`, `<prefix>-cron`;
// default `ts`) and SDK_NAME (the `sdk` field of log lines; default `ts`).
import { appendFileSync } from "node:fs";
import { Inngest, NonRetriableError, referenceFunction } from "inngest";
import { connect } from "inngest/connect";

const URL = process.env.CONNECT_API_URL;
if (!URL) throw new Error("CONNECT_API_URL must point at connect dev");
const PREFIX = process.env.TS_APP_PREFIX || "ts";
const SDK = process.env.SDK_NAME || "ts";
const APP = `${PREFIX}-steps`;
const OTHER = `${PREFIX}-other`;
const checkpointing = process.env.TS_CHECKPOINTING === "off" ? { checkpointing: false } : {};

const makeClient = (id) => new Inngest({ id, isDev: true, baseUrl: URL, ...checkpointing });
const client = makeClient(APP);
const other = makeClient(OTHER);
const cronClient = makeClient(`${PREFIX}-cron`);

function log(kind, runId, fields = {}) {
  const path = process.env.STEPS_LOG;
  if (path) appendFileSync(path, JSON.stringify({ kind, run: runId, sdk: SDK, ...fields }) + "\n");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => Date.now() / 1000;

// The Python apps raise RuntimeError; the scenarios check the error's name.
class RuntimeError extends Error {
  name = "RuntimeError";
}

// --- sleeps --------------------------------------------------------------------------

const sleeper = client.createFunction(
  { id: "sleeper", triggers: [{ event: "steps/sleep" }] },
  async ({ event, step, runId }) => {
    const seconds = Number(event.data.seconds ?? 1);
    const mode = event.data.mode ?? "until";
    const due = await step.run("plan", () => now() + seconds);
    if (mode === "ms") await step.sleep("nap", Math.round(seconds * 1000));
    else if (mode === "timedelta") await step.sleep("nap", `${seconds}s`);
    else await step.sleepUntil("nap", new Date(due * 1000));
    const woke = await step.run("woke", () => {
      const t = now();
      log("woke", runId, { late: t - due });
      return t;
    });
    return { late: woke - due, mode };
  },
);

const quick = client.createFunction({ id: "quick", triggers: [{ event: "steps/quick" }] }, async ({ step }) =>
  step.run("only", () => "quick done"),
);

// --- waits -----------------------------------------------------------------------------

const waiter = client.createFunction(
  { id: "waiter", triggers: [{ event: "steps/wait" }] },
  async ({ event, step, runId }) => {
    await step.run("ready", () => true);
    log("reached-wait", runId);
    const got = await step.waitForEvent("payment", {
      event: "billing/paid",
      if: "async.data.id == event.data.id",
      timeout: `${Number(event.data.timeout ?? 60)}s`,
    });
    const result = { id: event.data.id ?? null, got: got ? { id: got.id, data: got.data } : null };
    await step.run("record", () => log("resumed", runId, result));
    return result;
  },
);

// --- sendEvent ---------------------------------------------------------------------------

const emitter = client.createFunction(
  { id: "emitter", triggers: [{ event: "steps/emit" }] },
  async ({ event, step }) => {
    const tag = event.data.tag;
    const sent = await step.sendEvent(
      "announce",
      [0, 1].map((n) => ({ name: "steps/emitted", data: { tag, n } })),
    );
    const after = await step.run("after", () => "after sending");
    return { ids: sent.ids, after };
  },
);

const emittedListener = client.createFunction(
  { id: "emitted-listener", triggers: [{ event: "steps/emitted" }] },
  async ({ event, runId }) => {
    log("emitted", runId, { tag: event.data.tag ?? null, event: event.id });
    return event.data;
  },
);

// --- invoke ------------------------------------------------------------------------------

const child = client.createFunction(
  { id: "child", triggers: [{ event: "steps/child.direct" }] },
  async ({ event, step }) => {
    const n = await step.run("times-ten", () => Number(event.data.n) * 10);
    return { n, parent: event.data._inngest?.source_fn_id ?? null };
  },
);

const failingChild = client.createFunction(
  { id: "failing-child", triggers: [{ event: "steps/child.fail" }], retries: 0 },
  async () => {
    throw new NonRetriableError("child says no");
  },
);

const otherChild = other.createFunction(
  { id: "other-child", triggers: [{ event: "steps/other.direct" }] },
  async ({ event, step }) => step.run("greet", () => `other app got ${event.data.n}`),
);

const invoker = client.createFunction(
  { id: "invoker", triggers: [{ event: "steps/invoke" }] },
  async ({ step }) => {
    const same = await step.invoke("same-app", { function: child, data: { n: 4 } });
    const across = await step.invoke("other-app", {
      function: referenceFunction({ appId: OTHER, functionId: "other-child" }),
      data: { n: 5 },
    });
    let failure = null;
    try {
      await step.invoke("failing", { function: failingChild, data: {} });
    } catch (err) {
      failure = err.message;
    }
    return { same, across, failure };
  },
);

const slowChild = client.createFunction(
  { id: "slow-child", triggers: [{ event: "steps/child.slow" }] },
  async ({ step }) => {
    await step.sleep("long", "60s");
    return "too late";
  },
);

const invokeTimeout = client.createFunction(
  { id: "invoke-timeout", triggers: [{ event: "steps/invoke-timeout" }] },
  async ({ step }) => {
    try {
      await step.invoke("slow", { function: slowChild, data: {}, timeout: "2s" });
      return { failure: null };
    } catch (err) {
      return { failure: err.message };
    }
  },
);

// --- parallel ------------------------------------------------------------------------------

const fanOut = client.createFunction(
  { id: "fan-out", triggers: [{ event: "steps/parallel" }] },
  async ({ step, runId }) => {
    const squares = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        step.run(`square-${i}`, async () => {
          log("branch-start", runId, { branch: i, at: now() });
          await sleep(1000);
          log("branch-end", runId, { branch: i, at: now() });
          return i * i;
        }),
      ),
    );
    const total = await step.run("total", () => squares.reduce((a, b) => a + b, 0));
    return { squares, total };
  },
);

// --- errors ----------------------------------------------------------------------------------

function alwaysFails(runId, attempt, what) {
  log("attempt", runId, { what, attempt });
  throw new RuntimeError(`${what} is down`);
}

const compensate = client.createFunction(
  { id: "compensate", triggers: [{ event: "steps/compensate" }], retries: 1 },
  async ({ step, runId, attempt }) => {
    try {
      await step.run("charge", () => alwaysFails(runId, attempt, "the card service"));
    } catch (err) {
      const refund = await step.run("refund", () => "refunded");
      return { compensated: err.message, error_name: err.name, refund };
    }
    return { compensated: null };
  },
);

const uncaught = client.createFunction(
  { id: "uncaught", triggers: [{ event: "steps/uncaught" }], retries: 1 },
  async ({ step, runId, attempt }) => {
    await step.run("boom", () => alwaysFails(runId, attempt, "the boom service"));
  },
);

// --- triggers, system events, onFailure -----------------------------------------------------

const multi = client.createFunction(
  {
    id: "multi",
    triggers: [{ event: "steps/multi.a" }, { event: "steps/multi.b", if: "event.data.amount > 10" }],
  },
  async ({ event, step }) => step.run("name", () => event.name),
);

async function onFailure({ event, runId }) {
  const data = event.data;
  log("on-failure", runId, { failed_run: data.run_id, function_id: data.function_id });
  return { error: data.error.message, original: data.event.data, function_id: data.function_id };
}

const fails = client.createFunction(
  { id: "fails", triggers: [{ event: "steps/fail" }], retries: 0, onFailure },
  async ({ step }) => {
    await step.run("ok-first", () => 1);
    throw new NonRetriableError("this function fails on purpose");
  },
);

const finishedListener = client.createFunction(
  {
    id: "finished-listener",
    triggers: [{ event: "inngest/function.finished", if: `event.data.function_id == '${APP}-multi'` }],
  },
  async ({ event, runId }) => {
    log("finished", runId, { finished_run: event.data.run_id, result: event.data.result ?? null });
  },
);

const cancelledListener = client.createFunction(
  { id: "cancelled-listener", triggers: [{ event: "inngest/function.cancelled" }] },
  async ({ event, runId }) => {
    log("cancelled", runId, { cancelled_run: event.data.run_id, function_id: event.data.function_id });
  },
);

// --- cancellation and timeouts ---------------------------------------------------------------

const cancellable = client.createFunction(
  {
    id: "cancellable",
    triggers: [{ event: "steps/cancellable" }],
    cancelOn: [{ event: "steps/cancel", if: "async.data.id == event.data.id", timeout: 600_000 }],
  },
  async ({ step, runId }) => {
    await step.run("before", () => "before");
    await step.sleep("long", "60s");
    await step.run("after", () => log("after-cancel-point", runId));
    return "not cancelled";
  },
);

const bounded = client.createFunction(
  { id: "bounded", triggers: [{ event: "steps/bounded" }], timeouts: { finish: "2s" } },
  async ({ step }) => {
    await step.sleep("long", "60s");
    return "not timed out";
  },
);

// --- the compatibility matrix's rows (tests/e2e/test_steps_matrix.py) --------------------------

const multiStep = client.createFunction(
  { id: "multi-step", triggers: [{ event: "steps/multi-step" }] },
  async ({ event, step, runId }) => {
    const one = await step.run("one", () => {
      log("body", runId, { step: "one" });
      return Number(event.data.x) + 1;
    });
    const two = await step.run("two", () => {
      log("body", runId, { step: "two" });
      return one * 2;
    });
    const three = await step.run("three", () => {
      log("body", runId, { step: "three" });
      return `${one}-${two}`;
    });
    return { one, two, three };
  },
);

const flaky = client.createFunction(
  { id: "flaky", triggers: [{ event: "steps/flaky" }], retries: 3 },
  async ({ step, runId, attempt }) => {
    const value = await step.run("flaky", () => {
      log("attempt", runId, { what: "flaky", attempt });
      if (attempt < 2) throw new RuntimeError(`attempt ${attempt} failed`);
      return `ok on attempt ${attempt}`;
    });
    return { value };
  },
);

const nonRetriable = client.createFunction(
  { id: "non-retriable", triggers: [{ event: "steps/non-retriable" }], retries: 3, onFailure },
  async ({ step, runId, attempt }) => {
    await step.run("refuse", () => {
      log("attempt", runId, { what: "refuse", attempt });
      throw new NonRetriableError("this step refuses to be retried");
    });
  },
);

const exhausted = client.createFunction(
  { id: "exhausted", triggers: [{ event: "steps/exhausted" }], retries: 1, onFailure },
  async ({ step, runId, attempt }) => {
    await step.run("down", () => alwaysFails(runId, attempt, "the exhausted service"));
  },
);

const fnError = client.createFunction(
  { id: "fn-error", triggers: [{ event: "steps/fn-error" }], retries: 1, onFailure },
  async ({ step, runId, attempt }) => {
    await step.run("fine", () => 1);
    log("attempt", runId, { what: "handler", attempt });
    throw new RuntimeError("the handler itself failed");
  },
);

const bigOutput = client.createFunction(
  { id: "big-output", triggers: [{ event: "steps/big-output" }] },
  async ({ event, step }) => {
    const blob = await step.run("blob", () => "0123456789".repeat(Number(event.data.tens)));
    return { blob };
  },
);

const hold = client.createFunction(
  { id: "hold", triggers: [{ event: "steps/hold" }] },
  async ({ step, runId }) => {
    await step.run("hold", async () => {
      log("hold-start", runId, { at: now() });
      await sleep(1000);
      log("hold-end", runId, { at: now() });
    });
    return "held";
  },
);

const drained = client.createFunction(
  { id: "drained", triggers: [{ event: "steps/drained" }] },
  async ({ step, runId }) => {
    const slow = await step.run("slow", async () => {
      log("slow-start", runId, { pid: process.pid });
      await sleep(3000);
      log("slow-end", runId, { pid: process.pid });
      return process.pid;
    });
    const after = await step.run("after", () => {
      log("after", runId, { pid: process.pid });
      return process.pid;
    });
    return { slow, after };
  },
);

// --- cron -----------------------------------------------------------------------------------------

const everyMinute = cronClient.createFunction(
  { id: "every-minute", triggers: [{ cron: "* * * * *" }] },
  async ({ event, runId }) => {
    log("tick", runId, { ts: event.ts, name: event.name, fn: "every-minute" });
    return event.ts;
  },
);

const everyMinuteParis = cronClient.createFunction(
  { id: "every-minute-paris", triggers: [{ cron: "TZ=Europe/Paris * * * * *" }] },
  async ({ event, runId }) => {
    log("tick", runId, { ts: event.ts, name: event.name, fn: "every-minute-paris" });
    return event.ts;
  },
);

const MAIN = [
  sleeper, quick, waiter, emitter, emittedListener, child, failingChild, invoker, slowChild, invokeTimeout,
  fanOut, compensate, uncaught, multi, fails, finishedListener, cancelledListener, cancellable, bounded,
  multiStep, flaky, nonRetriable, exhausted, fnError, bigOutput, hold, drained,
];

const which = process.argv[2] || "main";
const apps =
  which === "cron"
    ? [{ client: cronClient, functions: [everyMinute, everyMinuteParis] }]
    : [
        { client, functions: MAIN },
        { client: other, functions: [otherChild] },
      ];

// The SDK's default shutdown signals (SIGINT, SIGTERM): a SIGTERM drains the
// connection and lets in-flight steps finish before the process exits.
await connect({ apps, instanceId: process.env.WORKER_NAME || `ts-${which}` });
