"""The token endpoint over real HTTP on loopback: GET (docker-auth-token.md), POST (OAuth2,
docker-auth-oauth.md), refresh tokens, throttling, JWKS."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.accounts import Accounts
from auth.config import AuthSettings
from auth.service import Auth, create_auth
from auth.tokens import Claims
from dockyard.core.sql import Database, open_database
from tests.support.postgres import PostgresCluster

PASSWORDS = {"alice": "alice-pass", "rita": "rita-pass", "adam": "adam-pass", "gus": "gus-pass"}


async def seed(accounts: Accounts) -> str:
    """acme: alice writer, rita reader, adam admin, robot ci on ci-*; globex: gus writer.
    acme/public is public. Returns the robot's secret."""
    await accounts.add_customer("acme")
    await accounts.add_customer("globex")
    for user, (customer, role) in {
        "alice": ("acme", "writer"),
        "rita": ("acme", "reader"),
        "adam": ("acme", "admin"),
        "gus": ("globex", "writer"),
    }.items():
        await accounts.create_user(user, PASSWORDS[user])
        await accounts.set_role(user, customer, role)
    await accounts.set_public("acme/public", True)
    _, secret = await accounts.add_robot("acme", "ci", ["ci-*"], ["pull", "push"])
    return secret


@dataclass(frozen=True)
class Seed:
    """Seeded accounts, made once per module and backend (scrypt is deliberately slow); each
    test works on its own copy: of the data directory (SQLite), or of a template database
    (PostgreSQL, `CREATE DATABASE … TEMPLATE`)."""

    data: Path
    robot_secret: str
    postgres: PostgresCluster | None = None
    template: str = ""

    async def open(self, tmp_path: Path) -> tuple[Path, Database]:
        data = tmp_path / "data"
        shutil.copytree(self.data, data)
        url = self.postgres.new_database(template=self.template) if self.postgres else None
        return data, await open_database(url, data)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Seed:
    data = tmp_path_factory.mktemp("auth-seed")
    cluster = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    url = cluster.new_database() if cluster else None

    async def make() -> str:
        db = await open_database(url, data)
        try:
            return await seed(await Accounts.open(db, "library"))
        finally:
            await db.close()

    secret = asyncio.run(make())
    return Seed(data, secret, cluster, url.rsplit("/", 1)[1] if url else "")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Env:
    def __init__(
        self, auth: Auth, client: TestClient, robot_secret: str, data: Path, db: Database
    ) -> None:
        self.auth = auth
        self.data = data
        self.db = db
        self.client = client
        self.robot_secret = robot_secret

    async def token(
        self, *scopes: str, user: str | None = None, password: str | None = None, **params: str
    ) -> tuple[int, dict[str, Any]]:
        headers = basic(user, password or PASSWORDS[user]) if user else {}
        query = [("service", "dockyard"), *(("scope", s) for s in scopes), *params.items()]
        resp = await self.client.get("/auth/token", params=query, headers=headers)
        return resp.status, await resp.json()

    def claims(self, body: dict[str, Any]) -> Claims:
        assert body["token"] == body["access_token"]
        return self.auth.verifier.verify(body["token"])

    def granted(self, body: dict[str, Any]) -> dict[str, list[str]]:
        return {f"{a.type}:{a.name}": sorted(a.actions) for a in self.claims(body).access}


async def make_env(
    seeded: Seed, tmp_path: Path, aiohttp_client: Any, **settings: Any
) -> AsyncIterator[Env]:
    data, db = await seeded.open(tmp_path)
    auth = await create_auth(
        AuthSettings.from_dict({"enabled": True, **settings}, data), "library", db
    )
    app = web.Application()
    auth.add_routes(app)
    client = await aiohttp_client(app)
    try:
        yield Env(auth, client, seeded.robot_secret, data, db)
    finally:
        await db.close()


@pytest.fixture
async def env(seeded: Seed, tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Env]:
    async for e in make_env(seeded, tmp_path, aiohttp_client, failed_login_limit=3):
        yield e


async def test_anonymous_token_grants_only_public_pull(env: Env) -> None:
    status, body = await env.token(
        "repository:acme/public:pull,push", "repository:acme/web:pull", "registry:catalog:*"
    )
    assert status == 200
    assert env.claims(body).subject == ""  # spec: empty subject for an anonymous client
    assert env.granted(body) == {
        "repository:acme/public": ["pull"],
        "repository:acme/web": [],
        "registry:catalog": [],
    }
    assert "refresh_token" not in body


async def test_response_fields(env: Env) -> None:
    status, body = await env.token("repository:acme/web:pull", user="alice")
    assert status == 200
    assert body["expires_in"] == 300
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["issued_at"])
    claims = env.claims(body)
    assert claims.subject == "alice" and claims.audience == "dockyard"
    assert body["scope"] == "repository:acme/web:pull"


@pytest.mark.parametrize(
    ("user", "asked", "granted"),
    [
        ("alice", "pull,push,delete", ["pull", "push"]),  # writer
        ("rita", "pull,push", ["pull"]),  # reader asking for more gets only pull
        ("adam", "pull,push,delete", ["delete", "pull", "push"]),  # admin
        ("gus", "pull,push", []),  # another customer's user gets nothing
    ],
)
async def test_granted_is_the_intersection_never_more(
    env: Env, user: str, asked: str, granted: list[str]
) -> None:
    # spec: intersection of requested and allowed actions; a shortfall is not an error
    status, body = await env.token(f"repository:acme/web:{asked}", user=user)
    assert status == 200
    assert env.granted(body) == {"repository:acme/web": granted}


async def test_acme_user_gets_nothing_on_globex(env: Env) -> None:
    status, body = await env.token(
        "repository:globex/app:pull,push,delete", "repository:globex/team/x:pull", user="alice"
    )
    assert status == 200
    assert env.granted(body) == {"repository:globex/app": [], "repository:globex/team/x": []}


async def test_default_customer_owns_single_component_names(env: Env) -> None:
    await env.auth.accounts.set_role("alice", "library", "reader")
    _, body = await env.token("repository:busybox:pull,push", "repository:library/x:pull",
                              user="alice")
    assert env.granted(body) == {"repository:busybox": ["pull"], "repository:library/x": ["pull"]}


async def test_catalog_scope_needs_an_account(env: Env) -> None:
    _, body = await env.token("registry:catalog:*", user="rita")
    assert env.granted(body) == {"registry:catalog": ["*"]}


async def test_robot_limited_to_its_patterns(env: Env) -> None:
    status, body = await env.token(
        "repository:acme/ci-app:pull,push,delete",
        "repository:acme/web:pull",
        "repository:globex/ci-app:pull",
        user="robot$acme+ci",
        password=env.robot_secret,
    )
    assert status == 200
    assert env.claims(body).subject == "robot$acme+ci"
    assert env.granted(body) == {
        "repository:acme/ci-app": ["pull", "push"],
        "repository:acme/web": [],
        "repository:globex/ci-app": [],
    }


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong-pass"), ("nobody", "whatever1"), ("robot$acme+ci", "guess"),
     ("robot$acme+nope", "guess")],
)
async def test_wrong_credentials_get_401_json(env: Env, user: str, password: str) -> None:
    resp = await env.client.get(
        "/auth/token", params={"scope": "repository:acme/web:pull"}, headers=basic(user, password)
    )
    assert resp.status == 401
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert "token" not in body


async def test_malformed_authorization_refused(env: Env) -> None:
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Bearer x"):
        resp = await env.client.get("/auth/token", headers={"Authorization": header})
        assert resp.status == 401, header


async def test_repeated_failures_throttled_with_retry_after(env: Env) -> None:
    for _ in range(3):
        status, _ = await env.token(user="alice", password="wrong-pass")
        assert status == 401
    resp = await env.client.get("/auth/token", headers=basic("alice", PASSWORDS["alice"]))
    assert resp.status == 429  # even the right password, until the window moves on
    assert 0 < int(resp.headers["Retry-After"]) <= 300
    assert (await resp.json())["error"] == "too_many_requests"
    resp = await env.client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]},
    )
    assert resp.status == 429
    status, _ = await env.token(user="rita")  # other accounts are not affected
    assert status == 200


async def test_success_resets_failure_count(env: Env) -> None:
    for _ in range(2):
        assert (await env.token(user="alice", password="wrong-pass"))[0] == 401
    assert (await env.token(user="alice"))[0] == 200
    for _ in range(2):
        assert (await env.token(user="alice", password="wrong-pass"))[0] == 401
    assert (await env.token(user="alice"))[0] == 200


async def test_offline_token_and_refresh_grant(env: Env) -> None:
    status, body = await env.token(user="alice", offline_token="true", client_id="docker")
    assert status == 200
    refresh = body["refresh_token"]
    assert len(refresh) >= 40
    resp = await env.client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "dockyard",
            "client_id": "docker",
            "scope": "repository:acme/web:pull,push repository:globex/x:pull",
        },
    )
    assert resp.status == 200
    body = await resp.json()
    # docker-auth-oauth.md: a refresh grant returns the same refresh token
    assert body["refresh_token"] == refresh
    assert body["scope"] == "repository:acme/web:pull,push"
    assert env.claims(body).subject == "alice"
    assert env.granted(body) == {"repository:acme/web": ["pull", "push"],
                                 "repository:globex/x": []}


async def test_password_grant(env: Env) -> None:
    form = {"grant_type": "password", "username": "rita", "password": PASSWORDS["rita"],
            "service": "dockyard", "client_id": "test", "scope": "repository:acme/web:pull,push"}
    resp = await env.client.post("/auth/token", data=form)
    assert resp.status == 200
    body = await resp.json()
    assert "refresh_token" not in body
    assert env.granted(body) == {"repository:acme/web": ["pull"]}
    resp = await env.client.post("/auth/token", data={**form, "access_type": "offline"})
    assert "refresh_token" in await resp.json()
    resp = await env.client.post("/auth/token", data={**form, "password": "nope-nope"})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials"},
        {"grant_type": "password", "username": "alice"},
        {},
        {"grant_type": "password", "username": "alice", "password": "alice-pass",
         "service": "elsewhere"},
        {"grant_type": "password", "username": "alice", "password": "alice-pass",
         "scope": "repository:acme/web"},
    ],
)
async def test_post_bad_requests_400(env: Env, form: dict[str, str]) -> None:
    resp = await env.client.post("/auth/token", data=form)
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_post_needs_form_encoding(env: Env) -> None:
    resp = await env.client.post("/auth/token", json={"grant_type": "password"})
    assert resp.status == 400


@pytest.mark.parametrize(
    "params",
    [
        [("scope", "repository:acme/web")],
        [("scope", "repository::pull")],
        [("scope", "garbage")],
        [("service", "some-other-registry")],
    ],
)
async def test_get_bad_requests_400(env: Env, params: list[tuple[str, str]]) -> None:
    resp = await env.client.get("/auth/token", params=params, headers=basic("alice", "alice-pass"))
    assert resp.status == 400


async def test_account_must_match_credentials(env: Env) -> None:
    status, _ = await env.token(user="alice", account="adam")
    assert status == 400
    status, _ = await env.token(user="alice", account="alice")
    assert status == 200


async def test_refresh_token_dies_with_user(env: Env) -> None:
    _, body = await env.token(user="alice", offline_token="true")
    refresh = body["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": "dockyard"}
    assert (await env.client.post("/auth/token", data=form)).status == 200
    await env.auth.accounts.remove_user("alice")
    resp = await env.client.post("/auth/token", data=form)
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_grant"


async def test_refresh_token_dies_with_password_change_and_robot_removal(env: Env) -> None:
    _, body = await env.token(user="rita", offline_token="true")
    rita_form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    _, body = await env.token(user="robot$acme+ci", password=env.robot_secret,
                              offline_token="true")
    robot_form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    assert (await env.client.post("/auth/token", data=rita_form)).status == 200
    assert (await env.client.post("/auth/token", data=robot_form)).status == 200
    await env.auth.accounts.set_password("rita", "a-new-password")
    await env.auth.accounts.remove_robot("robot$acme+ci")
    assert (await env.client.post("/auth/token", data=rita_form)).status == 401
    assert (await env.client.post("/auth/token", data=robot_form)).status == 401


async def test_refresh_token_forged_or_for_other_service(env: Env) -> None:
    for token in ("", "x" * 43, "a" * 1000):
        resp = await env.client.post(
            "/auth/token", data={"grant_type": "refresh_token", "refresh_token": token}
        )
        assert resp.status == 401


async def test_refresh_tokens_stored_hashed(env: Env) -> None:
    _, body = await env.token(user="alice", offline_token="true")
    if env.db.dialect == "sqlite":
        raw = b"".join(p.read_bytes() for p in env.data.glob("metadata.db*"))
    else:
        rows = await env.db.fetchall("SELECT * FROM auth_refresh_tokens")
        rows += await env.db.fetchall("SELECT * FROM auth_users")
        raw = repr([tuple(r) for r in rows]).encode()
    assert b"alice" in raw  # the check reads the stored state
    assert body["refresh_token"].encode() not in raw
    assert PASSWORDS["alice"].encode() not in raw


async def test_jwks_verifies_issued_tokens(env: Env) -> None:
    resp = await env.client.get("/auth/jwks.json")
    assert resp.status == 200
    jwks = await resp.json()
    _, body = await env.token("repository:acme/web:pull", user="alice")
    kid = jwt.get_unverified_header(body["token"])["kid"]
    (entry,) = [k for k in jwks["keys"] if k["kid"] == kid]
    assert "d" not in entry  # never the private part
    key = jwt.PyJWK(entry)
    payload = jwt.decode(body["token"], key.key, algorithms=["ES256"], audience="dockyard")
    assert payload["sub"] == "alice"


async def test_short_lifetime_is_honoured(
    seeded: Seed, tmp_path: Path, aiohttp_client: Any
) -> None:
    async for env in make_env(seeded, tmp_path, aiohttp_client, token_lifetime=3):
        _, body = await env.token(user="alice")
        claims = env.claims(body)
        assert body["expires_in"] == 3 and claims.expires_at - claims.issued_at == 3
