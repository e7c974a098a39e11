"""At-least-once delivery across a crash: ``edgewise dev`` killed with SIGKILL in the middle of a queue
batch delivers that batch again on the next start, with one more attempt, and no message is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_S = 20.0
HANDLED_S = 15.0
BATCH_SIZE = 4
MESSAGES = 10

WRANGLER_TOML = f"""\
name = "crash"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[edgewise]
pops = ["DFW"]
latency = false

[[queues.producers]]
binding = "JOBS"
queue = "jobs"

[[queues.consumers]]
queue = "jobs"
max_batch_size = {BATCH_SIZE}
max_batch_timeout = 0
"""
# Each delivery appends "<id> <n> <attempts>" to handled.log; while the file "slow" exists, the handler
# then sleeps far longer than the test waits, so the kill lands mid-batch.
WORKER = """\
import asyncio
import os
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        count = int((await request.json())["count"])
        await self.env.JOBS.sendBatch([{"body": {"n": n}} for n in range(count)])
        return Response("sent")

    async def queue(self, batch):
        folder = self.env.WORK
        with open(os.path.join(folder, "handled.log"), "a") as log:
            for message in batch.messages:
                log.write(f"{message.id} {message.body['n']} {message.attempts}\\n")
        if os.path.exists(os.path.join(folder, "slow")):
            await asyncio.sleep(600)
"""


def edgewise_command() -> list[str]:
    script = Path(sys.executable).with_name("edgewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wrangler_like_cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dev(project: Path, work: Path, port: int, run: int) -> subprocess.Popen[bytes]:
    output = (work / f"dev-{run}.log").open("wb")
    process = subprocess.Popen(
        [*edgewise_command(), "dev", str(project), "--port", str(port), "--no-reload", "--var", f"WORK:{work}"],
        stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"edgewise dev exited with {process.returncode}:\n{(work / f'dev-{run}.log').read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"edgewise dev did not listen within {START_S} s")


def handled(work: Path) -> list[tuple[str, int, int]]:
    log = work / "handled.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(id, int(n), int(attempts)) for id, n, attempts in (line.split() for line in lines)]


def wait_for_lines(work: Path, count: int, process: subprocess.Popen[bytes]) -> list[tuple[str, int, int]]:
    deadline = time.monotonic() + HANDLED_S
    while len(handled(work)) < count:
        assert process.poll() is None, "edgewise dev exited"
        assert time.monotonic() < deadline, f"only {len(handled(work))} of {count} deliveries within {HANDLED_S} s"
        time.sleep(0.05)
    return handled(work)


def stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def test_a_batch_killed_mid_handler_is_delivered_again(tmp_path: Path) -> None:
    project, work = tmp_path / "worker", tmp_path / "work"
    (project / "src").mkdir(parents=True)
    work.mkdir()
    (project / "wrangler.toml").write_text(WRANGLER_TOML)
    (project / "src" / "entry.py").write_text(WORKER)
    (work / "slow").touch()

    port = free_port()
    first = start_dev(project, work, port, 1)
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/", json={"count": MESSAGES}, timeout=10)
        assert response.text == "sent"
        killed_batch = wait_for_lines(work, BATCH_SIZE, first)  # the first batch is in its handler, sleeping
    finally:
        stop(first, signal.SIGKILL)
    assert [(n, attempts) for _, n, attempts in killed_batch] == [(n, 1) for n in range(BATCH_SIZE)]

    (work / "slow").unlink()
    second = start_dev(project, work, free_port(), 2)
    try:
        after = wait_for_lines(work, BATCH_SIZE + MESSAGES, second)[BATCH_SIZE:]
    finally:
        stop(second, signal.SIGINT)
    again = {id: attempts for id, _, attempts in after}
    assert {id: again.get(id) for id, _, _ in killed_batch} == {id: 2 for id, _, _ in killed_batch}
    assert sorted(n for _, n, _ in after) == list(range(MESSAGES))  # every message handled
    assert sorted(attempts for _, _, attempts in after) == [1] * (MESSAGES - BATCH_SIZE) + [2] * BATCH_SIZE
