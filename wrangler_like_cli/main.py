"""The ``edgewise`` command: a wrangler-like CLI (init, dev, tail)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

from .ai import ai
from .backend import backend
from .d1 import d1
from .dev import dev
from .init import init
from .kv import kv
from .queues import queues
from .r2 import r2
from .tail import tail
from .vectorize import vectorize
from .weights import weights
from .workflows import workflows


def _version() -> str:
    try:
        return version("edgewise")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", "-v", prog_name="edgewise")
def cli() -> None:
    """Run Cloudflare-style Python Workers on a local anycast edge, with real AI models.

    \b
    edgewise init my-worker          create a Worker project
    edgewise dev my-worker           serve it on emulated PoPs at http://localhost:8787
    edgewise tail                    stream the dev server's request logs
    edgewise backend serve           serve models (Workers AI, OpenAI and WebSocket APIs)
    edgewise ai run MODEL --prompt   run a model once (edgewise ai models: list them)
    edgewise kv key put K V --binding B   local data: kv, d1, r2, vectorize
    edgewise weights compress SRC DST    a checkpoint with losslessly compressed weights
    """


cli.add_command(init)
cli.add_command(dev)
cli.add_command(tail)
cli.add_command(backend)
cli.add_command(ai)
cli.add_command(kv)
cli.add_command(d1)
cli.add_command(r2)
cli.add_command(vectorize)
cli.add_command(workflows)
cli.add_command(queues)
cli.add_command(weights)

if __name__ == "__main__":
    cli()
