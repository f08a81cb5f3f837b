"""Token issuing and verification, and the attack matrix at the verifier (docker-auth-jwt.md,
"Verifying the token"). The same forged tokens are thrown at the registry over HTTP in
test_auth_middleware.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.config import AuthSettings
from auth.keys import SigningKey, key_id, load_signing_key, load_verification_keys
from auth.scope import Resource
from auth.tokens import TokenError, TokenExpired, TokenIssuer, TokenVerifier


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(
    subject: str = "alice",
    access: list[dict[str, Any]] | None = None,
    **override: Any,
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "dockyard",
        "sub": subject,
        "aud": "dockyard",
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "test-" + str(now),
        "access": access if access is not None else [
            {"type": "repository", "name": "acme/web", "actions": ["pull"]}
        ],
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: SigningKey, **header: Any) -> str:
    headers = {"kid": key.kid, **header}
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)


def raw_token(
    header: dict[str, Any], claims: dict[str, Any], signer: Callable[[bytes], bytes]
) -> str:
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    return signing_input + "." + b64url(signer(signing_input.encode()))


def public_pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def forged_tokens(key: SigningKey) -> dict[str, str]:
    """Each entry must be refused by a verifier trusting `key` for issuer/audience 'dockyard'.
    The claims grant push, so a token that slipped through would be visible as a success."""
    push = [{"type": "repository", "name": "acme/web", "actions": ["pull", "push"]}]
    good = claims_for(access=push)
    now = int(time.time())
    stranger = ec.generate_private_key(ec.SECP256R1())
    stranger_key = SigningKey(key_id(stranger.public_key()), "ES256", stranger)
    pull_only = sign(claims_for(), key)
    head, _payload, signature = pull_only.split(".")
    tampered_payload = b64url(json.dumps(claims_for(access=push) | {"jti": "x"}).encode())
    pem = public_pem(key)
    return {
        "alg_none": raw_token({"alg": "none", "typ": "JWT", "kid": key.kid}, good, lambda _: b""),
        "alg_none_upper": raw_token(
            {"alg": "None", "typ": "JWT", "kid": key.kid}, good, lambda _: b""
        ),
        # The classic key-confusion attack: HMAC keyed with the (public) verification key.
        "hs256_public_pem": raw_token(
            {"alg": "HS256", "typ": "JWT", "kid": key.kid},
            good,
            lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
        ),
        "hs256_public_jwk": raw_token(
            {"alg": "HS256", "typ": "JWT", "kid": key.kid},
            good,
            lambda data: hmac.new(
                json.dumps(jwt.algorithms.ECAlgorithm.to_jwk(key.private_key.public_key(),
                                                             as_dict=True)).encode(),
                data,
                hashlib.sha256,
            ).digest(),
        ),
        "tampered_access": f"{head}.{tampered_payload}.{signature}",
        "wrong_signature_trusted_kid": sign(good, SigningKey(key.kid, "ES256", stranger)),
        "unknown_kid": sign(good, stranger_key),
        "no_kid": jwt.encode(good, key.private_key, algorithm="ES256"),
        "jwk_header_self_signed": jwt.encode(
            good,
            stranger,
            algorithm="ES256",
            headers={"jwk": jwt.algorithms.ECAlgorithm.to_jwk(stranger.public_key(),
                                                             as_dict=True)},
        ),
        "expired": sign(claims_for(access=push, exp=now - 3600, iat=now - 3900,
                                   nbf=now - 3900), key),
        "nbf_future": sign(claims_for(access=push, nbf=now + 3600), key),
        "wrong_aud": sign(claims_for(access=push, aud="other-registry"), key),
        "wrong_iss": sign(claims_for(access=push, iss="evil"), key),
        "missing_exp": sign(claims_for(access=push, exp=None), key),
        "access_not_a_list": sign(claims_for(access="repository:acme/web:push"), key),  # type: ignore[arg-type]
        "garbage": "not.a.jwt",
        "empty_parts": "..",
    }


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return load_signing_key(AuthSettings.from_dict({}, tmp_path))


@pytest.fixture
def verifier(key: SigningKey) -> TokenVerifier:
    return TokenVerifier({key.kid: key.verification_key}, issuer="dockyard", audience="dockyard")


def test_issued_token_has_the_spec_claims(key: SigningKey, verifier: TokenVerifier) -> None:
    issuer = TokenIssuer(key, issuer="dockyard", audience="dockyard", lifetime=120)
    issued = issuer.issue("alice", [Resource("repository", "acme/web", ("pull", "push"))])
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(payload) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert payload["exp"] - payload["iat"] == 120 == issued.expires_in
    assert payload["access"] == [
        {"type": "repository", "name": "acme/web", "actions": ["pull", "push"]}
    ]
    claims = verifier.verify(issued.token)
    assert claims.subject == "alice"
    assert claims.grants("repository", "acme/web", "push")
    assert not claims.grants("repository", "acme/web", "delete")
    assert not claims.grants("repository", "acme/other", "pull")
    second = issuer.issue("alice", [])
    assert jwt.decode(second.token, options={"verify_signature": False})["jti"] != payload["jti"]


def test_rs256_tokens_verify(tmp_path: Path) -> None:
    key = load_signing_key(AuthSettings.from_dict({"algorithm": "RS256"}, tmp_path))
    issued = TokenIssuer(key, issuer="i", audience="a", lifetime=60).issue("bob", [])
    claims = TokenVerifier({key.kid: key.verification_key}, issuer="i", audience="a").verify(
        issued.token
    )
    assert claims.subject == "bob"
    assert jwt.get_unverified_header(issued.token)["alg"] == "RS256"


def test_rotated_key_still_verifies(tmp_path: Path) -> None:
    """A token signed by the previous key verifies while that key is listed in public_keys."""
    old_settings = AuthSettings.from_dict({}, tmp_path / "old")
    old = load_signing_key(old_settings)
    old_token = TokenIssuer(old, issuer="dockyard", audience="dockyard", lifetime=60).issue(
        "alice", []
    )
    pub = tmp_path / "old.pem"
    pub.write_bytes(public_pem(old))
    new_settings = AuthSettings.from_dict({"public_keys": [str(pub)]}, tmp_path / "new")
    new = load_signing_key(new_settings)
    keys = load_verification_keys(new_settings, new)
    verifier = TokenVerifier(keys, issuer="dockyard", audience="dockyard")
    assert verifier.verify(old_token.token).subject == "alice"
    without_old = TokenVerifier({new.kid: new.verification_key}, issuer="dockyard",
                                audience="dockyard")
    with pytest.raises(TokenError):
        without_old.verify(old_token.token)


@pytest.mark.parametrize(
    "attack",
    [
        "alg_none", "alg_none_upper", "hs256_public_pem", "hs256_public_jwk", "tampered_access",
        "wrong_signature_trusted_kid", "unknown_kid", "no_kid", "jwk_header_self_signed",
        "expired", "nbf_future", "wrong_aud", "wrong_iss", "missing_exp", "access_not_a_list",
        "garbage", "empty_parts",
    ],
)
def test_attack_refused_by_verifier(attack: str, key: SigningKey, verifier: TokenVerifier) -> None:
    token = forged_tokens(key)[attack]
    with pytest.raises(TokenError):
        verifier.verify(token)


def test_expired_token_is_distinguished_and_allowed_only_on_request(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    token = forged_tokens(key)["expired"]
    with pytest.raises(TokenExpired):
        verifier.verify(token)
    assert verifier.verify(token, allow_expired=True).subject == "alice"
    # allow_expired relaxes nothing else
    for attack in ("wrong_aud", "wrong_iss", "nbf_future", "tampered_access", "alg_none"):
        with pytest.raises(TokenError) as info:
            verifier.verify(forged_tokens(key)[attack], allow_expired=True)
        assert not isinstance(info.value, TokenExpired)


def test_control_a_well_signed_token_passes(key: SigningKey, verifier: TokenVerifier) -> None:
    """The matrix above is only meaningful if the same claims, signed properly, verify."""
    claims = verifier.verify(sign(claims_for(), key))
    assert claims.grants("repository", "acme/web", "pull")
