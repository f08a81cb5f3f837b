"""Who may do what: the protocol the registry asks before it reveals or links content."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


class Access(Protocol):
    subject: str | None

    async def can(self, repository: str, action: str) -> bool: ...


class AllowAll:
    """Auth disabled: every caller may do everything."""

    subject: str | None = None

    async def can(self, repository: str, action: str) -> bool:
        return True


ALLOW_ALL = AllowAll()


ACCESS = web.RequestKey("access", object)


def access_of(request: web.Request) -> Access:
    return request.get(ACCESS, ALLOW_ALL)
