"""``edgewise dev`` as a real process: the examples served over sockets, tail, per-PoP ports, reload, signals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from dev_process import (  # noqa: F401
    STARTUP_TIMEOUT_S,
    DevServer,
    Process,
    edgewise_command,
    free_port,
    free_port_pair,
    is_listening,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RAY = re.compile(r"^[0-9a-f]{16}-([A-Z]{3})$")


@pytest.fixture(scope="module")
def hello() -> Iterator[DevServer]:
    server = DevServer(EXAMPLES / "hello")
    yield server
    server.stop(signal.SIGKILL)


# --- the hello example on the anycast front door --------------------------------------------------


def test_default_client_is_served_by_dfw(hello: DevServer) -> None:
    response = hello.get()
    assert response.status_code == 200
    body = response.json()
    assert body["colo"] == "DFW"
    assert body["message"] == "Hello from the edge"
    ray = response.headers["cf-ray"]
    assert RAY.match(ray).group(1) == body["colo"]
    assert body["ray"] == ray
    assert body["cf"]["country"] == "US"


@pytest.mark.parametrize("header", [
    {"edgewise-client-location": "51.5074,-0.1278"},
    {"edgewise-client-location": "LHR"},
    {"mf-cf-blob": '{"colo": "LHR", "country": "GB"}'},
    {"cf-ipcountry": "GB"},
])
def test_london_client_is_served_by_lhr(hello: DevServer, header: dict[str, str]) -> None:
    response = hello.get(headers=header)
    assert response.status_code == 200
    assert response.json()["colo"] == "LHR"
    assert response.json()["client"]["country"] == "GB"
    assert RAY.match(response.headers["cf-ray"]).group(1) == "LHR"


def test_request_log_line(hello: DevServer) -> None:
    ray = hello.get("/logged").headers["cf-ray"]
    assert hello.wait_for("[wrangler:info] GET /logged 200 OK", stream="stdout")
    assert hello.count(ray) == 1


def test_control_api_lists_the_pops(hello: DevServer) -> None:
    response = hello.get("/cdn-cgi/edgewise/pops")
    assert response.status_code == 200
    assert [pop["colo"] for pop in response.json()] == ["DFW", "SFO", "LHR", "FRA", "SIN", "NRT"]


def test_banner_token_changes_pop_health_and_other_sites_cannot(hello: DevServer) -> None:
    token = re.search(r"control token .*: (\S+)$", hello.output, re.MULTILINE).group(1)
    down = "/cdn-cgi/edgewise/pops/SIN/down"
    cross_site = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "content-type": "text/plain"}
    assert httpx.post(hello.url + down, headers=cross_site, timeout=10).status_code == 403
    assert httpx.post(hello.url + down, timeout=10).status_code == 401
    try:
        taken_down = httpx.post(hello.url + down, headers={"edgewise-control-token": token}, timeout=10)
        assert (taken_down.status_code, taken_down.json()["healthy"]) == (200, False)
    finally:
        up = httpx.post(hello.url + "/cdn-cgi/edgewise/pops/SIN/up", headers={"authorization": f"Bearer {token}"},
                        timeout=10)
    assert up.json()["healthy"] is True
    assert hello.count(token) == 1  # printed once, in the banner


def test_tail_receives_the_event_of_one_request(hello: DevServer) -> None:
    tail = Process(["tail", "--url", hello.url, "--format", "json", "--limit", "1"])
    try:
        # Events before tail subscribes are not replayed: send probes until one arrives and tail exits.
        deadline = time.monotonic() + 15
        probe = 0
        while tail.popen.poll() is None and time.monotonic() < deadline:
            probe += 1
            hello.get(f"/tail-probe-{probe}")
            tail.wait_for("tail-probe", stream="stdout", timeout_s=0.3)
        assert tail.popen.poll() is not None, f"tail got no event in 15 s:\n{tail.output}"
        assert tail.wait(timeout_s=5) == 0, tail.output
    finally:
        tail.stop(signal.SIGKILL)
    events = [json.loads(line) for name, line in tail.lines if name == "stdout"]
    assert len(events) == 1
    event = events[0]
    assert event["outcome"] == "ok"
    assert event["scriptName"] == "hello"
    assert event["event"]["request"]["method"] == "GET"
    assert re.search(r"/tail-probe-\d+$", event["event"]["request"]["url"])
    assert event["event"]["response"]["status"] == 200
    assert event["edgewise"]["colo"] == "DFW"
    assert RAY.match(event["edgewise"]["rayId"]).group(1) == "DFW"


def test_tail_pretty_then_server_stops(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "hello")
    tail = Process(["tail", "--url", server.url])
    try:
        assert tail.wait_for("waiting for logs", stream="stdout"), tail.output
        server.get("/pretty")
        assert tail.wait_for(f"GET http://127.0.0.1:{server.port}/pretty - Ok @", stream="stdout"), tail.output
        assert server.stop() in (0, -signal.SIGINT)
        assert tail.wait(timeout_s=10) == 1
    finally:
        tail.stop(signal.SIGKILL)
    assert tail.count("lost the connection", stream="stderr") == 1
    assert "Traceback" not in tail.output


def test_tail_fails_clearly_without_a_server() -> None:
    tail = Process(["tail", "--url", f"http://127.0.0.1:{free_port()}", "--format", "json"])
    try:
        assert tail.wait(timeout_s=15) == 1
    finally:
        tail.stop(signal.SIGKILL)
    assert tail.count("is `edgewise dev` running there?", stream="stderr") == 1


# --- the other examples ------------------------------------------------------------------------


def test_cron_example(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "cron")
    assert server.get().json() == {"colo": "DFW", "last_run": None}
    triggered = server.get("/__scheduled", params={"cron": "*/5 * * * *"})
    assert (triggered.status_code, triggered.text) == (200, "ok")
    last_run = server.get().json()["last_run"]
    assert last_run["cron"] == "*/5 * * * *"
    assert abs(last_run["scheduledTime"] - time.time() * 1000) < 60_000
    miniflare_style = server.get("/cdn-cgi/handler/scheduled", params={"cron": "0 * * * *", "time": "1000"})
    assert (miniflare_style.status_code, miniflare_style.text) == (200, "ok")
    assert server.get().json()["last_run"]["scheduledTime"] == 1000


async def test_websocket_echo_example(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "websocket-echo")
    page = server.get()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "new WebSocket(" in page.text
    plain = server.get("/ws")
    assert plain.status_code == 426
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as connection:
        assert RAY.match(connection.response.headers["cf-ray"]).group(1) == "DFW"
        for message in ("hello edge", "second", b"\x00\xffbinary"):
            await connection.send(message)
            assert await connection.recv() == message
    assert connection.close_code == 1000


def test_asgi_starlette_example(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "asgi-starlette")
    assert server.get().json()["app"] == "starlette"
    assert server.get("/env").json() == {"MESSAGE": "Hello from a Starlette app on the edge"}
    echoed = httpx.post(server.url + "/echo", content=b"ping", headers={"content-type": "text/plain"}, timeout=10)
    assert echoed.status_code == 200
    assert echoed.json() == {"method": "POST", "content_type": "text/plain", "body": "ping", "colo": "DFW"}


def test_var_override_reaches_the_asgi_app(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "asgi-starlette", "--var", "MESSAGE:from the command line")
    assert server.get("/env").json() == {"MESSAGE": "from the command line"}


def test_cf_override_from_the_command_line(start_dev: Callable[..., DevServer]) -> None:
    server = start_dev(EXAMPLES / "hello", "--cf", '{"asn": 13335, "asOrganization": "edgewise"}')
    cf = server.get().json()["cf"]
    assert (cf["asn"], cf["asOrganization"], cf["colo"]) == (13335, "edgewise", "DFW")


# --- per-PoP ports ------------------------------------------------------------------------------


def test_pop_ports_serve_each_pop_directly(start_dev: Callable[..., DevServer]) -> None:
    base = free_port_pair()
    server = start_dev(EXAMPLES / "hello", "--pops", "DFW,LHR", "--pop-ports", str(base))
    assert f"http://localhost:{base + 1}" in server.output
    for port, colo in ((base, "DFW"), (base + 1, "LHR")):
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert response.status_code == 200
        assert response.json()["colo"] == colo
        assert RAY.match(response.headers["cf-ray"]).group(1) == colo
    assert server.get().json()["colo"] == "DFW"  # the front door still routes the Austin default to Dallas


# --- reload -------------------------------------------------------------------------------------


def edit_until(process: Process, path: Path, text: str, marker: str, timeout_s: float = 15.0) -> None:
    """Write ``text`` until ``marker`` is printed once more (the watcher starts just after "Ready")."""
    seen = process.count(marker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path.write_text(text)
        if process.wait_for(marker, times=seen + 1, timeout_s=2.0):
            return
    pytest.fail(f"no {marker!r} after editing {path.name}:\n{process.output}")


def test_editing_the_worker_reloads_it(start_dev: Callable[..., DevServer], tmp_path: Path) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", project)
    entry = project / "src" / "entry.py"
    original = entry.read_text()
    server = start_dev(project)
    assert server.get().json()["message"] == "Hello from the edge"

    edited = original.replace('"message": self.env.GREETING', '"message": "Edited while running"')
    assert edited != original
    edit_until(server, entry, edited, "Updated and ready")
    assert server.get().json()["message"] == "Edited while running"

    edit_until(server, entry, edited + "\ndef broken(:\n", "Reload failed")
    assert "SyntaxError" in server.output
    assert server.get().json()["message"] == "Edited while running"

    config = project / "wrangler.toml"
    edit_until(server, entry, original, "Updated and ready")
    edit_until(server, config, config.read_text().replace("Hello from the edge", "Vars reload too"),
               "Updated and ready")
    assert server.get().json()["message"] == "Vars reload too"


# --- a project folder that shadows our packages ------------------------------------------------


def test_dev_with_ai_starts_where_a_workers_folder_shadows_the_sdk(tmp_path: Path) -> None:
    """`edgewise dev` run from a project holding `workers/` (say, a vendored copy): the backend it starts
    from there imports our packages, not the folder."""
    if not Path(sys.executable).with_name("edgewise").exists():
        pytest.skip("needs the installed `edgewise` script: `python -m` puts the cwd on sys.path by design")
    project = tmp_path / "chat"
    shutil.copytree(EXAMPLES / "ai-chat", project)
    (project / "workers").mkdir()
    (project / "workers" / "__init__.py").write_text("raise ImportError('the bogus workers package of the cwd')\n")
    port = free_port()
    server = Process(["dev", ".", "--port", str(port), "--no-reload", "--latency", "off"], cwd=project)
    try:
        assert server.wait_for(f"Ready on http://localhost:{port}", stream="stdout", timeout_s=120), server.output
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": False}
        reply = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=chat, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        server.stop(timeout_s=20)
    assert "bogus" not in server.output


# --- stopping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_server(start_dev: Callable[..., DevServer], sig: signal.Signals) -> None:
    server = start_dev(EXAMPLES / "hello")
    assert server.get().status_code == 200
    server.popen.send_signal(sig)
    try:
        returncode = server.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"edgewise dev still running 5 s after {sig.name}:\n{server.output}")
    assert returncode in (0, -sig)
    assert not is_listening(server.port)
    assert "Traceback" not in server.output


# --- several Workers in one edge --------------------------------------------------------------------


def test_two_configs_run_two_workers_joined_by_a_service_binding(start_dev: Callable[..., DevServer],
                                                                 tmp_path: Path) -> None:
    """wrangler's form: `dev -c a/wrangler.jsonc -c b/wrangler.jsonc`; the first is served, the second reached by RPC."""
    front, back = tmp_path / "front", tmp_path / "back"
    for folder, config, code in (
        (front, {"name": "front", "services": [{"binding": "BACK", "service": "back"}]},
         "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
         "    async def fetch(self, request):\n        return Response(await self.env.BACK.shout('hi'))\n"),
        (back, {"name": "back"},
         "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
         "    def shout(self, text):\n        return text.upper() + ' from back'\n"),
    ):
        (folder / "src").mkdir(parents=True)
        (folder / "src" / "entry.py").write_text(code)
        (folder / "wrangler.jsonc").write_text(json.dumps({**config, "main": "src/entry.py",
                                                          "compatibility_date": "2025-11-02",
                                                          "compatibility_flags": ["python_workers"]}))
    server = start_dev(front, "-c", str(front / "wrangler.jsonc"), "-c", str(back / "wrangler.jsonc"), "--no-reload")
    assert server.get().text == "HI from back"


def test_a_workflow_class_the_worker_lacks_stops_the_start_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(
        "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n        return Response('hi')\n")
    (tmp_path / "wrangler.jsonc").write_text(json.dumps({
        "name": "wf", "main": "src/entry.py", "compatibility_date": "2025-11-02",
        "compatibility_flags": ["python_workers"],
        "workflows": [{"binding": "WF", "name": "orders", "class_name": "OrderFlow"}]}))
    process = Process(["dev", str(tmp_path), "--port", str(free_port()), "--no-reload"])
    assert process.wait(STARTUP_TIMEOUT_S) == 1
    assert "[ERROR]" in process.output and "OrderFlow" in process.output
    assert "Traceback" not in process.output


def test_a_workers_local_time_is_utc_whatever_the_machines_zone(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(
        "import datetime\nfrom workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        return Response(str(datetime.datetime.now().astimezone().utcoffset()))\n")
    (tmp_path / "wrangler.toml").write_text('name = "tz"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n'
                                            'compatibility_flags = ["python_workers"]\n')
    os.environ["TZ"], saved = "America/New_York", os.environ.get("TZ")
    try:
        server = DevServer(tmp_path, "--no-reload")
    finally:
        os.environ.pop("TZ") if saved is None else os.environ.__setitem__("TZ", saved)
    try:
        assert server.get().text == "0:00:00"
    finally:
        server.stop(signal.SIGKILL)
