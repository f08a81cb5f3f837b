"""Admin commands for accounts: `customer`, `user`, `robot`, `repo`, and `auth serve`.

Secrets are read from a prompt, or one line of stdin when it is not a terminal — never from an
argument, where they would land in shell history and the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from auth.accounts import ROLES, AccountError, Accounts
from auth.config import AuthSettings
from auth.names import InvalidName, parse_robot, robot_name
from dockyard.core.cliargs import customer_arg
from dockyard.core.sql import Database

# The state store is opened per command (its URL comes from the same configuration).
StateOpener = Callable[[], Awaitable[Database]]
SettingsFor = Callable[[argparse.Namespace], tuple[AuthSettings, str, StateOpener]]


class SecretError(Exception):
    pass


@dataclass(frozen=True)
class Context:
    """What every account command works with."""

    settings: AuthSettings
    default_customer: str
    open_state: StateOpener


def register(subparsers: argparse._SubParsersAction, settings_for: SettingsFor) -> None:
    """Add the account subcommands to the `dockyard` parser. Every leaf takes `--config` and
    `--data` itself, so they may follow the subcommand (`dockyard user add bob --data D`)."""

    def group(name: str, help_text: str) -> argparse._SubParsersAction:
        parser = subparsers.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def leaf(
        parent: argparse._SubParsersAction,
        name: str,
        help_text: str,
        command: Callable[[Context, argparse.Namespace], Awaitable[int] | int],
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: a value given before the subcommand (on a parent parser) is not overwritten.
        parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                            help="TOML configuration file")
        parser.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS,
                            help="data directory")
        parser.set_defaults(func=_runner(command, settings_for))
        return parser

    customer = group("customer", "manage customers (tenants)")
    p = leaf(customer, "add", "add a customer", _customer_add)
    p.add_argument("name", type=customer_arg)
    leaf(customer, "list", "list customers", _customer_list)
    p = leaf(customer, "remove", "remove a customer with its roles, robots and public marks",
             _customer_remove)
    p.add_argument("name", type=customer_arg)

    user = group("user", "manage users")
    p = leaf(user, "add", "add a user (password prompted or read from stdin), or set the role "
             "of an existing user in a customer", _user_add)
    p.add_argument("name")
    p.add_argument("--customer", required=True, type=customer_arg)
    p.add_argument("--role", required=True, choices=sorted(ROLES))
    p = leaf(user, "passwd", "change a user's password (revokes their refresh tokens)",
             _user_passwd)
    p.add_argument("name")
    p = leaf(user, "remove", "remove a user, or only their role in --customer", _user_remove)
    p.add_argument("name")
    p.add_argument("--customer", type=customer_arg)
    p = leaf(user, "list", "list users and their roles", _user_list)
    p.add_argument("--customer", type=customer_arg)

    robot = group("robot", "manage robot accounts (for CI)")
    p = leaf(robot, "add", "add a robot account; prints its secret once", _robot_add)
    p.add_argument("name", help="short name; the login name is robot$CUSTOMER+NAME")
    p.add_argument("--customer", required=True, type=customer_arg)
    p.add_argument("--repos", required=True, metavar="PATTERN[,PATTERN…]",
                   help="repository globs, full (acme/web-*) or within the customer (web-*)")
    p.add_argument("--actions", default="pull,push", metavar="ACTION[,ACTION…]",
                   help="some of pull,push,delete (default pull,push)")
    p = leaf(robot, "list", "list robot accounts", _robot_list)
    p.add_argument("--customer", type=customer_arg)
    p = leaf(robot, "remove", "remove a robot account", _robot_remove)
    p.add_argument("name", help="robot$CUSTOMER+NAME, or NAME with --customer")
    p.add_argument("--customer", type=customer_arg)

    repo = group("repo", "repository visibility")
    p = leaf(repo, "public", "let anonymous callers pull a repository", _repo_public)
    p.add_argument("name")
    p = leaf(repo, "private", "make a repository private again (the default)", _repo_private)
    p.add_argument("name")
    p = leaf(repo, "list", "list public repositories", _repo_list)
    p.add_argument("--customer", type=customer_arg)

    auth = group("auth", "the token service")
    p = leaf(auth, "serve", "run the token service alone", _auth_serve)
    p.add_argument("--addr", default="127.0.0.1:5001", metavar="HOST:PORT")


def _runner(
    command: Callable[[Context, argparse.Namespace], Awaitable[int] | int],
    settings_for: SettingsFor,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        for option in ("config", "data"):
            if not hasattr(args, option):
                setattr(args, option, None)
        settings, default_customer, open_state = settings_for(args)
        try:
            result = command(Context(settings, default_customer, open_state), args)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            return int(result)  # type: ignore[arg-type]
        except (AccountError, InvalidName, SecretError) as exc:
            print(f"dockyard: {exc}", file=sys.stderr)
            return 1

    return run


async def _with_accounts(ctx: Context, work: Callable[[Accounts], Awaitable[int]]) -> int:
    db = await ctx.open_state()
    try:
        return await work(await Accounts.open(db, ctx.default_customer))
    finally:
        await db.close()


def read_secret(prompt: str) -> str:
    """A password from the terminal (asked twice), or the first line of a piped stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise SecretError("passwords do not match")
        return first
    line = sys.stdin.readline()
    if not line:
        raise SecretError("no password on stdin")
    return line.rstrip("\r\n")


# -- customers ----------------------------------------------------------------------------------


async def _customer_add(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        await accounts.add_customer(args.name)
        print(f"customer {args.name} added")
        return 0

    return await _with_accounts(ctx, work)


async def _customer_list(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        for name in await accounts.list_customers():
            print(name + ("  (default)" if name == ctx.default_customer else ""))
        return 0

    return await _with_accounts(ctx, work)


async def _customer_remove(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        await accounts.remove_customer(args.name)
        print(f"customer {args.name} removed (its registry content is kept)")
        return 0

    return await _with_accounts(ctx, work)


# -- users --------------------------------------------------------------------------------------


async def _user_add(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        if not await accounts.customer_exists(args.customer):
            raise AccountError(f"customer {args.customer} does not exist (add it first)")
        if await accounts.user_exists(args.name):
            await accounts.set_role(args.name, args.customer, args.role)
            print(f"user {args.name}: role {args.role} in {args.customer}")
            return 0
        await accounts.create_user(args.name, read_secret(f"password for {args.name}: "))
        await accounts.set_role(args.name, args.customer, args.role)
        print(f"user {args.name} added: role {args.role} in {args.customer}")
        return 0

    return await _with_accounts(ctx, work)


async def _user_passwd(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        if not await accounts.user_exists(args.name):
            raise AccountError(f"user {args.name} does not exist")
        await accounts.set_password(args.name, read_secret(f"new password for {args.name}: "))
        print(f"password of {args.name} changed; their refresh tokens are revoked")
        return 0

    return await _with_accounts(ctx, work)


async def _user_remove(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        if args.customer:
            await accounts.remove_role(args.name, args.customer)
            print(f"user {args.name} no longer has a role in {args.customer}")
        else:
            await accounts.remove_user(args.name)
            print(f"user {args.name} removed")
        return 0

    return await _with_accounts(ctx, work)


async def _user_list(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        for user in await accounts.list_users(args.customer):
            roles = ", ".join(f"{c}:{r}" for c, r in user.roles.items()) or "-"
            print(f"{user.name}\t{roles}")
        return 0

    return await _with_accounts(ctx, work)


# -- robots -------------------------------------------------------------------------------------


async def _robot_add(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        name, secret = await accounts.add_robot(
            args.customer, args.name, args.repos.split(","), args.actions.split(",")
        )
        print(
            f"robot {name} added; its secret follows and is not shown again", file=sys.stderr
        )
        print(name)
        print(secret, flush=True)
        return 0

    return await _with_accounts(ctx, work)


async def _robot_list(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        for robot in await accounts.list_robots(args.customer):
            print(f"{robot.name}\t{','.join(robot.patterns)}\t{','.join(robot.actions)}")
        return 0

    return await _with_accounts(ctx, work)


async def _robot_remove(ctx: Context, args: argparse.Namespace) -> int:
    name = args.name
    if parse_robot(name) is None:
        if not args.customer:
            raise AccountError("give the full robot$CUSTOMER+NAME, or NAME with --customer")
        name = robot_name(args.customer, name)

    async def work(accounts: Accounts) -> int:
        await accounts.remove_robot(name)
        print(f"robot {name} removed")
        return 0

    return await _with_accounts(ctx, work)


# -- repositories -------------------------------------------------------------------------------


async def _repo_public(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        await accounts.set_public(args.name, True)
        print(f"{args.name} is public: anyone may pull it")
        return 0

    return await _with_accounts(ctx, work)


async def _repo_private(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        await accounts.set_public(args.name, False)
        print(f"{args.name} is private")
        return 0

    return await _with_accounts(ctx, work)


async def _repo_list(ctx: Context, args: argparse.Namespace) -> int:
    async def work(accounts: Accounts) -> int:
        for name in await accounts.list_public(args.customer):
            print(name)
        return 0

    return await _with_accounts(ctx, work)


# -- token service ------------------------------------------------------------------------------


def _auth_serve(ctx: Context, args: argparse.Namespace) -> int:
    from aiohttp import web

    from auth.app import make_token_app

    host, _, port = args.addr.rpartition(":")
    if not host or not port.isdigit():
        raise AccountError(f"address {args.addr!r} is not HOST:PORT")
    app: Any = make_token_app(ctx.settings, ctx.default_customer, ctx.open_state)
    print(f"dockyard: token service on http://{args.addr}/auth/token", flush=True)
    web.run_app(app, host=host.strip("[]"), port=int(port), access_log=None, print=None)
    return 0
