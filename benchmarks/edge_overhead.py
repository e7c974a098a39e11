"""What the edge costs: examples/hello through the front door and one PoP vs a bare Starlette app.

Four servers, each one process pinned to the same core (taskset), with the same uvicorn settings,
driven by the same load generator (wrk, on the other core), interleaved over several rounds in
one run: `edge` (examples/hello), `bare` (Starlette returning the bytes hello produced),
`bare_dynamic` (Starlette doing hello's JSON serialisation per request) and `edge_static` (a
Worker returning the same bytes as `bare`). Latency simulation is off. Prints a table and writes
benchmarks/results/edge_overhead.json.

    python benchmarks/edge_overhead.py [--duration 4] [--rounds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "edge_overhead.json"
BIN = Path(sys.executable).parent

BARE_APP = '''
import sys
from pathlib import Path
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import json
BODY = Path(sys.argv[1]).read_bytes()
DATA = json.loads(BODY)
async def static(request):
    return Response(BODY, media_type="application/json")
async def dynamic(request):
    # The same serialisation work the Worker does for each request.
    return Response(json.dumps(DATA), media_type="application/json")
app = Starlette(routes=[Route("/", static), Route("/dynamic", dynamic)])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready after {timeout_s} s")


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") and os.cpu_count() > 1 else command


STATIC_WORKER = '''
from pathlib import Path
from workers import Response, WorkerEntrypoint
BODY = (Path(__file__).parent.parent / "body.json").read_bytes()
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(BODY, headers={"content-type": "application/json"})
'''


def start_edge(port: int, cpu: int, project: Path) -> subprocess.Popen:
    command = [str(BIN / "edgewise"), "dev", str(project), "--port", str(port),
               "--latency", "off", "--log-level", "warn", "--no-reload"]
    return subprocess.Popen(pinned(cpu, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def static_worker_project(workdir: Path) -> Path:
    """A Worker returning the same bytes as the static bare app: the edge's own cost, like for like."""
    project = workdir / "static-worker"
    (project / "src").mkdir(parents=True)
    (project / "wrangler.toml").write_text('name = "static"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n')
    (project / "src" / "entry.py").write_text(STATIC_WORKER)
    (workdir / "static-worker" / "body.json").write_bytes((workdir / "body.json").read_bytes())
    return project


def start_bare(port: int, cpu: int, body_file: Path, workdir: Path) -> subprocess.Popen:
    (workdir / "bare_app.py").write_text(BARE_APP)
    command = [sys.executable, "-c",
               "import sys, uvicorn; sys.path.insert(0, sys.argv[2]); sys.argv[1:] = sys.argv[1:2];"
               f"uvicorn.run('bare_app:app', port={port}, log_level='warning', access_log=False,"
               " lifespan='off', server_header=False)",
               str(body_file), str(workdir)]
    return subprocess.Popen(pinned(cpu, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wrk(url: str, cpu: int, connections: int, duration_s: int) -> dict[str, float]:
    command = pinned(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", url])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50_ms": _latency(output, "50%"), "p99_ms": _latency(output, "99%"),
            "errors": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0}


def _latency(output: str, label: str) -> float:
    value, unit = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", output).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(urls: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, float]]]]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"load": [], "latency": []} for name in urls}
    for _ in range(args.rounds):
        for name, url in urls.items():  # interleaved, so drift hits every variant alike
            runs[name]["load"].append(wrk(url, 1, args.connections, args.duration))
        for name, url in urls.items():
            runs[name]["latency"].append(wrk(url, 1, 1, args.duration))
    return runs


def median(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(sample[key] for sample in samples)


# (edge variant, bare variant): like for like first, then hello against the static app.
COMPARISONS = (("edge", "bare_dynamic"), ("edge_static", "bare"), ("edge", "bare"))
METRICS = (("rps", "load", "requests/s (c=32)"), ("p50_ms", "latency", "p50 ms (c=1)"),
           ("p99_ms", "latency", "p99 ms (c=1)"), ("p50_ms", "load", "p50 ms (c=32)"),
           ("p99_ms", "load", "p99 ms (c=32)"))


def summarise(runs: dict) -> dict:
    """Medians per variant; the edge compared with the bare app doing the same work, and with a static one."""
    summary = {name: {f"{key}_{mode}": median(runs[name][mode], key) for key, mode, _ in METRICS} for name in runs}
    for edge, bare in COMPARISONS:
        # Ratios are taken round by round (each round runs every variant back to back), then the
        # median: drift in the machine's speed between rounds then cancels out.
        ratios = [e["rps"] / b["rps"] for e, b in zip(runs[edge]["load"], runs[bare]["load"])]
        added = [e["p50_ms"] - b["p50_ms"] for e, b in zip(runs[edge]["latency"], runs[bare]["latency"])]
        summary[f"{edge}_vs_{bare}"] = {"rps_ratio": statistics.median(ratios), "rps_ratio_per_round": ratios,
                                      "added_p50_ms_c1": statistics.median(added)}
    summary["targets"] = {"rps_ratio_min": 0.70, "added_p50_ms_max": 1.0} | {
        f"met_{edge}_vs_{bare}": versus["rps_ratio"] >= 0.70 and versus["added_p50_ms_c1"] < 1.0
        for (edge, bare), versus in ((pair, summary[f"{pair[0]}_vs_{pair[1]}"]) for pair in COMPARISONS)}
    return summary


def environment(args: argparse.Namespace) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "device": f"{cpu}, {os.cpu_count()} cores (server pinned to CPU 0, wrk to CPU 1)",
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: version(name) for name in ("edgewise", "uvicorn", "starlette", "httptools", "uvloop")},
        "load_generator": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "config": {"worker": "examples/hello", "pops": "default six, client routed to DFW", "latency": "off",
                   "request_log": "off (--log-level warn)", "duration_s": args.duration, "rounds": args.rounds,
                   "connections_load": args.connections, "connections_latency": 1, "wrk_threads": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed as the load generator (Debian/Ubuntu: apt-get install wrk)")
    ports = {name: free_port() for name in ("edge", "edge_static", "bare")}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        start = {"edge": lambda: start_edge(ports["edge"], 0, ROOT / "examples" / "hello"),
                 "bare": lambda: start_bare(ports["bare"], 0, workdir / "body.json", workdir),
                 "edge_static": lambda: start_edge(ports["edge_static"], 0, static_worker_project(workdir))}
        for name in ("edge", "bare", "edge_static"):  # bare and edge_static serve the body edge produced
            process = start[name]()
            servers.callback(_stop, process)
            wait_ready(f"http://127.0.0.1:{ports[name]}/")
            if name == "edge":
                body_bytes = (workdir / "body.json").write_bytes(httpx.get(f"http://127.0.0.1:{ports['edge']}/").content)
        runs = measure({"bare": f"http://127.0.0.1:{ports['bare']}/",
                        "bare_dynamic": f"http://127.0.0.1:{ports['bare']}/dynamic",
                        "edge": f"http://127.0.0.1:{ports['edge']}/",
                        "edge_static": f"http://127.0.0.1:{ports['edge_static']}/"}, args)
    result = {**environment(args), "body_bytes": body_bytes,
              "summary": summarise(runs), "runs": runs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result["summary"])
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


def print_table(summary: dict) -> None:
    names = ("bare", "edge_static", "bare_dynamic", "edge")
    print(f"{'':22}" + "".join(f"{name:>16}" for name in names))
    for key, mode, label in METRICS:
        print(f"{label:22}" + "".join(f"{summary[name][f'{key}_{mode}']:>16.3f}" for name in names))
    for edge, bare in COMPARISONS:
        versus = summary[f"{edge}_vs_{bare}"]
        print(f"{edge} vs {bare}: requests/s ratio {versus['rps_ratio']:.2f} (target >= 0.70), "
              f"added p50 at c=1 {versus['added_p50_ms_c1']:.3f} ms (target < 1 ms)")


if __name__ == "__main__":
    main()
