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
from typing import Any, Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from openfeeder.model.grid import GridModel

__all__ = [
    "MODEL_CACHE_SIZE",
    "RecentPerModel",
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


class _OfModel(Protocol):
    @property
    def model(self) -> GridModel: ...


K = TypeVar("K")
V = TypeVar("V", bound=_OfModel)


class RecentPerModel(Generic[K, V]):
    """The last ``size`` entries, found by their model's identity and a key (thread-safe).

    The few entries are searched by comparing keys, not hashed: a key is typically a new bytes
    object per estimate (about 1 MB at 100,000 buses), whose hash would cost more than comparing
    it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: list[tuple[K, V]] = []
        """Least recently used first."""

    def get(self, model: GridModel, key: K) -> V | None:
        with self._lock:
            for k, (kept, entry) in enumerate(self._entries):
                if entry.model is model and kept == key:
                    self._entries.append(self._entries.pop(k))
                    return entry
            return None

    def put(self, key: K, entry: V) -> None:
        with self._lock:
            self._entries = [
                (kept, old)
                for kept, old in self._entries
                if not (old.model is entry.model and kept == key)
            ]
            self._entries.append((key, entry))
            del self._entries[: max(0, len(self._entries) - self._size)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
    """Rows of ``wanted`` in the id column ``ids()`` of ``model`` (named ``key``; indexed once):
    the first row with each id, -1 where there is none."""
    index = model_memo(model, ("ids", key), lambda: _IdIndex.of(ids()))
    return index.rows(np.asarray(wanted, dtype=np.int64))


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


class _IdIndex:
    """Row lookup of an id column: a table over the id range where the ids are distinct and
    dense (as component tables' ids usually are: a gather per id), else the column sorted (a
    binary search per id)."""

    _DENSE_FACTOR: Final = 4
    """Dense: the id range is at most this many times the number of ids."""

    def __init__(self, lowest: int, table: IntArray | None, order: IntArray, sorted_ids: IntArray):
        self.lowest, self.table, self.order, self.sorted_ids = lowest, table, order, sorted_ids

    @classmethod
    def of(cls, values: npt.ArrayLike) -> _IdIndex:
        ids = np.asarray(values, dtype=np.int64)
        order = np.argsort(ids, kind="stable").astype(np.int64)
        sorted_ids = ids[order]
        table = None
        lowest = int(sorted_ids[0]) if ids.size else 0
        span = int(sorted_ids[-1]) - lowest + 1 if ids.size else 0
        if 0 < span <= cls._DENSE_FACTOR * ids.size and bool((np.diff(sorted_ids) > 0).all()):
            table = np.full(span, -1, dtype=np.int64)
            table[ids - lowest] = np.arange(ids.size)
        return cls(lowest, table, order, sorted_ids)

    def rows(self, wanted: IntArray) -> IntArray:
        if self.sorted_ids.size == 0:
            return np.full(wanted.shape, -1, dtype=np.int64)
        table = self.table
        if table is not None:
            at = wanted - self.lowest
            inside = (at >= 0) & (at < table.size)
            found: IntArray = np.where(inside, table[np.where(inside, at, 0)], -1)
            return found
        sorted_ids = self.sorted_ids
        pos = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
        return np.where(sorted_ids[pos] == wanted, self.order[pos], -1).astype(np.int64)
