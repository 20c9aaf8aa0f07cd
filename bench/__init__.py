"""Benchmarks that print figures (one JSON line each, last); never timed assertions in tests.

Run one with ``python -m bench.<name> [--tiny]``; ``bash bench/run_all.sh`` runs them all and writes
BENCHMARKS.md.
"""
