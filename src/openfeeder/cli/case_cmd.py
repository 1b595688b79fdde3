"""``openfeeder cases`` and ``openfeeder case ...``: built-in cases, validation, synthesis, import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from openfeeder.cli.render import console, model_size_line
from openfeeder.errors import CaseValidationError
from openfeeder.model.case_file import (
    case_json_schema,
    case_tables_markdown,
    load_case,
    save_case,
)
from openfeeder.model.cases import BUILTIN_CASES, resolve_case

__all__ = ["case_group", "cases_command"]


@click.command("cases")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cases_command(as_json: bool) -> None:
    """List the built-in cases."""
    rows: list[dict[str, Any]] = []
    for case in BUILTIN_CASES.values():
        model = case.build()
        rows.append({"name": case.name, "description": case.description, **model.size})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.table import Table

    table = Table("case", "buses", "lines", "trafos", "switches", "loads", "DERs", "description")
    for row in rows:
        table.add_row(
            row["name"],
            *(str(row[k]) for k in ("bus", "line", "transformer", "switch", "load", "generator")),
            row["description"],
        )
    console().print(table)


@click.group("case")
def case_group() -> None:
    """Case files: validate, generate, import and export."""


@case_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def validate_command(file: Path) -> None:
    """Check a case file; prints every problem with its component id and field."""
    try:
        model = load_case(file)
    except CaseValidationError as err:
        for issue in err.issues:
            click.echo(f"error: {issue}", err=True)
        raise click.exceptions.Exit(1) from err
    click.echo(f"{file}: valid ({model_size_line(model)})")


@case_group.command("schema")
@click.option("--markdown", is_flag=True, help="Print the column reference as Markdown instead.")
def schema_command(markdown: bool) -> None:
    """Print the JSON Schema of the case format."""
    if markdown:
        click.echo(case_tables_markdown(), nl=False)
        return
    click.echo(json.dumps(case_json_schema(), indent=1))


@case_group.command("export")
@click.argument("format_", metavar="FORMAT", type=click.Choice(["json", "pandapower"]))
@click.argument("case")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export_command(format_: str, case: str, output: Path) -> None:
    """Write CASE (built-in name or file) as an OpenFeeder case file or a pandapower JSON net."""
    model = resolve_case(case)
    if format_ == "json":
        save_case(model, output)
    else:
        from openfeeder.model.pandapower_io import export_pandapower_json

        export_pandapower_json(model, output)
    click.echo(f"wrote {output} ({model_size_line(model)})")


@case_group.command("import")
@click.argument("format_", metavar="FORMAT", type=click.Choice(["pandapower"]))
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def import_command(format_: str, source: Path, output: Path) -> None:
    """Convert a pandapower net (saved with pandapower.to_json) into a case file."""
    del format_  # one format so far
    from openfeeder.model.pandapower_io import import_pandapower_json

    model = import_pandapower_json(source)
    save_case(model, output)
    click.echo(f"wrote {output} ({model_size_line(model)})")


@case_group.command("synth")
@click.option("--buses", type=click.IntRange(min=10), required=True, help="Total bus count.")
@click.option("--feeders", type=click.IntRange(min=1), required=True, help="Number of feeders.")
@click.option("--ties", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def synth_command(buses: int, feeders: int, ties: int, seed: int, output: Path) -> None:
    """Generate realistic radial MV feeders with laterals, switches, ties, loads and PV."""
    from openfeeder.model.synth import generate_feeders

    try:
        model = generate_feeders(buses=buses, feeders=feeders, ties=ties, seed=seed)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    save_case(model, output)
    click.echo(f"wrote {output} ({model_size_line(model)})")
