"""Domain errors of the launcher: the shared error types (dockyard.core.errors) and the few only
the launcher raises. The HTTP layer answers each with its status and the one error body."""

from __future__ import annotations

from dockyard.core.errors import (
    ApiError,
    Conflict,
    Denied,
    InvalidRequest,
    NotFound,
    Unauthorized,
)

LauncherError = ApiError

__all__ = [
    "Conflict",
    "EngineError",
    "Forbidden",
    "InvalidRequest",
    "LauncherError",
    "NoCapacity",
    "NotFound",
    "TaskFailed",
    "Unauthorized",
]


class Forbidden(Denied):
    code = "FORBIDDEN"


class NoCapacity(ApiError):
    """No instance can take the task now. `never` means no instance type could ever hold it."""

    status = 409
    code = "NO_CAPACITY"

    def __init__(self, message: str, *, never: bool = False) -> None:
        super().__init__(message)
        self.never = never


class EngineError(ApiError):
    """A Docker Engine refused or failed a call (pull, create, start, …)."""

    status = 502
    code = "ENGINE"


class TaskFailed(ApiError):
    """A task of a deployment exited, turned unhealthy or missed its deadline."""

    code = "TASK_FAILED"
