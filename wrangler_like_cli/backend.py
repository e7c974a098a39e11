"""``edgewise backend serve``: the inference service (Workers AI, OpenAI and WebSocket APIs) on its own."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from .output import err_console, fail

if TYPE_CHECKING:
    from gpu_backend.cluster.config import ClusterConfig
    from gpu_backend.cluster.launch import TorchrunPlace

_UVICORN_LEVELS = {"debug": "debug", "info": "info", "log": "info", "warn": "warning", "error": "error",
                   "none": "critical"}


@click.group()
def backend() -> None:
    """The inference backend that serves env.AI, the REST API and the OpenAI-compatible API."""


@backend.command()
@click.option("--model", "-m", "models", multiple=True, metavar="NAME[=PATH]",
              help="Serve a model as NAME: PATH is a Hugging Face folder or a built-in model's name; NAME alone "
                   "is a built-in model (repeatable; default: every built-in model).")
@click.option("--strict-models", is_flag=True,
              help="Answer 5007 for every name not given with --model. By default an unmapped @cf/ or @hf/ name "
                   "is served by the built-in model of its task (text generation: @cf/edgewise/tiny-shakespeare; "
                   "embeddings: the built-in MiniLM), logged once per name.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8790, show_default=True,
              help="Port to listen on (0: any free port; the Ready line names it).")
@click.option("--token", envvar="EDGEWISE_BACKEND_TOKEN", show_envvar=True,
              help="Bearer token every client must send (default: a new random one, printed once).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True)
@click.option("--compressed-weights", type=click.Choice(["auto", "kernel", "decode-at-load"]), default="auto",
              show_default=True,
              help="How a compressed checkpoint (edgewise weights compress) is held on a GPU: kernel keeps its "
                   "weights coded (0.78 of the memory, batch-1 decode faster, batches of 32+ slower), "
                   "decode-at-load decodes them while loading (dense speed and memory); auto is kernel. Both "
                   "answer as the uncompressed checkpoint does (docs/weights-format.md).")
@click.option("--max-queue", type=click.IntRange(0), default=None,
              help="Requests a model may queue beyond those it runs at once; past that, 429 with Retry-After "
                   "(default: 256 on a GPU; on CPU as many as it runs at once, 4 per core).")
@click.option("--log-level", type=click.Choice(list(_UVICORN_LEVELS)), default="warn", show_default=True)
@click.option("--tp", type=click.IntRange(1), default=1, show_default=True,
              help="Tensor-parallel ranks per pipeline stage (each text model's instance).")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True,
              help="Pipeline stages: the decoder layers split into this many contiguous ranges.")
@click.option("--pp-layers", metavar="N,N,...", default=None,
              help="Decoder layers per pipeline stage, e.g. 5,3 (default: as even as possible).")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Colocated instances (replicas) of each text model, tp x pp ranks each; the service routes "
                   "each request to the least loaded one.")
@click.option("--prefill-instances", type=click.IntRange(0), default=0, show_default=True,
              help="Disaggregated serving: instances that only prefill (with --decode-instances; instead of --tp, "
                   "--pp and --instances).")
@click.option("--prefill-tp", type=click.IntRange(1), default=1, show_default=True)
@click.option("--prefill-pp", type=click.IntRange(1), default=1, show_default=True)
@click.option("--decode-instances", type=click.IntRange(0), default=0, show_default=True,
              help="Disaggregated serving: instances that decode what the prefill instances computed.")
@click.option("--decode-tp", type=click.IntRange(1), default=1, show_default=True)
@click.option("--decode-pp", type=click.IntRange(1), default=1, show_default=True)
@click.option("--instance-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds any collective, KV transfer or hand-off between ranks may take before it fails "
                   "(an instance stuck past it counts as lost).")
@click.option("--heartbeat-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds a rank may go without a sign of life (dead or frozen) before its instance counts as lost.")
@click.option("--on-instance-loss", type=click.Choice(["error", "recompute"]), default="error", show_default=True,
              help="When an instance is lost or a KV transfer fails: end its requests with an error, or compute "
                   "them again (prompt and the tokens so far) on the instances left and stream on without a gap.")
@click.option("--instance-restarts", type=click.IntRange(0), default=3, show_default=True,
              help="Times the instances are started again, once none is left to serve, before the model stays "
                   "unavailable (a lost instance alone is not restarted: the others serve on).")
@click.option("--cluster", "cluster_spec", metavar="JSON|@FILE", default=None,
              help="The whole cluster as one config, instead of the flags above (docs/parallelism.md): "
                   "{\"instances\": [{\"role\": \"prefill\", \"tp\": 2}, {\"role\": \"decode\", \"count\": 2}], "
                   "\"on_instance_loss\": \"recompute\"}; @FILE reads it from a file.")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a client has to send a request's headers, from connecting or the request's first "
                   "byte; past that the connection is closed, with a 408 if part of a request came (default: 10).")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds the service waits, in all, for a request's body; past that the client gets 408 "
                   "(Workers AI's 3007) and the connection is closed (default: 60).")
@click.option("--batch-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep async batches (queueRequest) and their results in this folder; unfinished batches run "
                   "again after a restart (default: $XDG_STATE_HOME/edgewise/batches, i.e. "
                   "~/.local/state/edgewise/batches).")
@click.option("--batch-retention", metavar="DURATION", default="24h", show_default=True,
              help="How long a finished batch's results are kept, e.g. 90s, 30m, 24h, 7d; then polling it "
                   "answers that the request_id is unknown.")
@click.pass_context
def serve(ctx: click.Context, models: tuple[str, ...], strict_models: bool, host: str, port: int, token: str | None,
          device: str, dtype: str, compressed_weights: str, max_queue: int | None, log_level: str,
          cluster_spec: str | None,
          header_timeout: float | None, body_timeout: float | None, batch_dir: Path | None, batch_retention: str,
          **cluster_flags: Any) -> None:
    """Serve models over HTTP and WebSocket until Ctrl-C.

    With --tp/--pp each text model runs on tp x pp ranks started here (one GPU each). Across
    machines, run this same command under torchrun on every node (see docs/parallelism.md).
    """
    from gpu_backend.builtin_models import BUILTIN_MODELS
    from gpu_backend.cluster.launch import torchrun_env
    from gpu_backend.server import serve as service
    from gpu_backend.server.batches import BatchConfig, default_batch_dir
    from gpu_backend.server.read_timeouts import ReadTimeouts

    try:
        resolved = service.resolve_models(list(models) or sorted(BUILTIN_MODELS))
        cluster = _cluster_config(ctx, cluster_spec, cluster_flags)
        given = {"header_s": header_timeout, "body_s": body_timeout}
        read_timeouts = ReadTimeouts(**{key: value for key, value in given.items() if value is not None})
        batches = BatchConfig((batch_dir or default_batch_dir()).expanduser(), _retention(batch_retention))
    except ValueError as error:
        fail(str(error))
        return
    held = compressed_weights.replace("-", "_")  # EngineConfig's spelling
    place = torchrun_env()
    if place is not None:
        _serve_ranks(resolved, place, cluster, host=host, port=port, token=token, max_queue=max_queue,
                     log_level=_UVICORN_LEVELS[log_level], device=device, dtype=dtype,
                     compressed_weights=held, read_timeouts=read_timeouts,
                     strict_models=strict_models, batches=batches)
        return
    if not token:
        token = secrets.token_urlsafe(32)
        # asked for nothing, so the person starting it needs to see it once; `edgewise dev` always passes one
        err_console.print(f"token: {token}  (send it as 'Authorization: Bearer <token>'; set "
                          f"{service.TOKEN_ENV} to choose one)", markup=False)
    os.environ.pop(service.TOKEN_ENV, None)  # not inherited by anything this process starts
    names = ", ".join(resolved)
    shape = f" ({cluster.describe()})" if cluster.is_sharded else ""
    err_console.print(f"edgewise backend · loading {names} on {device}{shape}", markup=False)
    service.serve(resolved, host=host, port=port, token=token, max_queue=max_queue,
                  log_level=_UVICORN_LEVELS[log_level], device=device, dtype=dtype,
                  compressed_weights=held, cluster=cluster,
                  read_timeouts=read_timeouts, strict_models=strict_models, batches=batches)


# The flags that shape the cluster, by parameter name; each is a shorthand of the cluster config.
_POLICY_FLAGS = {"instance_timeout": "instance_timeout_s", "heartbeat_timeout": "heartbeat_timeout_s",
                 "on_instance_loss": "on_instance_loss", "instance_restarts": "instance_restarts"}


def _cluster_config(ctx: click.Context, cluster_spec: str | None, flags: dict[str, Any]) -> ClusterConfig:
    """``--cluster`` as given, or the config the cluster flags stand for; never both."""
    from gpu_backend.cluster.config import ClusterConfig

    if cluster_spec is not None:
        given = [name for name in flags if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            raise ValueError(f"--cluster and {_flag(given[0])} were both given: put the whole cluster in --cluster, "
                             "or use the flags alone")
        return ClusterConfig.from_json(_read_cluster_spec(cluster_spec))
    shape = {key: value for key, value in flags.items() if key not in _POLICY_FLAGS}
    shape["pp_layers"] = _layer_counts(shape["pp_layers"])
    policy = {_POLICY_FLAGS[key]: flags[key] for key in _POLICY_FLAGS}
    return ClusterConfig.from_shorthands(**shape, **policy, spell=_flag)


def _read_cluster_spec(text: str) -> str:
    if not text.startswith("@"):
        return text
    path = Path(text[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--cluster {text}: cannot read {path}: {error}") from None


def _retention(text: str) -> float:
    from gpu_backend.server.batches import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise ValueError(f"--batch-retention: {error}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _layer_counts(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--pp-layers {text!r}: give one whole number of layers per stage, e.g. 5,3") from None


def _serve_ranks(resolved: dict[str, Path], place: TorchrunPlace, cluster: ClusterConfig, *, token: str | None,
                 device: str, dtype: str, compressed_weights: str, **service_options: Any) -> None:
    """This process is one rank torchrun started; rank 0 also serves (it needs the token)."""
    from gpu_backend.server import torchrun

    if not token and place.rank == 0:
        fail("under torchrun, set the token with --token or EDGEWISE_BACKEND_TOKEN (every node runs the same command)")
        return
    try:
        torchrun.serve_ranks(resolved, place, cluster, {**service_options, "token": token or ""},
                             {"device": device, "dtype": dtype, "compressed_weights": compressed_weights})
    except ValueError as error:
        fail(str(error))
