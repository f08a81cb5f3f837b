"""Resolving a tag to its manifest digest over the Distribution API of the configured registry.

`services deploy --tag v1` must deploy what `v1` names *now*, pinned by digest, like a push
event does. The launcher asks the registry itself (`HEAD /v2/<repo>/manifests/<tag>`, spec:
oci-distribution-spec.md "Checking if content exists in the registry") rather than reaching
into another part's database, so it works against any registry. With the robot credential it
follows the token flow (a 401 `Bearer` challenge, then the realm with Basic credentials).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import aiohttp

from dockyard.core.oci import MANIFEST_TYPES, is_digest_valid
from launcher.config import RegistryAuth
from launcher.errors import InvalidRequest, LauncherError, NotFound

ACCEPT = ", ".join(sorted(MANIFEST_TYPES))


def registry_base(registry: str) -> str:
    """http for loopback registries (as docker treats them), https for every other."""
    host = registry.rsplit(":", 1)[0].strip("[]") if registry.count(":") <= 1 else registry
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    return f"{'http' if loopback else 'https'}://{registry}"


async def resolve_tag(registry: str, repository: str, tag: str,
                      auth: RegistryAuth | None, timeout: float = 15.0) -> str:
    url = f"{registry_base(registry)}/v2/{repository}/manifests/{tag}"
    headers = {"Accept": ACCEPT}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as http:
            async with http.head(url, headers=headers) as resp:
                if resp.status == 401 and auth is not None:
                    token = await _token(http, resp.headers.get("WWW-Authenticate", ""), auth)
                    headers["Authorization"] = token
                    async with http.head(url, headers=headers) as again:
                        return _digest(again, registry, repository, tag)
                return _digest(resp, registry, repository, tag)
    except aiohttp.ClientError as exc:
        raise LauncherError(f"cannot resolve {repository}:{tag} at {registry}: {exc}") from None


def _digest(resp: aiohttp.ClientResponse, registry: str, repository: str, tag: str) -> str:
    if resp.status == 404:
        raise NotFound(f"tag {tag} of {repository} not found at {registry}")
    if resp.status in (401, 403):
        raise LauncherError(f"{registry} refused to resolve {repository}:{tag} "
                            f"({resp.status}); set [launcher.registry_auth]")
    if resp.status != 200:
        raise LauncherError(f"{registry} answered {resp.status} for {repository}:{tag}")
    digest = resp.headers.get("Docker-Content-Digest", "")
    if not is_digest_valid(digest):
        raise LauncherError(f"{registry} gave no digest for {repository}:{tag}")
    return digest


async def _token(http: aiohttp.ClientSession, challenge: str, auth: RegistryAuth) -> str:
    scheme, _, params = challenge.partition(" ")
    basic = aiohttp.BasicAuth(auth.username, auth.password).encode()
    if scheme.lower() == "basic":
        return basic
    if scheme.lower() != "bearer":
        raise InvalidRequest(f"unsupported registry challenge {challenge!r}")
    fields = _challenge_params(params)
    realm = fields.pop("realm", None)
    if not realm:
        raise LauncherError(f"registry challenge without realm: {challenge!r}")
    async with http.get(realm, params=fields, headers={"Authorization": basic}) as resp:
        if resp.status != 200:
            raise LauncherError(f"token endpoint {realm} answered {resp.status}")
        body: Any = await resp.json(content_type=None)
    token = body.get("token") or body.get("access_token")
    if not token:
        raise LauncherError(f"token endpoint {realm} gave no token")
    return f"Bearer {token}"


def _challenge_params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key:
            out[key] = value.strip().strip('"')
    return out
