"""JWT access tokens: issuing (docker-auth-jwt.md) and verifying them with an explicit algorithm
allow-list, so `alg: none` and symmetric algorithms keyed with a public key never verify."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from auth.keys import SigningKey, VerificationKey
from auth.scope import Resource, ScopeError, parse_access_claim

MAX_TOKEN_LENGTH = 16 * 1024
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]


class TokenError(Exception):
    """A token that must not be honoured; the message is safe to show the client."""


class TokenExpired(TokenError):
    """Well-formed and correctly signed, but past its `exp`."""


@dataclass(frozen=True)
class Claims:
    subject: str  # "" for an anonymous caller (docker-auth-jwt.md, `sub`)
    issuer: str
    audience: str
    issued_at: int
    not_before: int
    expires_at: int
    jti: str
    access: tuple[Resource, ...]

    def actions(self, rtype: str, name: str) -> set[str]:
        """Actions the token grants on one resource."""
        granted: set[str] = set()
        for entry in self.access:
            if entry.type == rtype and entry.name == name:
                granted.update(entry.actions)
        return granted

    def grants(self, rtype: str, name: str, action: str) -> bool:
        return action in self.actions(rtype, name)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: int

    @property
    def issued_at_rfc3339(self) -> str:
        return datetime.fromtimestamp(self.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenIssuer:
    def __init__(self, key: SigningKey, *, issuer: str, audience: str, lifetime: int) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._lifetime = lifetime

    def issue(self, subject: str, access: Sequence[Resource]) -> IssuedToken:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "exp": now + self._lifetime,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": [entry.to_claim() for entry in access],
        }
        token = jwt.encode(
            claims,
            self._key.private_key,
            algorithm=self._key.alg,
            headers={"kid": self._key.kid, "typ": "JWT"},
        )
        return IssuedToken(token, self._lifetime, now)


class TokenVerifier:
    def __init__(
        self,
        keys: dict[str, VerificationKey],
        *,
        issuer: str,
        audience: str,
        leeway: int = 5,
    ) -> None:
        self._keys = dict(keys)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    def verify(self, token: str, *, allow_expired: bool = False) -> Claims:
        """Return the claims of a token this service issued, or raise TokenError.

        The key is chosen by `kid` among the trusted keys only, and the only algorithm accepted
        is that key's own: the header's `alg` is checked against it, never trusted."""
        # A JWT is ASCII; a header byte such as 0xB2 arrives as a lone surrogate and made PyJWT
        # raise UnicodeEncodeError (a 500, found by tests/test_fuzz.py).
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise TokenError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("token signed by an unknown key")
        if header.get("alg") != key.alg:
            raise TokenError("token algorithm not accepted")
        try:
            payload = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS, "verify_exp": not allow_expired},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("token issuer not accepted") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("token signature invalid") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token") from exc
        try:
            access = parse_access_claim(payload.get("access"))
        except ScopeError as exc:
            raise TokenError("invalid access claim") from exc
        subject, jti = payload["sub"], payload["jti"]
        if not isinstance(subject, str) or not isinstance(jti, str):
            raise TokenError("invalid token")
        times = [payload[c] for c in ("iat", "nbf", "exp")]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise TokenError("invalid token")
        return Claims(
            subject=subject,
            issuer=payload["iss"],
            audience=self._audience,
            issued_at=int(payload["iat"]),
            not_before=int(payload["nbf"]),
            expires_at=int(payload["exp"]),
            jti=jti,
            access=access,
        )
