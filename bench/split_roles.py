"""Split roles, 2-split: the platform as separate processes on one PostgreSQL.

One throwaway cluster (`bench.postgres`), two databases in it:
- `connect dev --database-url ...`, every role in one process (the
  `durable_pg` figures, measured again here so both see the same machine);
- 1 API, 2 gateways and 2 executors (`connect dev --role ...`), with two
  workers so that both gateways carry steps.

Both with the `durable` scenario's workload and rules (`bench.durable.measure`):
5-step runs one at a time (p50), and 300 in flight (steps/s), with each
process's CPU per step, PostgreSQL's CPU per step and the statements per
step its database executed. Split executors run one step per request (a
checkpoint does not cross processes), so the single process is also
measured with `--no-checkpoint-steps`.

This machine has 2 cores: the split figures show what the separation costs,
not what more machines give; bench/README.md projects that from the costs
per step measured here. `python -m bench.split_roles` runs it alone.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

from bench import durable, procs, scenario
from bench.dispatch import default_poll_env
from bench.postgres import Cluster, Database

#: The processes of the split platform, in start order (executors first, as a single process starts them).
ROLES = (("executor1", "executor"), ("executor2", "executor"), ("gateway1", "gateway"), ("gateway2", "gateway"),
         ("api", "api"))  # fmt: skip


def start_split(
    children: procs.Children, database: Database, env: dict[str, str]
) -> tuple[dict[str, procs.Child], str]:
    """The split platform's processes by name, and the API's URL once every one is ready."""
    started: dict[str, procs.Child] = {}
    api_url = ""
    for name, role in ROLES:
        port, gw_port = procs.free_port(), procs.free_port()
        started[name] = children.start(
            f"split-{name}",
            procs.python(
                "-m",
                "connect",
                "dev",
                "--role",
                role,
                "--database-url",
                database.dsn,
                "--process-id",
                name,
                "--port",
                str(port),
                "--gateway-port",
                str(gw_port),
            ),
            env=env,
        )
        probe = f"http://127.0.0.1:{port}/ready" if role == "api" else f"http://127.0.0.1:{gw_port}/ready"
        if role == "api":
            api_url = f"http://127.0.0.1:{port}"
        if role == "executor":
            continue  # no port: `measure` waits until a run completes, which needs an executor

        def up(child: procs.Child = started[name], url: str = probe) -> bool:
            if not child.alive():
                raise RuntimeError(f"{child} exited:\n{child.tail()}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        procs.wait_until(up, 60, f"split {name}")
    return started, api_url


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    cluster = Cluster()
    out: dict[str, Any] = {}
    env = default_poll_env()
    common: dict[str, Any] = {
        "worker_kind": "ours",
        "sequential": opts.count(300, 100),
        "seconds": opts.pick(12.0, 5.0),
        "profile_seconds": 0.0,
        "env": env,
        "checkpoints": False,
        "worker_count": 2,
    }
    try:
        cluster.start(children)
        single_db = cluster.create_database("bench_single")
        single = durable.measure(opts, children, tag="single-pg", database=single_db, **common)
        for key, value in single.items():
            out[f"single_{key}"] = value
        split_db = cluster.create_database("bench_split")
        split = durable.measure(
            opts, children, tag="split", database=split_db, platform=lambda: start_split(children, split_db, env),
            **common,
        )  # fmt: skip
        out.update(split)
        # Where the split platform's statements go (whole run, warm-up included).
        out["split_top_statements"] = split_db.top_statements()
    finally:
        cluster.stop()
    out["roles"] = [name for name, _ in ROLES]
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("split_roles", run, argv)


if __name__ == "__main__":
    sys.exit(main())
