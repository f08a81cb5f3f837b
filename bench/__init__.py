"""Reproducible benchmarks of dockyard against the reference registry (distribution 2.8.2).

`python -m bench --help`; see bench/README.md. Not a test suite: numbers, not assertions.
"""
