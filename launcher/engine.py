"""One Docker Engine, through the `docker` SDK. The SDK blocks, so every call runs in a thread.

Only this module and launcher/swarm.py (which builds Swarm service specs) import `docker`. It
speaks in plain dicts and raises `EngineError` (or returns None for "no such container"), so
the rest of the launcher never sees SDK exceptions.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import docker
import docker.constants
import docker.errors
import docker.tls
import docker.types
import requests.exceptions

from launcher.errors import EngineError, InvalidRequest

T = TypeVar("T")

LABEL_CLUSTER = "dockyard.cluster"
LABEL_SERVICE = "dockyard.service"
LABEL_DEPLOYMENT = "dockyard.deployment"
LABEL_TASK = "dockyard.task"
LABEL_CONTAINER = "dockyard.container"
LABEL_TASK_DEFINITION = "dockyard.task-definition"
LABEL_IMAGE = "dockyard.image"

# Labels an engine's daemon may carry (`dockerd --label`) to declare what it offers.
DAEMON_TYPE = "dockyard.instance-type"
DAEMON_CPU = "dockyard.cpu"
DAEMON_MEMORY = "dockyard.memory"


def validate_endpoint(endpoint: Any) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(("unix://", "tcp://", "ssh://")):
        raise InvalidRequest("endpoint must be unix:///path/to/docker.sock, tcp://host:port "
                             "(with tls_ca, tls_cert and tls_key for TLS) or ssh://user@host")
    return endpoint


def _tls_problem(exc: BaseException) -> str | None:
    """A readable cause when a failure is TLS verification (wrapped deep in requests)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or current}"
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                current = arg
                break
        else:
            current = current.__cause__ or current.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verification failed (" + text.split("CERTIFICATE_VERIFY_FAILED")[
            -1].strip(" :)(\"'") + ")"
    if "SSL" in text and ("alert" in text or "handshake" in text.lower()):
        return f"TLS handshake failed ({text[-200:]})"
    return None


class Engine:
    def __init__(self, endpoint: str, timeout: float = 120.0,
                 tls: Mapping[str, str] | None = None) -> None:
        self.endpoint = validate_endpoint(endpoint)
        self.timeout = timeout
        self.tls = dict(tls) if tls else None
        if self.tls and not self.endpoint.startswith("tcp://"):
            raise InvalidRequest("TLS files apply to tcp:// endpoints only")
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                tls_config: docker.tls.TLSConfig | bool = False
                if self.tls:
                    # Docker's --tlsverify: the engine must present a certificate from our CA,
                    # and we present ours (mutual TLS).
                    tls_config = docker.tls.TLSConfig(
                        client_cert=(self.tls["cert"], self.tls["key"]),
                        ca_cert=self.tls["ca"], verify=True,
                    )
                if self.tls:
                    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own
                    # CA file (psf/requests#3829), so with either set (many distributions do)
                    # the engine's certificate would be checked against the public CAs and
                    # refused. The engine's CA is the one configured here; nothing else counts.
                    # The oldest API version first (no /version request yet), then ask the
                    # engine's version without the environment's CA bundle.
                    self._client = docker.DockerClient(
                        base_url=self.endpoint, version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                        timeout=int(self.timeout), tls=tls_config)
                    self._client.api.trust_env = False
                    self._client.api._version = self._client.api._retrieve_server_version()
                else:
                    self._client = docker.DockerClient(
                        base_url=self.endpoint, version="auto", timeout=int(self.timeout),
                        tls=tls_config, use_ssh_client=self.endpoint.startswith("ssh://"),
                    )
            return self._client.api

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            try:
                return fn(self._api(), *args, **kwargs)
            except docker.errors.NotFound:
                raise
            except docker.errors.APIError as exc:
                raise EngineError(f"{what} on {self.endpoint}: {exc.explanation or exc}") from exc
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    OSError) as exc:
                tls = _tls_problem(exc)
                if tls is not None:
                    raise EngineError(
                        f"{what} on {self.endpoint}: {tls} — the engine's certificate must be "
                        "signed by tls_ca and name this host, and it must accept tls_cert"
                    ) from exc
                raise EngineError(f"{what} on {self.endpoint}: {exc}") from exc

        return await asyncio.to_thread(run)

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(api, …)` in a thread with this module's error translation (the Swarm
        backend's calls; NotFound passes through so callers can tell "no such service")."""
        return await self._call(what, fn, *args, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- engine -----------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", lambda api: api.ping()))
        except (EngineError, docker.errors.NotFound):
            return False

    async def check(self) -> None:
        """Raise EngineError saying why the engine does not answer (TLS, refused, …)."""
        try:
            await self._call("ping", lambda api: api.ping())
        except docker.errors.NotFound as exc:
            raise EngineError(f"ping on {self.endpoint}: {exc}") from exc

    async def info(self) -> dict[str, Any]:
        return await self._call("info", lambda api: api.info())

    async def daemon_labels(self) -> dict[str, str]:
        labels = (await self.info()).get("Labels") or []
        out = {}
        for label in labels:
            key, _, value = label.partition("=")
            out[key] = value
        return out

    # --- images -----------------------------------------------------------------------------

    async def ensure_image(self, ref: str, auth_config: dict[str, str] | None) -> bool:
        """Pull `ref` (repo@digest) unless present. True when it had to be pulled."""

        def run(api: docker.APIClient) -> bool:
            try:
                api.inspect_image(ref)
                return False
            except docker.errors.ImageNotFound:
                pass
            repository, _, digest = ref.rpartition("@")
            if not repository:
                repository, tag = ref, None
            else:
                tag = digest  # the Engine API takes a digest in the tag parameter
            # Streaming is the only way to see a pull's errors: the engine answers 200 first.
            for line in api.pull(repository, tag=tag, stream=True, decode=True,
                                 auth_config=auth_config):
                if isinstance(line, dict) and line.get("error"):
                    raise EngineError(f"pull {ref} on {self.endpoint}: {line['error']}")
            api.inspect_image(ref)
            return True

        try:
            return await self._call(f"pull {ref}", run)
        except docker.errors.NotFound as exc:
            raise EngineError(f"pull {ref} on {self.endpoint}: {exc.explanation or exc}") from exc

    async def remove_image(self, ref: str) -> bool:
        """True when removed; False when in use by a container or already gone."""
        try:
            await self._call(f"remove image {ref}", lambda api: api.remove_image(ref))
        except (docker.errors.NotFound, EngineError):
            return False
        return True

    async def images(self) -> list[dict[str, Any]]:
        return await self._call("list images", lambda api: api.images())

    async def ensure_volume(self, name: str, driver: str, labels: dict[str, str]) -> None:
        def run(api: docker.APIClient) -> None:
            try:
                api.inspect_volume(name)
            except docker.errors.NotFound:
                api.create_volume(name, driver=driver, labels=labels)

        await self._call(f"create volume {name}", run)

    async def remove_volume(self, name: str) -> None:
        try:
            await self._call(f"remove volume {name}", lambda api: api.remove_volume(name))
        except (docker.errors.NotFound, EngineError):
            pass  # gone, or still mounted by a container that is being removed

    # --- containers -------------------------------------------------------------------------

    async def run_container(self, spec: dict[str, Any]) -> str:
        """Create and start a container; returns its id. On a failed start the container stays
        (so the caller can read its logs and remove it by label)."""

        def run(api: docker.APIClient) -> str:
            log_config = None
            if spec.get("log_driver"):
                log_config = docker.types.LogConfig(type=spec["log_driver"],
                                                    config=spec.get("log_options") or {})
            host_config = api.create_host_config(
                network_mode="host",
                init=True,
                nano_cpus=spec.get("nano_cpus") or None,
                mem_limit=spec.get("mem_limit"),
                mem_reservation=spec.get("mem_reservation"),
                binds=spec.get("binds") or None,
                log_config=log_config,
            )
            created = api.create_container(
                image=spec["image"],
                name=spec["name"],
                command=spec.get("command"),
                entrypoint=spec.get("entrypoint"),
                environment=spec.get("environment"),
                labels=spec["labels"],
                healthcheck=spec.get("healthcheck"),
                stop_timeout=spec.get("stop_timeout"),
                working_dir=spec.get("working_dir"),
                user=spec.get("user"),
                volumes=[b.split(":")[1] for b in spec.get("binds") or ()] or None,
                host_config=host_config,
                detach=True,
            )
            api.start(created["Id"])
            return created["Id"]

        try:
            return await self._call(f"start {spec['name']}", run)
        except docker.errors.NotFound as exc:
            raise EngineError(f"start {spec['name']}: {exc.explanation or exc}") from exc

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        try:
            return await self._call(
                "inspect", lambda api: api.inspect_container(container_id)
            )
        except docker.errors.NotFound:
            return None

    async def managed_containers(self, cluster: str) -> list[dict[str, Any]]:
        return await self._call(
            "list containers",
            lambda api: api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"}),
        )

    async def stop_and_remove(self, container_id: str, timeout: int) -> None:
        def run(api: docker.APIClient) -> None:
            try:
                api.stop(container_id, timeout=timeout)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                pass  # already stopping or dead: removal below still applies
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: someone else is removing it already
                    raise

        try:
            await self._call("stop", run)
        except docker.errors.NotFound:
            pass

    async def logs(self, container_id: str, tail: int = 200) -> str:
        try:
            raw = await self._call(
                "logs",
                lambda api: api.logs(container_id, stdout=True, stderr=True, tail=tail,
                                     timestamps=True),
            )
        except docker.errors.NotFound:
            return ""
        return raw.decode("utf-8", errors="replace")


class Engines:
    """One cached `Engine` per endpoint (and TLS files)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._engines: dict[tuple[str, tuple[tuple[str, str], ...]], Engine] = {}

    def get(self, endpoint: str, tls: Mapping[str, str] | None = None) -> Engine:
        key = (endpoint, tuple(sorted((tls or {}).items())))
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = Engine(endpoint, self.timeout, tls)
        return engine

    def of(self, inst: Mapping[str, Any]) -> Engine:
        return self.get(inst["endpoint"], inst.get("tls"))

    def forget(self, endpoint: str) -> None:
        for key in [k for k in self._engines if k[0] == endpoint]:
            self._engines.pop(key).close()

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
