// Both flow-control apps of the official TypeScript SDK in one worker process:
// tests/compat/ts/flow_app.mjs (throttle, rate limit, idempotency, singleton,
// priority) and tests/compat/ts/held_app.mjs (debounce, batching), each over its
// own connection. Run next to copies of both (tests/compat/npm.py `prepare_script`).
await import("./flow_app.mjs");
await import("./held_app.mjs");
