"""The deploy artifacts (Dockerfile, docker-compose.yml, examples/k8s/) against
the code they run.

No Docker engine or cluster runs here, so each file is parsed and every way it
runs the `connect` program is checked against the program itself: the
subcommands and flags against `cli.build_parser()` (exact names: argparse would
accept abbreviations), the flag and environment combinations against the
settings the CLI builds from them (`cli._platform_settings`, with the
environment the container would have), the environment variables against those
the CLI documents or the code reads, probes against the routes the real servers
answer, and grace periods against the drain deadlines the flags set.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from connect import cli
from connect.gateway.auth import validate_signing_key
from connect.roles import PlatformSettings, start_standalone_gateway
from connect.worker.readiness import HealthServer
from protocol import limits

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "examples" / "k8s"

#: Seconds a grace period must exceed the drain deadline by: after the drain the
#: last replies are stored and the process exits before the orchestrator's SIGKILL.
EXIT_MARGIN = 10.0
#: Grace periods when a file sets none: Docker's stop timeout, Kubernetes' terminationGracePeriodSeconds.
COMPOSE_DEFAULT_GRACE = 10.0
K8S_DEFAULT_GRACE = 30.0

#: Values standing in for what the files take from the host (compose's
#: `${VAR}`), from a Secret or from the downward API: valid for the CLI.
SAMPLE_SIGNING_KEY = "signkey-prod-" + "0123456789abcdef" * 4
HOST_ENV = {"CONNECT_SIGNING_KEY": SAMPLE_SIGNING_KEY, "CONNECT_EVENT_KEY": "sample-event-key"}
SECRET_SAMPLES = {
    "signing-key": SAMPLE_SIGNING_KEY,
    "signing-key-fallback": "signkey-prod-" + "fedcba9876543210" * 4,
    "event-key": "sample-event-key",
    "database-url": "postgresql://connect:secret@postgres.example.internal:5432/connect",
}
FIELD_SAMPLES = {"status.podIP": "10.1.2.3", "metadata.name": "pod-abc12"}


# --- what the files run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    what: str  # "readinessProbe", "healthcheck", ...
    port: int
    path: str


@dataclass
class Invocation:
    """One process the artifacts start with the `connect` program."""

    where: str
    argv: list[str]  # after the program name
    env: dict[str, str]  # as the process would see it (host, Secret and downward API values stood in for)
    probes: list[Probe] = field(default_factory=list)
    grace: float | None = None  # seconds between SIGTERM and SIGKILL (None: not set by the file)
    default_grace: float = COMPOSE_DEFAULT_GRACE
    pre_stop: float = 0.0  # seconds of the preStop hook, spent before SIGTERM
    keys_from_runtime: bool = False  # keys are given at `docker run`, not in the file

    @property
    def command(self) -> str:
        return next(a for a in self.argv if not a.startswith("-"))


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


DOCKERFILE = _dockerfile_instructions((ROOT / "Dockerfile").read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
K8S_DOCS: list[tuple[str, dict[str, Any]]] = [
    (path.name, doc)
    for path in sorted(K8S.glob("*.y*ml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc is not None
]


def _exec_form(instruction: str) -> list[str]:
    values = [json.loads(args) for word, args in DOCKERFILE if word == instruction]
    assert values, f"the Dockerfile has no {instruction}"
    value = values[-1]
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction} must be a JSON list"
    return value


def _interpolate(value: str) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?message}` with HOST_ENV standing in for the host."""

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in HOST_ENV:
            return HOST_ENV[name]
        assert "?" not in op, f"${{{name}}} is required from the host: add a sample to HOST_ENV"
        return rest

    result = re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", one, value)
    # Compose refuses any other `$` ("invalid interpolation format"); `$$` is a literal one.
    assert "$" not in result.replace("$$", ""), f"{value!r}: write a literal $ as $$"
    return result.replace("$$", "$")


def _go_duration(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _compose_probe(test: Any) -> Probe | None:
    text = " ".join(test) if isinstance(test, list) else str(test)
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s\"']*)", text)
    return None if m is None else Probe("healthcheck", int(m.group(1)), m.group(2))


def _is_connect_image(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("connect")


def compose_invocations() -> dict[str, Invocation]:
    out: dict[str, Invocation] = {}
    for name, svc in COMPOSE["services"].items():
        if not _is_connect_image(svc):
            continue
        assert "entrypoint" not in svc, f"{name}: the image's ENTRYPOINT is the connect program"
        assert isinstance(svc.get("command"), list), f"{name}: command as a list, each argument one item"
        argv = [_interpolate(str(a)) for a in svc["command"]]
        env = {k: _interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        probes = []
        if "healthcheck" in svc:
            probe = _compose_probe(svc["healthcheck"]["test"])
            assert probe is not None, f"{name}: its healthcheck asks no URL of the process"
            probes.append(probe)
        grace = svc.get("stop_grace_period")
        out[name] = Invocation(
            f"docker-compose.yml: {name}", argv, env, probes, None if grace is None else _go_duration(str(grace))
        )
    return out


def _pod_templates() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file: workload name, workload, pod template) for every Deployment and StatefulSet."""
    for fname, doc in K8S_DOCS:
        if doc.get("kind") in ("Deployment", "StatefulSet"):
            yield f"{fname}: {doc['metadata']['name']}", doc, doc["spec"]["template"]


def _secret_values() -> dict[tuple[str, str], str]:
    values = {}
    for _, doc in K8S_DOCS:
        if doc.get("kind") == "Secret":
            for key in (doc.get("stringData") or {}) | (doc.get("data") or {}):
                values[(doc["metadata"]["name"], key)] = SECRET_SAMPLES[key]
    return values


def _container_env(where: str, container: dict[str, Any]) -> dict[str, str]:
    secrets = _secret_values()
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(var["value"]))
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = FIELD_SAMPLES[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key in secrets:
                env[var["name"]] = secrets[key]
            else:
                assert ref.get("optional"), f"{where}: {var['name']} names {key}, which no Secret here holds"
        else:
            raise AssertionError(f"{where}: {var['name']}: unexpected source {source}")
    return env


def k8s_invocations() -> dict[str, Invocation]:
    image_entrypoint = _exec_form("ENTRYPOINT")
    out: dict[str, Invocation] = {}
    for where, _, template in _pod_templates():
        spec = template["spec"]
        for container in spec["containers"]:
            cwhere = f"{where}/{container['name']}"
            env = _container_env(cwhere, container)
            command = container.get("command") or image_entrypoint
            assert command == ["connect"], f"{cwhere}: run the connect program, flags in args ({command})"
            argv = [
                re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], str(a)) for a in container.get("args") or []
            ]
            ports = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}
            probes = []
            for what in ("readinessProbe", "livenessProbe", "startupProbe"):
                if what in container:
                    get = container[what]["httpGet"]
                    port = get["port"]
                    probes.append(Probe(what, ports[port] if isinstance(port, str) else int(port), get["path"]))
            pre_stop = 0.0
            hook = (container.get("lifecycle") or {}).get("preStop")
            if hook is not None:
                cmd = hook["exec"]["command"]
                assert cmd[0] == "sleep", f"{cwhere}: only a sleep is expected before SIGTERM"
                pre_stop = float(cmd[1])
            grace = spec.get("terminationGracePeriodSeconds")
            out[cwhere] = Invocation(
                f"examples/k8s/{cwhere}",
                argv,
                env,
                probes,
                None if grace is None else float(grace),
                default_grace=K8S_DEFAULT_GRACE,
                pre_stop=pre_stop,
            )
    return out


def dockerfile_invocation() -> Invocation:
    assert _exec_form("ENTRYPOINT") == ["connect"]
    return Invocation("Dockerfile: CMD", _exec_form("CMD"), {}, keys_from_runtime=True)


COMPOSE_RUNS = compose_invocations()
K8S_RUNS = k8s_invocations()
ALL_RUNS = [dockerfile_invocation(), *COMPOSE_RUNS.values(), *K8S_RUNS.values()]
SERVE_RUNS = [run for run in ALL_RUNS if run.command in ("serve", "dev")]
WORKER_RUNS = [run for run in ALL_RUNS if run.command == "worker"]


# --- what the program accepts ---------------------------------------------------------------------------


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ as the container would have it: this process's, without its
    CONNECT_*/INNGEST_* variables, plus `env`."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith(("CONNECT_", "INNGEST_"))]:
            del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


#: The split roles' flags (`--role`, `--process-id`, `--gateway-url`) come with the CLI of issue 23.
ROLES_CLI = "--role" in _subparsers(cli.build_parser())["serve"]._option_string_actions
needs_role_cli = pytest.mark.xfail(not ROLES_CLI, strict=True, reason="needs --role CLI")


def params(runs: list[Invocation]) -> list[Any]:
    """`runs` as parameters; those of `connect serve` need the split roles' flags."""
    return [pytest.param(r, id=r.where, marks=[needs_role_cli] if r.command != "worker" else []) for r in runs]


def parse(run: Invocation) -> argparse.Namespace:
    """The CLI's parse of `run`, with every flag spelled out in full (argparse
    would take `--drain` for `--drain-timeout`)."""
    with environment(run.env):
        parser = cli.build_parser()
        commands = _subparsers(parser)
        current, argv = parser, iter(run.argv)
        for arg in argv:
            if arg.startswith("--"):
                name = arg.split("=", 1)[0]
                action = current._option_string_actions.get(name)
                assert action is not None, f"{run.where}: connect {run.command}: no flag {name}"
                if "=" not in arg and action.nargs != 0:
                    next(argv, None)  # its value
            elif current is parser:
                assert arg in commands, f"{run.where}: no subcommand {arg!r} (choose from {sorted(commands)})"
                current = commands[arg]
        try:
            return parser.parse_args(run.argv)
        except SystemExit as exc:
            raise AssertionError(f"{run.where}: connect {' '.join(run.argv)} is refused by the CLI") from exc


def settings_of(run: Invocation) -> PlatformSettings:
    """The settings `connect serve`/`dev` would run with."""
    args = parse(run)
    with environment(run.env):
        try:
            settings = cli._platform_settings(args)
        except SystemExit as exc:
            raise AssertionError(f"{run.where}: connect {' '.join(run.argv)}: refused ({exc})") from exc
    assert isinstance(settings, PlatformSettings)
    return settings


def _help_texts(parser: argparse.ArgumentParser) -> str:
    return parser.format_help() + "".join(_help_texts(sub) for sub in _subparsers(parser).values())


def _env_reads(path: Path) -> set[str]:
    """Names of the environment variables `path` reads (os.environ[...], .get, os.getenv, `in os.environ`),
    resolving module-level string constants."""
    tree = ast.parse(path.read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    constants[target.id] = node.value.value

    def is_environ(node: ast.expr) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def name_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    names: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr in ("get", "pop", "setdefault") and is_environ(node.func.value)) or (
                node.func.attr == "getenv"
            ):
                names.add(name_of(node.args[0]))
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            names.add(name_of(node.slice))
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            names.add(name_of(node.left))
    return {n for n in names if n}


KNOWN_ENV = set(re.findall(r"\b(?:CONNECT|INNGEST)_[A-Z0-9_]*[A-Z0-9]", _help_texts(cli.build_parser()))) | {
    name for path in (ROOT / "connect").rglob("*.py") for name in _env_reads(path)
}


def test_the_known_environment_is_found_where_the_code_reads_it() -> None:
    # Read by code only (the worker's and the SDK's), and documented in --help only (the store's pool size).
    assert {"CONNECT_API_URL", "CONNECT_MAX_WORKER_CONCURRENCY", "CONNECT_POLL_WINDOW_MS"} <= KNOWN_ENV
    assert {"CONNECT_EVENT_KEYS", "CONNECT_SIGNING_KEY", "CONNECT_DATABASE_POOL_SIZE"} <= KNOWN_ENV
    assert "CONNECT_NOT_A_SETTING" not in KNOWN_ENV


# --- every invocation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ALL_RUNS, ids=lambda r: r.where)
def test_every_environment_variable_is_one_the_program_reads(run: Invocation) -> None:
    unknown = {n for n in run.env if n.startswith(("CONNECT_", "INNGEST_"))} - KNOWN_ENV
    assert not unknown, f"{run.where}: no code reads {sorted(unknown)}"


@pytest.mark.parametrize("run", params(ALL_RUNS))
def test_every_command_and_flag_exists_and_is_accepted(run: Invocation) -> None:
    args = parse(run)
    if run.command == "worker":
        with environment(run.env):
            assert cli.load_apps(args.target), f"{run.where}: {args.target} serves no function"
    else:
        settings_of(run)


@pytest.mark.parametrize("run", [r for r in SERVE_RUNS if not r.keys_from_runtime], ids=lambda r: r.where)
def test_platform_processes_get_the_keys_serve_requires(run: Invocation) -> None:
    assert run.command == "serve", f"{run.where}: `connect dev` is open mode (no keys): use serve"
    assert run.env.get("CONNECT_SIGNING_KEY") or "--signing-key" in " ".join(run.argv)
    assert run.env.get("CONNECT_EVENT_KEYS") or "--event-key" in " ".join(run.argv)


@pytest.mark.parametrize("run", WORKER_RUNS, ids=lambda r: r.where)
def test_workers_find_the_platform_through_the_api(run: Invocation) -> None:
    # The worker reads CONNECT_GATEWAY_URL as "dial this gateway instead of asking /start",
    # which would pin it to one gateway, a draining one included.
    assert "CONNECT_GATEWAY_URL" not in run.env, f"{run.where}: workers get their gateway from /v0/connect/start"
    assert run.env.get("CONNECT_API_URL", "").startswith("http"), f"{run.where}: no CONNECT_API_URL"
    assert run.env.get("CONNECT_SIGNING_KEY"), f"{run.where}: /v0/connect/start needs the signing key"


@pytest.mark.parametrize("run", params(ALL_RUNS))
def test_grace_periods_exceed_the_drain_deadlines(run: Invocation) -> None:
    if run.command == "worker":
        drain = parse(run).drain_timeout
        assert drain >= 0, f"{run.where}: a worker that drains forever outlasts any grace period"
    else:
        drain = settings_of(run).drain_timeout
    if run.keys_from_runtime:  # the Dockerfile: its STOPSIGNAL and the documented stop timeout
        return
    grace = run.default_grace if run.grace is None else run.grace
    assert grace >= run.pre_stop + drain + EXIT_MARGIN, (
        f"{run.where}: SIGKILL after {grace:g}s, but the drain may take {drain:g}s"
        f" (+ {run.pre_stop:g}s preStop + {EXIT_MARGIN:g}s to exit)"
    )


# --- probes ---------------------------------------------------------------------------------------------


def _probe_targets() -> list[tuple[str, Probe, str]]:
    """(where, probe, server kind: "api", "gateway" or "worker") for every probe."""
    out = []
    for run in ALL_RUNS:
        for probe in run.probes:
            if run.command == "worker":
                assert probe.port == parse(run).health_port, f"{run.where}: {probe} is not the --health-port"
                out.append((run.where, probe, "worker"))
                continue
            settings = settings_of(run)
            if probe.port == settings.port and "api" in settings.roles:
                out.append((run.where, probe, "api"))
            elif probe.port == settings.gateway_port and "gateway" in settings.roles:
                out.append((run.where, probe, "gateway"))
            else:
                raise AssertionError(f"{run.where}: nothing this process runs listens on {probe.port}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_role_cli
@pytest.mark.anyio
async def test_probes_point_at_routes_the_servers_answer(tmp_path: Path) -> None:
    targets = _probe_targets()
    assert {kind for _, _, kind in targets} == {"api", "gateway", "worker"}
    # The API's and the gateway's routes as a gateway process with the worker-facing API serves them,
    # and a worker's probe server.
    gw = await start_standalone_gateway(
        PlatformSettings(port=0, gateway_port=0, db=str(tmp_path / "probes.db"), name="probe routes")
    )
    health = HealthServer(
        _free_port(), "127.0.0.1", ready=lambda: True, state=lambda: "ACTIVE", stalled=lambda: False, scrape=lambda: b""
    )
    await health.start()
    try:
        base = {
            "api": gw.api_url,
            "gateway": f"http://127.0.0.1:{gw.gateway_port}",
            "worker": f"http://127.0.0.1:{health.port}",
        }
        async with httpx.AsyncClient(timeout=10) as http:
            for where, probe, kind in targets:
                resp = await http.get(base[kind] + probe.path)
                assert resp.status_code == 200, f"{where}: {probe.what} GET {probe.path} on the {kind} port: {resp}"
    finally:
        await health.stop()
        await gw.close()


# --- the Dockerfile -------------------------------------------------------------------------------------


def test_the_image_is_python_312_slim_and_runs_connect_as_a_user() -> None:
    images = [args.split()[0] for word, args in DOCKERFILE if word == "FROM"]
    assert images and all(image == "python:3.12-slim" for image in images)
    final_stage = DOCKERFILE[max(i for i, (word, _) in enumerate(DOCKERFILE) if word == "FROM") :]
    users = [args for word, args in final_stage if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage must run as a user other than root"
    assert _exec_form("ENTRYPOINT") == ["connect"]
    installs = [args for word, args in DOCKERFILE if word == "RUN" and "pip install" in args]
    assert installs and not any("[" in args or " -e " in args for args in installs), "no extras, no editable install"
    exposed = {int(p) for word, args in DOCKERFILE if word == "EXPOSE" for p in args.split()}
    assert {PlatformSettings().port, PlatformSettings().gateway_port} <= exposed


@needs_role_cli
def test_the_image_runs_every_role_in_one_process_by_default() -> None:
    settings = settings_of(dockerfile_invocation())
    assert settings.roles == frozenset({"api", "gateway", "executor"})
    assert settings.host == "0.0.0.0"  # reachable from outside the container


def test_what_the_image_copies_is_in_the_build_context() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore starts from nothing and names what the build needs"
    for word, args in DOCKERFILE:
        if word == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert source.rstrip("/") in included, f"COPY {source}: .dockerignore leaves it out"


# --- docker-compose.yml ---------------------------------------------------------------------------------


def _service_of_host(url: str) -> str:
    host = urlsplit(url).hostname
    assert host is not None and host in COMPOSE["services"], f"{url}: no service {host!r}"
    return host


@needs_role_cli
def test_compose_runs_one_api_two_gateways_two_executors_postgres_and_a_worker() -> None:
    services = COMPOSE["services"]
    roles = {name: settings_of(run).roles for name, run in COMPOSE_RUNS.items() if run.command == "serve"}
    by_role = {
        role: sorted(n for n, r in roles.items() if r == frozenset({role})) for role in ("api", "gateway", "executor")
    }
    assert [len(by_role[r]) for r in ("api", "gateway", "executor")] == [1, 2, 2], by_role
    assert len(roles) == 5, "every platform process runs one role"
    postgres = [n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")]
    assert len(postgres) == 1 and "healthcheck" in services[postgres[0]]
    workers = [n for n, r in COMPOSE_RUNS.items() if r.command == "worker"]
    assert [parse(COMPOSE_RUNS[n]).target for n in workers] == ["examples.hello:client"]

    process_ids = [settings_of(COMPOSE_RUNS[n]).process_id for n in roles]
    assert len(set(process_ids)) == len(process_ids) and None not in process_ids, process_ids
    for name in roles:
        settings = settings_of(COMPOSE_RUNS[name])
        assert settings.database_url is not None and _service_of_host(settings.database_url) == postgres[0]
        if settings.roles & {"api", "gateway"}:  # an executor listens on nothing
            assert settings.host == "0.0.0.0", f"{name}: listen beyond the container"
        assert services[name]["depends_on"][postgres[0]]["condition"] == "service_healthy"
    for name in by_role["gateway"]:
        settings = settings_of(COMPOSE_RUNS[name])
        assert settings.gateway_url is not None
        url = urlsplit(settings.gateway_url)
        # Workers on the compose network dial the gateway by its service name.
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "ws",
            name,
            settings.gateway_port,
            limits.CONNECT_PATH,
        ), f"{name}: --gateway-url ws://{name}:<gateway port>{limits.CONNECT_PATH}, not {settings.gateway_url}"
    for name in [*by_role["api"], *by_role["gateway"]]:
        assert COMPOSE_RUNS[name].probes, f"{name}: no healthcheck on /ready"
    for name in workers:
        run = COMPOSE_RUNS[name]
        api = _service_of_host(run.env["CONNECT_API_URL"])
        assert (
            api in by_role["api"] and urlsplit(run.env["CONNECT_API_URL"]).port == settings_of(COMPOSE_RUNS[api]).port
        )
        depends = services[name]["depends_on"]
        for needed in [*by_role["api"], *by_role["gateway"]]:
            assert depends[needed]["condition"] == "service_healthy", f"{name} starts before {needed} is ready"
        assert run.probes, f"{name}: no healthcheck on /ready"


# --- examples/k8s ---------------------------------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_k8s_workload_has_a_disruption_budget_and_every_service_a_backend() -> None:
    workloads = list(_pod_templates())
    assert workloads
    budgets = [doc for _, doc in K8S_DOCS if doc.get("kind") == "PodDisruptionBudget"]
    for where, _, template in workloads:
        labels = template["metadata"]["labels"]
        assert any(_selects(b["spec"]["selector"]["matchLabels"], labels) for b in budgets), f"{where}: no PDB"
    for fname, doc in K8S_DOCS:
        if doc.get("kind") != "Service":
            continue
        backends = [t for _, _, t in workloads if _selects(doc["spec"]["selector"], t["metadata"]["labels"])]
        assert backends, f"{fname}: Service {doc['metadata']['name']} selects no pods"
        for port in doc["spec"]["ports"]:
            names = {p.get("name") for t in backends for c in t["spec"]["containers"] for p in c.get("ports") or []}
            assert port["targetPort"] in names, f"{fname}: targetPort {port['targetPort']} is no container port"


def test_the_kustomization_applies_every_manifest() -> None:
    kustomization = next(doc for _, doc in K8S_DOCS if doc.get("kind") == "Kustomization")
    manifests = {name for name, doc in K8S_DOCS if doc.get("kind") != "Kustomization"}
    assert set(kustomization["resources"]) == manifests


def test_the_secret_holds_placeholders_the_platform_refuses() -> None:
    secret = next(doc for _, doc in K8S_DOCS if doc.get("kind") == "Secret")
    values = secret["stringData"]
    with pytest.raises(ValueError, match="signing key"):
        validate_signing_key(values["signing-key"])
    assert values["event-key"] == "", "an empty event key list is refused by connect serve"


@needs_role_cli
def test_k8s_runs_every_role_and_gateways_advertise_their_pod_address() -> None:
    roles: dict[str, list[str]] = {"api": [], "gateway": [], "executor": []}
    for where, run in K8S_RUNS.items():
        if run.command != "serve":
            continue
        settings = settings_of(run)
        assert len(settings.roles) == 1, f"{where}: one role per pod"
        (role,) = settings.roles
        roles[role].append(where)
        assert settings.database_url is not None
        if role != "executor":  # an executor listens on nothing
            assert settings.host == "0.0.0.0", f"{where}: listen beyond the pod"
        assert settings.process_id == FIELD_SAMPLES["metadata.name"], f"{where}: --process-id=$(POD_NAME)"
        if role == "gateway":
            assert settings.gateway_url is not None
            url = urlsplit(settings.gateway_url)
            assert (url.scheme, url.hostname, url.port, url.path) == (
                "ws",
                FIELD_SAMPLES["status.podIP"],
                settings.gateway_port,
                limits.CONNECT_PATH,
            ), f"{where}: --gateway-url=ws://$(POD_IP):<gateway port>{limits.CONNECT_PATH}"
        if role in ("api", "gateway"):
            kinds = {p.what for p in run.probes}
            assert {"readinessProbe", "livenessProbe"} <= kinds, f"{where}: probes"
    assert all(roles.values()), roles
    workers = [run for run in K8S_RUNS.values() if run.command == "worker"]
    assert workers
    services = {doc["metadata"]["name"]: doc for _, doc in K8S_DOCS if doc.get("kind") == "Service"}
    for run in workers:
        url = urlsplit(run.env["CONNECT_API_URL"])
        service = services[str(url.hostname)]
        assert any(p["port"] == url.port for p in service["spec"]["ports"]), f"{run.where}: {url.port}"
        backends = [w for w, _, t in _pod_templates() if _selects(service["spec"]["selector"], t["metadata"]["labels"])]
        assert backends and all(any(w.startswith(b) for w in roles["api"]) for b in backends), backends
