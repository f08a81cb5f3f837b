"""Names of customers, users and robot accounts, and which customer owns a repository."""

from __future__ import annotations

import re

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# Users may be named like e-mail addresses; `$` and `+` stay reserved for robot names.
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_ROBOT = re.compile(r"robot\$([a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)\+([a-z0-9][a-z0-9._-]{0,63})")
_ROBOT_SHORT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class InvalidName(ValueError):
    """A customer, user or robot name that is not allowed."""


def check_customer(name: str) -> str:
    if len(name) > 64 or _COMPONENT.fullmatch(name) is None:
        raise InvalidName(
            f"invalid customer name {name!r}: lowercase letters and digits, separated by . _ -"
        )
    return name


def check_user(name: str) -> str:
    if _USER.fullmatch(name) is None or name.startswith("robot$"):
        raise InvalidName(
            f"invalid user name {name!r}: letters, digits and . _ @ - (at most 128)"
        )
    return name


def robot_name(customer: str, short: str) -> str:
    """`robot$<customer>+<name>`, the robot's login name and token subject."""
    check_customer(customer)
    if _ROBOT_SHORT.fullmatch(short) is None:
        raise InvalidName(f"invalid robot name {short!r}: lowercase letters, digits and . _ -")
    return f"robot${customer}+{short}"


def parse_robot(name: str) -> tuple[str, str] | None:
    """(customer, short name) of a robot login name, or None if `name` is not one."""
    match = _ROBOT.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None


def customer_of(repository: str, default_customer: str) -> str:
    """The first path component of a repository name; single-component names belong to the
    default customer."""
    head, sep, _ = repository.partition("/")
    return head if sep else default_customer


def name_within_customer(repository: str, customer: str) -> str:
    """`acme/web` -> `web` for customer acme; a default-customer name is returned as is."""
    prefix = customer + "/"
    return repository[len(prefix) :] if repository.startswith(prefix) else repository
