"""The same ``edgewise backend serve --tp 2 --pp 2`` under torchrun on two "nodes" (two torchrun
agents over loopback, two ranks each) serves exactly what one process generates, greedy and seeded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gpu_backend import LLM
from gpu_backend.cluster.launch import free_port
from gpu_backend.server.schemas import parse_text_generation

TOKEN = "torchrun-token"
READY = re.compile(r"Ready on (http://\S+)")
START_TIMEOUT_S = 240.0
BODIES = [{"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 16},  # greedy
          {"prompt": "The quick brown fox", "raw": True, "temperature": 0.8, "top_p": 0.9, "seed": 7,
           "max_tokens": 16}]
STOP_TIMEOUT_S = 30.0


def _node(node_rank: int, master_port: int, folder: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(master_port),
               "-m", "wrangler_like_cli.main", "backend", "serve", "--model", f"@cf/test/llama={folder}",
               "--tp", "2", "--pp", "2", "--device", "cpu", "--dtype", "float32", "--port", "0",
               "--instance-timeout", "60"]
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
        replies = [httpx.post(f"{url}/client/v4/accounts/a/ai/run/@cf/test/llama", timeout=60, json=body,
                              headers={"authorization": f"Bearer {TOKEN}"}) for body in BODIES]
        health = httpx.get(f"{url}/healthz", timeout=10)
    finally:
        codes = [_stop(node) for node in nodes]
    llm = LLM(str(folder), progress=False, device="cpu", dtype="float32")
    for body, reply in zip(BODIES, replies):
        expected = llm.generate(body["prompt"], parse_text_generation(body, "@cf/test/llama").sampling)[0]
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"]["response"] == expected.outputs[0].text
    assert health.status_code == 200
    assert None not in codes, f"a node did not stop within {STOP_TIMEOUT_S} s of Ctrl-C"
