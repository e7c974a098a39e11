"""The edge's cost per request in CPU instructions: deterministic where timings on a shared VM are not.

Runs each app in-process (no sockets) under `valgrind --tool=callgrind` twice, with 0 and with N
requests after the same warm-up, and reports (instructions(N) - instructions(0)) / N:

- `starlette`: a bare Starlette app returning "ok";
- `edge_static`: the anycast front door and one PoP running a Worker that returns "ok";
- `edge_hello`: the same with examples/hello (which serialises its request.cf).

    python benchmarks/edge_instructions.py [--requests 2000]

Prints a table and writes benchmarks/results/edge_instructions.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "edge_instructions.json"

DRIVER = r'''
import dataclasses, sys
from pathlib import Path
import uvloop
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

which, project, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
if which == "starlette":
    async def ok(request):
        return Response("ok", media_type="text/plain;charset=UTF-8")
    app = Starlette(routes=[Route("/", ok)])
else:
    config = load_config(Path(project))
    edgewise = dataclasses.replace(config.edgewise, latency=dataclasses.replace(config.edgewise.latency, enabled=False))
    app = Edge(dataclasses.replace(config, edgewise=edgewise)).front_door
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
         "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"127.0.0.1:8787"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
         "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8787)}
async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}
async def send(message):
    pass
async def main():
    for _ in range(200 + count):
        await app(dict(SCOPE), receive, send)
uvloop.run(main())
'''

STATIC_WORKER = '''from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")
'''


def instructions(driver: Path, which: str, project: Path, count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, str(driver), which, str(project), str(count)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (Debian/Ubuntu: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        driver = work / "driver.py"
        driver.write_text(DRIVER)
        static = work / "static"
        (static / "src").mkdir(parents=True)
        (static / "wrangler.toml").write_text('name = "static"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n')
        (static / "src" / "entry.py").write_text(STATIC_WORKER)
        variants = {"starlette": static, "edge_static": static, "edge_hello": ROOT / "examples" / "hello"}
        per_request = {}
        for name, project in variants.items():
            which = "starlette" if name == "starlette" else "edge"
            base = instructions(driver, which, project, 0)
            loaded = instructions(driver, which, project, args.requests)
            per_request[name] = round((loaded - base) / args.requests)
    result = {
        "device": "CPU instructions counted by valgrind callgrind (independent of machine load)",
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("edgewise", "starlette", "uvloop")},
        "config": {"requests": args.requests, "warmup": 200, "transport": "in-process ASGI calls, no sockets"},
        "instructions_per_request": per_request,
        "edge_static_over_starlette": round(per_request["edge_static"] / per_request["starlette"], 3),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, count in per_request.items():
        print(f"{name:14}{count:>10,} instructions/request")
    print(f"edge_static / starlette: {result['edge_static_over_starlette']:.2f}")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
