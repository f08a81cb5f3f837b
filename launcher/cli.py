"""`dockyard launcher …`: talk to a running server's /launcher/v1/ API (or serve it).

Tables for people, `--json` for scripts. The server is `--url` (default http://127.0.0.1:5000,
or $DOCKYARD_LAUNCHER_URL); the token is `--token`, $DOCKYARD_LAUNCHER_TOKEN, the configured
`api_token`, or the one the server generated into data_dir/launcher/api-token.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from dockyard.core.cliargs import repository_arg
from launcher.config import LauncherSettings

DEFAULT_URL = "http://127.0.0.1:5000"
SettingsFor = Callable[[argparse.Namespace], LauncherSettings]


class ApiError(Exception):
    pass


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/") + "/launcher/v1"
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        url = self.base + path
        if query:
            query = {k: v for k, v in query.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = json.loads(payload)["errors"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                message = payload.decode(errors="replace") or exc.reason
            raise ApiError(f"{exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.base}: {exc.reason}") from None
        if raw:
            return payload.decode(errors="replace")
        return json.loads(payload) if payload else None


# --- output ---------------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    cells = [[h for h, _ in columns]]
    for row in rows:
        cells.append([_cell(_get(row, key)) for _, key in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _get(row: dict[str, Any], key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    text = str(value)
    return text[:12] if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else text


COLUMNS = {
    "taskDefinitions": [("FAMILY", "family"), ("REVISION", "revision"), ("STATUS", "status"),
                        ("CPU", "cpu"), ("MEMORY", "memory"), ("REGISTERED", "registeredAt")],
    "instanceTypes": [("NAME", "name"), ("CPU", "cpu"), ("MEMORY", "memory"),
                      ("WARM POOL", "warmPool")],
    "instances": [("ID", "id"), ("NAME", "name"), ("TYPE", "type"), ("STATUS", "status"),
                  ("REACHABLE", "reachable"), ("POOL", "pool"), ("TASKS", "runningTasks"),
                  ("CPU FREE", "free.cpu"), ("MEM FREE", "free.memory"), ("ORIGIN", "origin"),
                  ("ENDPOINT", "endpoint")],
    "services": [("NAME", "name"), ("REPOSITORY", "repository"), ("TAGS", "tags"),
                 ("FAMILY", "family"), ("DESIRED", "desiredCount"),
                 ("CURRENT", "currentDeployment"), ("STATUS", "status")],
    "deployments": [("ID", "id"), ("SERVICE", "service"), ("TAG", "tag"), ("STATE", "state"),
                    ("DIGEST", "digest"), ("CREATED", "createdAt"), ("REASON", "reason")],
    "tasks": [("ID", "id"), ("SERVICE", "service"), ("INSTANCE", "instanceId"),
              ("STATUS", "status"), ("HEALTH", "health"), ("LAST HEALTH", "lastHealth"),
              ("PORTS", "ports"), ("IMAGE", "image"), ("REASON", "reason")],
    "events": [("AT", "at"), ("KIND", "kind"), ("MESSAGE", "message")],
    "secrets": [("NAME", "name"), ("CREATED", "createdAt"), ("UPDATED", "updatedAt")],
}
ALIASES = {"td": "task-definitions"}


def show(args: argparse.Namespace, payload: Any, kind: str | None = None) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    if kind and isinstance(payload, dict) and kind in payload:
        print(table(payload[kind], COLUMNS[kind]))
        return
    if isinstance(payload, dict):
        for key, value in payload.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                print(f"{key}:")
                cols = COLUMNS.get(key) or [(k.upper(), k) for k in value[0]]
                print("  " + table(value, cols).replace("\n", "\n  "))
            elif isinstance(value, dict | list):
                print(f"{key}: {json.dumps(value)}")
            else:
                print(f"{key}: {_cell(value) if key != 'id' else value}")
        return
    print(payload)


# --- commands -------------------------------------------------------------------------------


def _kv(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ApiError(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _strategy(items: Sequence[str] | None) -> list[dict[str, str]] | None:
    if not items:
        return None
    out = []
    for item in items:
        kind, _, field = item.partition(":")
        out.append({"type": kind, "field": field} if field else {"type": kind})
    return out


def _constraints(items: Sequence[str] | None) -> list[dict[str, str]] | None:
    if not items:
        return None
    out = []
    for item in items:
        if item == "distinctInstance":
            out.append({"type": "distinctInstance"})
        else:
            kind, _, expression = item.partition(":")
            out.append({"type": kind, "expression": expression})
    return out


def _read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(f"{path}: not valid JSON ({exc})") from None


def _secret_value(args: argparse.Namespace) -> str:
    """A secret's value from a file, a prompt, or one line on stdin — never from arguments,
    which other users can read in the process list and shells keep in history."""
    if args.from_file:
        return pathlib.Path(args.from_file).read_text().rstrip("\n")
    if sys.stdin.isatty():
        return getpass.getpass(f"value of secret {args.name}: ")
    return sys.stdin.readline().rstrip("\n")


def _deployment_config(args: argparse.Namespace) -> dict[str, int]:
    out = {}
    if args.min_healthy is not None:
        out["minimumHealthyPercent"] = args.min_healthy
    if args.max_percent is not None:
        out["maximumPercent"] = args.max_percent
    return out


def _service_options(args: argparse.Namespace, body: dict[str, Any]) -> None:
    """Options `services create` and `services update` share."""
    if args.strategy:
        body["placementStrategy"] = _strategy(args.strategy)
    if args.constraint:
        body["placementConstraints"] = _constraints(args.constraint)
    if args.order:
        body["order"] = args.order
    if args.host or args.path:
        body["ingress"] = {k: v for k, v in (("host", args.host), ("path", args.path)) if v}
    if args.circuit_breaker is not None or args.no_rollback:
        body["deploymentCircuitBreaker"] = {"threshold": args.circuit_breaker or 1,
                                            "rollback": not args.no_rollback}
    config = _deployment_config(args)
    if config:
        body["deploymentConfiguration"] = config


def run_command(args: argparse.Namespace, client: Client) -> None:
    c = client
    cmd = ALIASES.get(args.launcher_command, args.launcher_command)
    sub = getattr(args, "action", None)
    if cmd == "task-definitions":
        if sub == "register":
            show(args, c.call("POST", "/task-definitions", _read_json(args.file)))
        elif sub == "list":
            show(args, c.call("GET", "/task-definitions", query={"family": args.family}),
                 "taskDefinitions")
        elif sub == "show":
            family, _, rev = args.ref.partition(":")
            show(args, c.call("GET", f"/task-definitions/{family}/{rev or 'latest'}"))
        elif sub == "deregister":
            family, _, rev = args.ref.partition(":")
            show(args, c.call("DELETE", f"/task-definitions/{family}/{rev}"))
    elif cmd == "instance-types":
        show(args, c.call("GET", "/instance-types"), "instanceTypes")
    elif cmd == "instances":
        if sub == "list":
            show(args, c.call("GET", "/instances"), "instances")
        elif sub == "show":
            show(args, c.call("GET", f"/instances/{args.id}"))
        elif sub == "register":
            body = {"endpoint": args.endpoint, "type": args.type, "name": args.name,
                    "attributes": _kv(args.attribute), "network": args.network}
            show(args, c.call("POST", "/instances", {k: v for k, v in body.items() if v}))
        elif sub == "provision":
            show(args, c.call("POST", "/instances",
                              {"provider": args.provider, "type": args.type,
                               "pool": args.pool}))
        elif sub in ("drain", "activate"):
            status = "DRAINING" if sub == "drain" else "ACTIVE"
            show(args, c.call("PATCH", f"/instances/{args.id}", {"status": status}))
        elif sub == "remove":
            c.call("DELETE", f"/instances/{args.id}")
            show(args, {"removed": args.id})
    elif cmd == "services":
        if sub == "list":
            show(args, c.call("GET", "/services"), "services")
        elif sub == "show":
            show(args, c.call("GET", f"/services/{args.name}"))
        elif sub == "create":
            body = _read_json(args.file) if args.file else {}
            if not isinstance(body, dict):
                raise ApiError(f"{args.file}: a service is a JSON object")
            for key, value in (("name", args.name), ("repository", args.repository),
                               ("taskDefinition", args.task_definition), ("tags", args.tags),
                               ("desiredCount", args.desired_count)):
                if value is not None:
                    body[key] = value
            missing = [flag for flag, key in (("--name", "name"), ("--repository", "repository"),
                                              ("--task-definition", "taskDefinition"))
                       if key not in body]
            if missing:
                raise ApiError(f"services create needs {', '.join(missing)} (or --file)")
            body.setdefault("tags", ["*"])
            body.setdefault("desiredCount", 1)
            _service_options(args, body)
            if args.digest:
                body["digest"] = args.digest
            show(args, c.call("POST", "/services", body))
        elif sub == "update":
            body = {}
            if args.desired_count is not None:
                body["desiredCount"] = args.desired_count
            if args.task_definition:
                body["taskDefinition"] = args.task_definition
            if args.tags:
                body["tags"] = args.tags
            _service_options(args, body)
            if not body:
                raise ApiError("nothing to update: give at least one option")
            show(args, c.call("PATCH", f"/services/{args.name}", body))
        elif sub == "events":
            show(args, c.call("GET", f"/services/{args.name}/events",
                              query={"limit": args.limit}), "events")
        elif sub == "rollback":
            body = {"to": args.to} if args.to else {"previous": True}
            show(args, c.call("POST", f"/services/{args.name}/rollback", body))
        elif sub == "delete":
            c.call("DELETE", f"/services/{args.name}")
            show(args, {"deleting": args.name})
        elif sub == "deploy":
            body = {"digest": args.digest, "tag": args.tag, "force": args.force,
                    "registry": args.registry}
            show(args, c.call("POST", f"/services/{args.name}/deployments",
                              {k: v for k, v in body.items() if v}))
    elif cmd == "deployments":
        if sub == "list":
            show(args, c.call("GET", "/deployments",
                              query={"service": args.service, "state": args.state,
                                     "limit": args.limit}), "deployments")
        elif sub == "show":
            show(args, c.call("GET", f"/deployments/{args.id}"))
    elif cmd == "tasks":
        if sub == "list":
            show(args, c.call("GET", "/tasks", query={"service": args.service,
                                                      "status": args.status}), "tasks")
        elif sub == "show":
            show(args, c.call("GET", f"/tasks/{args.id}"))
        elif sub == "stop":
            show(args, c.call("POST", f"/tasks/{args.id}/stop"))
    elif cmd == "logs":
        text = c.call("GET", f"/tasks/{args.id}/logs", query={"tail": args.tail}, raw=True)
        if args.json:
            print(json.dumps({"task": args.id, "logs": text}))
        else:
            sys.stdout.write(text)
    elif cmd == "images-in-use":
        payload = c.call("GET", "/images-in-use")
        if args.json:
            show(args, payload)
        else:
            print("\n".join(payload["images"]))
    elif cmd == "secrets":
        if sub == "put":
            value = _secret_value(args)
            if not value:
                raise ApiError("empty secret value")
            show(args, c.call("PUT", f"/secrets/{args.name}", {"value": value}))
        elif sub == "list":
            show(args, c.call("GET", "/secrets"), "secrets")
        elif sub in ("rm", "remove"):
            c.call("DELETE", f"/secrets/{args.name}")
            show(args, {"removed": args.name})
    else:
        raise ApiError(f"unknown command {cmd!r}")


# --- argument parsing -----------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # SUPPRESS everywhere: a sub-parser's default would overwrite what the parent parsed
    # (`dockyard --config F launcher …`, `launcher --config F services list`).
    default: Any = argparse.SUPPRESS
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="dockyard TOML file (finds the API token and, for serve, the rest)")
    parser.add_argument("--data", metavar="DIR", default=default,
                        help="data directory (default ./data): where the generated token is")
    parser.add_argument("--url", default=default,
                        help=f"server URL (default $DOCKYARD_LAUNCHER_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=default, help="launcher API token")
    parser.add_argument("--json", action="store_true", default=default,
                        help="print JSON for scripts")


def register(subparsers: Any, settings_for: SettingsFor) -> argparse.ArgumentParser:
    """Add `launcher` and its commands to a `dockyard` CLI; sets `func(args) -> int`."""
    top = subparsers.add_parser("launcher", help="push-to-deploy: services, instances, tasks")
    _common(top, suppress=False)
    cmds = top.add_subparsers(dest="launcher_command", metavar="COMMAND", required=True)

    def leaf(parent: Any, name: str, help_text: str, **kw: Any) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, **kw)
        _common(p, suppress=True)
        return p

    serve = leaf(cmds, "serve", "run the launcher alone (its HTTP API only)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)

    td = cmds.add_parser("task-definitions", aliases=["td"], help="task definitions")
    tds = td.add_subparsers(dest="action", required=True)
    leaf(tds, "register", "register a revision from a JSON file (- for stdin)").add_argument(
        "file")
    leaf(tds, "list", "list revisions").add_argument("--family")
    leaf(tds, "show", "show FAMILY[:REVISION]").add_argument("ref")
    leaf(tds, "deregister", "deregister FAMILY:REVISION").add_argument("ref")

    it = cmds.add_parser("instance-types", help="configured instance types")
    its = it.add_subparsers(dest="action")
    leaf(its, "list", "list instance types")
    _common(it, suppress=True)

    inst = cmds.add_parser("instances", help="Docker Engine instances")
    insts = inst.add_subparsers(dest="action", required=True)
    leaf(insts, "list", "list instances with free capacity")
    leaf(insts, "show", "show one instance").add_argument("id")
    reg = leaf(insts, "register", "register an engine endpoint")
    reg.add_argument("--endpoint", required=True, help="unix:///path or tcp://host:port")
    reg.add_argument("--type", help="instance type (else the engine's labels declare it)")
    reg.add_argument("--name")
    reg.add_argument("--attribute", action="append", metavar="KEY=VALUE")
    reg.add_argument("--network", help="instances sharing a network share host ports")
    prov = leaf(insts, "provision", "start a new instance through a provider")
    prov.add_argument("--type", required=True)
    prov.add_argument("--provider", default="local")
    prov.add_argument("--pool", action="store_true", help="keep it idle in the warm pool")
    for name, text in (("drain", "stop placing tasks there and move its tasks away"),
                       ("activate", "accept tasks again"),
                       ("remove", "deregister (and stop, if provisioned) an idle instance")):
        leaf(insts, name, text).add_argument("id")

    svc = cmds.add_parser("services", help="services: repository + tags -> task definition")
    svcs = svc.add_subparsers(dest="action", required=True)
    leaf(svcs, "list", "list services")
    leaf(svcs, "show", "show a service and its tasks").add_argument("name")
    create = leaf(svcs, "create", "create a service (from flags, or --file SERVICE.json)")
    create.add_argument("--file", metavar="FILE",
                        help="the service as JSON (examples/launcher/*.service.json); flags "
                             "given as well override its fields")
    create.add_argument("--name")
    create.add_argument("--repository", type=repository_arg)
    create.add_argument("--task-definition", help="FAMILY or FAMILY:REVISION")
    create.add_argument("--tags", nargs="+", help="tag glob patterns (default *)")
    create.add_argument("--desired-count", type=int)
    create.add_argument("--digest", help="deploy this digest right away")
    update = leaf(svcs, "update", "change desired count, task definition, tags, placement, "
                  "rollout, policy, ingress")
    update.add_argument("name")
    update.add_argument("--desired-count", type=int)
    update.add_argument("--task-definition")
    update.add_argument("--tags", nargs="+")
    for p in (create, update):
        p.add_argument("--min-healthy", type=int, help="minimumHealthyPercent (default 100)")
        p.add_argument("--max-percent", type=int, help="maximumPercent (default 200)")
        p.add_argument("--strategy", action="append",
                       help="binpack:cpu|binpack:memory|spread:instanceId|spread:attribute:K|"
                            "random (repeat for tie-breakers)")
        p.add_argument("--constraint", action="append",
                       help="distinctInstance or memberOf:EXPRESSION")
        p.add_argument("--order", choices=["any", "semver"],
                       help="semver: deploy only tags newer than what runs")
        p.add_argument("--host", help="ingress: route this Host header to the service")
        p.add_argument("--path", help="ingress: route this path prefix to the service")
        p.add_argument("--circuit-breaker", type=int, metavar="N",
                       help="failed new tasks before the deployment fails (default 1)")
        p.add_argument("--no-rollback", action="store_true",
                       help="a failed deployment does not return to the previous one")
    leaf(svcs, "delete", "stop all tasks and delete the service").add_argument("name")
    dep = leaf(svcs, "deploy", "deploy a digest or tag (default: redeploy the current one)")
    dep.add_argument("name")
    dep.add_argument("--digest")
    dep.add_argument("--tag", help="resolved to its digest by the registry, now")
    dep.add_argument("--registry", help="host:port to pull from (default [launcher] registry)")
    dep.add_argument("--force", action="store_true",
                     help="even if it is already current, or older under order=semver")
    rb = leaf(svcs, "rollback", "deploy the previous image again (or --to DIGEST)")
    rb.add_argument("name")
    which = rb.add_mutually_exclusive_group()
    which.add_argument("--to", metavar="DIGEST", help="a digest (or deployment id) to return to")
    which.add_argument("--previous", action="store_true",
                       help="the deployment before the current one (the default)")
    ev = leaf(svcs, "events", "placements, shortfalls, health failures, moves, rollbacks")
    ev.add_argument("name")
    ev.add_argument("--limit", type=int, default=50)

    deps = cmds.add_parser("deployments", help="deployments and their states")
    depss = deps.add_subparsers(dest="action", required=True)
    dl = leaf(depss, "list", "list deployments")
    dl.add_argument("--service")
    dl.add_argument("--state", help="comma-separated states")
    dl.add_argument("--limit", type=int, default=50)
    leaf(depss, "show", "show a deployment with its state history").add_argument("id")

    tasks = cmds.add_parser("tasks", help="tasks")
    taskss = tasks.add_subparsers(dest="action", required=True)
    tl = leaf(taskss, "list", "list tasks")
    tl.add_argument("--service")
    tl.add_argument("--status", default="active", choices=["active", "stopped", "all"])
    leaf(taskss, "show", "show a task").add_argument("id")
    leaf(taskss, "stop", "stop a task (its service starts a replacement)").add_argument("id")

    logs = leaf(cmds, "logs", "print a task's container logs")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, default=200)

    leaf(cmds, "images-in-use", "images the launcher needs kept (GC hook)")

    sec = cmds.add_parser("secrets", help="secrets for task definitions (encrypted at rest)")
    secs = sec.add_subparsers(dest="action", required=True)
    put = leaf(secs, "put", "store a secret (value from a prompt, one line on stdin, or a file)")
    put.add_argument("name")
    put.add_argument("--from-file", metavar="FILE")
    leaf(secs, "list", "list secret names (values are never shown)")
    leaf(secs, "rm", "remove a secret", aliases=["remove"]).add_argument("name")

    def func(args: argparse.Namespace) -> int:
        return main_with(args, settings_for)

    top.set_defaults(func=func)
    return top


def _settings_or_none(args: argparse.Namespace, settings_for: SettingsFor
                      ) -> LauncherSettings | None:
    try:
        return settings_for(args)
    except Exception as exc:
        if args.config:  # a file named on purpose must load: say why it does not
            raise ApiError(f"cannot use --config {args.config}: {exc}") from None
        return None  # no config file is fine for a client: flags and env are enough


def _token(args: argparse.Namespace, settings: LauncherSettings | None) -> str | None:
    if args.token:
        return args.token
    if os.environ.get("DOCKYARD_LAUNCHER_TOKEN"):
        return os.environ["DOCKYARD_LAUNCHER_TOKEN"]
    if settings is None:
        return None
    if settings.api_token:
        return settings.api_token
    try:
        return settings.token_path.read_text().strip()
    except OSError:
        return None


def main_with(args: argparse.Namespace, settings_for: SettingsFor) -> int:
    for name, default in (("config", None), ("data", None), ("url", None), ("token", None),
                          ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.launcher_command == "serve":
        return serve(settings_for(args), args.host, args.port)
    try:
        settings = _settings_or_none(args, settings_for)
        url = args.url or os.environ.get("DOCKYARD_LAUNCHER_URL") or DEFAULT_URL
        client = Client(url, _token(args, settings))
        run_command(args, client)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def serve(settings: LauncherSettings, host: str, port: int) -> int:
    from aiohttp import web

    from launcher.app import make_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(f"launcher listening on http://{host}:{port}/launcher/v1/", flush=True)
    web.run_app(make_app(settings), host=host, port=port, print=None)
    return 0
