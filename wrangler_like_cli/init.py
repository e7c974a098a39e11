"""``edgewise init``: create a Worker project from a template."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import click

from .output import console, fail

TEMPLATES = ("hello", "websocket", "asgi", "ai-chat")
TEMPLATE_DIR = Path(__file__).parent / "templates"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def render_template(template: str, name: str, target: Path) -> list[Path]:
    """Copy the template's files into ``target``, filling in the name and today's compatibility date."""
    source = TEMPLATE_DIR / template
    written: list[Path] = []
    for path in sorted(source.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        text = path.read_text().replace("{{name}}", name).replace("{{date}}", datetime.date.today().isoformat())
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)
        written.append(destination)
    return written


@click.command()
@click.argument("name")
@click.option("--template", "-t", type=click.Choice(TEMPLATES), default="hello", show_default=True,
              help="hello: echo request.cf; websocket: echo server; asgi: a Starlette app; ai-chat: env.AI.run.")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Where to create the project folder.")
def init(name: str, template: str, parent: Path) -> None:
    """Create a new Worker project NAME (a folder with wrangler.toml and src/entry.py)."""
    if not _NAME.match(name):
        fail(f"{name!r} is not a valid Worker name: use lower-case letters, digits and dashes (max 63).")
    target = parent / name
    if target.exists() and any(target.iterdir()):
        fail(f"{target} already exists and is not empty; choose another name or --dir.")
    written = render_template(template, name, target)
    console.print(f"[green]✔[/] Created [bold]{target}[/] from the [cyan]{template}[/] template:")
    for path in written:
        console.print(f"    {path.relative_to(target)}")
    console.print(f"\nNext: [bold]edgewise dev {target}[/]  then open http://localhost:8787")
