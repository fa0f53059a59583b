"""A send whose answer is lost on the way back is retried and still starts one run."""

from __future__ import annotations

import time
from pathlib import Path

from connect import Client
from connect.sdk import Event
from tests.e2e.harness import DevServer, start_worker, step_counts, wait_for_log
from tests.e2e.proxy import CuttingProxy


def test_a_lost_answer_is_retried_and_the_event_starts_one_run(tmp_path: Path) -> None:
    dev = DevServer(tmp_path).start()
    worker = start_worker(dev, tmp_path)
    # Lets the first request reach `connect dev`, then drops its answer and the connection.
    proxy = CuttingProxy(dev.port, lambda: True, cut_answers=True)
    port = proxy.start()
    try:
        wait_for_log(worker, "worker state ACTIVE")
        sender = Client(app_id="sender", api_base_url=f"http://127.0.0.1:{port}", event_key=dev.event_key)
        [event_id] = sender.send_sync(Event(name="e2e/three", data={"n": 4}))
        assert (proxy.cuts, proxy.connections) == (1, 2)  # the first answer was lost; the retry got through

        [run] = dev.wait_runs([event_id], timeout=60)
        assert run["status"] == "Completed" and run["output"] == {"n": 4, "result": 2 * 5 + 3}
        time.sleep(1.0)  # room for a second run, had the first try stored an event of its own
        assert {run_id for run_id, _ in step_counts(tmp_path)} == {run["run_id"]}
        assert len(dev.runs(event_id)) == 1
    finally:
        proxy.stop()
        worker.stop()
        dev.stop()
