"""Cloudflare's asset routing: html_handling, not_found_handling and run_worker_first, as policy and through the edge."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from assets_fixtures import NAVIGATE, SITE, write_site

from edge_runtime.bindings.assets_routing import (
    Intent,
    decode_path,
    matches_route,
    resolve_intent,
)
from edge_runtime.config import ConfigError, load_config
from edge_runtime.edge import Edge


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
