"""The state store every part keeps its tables in: SQLite (embedded) or PostgreSQL.

One `Database` object per process is opened by the composition root and handed to each part,
which migrates its own tables (`Database.migrate(component, steps)`) and writes portable SQL
with `?` placeholders. What differs between the two engines stays in this package: placeholder
style, DDL spellings (`{serial}`, `{blob}`, `{without_rowid}`, `{bytewise}`), row counts, error
types, the clock used for leases, and how a transaction serialises writers.
"""

from .base import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityError,
    Row,
    SchemaTooNew,
    Transaction,
)
from .open import describe_url, open_database

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "IntegrityError",
    "Row",
    "SchemaTooNew",
    "Transaction",
    "describe_url",
    "open_database",
]
