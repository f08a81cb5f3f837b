"""Domain errors of the launcher; the HTTP layer maps each to a status and a JSON body."""

from __future__ import annotations


class LauncherError(Exception):
    status = 500
    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(LauncherError):
    status = 400
    code = "INVALID"


class Unauthorized(LauncherError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(LauncherError):
    status = 403
    code = "FORBIDDEN"


class NotFound(LauncherError):
    status = 404
    code = "NOT_FOUND"


class Conflict(LauncherError):
    status = 409
    code = "CONFLICT"


class NoCapacity(LauncherError):
    """No instance can take the task now. `never` means no instance type could ever hold it."""

    status = 409
    code = "NO_CAPACITY"

    def __init__(self, message: str, *, never: bool = False) -> None:
        super().__init__(message)
        self.never = never


class EngineError(LauncherError):
    """A Docker Engine refused or failed a call (pull, create, start, …)."""

    status = 502
    code = "ENGINE"


class TaskFailed(LauncherError):
    """A task of a deployment exited, turned unhealthy or missed its deadline."""

    code = "TASK_FAILED"
