"""The cluster config: the instances a text model runs on, in rank order, and what their failure means.

One type serves every way of asking for a cluster: ``edgewise backend serve``'s flags (shorthands)
and ``--cluster JSON|@file``, ``[edgewise.backend]`` in wrangler.toml, and the backend process
``edgewise dev`` starts, which is handed the config as JSON. The JSON form, ``to_json``/``from_json``:

    {"instances": [{"role": "prefill", "tp": 2},
                   {"role": "decode", "tp": 1, "pp": 2, "pp_layers": [10, 6], "count": 2}],
     "instance_timeout_s": 30, "heartbeat_timeout_s": 5,
     "on_instance_loss": "recompute", "instance_restarts": 3}

This module imports nothing heavy (no torch), so the dev edge can build and check a config cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

ROLES = ("colocated", "prefill", "decode")
LOSS_POLICIES = ("error", "recompute")
_INSTANCE_KEYS = ("role", "tp", "pp", "pp_layers", "count")
_POLICY_DEFAULTS: dict[str, Any] = {"instance_timeout_s": 30.0, "heartbeat_timeout_s": 5.0,
                                    "on_instance_loss": "error", "instance_restarts": 3}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class InstanceSpec:
    """One instance's role and shape: ``tp_size`` ranks per stage, ``pp_size`` stages, and
    ``pp_layers`` decoder layers per stage (None: split as evenly as possible)."""

    role: str = "colocated"  # both phases; or "prefill" / "decode" in a disaggregated cluster
    tp_size: int = 1
    pp_size: int = 1
    pp_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"an instance's role is one of {', '.join(ROLES)}, not {self.role!r}")
        for name, value in (("tp", self.tp_size), ("pp", self.pp_size)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"an instance's {name} must be a whole number of at least 1, not {value!r}")
        if self.pp_layers is not None:
            layers = tuple(self.pp_layers)
            if not all(_is_int(n) and n >= 1 for n in layers):
                raise ValueError(f"pp_layers must be whole numbers of at least 1, not {list(layers)}")
            if len(layers) != self.pp_size:
                raise ValueError(f"pp_layers gives {len(layers)} stages but pp is {self.pp_size}: "
                                 "give one layer count per stage")
            object.__setattr__(self, "pp_layers", layers)

    @property
    def size(self) -> int:
        return self.tp_size * self.pp_size


@dataclass(frozen=True)
class ClusterConfig:
    """The instances of one text model's world, in rank order, and its failure policy.

    Either every instance is colocated (both phases; the service's router shares requests out
    between them) or the cluster is disaggregated: at least one prefill and one decode instance.

    ``instance_timeout_s`` bounds every collective, KV transfer and hand-off between ranks;
    ``heartbeat_timeout_s`` is how long a rank may go without a sign of life (dead or frozen)
    before its instance counts as lost; ``on_instance_loss`` says whether a lost instance's
    requests end with an error or are computed again on the instances left; the world starts
    again up to ``instance_restarts`` times once no instance (or no prefill-decode pair) is left.
    """

    instances: tuple[InstanceSpec, ...] = (InstanceSpec(),)
    instance_timeout_s: float = _POLICY_DEFAULTS["instance_timeout_s"]
    heartbeat_timeout_s: float = _POLICY_DEFAULTS["heartbeat_timeout_s"]
    on_instance_loss: str = _POLICY_DEFAULTS["on_instance_loss"]
    instance_restarts: int = _POLICY_DEFAULTS["instance_restarts"]

    def __post_init__(self) -> None:
        instances = tuple(self.instances)
        object.__setattr__(self, "instances", instances)
        if not instances or not all(isinstance(spec, InstanceSpec) for spec in instances):
            raise ValueError("a cluster needs at least one instance")
        roles = {spec.role for spec in instances}
        if "colocated" in roles and len(roles) > 1:
            raise ValueError("a cluster's instances are all colocated, or all prefill and decode; "
                             "it cannot mix colocated instances with prefill or decode ones")
        if roles & {"prefill", "decode"} and roles != {"prefill", "decode"}:
            raise ValueError("a disaggregated cluster needs at least one prefill and one decode instance")
        if self.on_instance_loss not in LOSS_POLICIES:
            raise ValueError(f"on_instance_loss is error or recompute, not {self.on_instance_loss!r}")
        for name in ("instance_timeout_s", "heartbeat_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if not _is_int(self.instance_restarts) or self.instance_restarts < 0:
            raise ValueError(f"instance_restarts must be a whole number of at least 0, not {self.instance_restarts!r}")

    # -- builders -----------------------------------------------------------------------------

    @classmethod
    def colocated(cls, tp: int = 1, pp: int = 1, pp_layers: tuple[int, ...] | None = None, *,
                  instances: int = 1, **policy: Any) -> ClusterConfig:
        """``instances`` replicas of one tp x pp shape."""
        if not _is_int(instances) or instances < 1:
            raise ValueError(f"the number of instances must be at least 1, got {instances!r}")
        return cls((InstanceSpec("colocated", tp, pp, pp_layers),) * instances, **policy)

    @classmethod
    def disaggregated(cls, prefill: InstanceSpec = InstanceSpec(), decode: InstanceSpec = InstanceSpec(), *,
                      prefill_instances: int = 1, decode_instances: int = 1, **policy: Any) -> ClusterConfig:
        """``prefill_instances`` of the ``prefill`` shape, then ``decode_instances`` of the ``decode`` shape
        (the specs' roles are set here)."""
        for name, count in (("prefill", prefill_instances), ("decode", decode_instances)):
            if not _is_int(count) or count < 1:
                raise ValueError(f"a disaggregated cluster needs at least one {name} instance, got {count!r}")
        specs = ((replace(prefill, role="prefill"),) * prefill_instances
                 + (replace(decode, role="decode"),) * decode_instances)
        return cls(specs, **policy)

    @classmethod
    def from_shorthands(cls, *, tp: int = 1, pp: int = 1, pp_layers: tuple[int, ...] | None = None,
                        instances: int = 1, prefill_instances: int = 0, prefill_tp: int = 1, prefill_pp: int = 1,
                        decode_instances: int = 0, decode_tp: int = 1, decode_pp: int = 1,
                        spell: Callable[[str], str] = str, **policy: Any) -> ClusterConfig:
        """The config the shorthand flags (and ``[edgewise.backend]`` keys) of the same names ask for:
        ``instances`` colocated tp x pp instances, or, once ``prefill_instances`` and
        ``decode_instances`` are set, that many prefill and decode instances of their own shapes.
        ``spell`` turns a name into what the user wrote (``--prefill-tp``) for error messages."""
        if prefill_instances or decode_instances:
            colocated = {"tp": tp != 1, "pp": pp != 1, "pp_layers": pp_layers is not None, "instances": instances != 1}
            if any(colocated.values()):
                given = next(name for name, set_ in colocated.items() if set_)
                raise ValueError(f"{spell(given)} shapes colocated instances; a disaggregated cluster takes "
                                 f"{spell('prefill_tp')}, {spell('prefill_pp')}, {spell('decode_tp')} and "
                                 f"{spell('decode_pp')}")
            if not (prefill_instances and decode_instances):
                raise ValueError(f"{spell('prefill_instances')} and {spell('decode_instances')} go together: "
                                 f"both 0 (colocated) or both at least 1, got {prefill_instances} and {decode_instances}")
            return cls.disaggregated(InstanceSpec(tp_size=prefill_tp, pp_size=prefill_pp),
                                     InstanceSpec(tp_size=decode_tp, pp_size=decode_pp),
                                     prefill_instances=prefill_instances, decode_instances=decode_instances, **policy)
        disaggregated = {"prefill_tp": prefill_tp, "prefill_pp": prefill_pp, "decode_tp": decode_tp, "decode_pp": decode_pp}
        for name, value in disaggregated.items():
            if value != 1:
                raise ValueError(f"{spell(name)} shapes prefill or decode instances: set {spell('prefill_instances')} "
                                 f"and {spell('decode_instances')} too, or use {spell('tp')} and {spell('pp')}")
        return cls.colocated(tp, pp, pp_layers, instances=instances, **policy)

    # -- JSON ---------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> ClusterConfig:
        """From the JSON form (text or an already parsed object); every error names the key to fix."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as error:
                raise ValueError(f"the cluster config is not valid JSON: {error}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"the cluster config must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - {"instances", *_POLICY_DEFAULTS})
        if unknown:
            raise ValueError(f"the cluster config has no key {unknown[0]!r}; its keys: instances, "
                             f"{', '.join(_POLICY_DEFAULTS)}")
        entries = data.get("instances", [{}])
        if not isinstance(entries, list) or not entries:
            raise ValueError("the cluster config's 'instances' must be a non-empty list of instance objects")
        specs: list[InstanceSpec] = []
        for index, entry in enumerate(entries):
            spec, count = _instance_from_json(entry, f"instances[{index}]")
            specs += [spec] * count
        return cls(tuple(specs), **{key: data[key] for key in _POLICY_DEFAULTS if key in data})

    def to_json(self) -> dict[str, Any]:
        """The JSON form: each run of equal instances as one entry with a ``count``."""
        entries = []
        for spec, count in self._runs():
            entry: dict[str, Any] = {"role": spec.role, "tp": spec.tp_size, "pp": spec.pp_size}
            if spec.pp_layers is not None:
                entry["pp_layers"] = list(spec.pp_layers)
            if count > 1:
                entry["count"] = count
            entries.append(entry)
        return {"instances": entries, **{key: getattr(self, key) for key in _POLICY_DEFAULTS}}

    def _runs(self) -> list[tuple[InstanceSpec, int]]:
        """Runs of equal consecutive instances, as (spec, count)."""
        runs: list[tuple[InstanceSpec, int]] = []
        for spec in self.instances:
            if runs and runs[-1][0] == spec:
                runs[-1] = (spec, runs[-1][1] + 1)
            else:
                runs.append((spec, 1))
        return runs

    # -- what the cluster code asks -----------------------------------------------------------

    @property
    def is_disaggregated(self) -> bool:
        return self.instances[0].role != "colocated"

    @property
    def world_size(self) -> int:
        return sum(spec.size for spec in self.instances)

    @property
    def is_sharded(self) -> bool:
        """More than one rank: the model runs in rank processes, not in the service's own."""
        return self.world_size > 1

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_timeout_s / 5

    def describe(self) -> str:
        """One line for logs: ``2 x colocated tp2 pp1`` or ``1 x prefill tp1 pp1 + 1 x decode tp2 pp1``."""
        return " + ".join(f"{count} x {spec.role} tp{spec.tp_size} pp{spec.pp_size}"
                          for spec, count in self._runs())


def _instance_from_json(entry: Any, where: str) -> tuple[InstanceSpec, int]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be an object like {{\"role\": \"decode\", \"tp\": 2}}, "
                         f"not {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_INSTANCE_KEYS))
    if unknown:
        raise ValueError(f"{where} has no key {unknown[0]!r}; an instance's keys: {', '.join(_INSTANCE_KEYS)}")
    count = entry.get("count", 1)
    if not _is_int(count) or count < 1:
        raise ValueError(f"{where}.count must be a whole number of at least 1, not {count!r}")
    layers = entry.get("pp_layers")
    if layers is not None and not isinstance(layers, list):
        raise ValueError(f"{where}.pp_layers must be a list of layer counts, one per stage, like [10, 6]")
    try:
        spec = InstanceSpec(entry.get("role", "colocated"), entry.get("tp", 1), entry.get("pp", 1),
                            tuple(layers) if layers is not None else None)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return spec, count
