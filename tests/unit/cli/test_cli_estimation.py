"""``openfeeder estimation``: the areas of a case (and after switching), the serve command's help."""

from __future__ import annotations

import json

from click.testing import CliRunner

from openfeeder.cli import cli


def test_areas_of_turin_and_after_a_reconfiguration() -> None:
    runner = CliRunner()
    normal = runner.invoke(cli, ["estimation", "areas", "turin", "--json"])
    assert normal.exit_code == 0, normal.output
    areas = {a["name"]: a for a in json.loads(normal.output)["areas"]}
    assert len(areas) == 14
    assert areas["lv-205"]["parent"] == "mv-500"
    moved = runner.invoke(
        cli,
        ["estimation", "areas", "turin", "--open", "306", "--open", "307", "--close", "325",
         "--json"],
    )  # fmt: skip
    assert moved.exit_code == 0, moved.output
    after = {a["name"]: a for a in json.loads(moved.output)["areas"]}
    assert after["lv-205"]["parent"] == "mv-501"
    table = runner.invoke(cli, ["estimation", "areas", "turin"])
    assert "lv-201" in table.output
    assert "boundary bus 5 of mv-500" in table.output


def test_unknown_switch_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["estimation", "areas", "turin", "--open", "9999"])
    assert result.exit_code == 2
    assert "9999" in result.output


def test_serve_help() -> None:
    result = CliRunner().invoke(cli, ["estimation", "serve", "--help"])
    assert result.exit_code == 0
    assert "--mode" in result.output
    assert "--interval" in result.output
