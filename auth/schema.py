"""The auth tables (component "auth" of the state store), as versioned steps.

- auth_customers: the customers accounts can be members of.
- auth_users / auth_memberships: people, with one role per customer.
- auth_robots: a customer's CI accounts, with the repository globs and actions they may use.
- auth_public_repositories: repositories anonymous callers may pull.
- auth_refresh_tokens: only a hash of each token is kept, so a leaked table yields no token.
- auth_login_failures: recent failed logins per throttling key, shared by every node, so the
  login limits hold across a cluster (auth/throttle.py).
"""

from __future__ import annotations

STEPS: list[str] = [
    """
    CREATE TABLE auth_customers (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE auth_users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE auth_memberships (
        username TEXT NOT NULL REFERENCES auth_users (name) ON DELETE CASCADE,
        customer TEXT NOT NULL REFERENCES auth_customers (name) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
        PRIMARY KEY (username, customer)
    );
    CREATE INDEX auth_memberships_customer ON auth_memberships (customer);
    CREATE TABLE auth_robots (
        name TEXT PRIMARY KEY,
        customer TEXT NOT NULL REFERENCES auth_customers (name) ON DELETE CASCADE,
        secret_hash TEXT NOT NULL,
        patterns TEXT NOT NULL,
        actions TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX auth_robots_customer ON auth_robots (customer);
    CREATE TABLE auth_public_repositories (
        name TEXT PRIMARY KEY,
        customer TEXT NOT NULL REFERENCES auth_customers (name) ON DELETE CASCADE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE auth_refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        service TEXT NOT NULL,
        client_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        last_used_at BIGINT
    );
    CREATE INDEX auth_refresh_tokens_subject ON auth_refresh_tokens (subject);
    """,
    """
    CREATE TABLE auth_login_failures (
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX auth_login_failures_key ON auth_login_failures (key, at);
    """,
]
