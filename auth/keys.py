"""Signing and verification keys: generated on first start or loaded from files, identified by a
libtrust-style key id (what distribution computes for its trusted keys), published as JWKS."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from auth.config import AuthSettings

log = logging.getLogger(__name__)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyFileError(Exception):
    """A key file that is missing, unreadable or of the wrong kind."""


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    public_key: PublicKey

    def jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg == "ES256" else RSAAlgorithm
        # pyjwt's overloads name one key class per algorithm; alg was checked when the key loaded.
        jwk: dict[str, Any] = algorithm.to_jwk(self.public_key, as_dict=True)  # type: ignore[call-overload]
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey

    @property
    def verification_key(self) -> VerificationKey:
        return VerificationKey(self.kid, self.alg, self.private_key.public_key())


def key_id(public_key: PublicKey) -> str:
    """libtrust key id: base32 of the first 240 bits of SHA-256 over the DER SubjectPublicKeyInfo,
    in twelve colon-separated groups of four (docker-auth-jwt.md shows one)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"EC key on {key.curve.name}: only P-256 (ES256) is supported")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyFileError("RSA keys shorter than 2048 bits are refused")
        return "RS256"
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def load_signing_key(settings: AuthSettings) -> SigningKey:
    """Load the private key, generating it first when it is the default path and absent."""
    path = settings.private_key_path
    if not path.exists():
        if settings.private_key is not None:
            raise KeyFileError(f"[auth] private_key {path} does not exist")
        _generate(path, settings.algorithm)
        log.info("generated %s signing key %s", settings.algorithm, path)
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: only EC P-256 and RSA keys are supported")
    alg = algorithm_for(private_key)
    if alg != settings.algorithm:
        raise KeyFileError(f"{path} is an {alg} key but [auth] algorithm is {settings.algorithm}")
    if path.stat().st_mode & 0o077:
        log.warning("private key %s is readable by group or others", path)
    return SigningKey(key_id(private_key.public_key()), alg, private_key)


def load_verification_keys(
    settings: AuthSettings, signing: SigningKey
) -> dict[str, VerificationKey]:
    """The signing key's public half plus every configured extra key, by key id."""
    keys = {signing.kid: signing.verification_key}
    for path in settings.public_keys:
        for public_key in _load_public_keys(path):
            kid = key_id(public_key)
            keys[kid] = VerificationKey(kid, algorithm_for(public_key), public_key)
    return keys


def _load_public_keys(path: pathlib.Path) -> list[PublicKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from exc
    try:
        if b"CERTIFICATE" in data:
            found = [cert.public_key() for cert in x509.load_pem_x509_certificates(data)]
        else:
            found = [serialization.load_pem_public_key(data)]  # type: ignore[list-item]  # checked below
    except ValueError as exc:
        raise KeyFileError(f"cannot load public key {path}: {exc}") from exc
    for key in found:
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise KeyFileError(f"{path}: only EC P-256 and RSA keys are supported")
    return found  # type: ignore[return-value]


def _generate(path: pathlib.Path, algorithm: str) -> None:
    key: PrivateKey
    if algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    # Written under a temporary name with mode 0600 from the start, then linked into place:
    # two processes starting at once end up sharing whichever key was linked first.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def jwks_document(keys: dict[str, VerificationKey]) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in keys.values()]}
