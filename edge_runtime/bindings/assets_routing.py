"""Which static asset a URL path names, or where it redirects: Cloudflare's asset routing as pure policy.

Ports workers-sdk's asset-worker ``getIntent`` (``html_handling`` and ``not_found_handling``) and the
router's ``run_worker_first`` routes. Everything here works on decoded URL paths and an ``exists``
callback (path -> file or None), so it is tested without a folder and knows nothing of responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

Exists = Callable[[str], "Path | None"]


@dataclass(frozen=True)
class Intent:
    """What a path resolves to: a file served with ``status``, or a redirect to ``redirect``."""

    file: Path | None
    status: int = 200
    redirect: str | None = None


@dataclass(frozen=True)
class Step:
    """One try: serve the path as named (``exact``), serve ``file``, or redirect to ``to`` where that is
    where ``file`` is served. ``{p}`` is the path, ``{h}`` the path without the ending matched."""

    kind: str  # "exact" | "serve" | "redirect"
    file: str = "{p}"
    to: str = ""


EXACT = Step("exact")


def _serve(file: str) -> Step:
    return Step("serve", file)


def _redirect(file: str, to: str) -> Step:
    return Step("redirect", file, to)


# Per mode: (ending, steps) tried for the first ending the path has ("=/" means the path is "/"), then
# the mode's steps for every path. The table is handler.ts's if/else chains, in their order.
HTML_RULES: dict[str, tuple[list[tuple[str, list[Step]]], list[Step]]] = {
    "auto-trailing-slash": ([
        ("/index", [EXACT, _redirect("{p}.html", "{h}/"), _redirect("{h}.html", "{h}")]),
        ("/index.html", [_redirect("{p}", "{h}/"), _redirect("{h}.html", "{h}")]),
        ("/", [_serve("{p}index.html"), _redirect("{h}.html", "{h}")]),
        (".html", [_redirect("{p}", "{h}"), _redirect("{h}/index.html", "{h}/")]),
    ], [EXACT, _serve("{p}.html"), _redirect("{p}/index.html", "{p}/")]),
    "force-trailing-slash": ([
        ("/index", [EXACT, _redirect("{p}.html", "{h}/"), _redirect("{h}.html", "{h}/")]),
        ("/index.html", [_redirect("{p}", "{h}/"), _redirect("{h}.html", "{h}/")]),
        ("/", [_serve("{p}index.html"), _serve("{h}.html")]),
        (".html", [_redirect("{p}", "{h}/"), EXACT, _redirect("{h}/index.html", "{h}/")]),
    ], [EXACT, _redirect("{p}.html", "{p}/"), _redirect("{p}/index.html", "{p}/")]),
    "drop-trailing-slash": ([
        ("=/index", [EXACT, _redirect("/index.html", "/")]),
        ("/index", [EXACT, _redirect("{h}.html", "{h}"), _redirect("{p}.html", "{h}")]),
        ("=/index.html", [_redirect("/index.html", "/")]),
        ("/index.html", [_redirect("{p}", "{h}"), EXACT, _redirect("{h}.html", "{h}")]),
        ("=/", [_serve("/index.html")]),
        ("/", [_redirect("{h}.html", "{h}"), _redirect("{p}index.html", "{h}")]),
        (".html", [_redirect("{p}", "{h}"), _redirect("{h}/index.html", "{h}")]),
    ], [EXACT, _serve("{p}.html"), _serve("{p}/index.html")]),
    "none": ([], [EXACT]),
}


def resolve_intent(path: str, html_handling: str, not_found_handling: str, exists: Exists,
                   skip_redirects: bool = False) -> Intent | None:
    """The file (or redirect) for a decoded path, or None: nothing to serve, the Worker's turn."""
    found = _html_intent(path, html_handling, not_found_handling, exists, skip_redirects)
    return found if found is not None else _not_found(path, not_found_handling, exists)


def _html_intent(path: str, mode: str, not_found: str, exists: Exists, skip_redirects: bool) -> Intent | None:
    endings, always = HTML_RULES[mode]
    ending, steps = next(((ending, steps) for ending, steps in endings if _has_ending(path, ending)), ("", []))
    head = path[: len(path) - len(ending.lstrip("="))]
    for step in [*steps, *always]:
        file = step.file.format(p=path, h=head)
        if step.kind == "redirect":
            intent = None if skip_redirects else _safe_redirect(file, step.to.format(p=path, h=head), mode,
                                                               not_found, exists)
        else:
            found = exists(path if step.kind == "exact" else file)
            intent = Intent(found) if found is not None else None
        if intent is not None:
            return intent
    return None


def _has_ending(path: str, ending: str) -> bool:
    return path == ending[1:] if ending.startswith("=") else path.endswith(ending)


def _safe_redirect(file: str, destination: str, mode: str, not_found: str, exists: Exists) -> Intent | None:
    """A redirect only where the destination serves this same file: never one that ends in a 404."""
    if exists(destination) is not None:
        return None
    target = resolve_intent(destination, mode, not_found, exists, skip_redirects=True)
    if target is None or target.file is None or target.status != 200 or target.file != exists(file):
        return None
    return Intent(None, redirect=destination)


def _not_found(path: str, handling: str, exists: Exists) -> Intent | None:
    if handling == "single-page-application":
        index = exists("/index.html")
        return Intent(index) if index is not None else None
    if handling == "404-page":
        folder = path
        while folder:  # the nearest 404.html: the path's own folder, then each one up
            folder = folder[: folder.rfind("/")]
            page = exists(f"{folder}/404.html")
            if page is not None:
                return Intent(page, status=404)
    return None


def decode_path(raw_path: str) -> str | None:
    """The URL path as file names (each segment percent-decoded, repeated slashes made one), or None
    where a segment is a step (``..``, ``%2e%2e``) or decodes to a separator (``%2f``, ``%5c``):
    such a path names no file, nor a not-found page."""
    segments = []
    for raw in raw_path.split("/"):
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            segment = raw
        if segment in (".", "..") or "/" in segment or "\\" in segment:
            return None
        segments.append(segment)
    return re.sub("/+", "/", "/".join(segments))


def encode_path(path: str) -> str:
    """The canonical URL of a decoded path: each segment as JavaScript's encodeURIComponent writes it."""
    return "/".join(quote(segment, safe="-_.!~*'()") for segment in path.split("/"))


def matches_route(route: str, path: str) -> bool:
    """A ``run_worker_first`` route: ``*`` stands for anything, slashes included."""
    return re.fullmatch(".*".join(map(re.escape, route.split("*"))), path) is not None
