"""Shared plumbing of every part: errors, the OCI grammar, the event envelope and its signatures,
resumable hashes, and the state-store layer (SQLite or PostgreSQL) with leases.

This package is the leaf of the import graph: `registry`, `auth`, `launcher` and the composition
root (`dockyard`) may import it; it imports none of them (tests/test_layers.py enforces it).
"""
