"""``edgewise dev``: serve a Worker on the emulated edge."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape

from edge_runtime.ai_backends import AiBackends
from edge_runtime.backend_process import BackendProcess, BackendStartError, serve_command, served_models
from edge_runtime.bindings import StateDir
from edge_runtime.catalog import get_location
from edge_runtime.config import ConfigError, ModelSource, PopSpec, WorkerConfig, load_config
from edge_runtime.config_edgewise import read_model_source
from edge_runtime.control_access import TOKEN_HEADER
from edge_runtime.devserver import BindError, Listener, display_host, open_listeners, serve
from edge_runtime.edge import Edge
from edge_runtime.loader import WorkerLoadError
from edge_runtime.packages import PackageInstallError, ensure_installed, python_version_warning, read_packages

from .output import LOG_LEVELS, console, fail, setup_logging


def _parse_vars(values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not KEY:VALUE", param_hint="--var")
        pairs[name] = value
    return pairs


def _parse_pops(value: str | None, base_port: int | None) -> tuple[PopSpec, ...] | None:
    if not value:
        return None
    codes = [code.strip().upper() for code in value.split(",") if code.strip()]
    for code in codes:
        try:
            get_location(code)
        except KeyError as error:
            raise click.BadParameter(str(error), param_hint="--pops") from None
    if len(set(codes)) != len(codes):
        raise click.BadParameter("a PoP is listed twice", param_hint="--pops")
    return tuple(PopSpec(code, port=None if base_port is None else base_port + i) for i, code in enumerate(codes))


def _parse_cf(value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        fields = json.loads(value)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON ({error})", param_hint="--cf") from None
    if not isinstance(fields, dict):
        raise click.BadParameter('needs a JSON object such as \'{"asn": 13335}\'', param_hint="--cf")
    return fields


def _parse_models(values: tuple[str, ...]) -> tuple[ModelSource, ...]:
    """`--model NAME=PATH`, each checked as an [edgewise.models] entry (PATH: a folder, relative to the
    working directory, or a built-in model's name)."""
    sources: dict[str, ModelSource] = {}
    for item in values:
        name, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not name or not target:
            raise click.BadParameter(f"{item!r} is not NAME=PATH (PATH: a Hugging Face checkpoint folder or a "
                                     "built-in model's name)", param_hint="--model")
        try:
            sources[name] = read_model_source(name, target, f"--model {name}", Path.cwd())
        except ConfigError as error:
            raise click.BadParameter(error.message, param_hint=f"'--model {name}={target}'") from None
    return tuple(sources.values())


def _apply_cli(config: WorkerConfig, pops: str | None, latency: str | None, pop_ports: int | None,
               cf: dict | None, models: tuple[ModelSource, ...] = ()) -> WorkerConfig:
    edgewise = config.edgewise
    if models:  # over [edgewise.models], name by name
        given = {model.name for model in models}
        kept = tuple(model for model in edgewise.models if model.name not in given)
        edgewise = dataclasses.replace(edgewise, models=(*kept, *models))
    if cf is not None:
        edgewise = dataclasses.replace(edgewise, cf={**edgewise.cf, **cf})
    specs = _parse_pops(pops, pop_ports)
    if specs is None and pop_ports is not None:
        specs = tuple(dataclasses.replace(spec, port=pop_ports + i) for i, spec in enumerate(edgewise.pops))
    if specs is not None:
        edgewise = dataclasses.replace(edgewise, pops=specs)
    if latency is not None:
        edgewise = dataclasses.replace(edgewise, latency=dataclasses.replace(edgewise.latency, enabled=latency == "on"))
    return dataclasses.replace(config, edgewise=edgewise)


def _print_ready(config: WorkerConfig, host: str, listeners: list[Listener], edge: Edge) -> None:
    front = listeners[0]
    console.print(f"[bold]edgewise[/] dev · [cyan]{config.name}[/] · {len(edge.pops)} PoPs · "
                  f"latency {'on' if config.edgewise.latency.enabled else 'off'}")
    for pop in edge.pops:
        port = next((f"http://{display_host(host)}:{lst.port}" for lst in listeners if lst.name == pop.colo), "")
        state = "" if pop.healthy else " [red](down)[/]"
        console.print(f"  {pop.colo}  {pop.location.city}, {pop.location.country}  {port}{state}")
    for other in list(edge.scripts.values())[1:]:
        console.print(f"  also running [cyan]{other.name}[/] ({other.config.file}), reached through bindings")
    _print_ai(config, edge)
    console.print(f"  control token [dim](header {TOKEN_HEADER}, for POST /cdn-cgi/edgewise/pops/<COLO>/up|down)[/]: "
                  f"{edge.control_token}", soft_wrap=True)
    for warning in [*config.warnings, *exposure_warnings(host)]:
        console.print(f"[yellow]▲ [WARNING][/] {escape(warning)}", soft_wrap=True)
    # The exact line wrangler prints; tools wait for it.
    print(f"[wrangler:info] Ready on http://{display_host(host)}:{front.port}", flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a LAN address


def exposure_warnings(host: str) -> list[str]:
    """What listening beyond this machine exposes, and how to stay local."""
    if is_loopback(host):
        return []
    return [f"Listening on {host}, not only on this machine: anyone who can reach it over the network can call "
            "the Worker (and, through env.AI, the models), list the PoPs and read `edgewise tail` (URLs, console "
            "output; credential headers stay redacted unless --show-secrets). Changing PoP health still needs "
            "the control token. To stay local, use --ip 127.0.0.1 (or leave [dev] ip unset)."]


def _print_ai(config: WorkerConfig, edge: Edge) -> None:
    """Where env.AI goes (URLs, never the tokens)."""
    if config.ai_binding is None:
        if config.edgewise.models:
            warning = "[edgewise.models] is set but there is no [ai] binding: no AI backend is started"
            console.print(f"[yellow]▲ [WARNING][/] {escape(warning)}")
        return
    specs = edge.ai_backends.specs
    if not specs:
        console.print(f"  env.{config.ai_binding} → [red]no AI backend[/]")
    for spec in specs:
        where = f" ({spec.location})" if spec.location else ""
        console.print(f"  env.{config.ai_binding} → AI backend {spec.url}{escape(where)}")


def _worker_packages(config: WorkerConfig, install: bool) -> Path | None:
    """The folder of the Worker's own packages ([project].dependencies in the pyproject.toml beside the
    config), installed first unless cached or ``install`` is off; runs before the AI backend starts, so
    a bad list fails fast."""
    packages = read_packages(config.root)
    warnings = [python_version_warning(packages)]
    if install:
        ensure_installed(packages, lambda line: console.print(f"[bold]edgewise[/] {escape(line)}", soft_wrap=True))
    elif packages.requirements and not packages.folder.is_dir():
        warnings.append(f"--no-install: the Worker's packages are not installed ({', '.join(packages.requirements)})")
    for warning in filter(None, warnings):
        console.print(f"[yellow]▲ [WARNING][/] {escape(warning)}", soft_wrap=True)
    return packages.folder if packages.requirements and packages.folder.is_dir() else None


def _start_backend(config: WorkerConfig, stack: contextlib.ExitStack, persist_to: Path | None) -> AiBackends:
    """The backends env.AI calls; the local one is started here (and stopped by `stack`) when the config
    asks for it, keeping its async batches beside the bindings' data."""
    if not config.starts_local_backend:
        return AiBackends.for_config(config)
    settings = config.edgewise.backend
    models = ", ".join(model.partition("=")[0] for model in served_models(config.edgewise))
    console.print(f"[bold]edgewise[/] starting the local AI backend ({escape(models)}) …", soft_wrap=True)
    batch_dir = StateDir.for_config(config, persist_to).folder("ai", "batches")
    backend = stack.enter_context(BackendProcess.start(serve_command(config.edgewise, batch_dir),
                                                       settings.ready_timeout_s))
    console.print(f"[bold]edgewise[/] AI backend ready on {backend.url} · models: {escape(models)}", soft_wrap=True)
    return AiBackends.for_config(config, backend.spec(settings.location))


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--config", "-c", "config_paths", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Path to wrangler.json/.jsonc/.toml (default: looked up in DIRECTORY). Repeat it to run several "
                   "Workers in one edge: the first is served, the others are reached through bindings.")
@click.option("--env", "-e", "env_name", help="Use the [env.NAME] section of the config.")
@click.option("--port", type=click.IntRange(0, 65535), help="Front door port (default: [dev] port, or 8787).")
@click.option("--ip", help="Address to listen on (default: 127.0.0.1).")
@click.option("--pops", help="Comma-separated PoP codes, e.g. LHR,SFO,SIN,FRA,NRT (default: [edgewise] pops).")
@click.option("--pop-ports", type=click.IntRange(1, 65535), help="Also serve each PoP on its own port, from this one up.")
@click.option("--var", "vars_", multiple=True, metavar="KEY:VALUE", help="Set or override a var (repeatable).")
@click.option("--latency", type=click.Choice(["on", "off"]), help="Simulated network delay from distance.")
@click.option("--cf", metavar="JSON", help='Fields merged into every request.cf, e.g. \'{"asn": 13335}\' (over [edgewise] cf).')
@click.option("--model", "-m", "models", multiple=True, metavar="NAME=PATH",
              help="Serve the model NAME from PATH (a Hugging Face checkpoint folder or a built-in model's name) "
                   "for this run, over [edgewise.models] (repeatable).")
@click.option("--reload/--no-reload", default=True, show_default=True, help="Reload the Worker when files change.")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Install the Worker's packages ([project].dependencies in its pyproject.toml) into "
                   ".wrangler/python_modules beside the config, when not installed yet.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="log", show_default=True)
@click.option("--persist-to", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the bindings' data (KV, D1, R2 ...) in this folder (default: .wrangler/state beside the "
                   "config).")
@click.option("--show-secrets", is_flag=True,
              help="Show credential headers (Authorization, Cookie ...) and the run's tokens in `edgewise tail` "
                   "(redacted by default).")
def dev(directory: Path, config_paths: tuple[Path, ...], env_name: str | None, port: int | None, ip: str | None,
        pops: str | None, pop_ports: int | None, vars_: tuple[str, ...], latency: str | None, cf: str | None,
        models: tuple[str, ...], reload: bool, install: bool, log_level: str, persist_to: Path | None,
        show_secrets: bool) -> None:
    """Serve the Worker in DIRECTORY on emulated PoPs behind an anycast front door."""
    os.environ["TZ"] = "UTC"  # a Worker's local time is UTC, as on Cloudflare (naive datetimes, fromtimestamp)
    time.tzset()
    setup_logging(log_level)
    overrides = _parse_vars(vars_)
    cf_fields = _parse_cf(cf)
    model_sources = _parse_models(models)

    def read_configs() -> list[WorkerConfig]:
        """The served Worker's config (with the command line's settings over it), then the others'."""
        first, *others = config_paths or (None,)
        served = _apply_cli(load_config(directory, first, env_name, overrides), pops, latency, pop_ports, cf_fields,
                            model_sources)
        return [served, *(load_config(directory, path, env_name) for path in others)]

    with contextlib.ExitStack() as stack:  # stops the local AI backend however dev ends
        try:
            config, *others = read_configs()
            python_modules = _worker_packages(config, install)
            others_packages = {other.name: _worker_packages(other, install) for other in others}
            ai_backends = _start_backend(config, stack, persist_to)
            edge = Edge(config, ai_backends=ai_backends, show_secrets=show_secrets, persist_to=persist_to,
                        python_modules=python_modules, workers=others, workers_python_modules=others_packages)
            host = ip or ("127.0.0.1" if config.dev.ip == "localhost" else config.dev.ip)
            listeners = open_listeners(edge, host, config.dev.port if port is None else port)
        except (ConfigError, PackageInstallError, WorkerLoadError, BindError, BackendStartError) as error:
            fail(str(error))
            return
        # Everything loaded so far lives as long as the server: keep it out of the cyclic GC's scans.
        gc.freeze()
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            try:
                runner.run(_serve_then_close(edge, listeners, reload, read_configs,
                                             lambda ready: _print_ready(config, host, ready, edge)))
            except (ConfigError, WorkerLoadError) as error:  # found when the edge starts (workflows, queues)
                fail(str(error))


async def _serve_then_close(edge: Edge, listeners: list[Listener], reload: bool,
                            read_configs: Callable[[], list[WorkerConfig]],
                            on_ready: Callable[[list[Listener]], None]) -> None:
    try:
        await serve(edge, listeners, reload=reload, reload_configs=read_configs, on_ready=on_ready)
    finally:
        await edge.aclose()


def _loop_factory():  # noqa: ANN202 - a loop constructor
    """uvloop where installed (uvicorn[standard] brings it), as uvicorn itself would choose."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
