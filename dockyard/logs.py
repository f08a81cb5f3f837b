"""Logging: one JSON object per line for log pipelines, a readable line for terminals.

Every record's `extra={...}` fields become JSON keys, so events are searchable by field
(`request_id`, `customer`, `repository`…) rather than by parsing messages. The access log is one
record per HTTP request on the `dockyard.access` logger, written by aiohttp once the response
has been sent, so its byte count and duration include the body transfer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from dockyard.core.oci import customer_of
from registry.access import ACCESS
from registry.config import ConfigError, LogSettings
from registry.handlers.base import REGISTRY, REQUEST_ID

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("json", "text", "auto")
ACCESS_LOGGER = "dockyard.access"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Fields the text format leaves out because the access message already shows them.
_TEXT_HIDDEN = {"method", "path", "status", "bytes_out", "duration_ms", "remote", "user_agent"}
# Chatty libraries, quieted unless the level is debug.
_NOISY = ("botocore", "aiobotocore", "urllib3", "docker", "asyncio")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + (
        f".{int(created % 1 * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = {k: v for k, v in _extras(record).items() if k not in _TEXT_HIDDEN}
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def check_settings(settings: LogSettings) -> list[str]:
    problems = []
    if str(settings.level).lower() not in LEVELS:
        problems.append(f"log.level: {settings.level!r} is not one of {', '.join(LEVELS)}")
    if settings.format not in FORMATS:
        problems.append(f"log.format: {settings.format!r} is not one of {', '.join(FORMATS)}")
    return problems


def setup_logging(settings: LogSettings, stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one writing `settings.format` to `stream`."""
    problems = check_settings(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = getattr(logging, str(settings.level).upper(), logging.INFO)
    root.setLevel(level)
    quiet = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(quiet)
    logging.getLogger(ACCESS_LOGGER).disabled = not settings.access_log


def request_fields(request: BaseRequest) -> dict[str, Any]:
    """Who asked for what: the searchable fields of an access-log record."""
    fields: dict[str, Any] = {
        "request_id": request.get(REQUEST_ID, ""),
        "method": request.method,
        "path": request.path,
        "remote": request.remote or "",
        "user_agent": request.headers.get("User-Agent", ""),
    }
    try:
        name = request.match_info.get("name")  # type: ignore[attr-defined]
        registry = request.app.get(REGISTRY)  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # a request that never reached the router
        name, registry = None, None
    if name and registry is not None:
        fields["repository"] = name
        fields["customer"] = customer_of(name, registry.settings.default_customer)
    subject = getattr(request.get(ACCESS), "subject", None)
    if subject:
        fields["user"] = subject
    received = getattr(request.content, "total_bytes", 0)
    if received:
        fields["bytes_in"] = received
    return fields


class AccessLogger(AbstractAccessLogger):
    """One record per request: aiohttp calls `log` after the response is fully written."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = request_fields(request)
        fields.update(
            status=response.status,
            bytes_out=response.body_length,
            duration_ms=round(time * 1000, 3),
        )
        self.logger.info(
            '%s "%s %s" %d %dB %.1fms',
            fields.get("remote") or "-",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
            extra=fields,
        )

    @property
    def enabled(self) -> bool:
        return not self.logger.disabled and self.logger.isEnabledFor(logging.INFO)
