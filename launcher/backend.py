"""Where tasks run: the interface the deployment engine (launcher/deployments.py) drives.

The deployment engine owns what users see — deployment states and their history, service
events, the circuit-breaker policy, rollback targets — and asks a backend to make one
deployment (an image digest + a task definition + the service's settings) real:

    roll_out(service, deployment, task_def, make_current)   new image until healthy, or raise
    keep_running(service, deployment, task_def)             steady state at desiredCount
    return_to(service, failed, target, task_def)            run `target` again after `failed`
    stop_deployment(deployment, why)                        stop what runs of one deployment
    retire(service)                                         the service is deleted
    describe(service) -> dict                               backend name, ids, task summary

Failures raise DeploymentFailed with a kind (UNHEALTHY: the image's fault; CANNOT_PLACE: no
room, not the image's fault) and `rolled_back=True` when the backend already returned to the
previous version by itself (Swarm's `failure_action = rollback`), so dockyard records
ROLLED_BACK without starting that rollback again.

`engines` (launcher/engines_backend.py) places every task on Docker Engines itself: placement,
warm pool and instance types are its business and do not appear here. `swarm`
(launcher/swarm.py) hands the service to a Docker Swarm manager. A Kubernetes backend would
map roll_out to a Deployment's rolling update (and read its Pods' readiness), a Nomad one to
a job with an `update` stanza and `auto_revert`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

UNHEALTHY = "UNHEALTHY"
CANNOT_PLACE = "CANNOT_PLACE"

MakeCurrent = Callable[[], Awaitable[None]]


class DeploymentFailed(Exception):
    def __init__(self, reason: str, kind: str = UNHEALTHY, *, rolled_back: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.rolled_back = rolled_back  # the backend already runs the previous version again


class Backend(Protocol):
    name: str

    async def roll_out(self, service: dict[str, Any], deployment: dict[str, Any],
                       task_def: dict[str, Any], make_current: MakeCurrent) -> None:
        """Replace the service's tasks by `deployment`'s within its deployment settings;
        call `make_current` once the new version serves (before the old one stops), so the
        ingress switches in one step. Raises DeploymentFailed."""
        ...

    async def keep_running(self, service: dict[str, Any], deployment: dict[str, Any],
                           task_def: dict[str, Any]) -> None:
        """Steady state: desiredCount healthy tasks of the current deployment (replacing dead
        ones, scaling up or down). Raises DeploymentFailed when it cannot."""
        ...

    async def return_to(self, service: dict[str, Any], failed: dict[str, Any],
                        target: dict[str, Any], task_def: dict[str, Any]) -> None:
        """Run `target` again after `failed` (raise DeploymentFailed if that fails too)."""
        ...

    async def stop_deployment(self, deployment: dict[str, Any], why: str) -> None:
        ...

    async def retire(self, service: dict[str, Any]) -> None:
        ...

    async def describe(self, service: dict[str, Any]) -> dict[str, Any]:
        """What `services show` adds: at least {"backend": name}."""
        ...

    async def close(self) -> None:
        ...
