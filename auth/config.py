"""The `[auth]` section of the configuration, validated into one frozen dataclass."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

ALGORITHMS = ("ES256", "RS256")


@dataclass(frozen=True)
class AuthSettings:
    data_dir: pathlib.Path
    enabled: bool = False
    issuer: str = "dockyard"
    service: str = "dockyard"
    token_lifetime: int = 300  # seconds an access token lives
    algorithm: str = "ES256"
    # None: generated on first start into data_dir/auth/ (mode 0600).
    private_key: pathlib.Path | None = None
    # Extra verification keys (PEM public keys or certificates), for key rotation: tokens signed
    # by a retired key keep verifying while it is listed here.
    public_keys: tuple[pathlib.Path, ...] = ()
    # None: the token endpoint of this server as the client reached it (Host + scheme).
    realm: str | None = None
    # Failures per (address, account), and per address for any accounts, within the window
    # (auth/throttle.py); refusals are answered after `failed_login_tarpit` seconds.
    failed_login_limit: int = 5
    failed_login_window: int = 300  # seconds
    failed_login_source_limit: int = 30
    failed_login_tarpit: float = 1.0
    # The scrypt pool (auth/passwords.py): threads (0: half the CPUs), hashes per second for
    # the whole process (0: no rate budget), and the longest a login waits for its turn.
    hash_workers: int = 0
    hash_rate: float = 20.0
    hash_max_wait: float = 2.0
    refresh_token_lifetime: int = 30 * 24 * 3600  # seconds; 0 = never expires
    # How long after its expiry a push token may still finish an upload session it started.
    upload_grace: int = 24 * 3600
    # Tolerated clock difference between token service and registry when checking exp/nbf.
    clock_skew: int = 5
    @property
    def auth_dir(self) -> pathlib.Path:
        return self.data_dir / "auth"

    @property
    def private_key_path(self) -> pathlib.Path:
        return self.private_key or self.auth_dir / "signing-key.pem"

    @classmethod
    def from_dict(cls, section: dict[str, Any], data_dir: pathlib.Path) -> AuthSettings:
        """Build settings from the raw `[auth]` TOML table; unknown keys or bad values raise
        ValueError naming the key, so a typo never silently weakens the configuration."""
        section = dict(section or {})
        known = {
            "enabled", "issuer", "service", "token_lifetime", "algorithm", "private_key",
            "public_keys", "realm", "failed_login_limit", "failed_login_window",
            "refresh_token_lifetime", "upload_grace", "clock_skew", "failed_login_source_limit",
            "failed_login_tarpit", "hash_workers", "hash_rate", "hash_max_wait",
        }
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"[auth]: unknown key(s) {', '.join(unknown)}")
        kw: dict[str, Any] = {"data_dir": pathlib.Path(data_dir)}
        if "enabled" in section:
            kw["enabled"] = _bool(section, "enabled")
        for key in ("issuer", "service"):
            if key in section:
                kw[key] = _text(section, key)
        for key, minimum in (
            ("token_lifetime", 1),
            ("failed_login_limit", 1),
            ("failed_login_window", 1),
            ("refresh_token_lifetime", 0),
            ("upload_grace", 0),
            ("clock_skew", 0),
            ("failed_login_source_limit", 1),
            ("hash_workers", 0),
        ):
            if key in section:
                kw[key] = _int(section, key, minimum)
        for key in ("failed_login_tarpit", "hash_rate", "hash_max_wait"):
            if key in section:
                kw[key] = _float(section, key)
        if "algorithm" in section:
            alg = section["algorithm"]
            if alg not in ALGORITHMS:
                raise ValueError(f"[auth] algorithm must be one of {', '.join(ALGORITHMS)}")
            kw["algorithm"] = alg
        if section.get("private_key") is not None:
            kw["private_key"] = pathlib.Path(_text(section, "private_key"))
        if "public_keys" in section:
            keys = section["public_keys"]
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError("[auth] public_keys must be a list of file paths")
            kw["public_keys"] = tuple(pathlib.Path(k) for k in keys)
        if section.get("realm") is not None:
            realm = _text(section, "realm")
            if not realm.startswith(("http://", "https://")):
                raise ValueError("[auth] realm must be an http:// or https:// URL")
            kw["realm"] = realm
        return cls(**kw)


def _bool(section: dict[str, Any], key: str) -> bool:
    value = section[key]
    if isinstance(value, bool):
        return value
    # Environment overrides arrive as strings.
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no",
                                                    "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ValueError(f"[auth] {key} must be true or false")


def _text(section: dict[str, Any], key: str) -> str:
    value = section[key]
    if not isinstance(value, str) or not value.strip() or '"' in value:
        raise ValueError(f"[auth] {key} must be a non-empty string without quotes")
    return value


def _int(section: dict[str, Any], key: str, minimum: int) -> int:
    value = section[key]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"[auth] {key} must be an integer >= {minimum}")
    return value


def _float(section: dict[str, Any], key: str) -> float:
    value = section[key]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"[auth] {key} must be a number >= 0")
    return float(value)
