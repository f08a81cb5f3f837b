"""Unit tests of the auth building blocks: scope grammar, names, throttle, hashing, config, keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.config import AuthSettings
from auth.keys import KeyFileError, key_id, load_signing_key, load_verification_keys
from auth.names import InvalidName, check_customer, check_user, customer_of, parse_robot, robot_name
from auth.passwords import hash_secret, verify_secret
from auth.scope import Resource, ScopeError, parse_access_claim, parse_scope, parse_scopes
from auth.throttle import FailureCounter

# -- scope grammar (docker-auth-scope.md, "Resource Scope Grammar") ------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:acme/web:pull,push", Resource("repository", "acme/web", ("pull", "push"))),
        ("repository:web:pull", Resource("repository", "web", ("pull",))),
        # spec: resource class is deprecated and equal to the plain type
        ("repository(plugin):acme/p:pull", Resource("repository", "acme/p", ("pull",))),
        ("registry:catalog:*", Resource("registry", "catalog", ("*",))),
        # spec: the name may hold one ':' (a hostname port) - split at first and last colon
        (
            "repository:localhost:5000/acme/web:pull",
            Resource("repository", "localhost:5000/acme/web", ("pull",)),
        ),
        ("repository:a/b:pull,pull,,push", Resource("repository", "a/b", ("pull", "push"))),
        ("repository:a__b/c-d.e:", Resource("repository", "a__b/c-d.e", ())),
        # upper case is only legal in a hostname part; such names never get a grant
        ("repository:ACME/web:pull", Resource("repository", "ACME/web", ("pull",))),
    ],
)
def test_scope_parses(text: str, expected: Resource) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repository",
        "repository:acme/web",
        ":acme/web:pull",
        "Repository:acme/web:pull",
        "repository:acme//web:pull",
        "repository:acme/web/:pull",
        "repository:acme/web:pu-ll",
        "repository:acme/web:pull;rm",
        "repository(:acme/web:pull",
        "repository(plugin:acme/web:pull",
        "repo sitory:a:pull",
        "repository:" + "a" * 300 + ":pull",
        "repository:\x00:pull",
        "repository:acme/web:pull\n",
        "repository:a:b:c:pull",
    ],
)
def test_scope_garbage_is_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_scopes_merge_and_split_on_spaces() -> None:
    # spec: the POST form takes one scope field holding a space-separated list
    got = parse_scopes(["repository:a/b:pull repository:c:push", "repository:a/b:push"])
    assert got == [
        Resource("repository", "a/b", ("pull", "push")),
        Resource("repository", "c", ("push",)),
    ]


def test_too_many_scopes_refused() -> None:
    with pytest.raises(ScopeError):
        parse_scopes([" ".join(f"repository:r{i}:pull" for i in range(100))])


@pytest.mark.parametrize(
    "claim",
    [
        "repository:a:pull",
        [["repository", "a", ["pull"]]],
        [{"type": "repository", "name": "a", "actions": "pull"}],
        [{"type": "repository", "name": 1, "actions": ["pull"]}],
        [{"type": "Repo!", "name": "a", "actions": ["pull"]}],
        [{"type": "repository", "name": "a", "actions": [1]}],
    ],
)
def test_access_claim_garbage_refused(claim: object) -> None:
    with pytest.raises(ScopeError):
        parse_access_claim(claim)


# -- names ---------------------------------------------------------------------------------------


def test_customer_of() -> None:
    assert customer_of("acme/web", "library") == "acme"
    assert customer_of("acme/team/web", "library") == "acme"
    assert customer_of("web", "library") == "library"
    assert customer_of("web", "main") == "main"


def test_names() -> None:
    assert robot_name("acme", "ci") == "robot$acme+ci"
    assert parse_robot("robot$acme+ci") == ("acme", "ci")
    assert parse_robot("alice") is None
    assert parse_robot("robot$acme+") is None
    for bad in ("ACME", "a/b", "", "-a", "a" * 65):
        with pytest.raises(InvalidName):
            check_customer(bad)
    for bad in ("robot$acme+ci", "a b", "", "a:b"):
        with pytest.raises(InvalidName):
            check_user(bad)
    assert check_user("alice@example.com") == "alice@example.com"


# -- throttle -------------------------------------------------------------------------------------


def test_throttle_blocks_after_limit_and_releases_after_window() -> None:
    now = [1000.0]
    throttle = FailureCounter(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("alice") is None
        throttle.failed("alice")
        now[0] += 1
    assert throttle.retry_after("alice") == 57  # oldest failure at 1000 leaves at 1060; now 1003
    assert throttle.retry_after("bob") is None  # per account
    now[0] = 1060.5
    assert throttle.retry_after("alice") is None
    throttle.failed("alice")
    assert throttle.retry_after("alice") == 1  # two failures left in the window plus one
    throttle.succeeded("alice")
    assert throttle.retry_after("alice") is None


# -- hashing -------------------------------------------------------------------------------------


def test_scrypt_hash_roundtrip_and_malformed() -> None:
    stored = hash_secret("correct horse")
    assert stored.startswith("scrypt$15$8$1$")
    assert "correct horse" not in stored
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct hors", stored)
    assert hash_secret("correct horse") != stored  # salted
    for bad in ("", "scrypt$", "bcrypt$1$2$3$4$5", stored.replace("$15$", "$40$"), "x" * 50):
        assert not verify_secret("correct horse", bad)
    assert not verify_secret("x" * 5000, stored)


# -- config --------------------------------------------------------------------------------------


def test_settings_defaults(tmp_path: Path) -> None:
    s = AuthSettings.from_dict({}, tmp_path)
    assert (s.enabled, s.issuer, s.service, s.token_lifetime, s.algorithm) == (
        False, "dockyard", "dockyard", 300, "ES256",
    )
    assert s.realm is None
    assert s.private_key_path == tmp_path / "auth" / "signing-key.pem"


def test_settings_values_and_errors(tmp_path: Path) -> None:
    s = AuthSettings.from_dict(
        {
            "enabled": "true",
            "token_lifetime": "60",
            "algorithm": "RS256",
            "public_keys": ["/k1.pem", "/k2.pem"],
            "realm": "https://auth.example.com/token",
        },
        tmp_path,
    )
    assert s.enabled and s.token_lifetime == 60 and s.algorithm == "RS256"
    assert s.public_keys == (Path("/k1.pem"), Path("/k2.pem"))
    for bad in (
        {"algorithm": "HS256"},
        {"algorithm": "none"},
        {"token_lifetime": 0},
        {"token_lifetime": True},
        {"enabled": "maybe"},
        {"realm": "ftp://x"},
        {"issuer": 'a"b'},
        {"tokn_lifetime": 5},
        {"public_keys": [1]},
    ):
        with pytest.raises(ValueError):
            AuthSettings.from_dict(bad, tmp_path)


# -- keys ----------------------------------------------------------------------------------------


def test_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = AuthSettings.from_dict({}, tmp_path)
    first = load_signing_key(settings)
    path = settings.private_key_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    second = load_signing_key(settings)
    assert first.kid == second.kid and first.alg == "ES256"
    # libtrust form: twelve groups of four base32 characters
    groups = first.kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)


def test_rsa_key_and_algorithm_mismatch(tmp_path: Path) -> None:
    rs = AuthSettings.from_dict({"algorithm": "RS256"}, tmp_path / "rs")
    assert load_signing_key(rs).alg == "RS256"
    es_pointing_at_rsa = AuthSettings.from_dict(
        {"algorithm": "ES256", "private_key": str(rs.private_key_path)}, tmp_path
    )
    with pytest.raises(KeyFileError):
        load_signing_key(es_pointing_at_rsa)
    missing = AuthSettings.from_dict({"private_key": str(tmp_path / "nope.pem")}, tmp_path)
    with pytest.raises(KeyFileError):
        load_signing_key(missing)


def test_rotation_keys_loaded_from_public_key_and_certificate(tmp_path: Path) -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "old.pub.pem"
    pub.write_bytes(
        old.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    other = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "token")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(other.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(other, hashes.SHA256())
    )
    crt = tmp_path / "other.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    settings = AuthSettings.from_dict({"public_keys": [str(pub), str(crt)]}, tmp_path)
    signing = load_signing_key(settings)
    keys = load_verification_keys(settings, signing)
    assert set(keys) == {signing.kid, key_id(old.public_key()), key_id(other.public_key())}
