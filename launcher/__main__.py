"""`python -m launcher --config dockyard.toml launcher …`: the launcher without the registry.

Reads the `[launcher]` table and the top-level `data_dir` of a dockyard TOML file; the
`dockyard` CLI does the same through its own configuration loader.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tomllib

from launcher.cli import register
from launcher.config import LauncherSettings


def settings_for(args: argparse.Namespace) -> LauncherSettings:
    config = getattr(args, "config", None)
    if not config:
        raise SystemExit("--config FILE is required")
    with open(config, "rb") as f:
        doc = tomllib.load(f)
    data = getattr(args, "data", None)
    data_dir = pathlib.Path(data or doc.get("data_dir", "data"))
    if not data_dir.is_absolute() and not data:
        data_dir = pathlib.Path(config).resolve().parent / data_dir
    url = (doc.get("metadata") or {}).get("url")
    return LauncherSettings.from_dict(doc.get("launcher", {}), data_dir, database_url=url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher")
    parser.add_argument("--config", help="dockyard TOML file")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, settings_for)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
