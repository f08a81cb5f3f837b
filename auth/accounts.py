"""Customers, users, robot accounts and public repositories, and what each may do.

Roles per customer: reader -> pull; writer -> pull, push; admin -> pull, push, delete.
A robot belongs to one customer and may do its configured actions on repositories of that
customer matching one of its glob patterns. Anonymous callers may pull public repositories.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
from dataclasses import dataclass

from auth import passwords
from auth.names import (
    check_customer,
    check_user,
    customer_of,
    name_within_customer,
    parse_robot,
    robot_name,
)
from auth.passwords import dummy_hash, generate_secret
from auth.schema import STEPS
from auth.scope import is_repository_name
from dockyard.core.sql import Database, IntegrityError

ROLES: dict[str, frozenset[str]] = {
    "reader": frozenset({"pull"}),
    "writer": frozenset({"pull", "push"}),
    "admin": frozenset({"pull", "push", "delete"}),
}
ROBOT_ACTIONS = frozenset({"pull", "push", "delete"})
_PATTERN = re.compile(r"[a-z0-9._/*?\[\]-]{1,255}")


class AccountError(ValueError):
    """A management request that cannot be done (unknown customer, duplicate robot, …)."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    roles: dict[str, str]  # customer -> role


@dataclass(frozen=True)
class RobotInfo:
    name: str
    customer: str
    patterns: tuple[str, ...]
    actions: tuple[str, ...]


@dataclass(frozen=True)
class _Robot:
    customer: str
    patterns: tuple[str, ...]
    actions: frozenset[str]

    def actions_on(self, repository: str, default_customer: str) -> frozenset[str]:
        customer = customer_of(repository, default_customer)
        if customer != self.customer:
            return frozenset()
        # A pattern may name the repository in full (`acme/web-*`) or within its customer
        # (`web-*`); `*` also matches `/`, as shell globs over paths do not, so `acme/*`
        # covers nested names.
        short = name_within_customer(repository, customer)
        for pattern in self.patterns:
            if fnmatch.fnmatchcase(repository, pattern) or fnmatch.fnmatchcase(short, pattern):
                return self.actions
        return frozenset()


class Accounts:
    """The accounts, in the state store's `auth_` tables (the database is the caller's)."""

    def __init__(self, db: Database, default_customer: str) -> None:
        self._db = db
        self.default_customer = default_customer

    @classmethod
    async def open(cls, db: Database, default_customer: str) -> Accounts:
        check_customer(default_customer)
        await db.migrate("auth", STEPS)
        # The default customer always exists, so `user add --customer library` works at once.
        await db.execute(
            "INSERT INTO auth_customers (name, created_at) VALUES (?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (default_customer, int(time.time())),
        )
        return cls(db, default_customer)

    # -- customers -----------------------------------------------------------------------------

    async def add_customer(self, name: str) -> None:
        check_customer(name)
        try:
            await self._db.execute(
                "INSERT INTO auth_customers (name, created_at) VALUES (?, ?)",
                (name, int(time.time())),
            )
        except IntegrityError as exc:
            raise AccountError(f"customer {name} already exists") from exc

    async def list_customers(self) -> list[str]:
        rows = await self._db.fetchall("SELECT name FROM auth_customers ORDER BY name")
        return [row[0] for row in rows]

    async def customer_exists(self, name: str) -> bool:
        row = await self._db.fetchone("SELECT 1 FROM auth_customers WHERE name = ?", (name,))
        return row is not None

    async def remove_customer(self, name: str) -> None:
        """Remove a customer with its memberships, robots and public marks (the registry's
        content of that customer is not touched)."""
        if name == self.default_customer:
            raise AccountError(f"{name} is the default customer and cannot be removed")
        async with self._db.transaction() as tx:
            if not await tx.execute("DELETE FROM auth_customers WHERE name = ?", (name,)):
                raise AccountError(f"customer {name} does not exist")
            await tx.execute(
                "DELETE FROM auth_refresh_tokens WHERE subject LIKE ? ESCAPE '\\'",
                (_like_prefix(f"robot${name}+"),),
            )

    # -- users ---------------------------------------------------------------------------------

    async def user_exists(self, name: str) -> bool:
        row = await self._db.fetchone("SELECT 1 FROM auth_users WHERE name = ?", (name,))
        return row is not None

    async def create_user(self, name: str, password: str) -> None:
        check_user(name)
        _check_password(password)
        hashed = await passwords.pool().hash(password)
        try:
            await self._db.execute(
                "INSERT INTO auth_users (name, password_hash, created_at) VALUES (?, ?, ?)",
                (name, hashed, int(time.time())),
            )
        except IntegrityError as exc:
            raise AccountError(f"user {name} already exists") from exc

    async def set_role(self, user: str, customer: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r} (reader, writer or admin)")
        if not await self.customer_exists(customer):
            raise AccountError(f"customer {customer} does not exist (add it first)")
        if not await self.user_exists(user):
            raise AccountError(f"user {user} does not exist")
        await self._db.execute(
            "INSERT INTO auth_memberships (username, customer, role) VALUES (?, ?, ?) "
            "ON CONFLICT (username, customer) DO UPDATE SET role = excluded.role",
            (user, customer, role),
        )

    async def remove_role(self, user: str, customer: str) -> None:
        removed = await self._db.execute(
            "DELETE FROM auth_memberships WHERE username = ? AND customer = ?", (user, customer)
        )
        if not removed:
            raise AccountError(f"user {user} has no role in customer {customer}")

    async def set_password(self, name: str, password: str) -> None:
        """Change a password; the user's refresh tokens stop working (a stolen one included)."""
        _check_password(password)
        hashed = await passwords.pool().hash(password)
        async with self._db.transaction() as tx:
            updated = await tx.execute(
                "UPDATE auth_users SET password_hash = ? WHERE name = ?", (hashed, name)
            )
            if not updated:
                raise AccountError(f"user {name} does not exist")
            await tx.execute("DELETE FROM auth_refresh_tokens WHERE subject = ?", (name,))

    async def remove_user(self, name: str) -> None:
        async with self._db.transaction() as tx:
            if not await tx.execute("DELETE FROM auth_users WHERE name = ?", (name,)):
                raise AccountError(f"user {name} does not exist")
            await tx.execute("DELETE FROM auth_refresh_tokens WHERE subject = ?", (name,))

    async def list_users(self, customer: str | None = None) -> list[UserInfo]:
        query = (
            "SELECT u.name, m.customer, m.role FROM auth_users u "
            "LEFT JOIN auth_memberships m ON m.username = u.name "
        )
        params: tuple[str, ...] = ()
        if customer is not None:
            query += (
                "WHERE u.name IN (SELECT username FROM auth_memberships WHERE customer = ?) "
            )
            params = (customer,)
        query += "ORDER BY u.name, m.customer"
        users: dict[str, dict[str, str]] = {}
        for name, member_of, role in await self._db.fetchall(query, params):
            roles = users.setdefault(name, {})
            if member_of is not None:
                roles[member_of] = role
        return [UserInfo(name, roles) for name, roles in users.items()]

    # -- robots --------------------------------------------------------------------------------

    async def add_robot(
        self, customer: str, short_name: str, patterns: list[str], actions: list[str]
    ) -> tuple[str, str]:
        """Create a robot; return (login name, secret). Only a hash of the secret is stored, so
        this is the one moment it can be shown."""
        name = robot_name(customer, short_name)
        patterns = [p.strip() for p in patterns if p.strip()]
        if not patterns or not all(_PATTERN.fullmatch(p) for p in patterns):
            raise AccountError(
                "robot repository patterns must be non-empty globs of a-z 0-9 . _ - / * ? [ ]"
            )
        wanted = {a.strip() for a in actions if a.strip()}
        if not wanted or not wanted <= ROBOT_ACTIONS:
            raise AccountError("robot actions must be some of pull, push, delete")
        if not await self.customer_exists(customer):
            raise AccountError(f"customer {customer} does not exist (add it first)")
        secret = generate_secret()
        hashed = await passwords.pool().hash(secret)
        try:
            await self._db.execute(
                "INSERT INTO auth_robots "
                "(name, customer, secret_hash, patterns, actions, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    name,
                    customer,
                    hashed,
                    json.dumps(patterns),
                    json.dumps(sorted(wanted)),
                    int(time.time()),
                ),
            )
        except IntegrityError as exc:
            raise AccountError(f"robot {name} already exists") from exc
        return name, secret

    async def list_robots(self, customer: str | None = None) -> list[RobotInfo]:
        query = "SELECT name, customer, patterns, actions FROM auth_robots"
        params: tuple[str, ...] = ()
        if customer is not None:
            query += " WHERE customer = ?"
            params = (customer,)
        query += " ORDER BY name"
        return [
            RobotInfo(name, cust, tuple(json.loads(p)), tuple(json.loads(a)))
            for name, cust, p, a in await self._db.fetchall(query, params)
        ]

    async def remove_robot(self, name: str) -> None:
        async with self._db.transaction() as tx:
            if not await tx.execute("DELETE FROM auth_robots WHERE name = ?", (name,)):
                raise AccountError(f"robot {name} does not exist")
            await tx.execute("DELETE FROM auth_refresh_tokens WHERE subject = ?", (name,))

    # -- public repositories -------------------------------------------------------------------

    async def set_public(self, repository: str, public: bool) -> None:
        if not is_repository_name(repository):
            raise AccountError(f"invalid repository name {repository!r}")
        customer = customer_of(repository, self.default_customer)
        if public:
            if not await self.customer_exists(customer):
                raise AccountError(f"customer {customer} does not exist (add it first)")
            await self._db.execute(
                "INSERT INTO auth_public_repositories (name, customer, created_at) "
                "VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (repository, customer, int(time.time())),
            )
        else:
            await self._db.execute(
                "DELETE FROM auth_public_repositories WHERE name = ?", (repository,)
            )

    async def is_public(self, repository: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM auth_public_repositories WHERE name = ?", (repository,)
        )
        return row is not None

    async def list_public(self, customer: str | None = None) -> list[str]:
        query = "SELECT name FROM auth_public_repositories"
        params: tuple[str, ...] = ()
        if customer is not None:
            query += " WHERE customer = ?"
            params = (customer,)
        return [row[0] for row in await self._db.fetchall(query + " ORDER BY name", params)]

    # -- authentication ------------------------------------------------------------------------

    async def authenticate(self, username: str, secret: str) -> str | None:
        """The subject for valid credentials (a user's password or a robot's secret), else None.
        An unknown name costs one scrypt like a wrong password does."""
        if parse_robot(username):
            query = "SELECT secret_hash FROM auth_robots WHERE name = ?"
        else:
            query = "SELECT password_hash FROM auth_users WHERE name = ?"
        row = await self._db.fetchone(query, (username,))
        stored = row[0] if row else dummy_hash()
        ok = await passwords.pool().verify(secret, stored)
        return username if ok and row else None

    async def subject_exists(self, subject: str) -> bool:
        if parse_robot(subject):
            row = await self._db.fetchone("SELECT 1 FROM auth_robots WHERE name = ?", (subject,))
            return row is not None
        return await self.user_exists(subject)

    # -- authorization -------------------------------------------------------------------------

    async def allowed_actions(self, subject: str | None, repository: str) -> set[str]:
        """What `subject` (None or "" = anonymous) may do on `repository` right now."""
        if not is_repository_name(repository):
            return set()
        allowed: set[str] = set()
        if await self.is_public(repository):
            allowed.add("pull")
        if not subject:
            return allowed
        if parse_robot(subject):
            robot = await self._robot(subject)
            if robot is not None:
                allowed |= robot.actions_on(repository, self.default_customer)
            return allowed
        customer = customer_of(repository, self.default_customer)
        row = await self._db.fetchone(
            "SELECT role FROM auth_memberships WHERE username = ? AND customer = ?",
            (subject, customer),
        )
        if row is not None:
            allowed |= ROLES[row[0]]
        return allowed

    async def can_list_catalog(self, subject: str | None) -> bool:
        """Any existing account may ask for the catalog; the registry filters it down to the
        repositories the caller may pull. Anonymous callers may not."""
        return bool(subject) and await self.subject_exists(subject)  # type: ignore[arg-type]

    async def _robot(self, name: str) -> _Robot | None:
        row = await self._db.fetchone(
            "SELECT customer, patterns, actions FROM auth_robots WHERE name = ?", (name,)
        )
        if row is None:
            return None
        return _Robot(row[0], tuple(json.loads(row[1])), frozenset(json.loads(row[2])))

    # -- refresh tokens ------------------------------------------------------------------------

    async def create_refresh_token(
        self, subject: str, service: str, client_id: str, lifetime: int
    ) -> str:
        token = generate_secret()
        now = int(time.time())
        await self._db.execute(
            "INSERT INTO auth_refresh_tokens "
            "(token_hash, subject, service, client_id, created_at, expires_at, last_used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                _token_hash(token),
                subject,
                service,
                client_id[:200],
                now,
                now + lifetime if lifetime else None,
                now,
            ),
        )
        return token

    async def use_refresh_token(self, token: str, service: str) -> str | None:
        """The subject of a live refresh token for `service`, or None. A token outlives neither
        its expiry nor its account."""
        if not token or len(token) > 256:
            return None
        row = await self._db.fetchone(
            "SELECT subject, service, expires_at FROM auth_refresh_tokens WHERE token_hash = ?",
            (_token_hash(token),),
        )
        if row is None:
            return None
        subject, token_service, expires_at = row[0], row[1], row[2]
        now = int(time.time())
        if token_service != service or (expires_at is not None and expires_at <= now):
            return None
        if not await self.subject_exists(subject):
            return None
        await self._db.execute(
            "UPDATE auth_refresh_tokens SET last_used_at = ? WHERE token_hash = ?",
            (now, _token_hash(token)),
        )
        return subject

    async def revoke_refresh_token(self, token: str) -> bool:
        removed = await self._db.execute(
            "DELETE FROM auth_refresh_tokens WHERE token_hash = ?", (_token_hash(token),)
        )
        return removed > 0


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    if len(password.encode()) > 1024:
        raise AccountError("password must be at most 1024 bytes")


def _token_hash(token: str) -> str:
    # Refresh tokens are 256 random bits: a fast hash is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
