"""argparse types for names typed at the admin CLI, checked with the same grammar the API uses.

A name the API would refuse (`../../x/evil`, `acme typo`) never reaches a store: argparse
reports it as a usage error (exit 2) before anything is opened, so no command can create a
phantom customer or touch a path built from it (issue 22, finding 7).
"""

from __future__ import annotations

import argparse

from .errors import NameInvalid
from .oci import check_customer, check_name


def customer_arg(value: str) -> str:
    try:
        return check_customer(value)
    except NameInvalid as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def repository_arg(value: str) -> str:
    try:
        return check_name(value)
    except NameInvalid as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
