"""Static assets (``assets`` in the config): one folder's files, served ahead of the Worker at every PoP
as Cloudflare's asset router serves them, and ``env.ASSETS`` for the Worker to fetch them itself.

Which file a path names is ``assets_routing``'s policy; here are the settings, the folder (files
looked up on disk at each request, so an edit shows at once; .assetsignore; no path leaving the
folder, whether by ``..``, encoded or backslashed separators or a symlink pointing out) and the
responses (content types, ETag and 304, ranges, streamed bodies).
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgewise_sdk.workers import Request, Response

from ..config import BindingSpec, ConfigError, WorkerConfig
from .assets_routing import (
    HTML_RULES,
    decode_path,
    encode_path,
    matches_route,
    resolve_intent,
)

if TYPE_CHECKING:
    from . import StateDir

HTML_HANDLING = tuple(HTML_RULES)
NOT_FOUND_HANDLING = ("none", "single-page-application", "404-page")
IGNORE_FILE = ".assetsignore"
ALWAYS_IGNORED = ("/.assetsignore", "/_redirects", "/_headers")  # wrangler's own files, never assets
CACHE_CONTROL = "public, max-age=0, must-revalidate"
CHUNK_BYTES = 64 * 1024
# assets_navigation_prefers_asset_serving: on by default from this compatibility date
NAVIGATION_FLAG, NAVIGATION_OFF_FLAG, NAVIGATION_DATE = (
    "assets_navigation_prefers_asset_serving", "assets_navigation_has_no_effect", "2025-04-01")
# What Cloudflare sends (wrangler's `mime` package, text/* with charset=utf-8) where Python's table differs.
CONTENT_TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".cjs": "text/javascript", ".ico": "image/vnd.microsoft.icon",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf", ".otf": "font/otf", ".webp": "image/webp",
    ".avif": "image/avif", ".map": "application/json", ".md": "text/markdown", ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json", ".xml": "application/xml", ".txt": "text/plain",
}
_MIME = mimetypes.MimeTypes()  # Python's built-in table only: the same answer on every machine


def content_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    kind = CONTENT_TYPES.get(suffix) or _MIME.guess_type("x" + suffix)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


@dataclass(frozen=True)
class AssetsConfig:
    """The ``assets`` table: the folder (absolute) and how requests map onto its files."""

    directory: Path
    binding: str | None = None
    html_handling: str = "auto-trailing-slash"
    not_found_handling: str = "none"
    run_worker_first: bool | tuple[str, ...] = False  # or route patterns: "/api/*", "!/api/docs/*"
    navigation_prefers_assets: bool = True  # not-found handling applies to the router only for navigations

    def __post_init__(self) -> None:
        _check_choice(self.html_handling, HTML_HANDLING, "html_handling")
        _check_choice(self.not_found_handling, NOT_FOUND_HANDLING, "not_found_handling")
        rules = self.run_worker_first
        if isinstance(rules, list):
            object.__setattr__(self, "run_worker_first", rules := tuple(rules))
        if isinstance(rules, tuple):
            for index, rule in enumerate(rules):
                if not isinstance(rule, str) or not rule.lstrip("!").startswith("/"):
                    raise ConfigError(None, f"assets.run_worker_first[{index}]",
                                      f'must be a route like "/api/*" or "!/api/docs/*", got {rule!r}')
        elif not isinstance(rules, bool):
            raise ConfigError(None, "assets.run_worker_first",
                              f"must be true, false or a list of routes, got {rules!r}")
        if not self.directory.is_dir():
            raise ConfigError(None, "assets.directory", f'must name an existing folder, but "{self.directory}" '
                                                        "is not one (create it, or fix the path: it is relative "
                                                        "to the config file's folder)")

    @classmethod
    def from_spec(cls, spec: BindingSpec, root: Path, compatibility_date: str = NAVIGATION_DATE,
                  compatibility_flags: tuple[str, ...] = ()) -> AssetsConfig:
        settings = spec.settings
        directory = settings.get("directory")
        if not isinstance(directory, str) or not directory:
            raise ConfigError(None, "assets.directory", 'is required: the folder of files to serve, e.g. "./public"')
        navigation = NAVIGATION_FLAG in compatibility_flags or (
            compatibility_date >= NAVIGATION_DATE and NAVIGATION_OFF_FLAG not in compatibility_flags)
        return cls((root / directory).resolve(), spec.name, settings.get("html_handling", "auto-trailing-slash"),
                   settings.get("not_found_handling", "none"), settings.get("run_worker_first", False), navigation)


def _check_choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(None, f"assets.{key}", f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")


# --- .assetsignore: gitignore patterns -------------------------------------------------------------


@dataclass(frozen=True)
class _IgnoreRule:
    regex: re.Pattern[str]
    negated: bool
    directory_only: bool


class IgnoreRules:
    """gitignore-style patterns over paths relative to the assets folder ("a/b.txt")."""

    def __init__(self, lines: list[str]) -> None:
        self.rules = [rule for line in lines if (rule := _compile_rule(line)) is not None]

    def is_ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        # as in git: a file inside an ignored folder is ignored, whatever later rules say of the file
        for depth in range(1, len(parts)):
            if self._matches("/".join(parts[:depth]), is_dir=True):
                return True
        return self._matches(relative, is_dir=False)

    def _matches(self, path: str, is_dir: bool) -> bool:
        ignored = False
        for rule in self.rules:
            if (is_dir or not rule.directory_only) and rule.regex.match(path):
                ignored = not rule.negated
        return ignored


def _compile_rule(line: str) -> _IgnoreRule | None:
    pattern = line.rstrip("\r").rstrip(" ")
    if not pattern or pattern.startswith("#"):
        return None
    negated = pattern.startswith("!")
    pattern = pattern[1:] if negated else pattern.removeprefix("\\")
    directory_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern  # a slash anywhere but the end ties the pattern to the folder's top
    pattern = pattern.lstrip("/")
    if not pattern:
        return None
    body = _glob_regex(pattern)
    return _IgnoreRule(re.compile(("" if anchored else "(?:.*/)?") + body + r"\Z"), negated, directory_only)


def _glob_regex(pattern: str) -> str:
    parts = pattern.split("/")
    out = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
        else:
            out.append(_segment_regex(part) + ("" if last else "/"))
    return "".join(out)


def _segment_regex(segment: str) -> str:
    out, index = [], 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and index + 1 < len(segment):
            index += 1
            out.append(re.escape(segment[index]))
        elif char == "[" and (end := segment.find("]", index + 2)) != -1:
            inner = segment[index + 1:end]
            out.append("[" + ("^" + inner[1:] if inner[:1] in "!^" and inner else inner.replace("\\", "\\\\")) + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


# --- the files ----------------------------------------------------------------------------------


class AssetStore:
    """The files under one folder, by URL path ("/css/site.css"); anything outside it, or ignored, is absent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self._ignore: tuple[int | None, IgnoreRules] = (None, IgnoreRules(list(ALWAYS_IGNORED)))
        self._hashes: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def find(self, pathname: str) -> Path | None:
        """The file a decoded URL path names, or None."""
        segments = pathname[1:].split("/") if pathname.startswith("/") else [""]
        if any(segment in ("", ".", "..") or "\\" in segment or "\0" in segment for segment in segments):
            return None  # a folder ("/docs/"), or a step out of the folder
        file = self.directory.joinpath(*segments)
        try:
            resolved = file.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not resolved.is_relative_to(self.directory) or not resolved.is_file():
            return None  # a symlink pointing out of the folder, or a folder
        if self._ignore_rules().is_ignored("/".join(segments)):
            return None
        return resolved

    def _ignore_rules(self) -> IgnoreRules:
        """Re-read when .assetsignore changes: edits apply without a restart, as with the files themselves."""
        file = self.directory / IGNORE_FILE
        try:
            stamp = file.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._ignore[0]:
            text = file.read_text(encoding="utf-8", errors="replace") if stamp is not None else ""
            self._ignore = (stamp, IgnoreRules([*ALWAYS_IGNORED, *text.split("\n")]))
        return self._ignore[1]

    def etag(self, file: Path) -> str:
        """A hash of the content (as Cloudflare's manifest keeps), remembered until the file changes."""
        stat = file.stat()
        stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        cached = self._hashes.get(file)
        if cached is None or cached[0] != stamp:
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    digest.update(chunk)
            cached = self._hashes[file] = (stamp, digest.hexdigest()[:32])
        return cached[1]


# --- responses -----------------------------------------------------------------------------------


class StaticAssets:
    """A Worker's static assets: the router's decision, and the asset worker's responses."""

    def __init__(self, config: AssetsConfig) -> None:
        self.config = config
        self.store = AssetStore(config.directory)

    @classmethod
    def for_config(cls, config: WorkerConfig) -> StaticAssets | None:
        """None when the config declares no ``assets``; a missing folder is a ConfigError naming the file."""
        spec = next((spec for spec in config.bindings if spec.kind == "assets"), None)
        if spec is None:
            return None
        try:
            settings = AssetsConfig.from_spec(spec, config.root, config.compatibility_date, config.compatibility_flags)
        except ConfigError as error:
            raise error.with_file(config.file) from None
        return cls(settings)

    async def route(self, request: Request) -> Response | None:
        """The router ahead of the Worker: an asset response, or None to run the Worker."""
        pathname = urlsplit(request.url).path
        rules = self.config.run_worker_first
        if rules is True:
            return None
        if isinstance(rules, tuple):
            if any(matches_route(rule[1:], pathname) for rule in rules if rule.startswith("!")):
                return await self.fetch(request)  # excluded from the Worker: the assets answer, 404 included
            if any(matches_route(rule, pathname) for rule in rules if not rule.startswith("!")):
                return None
        # As Cloudflare asks the asset worker "can you serve this?": not-found handling counts only
        # for a browser's navigation, so other misses (fetch() from a page, API calls) reach the Worker.
        navigation = request.headers.get("sec-fetch-mode") == "navigate" and self.config.navigation_prefers_assets
        handling = self.config.not_found_handling if navigation else "none"
        return await asyncio.to_thread(self._respond, request, handling)

    async def fetch(self, request: Request) -> Response:
        """The asset worker itself, as ``env.ASSETS.fetch`` reaches it: a path with no asset is a 404."""
        response = await asyncio.to_thread(self._respond, request, self.config.not_found_handling)
        return response if response is not None else Response(None, status=404)

    def _respond(self, request: Request, not_found_handling: str) -> Response | None:
        url = urlsplit(request.url)
        pathname = decode_path(url.path)
        if pathname is None:
            return None
        intent = resolve_intent(pathname, self.config.html_handling, not_found_handling, self.store.find)
        if intent is None:
            return None
        if request.method not in ("GET", "HEAD"):
            return Response(None, status=405)
        destination = intent.redirect or pathname
        location = encode_path(destination)
        if intent.redirect is not None or location != url.path:
            return Response(None, status=307, headers={"location": location + (f"?{url.query}" if url.query else "")})
        assert intent.file is not None
        try:
            return self._file_response(request, intent.file, intent.status)
        except FileNotFoundError:  # deleted since it was found
            return None

    def _file_response(self, request: Request, file: Path, status: int) -> Response:
        etag = f'"{self.store.etag(file)}"'
        size = file.stat().st_size
        headers = {"etag": etag, "content-type": content_type(file.name)}
        if "authorization" not in request.headers and "range" not in request.headers:
            headers["cache-control"] = CACHE_CONTROL
        if request.headers.get("if-none-match") in (etag, f"W/{etag}"):
            return Response(None, status=304, headers=headers)
        start, end = 0, size - 1
        wanted = _byte_range(request, etag, size) if status == 200 else None
        if wanted == UNSATISFIABLE:
            return Response(None, status=416, headers={**headers, "content-range": f"bytes */{size}"})
        if wanted is not None:
            start, end = wanted
            headers["content-range"] = f"bytes {start}-{end}/{size}"
            status = 206
        headers["accept-ranges"] = "bytes"
        headers["content-length"] = str(end - start + 1)
        body = None if request.method == "HEAD" or end < start else _read(file, start, end - start + 1)
        return Response(body, status=status, headers=headers)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
UNSATISFIABLE = (-1, -1)


def _byte_range(request: Request, etag: str, size: int) -> tuple[int, int] | None:
    """One byte range asked for, (first, last); several, malformed or a stale If-Range: the whole file."""
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header is None or (if_range is not None and if_range != etag):
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        count = int(last)
        return (max(size - count, 0), size - 1) if count and size else UNSATISFIABLE
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    return (start, end) if start < size else UNSATISFIABLE


async def _read(file: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, each read on a worker thread: a large file is never held whole."""
    handle = await asyncio.to_thread(file.open, "rb")
    try:
        await asyncio.to_thread(handle.seek, offset)
        while length > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        handle.close()


# --- env.ASSETS ----------------------------------------------------------------------------------


class AssetsBinding:
    """``env.ASSETS``: ``await env.ASSETS.fetch(request_or_url, **init)`` answers as the asset router would."""

    def __init__(self, assets: StaticAssets) -> None:
        self._assets = assets

    async def fetch(self, input: str | Request, init: dict[str, Any] | None = None, **options: Any) -> Response:
        options = {**(init or {}), **options}
        request = input if isinstance(input, Request) and not options else Request(input, **options)
        return await self._assets.fetch(request)

    def __repr__(self) -> str:
        return f"<assets binding {self._assets.config.binding} on {self._assets.config.directory}>"


def open_binding(spec: BindingSpec, state: StateDir) -> AssetsBinding:
    """The folder is taken from the config file's folder, as wrangler takes it."""
    config_file = state.config_file
    root = config_file.parent if config_file is not None else Path.cwd()
    try:
        return AssetsBinding(StaticAssets(AssetsConfig.from_spec(spec, root)))
    except ConfigError as error:
        raise (error.with_file(config_file) if config_file is not None else error) from None
