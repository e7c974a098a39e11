"""``edgewise backend serve``: the inference service (Workers AI, OpenAI and WebSocket APIs) on its own."""

from __future__ import annotations

import os
import secrets

import click

from .output import err_console, fail

_UVICORN_LEVELS = {"debug": "debug", "info": "info", "log": "info", "warn": "warning", "error": "error",
                   "none": "critical"}


@click.group()
def backend() -> None:
    """The inference backend that serves env.AI, the REST API and the OpenAI-compatible API."""


@backend.command()
@click.option("--model", "-m", "models", multiple=True, metavar="NAME[=PATH]",
              help="Serve a model as NAME: PATH is a Hugging Face folder or a built-in model's name; NAME alone "
                   "is a built-in model (repeatable; default: every built-in model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8790, show_default=True,
              help="Port to listen on (0: any free port; the Ready line names it).")
@click.option("--token", envvar="EDGEWISE_BACKEND_TOKEN", show_envvar=True,
              help="Bearer token every client must send (default: a new random one, printed once).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True)
@click.option("--max-queue", type=click.IntRange(0), default=256, show_default=True,
              help="Requests a model may queue beyond those it runs at once; past that, 429 with Retry-After.")
@click.option("--log-level", type=click.Choice(list(_UVICORN_LEVELS)), default="warn", show_default=True)
def serve(models: tuple[str, ...], host: str, port: int, token: str | None, device: str, dtype: str,
          max_queue: int, log_level: str) -> None:
    """Serve models over HTTP and WebSocket until Ctrl-C."""
    from gpu_backend.builtin_models import BUILTIN_MODELS
    from gpu_backend.server import serve as service

    try:
        resolved = service.resolve_models(list(models) or sorted(BUILTIN_MODELS))
    except ValueError as error:
        fail(str(error))
        return
    if not token:
        token = secrets.token_urlsafe(32)
        # asked for nothing, so the person starting it needs to see it once; `edgewise dev` always passes one
        err_console.print(f"token: {token}  (send it as 'Authorization: Bearer <token>'; set "
                          f"{service.TOKEN_ENV} to choose one)", markup=False)
    os.environ.pop(service.TOKEN_ENV, None)  # not inherited by anything this process starts
    names = ", ".join(resolved)
    err_console.print(f"edgewise backend · loading {names} on {device}", markup=False)
    service.serve(resolved, host=host, port=port, token=token, max_queue=max_queue,
                  log_level=_UVICORN_LEVELS[log_level], device=device, dtype=dtype)
