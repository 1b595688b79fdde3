"""Built-in cases and resolution of a case argument (built-in name or file path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from openfeeder.errors import CaseError, CaseIssue
from openfeeder.model.case_file import load_case
from openfeeder.model.cases.turin import build_turin
from openfeeder.model.grid import GridModel

__all__ = ["BUILTIN_CASES", "BuiltinCase", "load_builtin", "resolve_case"]


@dataclass(frozen=True, slots=True)
class BuiltinCase:
    name: str
    description: str
    build: Callable[[], GridModel]


def _load_shipped(filename: str) -> Callable[[], GridModel]:
    def build() -> GridModel:
        data = resources.files("openfeeder.model.cases").joinpath("data", filename)
        with resources.as_file(data) as path:
            return load_case(path)

    return build


BUILTIN_CASES: Final[dict[str, BuiltinCase]] = {
    case.name: case
    for case in (
        BuiltinCase(
            "turin",
            "seed 003 urban grid: 2 primaries 220/22 kV, 12 secondaries 220 m apart, 1 tie",
            build_turin,
        ),
        BuiltinCase(
            "cigre-mv",
            "CIGRE MV benchmark (20 kV, 2 feeders, PV and wind), via the pandapower importer",
            _load_shipped("cigre_mv.json"),
        ),
    )
}


def load_builtin(name: str) -> GridModel:
    """The built-in case called ``name``."""
    try:
        case = BUILTIN_CASES[name]
    except KeyError as err:
        known = ", ".join(BUILTIN_CASES)
        raise CaseError(CaseIssue(f"no built-in case '{name}' (built-in: {known})")) from err
    return case.build()


def resolve_case(name_or_path: str) -> GridModel:
    """A built-in case by name, or a case file by path (a path that exists wins)."""
    path = Path(name_or_path)
    if path.exists() or name_or_path.endswith(".json") or "/" in name_or_path:
        return load_case(path)
    return load_builtin(name_or_path)
