"""What estimates derive from a model alone, kept per model object (by identity).

Every estimate looks up ids in the model's tables, walks its closed branches and converts it for
the engine; a model read once is estimated many times, with the same or other meters. The last
:data:`MODEL_CACHE_SIZE` models keep these here: sorted id columns (:func:`find`), and any value a
caller names (:func:`model_memo`: the branch table, the islands of closed branches, the engine
input without sensors). As everywhere in OpenFeeder a model's tables must not be written in place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from openfeeder.model.grid import GridModel

__all__ = [
    "MODEL_CACHE_SIZE",
    "clear_model_cache",
    "find",
    "find_ids",
    "ids_unique",
    "model_memo",
    "next_free_id",
]

MODEL_CACHE_SIZE: Final = 8

T = TypeVar("T")
IntArray = npt.NDArray[np.int64]

_LOCK: Final = threading.Lock()
_MODELS: Final[OrderedDict[int, tuple[GridModel, dict[Any, Any]]]] = OrderedDict()
_MOST_RECENT: Final = [0]
"""The id of the model last moved to the end of :data:`_MODELS`."""


def model_memo(model: GridModel, key: Any, build: Callable[[], T]) -> T:
    """``build()`` for ``model`` and ``key``, computed once per model object (kept for the last
    :data:`MODEL_CACHE_SIZE` models); callers must not write what it returns."""
    key_model = id(model)
    entry = _MODELS.get(key_model)  # a kept value is read without the lock (dict reads are atomic)
    if entry is not None and entry[0] is model and key in entry[1]:
        if _MOST_RECENT[0] != key_model:  # the model's place in the least-recently-used order
            with _LOCK:
                if key_model in _MODELS:
                    _MODELS.move_to_end(key_model)
                _MOST_RECENT[0] = key_model
        hit: T = entry[1][key]
        return hit
    with _LOCK:
        entry = _MODELS.get(key_model)
        if entry is None or entry[0] is not model:
            entry = (model, {})
            _MODELS[key_model] = entry
            while len(_MODELS) > MODEL_CACHE_SIZE:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(key_model)
        _MOST_RECENT[0] = key_model
        memo = entry[1]
        if key in memo:
            value: T = memo[key]
            return value
    value = build()
    with _LOCK:
        memo.setdefault(key, value)
    return value


def find(model: GridModel, table: str, wanted: npt.ArrayLike, column: str = "id") -> IntArray:
    """Rows of ``wanted`` values in ``model.<table>[column]`` (-1 where absent), as
    :func:`openfeeder.model.grid.lookup` does, with the column sorted once per model."""
    return find_ids(model, (table, column), lambda: model.table(table)[column], wanted)


def find_ids(
    model: GridModel, key: Any, ids: Callable[[], npt.ArrayLike], wanted: npt.ArrayLike
) -> IntArray:
    """Rows of ``wanted`` in the id column ``ids()`` of ``model`` (named ``key``; sorted once)."""
    order, sorted_ids = model_memo(model, ("sorted", key), lambda: _sorted(ids()))
    wanted_arr = np.asarray(wanted, dtype=np.int64)
    if sorted_ids.size == 0:
        return np.full(wanted_arr.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted_arr), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == wanted_arr, order[pos], -1).astype(np.int64)


def ids_unique(model: GridModel) -> bool:
    """Whether no two components of ``model`` share an id (as validated models have it)."""

    def build() -> bool:
        ids = model.all_ids()
        return bool(np.unique(ids).size == ids.size)

    return model_memo(model, "ids_unique", build)


def next_free_id(model: GridModel) -> int:
    """One more than the largest component id of ``model`` (at least 1)."""
    return model_memo(model, "next_free_id", lambda: int(model.all_ids().max(initial=0)) + 1)


def clear_model_cache() -> None:
    """Forget every model's kept values."""
    with _LOCK:
        _MODELS.clear()
        _MOST_RECENT[0] = 0


def _sorted(values: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    ids = np.asarray(values, dtype=np.int64)
    order = np.argsort(ids, kind="stable").astype(np.int64)
    return order, ids[order]
