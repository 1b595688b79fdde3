"""Smoke tests of ``python -m bench.payload --quick`` and ``python -m bench.privacy``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import payload, privacy


@pytest.mark.integration
def test_payload_bench_quick_run(tmp_path: Path, mqtt_url: str) -> None:
    out = tmp_path / "payload.json"
    assert payload.main(["--quick", "--mqtt", mqtt_url, "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert [row["variant"] for row in document["messaging"]] == list(payload.VARIANTS)
    assert all(row["delivered"] == row["burst"] for row in document["messaging"])
    assert {row["algorithm"] for row in document["crypto"]} == {"aes-256-gcm", "sm4-gcm"}


def test_privacy_bench_error_falls_with_feeder_size(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    args = ["--meters", "20,2000", "--epsilons", "1", "--trials", "100", "--out", str(out)]
    assert privacy.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    small, large = (row["median_rel_error_interval"] for row in rows)
    assert large < small / 20  # 100 times the meters, same absolute noise
