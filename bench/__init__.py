"""Benchmarks: ``python -m bench powerflow|topology|all`` prints a table and writes JSON."""
