"""`dockyard check-config FILE`: load every section through its owner's parser, report problems.

Unknown keys are reported with the closest known key (a typo such as `tls_crt` would otherwise
silently leave TLS off); invalid values with the parser's own message. Exit status: 0 when the
file is valid, 1 when it has problems, 2 when it cannot be read.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from registry.config import SECTIONS as TYPED_SECTIONS
from registry.config import Config, ConfigError, load_config, parse_size

from .cluster import roles_of
from .logs import check_settings as check_log
from .ops.schema import SCHEMA, TOP_LEVEL, Section, apply_env

STORAGE_DRIVERS = ("filesystem", "s3")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_keys(section: Section, table: dict[str, Any]) -> list[str]:
    """Keys of `table` the schema does not know, at any depth the schema describes
    (`notifications.endpoints[].url`, `launcher.providers.local.dockerd`)."""
    if section.free_form is not None:
        return []
    known = {k.name for k in section.keys}
    problems: list[str] = []

    def deeper(path: str) -> set[str]:
        return {k for k in known if k.startswith(path)}

    def walk(prefix: str, shown: str, value: dict[str, Any]) -> None:
        siblings = sorted({k[len(prefix) :].split(".")[0].split("[")[0] for k in deeper(prefix)})
        for key, item in value.items():
            path = prefix + key
            if path not in known and not deeper(path + ".") and not deeper(path + "[]"):
                problems.append(f"unknown key {section.name}.{shown}{key}{_suggest(key, siblings)}")
                continue
            if isinstance(item, dict) and deeper(path + "."):
                walk(path + ".", f"{shown}{key}.", item)
            elif isinstance(item, list) and deeper(path + "[]."):
                for i, element in enumerate(item):
                    if isinstance(element, dict):
                        walk(path + "[].", f"{shown}{key}[{i}].", element)

    walk("", "", table)
    return problems


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether a TOML value fits a registry/config.py dataclass annotation."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(
            hint,
            {"__builtins__": {}},
            {"str": str, "int": int, "float": float, "bool": bool, "None": None, "list": list},
        )
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return all(_type_ok(v, item) for v in value)
    return False


def _typed_problems(config: Config) -> list[str]:
    problems = []
    for name, cls in TYPED_SECTIONS.items():
        table = config.section(name)
        obj = getattr(config, name)
        for f in fields(cls):
            # The file's value, or the environment's after registry/config.py coerced it.
            value = getattr(obj, f.name)
            if f.name in table or value != f.default:
                if not _type_ok(value, f.type):
                    problems.append(f"{name}.{f.name}: {value!r} is not of type {f.type}")
    return problems


def _check_addr(value: str, key: str) -> list[str]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return [f"{key}: {value!r} is not HOST:PORT"]
    return []


def _semantic_problems(config: Config) -> list[str]:
    from .ops.tls import server_ssl_context

    problems = _check_addr(config.http.addr, "http.addr")
    if config.http.metrics_addr:
        problems += _check_addr(config.http.metrics_addr, "http.metrics_addr")
    try:
        server_ssl_context(config.http)
    except ConfigError as exc:
        problems.append(str(exc))
    if config.storage.driver not in STORAGE_DRIVERS:
        problems.append(
            f"storage.driver: {config.storage.driver!r} is not one of {', '.join(STORAGE_DRIVERS)}"
        )
    if config.storage.driver == "s3" and int(config.storage.part_size_mib) < 5:
        problems.append("storage.part_size_mib: S3 parts must be at least 5 MiB")
    if config.http.workers < 1:
        problems.append("http.workers: must be at least 1")
    problems += check_log(config.log)
    try:
        roles_of(config.cluster)
    except ConfigError as exc:
        problems.append(str(exc))
    if config.cluster.heartbeat_seconds <= 0:
        problems.append("cluster.heartbeat_seconds: must be positive")
    return problems


def _owner_problems(config: Config) -> list[str]:
    """Each raw section through the parser of the part that owns it."""
    from auth.config import AuthSettings
    from launcher.config import LauncherSettings
    from registry.events import NotificationSettings

    problems = []
    parsers: dict[str, Callable[[dict[str, Any]], object]] = {
        "auth": lambda t: AuthSettings.from_dict(t, config.data_dir),
        "notifications": NotificationSettings.from_dict,
        "launcher": lambda t: LauncherSettings.from_dict(t, config.data_dir),
    }
    for name, parse in parsers.items():
        if name not in config.raw:
            continue
        try:
            parse(dict(config.section(name) or {}))
        except Exception as exc:  # each part raises its own error type; all mean "invalid"
            message = str(exc)
            problems.append(message if name in message else f"[{name}] {message}")
    for customer, size in config.section("quotas").items():
        try:
            parse_size(size)
        except ConfigError as exc:
            problems.append(f"quotas.{customer}: {exc}")
    token = config.section("admin").get("token")
    if token is not None and (not isinstance(token, str) or not token):
        problems.append("admin.token: a non-empty string is required")
    return problems


def unknown_entries(config: Config) -> list[str]:
    """Sections and keys of the file that no part reads, one line each with the closest known
    name. `dockyard serve` refuses to start on any of them (a typo such as `[metadta]` would
    otherwise silently run on defaults)."""
    known_top = {k.name for k in TOP_LEVEL} | set(SCHEMA)
    problems = []
    for key, value in config.raw.items():
        if key.startswith("_"):
            continue
        if key not in known_top:
            kind = "section" if isinstance(value, dict) else "key"
            problems.append(f"unknown {kind} {key}{_suggest(key, sorted(known_top))}")
    for name, section in SCHEMA.items():
        if isinstance(config.raw.get(name), dict):
            problems += _unknown_keys(section, config.raw[name])
    return problems


def check_config(config: Config) -> list[str]:
    """Every problem of a loaded configuration, as one line each (empty: valid)."""
    problems = unknown_entries(config)
    for key, value in config.raw.items():
        if key in SCHEMA and not isinstance(value, dict):
            problems.append(f"{key}: expected a table ([{key}])")
    problems += _typed_problems(config)
    problems += _semantic_problems(config)
    problems += _owner_problems(config)
    # Keep first occurrences: typed sections report unknown keys through two paths.
    return list(dict.fromkeys(problems))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        config = load_config(path, data_dir=args.data)
        apply_env(config)
    except ConfigError as exc:
        print(f"{path}: error: {exc}", file=sys.stderr)
        return 2
    problems = check_config(config)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    sections = ", ".join(s for s in SCHEMA if s in config.raw) or "defaults only"
    print(f"{path}: OK ({sections})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a configuration file and report unknown keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--data", metavar="DIR", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_check_config)
