"""The local backend process: its command line, the wait for its Ready line, its output, and stopping it.

The process logic runs against tiny `python -c` scripts that act out a backend's start-up; one
test starts the real backend with the built-in model sharded over four ranks, and two share a
real backend started from a folder whose subfolders shadow our packages, killed mid-stream at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_runtime.ai_backends import AiBackends
from edge_runtime.backend_process import DEV_TOKEN_ENV, TOKEN_ENV, BackendProcess, BackendStartError, serve_command, served_models
from edge_runtime.config import ConfigError, EdgewiseConfig, LocalBackendConfig, ModelSource, load_config
from edge_runtime.edge import Edge
from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec

TINY = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"


def script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


READY_THEN_SERVE = script(f"""
    import os, sys, time
    print("loading models", flush=True)
    print("[edgewise:backend] Ready on http://127.0.0.1:54321", flush=True)
    token = os.environ["{TOKEN_ENV}"]
    print(f"token has {{len(token)}} characters: {{token}}", flush=True)
    print("oops", file=sys.stderr, flush=True)
    time.sleep(30)
""")


def test_ready_line_gives_the_url_and_later_output_is_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgewise.backend")
    with BackendProcess.start(READY_THEN_SERVE, ready_timeout_s=10) as backend:
        assert backend.url == "http://127.0.0.1:54321"
        spec = backend.spec("LHR")
        assert (spec.url, spec.location, spec.token) == (backend.url, "LHR", backend.token)
        deadline = time.monotonic() + 5
        while "oops" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert backend.process.poll() is not None  # stopped on leaving the block
    infos = [r.getMessage() for r in caplog.records if r.name == "edgewise.backend" and r.levelno == logging.INFO]
    assert infos == ["token has 43 characters: ***", "oops"]  # stderr too; the token never shown
    assert backend.token not in caplog.text and backend.token not in repr(spec)


def test_token_is_fresh_and_never_on_the_command_line() -> None:
    with BackendProcess.start(READY_THEN_SERVE, ready_timeout_s=10) as first:
        with BackendProcess.start(READY_THEN_SERVE, ready_timeout_s=10) as second:
            assert first.token != second.token and len(first.token) == 43
            assert all(first.token not in arg for arg in first.process.args)


def test_a_token_chosen_for_the_run_is_used_and_still_kept_off_the_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEV_TOKEN_ENV, "chosen-for-this-run")
    with BackendProcess.start(READY_THEN_SERVE, ready_timeout_s=10) as backend:
        assert backend.token == "chosen-for-this-run"
        assert all("chosen-for-this-run" not in arg for arg in backend.process.args)


def test_exit_before_ready_quotes_the_output() -> None:
    failing = script("""
        import sys
        print("Traceback (most recent call last):")
        print("CheckpointError: no config.json in /models/x")
        sys.exit(3)
    """)
    with pytest.raises(BackendStartError, match="exited with status 3") as caught:
        BackendProcess.start(failing, ready_timeout_s=10)
    assert "CheckpointError: no config.json in /models/x" in str(caught.value)


def test_no_ready_line_in_time_stops_it() -> None:
    stuck = script("""
        import time
        print("still loading", flush=True)
        time.sleep(30)
    """)
    started = time.monotonic()
    with pytest.raises(BackendStartError, match=r"(?s)did not start within 0.3 s.*ready_timeout_s.*still loading"):
        BackendProcess.start(stuck, ready_timeout_s=0.3)
    assert time.monotonic() - started < 5


def test_stop_kills_a_backend_that_ignores_sigterm() -> None:
    stubborn = script("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("[edgewise:backend] Ready on http://127.0.0.1:1", flush=True)
        time.sleep(30)
    """)
    backend = BackendProcess.start(stubborn, ready_timeout_s=10)
    started = time.monotonic()
    assert backend.stop(timeout_s=0.3) == -9
    assert time.monotonic() - started < 5


def test_stop_sends_sigterm_first() -> None:
    with BackendProcess.start(READY_THEN_SERVE, ready_timeout_s=10) as backend:
        assert backend.stop() == -15
    assert backend.stop() == -15  # stopping twice is harmless


# ---- the command line -------------------------------------------------------------------


def test_serve_command_serves_builtins_and_mapped_models(tmp_path: Path) -> None:
    edgewise = EdgewiseConfig(
        models=(ModelSource("@cf/meta/llama-3.1-8b-instruct", builtin=TINY), ModelSource("@cf/me/x", folder=tmp_path)),
        backend=LocalBackendConfig(device="cpu", dtype="float32", port=0, max_queue=8),
    )
    command = serve_command(edgewise)
    assert command[:6] == [sys.executable, "-P", "-m", "wrangler_like_cli.main", "backend", "serve"]
    models = [command[i + 1] for i, arg in enumerate(command) if arg == "--model"]
    assert models == [TINY, MINILM, f"@cf/meta/llama-3.1-8b-instruct={TINY}", f"@cf/me/x={tmp_path}"]
    assert command[-12:-2] == ["--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--dtype", "float32",
                               "--max-queue", "8"]  # fmt: skip
    assert command[-2] == "--cluster" and _cluster_of(command) == ClusterConfig()


def test_a_mapping_replaces_the_builtin_of_the_same_name(tmp_path: Path) -> None:
    edgewise = EdgewiseConfig(models=(ModelSource(TINY, folder=tmp_path),))
    assert served_models(edgewise) == [MINILM, f"{TINY}={tmp_path}"]
    assert "--max-queue" not in serve_command(edgewise)


def test_serve_command_is_the_real_cli() -> None:
    # the launcher runs the `edgewise` CLI module with this interpreter; that module must exist
    reply = subprocess.run([sys.executable, "-c", "import wrangler_like_cli.main"], capture_output=True)
    assert reply.returncode == 0, reply.stderr


def _cluster_of(command: list[str]) -> ClusterConfig:
    return ClusterConfig.from_json(command[command.index("--cluster") + 1])


def test_the_local_backend_gets_its_cluster_as_one_config_on_the_command_line() -> None:
    colocated = serve_command(EdgewiseConfig(backend=LocalBackendConfig(tp=2, pp=2, pp_layers=[3, 1], instances=2)))
    assert _cluster_of(colocated) == ClusterConfig.colocated(2, 2, (3, 1), instances=2)
    assert not {"--tp", "--pp", "--instances", "--pp-layers"} & set(colocated)  # a config, not rebuilt flags
    assert _cluster_of(serve_command(EdgewiseConfig(backend=LocalBackendConfig()))) == ClusterConfig()
    expected = ClusterConfig.disaggregated(InstanceSpec(tp_size=2), InstanceSpec(pp_size=2), prefill_instances=1,
                                           decode_instances=2, instance_timeout_s=10, on_instance_loss="recompute",
                                           heartbeat_timeout_s=2.5)
    shorthands = LocalBackendConfig(prefill_instances=1, prefill_tp=2, decode_instances=2, decode_pp=2,
                                    instance_timeout_s=10, on_instance_loss="recompute", heartbeat_timeout_s=2.5)
    assert _cluster_of(serve_command(EdgewiseConfig(backend=shorthands))) == expected
    table = LocalBackendConfig(cluster={"instances": [{"role": "prefill", "tp": 2}, {"role": "decode", "pp": 2, "count": 2}],
                                        "instance_timeout_s": 10, "heartbeat_timeout_s": 2.5, "on_instance_loss": "recompute"})
    assert _cluster_of(serve_command(EdgewiseConfig(backend=table))) == expected


@pytest.mark.parametrize(("settings", "message"), [
    ({"prefill_instances": 1}, "decode_instances go together"),
    ({"decode_tp": 2}, "decode_tp shapes prefill or decode instances"),
    ({"tp": 2, "prefill_instances": 1, "decode_instances": 1}, "tp shapes colocated instances"),
    ({"on_instance_loss": "retry"}, "on_instance_loss"),
    ({"pp": 2, "pp_layers": [4]}, "pp_layers"),
    ({"tp": 0}, "tp"),
    ({"tp": 2, "cluster": {"instances": [{"tp": 2}]}}, "'cluster' and 'tp' were both given"),
    ({"cluster": {"instances": [{"tp": 0}]}}, r"'cluster' is not a cluster that can run: instances\[0\]: an instance's tp must be"),
    ({"cluster": {"instances": [{"role": "decode"}]}}, "'cluster' is not a cluster that can run: a disaggregated cluster needs at least one prefill"),
    ({"cluster": {"restarts": 1}}, "'cluster' is not a cluster that can run: the cluster config has no key 'restarts'"),
    ({"cluster": [1]}, "'cluster' must be a table"),
])
def test_a_cluster_that_cannot_run_is_a_config_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalBackendConfig(**settings)


def test_the_local_backend_serves_the_builtin_model_sharded_tp2_pp2() -> None:
    """`edgewise dev`'s backend with tp = 2, pp = 2: the built-in model (tied embeddings, 4 layers)
    over 4 spawned Gloo ranks answers exactly what one process does."""
    edgewise = EdgewiseConfig(backend=LocalBackendConfig(device="cpu", dtype="float32", tp=2, pp=2))
    body = {"prompt": "ROMEO:", "raw": True, "temperature": 0, "max_tokens": 24}
    with BackendProcess.start(serve_command(edgewise), ready_timeout_s=180) as backend:
        reply = httpx.post(f"{backend.url}/client/v4/accounts/a/ai/run/{TINY}", json=body, timeout=60,
                           headers={"authorization": f"Bearer {backend.token}"})
    expected = LLM(str(builtin_model_path(TINY)), progress=False, device="cpu", dtype="float32").generate(
        body["prompt"], SamplingParams(temperature=0.0, max_tokens=24))[0].outputs[0].text
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["response"] == expected and expected


# ---- a real backend, started where the cwd shadows our packages, then killed mid-stream ----------

SHADOWED_PACKAGES = ("workers", "gpu_backend", "edge_runtime", "wrangler_like_cli")
STREAMING_WORKER = f"""
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        inputs = {{"prompt": "ROMEO:", "stream": True, "max_tokens": 240}}  # ~1 s or more of tokens on CPU
        stream = await self.env.AI.run("{TINY}", inputs)
        return Response(stream, headers={{"content-type": "text/event-stream"}})
"""


@pytest.fixture(scope="module")
def backend_started_in_a_shadowing_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    """The real backend (the text model only), started with a cwd holding bogus `workers/`, `gpu_backend/` ..."""
    project = tmp_path_factory.mktemp("project")
    for package in SHADOWED_PACKAGES:
        (project / package).mkdir()
        (project / package / "__init__.py").write_text(f"raise ImportError('the bogus {package} of the cwd')\n")
    command = serve_command(EdgewiseConfig(backend=LocalBackendConfig(device="cpu", dtype="float32")))
    del command[command.index(MINILM) - 1:command.index(MINILM) + 1]  # not needed here: half the start-up
    previous = os.getcwd()
    os.chdir(project)
    try:
        backend = BackendProcess.start(command, ready_timeout_s=180)
    finally:
        os.chdir(previous)
    with backend:
        assert Path(os.readlink(f"/proc/{backend.process.pid}/cwd")) == project
        yield backend


def test_the_backend_starts_and_serves_from_a_cwd_that_shadows_our_packages(
        backend_started_in_a_shadowing_cwd: BackendProcess) -> None:
    backend = backend_started_in_a_shadowing_cwd
    reply = httpx.post(f"{backend.url}/client/v4/accounts/a/ai/run/{TINY}", timeout=60,
                       json={"prompt": "ROMEO:", "max_tokens": 4}, headers={"authorization": f"Bearer {backend.token}"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["usage"]["completion_tokens"] >= 1


async def test_a_backend_killed_mid_stream_ends_the_edge_clients_stream_with_an_error_event(
        backend_started_in_a_shadowing_cwd: BackendProcess, tmp_path: Path, serve) -> None:
    backend = backend_started_in_a_shadowing_cwd
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(STREAMING_WORKER)
    (tmp_path / "wrangler.toml").write_text(
        'name = "kill"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n'
        'compatibility_flags = ["python_workers"]\n[ai]\nbinding = "AI"\n[edgewise]\npops = ["DFW"]\nlatency = false\n')
    edge = Edge(load_config(tmp_path), ai_backends=AiBackends([backend.spec()]))
    try:
        async with httpx.AsyncClient(base_url=await serve(edge.front_door), timeout=60) as client:
            async with client.stream("GET", "/") as reply:
                chunks = reply.aiter_raw()
                body = await anext(chunks)
                assert body.startswith(b"data: {"), body
                os.killpg(backend.process.pid, signal.SIGKILL)  # the backend and every rank it runs
                body += b"".join([chunk async for chunk in chunks])  # a cut chunked body would raise here
    finally:
        await edge.aclose()
    events = [json.loads(event.removeprefix(b"data: ")) for event in body.split(b"\n\n")[:-1]]
    assert b"[DONE]" not in body and body.endswith(b"\n\n")
    assert all("response" in event for event in events[:-1])
    assert events[-1]["error"]["code"] == 3043 and "broke" in events[-1]["error"]["message"]
