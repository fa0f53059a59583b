"""The step and trigger scenarios of `tests/e2e/test_steps_features.py`, served by a
worker built with the unmodified official `inngest` SDK (`official_steps_app.py`).

The scenarios are imported as they are; only the `stack` fixture differs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_steps_features import (  # noqa: F401 - collected here with the fixture below
    Stack,
    running_stack,
    test_a_sleep_survives_a_restart_of_connect_dev,
    test_a_step_that_keeps_failing_raises_step_error_or_fails_the_run,
    test_cancel_by_event_and_through_the_api,
    test_invoke_in_the_same_app_another_app_and_a_failing_one,
    test_on_failure_runs_with_the_failed_runs_error_and_event,
    test_parallel_steps_run_concurrently_and_are_memoized_each,
    test_send_event_returns_ids_and_sends_once,
    test_several_triggers_with_an_expression_and_the_finished_event,
    test_sleep_forms_wake_on_time_and_hold_no_worker,
    test_timeouts_finish_cancels_a_run_that_takes_too_long,
    test_wait_for_event_match_condition_and_timeout,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, "steps", "official")
