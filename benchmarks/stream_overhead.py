"""What the edge adds to a token stream: WebSocket clients through the front door, a PoP and a Worker
(which relays env.AI.run's SSE stream frame by frame) versus clients on the backend's own WebSocket.

One backend process (`edgewise backend serve`, the built-in model on CPU) serves both paths, so
the engine's work is the same; `edgewise dev` runs benchmarks/stream_overhead_worker with latency
simulation off. Every event carries `emitted_ns` (the backend's wall clock when it sent the
event, asked for with `x-edgewise-trace`); a client stamps each frame when it arrives, so
"emit -> receive" is measured per token on one machine's clock. The edge path's figure minus the
direct path's, at the same percentile, is what the edge adds. Time to first token is reported
whole, and also as what the edge can add to it: the request's way in (client send -> the service
has it, from the first event's `received_ns`) plus the first token's way out; neither contains
the engine's own time, which varies by several ms from one request to the next and would drown
a 1 ms difference between two medians. Phases:

1. latency: one stream at a time, edge and direct interleaved;
2. load: N concurrent streams through the front door (default 200), then N on the backend directly;
   every stream must complete with no error.

Prints a summary and writes benchmarks/results/stream_overhead.json.

    python benchmarks/stream_overhead.py [--rounds 40] [--tokens 64] [--concurrency 200] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "stream_overhead_worker"
RESULTS = ROOT / "benchmarks" / "results" / "stream_overhead.json"
MODEL = "@cf/edgewise/tiny-shakespeare"
READY_TIMEOUT_S = 180
STREAM_TIMEOUT_S = 120
PROMPTS = ["ROMEO:", "JULIET:", "First Citizen:", "KING RICHARD III:", "Nurse:", "HAMLET:", "MENENIUS:", "LEONTES:"]


@dataclass
class Stream:
    ttft_ms: float = 0.0
    to_emit_ms: float = 0.0  # client send -> the backend emits the first token (request path + prefill)
    request_path_ms: float = 0.0  # client send -> the backend has the request (no engine time in it)
    in_service_ms: float = 0.0  # the backend has the request -> it emits the first token
    token_ms: list[float] = field(default_factory=list)  # emit -> receive, per text frame
    error: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen, str]:
    """Start a server process and return it with the URL its ready line names."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    lines = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{command[3]} exited before it was ready:\n" + "".join(lines[-20:]))
        lines.append(line)
        if ready in line:
            os.set_blocking(process.stdout.fileno(), False)  # nobody reads it from here on
            return process, line.split(ready, 1)[1].strip()
    process.kill()
    raise RuntimeError(f"{command[3]} not ready after {READY_TIMEOUT_S} s")


def worker_project(folder: Path, backend_url: str, token: str) -> Path:
    shutil.copytree(WORKER, folder, dirs_exist_ok=True)
    with (folder / "wrangler.toml").open("a") as config:
        config.write(f'\n[edgewise]\npops = ["DFW"]\nlatency = false\n\n[[edgewise.backends]]\n'
                     f'url = "{backend_url}"\ntoken = "{token}"\n')
    return folder


async def one_stream(url: str, headers: dict[str, str], inputs: dict, is_done) -> Stream:  # noqa: ANN001
    result = Stream()
    try:
        async with websockets.connect(url, additional_headers=headers, max_size=None) as socket_:
            sent, sent_ns = time.perf_counter(), time.time_ns()
            await socket_.send(json.dumps(inputs))
            async with asyncio.timeout(STREAM_TIMEOUT_S):
                while True:
                    raw = await socket_.recv()
                    received_ns = time.time_ns()
                    if is_done(raw):
                        break
                    frame = json.loads(raw)
                    if "error" in frame:
                        result.error = str(frame["error"])
                        break
                    if frame.get("response"):
                        if not result.token_ms:
                            result.ttft_ms = (time.perf_counter() - sent) * 1e3
                            result.to_emit_ms = (frame["emitted_ns"] - sent_ns) / 1e6
                            result.request_path_ms = (frame["received_ns"] - sent_ns) / 1e6
                            result.in_service_ms = (frame["emitted_ns"] - frame["received_ns"]) / 1e6
                        result.token_ms.append((received_ns - frame["emitted_ns"]) / 1e6)
                        if frame.get("done"):
                            break
    except Exception as error:  # noqa: BLE001 - a failed stream is counted, not fatal
        result.error = f"{type(error).__name__}: {error}"
    return result


def direct_done(raw: str) -> bool:
    return '"done":true' in raw and '"response":""' in raw


def edge_done(raw: str) -> bool:
    return raw == "[DONE]"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": round(statistics.fmean(ordered), 4),
            "n": len(ordered)}


def summary(streams: list[Stream]) -> dict:
    return {"streams": len(streams), "errors": sum(s.error is not None for s in streams),
            "first_errors": [s.error for s in streams if s.error][:3],
            "per_token_ms": percentiles([t for s in streams for t in s.token_ms]),
            "ttft_ms": percentiles([s.ttft_ms for s in streams if s.token_ms]),
            "send_to_first_emit_ms": percentiles([s.to_emit_ms for s in streams if s.token_ms]),
            "request_path_ms": percentiles([s.request_path_ms for s in streams if s.token_ms]),
            "in_service_to_first_emit_ms": percentiles([s.in_service_ms for s in streams if s.token_ms]),
            "first_token_emit_to_receive_ms": percentiles([s.token_ms[0] for s in streams if s.token_ms])}


def added(edge: dict, direct: dict, key: str) -> dict[str, float]:
    return {q: round(edge[key][q] - direct[key][q], 4) for q in ("p50", "p90", "p99") if q in edge[key]}


async def latency_phase(paths: dict, rounds: int, tokens: int) -> dict:
    streams: dict[str, list[Stream]] = {"edge": [], "direct": []}
    for index in range(rounds):
        inputs = {"prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": tokens, "ignore_eos": True, "seed": index + 1}
        for name in ("direct", "edge") if index % 2 else ("edge", "direct"):
            url, headers, done = paths[name]
            streams[name].append(await one_stream(url, headers, inputs, done))
    return {name: summary(found) for name, found in streams.items()}


async def load_phase(path: tuple, concurrency: int, tokens: int) -> tuple[dict, float]:
    url, headers, done = path
    started = time.perf_counter()
    streams = await asyncio.gather(*[
        one_stream(url, headers, {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "ignore_eos": True,
                                  "seed": i + 1}, done)
        for i in range(concurrency)])
    return summary(list(streams)), round(time.perf_counter() - started, 3)


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    packages = ("torch", "starlette", "uvicorn", "websockets", "aiohttp")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            **{name: version(name) for name in packages}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved single streams per path")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent streams in the load phase")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "EDGEWISE_BACKEND_TOKEN": token}
    cli = [sys.executable, "-m", "wrangler_like_cli.main"]
    backend, backend_url = start([*cli, "backend", "serve", "--model", MODEL, "--port", str(free_port()),
                                  "--device", "cpu", "--max-queue", "1024"], env, "Ready on ")
    with tempfile.TemporaryDirectory() as tmp:
        project = worker_project(Path(tmp) / "worker", backend_url, token)
        env.pop("EDGEWISE_BACKEND_TOKEN")
        dev, front = start([*cli, "dev", str(project), "--port", str(free_port()), "--no-reload", "--latency", "off",
                            "--log-level", "error"], env, "Ready on ")
        try:
            ws = backend_url.replace("http://", "ws://")
            paths = {"direct": (f"{ws}/client/v4/accounts/bench/ai/run/{MODEL}",
                                {"authorization": f"Bearer {token}", "x-edgewise-trace": "1"}, direct_done),
                     "edge": (front.replace("http://", "ws://") + "/", {}, edge_done)}
            asyncio.run(latency_phase(paths, 2, 8))  # warm-up: imports, connections, first compilations
            latency = asyncio.run(latency_phase(paths, args.rounds, args.tokens))
            edge_load, edge_s = asyncio.run(load_phase(paths["edge"], args.concurrency, args.tokens))
            direct_load, direct_s = asyncio.run(load_phase(paths["direct"], args.concurrency, args.tokens))
        finally:
            for process in (dev, backend):
                process.terminate()
                process.wait(timeout=30)
    report = {
        "benchmark": "stream_overhead", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": environment(),
        "config": {"model": MODEL, "device": "cpu", "tokens_per_stream": args.tokens, "rounds": args.rounds,
                   "concurrency": args.concurrency, "pops": ["DFW"], "latency_simulation": False},
        "latency": {**latency, "added_per_token_ms": added(latency["edge"], latency["direct"], "per_token_ms"),
                    "added_ttft_ms": added(latency["edge"], latency["direct"], "ttft_ms"),
                    "added_send_to_first_emit_ms": added(latency["edge"], latency["direct"], "send_to_first_emit_ms"),
                    "added_request_path_ms": added(latency["edge"], latency["direct"], "request_path_ms"),
                    "added_ttft_without_engine_p50_ms": round(
                        added(latency["edge"], latency["direct"], "request_path_ms")["p50"]
                        + added(latency["edge"], latency["direct"], "first_token_emit_to_receive_ms")["p50"], 4),
                    "added_first_token_emit_to_receive_ms": added(latency["edge"], latency["direct"],
                                                                  "first_token_emit_to_receive_ms")},
        "load": {"edge": {**edge_load, "wall_s": edge_s}, "direct": {**direct_load, "wall_s": direct_s},
                 "added_per_token_ms": added(edge_load, direct_load, "per_token_ms")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"latency": report["latency"], "load": report["load"]}, indent=2))


if __name__ == "__main__":
    main()
