"""Configuration: one TOML file plus `DOCKYARD_<SECTION>_<KEY>` environment overrides.

Every default works on one machine with no other service. Sections owned by other parts
(`auth`, `notifications`, `launcher`) are passed to them raw; this module only types its own.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class HttpSettings:
    addr: str = "127.0.0.1:5000"
    # The URL clients reach the registry at (behind a load balancer: its URL). It goes into
    # webhook target URLs and the auth realm instead of the request's Host header.
    public_url: str | None = None
    insecure: bool = False
    workers: int = 1
    shutdown_timeout: float = 30.0
    # TLS: PEM certificate chain and key; with tls_client_ca, clients must present a certificate
    # signed by it (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # HOST:PORT of a separate plain-HTTP listener for /metrics (then not served on addr).
    metrics_addr: str | None = None
    # Slow clients (dockyard/ops/serve.py): seconds to deliver a request's headers, seconds a
    # request body may stop moving, seconds an idle kept-alive connection stays open, and the
    # most connections served at once (0: the descriptor limit less a reserve).
    header_timeout: float = 20.0
    body_idle_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 0


@dataclass
class StorageSettings:
    driver: str = "filesystem"
    # s3 driver
    endpoint: str | None = None
    bucket: str = "dockyard"
    region: str = "us-east-1"
    prefix: str = ""
    redirect: bool = False
    redirect_expiry: int = 300
    part_size_mib: int = 16
    # Parts of one upload on their way to S3 while the next one arrives: an upload holds at
    # most (parts_in_flight + 1) parts in memory. More than one gained nothing on SeaweedFS
    # (1 GiB push: 93 vs 88 MiB/s) and costs a part of memory each.
    parts_in_flight: int = 1
    access_key: str | None = None
    secret_key: str | None = None
    create_bucket: bool = False
    # Retries of a failed S3 request (botocore "standard" mode: exponential backoff with jitter).
    max_retries: int = 3


@dataclass
class RegistrySettings:
    default_customer: str = "library"
    delete_enabled: bool = True
    max_manifest_bytes: int = 4 * 1024 * 1024
    upload_expiry_seconds: int = 24 * 3600
    # Customer-wide layer dedup: a HEAD/mount in one repository finds blobs in the others.
    customer_dedup: bool = True
    # Accept manifests whose layers, and indexes whose children, were not pushed (mirroring one
    # platform of a multi-platform image); what is missing stays missing.
    sparse_manifests: bool = False
    # Maintenance: reads are served, writes under /v2/ refused (SIGUSR1 toggles at runtime).
    read_only: bool = False


@dataclass
class GcSettings:
    # Anything written or relied on more recently than this is never collected; it also bounds
    # how long a push may take between its blob uploads and its manifest PUT.
    grace_seconds: float = 3600.0
    # Untagged manifests older than this are collected; 0 keeps them forever.
    untagged_age_seconds: float = 7 * 24 * 3600.0
    # Run GC inside the server every N seconds; 0 leaves it to `dockyard gc`.
    interval_seconds: float = 0.0


@dataclass
class MetadataSettings:
    # postgresql://USER:PASSWORD@HOST:PORT/DB, or empty for the embedded SQLite in DATA.
    url: str | None = None
    pool_size: int = 10
    connect_timeout: float = 5.0
    statement_timeout: float = 30.0
    # SQLite only: "full" (a commit survives power loss) or "normal" (survives a crash).
    sqlite_synchronous: str = "full"


CLUSTER_ROLES = ("api", "dispatcher", "gc", "launcher")


@dataclass
class ClusterSettings:
    # How this node is named in `dockyard cluster status` and lease owners; default: host name.
    node_name: str = ""
    # What this node runs besides the API: webhook dispatcher, periodic GC, launcher.
    roles: list[str] = field(default_factory=lambda: list(CLUSTER_ROLES))
    # How often a node says it is alive; it counts as gone after three missed beats.
    heartbeat_seconds: float = 5.0


@dataclass
class LogSettings:
    level: str = "info"  # debug, info, warning, error
    format: str = "auto"  # json, text, or auto (text on a terminal, json otherwise)
    access_log: bool = True  # one line per HTTP request


SECTIONS: dict[str, type] = {
    "gc": GcSettings,
    "http": HttpSettings,
    "log": LogSettings,
    "metadata": MetadataSettings,
    "cluster": ClusterSettings,
    "storage": StorageSettings,
    "registry": RegistrySettings,
}


@dataclass
class Config:
    data_dir: Path = Path("data")
    http: HttpSettings = field(default_factory=HttpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    gc: GcSettings = field(default_factory=GcSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # Raw tables for the parts that parse their own settings.
    raw: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        return value if isinstance(value, dict) else {}


class ConfigError(ValueError):
    pass


SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "500MiB", "10GB", "1.5 GiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    if unit not in SIZE_UNITS or not number:
        raise ConfigError(f"invalid size {value!r} (use bytes or e.g. 500MiB, 10GB)")
    return int(float(number) * SIZE_UNITS[unit])


def quotas_of(config: Config) -> dict[str, int]:
    return {name: parse_size(v) for name, v in config.section("quotas").items()}


def _coerce(value: str, target: Any) -> Any:
    if isinstance(target, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(target, int):
        return int(value)
    if isinstance(target, float):
        return float(value)
    return value


def _build(cls: type, table: dict[str, Any], section: str, unknown: list[str]) -> Any:
    obj = cls()
    names = {f.name for f in fields(cls)}
    for key, value in table.items():
        if key not in names:
            unknown.append(f"{section}.{key}")
            continue
        setattr(obj, key, value)
    defaults = cls()
    for f in fields(cls):
        name = f"DOCKYARD_{section.upper()}_{f.name.upper()}"
        env = os.environ.get(name)
        if env is not None:
            # Coerced to the type of the key's default, not of the file's value: `5` in a file
            # must not turn DOCKYARD_…=0.5 for a float key into an error.
            default = getattr(defaults, f.name)
            try:
                value = _coerce(env, default if default is not None else "")
            except ValueError:
                raise ConfigError(f"{name}={env!r}: not a valid {section}.{f.name}") from None
            if isinstance(default, list) and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            setattr(obj, f.name, value)
    return obj


def load_config(path: str | Path | None = None, *, data_dir: str | Path | None = None) -> Config:
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    unknown: list[str] = []
    cfg = Config(raw=raw)
    for name, cls in SECTIONS.items():
        setattr(cfg, name, _build(cls, raw.get(name, {}), name, unknown))
    chosen = data_dir or os.environ.get("DOCKYARD_DATA") or raw.get("data_dir") or "data"
    cfg.data_dir = Path(chosen).resolve()
    cfg.raw["_unknown"] = unknown
    return cfg
