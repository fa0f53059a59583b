"""Ours, 3: our worker against the official `inngest` Python worker.

The same functions (`bench.apps` and `bench.official_app` mirror each other),
the same platform, one worker process at a time, measured back to back:

- durable: `connect dev` with 300 runs of `five-steps` in flight (as in
  `bench.durable`), steps/s;
- gateway-only: 256 concurrent dispatches of `one-step` (as in
  `bench.dispatch`), steps/s. This isolates the worker: the platform side
  does less per step here, so the worker's own cost shows more.

Each case starts its own platform on a fresh database, so the two apps never
share registrations. `python -m bench.workers` runs it alone.
"""

from __future__ import annotations

import sys
from typing import Any

from bench import apps, dispatch, durable, procs, scenario

# `bench.official_app`'s ids. It is not imported here: the official SDK's
# protobuf module and ours declare the same message names, and the two cannot
# share one process.
OFFICIAL_APP_ID = "bench-official"
OFFICIAL_ONE_STEP = "one-step"


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seconds = opts.pick(10.0, 5.0)
    for kind in ("official", "ours"):
        d = durable.measure(
            opts, children, worker_kind=kind, sequential=0, seconds=seconds, profile_seconds=0.0, tag=f"w-{kind}"
        )
        out[f"{kind}_durable_steps_per_s"] = d["steps_per_s"]
        out[f"{kind}_durable_worker_cpu_us_per_step"] = d["worker_cpu_us_per_step"]
        out[f"{kind}_durable_worker_cpu_share"] = d["worker_cpu_share"]
        out[f"{kind}_durable_dev_cpu_share"] = d["dev_cpu_share"]
        out[f"{kind}_durable_unfinished"] = d["runs_unfinished"]
    for kind, app_id, fn in (
        ("official", OFFICIAL_APP_ID, OFFICIAL_ONE_STEP),
        ("ours", apps.APP_ID, apps.ONE_STEP),
    ):
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
            tag=f"g-{kind}",
        )
        out[f"{kind}_gateway_steps_per_s"] = g["lanes256_steps_per_s"]
        out[f"{kind}_gateway_worker_cpu_us_per_step"] = g.get("lanes256_worker_cpu_us_per_step")
        out[f"{kind}_gateway_worker_cpu_share"] = g.get("lanes256_worker_cpu_share")
        out[f"{kind}_gateway_errors"] = g.get("errors")
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
    out["ours_one_step_durable_steps_per_s"] = d["steps_per_s"]
    out["ours_one_step_durable_worker_cpu_us_per_step"] = d["worker_cpu_us_per_step"]
    out["durable_ratio"] = out["ours_durable_steps_per_s"] / max(1e-9, out["official_durable_steps_per_s"])
    out["gateway_ratio"] = out["ours_gateway_steps_per_s"] / max(1e-9, out["official_gateway_steps_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("workers", run, argv)


if __name__ == "__main__":
    sys.exit(main())
