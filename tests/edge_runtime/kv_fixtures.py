"""Shared pieces of the KV tests: a clock the test moves forward and a KV binding's declaration."""

from __future__ import annotations

from edge_runtime.config import BindingSpec

NOW = 1_800_000_000.0


class Clock:
    """Time the test moves forward, so expiry is seen without waiting a minute."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def spec(name: str = "CACHE", **settings: str) -> BindingSpec:
    return BindingSpec("kv_namespaces", name, {"binding": name, **settings})
