"""The case-format document carries the column reference generated from the code."""

from __future__ import annotations

from pathlib import Path

from openfeeder.model.case_file import case_tables_markdown

DOC = Path(__file__).parents[3] / "docs" / "case-format.md"


def test_case_format_doc_matches_the_column_registry() -> None:
    text = DOC.read_text()
    assert case_tables_markdown() in text, (
        "docs/case-format.md is out of date: regenerate its tables with "
        "`openfeeder case schema --markdown`"
    )
