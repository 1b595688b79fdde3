"""Smoke test of ``bench.security``: every column measures every traffic class."""

from __future__ import annotations

from bench.security import CLASSES, COLUMNS, _table, run


def test_every_column_measures_every_class() -> None:
    results = run(messages=5, burst=20)
    assert set(results) == set(COLUMNS)
    for column in results.values():
        assert set(column) == set(CLASSES)
        for metrics in column.values():
            assert 0 < metrics["latency_median_ms"] <= metrics["latency_p99_ms"]
            assert metrics["throughput_msg_s"] > 0
    assert "tls1.3+acl" in _table(results)
