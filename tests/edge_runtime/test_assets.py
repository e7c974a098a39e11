"""Static assets: served ahead of the Worker at every PoP as Cloudflare's asset router serves them
(content types, ETag/304, ranges, html_handling redirects, not_found_handling, run_worker_first),
``env.ASSETS.fetch`` answering the same, no path leaving the folder, .assetsignore, streaming."""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
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
from edge_runtime.bindings.assets_routing import (
    Intent,
    decode_path,
    matches_route,
    resolve_intent,
)
from edge_runtime.config import BindingSpec, ConfigError, load_config
from edge_runtime.edge import Edge

WORKER = """\
from urllib.parse import urlsplit
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path
        if path.startswith("/binding/"):  # the asset router's answer, through env.ASSETS
            return await self.env.ASSETS.fetch("https://any.host/" + request.url.split("/binding/", 1)[1],
                                               headers=dict(request.headers))
        if path == "/binding-request":
            return await self.env.ASSETS.fetch(request)
        return Response(f"worker {request.method} {path}", status=299)
"""

SITE = {
    "index.html": "<h1>home</h1>",
    "about.html": "<h1>about</h1>",
    "blog/index.html": "<h1>blog</h1>",
    "blog/404.html": "blog not found",
    "404.html": "site not found",
    "css/site.css": "body{}",
    "js/app.js": "console.log(1)",
    "data.json": "{}",
    "notes.txt": "0123456789",
}


def write_site(root: Path, assets: str, files: dict[str, str | bytes] = SITE, worker: str = WORKER,
               compatibility_date: str = "2025-11-02") -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "entry.py").write_text(worker)
    (root / "wrangler.toml").write_text(textwrap.dedent(f"""\
        name = "site"
        main = "src/entry.py"
        compatibility_date = "{compatibility_date}"
        compatibility_flags = ["python_workers"]

        [edgewise]
        pops = ["DFW", "LHR", "SIN"]
        latency = false

        [assets]
        directory = "./public"
        binding = "ASSETS"
        """) + textwrap.dedent(assets))
    for name, content in files.items():
        path = root / "public" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``site(assets_toml, files=..., worker=...)``: a client on the front door of an Edge serving it."""
    edges: list[Edge] = []
    clients: list[httpx.AsyncClient] = []

    def start(assets: str = "", **options) -> httpx.AsyncClient:
        edge = Edge(load_config(write_site(tmp_path / f"site{len(edges)}", assets, **options)))
        edges.append(edge)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://edge"))
        return clients[-1]

    yield start
    for client in clients:
        await client.aclose()
    for edge in edges:
        await edge.aclose()


def assets_for(folder: Path, **settings) -> StaticAssets:
    return StaticAssets(AssetsConfig(folder.resolve(), "ASSETS", **settings))


NAVIGATE = {"sec-fetch-mode": "navigate"}


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


# --- html_handling --------------------------------------------------------------------------------

# (mode, request path, status, served body or redirect location); "worker" = the Worker answered
HTML_CASES = {
    "auto-trailing-slash": [
        ("/", 200, "<h1>home</h1>"), ("/index.html", 307, "/"), ("/index", 307, "/"),
        ("/about", 200, "<h1>about</h1>"), ("/about.html", 307, "/about"), ("/about/", 307, "/about"),
        ("/blog/", 200, "<h1>blog</h1>"), ("/blog", 307, "/blog/"), ("/blog/index.html", 307, "/blog/"),
        ("/blog/index", 307, "/blog/"), ("/blog.html", 307, "/blog/"), ("/nothing", 299, "worker"),
    ],
    "force-trailing-slash": [
        ("/", 200, "<h1>home</h1>"), ("/index.html", 307, "/"),
        ("/about/", 200, "<h1>about</h1>"), ("/about", 307, "/about/"), ("/about.html", 307, "/about/"),
        ("/blog/", 200, "<h1>blog</h1>"), ("/blog", 307, "/blog/"), ("/blog/index.html", 307, "/blog/"),
    ],
    "drop-trailing-slash": [
        ("/", 200, "<h1>home</h1>"), ("/index.html", 307, "/"),
        ("/about", 200, "<h1>about</h1>"), ("/about/", 307, "/about"), ("/about.html", 307, "/about"),
        ("/blog", 200, "<h1>blog</h1>"), ("/blog/", 307, "/blog"), ("/blog/index.html", 307, "/blog"),
    ],
    "none": [
        ("/index.html", 200, "<h1>home</h1>"), ("/about.html", 200, "<h1>about</h1>"),
        ("/blog/index.html", 200, "<h1>blog</h1>"), ("/about", 299, "worker"), ("/blog/", 299, "worker"),
        ("/", 299, "worker"),
    ],
}


@pytest.mark.parametrize(("mode", "path", "status", "expected"),
                         [(mode, *case) for mode, cases in HTML_CASES.items() for case in cases])
async def test_html_handling_modes(site, mode: str, path: str, status: int, expected: str) -> None:
    reply = await site(f'html_handling = "{mode}"\n').get(path)
    assert reply.status_code == status
    if status == 307:
        assert reply.headers["location"] == expected
    elif expected == "worker":
        assert reply.text == f"worker GET {path}"
    else:
        assert reply.text == expected and reply.headers["content-type"] == "text/html; charset=utf-8"


BOTH = {"/foo.html", "/foo/index.html", "/bin/index"}  # a page and a folder of the same name; a file "index"


@pytest.mark.parametrize(("mode", "path", "intent"), [
    ("auto-trailing-slash", "/foo", Intent(Path("/foo.html"))),
    ("auto-trailing-slash", "/foo/", Intent(Path("/foo/index.html"))),
    ("auto-trailing-slash", "/foo.html", Intent(None, redirect="/foo")),
    ("auto-trailing-slash", "/foo/index.html", Intent(None, redirect="/foo/")),
    ("force-trailing-slash", "/foo.html", Intent(Path("/foo.html"))),  # /foo/ is the folder's: kept where it is
    ("force-trailing-slash", "/foo", Intent(None, redirect="/foo/")),
    ("drop-trailing-slash", "/foo/index.html", Intent(Path("/foo/index.html"))),
    ("drop-trailing-slash", "/foo/", Intent(None, redirect="/foo")),
    ("auto-trailing-slash", "/bin/index", Intent(Path("/bin/index"))),
    ("none", "/foo", None),
])
def test_html_handling_when_a_page_and_a_folder_share_a_name(mode: str, path: str, intent: Intent | None) -> None:
    assert resolve_intent(path, mode, "none", lambda name: Path(name) if name in BOTH else None) == intent


@pytest.mark.parametrize(("raw", "decoded"), [
    ("/a%20b/%5Bx%5D", "/a b/[x]"), ("//a///b", "/a/b"), ("/%ff", "/%ff"), ("/a.b/.c", "/a.b/.c"),
    ("/%2e%2e/x", None), ("/a/./b", None), ("/a%2fb", None), ("/a%5Cb", None),
])
def test_decode_path(raw: str, decoded: str | None) -> None:
    assert decode_path(raw) == decoded


@pytest.mark.parametrize(("route", "path", "matches"), [
    ("/api/*", "/api/a/b", True), ("/api/*", "/api", False), ("/api*", "/api", True), ("/a.b", "/axb", False),
    ("/*.js", "/x/y.js", True), ("/exact", "/exact/", False),
])
def test_run_worker_first_routes_match_with_stars(route: str, path: str, matches: bool) -> None:
    assert matches_route(route, path) is matches


async def test_a_redirect_keeps_the_query_and_odd_characters_are_made_canonical(site) -> None:
    client = site(files={**SITE, "a b/[x].txt": "odd"})
    assert (await client.get("/about.html?x=1&y=2")).headers["location"] == "/about?x=1&y=2"
    assert (await client.get("/a%20b/%5Bx%5D.txt")).text == "odd"
    odd = await client.get("/a%20b/[x].txt")  # served only at its encoded path, as Cloudflare does
    assert odd.status_code == 307 and odd.headers["location"] == "/a%20b/%5Bx%5D.txt"


async def test_an_unknown_html_handling_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'assets.html_handling' must be one of 'auto-trailing-slash'") as caught:
        Edge(load_config(write_site(tmp_path, 'html_handling = "trailing"\n')))
    assert caught.value.file == (tmp_path / "wrangler.toml").resolve()


# --- not_found_handling ---------------------------------------------------------------------------


async def test_single_page_application_serves_index_for_unknown_navigations(site) -> None:
    client = site('not_found_handling = "single-page-application"\n')
    page = await client.get("/users/42/settings", headers=NAVIGATE)
    assert (page.status_code, page.text) == (200, "<h1>home</h1>")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    # a fetch() from the page is not a navigation: Cloudflare hands the miss to the Worker
    assert (await client.get("/users/42")).text == "worker GET /users/42"
    assert (await client.get("/css/site.css", headers=NAVIGATE)).text == "body{}"  # real files stay themselves
    via_binding = await client.get("/binding/users/42")
    assert (via_binding.status_code, via_binding.text) == (200, "<h1>home</h1>")


async def test_navigations_reach_the_worker_before_the_2025_04_01_compatibility_date(site) -> None:
    client = site('not_found_handling = "single-page-application"\n', compatibility_date="2025-03-01")
    assert (await client.get("/users/42", headers=NAVIGATE)).text == "worker GET /users/42"


async def test_404_page_serves_the_nearest_404_html_with_status_404(site) -> None:
    client = site('not_found_handling = "404-page"\n')
    nested = await client.get("/blog/2024/missing", headers=NAVIGATE)
    assert (nested.status_code, nested.text) == (404, "blog not found")
    top = await client.get("/shop/missing", headers=NAVIGATE)
    assert (top.status_code, top.text) == (404, "site not found")
    assert (await client.get("/binding/shop/missing")).status_code == 404


async def test_none_gives_misses_to_the_worker_and_the_binding_answers_404(site) -> None:
    client = site()
    assert (await client.get("/missing", headers=NAVIGATE)).text == "worker GET /missing"
    missing = await client.get("/binding/missing")
    assert (missing.status_code, missing.content) == (404, b"")


# --- run_worker_first -----------------------------------------------------------------------------


async def test_run_worker_first_true_runs_the_worker_for_every_path(site) -> None:
    client = site("run_worker_first = true\n")
    assert (await client.get("/css/site.css")).text == "worker GET /css/site.css"
    assert (await client.get("/binding/css/site.css")).text == "body{}"


async def test_run_worker_first_routes_and_negations(site) -> None:
    files = {**SITE, "api/data.txt": "asset data", "api/docs/readme.txt": "docs"}
    client = site('run_worker_first = ["/api/*", "!/api/docs/*"]\n', files=files)
    assert (await client.get("/api/data.txt")).text == "worker GET /api/data.txt"
    assert (await client.get("/api/docs/readme.txt")).text == "docs"
    assert (await client.get("/api/docs/missing")).status_code == 404  # excluded paths never reach the Worker
    assert (await client.get("/notes.txt")).text == "0123456789"
    assert (await client.get("/elsewhere")).text == "worker GET /elsewhere"


@pytest.mark.parametrize(("setting", "message"), [
    ('run_worker_first = ["/api/*", "api/*"]', r"'assets.run_worker_first\[1\]' must be a route like \"/api/\*\""),
    ('run_worker_first = "/api/*"', "'assets.run_worker_first' must be true, false or a list of routes"),
    ('not_found_handling = "spa"', "'assets.not_found_handling' must be one of 'none', 'single-page-application'"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Edge(load_config(write_site(tmp_path, setting + "\n")))


async def test_a_reload_with_new_settings_routes_by_them(tmp_path: Path) -> None:
    root = write_site(tmp_path, "")
    edge = Edge(load_config(root))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://e") as client:
            assert (await client.get("/about")).text == "<h1>about</h1>"
            (root / "wrangler.toml").write_text((root / "wrangler.toml").read_text() + 'html_handling = "none"\n')
            edge.reload(load_config(root))
            assert (await client.get("/about")).text == "worker GET /about"
    finally:
        await edge.aclose()


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
