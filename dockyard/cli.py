"""The `dockyard` command: serve the registry and run its admin commands."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from auth import cli as auth_cli
from auth.config import AuthSettings
from dockyard.core.sql import Database
from launcher import cli as launcher_cli
from launcher.config import LauncherSettings
from registry.config import Config, ConfigError, load_config
from registry.events import NotificationSettings
from registry.events import cli as events_cli
from registry.storage import StorageError

from . import admin, checkconfig, cluster, legacy, migrate
from .logs import ACCESS_LOGGER, AccessLogger, setup_logging
from .ops.schema import apply_env
from .ops.serve import ConnectionGuard, run_server
from .ops.tls import server_ssl_context
from .state import describe_state, open_state

log = logging.getLogger("dockyard")
StateOpener = Callable[[], Awaitable[Database]]


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
    # Round-1 metadata files nobody imported: serving would show an empty registry (and its GC
    # would delete the blobs the empty index does not know), so say which command to run.
    refused = legacy.refusal(config, args)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    cluster.roles_of(config.cluster)  # a typo in [cluster] roles stops here, not in a worker
    setup_logging(config.log)
    # A typo (`[metadta]`, `tls_crt`) would otherwise start the server on defaults: refuse,
    # naming every unknown entry, unless the operator says the file is meant for a newer version.
    unknown = checkconfig.unknown_entries(config)
    if unknown and not args.allow_unknown_config:
        for entry in unknown:
            print(f"dockyard: {entry}", file=sys.stderr)
        print(
            "dockyard: refusing to start with unknown configuration (see `dockyard check-config`;"
            " --allow-unknown-config starts anyway and ignores them)",
            file=sys.stderr,
        )
        return 2
    for entry in unknown:
        log.warning("%s (ignored: --allow-unknown-config)", entry)
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
    if args.workers:
        config.http.workers = args.workers
    workers = max(1, config.http.workers)
    if workers > 1 and config.section("launcher").get("enabled"):
        print(
            "dockyard: the launcher runs in exactly one process; serve with --workers 1, or run "
            "it alone (`dockyard launcher serve`) fed by a webhook endpoint",
            file=sys.stderr,
        )
        return 2
    ssl_context = server_ssl_context(config.http)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    scheme = "https" if ssl_context else "http"
    log.info(
        "serving on %s://%s:%d (data %s, metadata %s, %d worker%s)",
        scheme,
        host,
        port,
        config.data_dir,
        describe_state(config),
        workers,
        "" if workers == 1 else "s",
        extra={
            "event": "listening",
            "url": f"{scheme}://{host}:{port}",
            "workers": workers,
            "metadata": describe_state(config),
        },
    )

    def serve(primary: bool) -> None:
        if not primary:
            config.gc.interval_seconds = 0  # one periodic collector is enough
        # Like web.run_app, but SIGTERM lets uploads in flight finish (dockyard/ops/serve.py).
        run_server(
            build_app(config),
            host=host,
            port=port,
            ssl_context=ssl_context,
            access_log=logging.getLogger(ACCESS_LOGGER) if config.log.access_log else None,
            access_log_class=AccessLogger,
            shutdown_timeout=config.http.shutdown_timeout,
            reuse_port=workers > 1,
            guard=ConnectionGuard(
                header_timeout=config.http.header_timeout,
                body_idle_timeout=config.http.body_idle_timeout,
                max_connections=config.http.max_connections,
            ),
            keepalive_timeout=config.http.keepalive_timeout,
        )

    if workers == 1:
        serve(primary=True)
        return 0
    return supervise(workers, serve)


def supervise(workers: int, serve: Callable[[bool], None]) -> int:
    """Fork `workers` processes sharing the port (SO_REUSEPORT); forward signals; reap them.

    Each worker is a whole server on the same data directory: SQLite (WAL) serialises writes
    across processes, the event outbox leases deliveries, caches check the database's version.
    """
    children: dict[int, int] = {}
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(index == 0)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    status = 0
    while children:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        exited: int | None = children.pop(pid) if pid in children else None
        code = os.waitstatus_to_exitcode(raw)
        if code != 0:
            log.error("worker %s exited with %d; stopping the others", exited, code)
            status = status or 1
            forward(signal.SIGTERM, None)
    return status


def auth_settings_for(args: argparse.Namespace) -> tuple[AuthSettings, str, StateOpener]:
    config = config_from(args)
    settings = AuthSettings.from_dict(config.section("auth"), config.data_dir)
    return settings, config.registry.default_customer, lambda: open_state(config)


def launcher_settings_for(args: argparse.Namespace) -> LauncherSettings:
    config = config_from(args)
    return LauncherSettings.from_dict(config.section("launcher"), config.data_dir)


def events_settings_for(args: argparse.Namespace) -> tuple[StateOpener, NotificationSettings]:
    config = config_from(args)
    settings = NotificationSettings.from_dict(config.section("notifications"))
    return lambda: open_state(config), settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the registry")
    _common(serve)
    serve.add_argument(
        "--addr", metavar="HOST:PORT", help="listen address (default 127.0.0.1:5000)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port (default [http] workers, 1)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without authentication",
    )
    serve.add_argument(
        "--allow-unknown-config",
        action="store_true",
        help="start even if the config has sections or keys no part reads (they are ignored)",
    )
    serve.set_defaults(func=cmd_serve)
    auth_cli.register(sub, auth_settings_for)
    admin.register(sub, _common, config_from)
    events_cli.register(sub, events_settings_for)
    launcher_cli.register(sub, launcher_settings_for)
    migrate.register(sub, _common, config_from)
    cluster.register(sub, _common, config_from)
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
