"""How long a trivial request waits while another request's Worker is blocked in a synchronous
HTTP client (urllib.request, httpx.Client, http.client) for 2 s.

The edge (``Edge``'s front door) is served by uvicorn on a real port, on this process's event loop;
a separate "upstream" HTTP server on its own threads answers ``/sleep`` after ``--sleep`` seconds.
From client threads (plain sockets, one connection each): ``/slow/<client>`` makes the Worker call
the upstream with that blocking client; while it is in flight, ``/fast`` (a Worker that returns at
once) is sent ``--probes`` times one after another and each answer timed. ``idle`` times ``/fast``
with nothing else in flight. ``--without`` also runs the edge with the handler awaited directly on
the loop (the behaviour before edge_runtime/blocking_io.py), for the figure it replaced.
Writes benchmarks/results/blocking_clients.json.

    python benchmarks/blocking_clients.py [--sleep 2] [--probes 20] [--loop uvloop|asyncio] [--without]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

import edge_runtime.pop as pop_module  # noqa: E402
from edge_runtime import blocking_io  # noqa: E402
from edge_runtime.config import load_config  # noqa: E402
from edge_runtime.edge import Edge  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "blocking_clients.json"
CLIENTS = ("urllib", "httpx", "http.client")
WRANGLER = """\
name = "blocking-clients"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]
[vars]
SLOW_URL = "{url}"
[edgewise]
pops = ["DFW"]
latency = false  # no simulated client RTT: the figures are the edge's own
"""
WORKER = """\
import http.client
import urllib.parse
import urllib.request

import httpx
from workers import Response, WorkerEntrypoint


def blocking_get(kind, url):
    if kind == "urllib":
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.read().decode()
    if kind == "httpx":
        with httpx.Client(timeout=30) as client:
            return client.get(url).text
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", parts.path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urllib.parse.urlsplit(request.url).path
        if path == "/fast":
            return Response("fast")
        return Response("upstream said: " + blocking_get(path.removeprefix("/slow/"), self.env.SLOW_URL + "sleep"))
"""


class Upstream:
    """The slow server, on its own threads; ``arrived`` is set when a ``/sleep`` comes in."""

    def __init__(self, sleep_s: float) -> None:
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.arrived.set()
                time.sleep(sleep_s)
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"slept")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {"p50_ms": statistics.median(ms), "max_ms": ms[-1], "min_ms": ms[0], "n": len(ms)}


def _drive(base: str, upstream: Upstream, probes: int, sleep_s: float) -> dict[str, Any]:
    """Runs on a thread: the edge's loop is left to serve."""
    results: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=60) as fast_client:
        for _ in range(5):
            fast_client.get("/fast")  # warm: the connection and the Worker
        idle = []
        for _ in range(probes):
            started = time.perf_counter()
            assert fast_client.get("/fast").text == "fast"
            idle.append(time.perf_counter() - started)
        results["idle"] = _stats(idle)
        for kind in CLIENTS:
            upstream.arrived.clear()
            slow_reply: dict[str, Any] = {}

            def slow(kind: str = kind, reply: dict[str, Any] = slow_reply) -> None:
                started = time.perf_counter()
                with httpx.Client(base_url=base, timeout=60) as slow_client:
                    reply["text"] = slow_client.get(f"/slow/{kind}").text
                reply["s"] = time.perf_counter() - started

            thread = threading.Thread(target=slow)
            thread.start()
            if not upstream.arrived.wait(30):
                raise RuntimeError(f"the Worker never called the upstream with {kind}")
            during, in_flight = [], []
            for _ in range(probes):
                started = time.perf_counter()
                assert fast_client.get("/fast").text == "fast"
                during.append(time.perf_counter() - started)
                in_flight.append(thread.is_alive())
                if time.perf_counter() - started > sleep_s:
                    break  # the loop is blocked: one probe says so
            thread.join()
            if slow_reply.get("text") != "upstream said: slept":
                raise RuntimeError(f"/slow/{kind} answered {slow_reply.get('text')!r}")
            results[kind] = {"fast_while_slow": _stats(during), "probes_while_slow_in_flight": sum(in_flight),
                             "slow_s": slow_reply["s"]}
    return results


async def _serve_and_drive(sleep_s: float, probes: int) -> dict[str, Any]:
    upstream = Upstream(sleep_s)
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "src").mkdir()
        (project / "wrangler.toml").write_text(WRANGLER.format(url=upstream.url))
        (project / "src" / "entry.py").write_text(WORKER)
        edge = Edge(load_config(project))
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(edge.front_door, host="127.0.0.1", port=port, lifespan="off",
                                               log_level="warning"))  # served on this loop
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            return await asyncio.to_thread(_drive, f"http://127.0.0.1:{port}", upstream, probes, sleep_s)
        finally:
            server.should_exit = True
            await serving
            await edge.aclose()
            upstream.server.shutdown()


async def _invocation_overhead_us(n: int = 20_000) -> dict[str, float]:
    """What wrapping costs a handler with one ``await`` (greenlet creation and switches), per call."""
    async def handler(value: int) -> int:
        await asyncio.sleep(0)
        return value

    async def on_the_loop(function: Any, *call_args: Any) -> Any:
        return await function(*call_args)

    timings: dict[str, list[float]] = {"on_the_loop": [], "released": []}
    for _ in range(3):
        for name, runner in (("on_the_loop", on_the_loop), ("released", blocking_io.run_releasing_loop)):
            started = time.perf_counter()
            for _ in range(n):
                await runner(handler, 1)
            timings[name].append((time.perf_counter() - started) / n * 1e6)
    return {name: min(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds the upstream takes to answer")
    parser.add_argument("--probes", type=int, default=20, help="/fast requests sent during each slow call")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the event loop (edgewise dev uses uvloop where installed)")
    parser.add_argument("--without", action="store_true", help="also run with the handler awaited on the loop")
    args = parser.parse_args()
    if not blocking_io.available():
        raise SystemExit("greenlet is not installed: blocking calls cannot be moved off the loop")
    if args.loop == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    overhead_us = asyncio.run(_invocation_overhead_us())
    runs = {"released": asyncio.run(_serve_and_drive(args.sleep, args.probes))}
    if args.without:
        async def on_the_loop(function: Any, *call_args: Any) -> Any:
            return await function(*call_args)
        pop_module.run_releasing_loop = on_the_loop
        runs["on_the_loop"] = asyncio.run(_serve_and_drive(args.sleep, args.probes))
    report = {
        "benchmark": "blocking_clients",
        "device": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "versions": {name: metadata.version(name) for name in ("greenlet", "httpx", "uvicorn", "uvloop")},
        "config": {"upstream_sleep_s": args.sleep, "probes": args.probes, "clients": list(CLIENTS),
                   "loop": args.loop,
                   "edge": "uvicorn on 127.0.0.1, one PoP, latency = false; clients on threads, one connection each"},
        "results": runs,
        "invocation_overhead_us": overhead_us,
    }
    print(f"per invocation: {overhead_us['released']:.1f} us released, {overhead_us['on_the_loop']:.1f} us on the loop")
    for mode, result in runs.items():
        print(f"{mode}: idle /fast p50 {result['idle']['p50_ms']:.2f} ms")
        for kind in CLIENTS:
            fast = result[kind]["fast_while_slow"]
            print(f"  {kind:12s} /fast during a {args.sleep:g} s blocking call: p50 {fast['p50_ms']:.2f} ms, "
                  f"max {fast['max_ms']:.2f} ms (n={fast['n']}); /slow took {result[kind]['slow_s']:.2f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
