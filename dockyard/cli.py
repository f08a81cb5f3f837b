"""The `dockyard` command: serve the registry and run its admin commands."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from auth import cli as auth_cli
from auth.config import AuthSettings
from launcher import cli as launcher_cli
from launcher.config import LauncherSettings
from registry.config import Config, ConfigError, load_config
from registry.events import NotificationSettings
from registry.events import cli as events_cli
from registry.storage import StorageError

from . import admin, checkconfig
from .logs import ACCESS_LOGGER, AccessLogger, setup_logging
from .ops.schema import apply_env
from .ops.serve import run_server
from .ops.tls import server_ssl_context

log = logging.getLogger("dockyard")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--data", metavar="DIR", help="data directory (default ./data)")


def config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.config, data_dir=args.data)
    apply_env(config)  # DOCKYARD_<SECTION>_<KEY> of the sections other parts parse
    return config


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import build_app

    config = config_from(args)
    setup_logging(config.log)
    for key in config.raw.get("_unknown", []):
        log.warning("unknown configuration key %s (ignored; see dockyard check-config)", key)
    if args.addr:
        config.http.addr = args.addr
    if args.insecure:
        config.http.insecure = True
    host, port = _split_addr(config.http.addr)
    auth_on = bool(config.section("auth").get("enabled"))
    if not _is_loopback(host) and not auth_on and not config.http.insecure:
        print(
            f"dockyard: refusing to listen on {host}: authentication is disabled, so anyone who "
            "can reach this address could push, overwrite and delete images. Enable [auth] in "
            "the config, listen on 127.0.0.1, or pass --insecure if this network is trusted.",
            file=sys.stderr,
        )
        return 2
    ssl_context = server_ssl_context(config.http)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(config)
    scheme = "https" if ssl_context else "http"
    log.info(
        "serving on %s://%s:%d (data %s)",
        scheme,
        host,
        port,
        config.data_dir,
        extra={"event": "listening", "url": f"{scheme}://{host}:{port}"},
    )
    # Like web.run_app, but SIGTERM lets uploads in flight finish (dockyard/ops/serve.py).
    run_server(
        app,
        host=host,
        port=port,
        ssl_context=ssl_context,
        access_log=logging.getLogger(ACCESS_LOGGER) if config.log.access_log else None,
        access_log_class=AccessLogger,
        shutdown_timeout=config.http.shutdown_timeout,
        reuse_port=config.http.workers > 1,
    )
    return 0


def auth_settings_for(args: argparse.Namespace) -> tuple[AuthSettings, str]:
    config = config_from(args)
    return AuthSettings.from_dict(config.section("auth"), config.data_dir), (
        config.registry.default_customer
    )


def launcher_settings_for(args: argparse.Namespace) -> LauncherSettings:
    config = config_from(args)
    return LauncherSettings.from_dict(config.section("launcher"), config.data_dir)


def events_settings_for(args: argparse.Namespace) -> tuple[Path, NotificationSettings]:
    config = config_from(args)
    return config.data_dir, NotificationSettings.from_dict(config.section("notifications"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the registry")
    _common(serve)
    serve.add_argument(
        "--addr", metavar="HOST:PORT", help="listen address (default 127.0.0.1:5000)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without authentication",
    )
    serve.set_defaults(func=cmd_serve)
    auth_cli.register(sub, auth_settings_for)
    admin.register(sub, _common, config_from)
    events_cli.register(sub, events_settings_for)
    launcher_cli.register(sub, launcher_settings_for)
    checkconfig.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"dockyard: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        # Startup checks of the store (bucket, credentials, endpoint) say what to fix.
        print(f"dockyard: storage: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
