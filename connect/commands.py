"""The client commands: `connect send`, `runs`, `run`, `cancel` and `replay`,
against a running platform's HTTP API.

Each reaches `--url` (else `CONNECT_API_URL`, else http://127.0.0.1:8288),
signs `/v1` requests with `--signing-key` (else `CONNECT_SIGNING_KEY`; sent
hashed, never raw) and sends events with `--event-key` (else
`CONNECT_EVENT_KEY`, else the first of `CONNECT_EVENT_KEYS`). `connect dev`
needs neither key. A failure is one line on stderr naming the cause and the
setting to fix, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, Final

import httpx

DEFAULT_URL: Final = "http://127.0.0.1:8288"
#: The event key sent when none is given (`connect dev` takes any).
DEFAULT_EVENT_KEY: Final = "dev"
TIMEOUT: Final = 30.0


class CommandFailed(Exception):
    """One line for stderr; the command exits 1."""


class Api:
    """The platform's HTTP API, as one command uses it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = (args.url or os.environ.get("CONNECT_API_URL") or DEFAULT_URL).rstrip("/")
        key = args.signing_key or os.environ.get("CONNECT_SIGNING_KEY") or ""
        event_keys = [k.strip() for k in os.environ.get("CONNECT_EVENT_KEYS", "").split(",") if k.strip()]
        self.event_key = args.event_key or os.environ.get("CONNECT_EVENT_KEY") or next(iter(event_keys), None)
        headers = {}
        if key:
            from connect.gateway.auth import hash_signing_key

            headers["Authorization"] = f"Bearer {hash_signing_key(key)}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body); a refused key or an unreachable server raises `CommandFailed`."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandFailed(
                f"cannot reach the platform at {self.url}: {type(exc).__name__}: {exc} "
                "(set the URL with --url, or CONNECT_API_URL)"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text.strip()[:200]}
        if resp.status_code == 401:
            if path.startswith("/e/"):
                raise CommandFailed(
                    f"{self.url} refused the event key ({_error(body)}): give one the platform accepts "
                    "(--event-key, or CONNECT_EVENT_KEY)"
                )
            raise CommandFailed(
                f"{self.url} refused the signing key ({_error(body)}): give the one the platform was started with "
                "(--signing-key, or CONNECT_SIGNING_KEY)"
            )
        return resp.status_code, body

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        """The `data` of a 2xx answer; any other answer raises `CommandFailed` with the server's error."""
        status, body = self.call(method, path, **kwargs)
        if status // 100 != 2:
            raise CommandFailed(f"{method} {path} answered {status}: {_error(body)}")
        return body.get("data") if isinstance(body, dict) else body

    def send(self, events: list[dict[str, Any]]) -> list[str]:
        key = self.event_key or DEFAULT_EVENT_KEY
        status, body = self.call("POST", f"/e/{key}", json=events)
        if status // 100 != 2:
            raise CommandFailed(f"sending the event answered {status}: {_error(body)}")
        ids: list[str] = body["ids"]
        return ids


def _error(body: Any) -> str:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return json.dumps(body)[:200]


# --- the commands ----------------------------------------------------------------------------


def cmd_send(api: Api, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise CommandFailed(f"--data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandFailed("--data must be a JSON object, such as '{\"n\": 1}'")
    for event_id in api.send([{"name": args.name, "data": data}]):
        print(event_id)
    return 0


def cmd_runs(api: Api, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    if args.function:
        params["function"] = args.function
    runs: list[dict[str, Any]] = api.data("GET", "/v1/runs", params=params)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("RUN", "STATUS", "FUNCTION", "STARTED", "ENDED")]
    rows += [(r["run_id"], r["status"], r["function_id"], r["run_started_at"], r.get("ended_at") or "-") for r in runs]
    _table(rows)
    return 0


def cmd_run(api: Api, args: argparse.Namespace) -> int:
    run: dict[str, Any] = api.data("GET", f"/v1/runs/{args.run_id}")
    if args.json:
        print(json.dumps(run, indent=2))
        return 0
    for label, key in (
        ("run", "run_id"),
        ("function", "function_id"),
        ("status", "status"),
        ("event", "event_id"),
        ("started", "run_started_at"),
        ("ended", "ended_at"),
    ):
        print(f"{label + ':':<10}{run.get(key) or '-'}")
    if run.get("output") is not None:
        print(f"{'output:':<10}{json.dumps(run['output'])}")
    steps = run.get("steps")
    if isinstance(steps, list):
        print("steps:")
        for step in steps:
            print("  " + _describe_step(step))
    return 0


def _describe_step(step: Any) -> str:
    """One step of a timeline, as the API gives it: its name first, then what else it says."""
    if not isinstance(step, dict):
        return json.dumps(step)
    name = step.get("name") or step.get("display_name") or step.get("id") or "?"
    rest = ", ".join(f"{k}={json.dumps(v)}" for k, v in step.items() if k not in ("name", "display_name"))
    return f"{name}: {rest}" if rest else str(name)


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    status, body = api.call("POST", f"/v1/runs/{args.run_id}/cancel")
    if status == 200:
        print(f"run {args.run_id}: Cancelled")
        return 0
    if status == 202:
        print(f"run {args.run_id}: cancelling; it stops once the step it is running finishes")
        return 0
    raise CommandFailed(f"cannot cancel run {args.run_id}: {_error(body)}")


def cmd_replay(api: Api, args: argparse.Namespace) -> int:
    event: dict[str, Any] = api.data("GET", f"/v1/events/{args.event_id}")
    again: dict[str, Any] = {"name": event["name"], "data": event.get("data") or {}}
    if event.get("user"):
        again["user"] = event["user"]
    for event_id in api.send([again]):
        print(event_id)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# --- argparse ---------------------------------------------------------------------------------


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, help=f"the platform's HTTP API (default {DEFAULT_URL}; or CONNECT_API_URL)"
    )
    common.add_argument(
        "--signing-key",
        default=None,
        help="signs /v1 requests to `connect serve` (or CONNECT_SIGNING_KEY); `connect dev` needs none",
    )
    common.add_argument(
        "--event-key",
        default=None,
        help="sends events to `connect serve` (or CONNECT_EVENT_KEY, else the first of CONNECT_EVENT_KEYS)",
    )
    return common


def add_commands(sub: Any) -> None:
    """`send`, `runs`, `run`, `cancel` and `replay` on the `connect` parser's subcommands."""
    common = _client_options()

    def command(name: str, help: str, func: Callable[[Api, argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, parents=[common])
        parser.set_defaults(func=lambda args: run_command(func, args))
        return parser

    send = command("send", "send an event; prints its id", cmd_send)
    send.add_argument("name", help="the event's name, such as app/user.created")
    send.add_argument("--data", default="{}", help="the event's data, a JSON object (default {})")

    runs = command("runs", "list runs, newest first", cmd_runs)
    runs.add_argument("--status", choices=("Running", "Completed", "Failed", "Cancelled"), default=None)
    runs.add_argument("--function", default=None, help="only this function's runs (its full id, APP-FUNCTION)")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default 50, up to 500)")
    runs.add_argument("--json", action="store_true", help="print the API's JSON")

    one = command("run", "show one run: status, event, output and its steps", cmd_run)
    one.add_argument("run_id")
    one.add_argument("--json", action="store_true", help="print the API's JSON")

    cancel = command("cancel", "cancel a run (it stops at its next step boundary)", cmd_cancel)
    cancel.add_argument("run_id")

    replay = command("replay", "send a stored event again as a new event; prints the new id", cmd_replay)
    replay.add_argument("event_id")


def run_command(func: Callable[[Api, argparse.Namespace], int], args: argparse.Namespace) -> int:
    api = Api(args)
    try:
        return func(api, args)
    except CommandFailed as exc:
        print(f"connect {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
