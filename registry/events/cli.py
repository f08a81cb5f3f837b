"""`dockyard events …`: the delivery log and replay, from the command line.

The commands open the outbox database directly (no dispatcher), so they work whether or not the
server runs; a running server picks up replayed deliveries at its next poll.

    dockyard events list [--endpoint E] [--status pending|failed|delivered|dead] [--json]
    dockyard events show ID [--json]
    dockyard events replay ID [--endpoint E]
    dockyard events replay --endpoint E --since T     (T: unix time, ISO 8601 or "2h" ago)
    dockyard events stats

Each subcommand sets `args.func`, a callable taking the parsed namespace and returning the exit
status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from dockyard.core.cliargs import repository_arg
from dockyard.core.sql import Database
from registry.events.config import NotificationSettings
from registry.events.outbox import STATUSES, EventOutbox
from registry.events.since import parse_since

# The state store is opened by the command (its URL comes from the same configuration).
SettingsFor = Callable[
    [argparse.Namespace], tuple[Callable[[], Awaitable[Database]], NotificationSettings]
]


def register(
    subparsers: Any,
    settings_for: SettingsFor,
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add the `events` command to `subparsers` (from `ArgumentParser.add_subparsers()`).

    Every leaf subcommand takes `--config FILE` and `--data DIR` (absent ones are None when
    `settings_for` is called), unless `parents` is given: then those parsers are added to every
    leaf instead.
    """
    events = subparsers.add_parser("events", help="webhook deliveries: list, show, replay, stats")
    commands = events.add_subparsers(dest="events_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name, help=help_text, description=help_text, parents=list(parents)
        )
        if not parents:
            # SUPPRESS: a value given before the subcommand is not overwritten by the default.
            parser.add_argument(
                "--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML configuration"
            )
            parser.add_argument(
                "--data", metavar="DIR", default=argparse.SUPPRESS, help="data directory"
            )
        return parser

    p_list = add("list", "list deliveries")
    p_list.add_argument("--endpoint", help="only deliveries to this endpoint")
    p_list.add_argument("--status", choices=STATUSES, help="only deliveries in this state")
    p_list.add_argument("--event", help="only deliveries of this event id")
    p_list.add_argument(
        "--repository", type=repository_arg, help="only events of this repository"
    )
    p_list.add_argument("--limit", type=int, default=100)
    p_list.add_argument("--json", action="store_true", help="print JSON")
    p_list.set_defaults(func=lambda args: _run(settings_for, args, _list))

    p_show = add("show", "an event and its delivery log")
    p_show.add_argument("event_id", metavar="ID")
    p_show.add_argument("--json", action="store_true", help="print JSON")
    p_show.set_defaults(func=lambda args: _run(settings_for, args, _show))

    p_replay = add("replay", "deliver an event again, or everything since T to an endpoint")
    p_replay.add_argument("event_id", metavar="ID", nargs="?")
    p_replay.add_argument("--endpoint", help="endpoint to deliver to")
    p_replay.add_argument("--since", help="unix time, ISO 8601, or a duration ago (2h)")
    p_replay.set_defaults(func=lambda args: _run(settings_for, args, _replay))

    p_stats = add("stats", "queue depth, outcomes and failed attempts per endpoint")
    p_stats.set_defaults(func=lambda args: _run(settings_for, args, _stats))
    return events


Command = Callable[[EventOutbox, argparse.Namespace, TextIO], Any]


def _run(settings_for: SettingsFor, args: argparse.Namespace, command: Command) -> int:
    for option in ("config", "data"):
        if not hasattr(args, option):
            setattr(args, option, None)
    try:
        open_state, settings = settings_for(args)
    except ValueError as exc:  # includes the notifications section's ConfigError
        print(f"dockyard events: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        db = await open_state()
        try:
            outbox = await EventOutbox.open(
                db, settings, source_addr="", instance_id="dockyard-cli"
            )
            try:
                return int(await command(outbox, args, sys.stdout) or 0)
            finally:
                await outbox.close()
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dockyard events: {message}", file=sys.stderr)
        return 2


async def _list(outbox: EventOutbox, args: argparse.Namespace, out: TextIO) -> int:
    rows = await outbox.list_deliveries(
        endpoint=args.endpoint,
        status=args.status,
        event_id=args.event,
        repository=args.repository,
        limit=args.limit,
    )
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    table = [("EVENT", "ENDPOINT", "STATUS", "ATTEMPTS", "LAST", "ACTION", "TARGET", "UPDATED")]
    for row in rows:
        table.append(
            (
                row["event_id"],
                row["endpoint"],
                row["status"],
                str(row["attempts"]),
                str(row["last_status"] or row["last_error"] or "-")[:40],
                row["action"],
                _target(row),
                row["updated"],
            )
        )
    _print_table(table, out)
    return 0


async def _show(outbox: EventOutbox, args: argparse.Namespace, out: TextIO) -> int:
    found = await outbox.get_event(args.event_id)
    if found is None:
        raise KeyError(f"unknown event {args.event_id}")
    if args.json:
        json.dump(found, out, indent=2)
        out.write("\n")
        return 0
    event = found["event"]
    out.write(f"event {event['id']}  {event['action']} {event['target'].get('repository')}\n")
    out.write(json.dumps(event, indent=2) + "\n")
    for delivery in found["deliveries"]:
        out.write(
            f"\n{delivery['endpoint']}: {delivery['status']} after {delivery['attempts']}"
            " attempt(s)\n"
        )
        for attempt in delivery["log"]:
            result = attempt["status_code"] or "-"
            error = f"  {attempt['error']}" if attempt["error"] else ""
            out.write(f"  {attempt['time']}  {result}  {attempt['duration']:.3f}s{error}\n")
    return 0


async def _replay(outbox: EventOutbox, args: argparse.Namespace, out: TextIO) -> int:
    if args.event_id and args.since:
        raise ValueError("give an event id or --endpoint with --since, not both")
    if args.event_id:
        count = await outbox.replay_event(args.event_id, endpoint=args.endpoint)
    elif args.endpoint and args.since:
        count = await outbox.replay_since(args.endpoint, parse_since(args.since))
    else:
        raise ValueError("give an event id, or --endpoint E --since T")
    out.write(f"scheduled {count} deliver{'y' if count == 1 else 'ies'}\n")
    return 0


async def _stats(outbox: EventOutbox, args: argparse.Namespace, out: TextIO) -> int:
    json.dump(await outbox.stats(), out, indent=2)
    out.write("\n")
    return 0


def _target(row: dict[str, Any]) -> str:
    if row["tag"]:
        return f"{row['repository']}:{row['tag']}"
    return f"{row['repository']}@{row['digest'][:19]}"


def _print_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")
