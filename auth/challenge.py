"""The `WWW-Authenticate: Bearer …` challenge (RFC 6750 section 3; docker-auth-token.md)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp import web

from auth.config import AuthSettings
from auth.scope import Resource, format_scopes

TOKEN_PATH = "/auth/token"
JWKS_PATH = "/auth/jwks.json"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def realm_for(settings: AuthSettings, request: web.Request) -> str:
    """The configured realm, or this server's token endpoint as the client reached it. The Host
    header is only echoed when it looks like a host, so it cannot break the challenge's quoting;
    behind a TLS-terminating proxy configure `realm` explicitly."""
    if settings.realm:
        return settings.realm
    host = request.host
    if not _HOST.fullmatch(host or ""):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname:
            addr = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            host = f"{addr}:{sockname[1]}"
        else:
            host = "localhost"
    return f"{request.scheme}://{host}{TOKEN_PATH}"


def bearer_challenge(
    settings: AuthSettings,
    request: web.Request,
    scopes: Iterable[Resource] = (),
    error: str | None = None,
) -> str:
    parts = [f'realm="{realm_for(settings, request)}"', f'service="{settings.service}"']
    scope = format_scopes(scopes)
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)
