"""Static assets ahead of the Worker: content types, ETag/304, ranges, env.ASSETS, safe paths, .assetsignore, streaming."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from assets_fixtures import NAVIGATE, SITE, write_site
from workers import Request

from edge_runtime.bindings import OpenBindings, StateDir, UnsupportedBinding
from edge_runtime.bindings.assets import (
    CACHE_CONTROL,
    CHUNK_BYTES,
    AssetsBinding,
    AssetsConfig,
    IgnoreRules,
    StaticAssets,
    content_type,
    open_binding,
)
from edge_runtime.config import BindingSpec, ConfigError, load_config
from edge_runtime.edge import Edge


def assets_for(folder: Path, **settings) -> StaticAssets:
    return StaticAssets(AssetsConfig(folder.resolve(), "ASSETS", **settings))


# --- serving ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("index.html", "text/html; charset=utf-8"), ("site.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"), ("mod.mjs", "text/javascript; charset=utf-8"),
    ("data.json", "application/json"), ("logo.svg", "image/svg+xml"), ("favicon.ico", "image/vnd.microsoft.icon"),
    ("photo.jpg", "image/jpeg"), ("photo.JPEG", "image/jpeg"), ("icon.png", "image/png"), ("pic.webp", "image/webp"),
    ("font.woff2", "font/woff2"), ("notes.txt", "text/plain; charset=utf-8"), ("app.wasm", "application/wasm"),
    ("blob.unknownext", "application/octet-stream"), ("Makefile", "application/octet-stream"),
])
def test_content_types_are_cloudflares(name: str, expected: str) -> None:
    assert content_type(name) == expected


async def test_assets_are_served_before_the_worker_at_every_pop(tmp_path: Path) -> None:
    edge = Edge(load_config(write_site(tmp_path, "")))
    try:
        for pop in edge.pops:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=pop), base_url="http://edge") as client:
                reply = await client.get("/css/site.css")
                assert (reply.status_code, reply.text) == (200, "body{}")
                assert reply.headers["content-type"] == "text/css; charset=utf-8"
                assert reply.headers["cf-ray"].endswith(pop.colo)
                assert (await client.get("/api/thing")).text == "worker GET /api/thing"
    finally:
        await edge.aclose()


async def test_get_and_head_serve_the_file_other_methods_are_405_or_reach_the_worker(site) -> None:
    client = site()
    got = await client.get("/js/app.js")
    assert got.status_code == 200 and got.text == "console.log(1)"
    assert got.headers["content-type"] == "text/javascript; charset=utf-8"
    assert got.headers["content-length"] == "14" and got.headers["cache-control"] == CACHE_CONTROL
    head = await client.head("/js/app.js")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "14"
    assert head.headers["etag"] == got.headers["etag"]
    # as Cloudflare: a method other than GET/HEAD on a path an asset answers is refused by the assets
    assert (await client.post("/js/app.js", content=b"x")).status_code == 405
    posted = await client.post("/api/items", content=b"x")
    assert (posted.status_code, posted.text) == (299, "worker POST /api/items")


async def test_etag_is_strong_and_if_none_match_gives_304(site, tmp_path: Path) -> None:
    client = site()
    etag = (await client.get("/notes.txt")).headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    for tag in (etag, f"W/{etag}"):
        cached = await client.get("/notes.txt", headers={"if-none-match": tag})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    assert (await client.get("/notes.txt", headers={"if-none-match": '"other"'})).status_code == 200
    (tmp_path / "site0" / "public" / "notes.txt").write_text("changed!")  # the file changes: so does its ETag
    changed = await client.get("/notes.txt", headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.text == "changed!" and changed.headers["etag"] != etag


@pytest.mark.parametrize(("header", "status", "body", "content_range"), [
    ("bytes=2-5", 206, "2345", "bytes 2-5/10"),
    ("bytes=7-", 206, "789", "bytes 7-9/10"),
    ("bytes=-3", 206, "789", "bytes 7-9/10"),
    ("bytes=8-100", 206, "89", "bytes 8-9/10"),
    ("bytes=10-", 416, "", "bytes */10"),
    ("bytes=0-1,4-5", 200, "0123456789", None),  # several ranges: the whole file
    ("pages=1-2", 200, "0123456789", None),
])
async def test_range_requests(site, header: str, status: int, body: str, content_range: str | None) -> None:
    reply = await site().get("/notes.txt", headers={"range": header})
    assert (reply.status_code, reply.text, reply.headers.get("content-range")) == (status, body, content_range)
    assert "cache-control" not in reply.headers  # Cloudflare leaves it off a request with Range


async def test_a_stale_if_range_gives_the_whole_file(site) -> None:
    client = site()
    etag = (await client.get("/notes.txt")).headers["etag"]
    fresh = await client.get("/notes.txt", headers={"range": "bytes=0-1", "if-range": etag})
    stale = await client.get("/notes.txt", headers={"range": "bytes=0-1", "if-range": '"old"'})
    assert (fresh.status_code, fresh.text) == (206, "01")
    assert (stale.status_code, stale.text) == (200, "0123456789")


async def test_an_authorization_header_leaves_cache_control_off(site) -> None:
    reply = await site().get("/notes.txt", headers={"authorization": "Bearer x"})
    assert reply.status_code == 200 and "cache-control" not in reply.headers


# --- env.ASSETS ----------------------------------------------------------------------------------


async def test_env_assets_fetch_answers_as_the_router_does(site) -> None:
    client = site()
    for path in ("/css/site.css", "/about", "/about.html", "/blog"):
        direct, bound = await client.get(path), await client.get("/binding" + path)
        assert (bound.status_code, bound.content) == (direct.status_code, direct.content)
        for header in ("content-type", "etag", "cache-control", "location", "content-length"):
            assert bound.headers.get(header) == direct.headers.get(header), (path, header)
    ranged = await client.get("/binding/notes.txt", headers={"range": "bytes=0-2"})
    assert (ranged.status_code, ranged.text) == (206, "012")


async def test_env_assets_fetch_takes_a_request(site) -> None:
    reply = await site().get("/binding-request")
    assert reply.status_code == 404  # no asset at /binding-request: the asset worker's 404


async def test_assets_binding_call_shapes(tmp_path: Path) -> None:
    write_site(tmp_path, "")
    binding = AssetsBinding(assets_for(tmp_path / "public"))
    assert await (await binding.fetch("https://example.com/notes.txt")).text() == "0123456789"
    request = Request("https://example.com/data.json", headers={"if-none-match": "nothing"})
    assert (await binding.fetch(request)).headers["content-type"] == "application/json"
    head = await binding.fetch("https://example.com/notes.txt", method="HEAD")
    assert head.status == 200 and head.body is None and head.headers["content-length"] == "10"
    assert (await binding.fetch("https://example.com/notes.txt", {"method": "DELETE"})).status == 405
    with pytest.raises(TypeError, match="Invalid URL"):
        await binding.fetch("/notes.txt")


async def test_assets_are_opened_as_a_binding_with_or_without_a_name(tmp_path: Path) -> None:
    write_site(tmp_path, "")
    spec = BindingSpec("assets", "ASSETS", {"directory": "./public", "binding": "ASSETS"})
    binding = open_binding(spec, StateDir(tmp_path / "state", tmp_path / "wrangler.toml"))
    assert (await binding.fetch("https://x/notes.txt")).status == 200
    unnamed = OpenBindings((BindingSpec("assets", None, {"directory": str(tmp_path / "public")}),),
                           StateDir(tmp_path / "state"))
    assert unnamed.by_name == {} and unnamed.unsupported == []
    assert not any(isinstance(value, UnsupportedBinding) for value in unnamed.by_name.values())


# --- paths that would leave the folder --------------------------------------------------------------


@pytest.fixture(params=["none", "single-page-application"])
def guarded(tmp_path: Path, request: pytest.FixtureRequest) -> StaticAssets:
    """public/ with a file, a symlink in and out, beside a secret outside it; with and without an SPA page."""
    public = tmp_path / "public"
    (public / "sub").mkdir(parents=True)
    (public / "sub" / "ok.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("SECRET")
    os.symlink(tmp_path / "secret.txt", public / "link-out.txt")
    os.symlink(tmp_path / "outside", public / "dir-out")
    os.symlink(public / "sub" / "ok.txt", public / "link-in.txt")
    (public / "index.html").write_text("app")
    return assets_for(public, not_found_handling=request.param)


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/.%2e/secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/sub%2f..%2f..%2fsecret.txt", "/%2fetc%2fpasswd",
    "/..%5csecret.txt", "/sub\\..\\..\\secret.txt", "/%5c..%5csecret.txt",
])
async def test_a_path_stepping_out_is_refused(guarded: StaticAssets, path: str) -> None:
    reply = await guarded.fetch(Request("https://example.com" + path))
    assert reply.status == 404 and b"SECRET" not in await reply.bytes()
    # nor does the router serve anything for it (not even the app's page): the Worker gets it
    assert await guarded.route(Request("https://example.com" + path, headers=NAVIGATE)) is None


@pytest.mark.parametrize("path", [
    "//etc/passwd", "/" + str(Path("/tmp/secret.txt")), "/link-out.txt", "/dir-out/secret.txt", "/sub/ok.txt%00.html",
])
async def test_absolute_paths_and_symlinks_out_name_no_file(guarded: StaticAssets, path: str) -> None:
    reply = await guarded.fetch(Request("https://example.com" + path))
    body = await reply.bytes()
    assert b"SECRET" not in body
    # a path like any unknown one: a 404, or the app's page where not-found requests get it (after the
    # redirect to the canonical path, one slash for "//")
    if guarded.config.not_found_handling == "none":
        assert (reply.status, body) == (404, b"")
    elif path.startswith("//"):
        assert reply.status == 307 and reply.headers["location"] == path[1:]
    else:
        assert (reply.status, body) == (200, b"app")


async def test_files_and_symlinks_inside_the_folder_are_served(guarded: StaticAssets) -> None:
    assert await (await guarded.fetch(Request("https://example.com/sub/ok.txt"))).text() == "ok"
    assert await (await guarded.fetch(Request("https://example.com/link-in.txt"))).text() == "ok"
    # an encoded separator is no separator: refused, not taken as /sub/ok.txt
    assert (await guarded.fetch(Request("https://example.com/sub%2fok.txt"))).status == 404
    assert (await guarded.fetch(Request("https://example.com/sub%5cok.txt"))).status == 404


async def test_an_escaping_path_through_the_edge_reaches_the_worker_not_the_file(site, tmp_path: Path) -> None:
    client = site()
    (tmp_path / "site0" / "secret.txt").write_text("SECRET")
    for path in ("/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%5c..%5csecret.txt"):
        reply = await client.get(path)
        assert reply.status_code == 299 and "SECRET" not in reply.text


# --- .assetsignore ---------------------------------------------------------------------------------


async def test_assetsignore_files_are_not_served(site) -> None:
    files = {**SITE, ".assetsignore": "# build leftovers\n*.map\n!keep.map\n/private/\ndrafts/**\n",
             "js/app.js.map": "{}", "keep.map": "kept", "private/key.txt": "k", "drafts/a/b.html": "d",
             "_headers": "/*\n  X: y\n", "sub/_headers": "nested"}
    client = site(files=files)
    for path in ("/js/app.js.map", "/private/key.txt", "/drafts/a/b.html", "/.assetsignore", "/_headers"):
        assert (await client.get(path)).text == f"worker GET {path}", path
        assert (await client.get("/binding" + path)).status_code == 404, path
    assert (await client.get("/keep.map")).text == "kept"
    assert (await client.get("/sub/_headers")).text == "nested"  # only the top-level _headers is wrangler's


@pytest.mark.parametrize(("patterns", "path", "ignored"), [
    (["*.log"], "a/b/c.log", True), (["/*.log"], "a/c.log", False), (["/*.log"], "c.log", True),
    (["build/"], "build/x.js", True), (["build/"], "build", False), (["docs/**/*.md"], "docs/a/b/c.md", True),
    (["docs/**/*.md"], "docs/c.md", True), (["docs/**/*.md"], "other/c.md", False), (["**/tmp"], "a/tmp/x", True),
    (["*.map", "!keep.map"], "keep.map", False), (["secret/", "!secret/ok"], "secret/ok", True),
    (["a?c"], "abc", True), (["a?c"], "a/c", False), (["[ab].txt"], "b.txt", True), (["[!ab].txt"], "b.txt", False),
    (["\\#hash"], "#hash", True), (["# comment"], "# comment", False), (["  "], "x", False),
])
def test_ignore_rules_follow_gitignore(patterns: list[str], path: str, ignored: bool) -> None:
    assert IgnoreRules(patterns).is_ignored(path) is ignored


# --- streaming and config ----------------------------------------------------------------------------


async def test_a_large_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_BYTES * 40 + 123)
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "big.bin").write_bytes(data)
    response = await assets_for(tmp_path / "public").fetch(Request("https://x/big.bin"))
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/octet-stream"
    sizes, digest = [], hashlib.sha256()
    async for chunk in response.body:
        sizes.append(len(chunk))
        digest.update(chunk)
    assert max(sizes) <= CHUNK_BYTES and len(sizes) == 41 and digest.digest() == hashlib.sha256(data).digest()


async def test_a_missing_directory_stops_the_start_naming_the_key_and_file(tmp_path: Path) -> None:
    root = write_site(tmp_path, "", files={})  # no files: no public/ folder
    assert not (root / "public").exists()
    with pytest.raises(ConfigError) as caught:
        Edge(load_config(root))
    error = caught.value
    assert error.key == "assets.directory" and error.file == (root / "wrangler.toml").resolve()
    assert "must name an existing folder" in error.message and str(root / "public") in error.message


async def test_assets_without_a_directory_is_a_config_error(tmp_path: Path) -> None:
    root = write_site(tmp_path, "")
    (root / "wrangler.toml").write_text((root / "wrangler.toml").read_text().replace('directory = "./public"\n', ""))
    with pytest.raises(ConfigError, match="'assets.directory' is required"):
        Edge(load_config(root))


async def test_assets_without_a_binding_are_still_served(tmp_path: Path) -> None:
    root = write_site(tmp_path, "")
    (root / "wrangler.toml").write_text((root / "wrangler.toml").read_text().replace('binding = "ASSETS"\n', ""))
    edge = Edge(load_config(root))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://e") as client:
            assert (await client.get("/notes.txt")).text == "0123456789"
    finally:
        await edge.aclose()


# --- examples/assets-spa -----------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "assets-spa"


async def test_the_assets_spa_example(tmp_path: Path) -> None:
    edge = Edge(load_config(EXAMPLE), persist_to=tmp_path)
    index = (EXAMPLE / "public" / "index.html").read_text()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://e") as client:
            home = await client.get("/")
            assert (home.status_code, home.text) == (200, index) and home.headers["etag"]
            script = await client.get("/app.js")
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
            assert (await client.get("/style.css")).headers["content-type"] == "text/css; charset=utf-8"
            api = await client.get("/api/hello")
            assert api.json()["message"] == "Hello from the API" and api.json()["colo"]
            assert (await client.get("/api/nope")).status_code == 404
            assert (await client.get("/settings", headers=NAVIGATE)).text == index
            assert (await client.get("/settings")).text == index  # through the Worker's env.ASSETS.fetch
            redirect = await client.get("/index.html")
            assert redirect.status_code == 307 and redirect.headers["location"] == "/"
    finally:
        await edge.aclose()
