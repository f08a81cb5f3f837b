"""Launcher settings: the `[launcher]` table of the dockyard TOML file, validated once at start.

Everything has a default that works on one machine: no instances, no provider, no warm pool, the
launcher simply records services and waits for an instance to be registered.
"""

from __future__ import annotations

import pathlib
import shutil
from dataclasses import dataclass, field
from typing import Any

from launcher.errors import InvalidRequest

DEFAULT_STRATEGY: tuple[dict[str, str], ...] = ({"type": "spread", "field": "instanceId"},)


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: int  # CPU units, 1024 = one core
    memory: int  # MiB

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cpu": self.cpu, "memory": self.memory}


@dataclass(frozen=True)
class TlsFiles:
    """Docker's --tlsverify model: the CA that signed the engine's certificate, and the client
    certificate and key this launcher presents (mutual TLS)."""

    ca: str
    cert: str
    key: str

    def as_dict(self) -> dict[str, str]:
        return {"ca": self.ca, "cert": self.cert, "key": self.key}


@dataclass(frozen=True)
class StaticInstance:
    """An engine named in the config file; upserted into the database at every start."""

    name: str
    endpoint: str
    type: str | None
    attributes: dict[str, str]
    network: str | None
    tls: TlsFiles | None = None


@dataclass(frozen=True)
class SwarmSettings:
    """`[launcher.swarm]`: the manager the `swarm` backend hands services to."""

    endpoint: str  # unix:///var/run/docker.sock, or tcp://manager:2376 with tls
    tls: TlsFiles | None = None
    network: str = "host"  # what the service's tasks attach to


BACKENDS = ("engines", "swarm")


@dataclass(frozen=True)
class IngressSettings:
    addr: str  # host:port the reverse proxy listens on
    drain_seconds: float = 2.0  # a retired task keeps its connections this long
    upstream_timeout: float = 60.0


@dataclass(frozen=True)
class LocalProviderSettings:
    dockerd: str
    run_root: pathlib.Path  # short paths: exec roots hold unix sockets (108-byte limit)
    storage_driver: str = "vfs"
    max_instances: int = 8
    extra_args: tuple[str, ...] = ()
    network: str = "host:local"  # engines started here share this machine's network namespace
    enforce_cgroup: bool = True


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str

    def as_auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True)
class LauncherSettings:
    enabled: bool
    data_dir: pathlib.Path  # the dockyard data dir; the launcher keeps data_dir/launcher/
    registry: str | None = None  # host:port engines pull from; None = the event's own host
    registry_auth: RegistryAuth | None = None
    cluster: str = "dockyard"  # label value that scopes the containers this launcher owns
    api_token: str | None = None  # None = generated once into data_dir/launcher/api-token
    api_auth: bool = True
    events_secret: str | None = None  # shared secret for POST /launcher/v1/events (Bearer)
    events_hmac_key: str | None = None  # or an HMAC-SHA256 signature of the body
    instance_types: dict[str, InstanceType] = field(default_factory=dict)
    instances: tuple[StaticInstance, ...] = ()
    local_provider: LocalProviderSettings | None = None
    warm_pool: dict[str, int] = field(default_factory=dict)
    default_strategy: tuple[dict[str, str], ...] = DEFAULT_STRATEGY
    port_range: tuple[int, int] = (20000, 29999)
    poll_interval: float = 0.5
    reconcile_interval: float = 10.0
    health_grace: float = 30.0  # added to a health check's own worst case before giving up
    stable_seconds: float = 2.0  # a task without health check is healthy after running this long
    idle_instance_seconds: float = 300.0  # provisioned instances idle this long are removed
    stop_timeout: int = 10
    stop_provisioned_on_close: bool = False
    engine_timeout: float = 120.0
    database_url: str | None = None  # standalone: [metadata] url; None = DATA/metadata.db
    instance_grace_seconds: float = 30.0  # unreachable this long: the instance is LOST
    heartbeat_interval: float = 2.0  # how often every instance is pinged
    leader_ttl: float = 15.0  # lease of the scheduling leader (failover within ~ttl)
    ingress: IngressSettings | None = None
    volume_roots: tuple[str, ...] = ()  # host directories bind mounts may be under
    keep_images: int = 2  # per service on each instance: running + previous deployment
    backend: str = "engines"  # where tasks run: dockyard's own placement, or a Swarm
    swarm: SwarmSettings | None = None

    @property
    def ingress_addr(self) -> str | None:
        return self.ingress.addr if self.ingress else None

    @property
    def secret_key_path(self) -> pathlib.Path:
        return self.state_dir / "secrets.key"

    @property
    def state_dir(self) -> pathlib.Path:
        return self.data_dir / "launcher"

    @property
    def token_path(self) -> pathlib.Path:
        return self.state_dir / "api-token"

    @classmethod
    def from_dict(cls, section: dict[str, Any], data_dir: pathlib.Path, *,
                  database_url: str | None = None) -> LauncherSettings:
        """Build settings from the raw `[launcher]` TOML table (see examples/launcher.toml);
        `database_url` is the `[metadata] url` of the standalone launcher."""
        s = dict(section or {})
        data_dir = pathlib.Path(data_dir)
        types: dict[str, InstanceType] = {}
        for name, spec in (s.get("instance_types") or {}).items():
            if not isinstance(spec, dict):
                raise InvalidRequest(f"instance_types.{name} must be a table")
            cpu, memory = _pos_int(spec, "cpu", name), _pos_int(spec, "memory", name)
            types[name] = InstanceType(name, cpu, memory)

        instances = []
        for i, spec in enumerate(s.get("instances") or []):
            if not isinstance(spec, dict) or not spec.get("endpoint"):
                raise InvalidRequest(f"launcher.instances[{i}] needs an endpoint")
            itype = spec.get("type")
            if itype is not None and itype not in types:
                raise InvalidRequest(f"launcher.instances[{i}]: unknown instance type {itype!r}")
            instances.append(
                StaticInstance(
                    name=str(spec.get("name") or f"static-{i}"),
                    endpoint=str(spec["endpoint"]),
                    type=itype,
                    attributes={str(k): str(v) for k, v in (spec.get("attributes") or {}).items()},
                    network=spec.get("network"),
                    tls=parse_tls(spec, f"launcher.instances[{i}]"),
                )
            )

        local = None
        providers = s.get("providers") or {}
        if "local" in providers:
            p = providers["local"] or {}
            dockerd = p.get("dockerd") or shutil.which("dockerd") or "/usr/sbin/dockerd"
            local = LocalProviderSettings(
                dockerd=str(dockerd),
                run_root=pathlib.Path(p.get("run_root") or "/run/dockyard-launcher"),
                storage_driver=str(p.get("storage_driver", "vfs")),
                max_instances=int(p.get("max_instances", 8)),
                extra_args=tuple(str(a) for a in p.get("extra_args", ())),
                network=str(p.get("network", "host:local")),
                enforce_cgroup=bool(p.get("enforce_cgroup", True)),
            )

        pool = {str(k): int(v) for k, v in (s.get("warm_pool") or {}).items()}
        for name in pool:
            if name not in types:
                raise InvalidRequest(f"launcher.warm_pool: unknown instance type {name!r}")
        if pool and local is None:
            raise InvalidRequest("launcher.warm_pool needs a provider ([launcher.providers.local])")

        auth = None
        if s.get("registry_auth"):
            a = s["registry_auth"]
            auth = RegistryAuth(str(a["username"]), str(a["password"]))

        port_range = s.get("port_range", "20000-29999")
        lo, _, hi = str(port_range).partition("-")
        try:
            ports = (int(lo), int(hi or lo))
        except ValueError:
            raise InvalidRequest(f"launcher.port_range {port_range!r} is not LOW-HIGH") from None
        if not 0 < ports[0] <= ports[1] < 65536:
            raise InvalidRequest(f"launcher.port_range {port_range!r} is out of range")

        strategy = s.get("default_strategy")
        kwargs: dict[str, Any] = {}
        for key in (
            "poll_interval",
            "reconcile_interval",
            "health_grace",
            "stable_seconds",
            "idle_instance_seconds",
            "engine_timeout",
            "instance_grace_seconds",
            "heartbeat_interval",
            "leader_ttl",
        ):
            if key in s:
                kwargs[key] = float(s[key])
        for key in ("stop_provisioned_on_close", "api_auth"):
            if key in s:
                kwargs[key] = bool(s[key])
        if "stop_timeout" in s:
            kwargs["stop_timeout"] = int(s["stop_timeout"])
        if "keep_images" in s:
            kwargs["keep_images"] = int(s["keep_images"])
            if kwargs["keep_images"] < 1:
                raise InvalidRequest("launcher.keep_images must be at least 1")
        if "volume_roots" in s:
            roots = s["volume_roots"]
            if not isinstance(roots, list) or not all(
                isinstance(r, str) and r.startswith("/") for r in roots
            ):
                raise InvalidRequest("launcher.volume_roots must be a list of absolute paths")
            kwargs["volume_roots"] = tuple(str(pathlib.Path(r)) for r in roots)
        if s.get("ingress"):
            ing = s["ingress"]
            if not isinstance(ing, dict) or not isinstance(ing.get("addr"), str):
                raise InvalidRequest("launcher.ingress needs addr = \"HOST:PORT\"")
            host, _, port = ing["addr"].rpartition(":")
            if not host or not port.isdigit():
                raise InvalidRequest(f"launcher.ingress.addr {ing['addr']!r} is not HOST:PORT")
            kwargs["ingress"] = IngressSettings(
                addr=ing["addr"],
                drain_seconds=float(ing.get("drain_seconds", 2.0)),
                upstream_timeout=float(ing.get("upstream_timeout", 60.0)),
            )
        backend = s.get("backend", "engines")
        if backend not in BACKENDS:
            raise InvalidRequest(f"launcher.backend must be one of {', '.join(BACKENDS)}")
        kwargs["backend"] = backend
        if s.get("swarm") is not None:
            sw = s["swarm"]
            if not isinstance(sw, dict) or not isinstance(sw.get("endpoint"), str):
                raise InvalidRequest('launcher.swarm needs endpoint = "unix://…" or "tcp://…"')
            kwargs["swarm"] = SwarmSettings(endpoint=sw["endpoint"],
                                            tls=parse_tls(sw, "launcher.swarm"),
                                            network=str(sw.get("network", "host")))
        if backend == "swarm" and "swarm" not in kwargs:
            raise InvalidRequest('backend = "swarm" needs [launcher.swarm] endpoint')
        return cls(
            enabled=bool(s.get("enabled", False)),
            data_dir=data_dir,
            registry=s.get("registry") or None,
            registry_auth=auth,
            cluster=str(s.get("cluster", "dockyard")),
            api_token=s.get("api_token") or None,
            events_secret=s.get("events_secret") or None,
            events_hmac_key=s.get("events_hmac_key") or None,
            instance_types=types,
            instances=tuple(instances),
            local_provider=local,
            warm_pool=pool,
            default_strategy=tuple(strategy) if strategy else DEFAULT_STRATEGY,
            port_range=ports,
            database_url=database_url,
            **kwargs,
        )


def parse_tls(spec: dict[str, Any], where: str) -> TlsFiles | None:
    """`tls_ca`, `tls_cert`, `tls_key` (all three, or none) of an instance."""
    given = {k: spec.get(f"tls_{k}") for k in ("ca", "cert", "key")}
    if not any(given.values()):
        return None
    missing = [f"tls_{k}" for k, v in given.items() if not v]
    if missing:
        raise InvalidRequest(f"{where}: mutual TLS needs tls_ca, tls_cert and tls_key "
                             f"(missing {', '.join(missing)})")
    for k, v in given.items():
        if not isinstance(v, str):
            raise InvalidRequest(f"{where}.tls_{k} must be a file path")
    return TlsFiles(str(given["ca"]), str(given["cert"]), str(given["key"]))


def _pos_int(spec: dict[str, Any], key: str, name: str) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidRequest(f"instance_types.{name}.{key} must be a positive integer")
    return value
