"""Ours, 3: our worker against the official `inngest` workers, Python and TypeScript.

The same functions (`bench.apps`, `bench.official_app` and
`bench/official_app.mjs` mirror each other), the same platform, one worker
process at a time, measured back to back:

- durable: `connect dev` with 300 runs of `five-steps` in flight (as in
  `bench.durable`), steps/s. The official TypeScript worker runs twice: with
  its defaults (checkpointing on: it runs the whole run in one request and
  reports each step through `POST /v1/checkpoint/{run_id}/async`) and with
  the SDK's `checkpointing: false` (one step per request, as the official
  Python worker runs);
- gateway-only: 256 concurrent dispatches of `one-step` (as in
  `bench.dispatch`), steps/s. This isolates the worker: the platform side
  does less per step here, so the worker's own cost shows more. The
  TypeScript worker runs it with checkpointing off only: with it on, the SDK
  reports steps to the platform's HTTP API, which the gateway-only process
  does not run (no executor there).

Each case starts its own platform on a fresh database, so the apps never
share registrations. A case that fails is reported as that case's error
(`<kind>_<case>_error`) and the others still run. `python -m bench.workers`
runs it alone.
"""

from __future__ import annotations

import sys
from typing import Any

from bench import apps, dispatch, durable, official_ts, procs, scenario

# `bench.official_app`'s ids. It is not imported here: the official SDK's
# protobuf module and ours declare the same message names, and the two cannot
# share one process.
OFFICIAL_APP_ID = "bench-official"
OFFICIAL_ONE_STEP = "one-step"
# `bench/official_app.mjs`'s app id (the same function ids).
OFFICIAL_TS_APP_ID = "bench-official-ts"


#: Durable cases: (figure prefix, worker kind), measured in this order.
DURABLE_KINDS = (
    ("official", "official"),
    ("official_ts_on", "official_ts_on"),
    ("official_ts_off", "official_ts_off"),
    ("ours", "ours"),
)
#: Gateway-only cases: (figure prefix, worker kind, app id, function id).
GATEWAY_KINDS = (
    ("official", "official", OFFICIAL_APP_ID, OFFICIAL_ONE_STEP),
    ("official_ts_off", "official_ts_off", OFFICIAL_TS_APP_ID, OFFICIAL_ONE_STEP),
    ("ours", "ours", apps.APP_ID, apps.ONE_STEP),
)
#: Ratios reported: (figure, ours, the official worker it is compared with).
RATIOS = (
    ("durable_ratio", "ours_durable_steps_per_s", "official_durable_steps_per_s"),
    ("gateway_ratio", "ours_gateway_steps_per_s", "official_gateway_steps_per_s"),
    ("ts_on_durable_ratio", "ours_durable_steps_per_s", "official_ts_on_durable_steps_per_s"),
    ("ts_off_durable_ratio", "ours_durable_steps_per_s", "official_ts_off_durable_steps_per_s"),
    ("ts_off_gateway_ratio", "ours_gateway_steps_per_s", "official_ts_off_gateway_steps_per_s"),
)


def _error(exc: Exception) -> str:
    # The first line says what failed; the last lines of a child's log follow it.
    return f"{type(exc).__name__}: {exc}"[:2000]


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seconds = opts.pick(10.0, 5.0)
    for prefix, kind in DURABLE_KINDS:
        slow = kind in dispatch.OFFICIAL_TS_KINDS
        try:
            d = durable.measure(
                opts,
                children,
                worker_kind=kind,
                sequential=0,
                # A run takes about 4 s with 300 in flight on the TypeScript
                # worker: the window starts once the first 300 have ended.
                seconds=seconds,
                warmup=opts.pick(6.0, 5.0) if slow else None,
                profile_seconds=0.0,
                tag=f"w-{prefix}",
            )
        except Exception as exc:  # one worker failing must not hide the others' figures
            out[f"{prefix}_durable_error"] = _error(exc)
            continue
        # By Little's law (`bench.load`): the TypeScript worker moves its runs
        # in waves, which a count of completions in the window cannot resolve.
        out[f"{prefix}_durable_steps_per_s"] = d["inflight_steps_per_s"]
        out[f"{prefix}_durable_steps_per_s_counted"] = d["steps_per_s"]
        out[f"{prefix}_durable_worker_cpu_us_per_step"] = d["worker_cpu_us_per_step"]
        out[f"{prefix}_durable_worker_cpu_share"] = d["worker_cpu_share"]
        out[f"{prefix}_durable_dev_cpu_share"] = d["dev_cpu_share"]
        out[f"{prefix}_durable_unfinished"] = d["runs_unfinished"]
    for prefix, kind, app_id, fn in GATEWAY_KINDS:
        try:
            g = dispatch.measure(
                opts,
                children,
                worker_kind=kind,
                app_id=app_id,
                slug=f"{app_id}-{fn}",
                sequential=0,
                lanes=[256],
                seconds=opts.pick(6.0, 4.0),
                profile_seconds=opts.pick(5.0, 3.0) if (opts.profile and kind == "official") else 0.0,
                tag=f"g-{prefix}",
            )
        except Exception as exc:
            out[f"{prefix}_gateway_error"] = _error(exc)
            continue
        out[f"{prefix}_gateway_steps_per_s"] = g["lanes256_steps_per_s"]
        out[f"{prefix}_gateway_worker_cpu_us_per_step"] = g.get("lanes256_worker_cpu_us_per_step")
        out[f"{prefix}_gateway_worker_cpu_share"] = g.get("lanes256_worker_cpu_share")
        out[f"{prefix}_gateway_errors"] = g.get("errors")
        if "profile_worker" in g:
            out["profile_official_worker"] = g["profile_worker"]
            out["profile_official_worker_data"] = g["profile_worker_data"]
    # Like for like: ours with one step per request, as the official worker runs.
    d = durable.measure(
        opts,
        children,
        worker_kind="ours",
        sequential=0,
        seconds=seconds,
        profile_seconds=0.0,
        tag="w-ours-one-step",
        checkpoints=False,
    )
    out["ours_one_step_durable_steps_per_s"] = d["inflight_steps_per_s"]
    out["ours_one_step_durable_steps_per_s_counted"] = d["steps_per_s"]
    out["ours_one_step_durable_worker_cpu_us_per_step"] = d["worker_cpu_us_per_step"]
    for name, ours, theirs in RATIOS:
        if ours in out and theirs in out:
            out[name] = out[ours] / max(1e-9, out[theirs])
    out["official_ts_sdk_version"] = official_ts.VERSION
    errors = sorted(k for k in out if k.endswith("_error"))
    if "ours_durable_steps_per_s" not in out or "ours_gateway_steps_per_s" not in out:
        raise RuntimeError("our worker's figures failed: " + "; ".join(f"{k}: {out[k]}" for k in errors))
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("workers", run, argv)


if __name__ == "__main__":
    sys.exit(main())
