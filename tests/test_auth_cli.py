"""The account admin commands (auth/cli.py), run through argparse as `dockyard` runs them."""

from __future__ import annotations

import argparse
import asyncio
import io
from pathlib import Path

import pytest

from auth.accounts import Accounts
from auth.cli import StateOpener, register
from auth.config import AuthSettings
from dockyard.core.sql import open_database


def settings_for(args: argparse.Namespace) -> tuple[AuthSettings, str, StateOpener]:
    data = Path(args.data)
    return AuthSettings.from_dict({}, data), "library", lambda: open_database(None, data)


def run(data: Path, *argv: str, stdin: str = "") -> int:
    parser = argparse.ArgumentParser(prog="dockyard")
    register(parser.add_subparsers(dest="command", required=True), settings_for)
    args = parser.parse_args([*argv, "--data", str(data)])
    import sys

    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        return args.func(args)
    finally:
        sys.stdin = saved


def authenticate(data: Path, user: str, secret: str) -> str | None:
    async def check() -> str | None:
        db = await open_database(None, data)
        try:
            return await (await Accounts.open(db, "library")).authenticate(user, secret)
        finally:
            await db.close()

    return asyncio.run(check())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "empty-data-dir"  # does not exist yet: commands must cope


def test_customers(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(data, "customer", "add", "acme") == 0
    assert run(data, "customer", "add", "acme") == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a usage error, before anything is opened
        run(data, "customer", "add", "Not Valid")
    assert refused.value.code == 2
    assert "invalid customer name" in capsys.readouterr().err
    assert run(data, "customer", "list") == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["acme", "library  (default)"]
    assert run(data, "customer", "remove", "library") == 1
    assert run(data, "customer", "remove", "acme") == 0
    assert run(data, "customer", "remove", "acme") == 1


def test_user_lifecycle_with_password_from_stdin(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(data, "customer", "add", "acme") == 0
    assert run(data, "user", "add", "alice", "--customer", "acme", "--role", "writer",
               stdin="s3cret-pass\n") == 0
    assert authenticate(data, "alice", "s3cret-pass") == "alice"
    assert authenticate(data, "alice", "s3cret-pass\n") is None  # newline not part of it
    # an existing user gets a role in another customer without a new password
    assert run(data, "user", "add", "alice", "--customer", "library", "--role", "reader") == 0
    capsys.readouterr()
    assert run(data, "user", "list") == 0
    assert capsys.readouterr().out == "alice\tacme:writer, library:reader\n"
    assert run(data, "user", "passwd", "alice", stdin="another-pass\n") == 0
    assert authenticate(data, "alice", "s3cret-pass") is None
    assert authenticate(data, "alice", "another-pass") == "alice"
    assert run(data, "user", "remove", "alice", "--customer", "library") == 0
    capsys.readouterr()
    assert run(data, "user", "list", "--customer", "library") == 0
    assert capsys.readouterr().out == ""
    assert run(data, "user", "remove", "alice") == 0
    assert authenticate(data, "alice", "another-pass") is None
    assert run(data, "user", "remove", "alice") == 1


def test_user_add_errors(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(data, "user", "add", "bob", "--customer", "nope", "--role", "reader",
               stdin="long-enough\n") == 1
    assert "customer nope does not exist" in capsys.readouterr().err
    assert run(data, "user", "add", "bob", "--customer", "library", "--role", "reader",
               stdin="short\n") == 1
    assert run(data, "user", "add", "bob", "--customer", "library", "--role", "reader",
               stdin="") == 1
    assert "no password" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(data, "user", "add", "bob", "--customer", "library", "--role", "owner")
    # there is no way to pass a secret as an argument
    with pytest.raises(SystemExit):
        run(data, "user", "add", "bob", "--customer", "library", "--role", "reader",
            "--password", "long-enough")


def test_prompt_when_stdin_is_a_terminal(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["typed-password", "typed-passwerd"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), settings_for)
    args = parser.parse_args(["user", "add", "carl", "--customer", "library", "--role",
                              "reader", "--data", str(data)])
    monkeypatch.setattr("sys.stdin", Tty())
    assert args.func(args) == 1
    assert "do not match" in capsys.readouterr().err
    answers = iter(["typed-password", "typed-password"])
    assert args.func(args) == 0
    assert authenticate(data, "carl", "typed-password") == "carl"


def test_robot_secret_printed_once(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(data, "customer", "add", "acme") == 0
    capsys.readouterr()
    assert run(data, "robot", "add", "ci", "--customer", "acme", "--repos", "ci-*,acme/tools",
               "--actions", "pull,push") == 0
    out = capsys.readouterr()
    name, secret = out.out.split()
    assert name == "robot$acme+ci" and len(secret) >= 40
    assert "not shown again" in out.err
    assert authenticate(data, name, secret) == name
    assert run(data, "robot", "list", "--customer", "acme") == 0
    listing = capsys.readouterr().out
    assert listing == "robot$acme+ci\tci-*,acme/tools\tpull,push\n"
    assert secret not in listing
    assert run(data, "robot", "add", "ci", "--customer", "acme", "--repos", "x") == 1
    assert run(data, "robot", "add", "ci2", "--customer", "acme", "--repos", "x",
               "--actions", "pull,admin") == 1
    assert run(data, "robot", "add", "ci3", "--customer", "globex", "--repos", "x") == 1
    assert run(data, "robot", "remove", "ci", "--customer", "acme") == 0
    assert authenticate(data, name, secret) is None
    assert run(data, "robot", "remove", "robot$acme+ci") == 1


def test_repo_visibility(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(data, "customer", "add", "acme") == 0
    assert run(data, "repo", "public", "acme/web") == 0
    assert run(data, "repo", "public", "busybox") == 0  # default customer
    assert run(data, "repo", "public", "globex/web") == 1  # no such customer
    assert run(data, "repo", "public", "Bad/Name") == 1
    capsys.readouterr()
    assert run(data, "repo", "list") == 0
    assert capsys.readouterr().out == "acme/web\nbusybox\n"
    assert run(data, "repo", "private", "acme/web") == 0
    capsys.readouterr()
    assert run(data, "repo", "list", "--customer", "acme") == 0
    assert capsys.readouterr().out == ""


def test_data_option_before_or_after_subcommand(tmp_path: Path) -> None:
    """`--data` set on a parent parser survives the leaf's own (suppressed) default."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    register(parser.add_subparsers(dest="command"), settings_for)
    args = parser.parse_args(["--data", str(tmp_path / "a"), "customer", "add", "acme"])
    assert args.data == str(tmp_path / "a")
    assert args.func(args) == 0
    assert (tmp_path / "a" / "metadata.db").exists()
