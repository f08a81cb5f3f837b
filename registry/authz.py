"""Bearer-token authorization of the registry API (docker-auth-token.md, docker-auth-scope.md).

Every request under `/v2/` needs a scope derived from its path and method; the caller proves it
with a JWT from the token service. A missing or invalid token, or one lacking the scope, gets a
401 whose `WWW-Authenticate: Bearer` challenge names the exact scope, so the client can fetch the
right token. Anonymous callers may pull public repositories without any token.

Status for a valid token that lacks the scope: 401 with `error="insufficient_scope"`, as CNCF
distribution answers (RFC 6750 would say 403). The docker engine and containerd only re-read a
challenge from a 401, so a client holding a pull-only token can upgrade it for a push; the body
code is DENIED, which the docker CLI prints as "denied: requested access to the resource is
denied".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from auth.accounts import Accounts
from auth.challenge import bearer_challenge
from auth.config import AuthSettings
from auth.scope import Resource, is_repository_name
from auth.service import Auth
from auth.tokens import Claims, TokenError, TokenExpired
from dockyard.core.errors import API_VERSION_HEADER
from registry import routes
from registry.access import ACCESS

UploadOwner = Callable[[str, str], Awaitable[str | None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WRITES = frozenset({"push", "delete"})

class TokenAccess:
    """What the caller of one request may do; implements the registry's `Access` protocol.

    `can` is true when the token's `access` claim grants the action, or — for `pull` only — when
    the account itself may pull that repository now. The registry asks this for repositories
    the token does not name (layer dedup across a customer's repositories, catalog filtering),
    so pulling stays bounded by the account's real permissions, never widened to push."""

    def __init__(self, subject: str | None, claims: Claims | None, accounts: Accounts) -> None:
        self.subject = subject
        self._claims = claims
        self._accounts = accounts
        self._cache: dict[tuple[str, str], bool] = {}

    async def can(self, repository: str, action: str) -> bool:
        key = (repository, action)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        allowed = self._claims is not None and self._claims.grants("repository", repository, action)
        if not allowed and action == "pull":
            allowed = "pull" in await self._accounts.allowed_actions(self.subject, repository)
        self._cache[key] = allowed
        return allowed


@dataclass(frozen=True)
class Requirement:
    """The scope one request needs. `resource` None: any valid token (the `/v2/` ping)."""

    resource: Resource | None
    # Extra scopes named in a challenge only (a mount's source), so the client asks for them.
    hints: tuple[Resource, ...] = ()
    upload: str | None = None  # upload session id, for the expired-token continuation

    @property
    def challenge_scopes(self) -> tuple[Resource, ...]:
        return ((self.resource,) if self.resource else ()) + self.hints


class InvalidName(Exception):
    pass


def required_access(request: web.Request) -> Requirement:
    """What the route the router resolved needs (registry/routes.py). A request no route
    matches needs any valid token, then gets the router's 404 or 405."""
    route = request.match_info.route.name or ""
    if route == routes.CATALOG:
        return Requirement(Resource("registry", "catalog", ("*",)))
    actions = routes.REPOSITORY_ACTIONS.get(route)
    if actions is None:
        return Requirement(None)
    name = request.match_info["name"]
    if not is_repository_name(name):
        raise InvalidName(name)
    upload_id = (
        request.match_info.get("upload_id") if route in routes.UPLOAD_SESSION_ROUTES else None
    )
    hints: tuple[Resource, ...] = ()
    source = request.query.get("from")
    if route == routes.UPLOAD_START and source and is_repository_name(source):
        # A mount needs no pull on `from` to start: the registry mounts only if the caller may
        # pull the source (Access.can), else it opens a normal upload. The hint lets the
        # client fetch a token covering both.
        hints = (Resource("repository", source, routes.PULL),)
    return Requirement(Resource("repository", name, actions), hints, upload_id)


def make_auth_middleware(
    auth: Auth, settings: AuthSettings, upload_owner: UploadOwner
) -> Middleware:
    accounts = auth.accounts
    verifier = auth.verifier

    def challenge(request: web.Request, need: Requirement, error: str | None) -> web.Response:
        if error == "insufficient_scope":
            code, message = "DENIED", "requested access to the resource is denied"
        else:
            code, message = "UNAUTHORIZED", "authentication required"
        detail: Any = [
            {"Type": r.type, "Name": r.name, "Action": a}
            for r in need.challenge_scopes
            for a in r.actions
        ] or None
        headers = dict(API_VERSION_HEADER)
        headers[hdrs.WWW_AUTHENTICATE] = bearer_challenge(
            settings, request, need.challenge_scopes, error
        )
        return web.json_response(
            {"errors": [{"code": code, "message": message, "detail": detail}]},
            status=401,
            headers=headers,
        )

    async def public_pull(need: Requirement) -> bool:
        resource = need.resource
        return (
            resource is not None
            and resource.type == "repository"
            and resource.actions == routes.PULL
            and await accounts.is_public(resource.name)
        )

    async def continue_upload(token: str, need: Requirement) -> Claims | None:
        """An expired token may finish the upload session its subject started on this
        repository: signature, issuer and audience still checked, the session must belong to
        the subject, and the account must still hold the rights now."""
        resource = need.resource
        if resource is None or need.upload is None:
            return None
        try:
            claims = verifier.verify(token, allow_expired=True)
        except TokenError:
            return None
        if not claims.subject or time.time() - claims.expires_at > settings.upload_grace:
            return None
        if not set(resource.actions) <= claims.actions("repository", resource.name):
            return None
        if await upload_owner(resource.name, need.upload) != claims.subject:
            return None
        if not set(resource.actions) <= await accounts.allowed_actions(
            claims.subject, resource.name
        ):
            return None
        return claims

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != "/v2" and not path.startswith("/v2/"):
            return await handler(request)
        try:
            need = required_access(request)
        except InvalidName:
            return web.json_response(
                {
                    "errors": [
                        {
                            "code": "NAME_INVALID",
                            "message": "invalid repository name",
                            "detail": None,
                        }
                    ]
                },
                status=400,
                headers=API_VERSION_HEADER,
            )
        token = _bearer_token(request)
        if token is None:
            if await public_pull(need):
                request[ACCESS] = TokenAccess(None, None, accounts)
                return await handler(request)
            return challenge(request, need, None)
        try:
            claims: Claims | None = verifier.verify(token)
        except TokenExpired:
            claims = await continue_upload(token, need)
        except TokenError:
            claims = None
        if claims is None:
            return challenge(request, need, "invalid_token")
        resource = need.resource
        if resource is not None:
            granted = claims.actions(resource.type, resource.name)
            if not set(resource.actions) <= granted and not await public_pull(need):
                return challenge(request, need, "insufficient_scope")
            writes = set(resource.actions) & _WRITES
            if writes and not writes <= await accounts.allowed_actions(
                claims.subject or None, resource.name
            ):
                # A token outlives a removed user, robot or role by up to its lifetime; for
                # writes the account's rights now are what counts (two indexed lookups), so
                # removal ends pushes and deletes at once (issue 22, finding 10).
                return challenge(request, need, "invalid_token")
        request[ACCESS] = TokenAccess(claims.subject or None, claims, accounts)
        return await handler(request)

    return auth_middleware


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
