"""The dashboard in real headless Chromium against a real `connect dev` and worker.

The page is loaded once per test and never reloaded (a marker set on `window`
at the start is checked at the end): what it shows comes from its own live
updates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.browser import chromium, screenshot
from tests.dashboard.gateway_only import gateway_only
from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log
from tests.postgres import PostgresServer
from tests.split.harness import Cluster, RoleProcess

#: The longest a test waits for the page to show something, in milliseconds.
DEADLINE_MS = 30_000


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("dash-browser")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(dev: DevServer) -> Iterator[Proc]:
    proc = start_worker(dev, dev.tmp, name="dash-worker", target="tests.dashboard.dash_app:client")
    wait_for_log(proc, "worker state ACTIVE")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, dev: DevServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(DEADLINE_MS)
    page.goto(f"{dev.url}/")
    page.evaluate("window.__notReloaded = true")
    yield page
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded"
    context.close()
    assert not errors, errors


def has_timeline(dev: DevServer, run_id: str) -> bool:
    """Whether this server keeps step timelines (`GET /v1/runs/{id}/steps`)."""
    resp = httpx.get(f"{dev.url}/v1/runs/{run_id}/steps")
    return resp.status_code == 200


def send_from_page(page: Any, name: str, data: str) -> str:
    page.click("nav a[data-view=send]")
    page.fill("#event-name", name)
    page.fill("#event-data", data)
    page.click("#send")
    event_id: str = page.locator("#sent-event-id").inner_text()
    assert len(event_id) == 26  # a ULID
    return event_id


def test_functions_are_listed_with_their_status(page: Any, worker: Proc) -> None:
    page.click("nav a[data-view=functions]")
    rows = page.locator("#functions tbody tr")
    rows.filter(has_text="greet").wait_for()
    assert rows.count() == 3
    greet = rows.filter(has_text="greet")
    assert "dash/greet" in greet.inner_text() and "active" in greet.inner_text()
    screenshot(page, "functions")


def test_a_run_sent_from_the_page_appears_completes_and_shows_its_steps_and_output(
    page: Any, dev: DevServer, worker: Proc
) -> None:
    page.click("nav a[data-view=runs]")
    page.locator("#runs, #no-runs").first.wait_for()
    event_id = send_from_page(page, "dash/greet", '{"who": "dashboard"}')
    page.locator("#sent-runs tbody tr").first.wait_for()
    screenshot(page, "send")

    # The runs view picks the new run up by itself and follows it to Completed.
    page.click("nav a[data-view=runs]")
    (run_id,) = [r["run_id"] for r in dev.runs(event_id)]
    row = page.locator(f'#runs tr[data-run-id="{run_id}"]')
    row.wait_for()
    page.locator(f'#runs tr[data-run-id="{run_id}"][data-status="Completed"]').wait_for()
    assert "greet" in row.inner_text()
    screenshot(page, "runs")

    row.locator("a").click()
    page.locator('#run-status[data-status="Completed"]').wait_for()
    assert '"greeting": "hello dashboard"' in page.locator("#run-output").inner_text()
    if has_timeline(dev, run_id):
        steps = page.locator("#steps tbody tr")
        steps.nth(1).wait_for()
        text = page.locator("#steps").inner_text()
        assert "look up the user" in text and "write the greeting" in text
        assert '"hello dashboard"' in text
    else:
        page.locator("#no-timeline").wait_for()
    screenshot(page, "run")


def test_a_sleeping_run_is_cancelled_from_the_page(page: Any, dev: DevServer, worker: Proc) -> None:
    event_id = send_from_page(page, "dash/nap", "{}")
    link = page.locator("#sent-runs tbody tr a").first
    link.wait_for()
    link.click()
    page.locator('#run-status[data-status="Running"]').wait_for()
    if has_timeline(dev, dev.runs(event_id)[0]["run_id"]):
        page.locator('#steps tr[data-step="nap for an hour"]').wait_for()
    screenshot(page, "run-sleeping")
    page.click("#cancel")
    page.locator('#run-status[data-status="Cancelled"]').wait_for()
    assert page.locator("#cancel").count() == 0
    assert [r["status"] for r in dev.runs(event_id)] == ["Cancelled"]
    if has_timeline(dev, dev.runs(event_id)[0]["run_id"]):
        # The sleep the cancel cut short stays in the timeline, ended by it; the send has its own kind.
        nap = page.locator('#steps tr[data-step="nap for an hour"]', has_text="Cancelled")
        nap.wait_for()
        assert "cancelled" in nap.inner_text()
        assert "send_event" in page.locator('#steps tr[data-step="tell the team"]').inner_text()
        screenshot(page, "run-cancelled")


def test_an_event_that_starts_no_run_says_so(page: Any, worker: Proc) -> None:
    send_from_page(page, "dash/nobody-listens", '{"n": 1}')
    page.get_by_text("No function started a run for this event.").wait_for()


def test_data_that_is_not_a_json_object_is_refused_in_the_page(page: Any, worker: Proc) -> None:
    page.click("nav a[data-view=send]")
    page.fill("#event-name", "dash/greet")
    page.fill("#event-data", "{not json")
    page.click("#send")
    page.get_by_text("The data is not JSON").wait_for()
    page.fill("#event-data", "[1, 2]")
    page.click("#send")
    page.get_by_text("The data must be a JSON object.").wait_for()
    assert page.locator("#sent-event-id").count() == 0


def test_under_serve_the_page_asks_for_the_keys_once_and_uses_them(browser: Any, tmp_path: Path) -> None:
    server = DevServer(
        tmp_path,
        command="serve",
        extra=["--signing-key", "signkey-prod-" + "ab" * 32, "--event-key", "dash-event-key"],
    ).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        page.goto(f"{server.url}/#/functions")
        page.locator("#signing-key").wait_for()
        screenshot(page, "sign-in")
        page.fill("#signing-key", "signkey-prod-" + "cd" * 32)
        page.fill("#event-key", "dash-event-key")
        page.click("#sign-in")
        page.get_by_text("authentication failed").wait_for()  # a wrong key is asked for again

        page.fill("#signing-key", "signkey-prod-" + "ab" * 32)
        page.fill("#event-key", "dash-event-key")
        page.click("#sign-in")
        page.get_by_text("No app has registered a function yet").wait_for()
        event_id = send_from_page(page, "dash/greet", "{}")
        page.get_by_text("No function started a run for this event.").wait_for()
        # Another tab of the same browser is its own session: it is asked again.
        other = context.new_page()
        other.goto(f"{server.url}/#/functions")
        other.locator("#signing-key").wait_for()
        context.close()
        bearer = {"Authorization": "Bearer signkey-prod-" + "ab" * 32}
        assert httpx.get(f"{server.url}/v1/events/{event_id}/runs", headers=bearer).json() == {"data": []}
    finally:
        server.stop()


def test_the_runs_view_pages_through_ten_thousand_runs(browser: Any, tmp_path: Path) -> None:
    """10,000 runs (left queued: their worker stopped once it had registered) are shown
    PAGE at a time; the page never holds more than one page of rows."""
    server = DevServer(tmp_path).start()
    try:
        proc = start_worker(server, tmp_path, name="dash-once", target="tests.dashboard.dash_app:client")
        wait_for_log(proc, "worker state ACTIVE")
        proc.stop()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for batch in range(20):
                events = [{"name": "dash/greet", "data": {"n": batch * 500 + i}} for i in range(500)]
                assert http.post(f"/e/{server.event_key}", json=events).status_code == 200
            lists_runs = http.get("/v1/runs", params={"limit": 1}).status_code == 200
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        page.goto(f"{server.url}/#/runs")
        if not lists_runs:  # a server without GET /v1/runs: the runs of this tab's events, none here
            page.locator("#no-runs").wait_for()
            context.close()
            return
        rows = page.locator("#runs tbody tr")
        rows.first.wait_for()
        assert rows.count() == 50
        first_page = rows.first.get_attribute("data-run-id")
        page.click("#older")
        page.get_by_text("Page 2").wait_for()
        page.wait_for_function(f"document.querySelector('#runs tbody tr').dataset.runId !== {first_page!r}")
        assert rows.count() == 50
        page.select_option("#status-filter", "Completed")
        page.locator("#no-runs").wait_for()
        context.close()
    finally:
        server.stop()


def test_live_updates_back_off_when_nothing_changes_and_speed_up_when_something_runs(page: Any) -> None:
    """The pause rule of every view's polling (js/backoff.js), run in the browser."""
    pauses = page.evaluate(
        """async () => {
            const { nextPause } = await import("/dashboard/js/backoff.js");
            const walk = (outcomes) => {
                let pause = 1000;
                return outcomes.map((o) => (pause = nextPause(pause, o)));
            };
            return {
                idle: walk(Array(6).fill("idle")),
                busy: walk(["idle", "idle", "busy"]),
                errors: walk(Array(7).fill("error")),
                recovered: walk(["error", "error", "idle", "busy"]),
            };
        }"""
    )
    assert pauses["idle"] == [2000, 4000, 8000, 10000, 10000, 10000]
    assert pauses["busy"] == [2000, 4000, 1000]
    assert pauses["errors"] == [2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert pauses["recovered"] == [2000, 4000, 8000, 1000]


def lists(dev: DevServer, path: str) -> bool:
    """Whether this server has the listing route `path` (the dashboard says so when not)."""
    return httpx.get(f"{dev.url}{path}").status_code == 200


def test_an_event_is_opened_and_replayed_from_the_page(page: Any, dev: DevServer, worker: Proc) -> None:
    event_id = send_from_page(page, "dash/greet", '{"who": "again"}')
    page.locator("#sent-runs tbody tr").first.wait_for()
    page.click("nav a[data-view=events]")
    if not lists(dev, "/v1/events"):
        page.locator("#not-available").wait_for()
        return
    row = page.locator(f'#events tr[data-event-id="{event_id}"]')
    row.wait_for()
    screenshot(page, "events")
    row.locator("a").click()
    page.locator("#event-name", has_text="dash/greet").wait_for()
    assert '"who": "again"' in page.locator("#event-data").inner_text()
    page.locator('#runs tr[data-status="Completed"]').wait_for()
    page.click("#replay")
    replayed = page.locator("#replayed-event")
    replayed.wait_for()
    new_id = replayed.inner_text()
    assert new_id != event_id
    replayed.click()
    page.wait_for_url(f"**/#/events/{new_id}")
    page.locator('#runs tr[data-status="Completed"]').wait_for()
    (run,) = dev.runs(new_id)
    assert run["output"] == {"greeting": "hello again"}
    screenshot(page, "event")


def test_an_event_that_matched_no_function_is_shown_as_such(page: Any, dev: DevServer, worker: Proc) -> None:
    send_from_page(page, "dash/unheard", "{}")
    page.click("#sent-event-id")
    if not lists(dev, "/v1/events"):
        page.locator("#not-available").wait_for()
        return
    page.locator("#unmatched").wait_for()


def test_an_event_a_debounce_holds_shows_the_function_and_then_its_run(page: Any, dev: DevServer, worker: Proc) -> None:
    send_from_page(page, "dash/digest", '{"topic": "weekly"}')
    page.click("#sent-event-id")
    if not lists(dev, "/v1/events"):
        page.locator("#not-available").wait_for()
        return
    held = page.locator('#holds tr[data-function="dash-app-digest"][data-status="held"]')
    held.wait_for()
    assert "debounce" in held.inner_text() and "its run starts at" in held.inner_text()
    page.locator("#no-runs-yet").wait_for()
    screenshot(page, "event-held")
    # The page follows it by itself until the debounce starts the run, then shows that run.
    started = page.locator('#holds tr[data-function="dash-app-digest"][data-status="started"]')
    started.wait_for()
    page.locator('#runs tr[data-status="Completed"]').wait_for()
    run_id = started.locator("a").inner_text()
    assert page.locator(f'#runs tr[data-run-id="{run_id}"]').count() == 1


def test_workers_are_listed_with_their_state_and_capacity(page: Any, dev: DevServer, worker: Proc) -> None:
    page.click("nav a[data-view=workers]")
    if not lists(dev, "/v1/workers"):
        page.locator("#not-available").wait_for()
        return
    row = page.locator("#workers tbody tr").first
    row.wait_for()
    assert "dash-app" in row.inner_text()
    screenshot(page, "workers")


def started_runs(dev: DevServer, event_ids: list[str]) -> list[dict[str, Any]]:
    """The run each event started, once each has one."""
    deadline = time.monotonic() + DEADLINE_MS / 1000
    while not all(runs := [dev.runs(e) for e in event_ids]):
        assert time.monotonic() < deadline, "the events' runs did not start"
        time.sleep(0.1)
    return [r[0] for r in runs]


def test_a_run_is_rerun_from_its_page(page: Any, dev: DevServer, worker: Proc) -> None:
    event_id = dev.send([{"name": "dash/greet", "data": {"who": "twice"}}])[0]
    (run,) = dev.wait_runs([event_id])
    page.goto(f"{dev.url}/#/runs/{run['run_id']}")
    page.locator('#run-status[data-status="Completed"]').wait_for()
    page.click("#rerun")
    link = page.locator("#rerun-link")
    link.wait_for()
    new_id = link.inner_text()
    assert new_id != run["run_id"]
    screenshot(page, "rerun")
    link.click()
    page.wait_for_url(f"**/#/runs/{new_id}")
    page.locator('#run-status[data-status="Completed"]').wait_for()
    assert '"greeting": "hello twice"' in page.locator("#run-output").inner_text()
    rerun = httpx.get(f"{dev.url}/v1/runs/{new_id}").json()["data"]
    assert rerun["function_id"] == run["function_id"] and rerun["event_id"] != event_id


def test_many_runs_of_a_function_are_cancelled_from_the_page_after_a_count(
    page: Any, dev: DevServer, worker: Proc
) -> None:
    bulk = dev.send([{"name": "dash/nap", "data": {"batch": "bulk", "n": n}} for n in range(3)])
    (keep,) = dev.send([{"name": "dash/nap", "data": {"batch": "keep"}}])
    runs = started_runs(dev, [*bulk, keep])
    assert {r["status"] for r in runs} == {"Running"}
    function_id = runs[0]["function_id"]

    # From the function's row to its runs, where the cancel button is.
    page.click("nav a[data-view=functions]")
    page.locator(f'#functions a[href="#/functions/{function_id}/runs"]').click()
    page.locator(f'#runs tr[data-run-id="{runs[0]["run_id"]}"]').wait_for()
    assert page.locator("#function-filter").input_value() == function_id

    # A range that holds none of them: nothing to cancel, and no button to do it.
    page.fill("#to-filter", "2000-01-01T00:00:00")
    page.locator("#no-runs").wait_for()
    page.click("#bulk-cancel")
    page.locator('#bulk-count[data-count="0"]').wait_for()
    assert page.locator("#bulk-confirm").count() == 0
    page.fill("#to-filter", "")
    page.locator(f'#runs tr[data-run-id="{runs[0]["run_id"]}"]').wait_for()

    # The count comes first; the condition narrows it to the three; confirming cancels them.
    page.click("#bulk-cancel")
    counted = page.locator("#bulk-count")
    counted.wait_for()
    assert int(counted.get_attribute("data-count") or 0) >= 4
    page.fill("#bulk-if", "event.data.batch == 'bulk'")
    page.click("#bulk-count-button")
    page.locator('#bulk-count[data-count="3"]').wait_for()
    assert "This cancels 3 Running runs" in counted.inner_text()
    screenshot(page, "cancel-many")
    assert [r["status"] for r in runs if r["event_id"] in bulk] == ["Running"] * 3  # nothing cancelled yet
    page.click("#bulk-confirm")
    page.locator('#bulk-result[data-cancelled="3"]').wait_for()
    for run in runs[:3]:
        page.locator(f'#runs tr[data-run-id="{run["run_id"]}"][data-status="Cancelled"]').wait_for()
    assert [dev.runs(e)[0]["status"] for e in bulk] == ["Cancelled"] * 3
    assert dev.runs(keep)[0]["status"] == "Running"
    assert httpx.post(f"{dev.url}/v1/runs/{dev.runs(keep)[0]['run_id']}/cancel").status_code in (200, 202)


def test_apps_are_shown_with_their_functions_and_workers(page: Any, dev: DevServer, worker: Proc) -> None:
    page.click("nav a[data-view=apps]")
    app = page.locator('section[data-app="dash-app"]')
    app.locator(".workers tbody tr").first.wait_for()
    functions = app.locator(".functions tbody tr")
    names = ["greet", "nap", "digest"]  # dash_app's functions
    assert functions.count() == len(names)
    shown = app.locator(".functions").inner_text()
    assert all(name in shown for name in names)
    assert shown.count("active") == len(names)
    assert "dash-app" in app.locator(".workers").inner_text()
    assert app.locator(".app-workers-count").inner_text() == "1 connection"
    screenshot(page, "apps")


def test_a_gateway_on_its_own_points_the_page_to_the_api_processes(
    browser: Any, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    cluster = Cluster(tmp_path / "cluster", postgres_server.create_database())
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        with gateway_only(tmp_path / "unused.db", cluster.database_url) as gateway_url:
            # No API process registered yet: the page says so, and what to do.
            page.goto(f"{gateway_url}/#/runs")
            page.locator("#no-api").wait_for()
            assert "serves no API" in page.locator("#elsewhere").inner_text()

            cluster.api = RoleProcess(cluster, "api", "api").start()
            page.click("nav a[data-view=apps]")
            link = page.locator("#api-urls a")
            link.wait_for()
            assert link.inner_text() == cluster.api.url
            screenshot(page, "gateway-only")
            link.click()
            page.wait_for_url(f"{cluster.api.url}/#/apps")
            page.locator("#no-apps").wait_for()  # the API process's own dashboard
        context.close()
    finally:
        cluster.stop()
