"""Ours, 1: gateway-only dispatch.

`Dispatcher.dispatch(StepRequest)` -> gateway -> worker -> reply stored -> back,
with no executor: one process holds the store, dispatcher, gateway and the
driver (where the executor would be); a worker process (`connect worker
bench.apps:client`, or the official SDK's worker, see `bench.workers`) serves
a one-step function. Every request is a real discovery request for a fresh
run, so the worker's SDK decodes it, runs the step and reports it (206
StepRun), and the gateway stores the reply before `dispatch` returns.

Phases: sequential round trips (p50/p99), then closed-loop lanes of
concurrent dispatches (256 and 1024 in flight) for steps/s, then an optional
py-spy window on both processes under the 256-lane load. The parent process
samples both processes' CPU at every phase boundary.

`python -m bench.dispatch` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import procs, profiles, scenario
from bench.stats import summary_ms

WARMUP = 500


# --- the gateway process (driver inside) -----------------------------------------


def _request_factory(app_id: str, slug: str) -> Any:
    """Fresh discovery requests of `slug`, each for a new run.

    The body is a real `ExecutorRequest` encoded once with placeholder ids;
    each request swaps in its own ids (a bytes replace), so the driver, which
    shares the gateway's process and CPU, costs about a microsecond per
    request instead of the tens an executor spends building one."""
    import itertools
    import os

    from connect.dispatch import StepRequest
    from protocol.payloads import Event, ExecutorRequest, RequestContext, RequestStack, json_encoder

    run_ph, event_ph = "R" * 26, "E" * 26
    event = Event(name="bench/one", data={}, id=event_ph, ts=int(time.time() * 1000))
    template = json_encoder.encode(
        ExecutorRequest(
            event=event,
            events=[event],
            steps={},
            ctx=RequestContext(
                run_id=run_ph,
                attempt=0,
                stack=RequestStack(stack=[], current=0),
                fn_id=slug,
                step_id="step",
                max_attempts=1,
            ),
            use_api=False,
            version=-1,
        )
    )
    run_b, event_b = run_ph.encode(), event_ph.encode()
    prefix = f"{os.getpid():08d}"
    counter = itertools.count()

    def make() -> StepRequest:
        n = next(counter)
        run_id = f"{prefix}R{n:017d}"
        payload = template.replace(run_b, run_id.encode()).replace(event_b, f"{prefix}E{n:017d}".encode())
        return StepRequest(
            request_id=f"{prefix}Q{n:017d}",
            run_id=run_id,
            app_name=app_id,
            function_slug=slug,
            step_id="step",
            payload=payload,
            fresh=True,  # a never-dispatched request, as the executor marks its new ones
        )

    return make


def _say(line: str) -> None:
    print(line, flush=True)


async def _drive(args: argparse.Namespace) -> dict[str, Any]:
    from connect import polling
    from connect.roles import PlatformSettings, start_standalone_gateway
    from protocol.payloads import STATUS_ERROR, STATUS_NOT_COMPLETED

    spec = json.loads(args.spec)
    # Ephemeral ports; the poll window as `connect dev` takes it (CONNECT_POLL_WINDOW_MS).
    settings = PlatformSettings(port=0, gateway_port=0, db=spec["db"], poll_window=polling.window_from_env())
    gw = await start_standalone_gateway(settings)
    _say(f"API {gw.api_url}")
    app_id, slug = spec["app_id"], spec["slug"]
    make = _request_factory(app_id, slug)
    dispatcher = gw.dispatcher
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 90
        while not dispatcher.router.has_candidate(app_id, slug):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker for {slug} within 90s")
            await asyncio.sleep(0.02)
        first = await dispatcher.dispatch(make())
        if first.status != STATUS_NOT_COMPLETED or b"StepRun" not in first.body:
            raise RuntimeError(f"unexpected reply: status={first.status} body={first.body[:300]!r}")

        errors = 0

        async def one() -> float:
            nonlocal errors
            t0 = time.perf_counter()
            reply = await dispatcher.dispatch(make())
            if reply.status == STATUS_ERROR:
                errors += 1
            return time.perf_counter() - t0

        for _ in range(WARMUP):
            await one()

        if spec["sequential"]:
            _say("PHASE sequential start")
            seq = [await one() for _ in range(spec["sequential"])]
            _say("PHASE sequential end")
            s = summary_ms(seq)
            out["rtt_p50_ms"], out["rtt_p99_ms"], out["rtt_n"] = s["p50_ms"], s["p99_ms"], s["n"]

        if spec["sequential"]:
            out.update(await _breakdown(gw, one, min(1000, spec["sequential"])))

        for interval_ms in spec.get("paced", []):
            # One step at a time, started every `interval_ms`: traffic with
            # idle gaps, where a poll window costs the most CPU for its gain.
            phase = f"paced{interval_ms:g}"
            count = max(1, int(spec["paced_seconds"] * 1000 / interval_ms))
            _say(f"PHASE {phase} start")
            lat: list[float] = []
            start = time.perf_counter()
            for i in range(count):
                lat.append(await one())
                await asyncio.sleep(max(0.0, start + (i + 1) * interval_ms / 1000 - time.perf_counter()))
            _say(f"PHASE {phase} end")
            out[f"{phase}_p50_ms"] = summary_ms(lat)["p50_ms"]
            out[f"{phase}_count"] = count

        async def lanes(n: int, seconds: float) -> tuple[int, float, list[float]]:
            stop = time.perf_counter() + seconds
            lat: list[float] = []

            async def lane() -> None:
                while time.perf_counter() < stop:
                    lat.append(await one())

            t0 = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(n)))
            return len(lat), time.perf_counter() - t0, lat

        for n in spec["lanes"]:
            _say(f"PHASE lanes{n} start")
            count, elapsed, lat = await lanes(n, spec["seconds"])
            _say(f"PHASE lanes{n} end")
            s = summary_ms(lat)
            out[f"lanes{n}_steps_per_s"] = count / elapsed
            out[f"lanes{n}_p50_ms"] = s["p50_ms"]
            out[f"lanes{n}_p99_ms"] = s["p99_ms"]
            out[f"lanes{n}_count"] = count
        if spec["profile_seconds"]:
            n = spec["lanes"][0]
            _say(f"PROFILE {spec['profile_seconds']}")
            await asyncio.sleep(0.8)  # let py-spy attach
            await lanes(n, spec["profile_seconds"] + 1.0)
        out["errors"] = errors
        out["store_commits"] = gw.store._writer.commits if hasattr(gw.store, "_writer") else None
    finally:
        await gw.close()
    return out


class _Marks:
    """Timestamps (perf_counter) of the one request in flight during the breakdown."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.done: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.current.setdefault(name, time.perf_counter())


class _TimedStore:
    """Forwards the dispatcher's store calls, marking when the awaited ones start and end."""

    def __init__(self, inner: Any, marks: _Marks) -> None:
        self._inner = inner
        self._marks = marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_reply(self, rid: str) -> Any:
        self._marks.mark("get_reply0")
        r = await self._inner.get_reply(rid)
        self._marks.mark("get_reply1")
        return r

    async def get_lease(self, rid: str) -> Any:
        self._marks.mark("get_lease0")
        r = await self._inner.get_lease(rid)
        self._marks.mark("get_lease1")
        return r

    def put_reply(self, rid: str, data: bytes) -> Any:
        self._marks.mark("put_reply0")
        stored = self._inner.put_reply(rid, data)
        stored.add_done_callback(lambda _: self._marks.mark("put_reply1"))
        return stored


async def _breakdown(gw: Any, one: Any, count: int) -> dict[str, Any]:
    """Sequential dispatches with every stage timed: where does one round trip go?

    For this phase only, the dispatcher's store, its router's `pick` and two of
    its entry points are wrapped on the instance (then restored). One request
    is in flight at a time, so every mark belongs to it."""
    dispatcher = gw.dispatcher
    if not hasattr(dispatcher, "_store"):
        return {}
    marks = _Marks()
    store, router = dispatcher._store, dispatcher.router
    dispatch, acked, take, pick = dispatcher.dispatch, dispatcher.request_acked, dispatcher.take_reply, router.pick

    async def timed_dispatch(request: Any) -> Any:
        marks.mark("dispatch")
        return await dispatch(request)

    def timed_pick(*args: Any) -> Any:
        marks.mark("forward")
        return pick(*args)

    def timed_acked(rid: str, ok: bool) -> None:
        marks.mark("acked")
        acked(rid, ok)

    def timed_take(rid: str, *args: Any) -> None:
        marks.mark("reply_in")
        take(rid, *args)

    dispatcher._store = _TimedStore(store, marks)
    dispatcher.dispatch, dispatcher.request_acked, dispatcher.take_reply = timed_dispatch, timed_acked, timed_take
    router.pick = timed_pick
    try:
        for _ in range(count):
            marks.current = {"start": time.perf_counter()}
            await one()
            marks.mark("end")
            marks.done.append(marks.current)
    finally:
        dispatcher._store = store
        del dispatcher.dispatch, dispatcher.request_acked, dispatcher.take_reply, router.pick
    stages = {
        "build_request": ("start", "dispatch"),
        "get_reply": ("get_reply0", "get_reply1"),
        "get_lease": ("get_lease0", "get_lease1"),
        "before_forward": ("dispatch", "forward"),
        "forward_to_ack": ("forward", "acked"),
        "ack_to_reply": ("acked", "reply_in"),
        "reply_to_store": ("reply_in", "put_reply0"),
        "put_reply": ("put_reply0", "put_reply1"),
        "stored_to_return": ("put_reply1", "end"),
        "total": ("start", "end"),
    }
    out: dict[str, Any] = {}
    for name, (a, b) in stages.items():
        xs = [m[b] - m[a] for m in marks.done if a in m and b in m]
        if xs:
            out[f"breakdown_{name}_p50_us"] = summary_ms(xs)["p50_ms"] * 1000
    return out


def _gateway_role(argv: list[str]) -> int:
    from connect import cli

    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    procs.raise_nofile()
    result = cli.run(_drive(args))  # as the platform's commands run
    Path(args.out).write_text(json.dumps(result))
    _say("DONE")
    return 0


# --- the parent: processes, CPU per phase, profiles ----------------------------------


#: The official TypeScript worker (`bench/official_app.mjs`) with its default
#: checkpointing on, and with it off.
OFFICIAL_TS_KINDS = ("official_ts_on", "official_ts_off")


def start_worker(
    children: procs.Children, kind: str, api_url: str, name: str, env: dict[str, str] | None = None
) -> procs.Child:
    env = {"CONNECT_API_URL": api_url, "CONNECT_LOG_LEVEL": "warning", **(env or {})}
    if kind == "ours":
        # As measured before the worker's GC tuning became opt-in: the benchmark asks for it.
        args = procs.python(
            "-m",
            "connect",
            "--log-level",
            "warning",
            "worker",
            "bench.apps:client",
            "--instance-id",
            name,
            "--raise-gc-thresholds",
        )
    elif kind == "official":
        args = procs.python("-m", "bench.official_app")
    elif kind in OFFICIAL_TS_KINDS:
        from bench import official_ts

        args, env = official_ts.command(children.log_dir / name, env, checkpointing=kind == "official_ts_on")
    else:
        raise ValueError(kind)
    return children.start(name, args, env=env)


def measure(
    opts: scenario.Options,
    children: procs.Children,
    *,
    worker_kind: str,
    app_id: str,
    slug: str,
    sequential: int,
    lanes: list[int],
    seconds: float,
    profile_seconds: float,
    tag: str,
    env: dict[str, str] | None = None,
    paced: Sequence[float] = (),
    paced_seconds: float = 0.0,
) -> dict[str, Any]:
    """One gateway process and one worker process; `env` goes to both.
    `paced`: intervals (ms) of phases that start one step every interval."""
    out_path = opts.workdir / f"{tag}-result.json"
    spec = {
        "db": str(opts.workdir / f"{tag}.db"),
        "app_id": app_id,
        "slug": slug,
        "sequential": sequential,
        "lanes": lanes,
        "seconds": seconds,
        "profile_seconds": profile_seconds,
        "paced": list(paced),
        "paced_seconds": paced_seconds,
    }
    gw = children.start(
        f"{tag}-gateway",
        procs.python("-m", "bench.dispatch", "--role-gateway", "--spec", json.dumps(spec), "--out", str(out_path)),
        stdout_pipe=True,
        env=env,
    )
    api_url = gw.expect("API ", 60)
    try:
        worker = start_worker(children, worker_kind, api_url, f"{tag}-worker", env)
    except Exception:  # e.g. no Node for the TypeScript worker: the next case gets a quiet machine
        gw.stop()
        raise
    cpu: dict[str, dict[str, float]] = {}
    marks: dict[str, tuple[float, float, float]] = {}
    result: dict[str, Any] = {}
    budget = 120 + sequential * 0.01 + len(lanes) * (seconds + 30) + len(paced) * (paced_seconds + 30)
    budget += profile_seconds + 30
    deadline = time.monotonic() + budget
    while True:
        line = gw.readline(max(0.0, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(
                f"{tag}: the gateway process stopped talking (exit={gw.popen.poll()})\n"
                f"gateway log:\n{gw.tail()}\nworker log:\n{worker.tail()}"
            )
        line = line.strip()
        if line.startswith("PHASE "):
            _, phase, edge = line.split()
            now = (time.monotonic(), gw.cpu_seconds(), worker.cpu_seconds())
            if edge == "start":
                marks[phase] = now
            else:
                t0, g0, w0 = marks[phase]
                wall = now[0] - t0
                cpu[phase] = {"wall_s": wall, "gateway_cpu_s": now[1] - g0, "worker_cpu_s": now[2] - w0}
        elif line.startswith("PROFILE "):
            secs = float(line.split()[1])
            spies = [
                profiles.start(gw.pid, secs, opts.workdir / f"{tag}-gateway.prof"),
                profiles.start(worker.pid, secs, opts.workdir / f"{tag}-worker.prof"),
            ]
            result["_profile_seconds"] = secs
            result["_spies"] = spies
        elif line == "DONE":
            break
        elif line:
            print(f"[{tag}] {line}", file=sys.stderr)
    gw.wait(30)
    figures = json.loads(out_path.read_text())
    for spy in result.pop("_spies", []):
        profiles.finish(spy)
    secs = result.pop("_profile_seconds", 0.0)
    for phase, c in cpu.items():
        count = figures.get(f"{phase}_count") or (figures.get("rtt_n") if phase == "sequential" else None)
        if count:
            figures[f"{phase}_gateway_cpu_us_per_step"] = c["gateway_cpu_s"] / count * 1e6
            figures[f"{phase}_worker_cpu_us_per_step"] = c["worker_cpu_s"] / count * 1e6
            figures[f"{phase}_gateway_cpu_share"] = c["gateway_cpu_s"] / c["wall_s"]
            figures[f"{phase}_worker_cpu_share"] = c["worker_cpu_s"] / c["wall_s"]
    if secs:
        for role in ("gateway", "worker"):
            summary = profiles.summarize(opts.workdir / f"{tag}-{role}.prof", secs)
            figures[f"profile_{role}"] = profiles.render(f"{tag}: {role} process", summary)
            figures[f"profile_{role}_data"] = summary
    worker.stop()
    gw.stop()
    return figures


#: Intervals (ms) of the paced phases: one step every 2 ms (gaps just past the
#: default window, where it costs the most) and every 10 ms.
PACED_MS = (2.0, 10.0)


def poll_env(ms: str) -> dict[str, str]:
    """The environment that sets our processes' poll window ("0": off,
    whatever the caller's environment says)."""
    from connect.polling import ENV_VAR

    return {ENV_VAR: ms}


def default_poll_env() -> dict[str, str]:
    """The default poll window, set explicitly (a caller's CONNECT_POLL_WINDOW_MS does not leak in)."""
    from connect.polling import DEFAULT_WINDOW

    return poll_env(f"{DEFAULT_WINDOW * 1000:g}")


#: Figures measured again with the poll window off, reported with the prefix `off_`.
OFF_FIGURES = (
    "rtt_p50_ms",
    "rtt_p99_ms",
    "lanes256_steps_per_s",
    *(
        f"{phase}_{what}"
        for phase in ("sequential", "lanes256", *(f"paced{ms:g}" for ms in PACED_MS))
        for what in ("gateway_cpu_share", "worker_cpu_share", "gateway_cpu_us_per_step", "worker_cpu_us_per_step")
    ),
    *(f"paced{ms:g}_p50_ms" for ms in PACED_MS),
)


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    """Default settings (the adaptive poll window, `connect.polling`) for every
    figure; then the sequential, paced and 256-lane phases again with the
    window off (figures prefixed `off_`), for what the window gains and costs."""
    from bench.apps import APP_ID, ONE_STEP
    from connect.polling import DEFAULT_WINDOW

    common: dict[str, Any] = {
        "worker_kind": "ours",
        "app_id": APP_ID,
        "slug": f"{APP_ID}-{ONE_STEP}",
        "sequential": opts.count(3000, 1000),
        "paced": PACED_MS,
        "paced_seconds": opts.pick(3.0, 1.5),
    }
    figures = measure(
        opts,
        children,
        **common,
        lanes=[256] if opts.quick else [256, 1024],
        seconds=opts.pick(8.0, 4.0),
        profile_seconds=opts.pick(8.0, 4.0) if opts.profile else 0.0,
        tag="dispatch",
        env=default_poll_env(),
    )
    off = measure(
        opts,
        children,
        **common,
        lanes=[256],
        seconds=opts.pick(8.0, 4.0),
        profile_seconds=0.0,
        tag="dispatch-off",
        env=poll_env("0"),
    )
    figures["poll_window_ms"] = DEFAULT_WINDOW * 1000
    for key in OFF_FIGURES:
        if key in off:
            figures[f"off_{key}"] = off[key]
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role-gateway"]:
        return _gateway_role(argv[1:])
    return scenario.main("dispatch", run, argv)


if __name__ == "__main__":
    sys.exit(main())
