"""HTTP handlers of the token service: `GET /auth/token` (docker-auth-token.md, HTTP Basic or
anonymous), `POST /auth/token` (docker-auth-oauth.md, password and refresh_token grants) and
`GET /auth/jwks.json`."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from multidict import MultiDict

from auth.accounts import Accounts
from auth.config import AuthSettings
from auth.grants import grant_access
from auth.keys import VerificationKey, jwks_document
from auth.passwords import PasswordBusy
from auth.scope import Resource, ScopeError, format_scopes, parse_scopes
from auth.throttle import LoginThrottle
from auth.tokens import TokenIssuer
from dockyard.core.errors import PayloadTooLarge
from dockyard.core.http import read_body

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 64 * 1024  # of bytes read, whatever Content-Length says (chunked too)
MAX_FORM_FIELDS = 256


class TokenEndpoint:
    def __init__(
        self,
        settings: AuthSettings,
        accounts: Accounts,
        issuer: TokenIssuer,
        throttle: LoginThrottle,
        keys: dict[str, VerificationKey],
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._issuer = issuer
        self._throttle = throttle
        self._jwks = jwks_document(keys)

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self._jwks, headers={"Cache-Control": "max-age=300"})

    async def get_token(self, request: web.Request) -> web.Response:
        query = request.query
        service = query.get("service") or self._settings.service
        if service != self._settings.service:
            return _error(400, "invalid_request", f"unknown service {service[:100]!r}")
        try:
            requested = parse_scopes(query.getall("scope", []))
        except ScopeError as exc:
            return _error(400, "invalid_scope", str(exc))
        subject = ""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header:
            credentials = parse_basic(header)
            if credentials is None:
                return _error(401, "invalid_client", "only HTTP Basic credentials are accepted")
            login, password = credentials
            account = query.get("account")
            if account and account != login:
                return _error(400, "invalid_request", "account does not match the credentials")
            outcome = await self._login(request, login, password)
            if isinstance(outcome, web.Response):
                return outcome
            subject = outcome
        refresh_token = None
        if subject and query.get("offline_token", "").lower() == "true":
            refresh_token = await self._accounts.create_refresh_token(
                subject, service, query.get("client_id", ""), self._settings.refresh_token_lifetime
            )
        return await self._respond(subject, requested, refresh_token)

    async def post_token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(400, "invalid_request", "expected an x-www-form-urlencoded form")
        try:
            raw = await read_body(request, MAX_FORM_BYTES, what="form")
        except PayloadTooLarge as exc:
            response = _error(413, "invalid_request", exc.message)
            response.force_close()  # the rest of the body is not read
            return response
        form = parse_form(raw)
        if form is None:
            return _error(400, "invalid_request", "the form is not UTF-8 x-www-form-urlencoded")
        fields = dict(form.items())
        service = fields.get("service") or self._settings.service
        if service != self._settings.service:
            return _error(400, "invalid_request", f"unknown service {service[:100]!r}")
        try:
            requested = parse_scopes(form.getall("scope", []))
        except ScopeError as exc:
            return _error(400, "invalid_scope", str(exc))
        grant_type = fields.get("grant_type")
        if grant_type == "password":
            username, password = fields.get("username"), fields.get("password")
            if not username or password is None:
                return _error(400, "invalid_request", "username and password are required")
            outcome = await self._login(request, username, password)
            if isinstance(outcome, web.Response):
                return outcome
            subject = outcome
            refresh_token = None
            if fields.get("access_type") == "offline":
                refresh_token = await self._accounts.create_refresh_token(
                    subject,
                    service,
                    fields.get("client_id", ""),
                    self._settings.refresh_token_lifetime,
                )
            return await self._respond(subject, requested, refresh_token)
        if grant_type == "refresh_token":
            refresh_token = fields.get("refresh_token", "")
            found = await self._accounts.use_refresh_token(refresh_token, service)
            if found is None:
                return _error(401, "invalid_grant", "refresh token is invalid or revoked")
            # docker-auth-oauth.md: a refresh grant returns the same refresh token, not a new one.
            return await self._respond(found, requested, refresh_token)
        return _error(400, "unsupported_grant_type", "grant_type must be password or refresh_token")

    async def _login(
        self, request: web.Request, username: str, password: str
    ) -> str | web.Response:
        source = request.remote or ""
        retry_after = await self._throttle.retry_after(source, username)
        if retry_after is not None:
            # Refused before any hashing, and late: a closed-loop flood from one address gets
            # one answer per connection per tarpit instead of thousands per second.
            await asyncio.sleep(self._throttle.tarpit)
            return _error(
                429,
                "too_many_requests",
                "too many failed logins from this address; try again later",
                {"Retry-After": str(retry_after)},
            )
        # Counted before the check so that many concurrent guesses cannot all slip in under the
        # limit while their hashes are computed; a success clears the (address, account) count.
        await self._throttle.failed(source, username)
        try:
            subject = await self._accounts.authenticate(username, password)
        except PasswordBusy as exc:
            return _error(
                503,
                "temporarily_unavailable",
                "too many logins at once; try again shortly",
                {"Retry-After": str(exc.retry_after)},
            )
        if subject is None:
            return _error(401, "invalid_grant", "incorrect username or password")
        await self._throttle.succeeded(source, username)
        return subject

    async def _respond(
        self, subject: str, requested: list[Resource], refresh_token: str | None
    ) -> web.Response:
        granted = await grant_access(self._accounts, subject or None, requested)
        issued = self._issuer.issue(subject, granted)
        body: dict[str, Any] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued.issued_at_rfc3339,
            "scope": format_scopes(g for g in granted if g.actions),
        }
        if refresh_token:
            body["refresh_token"] = refresh_token
        return web.json_response(body, headers=NO_STORE)


def parse_form(raw: bytes) -> MultiDict[str] | None:
    """An x-www-form-urlencoded body as a multidict (repeated `scope` fields are kept), or None
    when it is not UTF-8 or has too many fields."""
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    return MultiDict(pairs)


def parse_basic(header: str) -> tuple[str, str] | None:
    """(login, password) from an `Authorization: Basic …` header (RFC 7617), or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, sep, password = decoded.partition(":")
    if not sep or not login:
        return None
    return login, password


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    # Both shapes: OAuth2 clients read `error`, the docker client reads `errors` (errcode).
    registry_code = {
        401: "UNAUTHORIZED",
        413: "SIZE_INVALID",
        429: "TOOMANYREQUESTS",
        503: "UNAVAILABLE",
    }.get(status, "UNSUPPORTED")
    body = {
        "error": code,
        "error_description": message,
        "errors": [{"code": registry_code, "message": message, "detail": None}],
    }
    merged = dict(NO_STORE)
    merged.update(headers or {})
    if status == 401:
        merged["WWW-Authenticate"] = 'Basic realm="dockyard"'
    return web.json_response(body, status=status, headers=merged)
