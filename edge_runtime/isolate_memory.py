"""How much memory one PoP's instance of the Worker retains: an estimate, measured at a bounded cost.

On Cloudflare each isolate has its own heap and a 128 MB limit. Here every PoP imports the Worker
on its own (``loader.py``) but all share one process, whose size says nothing about one PoP. So
what one instance retains is estimated by walking the objects reachable from its module globals:

- each object is counted once (by id), at ``sys.getsizeof``;
- the walk goes into builtin containers, and into the modules, classes, functions (closures,
  defaults, globals) and instances that belong to the Worker's own files; objects of other
  libraries count at their own size but are not walked into (they may reach what every PoP
  shares: bindings, connections, the event loop), and modules and classes of other libraries,
  the PoP's ``env`` and the interpreter's singletons are not counted at all;
- a container with more than ``SAMPLED_ITEMS`` items is walked through a random sample of them,
  each standing for its share of the rest (fewer, when the objects left to walk run short);
- one walk takes at most ``MAX_OBJECTS_PER_WALK`` objects (what lies beyond is not counted).
"""

from __future__ import annotations

import builtins
import collections
import heapq
import itertools
import random
import sys
import time
import types
from collections.abc import Iterable, Iterator
from typing import Any

MIB = 1024 * 1024
MAX_OBJECTS_PER_WALK = 10_000  # ~10-50 ms of CPU at most
SAMPLED_ITEMS = 100  # of a larger container
WALK_TIME_SHARE = 0.05  # walks take at most this share of a PoP's time: a walk of t waits t / share

_random = random.Random(0).random  # samples differ between walks, but every run walks the same way
_SINGLETONS = frozenset(map(id, (None, True, False, Ellipsis, NotImplemented)))
_ATOMS = (str, bytes, bytearray, int, float, complex, range, memoryview)
_SEQUENCES = (list, tuple, set, frozenset, collections.deque)


def retained_bytes(module: types.ModuleType, local_module_names: Iterable[str], shared: Iterable[Any] = (),
                   max_objects: int = MAX_OBJECTS_PER_WALK) -> int:
    """The estimated bytes that ``module`` (one PoP's Worker) and its own modules keep reachable.

    ``local_module_names`` are the modules imported from the Worker's folder for this instance;
    ``shared`` objects (the PoP's env) are neither counted nor walked.
    """
    walk = _Walk({module.__name__, *local_module_names}, shared)
    return walk.run(module.__dict__, max_objects)


class _Walk:
    def __init__(self, local_module_names: set[str], shared: Iterable[Any]) -> None:
        self._local = local_module_names
        self._seen = set(_SINGLETONS) | {id(builtins.__dict__)} | {id(item) for item in shared}
        self._total = 0.0
        self._heap: list[tuple[float, int, Any, float]] = []  # (-bytes counted, order, object, weight)
        self._order = itertools.count()

    def run(self, root: dict[str, Any], max_objects: int) -> int:
        """Each object is counted when found; the largest (size times weight) are walked into first, and
        each container found gets a fair share of the objects left to find, so a deep structure cannot
        use them all up before a shallow one is seen."""
        room = max_objects
        self._find(root, 1.0)
        while self._heap and room > 0:
            _, _, item, weight = heapq.heappop(self._heap)
            children, share = self._children(item, max(1, min(SAMPLED_ITEMS, room // (len(self._heap) + 1))))
            for child in children:
                if room <= 0:
                    break
                if id(child) not in self._seen:
                    self._find(child, weight * share)
                    room -= 1
        return int(self._total)

    def _find(self, item: Any, weight: float) -> None:
        self._seen.add(id(item))
        if isinstance(item, types.ModuleType):  # never counted; one of the Worker's own is walked into
            if self._is_local(item.__name__) and id(vars(item)) not in self._seen:
                self._find(vars(item), weight)
            return
        if isinstance(item, (type, types.FunctionType)) and not self._is_local(item.__module__):
            return  # another library's class or function: shared by every PoP
        contribution = weight * _size_of(item)
        self._total += contribution
        if not isinstance(item, _ATOMS):
            heapq.heappush(self._heap, (-contribution, next(self._order), item, weight))

    def _is_local(self, module_name: Any) -> bool:
        return isinstance(module_name, str) and module_name in self._local

    def _children(self, item: Any, sample_size: int) -> tuple[Iterable[Any], float]:
        """The objects ``item`` holds (of a container, a sample), and the weight each of them stands for."""
        if isinstance(item, dict):
            return _sampled_pairs(item, sample_size)
        if isinstance(item, _SEQUENCES):
            return _sampled(item, sample_size)
        if isinstance(item, type):
            return list(vars(item).values()), 1.0
        if isinstance(item, types.FunctionType):
            return _function_parts(item), 1.0
        if isinstance(item, types.MethodType):
            return (item.__self__, item.__func__), 1.0
        if self._is_local(type(item).__module__):
            return _instance_parts(item), 1.0
        return (), 1.0  # another library's object: its own size only


def _size_of(item: Any) -> int:
    try:
        return sys.getsizeof(item)
    except Exception:  # a __sizeof__ of the Worker's own that fails
        return 0


def _sampled(items: Any, sample_size: int) -> tuple[list[Any], float]:
    """All the items, or one at a random place in each of ``sample_size`` equal stretches (an even
    stride would alias with periodic data)."""
    count = len(items)
    if count <= sample_size:
        return list(items), 1.0
    stretch = count / sample_size
    positions = [int((index + _random()) * stretch) for index in range(sample_size)]
    if isinstance(items, (list, tuple)):
        return [items[position] for position in positions], stretch
    chosen = bytearray(count)  # what cannot be indexed is filtered in C: about 1 ms per million items
    for position in positions:
        chosen[position] = 1
    return list(itertools.compress(items, chosen)), stretch


def _sampled_pairs(mapping: dict[Any, Any], sample_size: int) -> tuple[Iterator[Any], float]:
    pairs, share = _sampled(dict.items(mapping), sample_size)
    return itertools.chain.from_iterable(pairs), share


def _sampled_pairs(mapping: dict[Any, Any], sample_size: int) -> tuple[Iterator[Any], float]:
    pairs, share = _sampled(dict.items(mapping), sample_size)
    return itertools.chain.from_iterable(pairs), share


def _function_parts(function: types.FunctionType) -> list[Any]:
    cells = [cell.cell_contents for cell in function.__closure__ or () if _has_contents(cell)]
    return [*cells, function.__defaults__, function.__kwdefaults__, function.__dict__, function.__globals__]


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def _instance_parts(instance: Any) -> list[Any]:
    parts = []
    try:
        parts.append(object.__getattribute__(instance, "__dict__"))
    except AttributeError:
        pass
    for cls in type(instance).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            try:
                parts.append(object.__getattribute__(instance, name))
            except AttributeError:
                pass
    return parts


class MemoryMeter:
    """When one PoP's Worker is measured: after an invocation, unless its walks would take more than
    ``WALK_TIME_SHARE`` of the time (a walk of 1 ms waits 20 ms before the next)."""

    def __init__(self) -> None:
        self._next_walk_at = 0.0

    def retained_if_due(self, module: types.ModuleType, local_module_names: Iterable[str],
                        shared: Iterable[Any]) -> int | None:
        started = time.perf_counter()
        if started < self._next_walk_at:
            return None
        retained = retained_bytes(module, local_module_names, shared)
        self._next_walk_at = started + (time.perf_counter() - started) / WALK_TIME_SHARE
        return retained
