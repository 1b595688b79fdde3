"""Power flow on power-grid-model: one snapshot, or a batch / time series on one topology.

:func:`run_power_flow` solves one operating point, symmetric (positive sequence) or asymmetric
(three phases, loads split by their phase shares). :func:`run_time_series` solves many load and
generation snapshots on one topology with the engine's batch calculation.

Buses not connected to an in-service source are reported with ``energized`` false and zero voltage;
they are not an error. When Newton-Raphson does not converge, :class:`NotConvergedError` names the
iteration count, the largest deviation and the weakest bus (lowest voltage of a linear, always
solvable approximation of the same case).

Result tables (numpy structured arrays, SI-prefixed units in the names; in an asymmetric result the
per-phase quantities have shape (3,) per row):

* ``bus``: ``id``, ``energized``, ``u_pu``, ``u_kv``, ``u_angle_deg`` (line-to-line kV in a symmetric
  result, phase-to-ground kV per phase in an asymmetric one)
* ``branch`` (lines, transformers and switches together, in that order): ``id``, ``kind`` (0 line,
  1 transformer, 2 switch), ``energized``, ``i_from_ka``, ``i_to_ka``, ``i_ka`` (the larger end),
  ``loading_percent``, ``p_from_mw``, ``q_from_mvar``, ``p_to_mw``, ``q_to_mvar``, ``p_loss_mw``,
  ``q_loss_mvar``. Switch loading is against the switch rating (NaN when it has none).
* ``source``: ``id``, ``energized``, ``p_mw``, ``q_mvar``
* ``load``: ``id``, ``energized``, ``p_mw``, ``q_mvar``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    CalculationMethod,
    ComponentAttributeFilterOptions,
    ComponentType,
    PowerGridModel,
)
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported, not in __all__
    IterationDiverge,
    MaxIterationReached,
    PowerGridError,
)

from openfeeder.analysis.engine_input import EngineInput, to_engine_input
from openfeeder.errors import AnalysisError, NotConvergedError
from openfeeder.model.grid import GridModel

__all__ = [
    "DEFAULT_ERROR_TOLERANCE_PU",
    "DEFAULT_MAX_ITERATIONS",
    "BranchKind",
    "PowerFlowResult",
    "TimeSeriesResult",
    "run_power_flow",
    "run_time_series",
]

DEFAULT_ERROR_TOLERANCE_PU: Final = 1e-8
DEFAULT_MAX_ITERATIONS: Final = 20

Table = npt.NDArray[np.void]
FloatArray = npt.NDArray[np.float64]

_BRANCH_TYPES: Final = (ComponentType.line, ComponentType.transformer, ComponentType.link)
_BRANCH_ATTRIBUTES: Final = [
    "energized",
    "loading",
    "i_from",
    "i_to",
    "p_from",
    "q_from",
    "p_to",
    "q_to",
]
_APPLIANCE_ATTRIBUTES: Final = ["energized", "p", "q"]


def output_attributes(
    engine_input: EngineInput, *, symmetric: bool, batch: bool = False
) -> dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None]:
    """The engine outputs a result needs, as a columnar attribute filter.

    Asking the engine for just these columns, in columnar form, saves it writing the rest and
    saves us strided reads; the benchmarks give raw power-grid-model the same filter.
    """
    wanted: dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None] = {
        ComponentType.node: ["energized", "u_pu", "u", "u_angle"],
        ComponentType.source: _APPLIANCE_ATTRIBUTES,
    }
    for branch_type in _BRANCH_TYPES:
        wanted[branch_type] = _BRANCH_ATTRIBUTES
    if batch:
        wanted[ComponentType.node] = ["u_pu", "u_angle"]
        for branch_type in _BRANCH_TYPES:
            wanted[branch_type] = ["loading", "i_from", "i_to", "p_from", "p_to"]
    else:
        load_type = ComponentType.sym_load if symmetric else ComponentType.asym_load
        wanted[load_type] = _APPLIANCE_ATTRIBUTES
    return {k: v for k, v in wanted.items() if k in engine_input}


class BranchKind(IntEnum):
    LINE = 0
    TRANSFORMER = 1
    SWITCH = 2


@dataclass(frozen=True, slots=True, eq=False)
class PowerFlowResult:
    """One solved operating point; see the module docstring for the tables."""

    symmetric: bool
    bus: Table
    branch: Table
    source: Table
    load: Table

    @property
    def converged(self) -> bool:
        return True

    @property
    def energized_buses(self) -> int:
        return int(self.bus["energized"].sum())


@dataclass(frozen=True, slots=True, eq=False)
class TimeSeriesResult:
    """Many operating points on one topology: arrays of shape (steps, elements).

    In an asymmetric result the per-phase arrays have a trailing axis of 3.
    """

    symmetric: bool
    bus_id: npt.NDArray[np.int32]
    branch_id: npt.NDArray[np.int32]
    source_id: npt.NDArray[np.int32]
    u_pu: FloatArray
    u_angle_deg: FloatArray
    i_ka: FloatArray
    loading_percent: FloatArray
    p_from_mw: FloatArray
    p_loss_mw: FloatArray
    source_p_mw: FloatArray
    source_q_mvar: FloatArray

    @property
    def steps(self) -> int:
        return int(self.u_pu.shape[0])


def run_power_flow(
    model: GridModel,
    *,
    symmetric: bool = True,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    source_impedance: bool = False,
) -> PowerFlowResult:
    """Solve the power flow of ``model`` (Newton-Raphson)."""
    engine_input = to_engine_input(model, symmetric=symmetric, source_impedance=source_impedance)
    engine = _engine(engine_input, model.frequency_hz)
    try:
        output = engine.calculate_power_flow(
            symmetric=symmetric,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
            calculation_method=CalculationMethod.newton_raphson,
            output_component_types=output_attributes(engine_input, symmetric=symmetric),
        )
    except (IterationDiverge, MaxIterationReached) as err:
        raise _not_converged(err, engine, symmetric) from err
    except PowerGridError as err:
        raise AnalysisError(f"power flow failed: {err}") from err
    return _result(model, output, symmetric)


def run_time_series(
    model: GridModel,
    *,
    load_p_mw: FloatArray,
    load_q_mvar: FloatArray | None = None,
    generator_p_mw: FloatArray | None = None,
    symmetric: bool = True,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    source_impedance: bool = False,
    threads: int = 0,
) -> TimeSeriesResult:
    """Solve ``steps`` snapshots: ``load_p_mw`` has shape (steps, loads) in the model's load order.

    ``load_q_mvar`` defaults to each load's power factor from the model applied to ``load_p_mw``;
    ``generator_p_mw`` (steps, generators) defaults to the model's generator setpoints. ``threads``
    is the engine's batch parallelism (0: all cores, 1: sequential).
    """
    load = model.load
    load_p, load_q = load_arrays(model, load_p_mw, load_q_mvar)
    steps = load_p.shape[0]
    engine_input = to_engine_input(model, symmetric=symmetric, source_impedance=source_impedance)
    engine = _engine(engine_input, model.frequency_hz)
    update: dict[ComponentType, Any] = {}
    load_type = ComponentType.sym_load if symmetric else ComponentType.asym_load
    if load.size:
        update[load_type] = _batch_update(load["id"], load_p, load_q, load, symmetric)
    if generator_p_mw is not None:
        gen = model.generator
        gen_p = np.asarray(generator_p_mw, dtype=np.float64)
        if gen_p.shape != (steps, gen.size):
            raise AnalysisError(
                f"generator_p_mw must have shape ({steps}, {gen.size}), got {gen_p.shape}"
            )
        gen_type = ComponentType.sym_gen if symmetric else ComponentType.asym_gen
        gen_q = np.broadcast_to(gen["q_mvar"], gen_p.shape)
        update[gen_type] = _batch_update(gen["id"], gen_p, gen_q, None, symmetric)
    try:
        output = engine.calculate_power_flow(
            symmetric=symmetric,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
            calculation_method=CalculationMethod.newton_raphson,
            update_data=update,
            threading=threads,
            output_component_types=output_attributes(engine_input, symmetric=symmetric, batch=True),
        )
    except PowerGridError as err:
        raise AnalysisError(f"time-series power flow failed: {err}") from err
    # with a columnar attribute filter every component comes back as a dict of columns
    columns = cast(dict[ComponentType, dict[str, npt.NDArray[Any]]], output)
    node = columns.pop(ComponentType.node)
    branches = [columns.pop(t) for t in _BRANCH_TYPES if t in columns]
    branch_rows = _branch_ratings(model)
    # Convert column by column and drop each engine array once used, so that peak memory stays
    # close to the engine's own output (these arrays are steps x branches, 100s of MB at 100k).
    i_ka = _stack([_pop_max(b, "i_from", "i_to") for b in branches], steps, 1e-3)
    p_loss = _stack([_pop_sum(b, "p_to", "p_from") for b in branches], steps, 1e-6)
    p_from = _stack([b.pop("p_from") for b in branches], steps, 1e-6)
    loading = _stack([b.pop("loading") for b in branches], steps, 100.0)
    if not symmetric:
        i_ka = i_ka.max(axis=-1)
        p_from, p_loss = p_from.sum(axis=-1), p_loss.sum(axis=-1)
    is_switch = branch_rows["kind"] == BranchKind.SWITCH
    loading[:, is_switch] = i_ka[:, is_switch] / branch_rows["i_rated_ka"][is_switch] * 100.0
    src = output.get(ComponentType.source)
    src_p = np.zeros((steps, 0)) if src is None else src["p"] / 1e6
    src_q = np.zeros((steps, 0)) if src is None else src["q"] / 1e6
    if not symmetric and src is not None:
        src_p, src_q = src_p.sum(axis=-1), src_q.sum(axis=-1)
    return TimeSeriesResult(
        symmetric=symmetric,
        bus_id=model.bus["id"],
        branch_id=branch_rows["id"],
        source_id=model.source["id"],
        u_pu=node["u_pu"],
        u_angle_deg=np.rad2deg(node["u_angle"], out=node["u_angle"]),
        i_ka=i_ka,
        loading_percent=loading,
        p_from_mw=p_from,
        p_loss_mw=p_loss,
        source_p_mw=src_p,
        source_q_mvar=src_q,
    )


def load_arrays(
    model: GridModel, load_p_mw: FloatArray, load_q_mvar: FloatArray | None
) -> tuple[FloatArray, FloatArray]:
    """Checked (steps, loads) P and Q; Q defaults to each load's power factor from the model."""
    load = model.load
    load_p = np.asarray(load_p_mw, dtype=np.float64)
    if load_p.ndim != 2 or load_p.shape[1] != load.size:
        raise AnalysisError(
            f"load_p_mw must have shape (steps, {load.size}) for the model's loads, "
            f"got {load_p.shape}"
        )
    if load_q_mvar is None:
        ratio = np.divide(
            load["q_mvar"], load["p_mw"], out=np.zeros(load.size), where=load["p_mw"] != 0
        )
        return load_p, load_p * ratio
    load_q = np.asarray(load_q_mvar, dtype=np.float64)
    if load_q.shape != load_p.shape:
        raise AnalysisError(f"load_q_mvar must have shape {load_p.shape}, got {load_q.shape}")
    return load_p, load_q


def _engine(engine_input: EngineInput, frequency_hz: float) -> PowerGridModel:
    try:
        return PowerGridModel(engine_input, system_frequency=frequency_hz)
    except PowerGridError as err:
        raise AnalysisError(f"the engine rejected the model: {err}") from err


def _batch_update(
    ids: npt.NDArray[np.int32],
    p_mw: FloatArray,
    q_mvar: FloatArray,
    load: Table | None,
    symmetric: bool,
) -> dict[str, Any]:
    """Columnar batch update (ids, p, q per step) in watts, split by phase when asymmetric."""
    steps = p_mw.shape[0]
    p_w, q_w = p_mw * 1e6, q_mvar * 1e6
    if not symmetric:
        if load is None:
            shares = np.full((ids.size, 3), 1.0 / 3.0)
        else:
            shares = np.stack([load["share_a"], load["share_b"], load["share_c"]], axis=1)
        p_w = p_w[:, :, None] * shares[None, :, :]
        q_w = q_w[:, :, None] * shares[None, :, :]
    return {
        "id": np.broadcast_to(ids, (steps, ids.size)),
        "p_specified": p_w,
        "q_specified": q_w,
    }


def _stack(parts: list[Any], steps: int, scale: float) -> FloatArray:
    """Concatenate (steps, n_i, ...) arrays along axis 1, scaled, into one new array."""
    if not parts:
        return np.zeros((steps, 0))
    total = sum(p.shape[1] for p in parts)
    out = np.empty((steps, total, *parts[0].shape[2:]))
    column = 0
    for part in parts:
        np.multiply(part, scale, out=out[:, column : column + part.shape[1]])
        column += part.shape[1]
    return out


def _pop_max(columns: dict[str, Any], a: str, b: str) -> Any:
    """Element-wise maximum of two engine columns, computed in place; both leave ``columns``."""
    first = columns.pop(a)
    np.maximum(first, columns.pop(b), out=first)
    return first


def _pop_sum(columns: dict[str, Any], a: str, b: str) -> Any:
    """Sum of two engine columns; ``a`` leaves ``columns``, ``b`` stays (it is needed again)."""
    first = columns.pop(a)
    np.add(first, columns[b], out=first)
    return first


def _branch_ratings(model: GridModel) -> Table:
    """id, kind and rating of every branch in result order (lines, transformers, switches)."""
    dtype = np.dtype([("id", "i4"), ("kind", "i1"), ("i_rated_ka", "f8")])
    out = np.zeros(model.line.size + model.transformer.size + model.switch.size, dtype=dtype)
    out["id"] = np.concatenate([model.line["id"], model.transformer["id"], model.switch["id"]])
    out["kind"] = np.repeat(
        [BranchKind.LINE, BranchKind.TRANSFORMER, BranchKind.SWITCH],
        [model.line.size, model.transformer.size, model.switch.size],
    )
    out["i_rated_ka"][out["kind"] == BranchKind.SWITCH] = model.switch["i_rated_ka"]
    return out


def _result(model: GridModel, output: dict[Any, Any], symmetric: bool) -> PowerFlowResult:
    shape: tuple[int, ...] = () if symmetric else (3,)
    node = output[ComponentType.node]
    bus = np.zeros(
        model.bus.size,
        dtype=[
            ("id", "i4"),
            ("energized", "?"),
            ("u_pu", "f8", shape),
            ("u_kv", "f8", shape),
            ("u_angle_deg", "f8", shape),
        ],
    )
    bus["id"] = model.bus["id"]
    bus["energized"] = node["energized"].astype(bool)
    bus["u_pu"] = node["u_pu"]
    bus["u_kv"] = node["u"] / 1e3
    bus["u_angle_deg"] = np.where(
        node["energized"].astype(bool).reshape((-1,) + (1,) * len(shape)),
        np.rad2deg(node["u_angle"]),
        0.0,
    )

    ratings = _branch_ratings(model)
    branch = np.zeros(ratings.size, dtype=_BRANCH_DTYPE)
    branch["id"] = ratings["id"]
    branch["kind"] = ratings["kind"]
    parts = [output[t] for t in _BRANCH_TYPES if t in output]
    if parts:
        merged = {f: np.concatenate([p[f] for p in parts]) for f in _BRANCH_ATTRIBUTES}
        branch["energized"] = merged["energized"].astype(bool)
        i_from, i_to = merged["i_from"] / 1e3, merged["i_to"] / 1e3
        p_from, q_from = merged["p_from"] / 1e6, merged["q_from"] / 1e6
        p_to, q_to = merged["p_to"] / 1e6, merged["q_to"] / 1e6
        if not symmetric:
            i_from, i_to = i_from.max(axis=1), i_to.max(axis=1)
            p_from, q_from = p_from.sum(axis=1), q_from.sum(axis=1)
            p_to, q_to = p_to.sum(axis=1), q_to.sum(axis=1)
        branch["i_from_ka"], branch["i_to_ka"] = i_from, i_to
        branch["i_ka"] = np.maximum(i_from, i_to)
        branch["p_from_mw"], branch["q_from_mvar"] = p_from, q_from
        branch["p_to_mw"], branch["q_to_mvar"] = p_to, q_to
        branch["p_loss_mw"] = p_from + p_to
        branch["q_loss_mvar"] = q_from + q_to
        loading = merged["loading"] * 100.0
        is_switch = ratings["kind"] == BranchKind.SWITCH
        loading[is_switch] = branch["i_ka"][is_switch] / ratings["i_rated_ka"][is_switch] * 100.0
        branch["loading_percent"] = loading

    return PowerFlowResult(
        symmetric=symmetric,
        bus=bus,
        branch=branch,
        source=_appliance(output, ComponentType.source, model.source["id"], symmetric),
        load=_appliance(
            output,
            ComponentType.sym_load if symmetric else ComponentType.asym_load,
            model.load["id"],
            symmetric,
        ),
    )


_BRANCH_DTYPE: Final = np.dtype(
    [
        ("id", "i4"),
        ("kind", "i1"),
        ("energized", "?"),
        ("i_from_ka", "f8"),
        ("i_to_ka", "f8"),
        ("i_ka", "f8"),
        ("loading_percent", "f8"),
        ("p_from_mw", "f8"),
        ("q_from_mvar", "f8"),
        ("p_to_mw", "f8"),
        ("q_to_mvar", "f8"),
        ("p_loss_mw", "f8"),
        ("q_loss_mvar", "f8"),
    ]
)

_APPLIANCE_DTYPE: Final = np.dtype(
    [("id", "i4"), ("energized", "?"), ("p_mw", "f8"), ("q_mvar", "f8")]
)


def _appliance(
    output: dict[Any, Any], component: ComponentType, ids: npt.NDArray[Any], symmetric: bool
) -> Table:
    out = np.zeros(ids.size, dtype=_APPLIANCE_DTYPE)
    data = output.get(component)
    if data is None:
        return out
    out["id"] = ids
    out["energized"] = data["energized"].astype(bool)
    p, q = data["p"] / 1e6, data["q"] / 1e6
    out["p_mw"] = p if symmetric else p.sum(axis=1)
    out["q_mvar"] = q if symmetric else q.sum(axis=1)
    return out


_DIVERGE_NUMBERS: Final = re.compile(
    r"after\s+(?P<iterations>\d+)\s+iterations.*?deviation:\s*(?P<deviation>[-+0-9.eE]+)",
    re.DOTALL,
)


def _not_converged(err: PowerGridError, engine: PowerGridModel, symmetric: bool) -> Exception:
    """A NotConvergedError naming iterations, deviation and the weakest bus."""
    match = _DIVERGE_NUMBERS.search(str(err))
    iterations = int(match["iterations"]) if match else None
    deviation = float(match["deviation"]) if match else None
    worst_bus: int | None = None
    worst_u = float("nan")
    try:
        linear = engine.calculate_power_flow(
            symmetric=symmetric,
            calculation_method=CalculationMethod.linear,
            output_component_types={ComponentType.node},
        )
        node = linear[ComponentType.node]
        u = node["u_pu"] if symmetric else node["u_pu"].min(axis=1)
        u = np.where(node["energized"].astype(bool), u, np.inf)
        row = int(np.argmin(u))
        worst_bus, worst_u = int(node["id"][row]), float(u[row])
    except PowerGridError:
        pass
    parts = ["power flow did not converge"]
    if iterations is not None:
        parts.append(f"after {iterations} iterations")
    if deviation is not None:
        parts.append(f"(largest deviation {deviation:.3g} pu)")
    message = " ".join(parts)
    if worst_bus is not None:
        message += f"; weakest bus {worst_bus} at {worst_u:.3f} pu in a linear estimate"
    return NotConvergedError(
        message, iterations=iterations, max_deviation=deviation, worst_bus=worst_bus
    )
