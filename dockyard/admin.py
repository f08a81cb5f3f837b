"""Admin commands that work on a data directory directly (the server may be running)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dockyard.core.cliargs import customer_arg
from dockyard.core.leases import Leases
from registry.app import make_registry
from registry.config import Config, ConfigError, parse_size
from registry.gc import GarbageCollector, GcBusy
from registry.service import Registry
from registry.usage import human, usage_report

from .state import open_state


@asynccontextmanager
async def opened_registry(config: Config) -> AsyncIterator[Registry]:
    db = await open_state(config)
    try:
        registry = make_registry(config, db)
        await registry.store.start()
        await registry.meta.open()
        try:
            yield registry
        finally:
            await registry.blobs.drain()
            await registry.store.close()
    finally:
        await db.close()


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    header = [title for _, title in columns]
    body = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in body:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def cmd_usage(config: Config, args: argparse.Namespace) -> int:
    async def work() -> list[dict]:
        async with opened_registry(config) as registry:
            return await usage_report(registry.meta, registry.quotas, args.customer)

    rows = asyncio.run(work())
    if args.customer and not rows:
        print(f"dockyard: no customer {args.customer}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows if not args.customer else rows[0], indent=2))
        return 0
    shown = [
        {
            **r,
            **{
                k: human(r[k])
                for k in ("logical_bytes", "shared_bytes", "saved_bytes", "quota_bytes")
            },
        }
        for r in rows
    ]
    print_table(
        shown,
        [
            ("customer", "CUSTOMER"),
            ("logical_bytes", "LOGICAL"),
            ("shared_bytes", "SHARED"),
            ("saved_bytes", "SAVED BY DEDUP"),
            ("quota_bytes", "QUOTA"),
            ("repositories", "REPOS"),
            ("manifests", "MANIFESTS"),
            ("tags", "TAGS"),
            ("blobs", "BLOBS"),
        ],
    )
    return 0


def cmd_quota(config: Config, args: argparse.Namespace) -> int:
    async def work() -> int:
        async with opened_registry(config) as registry:
            tenants = registry.meta.tenants
            if args.quota_command == "show":
                tenant = await tenants.find(args.customer)
                quota = await registry.quotas.of(tenant) if tenant else None
                if tenant is None:
                    quota = registry.quotas.configured.get(args.customer)
            else:
                tenant = await tenants.ensure(args.customer)
                size = parse_size(args.size) if args.quota_command == "set" else None
                await tenants.set_quota(tenant, size)
                quota = await registry.quotas.of(tenant)
            print(f"{args.customer}: {human(quota) if quota is not None else 'no quota'}")
            return 0

    try:
        return asyncio.run(work())
    except ConfigError as exc:
        print(f"dockyard: {exc}", file=sys.stderr)
        return 2


def cmd_gc(config: Config, args: argparse.Namespace) -> int:
    from .legacy import refusal

    # Before a round-1 import the blob index is empty: the orphan sweep would delete every blob.
    refused = refusal(config, args)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    interactive = sys.stderr.isatty()

    def progress(step: str, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        line = f"\rgc [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {step:<24}"
        print(
            line if interactive else line.strip(),
            end="" if interactive else "\n",
            file=sys.stderr,
            flush=True,
        )

    async def work():
        async with opened_registry(config) as registry:
            from .app import gc_hooks

            leases = await Leases(registry.meta.db, "dockyard-cli").open()
            collector = GarbageCollector(
                registry.settings,
                registry.gc,
                registry.store,
                registry.meta,
                leases,
                gc_hooks(config),
            )
            return await collector.run(
                dry_run=args.dry_run, customer=args.customer, progress=progress
            )

    try:
        report = asyncio.run(work())
    except GcBusy as exc:
        print(f"\ndockyard: {exc}", file=sys.stderr)
        return 1
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would free" if report.dry_run else "freed"
    print(
        f"gc {'(dry run) ' if report.dry_run else ''}done in {report.seconds}s: "
        f"{report.manifests_deleted} manifests, {report.links_removed} repository links, "
        f"{report.objects_deleted} blobs ({human(report.bytes_freed)} {verb}), "
        f"{report.orphans_deleted} orphaned objects, {report.uploads_expired} expired uploads "
        f"across {report.customers} customers"
    )
    return 0


def register(sub: argparse._SubParsersAction, common, config_from) -> None:
    def leaf(parser: argparse.ArgumentParser, func) -> None:
        common(parser)
        parser.set_defaults(func=lambda args: func(config_from(args), args))

    p = sub.add_parser("usage", help="storage used, shared and saved per customer")
    p.add_argument("customer", nargs="?", type=customer_arg)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    leaf(p, cmd_usage)

    quota = sub.add_parser("quota", help="per-customer storage quotas")
    qs = quota.add_subparsers(dest="quota_command", required=True)
    p = qs.add_parser("set", help="set a customer's quota, e.g. 10GiB")
    p.add_argument("customer", type=customer_arg)
    p.add_argument("size")
    leaf(p, cmd_quota)
    p = qs.add_parser("show", help="show a customer's quota")
    p.add_argument("customer", type=customer_arg)
    leaf(p, cmd_quota)
    p = qs.add_parser("clear", help="remove the quota set by this command")
    p.add_argument("customer", type=customer_arg)
    leaf(p, cmd_quota)

    p = sub.add_parser("gc", help="collect unreferenced manifests and blobs (online)")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.add_argument(
        "--customer", type=customer_arg, help="only this customer's metadata (no blob sweep)"
    )
    p.add_argument("--json", action="store_true")
    leaf(p, cmd_gc)
