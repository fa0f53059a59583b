"""The Celery app of the baseline: one no-op task, results in Redis, `acks_late=True`.

Started by `bench.celery_baseline` as
`celery -A bench.celery_tasks worker -P prefork -c 2`, with the broker and
result backend in `BENCH_REDIS_URL`.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.notify import notify

_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=_url, backend=_url)
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(key: str | None = None) -> None:
    """Does nothing; the last task of a chain names a key and reports it (pacing only)."""
    notify(key)
