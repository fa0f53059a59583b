"""The side-by-side table: our figures, the baseline each is compared with, the ratio, the target.

Targets (from the benchmark issue):

1. gateway-only round trip p50 <= 2x the raw echo p50; >= 10,000 steps/s;
2. durable 5-step run p50 <= 1/4 of Celery's 5-chain p50; steps/s >= 5x
   Celery's chained steps/s (both with 300 in flight);
2-pg. on PostgreSQL (the same cluster as DBOS Transact, in the same run):
   steps/s >= 3x Celery's chained steps/s and >= 5x DBOS's; 5-step run
   p50 <= Celery's 5-chain p50 and <= 1/2 of DBOS's;
3. our worker >= 3x the official (Python) worker's steps/s; the official
   TypeScript worker's figures, checkpointing on and off, are context;
4. <= 25 KB RSS per idle connection; all 10,000 reconnected <= 30 s after a
   gateway restart;
flow control (issue 24): steps/s with a concurrency key per run (1,000 keys)
   >= 0.80x the same runs without flow control; the wait of a queued run once
   its key frees (p50, p99) is context.

Rows without a target are context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.dispatch import PACED_MS

Results = dict[str, dict[str, Any]]


@dataclass
class Row:
    group: str
    metric: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    #: Why the baseline has no figure: its case failed (shown instead of a number).
    baseline_error: str = ""


def _get(results: Results, scenario: str, key: str) -> float | None:
    value = results.get(scenario, {}).get(key)
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _error(results: Results, scenario: str, key: str) -> str:
    value = results.get(scenario, {}).get(key)
    return value if isinstance(value, str) else ""


def _check(value: float | None, ok: Callable[[float], bool]) -> bool | None:
    return None if value is None else ok(value)


def rows(results: Results) -> list[Row]:
    out: list[Row] = []

    def g(scenario: str, key: str) -> float | None:
        return _get(results, scenario, key)

    def add(
        group: str,
        metric: str,
        ours: float | None,
        unit: str,
        base: float | None = None,
        base_name: str = "",
        target: str = "",
        ok: Callable[[float], bool] | None = None,
        on_ratio: bool = True,
        base_error: str = "",
    ) -> None:
        ratio = _ratio(ours, base)
        checked = ratio if on_ratio else ours
        met = None if ok is None else _check(checked, ok)
        if ours is None and base is None and not base_error:
            return  # that scenario did not run (or failed: its status line says why)
        out.append(Row(group, metric, ours, unit, base, base_name, ratio, target, met, base_error))

    # --- baselines
    echo, celery = "baseline: raw echo", "baseline: Celery"
    add(echo, "round trip p50", g("echo", "rtt_p50_ms"), "ms")
    add(echo, "round trip p99", g("echo", "rtt_p99_ms"), "ms")
    add(echo, "pipelined messages/s", g("echo", "pipelined_msgs_per_s"), "/s")
    add(celery, "task round trip p50", g("celery_baseline", "task_rtt_p50_ms"), "ms")
    add(celery, "task round trip p99", g("celery_baseline", "task_rtt_p99_ms"), "ms")
    add(celery, "5-chain p50", g("celery_baseline", "chain5_p50_ms"), "ms")
    add(celery, "5-chain p99", g("celery_baseline", "chain5_p99_ms"), "ms")
    add(celery, "chained steps/s, 300 in flight", g("celery_baseline", "chain_steps_per_s"), "/s")
    add(celery, "5-chain p50, 300 in flight", g("celery_baseline", "chain5_loaded_p50_ms"), "ms")

    # --- the floor of one step: the path the protocol asks for, with no platform code
    floor = "floor: one step's path"
    for stage, label in (("ack", "echo + worker ACK"), ("hop", "+ hand-off to a user thread"),
                         ("store", "+ SQLite commit of the reply")):  # fmt: skip
        add(floor, f"{label} p50", g("floor", f"{stage}_p50_ms"), "ms", g("floor", "echo_p50_ms"), "echo p50, same run")
    step_floor = g("floor", "store_p50_ms")

    # --- 1. gateway-only
    one = "1 gateway-only"
    add(one, "round trip p50", g("dispatch", "rtt_p50_ms"), "ms", g("echo", "rtt_p50_ms"), "echo p50", "<= 2.0x",
        lambda x: x <= 2.0)  # fmt: skip
    add(one, "round trip p99", g("dispatch", "rtt_p99_ms"), "ms", g("echo", "rtt_p99_ms"), "echo p99")
    add(one, "round trip p50 against the floor", g("dispatch", "rtt_p50_ms"), "ms", step_floor, "floor of a step")
    # Every figure above is with default settings, which include the adaptive
    # poll window (`connect.polling`); these say what it gains and costs.
    off = "poll window off"
    add(one, f"round trip p50, {off}", g("dispatch", "off_rtt_p50_ms"), "ms", g("echo", "rtt_p50_ms"), "echo p50")
    for role in ("gateway", "worker"):
        add(one, f"{role} CPU one at a time", g("dispatch", f"sequential_{role}_cpu_share"), " cores",
            g("dispatch", f"off_sequential_{role}_cpu_share"), off)  # fmt: skip
    for ms in PACED_MS:
        paced = f"one step every {ms:g} ms"
        add(one, f"round trip p50, {paced}", g("dispatch", f"paced{ms:g}_p50_ms"), "ms",
            g("dispatch", f"off_paced{ms:g}_p50_ms"), off)  # fmt: skip
        for role in ("gateway", "worker"):
            add(one, f"{role} CPU, {paced}", g("dispatch", f"paced{ms:g}_{role}_cpu_share"), " cores",
                g("dispatch", f"off_paced{ms:g}_{role}_cpu_share"), off)  # fmt: skip
    for lanes in (256, 1024):
        v = g("dispatch", f"lanes{lanes}_steps_per_s")
        if v is not None or lanes == 256:
            add(one, f"steps/s, {lanes} in flight", v, "/s", g("echo", "pipelined_msgs_per_s"), "echo msgs/s",
                ">= 10,000/s", lambda x: x >= 10_000, on_ratio=False)  # fmt: skip
    add(one, f"steps/s, 256 in flight, {off}", g("dispatch", "off_lanes256_steps_per_s"), "/s",
        g("dispatch", "lanes256_steps_per_s"), "default")  # fmt: skip

    # --- 2. durable
    two = "2 durable"
    # Celery's chains measured in blocks alternating with our runs (`bench.durable`),
    # so both see the host at the same moments; its own scenario's figure for context.
    interleaved = g("durable", "interleaved_chain5_p50_ms")
    own = g("celery_baseline", "chain5_p50_ms")
    add(two, "5-step run p50", g("durable", "run_p50_ms"), "ms", own if interleaved is None else interleaved,
        "Celery 5-chain p50" + ("" if interleaved is None else ", interleaved"), "<= 0.25x",
        lambda x: x <= 0.25)  # fmt: skip
    if interleaved is not None:
        add(two, "5-step run p50 against Celery's own scenario", g("durable", "run_p50_ms"), "ms", own,
            "Celery 5-chain p50")  # fmt: skip
    add(two, "5-step run p50 against the floor", g("durable", "run_p50_ms"), "ms",
        None if step_floor is None else 6 * step_floor, "6 floors of a step")  # fmt: skip
    add(two, "5-step run p99", g("durable", "run_p99_ms"), "ms", g("celery_baseline", "chain5_p99_ms"),
        "Celery 5-chain p99")  # fmt: skip
    add(two, "runs read back before they ended (one at a time)", g("durable", "run_early_reads"), "",
        g("durable", "run_n"), "runs")  # fmt: skip
    add(two, f"5-step run p50, {off}", g("durable", "off_run_p50_ms"), "ms", g("celery_baseline", "chain5_p50_ms"),
        "Celery 5-chain p50")  # fmt: skip
    for role, label in (("dev", "connect dev"), ("worker", "worker")):
        add(two, f"{label} CPU one at a time", g("durable", f"sequential_{role}_cpu_share"), " cores",
            g("durable", f"off_sequential_{role}_cpu_share"), off)  # fmt: skip
    add(two, "steps/s, 300 in flight", g("durable", "steps_per_s"), "/s", g("celery_baseline", "chain_steps_per_s"),
        "Celery steps/s", ">= 5x", lambda x: x >= 5.0)  # fmt: skip
    add(two, f"steps/s, 300 in flight, {off}", g("durable", "off_steps_per_s"), "/s", g("durable", "steps_per_s"),
        "default")  # fmt: skip
    add(two, "run p50, 300 in flight", g("durable", "loaded_run_p50_ms"), "ms",
        g("celery_baseline", "chain5_loaded_p50_ms"), "Celery, 300 in flight")  # fmt: skip
    add(two, "5-step run p50, one step per request", g("durable", "one_step_run_p50_ms"), "ms",
        g("celery_baseline", "chain5_p50_ms"), "Celery 5-chain p50")  # fmt: skip
    add(two, "steps/s, one step per request", g("durable", "one_step_steps_per_s"), "/s",
        g("celery_baseline", "chain_steps_per_s"), "Celery steps/s")  # fmt: skip

    # --- 2-pg. durable on PostgreSQL, beside DBOS Transact on the same cluster
    pg, dbos = "2-pg durable, PostgreSQL", "baseline: DBOS Transact"
    add(dbos, "5-step workflow p50 (interleaved with ours)", g("durable_pg", "dbos_run_p50_ms"), "ms")
    add(dbos, "5-step workflow p99", g("durable_pg", "dbos_run_p99_ms"), "ms")
    add(dbos, "steps/s, 300 in flight", g("durable_pg", "dbos_steps_per_s"), "/s")
    add(dbos, "workflow p50, 300 in flight", g("durable_pg", "dbos_loaded_run_p50_ms"), "ms")
    add(dbos, "DBOS process CPU per step", g("durable_pg", "dbos_app_cpu_us_per_step"), "us")
    add(dbos, "PostgreSQL CPU per step", g("durable_pg", "dbos_pg_cpu_us_per_step"), "us")
    add(dbos, "statements per step", g("durable_pg", "dbos_statements_per_step"), "")
    add(dbos, "commits per step", g("durable_pg", "dbos_commits_per_step"), "")
    chain_p50 = own if interleaved is None else interleaved
    add(pg, "5-step run p50", g("durable_pg", "run_p50_ms"), "ms", chain_p50,
        "Celery 5-chain p50" + ("" if interleaved is None else ", interleaved in durable"), "<= 1.0x",
        lambda x: x <= 1.0)  # fmt: skip
    add(pg, "5-step run p50 against DBOS", g("durable_pg", "run_p50_ms"), "ms", g("durable_pg", "dbos_run_p50_ms"),
        "DBOS p50, interleaved", "<= 0.5x", lambda x: x <= 0.5)  # fmt: skip
    add(pg, "5-step run p50 against SQLite", g("durable_pg", "run_p50_ms"), "ms", g("durable", "run_p50_ms"),
        "ours on SQLite")  # fmt: skip
    add(pg, "5-step run p99", g("durable_pg", "run_p99_ms"), "ms", g("durable_pg", "dbos_run_p99_ms"), "DBOS p99")
    add(pg, "steps/s, 300 in flight", g("durable_pg", "steps_per_s"), "/s", g("celery_baseline", "chain_steps_per_s"),
        "Celery steps/s", ">= 3x", lambda x: x >= 3.0)  # fmt: skip
    add(pg, "steps/s against DBOS", g("durable_pg", "steps_per_s"), "/s", g("durable_pg", "dbos_steps_per_s"),
        "DBOS steps/s", ">= 5x", lambda x: x >= 5.0)  # fmt: skip
    add(pg, "steps/s against SQLite", g("durable_pg", "steps_per_s"), "/s", g("durable", "steps_per_s"),
        "ours on SQLite")  # fmt: skip
    add(pg, "run p50, 300 in flight", g("durable_pg", "loaded_run_p50_ms"), "ms",
        g("durable_pg", "dbos_loaded_run_p50_ms"), "DBOS, 300 in flight")  # fmt: skip
    dev_cpu, worker_cpu = g("durable_pg", "dev_cpu_us_per_step"), g("durable_pg", "worker_cpu_us_per_step")
    add(pg, "platform + worker CPU per step", None if dev_cpu is None or worker_cpu is None else dev_cpu + worker_cpu,
        "us", g("durable_pg", "dbos_app_cpu_us_per_step"), "DBOS process")  # fmt: skip
    add(pg, "connect dev CPU per step", dev_cpu, "us", g("durable", "dev_cpu_us_per_step"), "on SQLite")
    add(pg, "PostgreSQL CPU per step", g("durable_pg", "pg_cpu_us_per_step"), "us",
        g("durable_pg", "dbos_pg_cpu_us_per_step"), "DBOS's")  # fmt: skip
    add(pg, "statements per step", g("durable_pg", "statements_per_step"), "",
        g("durable_pg", "dbos_statements_per_step"), "DBOS's")  # fmt: skip
    add(pg, "commits per step", g("durable_pg", "commits_per_step"), "", g("durable_pg", "dbos_commits_per_step"),
        "DBOS's")  # fmt: skip

    # --- 2-split. 1 API + 2 gateways + 2 executors, beside every role in one process, on one PostgreSQL
    split = "2-split split roles, PostgreSQL"
    single = "every role in one process, one step per request"
    add(split, "5-step run p50", g("split_roles", "run_p50_ms"), "ms", g("split_roles", "single_run_p50_ms"), single)
    add(split, "5-step run p99", g("split_roles", "run_p99_ms"), "ms", g("split_roles", "single_run_p99_ms"), single)
    add(split, "steps/s, 300 in flight", g("split_roles", "steps_per_s"), "/s", g("split_roles", "single_steps_per_s"),
        single)  # fmt: skip
    add(split, "run p50, 300 in flight", g("split_roles", "loaded_run_p50_ms"), "ms",
        g("split_roles", "single_loaded_run_p50_ms"), single)  # fmt: skip
    add(split, "platform CPU per step (all roles)", g("split_roles", "dev_cpu_us_per_step"), "us",
        g("split_roles", "single_dev_cpu_us_per_step"), single)  # fmt: skip
    for role in ("api", "gateway1", "gateway2", "executor1", "executor2"):
        add(split, f"{role} CPU per step", g("split_roles", f"{role}_cpu_us_per_step"), "us")
    add(split, "PostgreSQL CPU per step", g("split_roles", "pg_cpu_us_per_step"), "us",
        g("split_roles", "single_pg_cpu_us_per_step"), single)  # fmt: skip
    add(split, "statements per step", g("split_roles", "statements_per_step"), "",
        g("split_roles", "single_statements_per_step"), single)  # fmt: skip

    # --- 3. workers
    three = "3 workers"
    for case, label in (("durable", "durable"), ("gateway", "gateway-only")):
        add(three, f"steps/s, {label}", g("workers", f"ours_{case}_steps_per_s"), "/s",
            g("workers", f"official_{case}_steps_per_s"), "official Python worker", ">= 3x", lambda x: x >= 3.0,
            base_error=_error(results, "workers", f"official_{case}_error"))  # fmt: skip
    # The official TypeScript worker (`bench/official_app.mjs`): its default
    # (checkpointing on) and `checkpointing: false`; gateway-only runs off only.
    ts_cases = (
        ("durable", "durable", "official_ts_on", "checkpointing on"),
        ("durable", "durable", "official_ts_off", "checkpointing off"),
        ("gateway", "gateway-only", "official_ts_off", "checkpointing off"),
    )
    for case, label, prefix, mode in ts_cases:
        add(three, f"steps/s, {label}, against TS {mode}", g("workers", f"ours_{case}_steps_per_s"), "/s",
            g("workers", f"{prefix}_{case}_steps_per_s"), f"official TS worker, {mode}",
            base_error=_error(results, "workers", f"{prefix}_{case}_error"))  # fmt: skip
    add(three, "steps/s, durable, ours one step per request", g("workers", "ours_one_step_durable_steps_per_s"), "/s",
        g("workers", "official_durable_steps_per_s"), "official Python worker")  # fmt: skip
    add(three, "steps/s, durable, ours one step per request, against TS",
        g("workers", "ours_one_step_durable_steps_per_s"), "/s", g("workers", "official_ts_off_durable_steps_per_s"),
        "official TS worker, checkpointing off")  # fmt: skip
    for case, label in (("durable", "durable"), ("gateway", "gateway-only")):
        add(three, f"worker CPU per step, {label}", g("workers", f"ours_{case}_worker_cpu_us_per_step"), "us",
            g("workers", f"official_{case}_worker_cpu_us_per_step"), "official Python worker")  # fmt: skip
    for case, label, prefix, mode in ts_cases:
        add(three, f"worker CPU per step, {label}, against TS {mode}",
            g("workers", f"ours_{case}_worker_cpu_us_per_step"), "us",
            g("workers", f"{prefix}_{case}_worker_cpu_us_per_step"), f"official TS worker, {mode}",
            base_error=_error(results, "workers", f"{prefix}_{case}_error"))  # fmt: skip

    # --- 4. idle
    four = "4 idle"
    n = g("idle", "connections")
    count = f"{int(n):,}" if n else "?"
    add(four, f"RSS per connection ({count})", g("idle", "rss_per_conn_kb"), "KB", target="<= 25 KB",
        ok=lambda x: x <= 25, on_ratio=False)  # fmt: skip
    add(four, "CPU per heartbeat", g("idle", "hb_cpu_us_per_heartbeat"), "us")
    share = g("idle", "hb_cpu_share_at_10s")
    add(four, "heartbeat CPU at 10 s interval", None if share is None else share * 100, "% core")
    add(four, f"all {count} reconnected after restart", g("idle", "reconnect_all_s"), "s", target="<= 30 s",
        ok=lambda x: x <= 30, on_ratio=False)  # fmt: skip
    add(four, "reconnect p99 (from gateway up)", g("idle", "reconnect_p99_from_up_s"), "s")
    add(four, f"initial connect of {count}", g("idle", "connect_all_s"), "s")

    # --- flow control: a concurrency key per run against none, and the handover of a freed key
    fc = "flow control (issue 24)"
    plain = "same runs, no flow control"
    for case, label in (("sqlite", "SQLite"), ("sqlite_one_step", "SQLite, one step per request"),
                        ("pg", "PostgreSQL")):  # fmt: skip
        add(fc, f"steps/s, a key per run over 1,000, {label}", g("flow_control", f"{case}_keyed_steps_per_s"), "/s",
            g("flow_control", f"{case}_plain_steps_per_s"), plain, ">= 0.80x", lambda x: x >= 0.80)  # fmt: skip
        add(fc, f"the same by Little's law, {label}", g("flow_control", f"{case}_keyed_inflight_steps_per_s"),
            "/s", g("flow_control", f"{case}_plain_inflight_steps_per_s"), plain, ">= 0.80x",
            lambda x: x >= 0.80)  # fmt: skip
        add(fc, f"connect dev CPU per step, {label}", g("flow_control", f"{case}_keyed_dev_cpu_us_per_step"), "us",
            g("flow_control", f"{case}_plain_dev_cpu_us_per_step"), plain)  # fmt: skip
    add(fc, "statements per step, PostgreSQL", g("flow_control", "pg_keyed_statements_per_step"), "",
        g("flow_control", "pg_plain_statements_per_step"), plain)  # fmt: skip
    for case, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
        for q in ("p50", "p99"):
            add(fc, f"handover {q}, {label}: commit of the run before -> step starts",
                g("flow_control", f"{case}_handover_commit_{q}_ms"), "ms")  # fmt: skip
            add(fc, f"handover {q}, {label}: its step's end on the worker -> step starts",
                g("flow_control", f"{case}_handover_end_{q}_ms"), "ms")  # fmt: skip
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("/s",):
        return f"{value:,.0f}{unit}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def _met(met: bool | None) -> str:
    return "" if met is None else ("PASS" if met else "FAIL")


#: How much of a failed baseline's error the table shows (the JSON has all of it).
ERROR_CHARS = 160


def _baseline_cell(r: Row) -> str:
    if r.baseline is not None:
        return f"{_fmt(r.baseline, r.unit)} ({r.baseline_name})"
    if r.baseline_error:
        first = " ".join(r.baseline_error.split())
        return f"error ({r.baseline_name}): {first[:ERROR_CHARS]}"
    return ""


def render_text(results: Results) -> str:
    table = [("scenario", "metric", "ours", "baseline", "ratio", "target", "met")]
    for r in rows(results):
        base = _baseline_cell(r)
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        table.append((r.group, r.metric, _fmt(r.ours, r.unit), base, ratio, r.target, _met(r.met)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(results: Results) -> str:
    lines = ["| scenario | metric | ours | baseline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows(results):
        base = _baseline_cell(r).replace("|", "\\|")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        cells = (r.group, r.metric, _fmt(r.ours, r.unit), base, ratio, r.target, _met(r.met))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
