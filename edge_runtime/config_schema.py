"""The typed, frozen configuration of one Worker, each class validating itself at construction.

Errors raised here carry the config key they concern, relative to the class (`port`,
`triggers.crons[1]`); `config.py` nests them under the table they came from and names the
file. Mappings are stored as read-only copies so a loaded config cannot change at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_runtime.catalog import DEFAULT_POPS
from edge_runtime.config_error import ConfigError
from edge_runtime.config_values import (
    check_cidr,
    check_colo,
    check_compatibility_date,
    check_cron,
    check_location_spec,
    check_port,
    describe,
    expect_array,
    expect_bool,
    expect_int,
    expect_nonempty_str,
    expect_number,
    expect_str,
    expect_table,
    json_value,
)

if TYPE_CHECKING:
    from gpu_backend.cluster.config import ClusterConfig

# workerd compatibility-date.capnp: pythonNoGlobalHandlers has $compatEnableDate("2025-08-14")
NO_GLOBAL_HANDLERS_DATE = "2025-08-14"
NO_GLOBAL_HANDLERS_FLAG = "python_no_global_handlers"
GLOBAL_HANDLERS_FLAG = "disable_python_no_global_handlers"


def _freeze(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@dataclass(frozen=True)
class PopSpec:
    """One PoP of the emulated edge."""

    colo: str  # catalog IATA code, upper-case
    port: int | None = None  # own listening port for this PoP, or None
    healthy: bool = True  # start marked unhealthy when False

    def __post_init__(self) -> None:
        check_colo(self.colo, "colo")
        if self.port is not None:
            check_port(self.port, "port")
        expect_bool(self.healthy, "healthy")


@dataclass(frozen=True)
class LatencyConfig:
    """Simulated network delay of a hop: base_ms + distance * ms_per_1000km."""

    enabled: bool = True
    base_ms: float = 2.0  # fixed cost of any hop
    ms_per_1000km: float = 10.0  # ~ round trip in fibre with routing overhead

    def __post_init__(self) -> None:
        expect_bool(self.enabled, "enabled")
        expect_number(self.base_ms, "base_ms")
        expect_number(self.ms_per_1000km, "ms_per_1000km")


@dataclass(frozen=True)
class LimitsConfig:
    """Per-request limits, defaulting to Cloudflare's free/pro plan values."""

    max_request_body_bytes: int = 100 * 1024 * 1024
    max_subrequests: int = 50
    wall_time_s: float = 30.0  # a handler that has not answered by then gets an error
    wait_until_s: float = 30.0  # how long ctx.waitUntil work may run after the response
    ai_connect_timeout_s: float = 10.0  # env.AI: connecting to a backend
    ai_read_timeout_s: float = 300.0  # env.AI: longest silence between two bytes of a backend's reply
    memory_mb: float = 128.0  # what one PoP's Worker instance may retain (edge_runtime/isolate_memory.py)

    def __post_init__(self) -> None:
        expect_int(self.max_request_body_bytes, "max_request_body_bytes")
        expect_int(self.max_subrequests, "max_subrequests")
        # a zero time limit would fail every request, so it is a mistake, not a setting
        expect_number(self.wall_time_s, "wall_time_s", minimum=0.001)
        expect_number(self.wait_until_s, "wait_until_s")
        expect_number(self.ai_connect_timeout_s, "ai_connect_timeout_s", minimum=0.001)
        expect_number(self.ai_read_timeout_s, "ai_read_timeout_s", minimum=0.001)
        expect_number(self.memory_mb, "memory_mb", minimum=0.001)


@dataclass(frozen=True)
class BackendSpec:
    """An inference backend the AI binding may call."""

    url: str  # http(s)://host:port
    location: str | None = None  # where it sits ("LHR", "GB", "LAT,LON"); None: next to every PoP
    token: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            allowed = 'an http(s) URL like "http://127.0.0.1:8000"'
            raise ConfigError(None, "url", f"must be {allowed}, got {describe(self.url)}")
        if self.location is not None:
            check_location_spec(self.location, "location")
        if self.token is not None:
            expect_str(self.token, "token")

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        token = None if self.token is None else "***"
        return f"BackendSpec(url={self.url!r}, location={self.location!r}, token={token!r})"


BACKEND_DEVICES = ("auto", "cpu", "cuda")
BACKEND_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LocalBackendConfig:
    """`[edgewise.backend]`: the inference backend `edgewise dev` starts itself."""

    device: str = "auto"
    dtype: str = "auto"
    port: int = 0  # 0: any free port
    location: str | None = None  # as BackendSpec.location; None: next to every PoP
    max_queue: int | None = None  # requests a model may queue beyond those it runs (then 429); None: the default
    ready_timeout_s: float = 120.0  # longest wait for the backend to load its models and listen
    tp: int = 1  # tensor-parallel ranks per pipeline stage of each text model
    pp: int = 1  # pipeline stages
    pp_layers: tuple[int, ...] | None = None  # decoder layers per stage; None: as even as possible
    instances: int = 1  # colocated instances (replicas) of tp x pp ranks per text model
    # Disaggregated instead (docs/disaggregation.md): prefill and decode instances, each tp x pp ranks.
    prefill_instances: int = 0
    prefill_tp: int = 1
    prefill_pp: int = 1
    decode_instances: int = 0
    decode_tp: int = 1
    decode_pp: int = 1
    # Failure (docs/parallelism.md): the bound of every wait between ranks, of a rank's silence,
    # what a lost instance's requests become, and how often the instances start again.
    instance_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 5.0
    on_instance_loss: str = "error"
    instance_restarts: int = 3
    # Or the whole cluster config in one table, as `edgewise backend serve --cluster` takes it
    # (docs/parallelism.md), instead of every key from tp down.
    cluster: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for key in ("tp", "pp", "instances", "prefill_tp", "prefill_pp", "decode_tp", "decode_pp"):
            expect_int(getattr(self, key), key, minimum=1)
        for key in ("prefill_instances", "decode_instances", "instance_restarts"):
            expect_int(getattr(self, key), key)
        expect_number(self.instance_timeout_s, "instance_timeout_s", minimum=0.001)
        expect_number(self.heartbeat_timeout_s, "heartbeat_timeout_s", minimum=0.001)
        _check_choice(self.on_instance_loss, ("error", "recompute"), "on_instance_loss")
        if self.pp_layers is not None:
            counts = expect_array(self.pp_layers, "pp_layers")
            layers = tuple(expect_int(n, f"pp_layers[{i}]", minimum=1) for i, n in enumerate(counts))
            if len(layers) != self.pp:
                raise ConfigError(None, "pp_layers", f"must list one layer count per stage ({self.pp}), got {len(layers)}")
            object.__setattr__(self, "pp_layers", layers)
        _check_choice(self.device, BACKEND_DEVICES, "device")
        _check_choice(self.dtype, BACKEND_DTYPES, "dtype")
        check_port(self.port, "port")
        if self.location is not None:
            check_location_spec(self.location, "location")
        if self.max_queue is not None:
            expect_int(self.max_queue, "max_queue")
        expect_number(self.ready_timeout_s, "ready_timeout_s", minimum=0.001)
        self.cluster_config()  # its own checks: shapes that go together, and the `cluster` table

    def cluster_config(self) -> ClusterConfig:
        """The cluster the backend runs each text model on: the `cluster` table, or what the keys from
        tp down stand for."""
        from gpu_backend.cluster.config import ClusterConfig  # cheap: no torch

        if self.cluster is not None:
            defaults = LocalBackendConfig()
            given = [key for key in CLUSTER_SHORTHANDS if getattr(self, key) != getattr(defaults, key)]
            if given:
                raise ConfigError(None, "cluster", f"and '{given[0]}' were both given: put the whole cluster in "
                                                   "'cluster', or use the keys alone")
            try:
                return ClusterConfig.from_json(json_value(dict(expect_table(self.cluster, "cluster")), "cluster"))
            except ValueError as error:
                raise ConfigError(None, "cluster", f"is not a cluster that can run: {error}") from None
        try:
            return ClusterConfig.from_shorthands(**{key: getattr(self, key) for key in CLUSTER_SHAPE_KEYS},
                                                 **{key: getattr(self, key) for key in CLUSTER_POLICY_KEYS})
        except ValueError as error:
            raise ConfigError(None, None, f"asks for a cluster that cannot run: {error}") from None


# [edgewise.backend] keys that are shorthands of the cluster config
CLUSTER_SHAPE_KEYS = ("tp", "pp", "pp_layers", "instances", "prefill_instances", "prefill_tp", "prefill_pp",
                      "decode_instances", "decode_tp", "decode_pp")
CLUSTER_POLICY_KEYS = ("instance_timeout_s", "heartbeat_timeout_s", "on_instance_loss", "instance_restarts")
CLUSTER_SHORTHANDS = CLUSTER_SHAPE_KEYS + CLUSTER_POLICY_KEYS


def _check_choice(value: Any, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        quoted = [f'"{choice}"' for choice in choices]
        allowed = f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        raise ConfigError(None, key, f"must be {allowed}, got {describe(value)}")


def builtin_model_names() -> tuple[str, ...]:
    """The models the backend ships with, served under these names without any folder."""
    from gpu_backend.builtin_models import BUILTIN_MODELS  # cheap: no torch

    return tuple(BUILTIN_MODELS)


@dataclass(frozen=True)
class ModelSource:
    """One `[edgewise.models]` entry: a Workers AI model name served from a folder or a built-in model."""

    name: str  # what Workers call, e.g. "@cf/meta/llama-3.1-8b-instruct"
    folder: Path | None = None  # a Hugging Face checkpoint folder (absolute)
    builtin: str | None = None  # or the name of a built-in model

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or any(c.isspace() for c in self.name):
            raise ConfigError(None, None, f'model names must look like "@cf/meta/llama-3.1-8b-instruct", '
                                          f"got {describe(self.name)}")
        if (self.folder is None) == (self.builtin is None):
            raise ConfigError(None, None, "needs either a folder or a built-in model name, not both")
        if self.folder is not None and not self.folder.is_dir():
            raise ConfigError(None, None, f'names the folder "{self.folder}", which does not exist')
        if self.builtin is not None and self.builtin not in builtin_model_names():
            known = ", ".join(builtin_model_names())
            raise ConfigError(None, None, f"names no built-in model (built-ins: {known})")

    @property
    def serve_argument(self) -> str:
        """`NAME=PATH` as `edgewise backend serve --model` takes it."""
        return f"{self.name}={self.folder if self.folder is not None else self.builtin}"


def default_pop_specs() -> tuple[PopSpec, ...]:
    return tuple(PopSpec(colo) for colo in DEFAULT_POPS)


@dataclass(frozen=True)
class EdgewiseConfig:
    """The local-only `[edgewise]` table: the shape of the emulated edge."""

    pops: tuple[PopSpec, ...] = field(default_factory=default_pop_specs)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    client_location: str | None = None  # "LAT,LON", IATA or country code; None = dev default
    ip_locations: tuple[tuple[str, str], ...] = ()  # (CIDR, location spec) pairs
    cf: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # over every request.cf
    backends: tuple[BackendSpec, ...] = ()
    models: tuple[ModelSource, ...] = ()  # [edgewise.models]: served by the backend dev starts
    # The backend dev starts answers an unmapped @cf/ or @hf/ name with the built-in model of its task;
    # strict_models makes such a name 5007 (no such model), as on a backend given only its mapped names.
    strict_models: bool = False
    backend: LocalBackendConfig = field(default_factory=LocalBackendConfig)
    # A KV write is seen at once at its own PoP and this long after at the others, as Cloudflare's
    # eventual consistency (up to ~60 s there); 0: at once everywhere
    kv_propagation_ms: float = 0.0

    def __post_init__(self) -> None:
        expect_bool(self.strict_models, "strict_models")
        object.__setattr__(self, "kv_propagation_ms", expect_number(self.kv_propagation_ms, "kv_propagation_ms"))
        object.__setattr__(self, "pops", tuple(self.pops))
        object.__setattr__(self, "backends", tuple(self.backends))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "cf", MappingProxyType(json_value(dict(self.cf), "cf")))
        self._check_pops()
        if self.client_location is not None:
            check_location_spec(self.client_location, "client_location")
        object.__setattr__(self, "ip_locations", tuple(self._checked_ip_locations()))

    def _checked_ip_locations(self) -> list[tuple[str, str]]:
        checked = []
        for cidr, spec in self.ip_locations:
            check_location_spec(spec, f'ip_locations."{cidr}"')
            checked.append((check_cidr(cidr, f'ip_locations."{cidr}"'), spec))
        return checked

    def _check_pops(self) -> None:
        if not self.pops:
            raise ConfigError(None, "pops", f"must list at least one PoP, e.g. {list(DEFAULT_POPS)}")
        seen_colos: set[str] = set()
        seen_ports: set[int] = set()
        for i, pop in enumerate(self.pops):
            if pop.colo in seen_colos:
                message = f"repeats PoP {pop.colo!r}; each PoP may appear once"
                raise ConfigError(None, f"pops[{i}]", message)
            if pop.port in seen_ports:
                message = f"repeats port {pop.port}; each PoP needs its own port"
                raise ConfigError(None, f"pops[{i}].port", message)
            seen_colos.add(pop.colo)
            if pop.port:  # None and 0 (any free port) never clash
                seen_ports.add(pop.port)

    @property
    def pop_colos(self) -> tuple[str, ...]:
        return tuple(pop.colo for pop in self.pops)


@dataclass(frozen=True)
class DevConfig:
    """wrangler's `[dev]` table (the parts a local edge uses)."""

    ip: str = "localhost"
    port: int = 8787

    def __post_init__(self) -> None:
        expect_nonempty_str(self.ip, "ip")
        check_port(self.port, "port")


# Binding kinds as wrangler config keys: a list of tables each naming its binding ("binding", or
# "name" where Cloudflare spells it so), or one table (its "binding" optional for assets).
LIST_BINDING_KINDS = {
    "kv_namespaces": "binding", "d1_databases": "binding", "r2_buckets": "binding", "vectorize": "binding",
    "services": "binding", "workflows": "binding", "hyperdrive": "binding", "analytics_engine_datasets": "binding",
    "secrets_store_secrets": "binding", "dispatch_namespaces": "binding", "mtls_certificates": "binding",
    "pipelines": "binding", "worker_loaders": "binding", "vpc_services": "binding", "send_email": "name",
    "ratelimits": "name",
}
TABLE_BINDING_KINDS = ("assets", "browser", "images", "version_metadata", "media")
# Kinds nested one level down: durable_objects.bindings[].name, queues.producers[].binding.
NESTED_BINDING_KINDS = {"durable_objects": ("bindings", "name"), "queues": ("producers", "binding")}
BINDING_KINDS = (*LIST_BINDING_KINDS, *TABLE_BINDING_KINDS, *NESTED_BINDING_KINDS)


@dataclass(frozen=True)
class BindingSpec:
    """One binding as declared: its kind (the wrangler key, e.g. "kv_namespaces"), the name the
    Worker reads it by (None for static assets without a binding) and its settings as written."""

    kind: str
    name: str | None
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _freeze(json_value(dict(self.settings), self.kind)))


@dataclass(frozen=True)
class WorkerConfig:
    """A Worker as wrangler config, env selection, `--var` and `.dev.vars` resolve it."""

    file: Path  # the config file read (absolute)
    root: Path  # its directory
    name: str
    main: Path  # absolute path of the entry module
    compatibility_date: str  # "YYYY-MM-DD"
    compatibility_flags: tuple[str, ...]
    vars: Mapping[str, Any]  # strings, or JSON values kept as Python values
    secrets: Mapping[str, str]  # from .dev.vars / .env
    crons: tuple[str, ...]  # triggers.crons
    ai_binding: str | None  # [ai] binding name, e.g. "AI"
    bindings: tuple[BindingSpec, ...] = ()  # every other binding, in the order declared
    migrations: tuple[Mapping[str, Any], ...] = ()  # Durable Object class migrations, as written
    queue_consumers: tuple[Mapping[str, Any], ...] = ()  # queues.consumers, as written
    dev: DevConfig = field(default_factory=DevConfig)
    edgewise: EdgewiseConfig = field(default_factory=EdgewiseConfig)
    env_name: str | None = None
    warnings: tuple[str, ...] = ()  # e.g. unknown top-level keys (wrangler warns, does not fail)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compatibility_flags", tuple(self.compatibility_flags))
        object.__setattr__(self, "crons", tuple(self.crons))
        object.__setattr__(self, "bindings", tuple(self.bindings))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "migrations", tuple(_freeze(json_value(dict(m), "migrations")) for m in self.migrations))
        object.__setattr__(self, "queue_consumers",
                           tuple(_freeze(json_value(dict(c), "queues.consumers")) for c in self.queue_consumers))
        variables = {name: json_value(value, f"vars.{name}") for name, value in self.vars.items()}
        object.__setattr__(self, "vars", _freeze(variables))
        object.__setattr__(self, "secrets", _freeze(self.secrets))
        expect_nonempty_str(self.name, "name")
        self._check_main()
        check_compatibility_date(self.compatibility_date, "compatibility_date")
        self._check_flags()
        for i, cron in enumerate(self.crons):
            check_cron(cron, f"triggers.crons[{i}]")
        self._check_ai_binding()
        self._check_binding_names()

    def _check_main(self) -> None:
        shown = _relative(self.main, self.root)
        if self.main.suffix != ".py":
            raise ConfigError(None, "main", f'must be a Python module ending in ".py", got "{shown}"')
        if not self.main.is_file():
            message = f'must name an existing file, but "{shown}" does not exist in {self.root}'
            raise ConfigError(None, "main", message)

    def _check_flags(self) -> None:
        for i, flag in enumerate(self.compatibility_flags):
            expect_nonempty_str(flag, f"compatibility_flags[{i}]")
        if {NO_GLOBAL_HANDLERS_FLAG, GLOBAL_HANDLERS_FLAG} <= set(self.compatibility_flags):
            message = f"cannot contain both {NO_GLOBAL_HANDLERS_FLAG!r} and {GLOBAL_HANDLERS_FLAG!r}"
            raise ConfigError(None, "compatibility_flags", message)

    def _check_ai_binding(self) -> None:
        if self.ai_binding is None:
            return
        if not isinstance(self.ai_binding, str) or not self.ai_binding.isidentifier():
            message = f'must be a binding name like "AI", got {describe(self.ai_binding)}'
            raise ConfigError(None, "ai.binding", message)
        if self.ai_binding in self.vars or self.ai_binding in self.secrets:
            message = f"{self.ai_binding!r} is also a var or secret; binding names must be unique"
            raise ConfigError(None, "ai.binding", message)

    def _check_binding_names(self) -> None:
        taken = {name: "a var" for name in self.vars} | {name: "a secret" for name in self.secrets}
        if self.ai_binding is not None:
            taken[self.ai_binding] = "the AI binding"
        for spec in self.bindings:
            if spec.name is None:
                continue
            if not spec.name.isidentifier():
                raise ConfigError(None, spec.kind, f'binding names must be names like "MY_KV", got {describe(spec.name)}')
            if spec.name in taken:
                raise ConfigError(None, spec.kind, f"binding {spec.name!r} is also {taken[spec.name]}; "
                                                   "binding names must be unique")
            taken[spec.name] = f"a {spec.kind} binding"

    @property
    def uses_global_handlers(self) -> bool:
        """Whether top-level `on_fetch` etc. are honoured instead of a `Default` class.

        An explicit flag wins over the compatibility date, as in workerd.
        """
        if NO_GLOBAL_HANDLERS_FLAG in self.compatibility_flags:
            return False
        if GLOBAL_HANDLERS_FLAG in self.compatibility_flags:
            return True
        return self.compatibility_date < NO_GLOBAL_HANDLERS_DATE

    @property
    def starts_local_backend(self) -> bool:
        """Whether `edgewise dev` starts its own backend for the AI binding.

        It does when no backend is configured, and when models are mapped locally (it then joins
        the configured ones); configured backends alone are used as they are.
        """
        return self.ai_binding is not None and (not self.edgewise.backends or bool(self.edgewise.models))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
