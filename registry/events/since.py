"""Parse the `since` of a replay: an instant, or a duration meaning "that long ago"."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from registry.events.config import ConfigError, parse_duration


def parse_since(value: str, *, now: float | None = None) -> float:
    """Unix time from "1700000000" (unix seconds), "2024-05-01T12:00:00Z" (ISO 8601, UTC when
    no offset is given) or "2h" / "30m" / "1d" (that long before now)."""
    text = value.strip()
    if not text:
        raise ValueError("empty time")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            ago = parse_duration(text, "since")
        except ConfigError:
            raise ValueError(
                f"cannot read {value!r} as a time (unix seconds, ISO 8601, or a duration like 2h)"
            ) from None
        return (time.time() if now is None else now) - ago
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
