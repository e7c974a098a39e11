"""The same ``edgewise backend serve --tp 2 --pp 2`` under torchrun on two "nodes" (two torchrun
agents over loopback, two ranks each) serves exactly what one process generates."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gpu_backend import LLM, SamplingParams
from gpu_backend.parallel.launch import free_port

TOKEN = "torchrun-token"
READY = re.compile(r"Ready on (http://\S+)")
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


def _node(node_rank: int, master_port: int, folder: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(master_port),
               "-m", "wrangler_like_cli.main", "backend", "serve", "--model", f"@cf/test/llama={folder}",
               "--tp", "2", "--pp", "2", "--device", "cpu", "--dtype", "float32", "--port", "0",
               "--worker-timeout", "60"]
    env = {**os.environ, "EDGEWISE_BACKEND_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _ready_url(process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = READY.search(line)
        if match:
            return match.group(1)
    raise AssertionError("node 0 never became ready:\n" + "".join(seen[-40:]))


def _stop(process: subprocess.Popen[str]) -> int | None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None
    return process.returncode


def test_two_torchrun_nodes_over_loopback_generate_what_one_process_does(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["llama_v4_sharded"]  # 3 layers: stages of 2 and 1, weights in several files
    port = free_port()
    nodes = [_node(rank, port, folder) for rank in (0, 1)]
    try:
        url = _ready_url(nodes[0])
        prompt = "Once upon a time"
        reply = httpx.post(f"{url}/client/v4/accounts/a/ai/run/@cf/test/llama", timeout=60,
                           headers={"authorization": f"Bearer {TOKEN}"},
                           json={"prompt": prompt, "raw": True, "temperature": 0, "max_tokens": 16})
        health = httpx.get(f"{url}/healthz", timeout=10)
    finally:
        codes = [_stop(node) for node in nodes]
    expected = LLM(str(folder), progress=False, device="cpu", dtype="float32").generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=16))[0].outputs[0].text
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["response"] == expected
    assert health.status_code == 200
    assert None not in codes, f"a node did not stop within {STOP_TIMEOUT_S} s of Ctrl-C"
