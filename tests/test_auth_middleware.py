"""The registry's authorization middleware over real HTTP, in front of a tiny stand-in registry
whose handlers only report what they were allowed to see. Covers the challenge format, the
required scope per route, the attack matrix, customer isolation and the expired-token upload
continuation."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.config import AuthSettings
from auth.keys import load_signing_key
from auth.scope import Resource
from auth.service import Auth, create_auth
from auth.tokens import TokenIssuer
from registry import routes
from registry.access import ACCESS
from registry.authz import make_auth_middleware
from tests.test_auth_endpoint import PASSWORDS, Seed, basic, seeded  # noqa: F401 - fixture
from tests.test_auth_tokens import claims_for, forged_tokens, sign

REPOSITORIES = ["acme/web", "acme/other", "acme/public", "globex/app", "globex/secret"]
CHALLENGE = re.compile(r'Bearer realm="([^"]+)",service="([^"]+)"(?:,scope="([^"]*)")?'
                       r'(?:,error="([^"]+)")?')


class StandIn:
    """Handlers reporting the caller's access; upload sessions bound to their repository."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, str | None]] = {}

    async def upload_owner(self, name: str, upload_id: str) -> str | None:
        found = self.sessions.get(upload_id)
        return found[1] if found and found[0] == name else None

    @staticmethod
    def _report(request: web.Request, **extra: Any) -> web.Response:
        access = request[ACCESS]
        return web.json_response(
            {"name": request.match_info.get("name"), "subject": access.subject, **extra}
        )

    async def base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def catalog(self, request: web.Request) -> web.Response:
        access = request[ACCESS]
        return web.json_response(
            {"repositories": [r for r in REPOSITORIES if await access.can(r, "pull")]}
        )

    async def manifest(self, request: web.Request) -> web.Response:
        return self._report(request)

    async def blob(self, request: web.Request) -> web.Response:
        access = request[ACCESS]
        others = {
            f"{r}:{a}": await access.can(r, a)
            for r in REPOSITORIES
            for a in ("pull", "push")
        }
        return self._report(request, can=others)

    async def start_upload(self, request: web.Request) -> web.Response:
        access = request[ACCESS]
        source = request.query.get("from")
        if source and await access.can(source, "pull"):
            return web.json_response({"mounted": source}, status=201)
        upload_id = uuid.uuid4().hex
        self.sessions[upload_id] = (request.match_info["name"], access.subject)
        return web.json_response({"upload": upload_id}, status=202)

    async def upload(self, request: web.Request) -> web.Response:
        return self._report(request, upload=request.match_info["upload_id"])

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


class Env:
    def __init__(self, auth: Auth, client: TestClient, stand_in: StandIn, secret: str) -> None:
        self.auth = auth
        self.client = client
        self.stand_in = stand_in
        self.robot_secret = secret
        self.key = load_signing_key(auth.settings)

    async def token(self, *scopes: str, user: str | None = None,
                    password: str | None = None) -> str:
        headers = basic(user, password or PASSWORDS[user]) if user else {}
        resp = await self.client.get(
            "/auth/token", params=[("scope", s) for s in scopes], headers=headers
        )
        assert resp.status == 200, await resp.text()
        return (await resp.json())["token"]

    def expired_token(self, subject: str, *scopes: Resource, ago: int = 60) -> str:
        """A genuine token of the real key that expired `ago` seconds ago."""
        issuer = TokenIssuer(self.key, issuer="dockyard", audience="dockyard", lifetime=-ago)
        return issuer.issue(subject, list(scopes)).token

    async def call(self, method: str, path: str, token: str | None = None,
                   **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), body


def challenge_of(headers: dict[str, str]) -> tuple[str, str, str | None, str | None]:
    match = CHALLENGE.fullmatch(headers["WWW-Authenticate"])
    assert match, headers["WWW-Authenticate"]
    return match.group(1), match.group(2), match.group(3), match.group(4)


@pytest.fixture
async def env(
    seeded: Seed,  # noqa: F811
    tmp_path: Path,
    aiohttp_client: Any,
) -> AsyncIterator[Env]:
    data, db = await seeded.open(tmp_path)
    settings = AuthSettings.from_dict({"enabled": True}, data)
    auth = await create_auth(settings, "library", db)
    stand_in = StandIn()
    app = web.Application()
    app.middlewares.append(make_auth_middleware(auth, settings, stand_in.upload_owner))
    auth.add_routes(app)
    name = "/v2/{name:.+}"
    # The registry's own route names: the middleware reads the scope a route needs from them.
    r = app.router
    r.add_get("/v2/", stand_in.base, name=routes.BASE)
    r.add_get("/v2/_catalog", stand_in.catalog, name=routes.CATALOG)
    r.add_get("/healthz", stand_in.healthz)
    manifest = name + "/manifests/{reference}"
    r.add_get(manifest, stand_in.manifest, name=routes.MANIFEST_GET)
    r.add_put(manifest, stand_in.manifest, name=routes.MANIFEST_PUT)
    r.add_delete(manifest, stand_in.manifest, name=routes.MANIFEST_DELETE)
    r.add_get(name + "/tags/list", stand_in.manifest, name=routes.TAGS)
    r.add_get(name + "/referrers/{digest}", stand_in.manifest, name=routes.REFERRERS)
    r.add_post(name + "/blobs/uploads/", stand_in.start_upload, name=routes.UPLOAD_START)
    upload = name + "/blobs/uploads/{upload_id}"
    r.add_get(upload, stand_in.upload, name=routes.UPLOAD_STATUS)
    r.add_patch(upload, stand_in.upload, name=routes.UPLOAD_PATCH)
    r.add_put(upload, stand_in.upload, name=routes.UPLOAD_PUT)
    r.add_delete(upload, stand_in.upload, name=routes.UPLOAD_CANCEL)
    r.add_get(name + "/blobs/{digest}", stand_in.blob, allow_head=False, name=routes.BLOB_GET)
    r.add_head(name + "/blobs/{digest}", stand_in.blob, name=routes.BLOB_HEAD)
    client = await aiohttp_client(app)
    try:
        yield Env(auth, client, stand_in, seeded.robot_secret)
    finally:
        await db.close()


# -- challenges ----------------------------------------------------------------------------------


async def test_base_without_token_challenges_without_scope(env: Env) -> None:
    status, headers, body = await env.call("GET", "/v2/")
    assert status == 401
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
    realm, service, scope, error = challenge_of(headers)
    # realm defaults to this server's token endpoint as the client reached it
    assert realm == f"http://127.0.0.1:{env.client.port}/auth/token"
    assert (service, scope, error) == ("dockyard", None, None)
    assert body["errors"][0]["code"] == "UNAUTHORIZED"


async def test_base_with_any_valid_token(env: Env) -> None:
    status, _, _ = await env.call("GET", "/v2/", await env.token())  # even anonymous
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/acme/web/manifests/latest", "repository:acme/web:pull"),
        ("HEAD", "/v2/acme/web/manifests/latest", "repository:acme/web:pull"),
        ("PUT", "/v2/acme/web/manifests/latest", "repository:acme/web:pull,push"),
        ("DELETE", "/v2/acme/web/manifests/latest", "repository:acme/web:delete"),
        ("GET", "/v2/acme/team/web/tags/list", "repository:acme/team/web:pull"),
        ("GET", "/v2/acme/web/blobs/sha256:" + "a" * 64, "repository:acme/web:pull"),
        ("POST", "/v2/acme/web/blobs/uploads/", "repository:acme/web:pull,push"),
        ("PATCH", "/v2/acme/web/blobs/uploads/abc", "repository:acme/web:pull,push"),
        # cancelling one's own upload is part of pushing
        ("DELETE", "/v2/acme/web/blobs/uploads/abc", "repository:acme/web:pull,push"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
        # a name holding a route keyword: the same greedy match the router makes
        ("GET", "/v2/acme/blobs/manifests/x", "repository:acme/blobs:pull"),
        # unrouted (404 later) paths still need the scope their shape implies
        ("GET", "/v2/acme/web/referrers/sha256:" + "a" * 64, "repository:acme/web:pull"),
    ],
)
async def test_challenge_names_the_exact_scope(
    env: Env, method: str, path: str, scope: str
) -> None:
    status, headers, _ = await env.call(method, path)
    assert status == 401
    assert challenge_of(headers)[2] == scope


async def test_mount_challenge_also_names_the_source(env: Env) -> None:
    status, headers, body = await env.call(
        "POST", "/v2/acme/web/blobs/uploads/?mount=sha256:" + "a" * 64 + "&from=acme/other"
    )
    assert status == 401
    assert challenge_of(headers)[2] == "repository:acme/web:pull,push repository:acme/other:pull"
    assert {"Type": "repository", "Name": "acme/web", "Action": "push"} in (
        body["errors"][0]["detail"]
    )


async def test_realm_follows_host_header_and_ignores_garbage(env: Env) -> None:
    _, headers, _ = await env.call("GET", "/v2/", headers={"Host": "registry.test:8443"})
    assert challenge_of(headers)[0] == "http://registry.test:8443/auth/token"
    _, headers, _ = await env.call("GET", "/v2/", headers={"Host": 'x",evil="1'})
    assert challenge_of(headers)[0] == f"http://127.0.0.1:{env.client.port}/auth/token"


async def test_invalid_name_is_rejected_not_passed_through(env: Env) -> None:
    status, _, body = await env.call("GET", "/v2/Acme/Web/manifests/latest")
    assert status == 400
    assert body["errors"][0]["code"] == "NAME_INVALID"


async def test_other_paths_are_not_its_business(env: Env) -> None:
    status, _, _ = await env.call("GET", "/healthz")
    assert status == 200


async def test_full_challenge_flow(env: Env) -> None:
    """Follow the challenge like a client: realm + service + scope -> token -> retry."""
    status, headers, _ = await env.call("PUT", "/v2/acme/web/manifests/1")
    realm, service, scope, _ = challenge_of(headers)
    resp = await env.client.get(
        realm.split(str(env.client.port), 1)[1],
        params={"service": service, "scope": scope},
        headers=basic("alice", PASSWORDS["alice"]),
    )
    token = (await resp.json())["token"]
    status, _, body = await env.call("PUT", "/v2/acme/web/manifests/1", token)
    assert status == 200
    assert body == {"name": "acme/web", "subject": "alice"}


# -- attack matrix over HTTP -----------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        "alg_none", "alg_none_upper", "hs256_public_pem", "hs256_public_jwk", "tampered_access",
        "wrong_signature_trusted_kid", "unknown_kid", "no_kid", "jwk_header_self_signed",
        "expired", "nbf_future", "wrong_aud", "wrong_iss", "missing_exp", "access_not_a_list",
        "garbage",
    ],
)
async def test_forged_token_refused(env: Env, attack: str) -> None:
    # every forged token claims pull+push on acme/web
    token = forged_tokens(env.key)[attack]
    for method, path in (
        ("GET", "/v2/acme/web/manifests/latest"),
        ("POST", "/v2/acme/web/blobs/uploads/"),
        ("GET", "/v2/"),
    ):
        status, headers, body = await env.call(method, path, token)
        assert status == 401, (attack, method, path)
        assert challenge_of(headers)[3] == "invalid_token"
        assert body["errors"][0]["code"] == "UNAUTHORIZED"


async def test_control_same_claims_properly_signed_pass(env: Env) -> None:
    push = [{"type": "repository", "name": "acme/web", "actions": ["pull", "push"]}]
    token = sign(claims_for(access=push), env.key)
    assert (await env.call("POST", "/v2/acme/web/blobs/uploads/", token))[0] == 202


async def test_pull_token_cannot_push(env: Env) -> None:
    token = await env.token("repository:acme/web:pull", user="alice")
    assert (await env.call("GET", "/v2/acme/web/manifests/1", token))[0] == 200
    status, headers, body = await env.call("PUT", "/v2/acme/web/manifests/1", token)
    assert status == 401
    _, _, scope, error = challenge_of(headers)
    assert (scope, error) == ("repository:acme/web:pull,push", "insufficient_scope")
    assert body["errors"][0]["code"] == "DENIED"
    assert (await env.call("POST", "/v2/acme/web/blobs/uploads/", token))[0] == 401
    assert (await env.call("DELETE", "/v2/acme/web/manifests/1", token))[0] == 401


async def test_asking_more_than_allowed_grants_only_allowed(env: Env) -> None:
    token = await env.token("repository:acme/web:pull,push,delete", user="rita")  # reader
    assert (await env.call("GET", "/v2/acme/web/manifests/1", token))[0] == 200
    assert (await env.call("PUT", "/v2/acme/web/manifests/1", token))[0] == 401
    assert (await env.call("DELETE", "/v2/acme/web/manifests/1", token))[0] == 401


async def test_token_for_one_repository_not_valid_for_another(env: Env) -> None:
    token = await env.token("repository:acme/web:pull,push", user="alice")
    assert (await env.call("PUT", "/v2/acme/other/manifests/1", token))[0] == 401


async def test_acme_user_cannot_pull_push_mount_or_list_globex(env: Env) -> None:
    token = await env.token(
        "repository:globex/app:pull,push,delete",
        "repository:acme/web:pull,push",
        "registry:catalog:*",
        user="alice",
    )
    for method, path in (
        ("GET", "/v2/globex/app/manifests/latest"),
        ("HEAD", "/v2/globex/app/blobs/sha256:" + "a" * 64),
        ("GET", "/v2/globex/app/tags/list"),
        ("PUT", "/v2/globex/app/manifests/latest"),
        ("POST", "/v2/globex/app/blobs/uploads/"),
        ("DELETE", "/v2/globex/app/manifests/latest"),
    ):
        assert (await env.call(method, path, token))[0] == 401, (method, path)
    # mount from globex into acme: allowed to start, but the registry sees no pull on the source
    status, _, body = await env.call(
        "POST", "/v2/acme/web/blobs/uploads/?mount=sha256:" + "a" * 64 + "&from=globex/secret",
        token,
    )
    assert status == 202 and "upload" in body
    status, _, body = await env.call("GET", "/v2/_catalog", token)
    assert status == 200
    assert body["repositories"] == ["acme/web", "acme/other", "acme/public"]
    status, _, body = await env.call("GET", "/v2/_catalog", await env.token(
        "registry:catalog:*", user="gus"))
    assert body["repositories"] == ["acme/public", "globex/app", "globex/secret"]


async def test_mount_from_own_customer_uses_account_pull(env: Env) -> None:
    token = await env.token("repository:acme/web:pull,push", user="alice")
    status, _, body = await env.call(
        "POST", "/v2/acme/web/blobs/uploads/?mount=sha256:" + "a" * 64 + "&from=acme/other",
        token,
    )
    assert (status, body) == (201, {"mounted": "acme/other"})


async def test_access_can_pull_widened_to_account_never_push(env: Env) -> None:
    """Access.can (layer dedup): pull follows the account's rights, push only the token's."""
    token = await env.token("repository:acme/web:pull,push", user="alice")
    status, _, body = await env.call("HEAD", "/v2/acme/web/blobs/sha256:" + "a" * 64, token)
    assert status == 200
    status, _, body = await env.call("GET", "/v2/acme/web/blobs/sha256:" + "a" * 64, token)
    assert body["can"] == {
        "acme/web:pull": True, "acme/web:push": True,
        "acme/other:pull": True, "acme/other:push": False,
        "acme/public:pull": True, "acme/public:push": False,
        "globex/app:pull": False, "globex/app:push": False,
        "globex/secret:pull": False, "globex/secret:push": False,
    }


async def test_anonymous_public_pull_without_token(env: Env) -> None:
    status, _, body = await env.call("GET", "/v2/acme/public/manifests/latest")
    assert (status, body) == (200, {"name": "acme/public", "subject": None})
    assert (await env.call("HEAD", "/v2/acme/public/blobs/sha256:" + "a" * 64))[0] == 200
    assert (await env.call("GET", "/v2/acme/public/tags/list"))[0] == 200
    assert (await env.call("PUT", "/v2/acme/public/manifests/latest"))[0] == 401
    assert (await env.call("POST", "/v2/acme/public/blobs/uploads/"))[0] == 401
    assert (await env.call("GET", "/v2/acme/web/manifests/latest"))[0] == 401
    # with a token that does not name it, a public repository still pulls
    token = await env.token(user="gus")
    assert (await env.call("GET", "/v2/acme/public/manifests/latest", token))[0] == 200
    await env.auth.accounts.set_public("acme/public", False)
    assert (await env.call("GET", "/v2/acme/public/manifests/latest"))[0] == 401


async def test_robot_confined_to_its_pattern(env: Env) -> None:
    token = await env.token("repository:acme/ci-app:pull,push", "repository:acme/web:pull,push",
                            user="robot$acme+ci", password=env.robot_secret)
    assert (await env.call("PUT", "/v2/acme/ci-app/manifests/1", token))[0] == 200
    assert (await env.call("PUT", "/v2/acme/web/manifests/1", token))[0] == 401
    assert (await env.call("GET", "/v2/acme/web/manifests/1", token))[0] == 401


# -- a push that outlives its token ------------------------------------------------------------


async def _start_upload(env: Env, user: str, repository: str) -> str:
    token = await env.token(f"repository:{repository}:pull,push", user=user)
    status, _, body = await env.call("POST", f"/v2/{repository}/blobs/uploads/", token)
    assert status == 202
    return body["upload"]


PUSH_WEB = Resource("repository", "acme/web", ("pull", "push"))


async def test_expired_token_finishes_its_own_upload(env: Env) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    expired = env.expired_token("alice", PUSH_WEB)
    for method in ("PATCH", "GET", "PUT", "DELETE"):
        status, _, body = await env.call(method, f"/v2/acme/web/blobs/uploads/{upload}", expired)
        assert status == 200, method
        assert body["subject"] == "alice" and body["upload"] == upload
    # but nothing else: not a new session, not a manifest
    assert (await env.call("POST", "/v2/acme/web/blobs/uploads/", expired))[0] == 401
    assert (await env.call("PUT", "/v2/acme/web/manifests/1", expired))[0] == 401


@pytest.mark.parametrize(
    ("path_repository", "token_resource"),
    [
        ("acme/other", Resource("repository", "acme/other", ("pull", "push"))),
        ("globex/app", Resource("repository", "globex/app", ("pull", "push"))),
    ],
)
async def test_upload_id_useless_from_another_repository_or_customer(
    env: Env, path_repository: str, token_resource: Resource
) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    expired = env.expired_token("alice", token_resource)
    status, headers, _ = await env.call(
        "PATCH", f"/v2/{path_repository}/blobs/uploads/{upload}", expired
    )
    assert status == 401
    assert challenge_of(headers)[3] == "invalid_token"
    # gus of globex, with a live push token for his own repository, cannot reach the session
    # through acme/web (his token does not name it); through globex/app the middleware lets
    # him in and it is the registry's session lookup, bound to acme/web, that answers 404.
    gus = await env.token("repository:globex/app:pull,push", user="gus")
    assert (await env.call("PATCH", f"/v2/acme/web/blobs/uploads/{upload}", gus))[0] == 401
    assert await env.stand_in.upload_owner("globex/app", upload) is None


async def test_expired_token_of_another_subject_refused(env: Env) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    expired = env.expired_token("adam", PUSH_WEB)  # adam may push acme/web, but not his session
    assert (await env.call("PATCH", f"/v2/acme/web/blobs/uploads/{upload}", expired))[0] == 401


async def test_expired_continuation_needs_the_token_to_have_had_push(env: Env) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    expired = env.expired_token("alice", Resource("repository", "acme/web", ("pull",)))
    assert (await env.call("PATCH", f"/v2/acme/web/blobs/uploads/{upload}", expired))[0] == 401


async def test_expired_continuation_ends_with_the_account_or_its_rights(env: Env) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    expired = env.expired_token("alice", PUSH_WEB)
    path = f"/v2/acme/web/blobs/uploads/{upload}"
    assert (await env.call("PATCH", path, expired))[0] == 200
    await env.auth.accounts.set_role("alice", "acme", "reader")
    assert (await env.call("PATCH", path, expired))[0] == 401
    await env.auth.accounts.set_role("alice", "acme", "writer")
    assert (await env.call("PATCH", path, expired))[0] == 200
    await env.auth.accounts.remove_user("alice")
    assert (await env.call("PATCH", path, expired))[0] == 401


async def test_expired_continuation_bounded_by_grace_and_still_checks_signature(
    env: Env,
) -> None:
    upload = await _start_upload(env, "alice", "acme/web")
    path = f"/v2/acme/web/blobs/uploads/{upload}"
    too_old = env.expired_token("alice", PUSH_WEB, ago=env.auth.settings.upload_grace + 60)
    assert (await env.call("PATCH", path, too_old))[0] == 401
    now = int(time.time())
    push = [PUSH_WEB.to_claim()]
    old_claims = {"exp": now - 60, "iat": now - 400, "nbf": now - 400}
    for bad in (
        sign(claims_for(access=push, aud="other", **old_claims), env.key),
        sign(claims_for(access=push, iss="evil", **old_claims), env.key),
    ):
        assert (await env.call("PATCH", path, bad))[0] == 401
    tampered = env.expired_token("adam", PUSH_WEB).split(".")
    alice_payload = env.expired_token("alice", PUSH_WEB).split(".")[1]
    forged = f"{tampered[0]}.{alice_payload}.{tampered[2]}"
    assert (await env.call("PATCH", path, forged))[0] == 401
