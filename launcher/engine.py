"""One Docker Engine, through the `docker` SDK. The SDK blocks, so every call runs in a thread.

Only this module imports `docker`. It speaks in plain dicts and raises `EngineError` (or returns
None for "no such container"), so the rest of the launcher never sees SDK exceptions.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
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


def validate_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(("unix://", "tcp://")):
        raise InvalidRequest("endpoint must be unix:///path/to/docker.sock or tcp://host:port")
    return endpoint


class Engine:
    def __init__(self, endpoint: str, timeout: float = 120.0) -> None:
        self.endpoint = validate_endpoint(endpoint)
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                self._client = docker.DockerClient(
                    base_url=self.endpoint, version="auto", timeout=int(self.timeout)
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
                raise EngineError(f"{what} on {self.endpoint}: {exc}") from exc

        return await asyncio.to_thread(run)

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

    async def remove_image(self, ref: str) -> None:
        try:
            await self._call(f"remove image {ref}", lambda api: api.remove_image(ref))
        except (docker.errors.NotFound, EngineError):
            pass  # in use by another container, or gone already: either way nothing to do

    async def images(self) -> list[dict[str, Any]]:
        return await self._call("list images", lambda api: api.images())

    # --- containers -------------------------------------------------------------------------

    async def run_container(self, spec: dict[str, Any]) -> str:
        """Create and start a container; returns its id. On a failed start the container stays
        (so the caller can read its logs and remove it by label)."""

        def run(api: docker.APIClient) -> str:
            host_config = api.create_host_config(
                network_mode="host",
                init=True,
                nano_cpus=spec.get("nano_cpus") or None,
                mem_limit=spec.get("mem_limit"),
                mem_reservation=spec.get("mem_reservation"),
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
    """One cached `Engine` per endpoint."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._engines: dict[str, Engine] = {}

    def get(self, endpoint: str) -> Engine:
        engine = self._engines.get(endpoint)
        if engine is None:
            engine = self._engines[endpoint] = Engine(endpoint, self.timeout)
        return engine

    def forget(self, endpoint: str) -> None:
        engine = self._engines.pop(endpoint, None)
        if engine is not None:
            engine.close()

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
