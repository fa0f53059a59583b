"""The step and trigger scenarios of `tests/e2e/test_steps_features.py`, served by a
worker built with the unmodified official TypeScript SDK (`ts/steps_app.mjs`,
npm `inngest` at `npm.TS_SDK_VERSION`): with the SDK's defaults (checkpointing on)
and with `checkpointing: false`.

The scenarios are taken as they are; only the `stack` fixture differs. Node 20 or
newer must be on PATH: without it these tests fail, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import test_steps_features as scenarios
from tests.e2e.test_steps_features import Stack, running_stack

# Collected in this order. The restart of `connect dev` comes last: should the worker
# not come back after it, that scenario fails and no other scenario fails with it.
test_sleep_forms_wake_on_time_and_hold_no_worker = scenarios.test_sleep_forms_wake_on_time_and_hold_no_worker
test_wait_for_event_match_condition_and_timeout = scenarios.test_wait_for_event_match_condition_and_timeout
test_send_event_returns_ids_and_sends_once = scenarios.test_send_event_returns_ids_and_sends_once
test_invoke_in_the_same_app_another_app_and_a_failing_one = (
    scenarios.test_invoke_in_the_same_app_another_app_and_a_failing_one
)
test_parallel_steps_run_concurrently_and_are_memoized_each = (
    scenarios.test_parallel_steps_run_concurrently_and_are_memoized_each
)
test_a_step_that_keeps_failing_raises_step_error_or_fails_the_run = (
    scenarios.test_a_step_that_keeps_failing_raises_step_error_or_fails_the_run
)
test_several_triggers_with_an_expression_and_the_finished_event = (
    scenarios.test_several_triggers_with_an_expression_and_the_finished_event
)
test_on_failure_runs_with_the_failed_runs_error_and_event = (
    scenarios.test_on_failure_runs_with_the_failed_runs_error_and_event
)
test_cancel_by_event_and_through_the_api = scenarios.test_cancel_by_event_and_through_the_api
test_timeouts_finish_cancels_a_run_that_takes_too_long = (
    scenarios.test_timeouts_finish_cancels_a_run_that_takes_too_long
)
test_a_sleep_survives_a_restart_of_connect_dev = scenarios.test_a_sleep_survives_a_restart_of_connect_dev


@pytest.fixture(scope="module", params=["ts", "ts-nocheckpoint"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, "steps", request.param)
