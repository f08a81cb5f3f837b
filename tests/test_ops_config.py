"""The configuration reference, `dockyard check-config`, and environment overrides.

The schema in dockyard/ops/schema.py is checked against the parsers of every part, so a key
added anywhere without documentation (or documented but unknown to its parser) fails here.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from auth.config import AuthSettings
from dockyard import cli
from dockyard.checkconfig import check_config
from dockyard.ops.schema import SCHEMA, apply_env, render_markdown
from launcher.config import LauncherSettings, LocalProviderSettings
from registry.config import SECTIONS as TYPED_SECTIONS
from registry.config import ConfigError, load_config
from registry.events.config import EndpointConfig, NotificationSettings, parse_duration

ROOT = Path(__file__).resolve().parents[1]


def keys(section: str) -> dict[str, object]:
    return {k.name: k.default for k in SCHEMA[section].keys}


def test_reference_is_generated_from_the_schema() -> None:
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == render_markdown(), (
        "docs/configuration.md is stale: python -m dockyard.ops.schema > docs/configuration.md"
    )


def test_every_key_is_documented() -> None:
    for section in SCHEMA.values():
        assert section.doc, f"[{section.name}] has no description in dockyard/ops/schema.py"
        for key in section.keys:
            assert key.doc and key.type != "?", f"{section.name}.{key.name} is undocumented"


def test_typed_sections_match_their_dataclasses() -> None:
    for name, cls in TYPED_SECTIONS.items():
        documented = keys(name)
        assert list(documented) == [f.name for f in fields(cls)]
        for f in fields(cls):
            default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
            assert documented[f.name] == default


def test_auth_keys_match_the_auth_parser() -> None:
    code = {f.name: f.default for f in fields(AuthSettings) if f.init and f.name != "data_dir"}
    assert set(keys("auth")) == set(code)
    for name, default in keys("auth").items():
        assert default == code[name], name
    # Every documented key is accepted by the parser (no unknown-key error).
    table = {
        name: list(d) if isinstance(d, tuple) else d
        for name, d in keys("auth").items()
        if d is not None
    }
    AuthSettings.from_dict(table, Path("/tmp"))


def test_notification_keys_match_the_events_parser() -> None:
    documented = keys("notifications")
    for f in fields(NotificationSettings):
        assert f.name in documented, f.name
        if f.name != "endpoints":
            assert (
                parse_duration(documented[f.name]) == f.default or documented[f.name] == f.default
            )
    endpoint = {n.removeprefix("endpoints[]."): d for n, d in documented.items() if "[]" in n}
    for f in fields(EndpointConfig):
        name = "secret" if f.name == "secrets" else f.name
        assert name in endpoint, f"notifications.endpoints[].{name} is undocumented"
        if endpoint[name] is not None and f.default is not MISSING:
            expected = endpoint[name]
            if f.name in ("timeout", "backoff", "max_backoff"):
                expected = parse_duration(expected)
            if isinstance(f.default, tuple):
                expected = tuple(expected)
            assert expected == f.default, name
    scalars = {n: d for n, d in documented.items() if "." not in n and "[" not in n}
    table = {n: d for n, d in scalars.items() if d is not None and n != "endpoints"}
    table["endpoints"] = [
        {"name": "x", "url": "https://example.com/", "secret": "s"}
        | {n: d for n, d in endpoint.items() if d is not None and n not in ("name", "url")}
    ]
    NotificationSettings.from_dict(table)


def test_launcher_keys_match_the_launcher_parser() -> None:
    documented = keys("launcher")
    # data_dir is --data; database_url is [metadata] url (one database for every part).
    renamed = {"local_provider": "providers", "data_dir": None, "database_url": None}
    for f in fields(LauncherSettings):
        name = renamed.get(f.name, f.name)
        if name is None:
            continue
        assert name in documented, f"launcher.{name} is undocumented"
        default = documented[name]
        if f.default is not MISSING and default is not None and name != "port_range":
            expected = tuple(default) if isinstance(f.default, tuple) else default
            assert expected == f.default, name
    assert documented["port_range"] == "-".join(map(str, LauncherSettings.port_range))
    for f in fields(LocalProviderSettings):
        assert f"providers.local.{f.name}" in documented, f"providers.local.{f.name}"
    settings = LauncherSettings.from_dict(
        {"port_range": documented["port_range"], "enabled": True}, Path("/tmp")
    )
    assert settings.enabled


def test_check_config_accepts_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[http]\naddr = "127.0.0.1:5001"\n[registry]\nread_only = true\n'
        '[auth]\nenabled = true\n[quotas]\nacme = "10GiB"\n[log]\nformat = "json"\n'
    )
    assert cli.main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_reports_unknown_keys_and_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[http]\n"
        'adr = "127.0.0.1:5000"\n'
        'tls_crt = "/etc/cert.pem"\n'
        "[registry]\n"
        'read_only = "yes"\n'
        "[storag]\n"
        'driver = "s3"\n'
        "[auth]\n"
        "enabeld = true\n"
        "[[notifications.endpoints]]\n"
        'name = "ci"\n'
        'url = "https://ci.example.com/"\n'
        'timeut = "5s"\n'
        "[launcher.providers.local]\n"
        'run_rot = "/run/x"\n'
        "[quotas]\n"
        'acme = "lots"\n'
        "[log]\n"
        'level = "loud"\n'
    )
    assert cli.main(["check-config", str(bad)]) == 1
    out = capsys.readouterr().out
    for expected in [
        "unknown key http.adr (did you mean 'addr'?)",
        "unknown key http.tls_crt (did you mean 'tls_cert'?)",
        "unknown section storag (did you mean 'storage'?)",
        "unknown key auth.enabeld (did you mean 'enabled'?)",
        "unknown key notifications.endpoints[0].timeut (did you mean 'timeout'?)",
        "unknown key launcher.providers.local.run_rot (did you mean 'run_root'?)",
        "registry.read_only: 'yes' is not of type bool",
        "quotas.acme: invalid size",
        "log.level: 'loud'",
    ]:
        assert expected in out, f"{expected!r} not in:\n{out}"


def test_check_config_on_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[http\n")
    assert cli.main(["check-config", str(broken)]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_environment_overrides_every_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[auth]\nenabled = true\n[notifications]\nconcurrency = 8\n")
    monkeypatch.setenv("DOCKYARD_AUTH_ENABLED", "false")  # must not stay truthy as "false"
    monkeypatch.setenv("DOCKYARD_AUTH_TOKEN_LIFETIME", "60")
    monkeypatch.setenv("DOCKYARD_NOTIFICATIONS_CONCURRENCY", "3")
    monkeypatch.setenv("DOCKYARD_NOTIFICATIONS_RETENTION", "2d")
    monkeypatch.setenv("DOCKYARD_QUOTAS_ACME", "10GiB")
    monkeypatch.setenv("DOCKYARD_ADMIN_TOKEN", "t0k3n")
    monkeypatch.setenv("DOCKYARD_LAUNCHER_ENABLED", "yes")
    monkeypatch.setenv("DOCKYARD_LAUNCHER_URL", "http://x")  # the launcher CLI's, not config
    monkeypatch.setenv("DOCKYARD_HTTP_TLS_CERT", "/etc/c.pem")
    monkeypatch.setenv("DOCKYARD_REGISTRY_READ_ONLY", "1")
    monkeypatch.setenv("DOCKYARD_LOG_LEVEL", "debug")
    config = load_config(path, data_dir=tmp_path / "data")
    apply_env(config)

    auth = AuthSettings.from_dict(config.section("auth"), config.data_dir)
    assert auth.enabled is False and auth.token_lifetime == 60
    notifications = NotificationSettings.from_dict(config.section("notifications"))
    assert notifications.concurrency == 3 and notifications.retention == 2 * 86400
    assert config.section("quotas") == {"acme": "10GiB"}
    assert config.section("admin") == {"token": "t0k3n"}
    assert "url" not in config.section("launcher")
    assert LauncherSettings.from_dict(config.section("launcher"), config.data_dir).enabled
    assert config.http.tls_cert == "/etc/c.pem"
    assert config.registry.read_only is True
    assert config.log.level == "debug"
    problems = check_config(config)
    assert problems == ["http.tls_cert and http.tls_key must be set together"]

    monkeypatch.setenv("DOCKYARD_AUTH_ENABLED", "maybe")
    with pytest.raises(ConfigError, match="DOCKYARD_AUTH_ENABLED"):
        apply_env(load_config(path, data_dir=tmp_path / "data"))
