"""The DBOS Transact application of the baseline: `python -m bench.dbos_app DSN`.

`five_steps` is a DBOS workflow of five `@DBOS.step()` no-op steps, the same
work as our `five-steps` function (`bench.apps`); its end reports the key on
the UDP side channel (`bench.notify`), as ours does from the request that
completes the run. DBOS is a library: workflows run in the process that
starts them, with a system database (here PostgreSQL) holding every
workflow's status and each step's output. This process is that application.

It reads workflow keys from stdin (whitespace-separated, a batch per line)
and starts one workflow per key with `DBOS.start_workflow`, the key as its
workflow id: the status row is written before the call returns, and the
workflow runs on DBOS's executor threads (one per workflow in flight, the
library's default). Reading a line is this process's share of taking work
in, as parsing `POST /e/` is ours. It prints `ready` once launched.
"""

from __future__ import annotations

import sys

from dbos import DBOS, DBOSConfig, SetWorkflowID

from bench.notify import notify

STEPS = 5


@DBOS.step()
def noop() -> None:
    return None


@DBOS.workflow()
def five_steps(key: str) -> None:
    for _ in range(STEPS):
        noop()
    notify(key)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.dbos_app POSTGRES_DSN", file=sys.stderr)
        return 2
    config: DBOSConfig = {"name": "bench-dbos", "system_database_url": args[0], "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    print("ready", flush=True)
    for line in sys.stdin:
        for key in line.split():
            with SetWorkflowID(key):
                DBOS.start_workflow(five_steps, key)
    DBOS.destroy(workflow_completion_timeout_sec=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
