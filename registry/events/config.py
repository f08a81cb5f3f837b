"""The `[notifications]` configuration section: webhook endpoints and outbox tuning.

Parsed from plain dicts (what a TOML loader returns), e.g.::

    [notifications]
    retention = "7d"

    [[notifications.endpoints]]
    name = "ci"
    url = "https://ci.example.com/hooks/registry"
    headers = { Authorization = "Bearer s3cr3t" }
    timeout = "5s"
    backoff = "1s"
    max_backoff = "1h"
    max_attempts = 20
    actions = ["push", "delete"]
    repositories = ["acme/*"]
    tags = ["v*", "latest"]
    ignore_media_types = ["application/vnd.oci.image.layer.*"]
    format = "envelope"          # or "cloudevents"
    secret = "whsec_…"           # signs every delivery (see README.md)

Keys of the reference registry's YAML (`ignoredmediatypes`, `ignore.mediatypes`,
`ignore.actions`, `threshold`, list-valued headers) are accepted too, so an existing
`notifications` block can be translated key for key. Unknown keys are an error: a typo that
silently disables a filter or a signature is worse than a refusal to start.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from registry.events.model import RegistryEvent

FORMATS = ("envelope", "cloudevents")
DEFAULT_ACTIONS = ("push", "delete")


class ConfigError(ValueError):
    """The notifications section is invalid; the message names the offending key."""


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(value: Any, key: str = "duration") -> float:
    """Seconds from a number (seconds) or a Go-style duration string ("500ms", "1m30s", "7d")."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ConfigError(f"{key}: cannot parse duration {value!r}") from None
    else:
        raise ConfigError(f"{key}: expected a duration, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative")
    return seconds


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a list of strings")


def _headers(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table of header names to values")
    out: list[tuple[str, str]] = []
    for name, raw in value.items():
        # The reference registry writes header values as lists (`Authorization: [Bearer x]`).
        for item in _str_list(raw, f"{key}.{name}"):
            if "\n" in item or "\r" in item or "\n" in name or "\r" in name:
                raise ConfigError(f"{key}.{name}: line breaks are not allowed in headers")
            out.append((str(name), item))
    return tuple(out)


def _matches(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    backoff: float = 1.0  # delay before the second attempt; doubles after every failure
    max_backoff: float = 3600.0
    max_attempts: int = 20
    jitter: float = 0.2  # each delay is multiplied by a random factor in [1-jitter, 1+jitter]
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    repositories: tuple[str, ...] = ()  # glob patterns (fnmatch: `*` also crosses `/`)
    tags: tuple[str, ...] = ()  # glob patterns; when set, untagged events do not match
    ignore_media_types: tuple[str, ...] = ()  # glob patterns
    format: str = "envelope"
    # Several secrets sign with each (one `v1=` per secret), which lets consumers rotate keys.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    # Also send GitHub's `X-Hub-Signature-256: sha256=<hmac of the body>` (first secret), which
    # many ready-made receivers verify. It has no timestamp, so it does not stop replays.
    github_signature: bool = False
    disabled: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EndpointConfig:
        if not isinstance(d, Mapping):
            raise ConfigError("notifications.endpoints: each endpoint must be a table")
        data = dict(d)
        name = data.pop("name", None)
        if not isinstance(name, str) or not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ConfigError(
                "notifications.endpoints: `name` is required (letters, digits, '.', '_', '-')"
            )
        where = f"notifications.endpoints[{name}]"
        url = data.pop("url", None)
        if (
            not isinstance(url, str)
            or urlsplit(url).scheme not in ("http", "https")
            or not (urlsplit(url).hostname)
        ):
            raise ConfigError(f"{where}.url: an http:// or https:// URL is required")
        kwargs: dict[str, Any] = {"name": name, "url": url}

        ignore_types: list[str] = []
        ignore_actions: list[str] = []
        if "headers" in data:
            kwargs["headers"] = _headers(data.pop("headers"), f"{where}.headers")
        for key in ("timeout", "backoff", "max_backoff"):
            if key in data:
                kwargs[key] = parse_duration(data.pop(key), f"{where}.{key}")
        if "max_attempts" in data:
            attempts = data.pop("max_attempts")
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise ConfigError(f"{where}.max_attempts: a positive integer is required")
            kwargs["max_attempts"] = attempts
        if "jitter" in data:
            jitter = data.pop("jitter")
            if (
                isinstance(jitter, bool)
                or not isinstance(jitter, int | float)
                or not (0 <= jitter <= 0.5)
            ):
                raise ConfigError(f"{where}.jitter: a number between 0 and 0.5 is required")
            kwargs["jitter"] = float(jitter)
        for key in ("actions", "repositories", "tags"):
            if key in data:
                kwargs[key] = _str_list(data.pop(key), f"{where}.{key}")
        for key in ("ignore_media_types", "ignoredmediatypes"):
            if key in data:
                ignore_types.extend(_str_list(data.pop(key), f"{where}.{key}"))
        if "ignore" in data:
            ignore = data.pop("ignore")
            if not isinstance(ignore, Mapping) or set(ignore) - {"mediatypes", "actions"}:
                raise ConfigError(f"{where}.ignore: only `mediatypes` and `actions` are known")
            ignore_types.extend(_str_list(ignore.get("mediatypes", []), f"{where}.ignore"))
            ignore_actions.extend(_str_list(ignore.get("actions", []), f"{where}.ignore"))
        if "format" in data:
            fmt = data.pop("format")
            if fmt not in FORMATS:
                raise ConfigError(f"{where}.format: one of {', '.join(FORMATS)}")
            kwargs["format"] = fmt
        secrets: list[str] = []
        if "secret" in data:
            secrets.extend(_str_list(data.pop("secret"), f"{where}.secret"))
        if "secret_env" in data:
            # Keeps the secret out of the config file: the value names an environment variable.
            env_name = data.pop("secret_env")
            if not isinstance(env_name, str) or not os.environ.get(env_name):
                raise ConfigError(f"{where}.secret_env: environment variable is unset or empty")
            secrets.append(os.environ[env_name])
        if any(not s for s in secrets):
            raise ConfigError(f"{where}.secret: must not be empty")
        kwargs["secrets"] = tuple(secrets)
        for key in ("disabled", "github_signature"):
            if key in data:
                flag = data.pop(key)
                if not isinstance(flag, bool):
                    raise ConfigError(f"{where}.{key}: true or false")
                kwargs[key] = flag
        if kwargs.get("github_signature") and not secrets:
            raise ConfigError(f"{where}.github_signature: needs a `secret`")
        # The reference registry's "failures before backing off": our backoff is per event.
        data.pop("threshold", None)
        if data:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(data))}")

        if ignore_types:
            kwargs["ignore_media_types"] = tuple(ignore_types)
        if ignore_actions:
            kwargs["actions"] = tuple(
                a for a in kwargs.get("actions", DEFAULT_ACTIONS) if a not in ignore_actions
            )
        endpoint = cls(**kwargs)
        if endpoint.max_backoff < endpoint.backoff:
            raise ConfigError(f"{where}.max_backoff: must be at least `backoff`")
        if endpoint.timeout <= 0:
            raise ConfigError(f"{where}.timeout: must be positive")
        return endpoint

    def matches(self, event: RegistryEvent) -> bool:
        """Whether this endpoint wants `event` (decided once, when the event is published)."""
        return self.wants(
            action=event.action,
            repository=event.repository,
            tag=event.tag,
            media_type=event.media_type,
        )

    def wants(self, *, action: str, repository: str, tag: str | None, media_type: str) -> bool:
        if self.disabled:
            return False
        if "*" not in self.actions and action not in self.actions:
            return False
        if self.repositories and not _matches(self.repositories, repository):
            return False
        if self.tags and (not tag or not _matches(self.tags, tag)):
            return False
        return not (
            self.ignore_media_types and media_type and _matches(self.ignore_media_types, media_type)
        )


@dataclass(frozen=True)
class NotificationSettings:
    endpoints: tuple[EndpointConfig, ...] = ()
    # How often a dispatcher looks for work published by other processes or due retries.
    poll_interval: float = 1.0
    # Events (and their delivery log) older than this are deleted.
    retention: float = 7 * 86400.0
    # Deliveries in flight at once per process (each to a different endpoint/repository queue).
    concurrency: int = 8

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> NotificationSettings:
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError("notifications: expected a table")
        data = dict(section)
        raw_endpoints = data.pop("endpoints", [])
        if not isinstance(raw_endpoints, list):
            raise ConfigError("notifications.endpoints: expected an array of tables")
        endpoints = tuple(EndpointConfig.from_dict(e) for e in raw_endpoints)
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ConfigError("notifications.endpoints: endpoint names must be unique")
        kwargs: dict[str, Any] = {"endpoints": endpoints}
        for key in ("poll_interval", "retention"):
            if key in data:
                kwargs[key] = parse_duration(data.pop(key), f"notifications.{key}")
        if "concurrency" in data:
            conc = data.pop("concurrency")
            if isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
                raise ConfigError("notifications.concurrency: a positive integer is required")
            kwargs["concurrency"] = conc
        # The reference registry's per-event options (`events.includereferences`) do not apply.
        data.pop("events", None)
        if data:
            raise ConfigError(f"notifications: unknown key(s) {', '.join(sorted(data))}")
        settings = cls(**kwargs)
        if settings.poll_interval <= 0:
            raise ConfigError("notifications.poll_interval: must be positive")
        return settings

    def wants_action(self, action: str) -> bool:
        """Whether any endpoint takes `action` events (push and delete always matter: the
        in-process subscription sees every event). Lets the registry skip publishing pulls."""
        return action in DEFAULT_ACTIONS or any(
            not e.disabled and ("*" in e.actions or action in e.actions) for e in self.endpoints
        )

    def endpoint(self, name: str) -> EndpointConfig | None:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None
