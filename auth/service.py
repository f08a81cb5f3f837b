"""The composition object of the auth part: keys, verifier, issuer, accounts and routes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from auth import passwords
from auth.accounts import Accounts
from auth.challenge import JWKS_PATH, TOKEN_PATH
from auth.config import AuthSettings
from auth.handlers import TokenEndpoint
from auth.keys import VerificationKey, load_signing_key, load_verification_keys
from auth.throttle import LoginThrottle, SharedFailures
from auth.tokens import TokenIssuer, TokenVerifier
from dockyard.core.sql import Database


@dataclass
class Auth:
    settings: AuthSettings
    accounts: Accounts
    verifier: TokenVerifier
    issuer: TokenIssuer
    keys: dict[str, VerificationKey]
    endpoint: TokenEndpoint

    def add_routes(self, app: web.Application) -> None:
        """`GET|POST /auth/token` and `GET /auth/jwks.json`."""
        app.router.add_get(TOKEN_PATH, self.endpoint.get_token)
        app.router.add_post(TOKEN_PATH, self.endpoint.post_token)
        app.router.add_get(JWKS_PATH, self.endpoint.jwks)


async def create_auth(settings: AuthSettings, default_customer: str, db: Database) -> Auth:
    # Key generation (RSA especially) and file reads stay off the event loop.
    signing = await asyncio.to_thread(load_signing_key, settings)
    keys = await asyncio.to_thread(load_verification_keys, settings, signing)
    accounts = await Accounts.open(db, default_customer)
    verifier = TokenVerifier(
        keys, issuer=settings.issuer, audience=settings.service, leeway=settings.clock_skew
    )
    issuer = TokenIssuer(
        signing,
        issuer=settings.issuer,
        audience=settings.service,
        lifetime=settings.token_lifetime,
    )
    throttle = LoginThrottle(
        settings.failed_login_limit,
        settings.failed_login_window,
        source_limit=settings.failed_login_source_limit,
        tarpit=settings.failed_login_tarpit,
        shared=SharedFailures(db, settings.failed_login_window),
    )
    passwords.configure(
        settings.hash_workers or passwords.default_workers(),
        settings.hash_rate,
        settings.hash_max_wait,
    )
    # The dummy hash unknown names are checked against, made now rather than on the event loop
    # by the first login with an unknown name.
    await asyncio.to_thread(passwords.dummy_hash)
    endpoint = TokenEndpoint(settings, accounts, issuer, throttle, keys)
    return Auth(settings, accounts, verifier, issuer, keys, endpoint)
