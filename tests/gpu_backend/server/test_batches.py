"""Workers AI's async Batch API on the REST run route, against real engines over HTTP: ``?queueRequest=true``
queues ``{"requests": [...]}`` and answers at once; polling ``{"request_id"}`` answers queued/running, then
every item's result (what a single run answers), kept on disk across restarts until it expires. Batch
items run below interactive requests. The official ``cloudflare`` SDK sends and polls batches.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import pytest
from jsonschema import Draft202012Validator

from backend_fixtures import EMBEDDINGS, MINILM, MODEL, TOKEN, Backend, serving
from held_engines import HOLD, HeldEngines
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.admission import Admission, NoBackgroundSlot
from gpu_backend.server.api import create_app
from gpu_backend.server.batch_store import DATABASE, BatchStore, ItemOutcome
from gpu_backend.server.batches import MAX_REQUESTS, BatchConfig, parse_duration
from gpu_backend.server.client import LocalEngines

TINY = "@cf/edgewise/tiny-shakespeare"
DONE_WITHIN_S = 60.0


@contextmanager
def batch_server(engines: Any, folder: Path, **config: Any) -> Iterator[tuple[str, Any]]:
    """A backend over ``engines`` keeping its batches in ``folder``; yields (run URL base, app)."""
    app = create_app(engines, TOKEN, max_queue=8, batches=BatchConfig(folder, **config))
    with serving(app) as url:
        yield f"{url}/client/v4/accounts/acct/ai/run/", app


@pytest.fixture(scope="module")
def batches(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The run URL base (append the model) of a backend over the ``backend`` fixture's engines, with batches."""
    with batch_server(backend.engines, tmp_path_factory.mktemp("batches")) as (base, _):
        yield base


def post(url: str, body: Any, queue: bool = False) -> httpx.Response:
    return httpx.post(url, json=body, params={"queueRequest": "true"} if queue else None,
                      headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)


def queue(url: str, requests: list[dict[str, Any]]) -> str:
    answer = post(url, {"requests": requests}, queue=True)
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]["request_id"]


def wait_done(url: str, request_id: str, timeout_s: float = DONE_WITHIN_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = post(url, {"request_id": request_id})
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        if "responses" in result:
            return result
        assert result == {"status": result["status"], "request_id": request_id, "model": result["model"]}
        assert result["status"] in ("queued", "running")
        assert time.monotonic() < deadline, f"the batch is still {result['status']} after {timeout_s} s"
        time.sleep(0.05)


def batch_rows(folder: Path) -> int:
    with sqlite3.connect(folder / DATABASE) as db:
        return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]


# ---- results ---------------------------------------------------------------------------------


def test_a_text_batch_answers_each_item_as_a_single_run(batches: str, backend: Backend) -> None:
    url = batches + MODEL
    requests = [{"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "external_reference": "first"},
                {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0},
                {"prompt": "ab", "max_tokens": 3, "temperature": 0, "external_reference": "third"}]
    answer = post(url, {"requests": requests}, queue=True)
    assert answer.status_code == 200
    envelope = answer.json()
    assert envelope["success"] is True and envelope["errors"] == []
    queued = envelope["result"]
    assert queued == {"status": "queued", "request_id": queued["request_id"], "model": MODEL}
    uuid.UUID(queued["request_id"])

    done = wait_done(url, queued["request_id"])
    singles = [backend.run({k: v for k, v in item.items() if k != "external_reference"}).json()["result"]
               for item in requests]
    assert done["responses"] == [
        {"id": 0, "result": singles[0], "success": True, "external_reference": "first"},
        {"id": 1, "result": singles[1], "success": True, "external_reference": None},
        {"id": 2, "result": singles[2], "success": True, "external_reference": "third"},
    ]
    prompt = sum(single["usage"]["prompt_tokens"] for single in singles)
    completion = sum(single["usage"]["completion_tokens"] for single in singles)
    assert done["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    assert post(url, {"request_id": queued["request_id"]}).json()["result"] == done  # polled again: the same


def test_an_embeddings_batch_answers_each_item_as_a_single_run(batches: str, backend: Backend) -> None:
    url = batches + EMBEDDINGS
    requests = [{"text": "the orange cloud"}, {"text": ["a llama", "a hugging emoji"], "external_reference": "r"}]
    done = wait_done(url, queue(url, requests))
    for item, response in zip(requests, done["responses"], strict=True):
        single = backend.run({"text": item["text"]}, EMBEDDINGS).json()["result"]
        assert response["success"] is True
        assert response["result"]["shape"] == single["shape"] and response["result"]["pooling"] == single["pooling"]
        for got, want in zip(response["result"]["data"], single["data"], strict=True):
            assert got == pytest.approx(want, abs=1e-5)
    assert [response["external_reference"] for response in done["responses"]] == [None, "r"]
    assert done["usage"]["prompt_tokens"] > 0 and done["usage"]["completion_tokens"] == 0


def test_an_item_that_fails_when_it_runs_answers_its_error_and_the_others_succeed(batches: str) -> None:
    url = batches + MODEL
    too_long = "word " * 2000  # past the 256-token context: refused by the engine, not by the schema
    done = wait_done(url, queue(url, [{"prompt": "hi", "max_tokens": 2}, {"prompt": too_long, "raw": True},
                                      {"prompt": "yo", "max_tokens": 2}]))
    ok, failed, also_ok = done["responses"]
    assert ok["success"] and also_ok["success"] and "result" not in failed
    assert failed["success"] is False and failed["id"] == 1 and failed["external_reference"] is None
    assert failed["error"]["code"] == 5021 and "6002 tokens" in failed["error"]["message"]


def test_the_official_cloudflare_sdk_queues_and_polls_a_batch(batches: str) -> None:
    base_url = batches.split("/accounts/")[0]
    client = cloudflare.Cloudflare(api_token=TOKEN, base_url=base_url, max_retries=0)
    queued = client.ai.run(MODEL, account_id="acct", extra_query={"queueRequest": "true"},
                           extra_body={"requests": [{"prompt": "ab", "max_tokens": 2, "temperature": 0}]})
    queued = dict(queued) if not isinstance(queued, dict) else queued
    assert queued["status"] == "queued" and queued["model"] == MODEL
    done = wait_done(batches + MODEL, queued["request_id"])
    polled = client.ai.run(MODEL, account_id="acct", extra_body={"request_id": queued["request_id"]})
    polled = dict(polled) if not isinstance(polled, dict) else polled
    assert polled["responses"] == done["responses"]
    with pytest.raises(cloudflare.NotFoundError, match="5006"):
        client.ai.run(MODEL, account_id="acct", extra_body={"request_id": str(uuid.uuid4())})


def test_batch_bodies_and_answers_are_the_documented_ones(batches: str) -> None:
    url = batches + MODEL
    document = httpx.get(batches.split("/client/v4/")[0] + "/openapi.json",
                         headers={"authorization": f"Bearer {TOKEN}"}).json()
    operation = document["paths"]["/client/v4/accounts/{account_id}/ai/run/{model}"]["post"]
    assert {"name": "queueRequest", "in": "query"}.items() <= operation["parameters"][-1].items()

    def valid(schema: dict[str, Any], value: Any) -> bool:
        return Draft202012Validator({**schema, "components": document["components"]}).is_valid(value)

    request = operation["requestBody"]["content"]["application/json"]["schema"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    schemas = document["components"]["schemas"]
    body = {"requests": [{"prompt": "ab", "max_tokens": 2, "external_reference": "x"},
                         {"prompt": "x" * 9000, "raw": True}]}
    assert valid(schemas["BatchRequest"], body) and valid(request, body)
    assert not valid(schemas["BatchRequest"], {"requests": [{"prompt": "a", "stream": True}]})
    assert not valid(schemas["BatchRequest"], {"requests": [{"prompt": "a"}] * (MAX_REQUESTS + 1)})
    queued = post(url, body, queue=True).json()
    assert valid(answer, queued) and valid(schemas["BatchStatus"], queued["result"])
    assert valid(schemas["BatchPoll"], {"request_id": queued["result"]["request_id"]})
    done = wait_done(url, queued["result"]["request_id"])
    assert [response["success"] for response in done["responses"]] == [True, False]  # the second is too long
    assert valid(schemas["BatchResponses"], done) and valid(answer, {**queued, "result": done})


# ---- refusals -------------------------------------------------------------------------------


def test_a_streaming_or_malformed_item_refuses_the_whole_batch(batches: str, tmp_path: Path) -> None:
    url = batches + MODEL
    stream = post(url, {"requests": [{"prompt": "a"}, {"prompt": "b", "stream": True}]}, queue=True)
    assert stream.status_code == 400
    assert stream.json()["errors"][0]["code"] == 5006
    assert "requests[1]" in stream.json()["errors"][0]["message"] and "stream" in stream.json()["errors"][0]["message"]
    bad = post(url, {"requests": [{"prompt": "a", "temperature": "hot"}]}, queue=True)
    assert bad.status_code == 400 and "requests[0]" in bad.json()["errors"][0]["message"]
    assert "temperature" in bad.json()["errors"][0]["message"]
    for body, named in [({"requests": []}, "requests"), ({"prompt": "a"}, "requests"),
                        ({"requests": ["a"]}, "requests[0]"),
                        ({"requests": [{"prompt": "a", "external_reference": 7}]}, "external_reference")]:
        refused = post(url, body, queue=True)
        assert refused.status_code == 400 and named in refused.json()["errors"][0]["message"], body
    embeddings = post(batches + EMBEDDINGS, {"requests": [{"prompt": "not a text"}]}, queue=True)
    assert embeddings.status_code == 400 and "requests[0]" in embeddings.json()["errors"][0]["message"]
    assert post(url, {"prompt": "a"}, queue=False).status_code == 200  # no queueRequest: a plain run
    for model, item in [(MODEL, {"prompt": "a"}), (EMBEDDINGS, {"text": "a"})]:  # the batch form needs queueRequest
        unqueued = post(batches + model, {"requests": [item]})
        assert unqueued.status_code == 400 and "?queueRequest=true" in unqueued.json()["errors"][0]["message"]


def test_a_batch_over_the_limits_is_refused(batches: str, backend: Backend, tmp_path: Path) -> None:
    url = batches + MODEL
    many = post(url, {"requests": [{"prompt": "a"}] * (MAX_REQUESTS + 1)}, queue=True)
    assert many.status_code == 400
    assert f"at most {MAX_REQUESTS} requests, got {MAX_REQUESTS + 1}" in many.json()["errors"][0]["message"]
    huge = post(url, {"requests": [{"prompt": "x" * 100_000}] * 110}, queue=True)  # 11 MB: the body cap
    assert huge.status_code == 413 and huge.json()["errors"][0]["code"] == 3006
    with batch_server(backend.engines, tmp_path, max_payload_bytes=1000) as (base, _):
        big = post(base + MODEL, {"requests": [{"prompt": "x" * 600}, {"prompt": "y" * 600}]}, queue=True)
        assert big.status_code == 413
        error = big.json()["errors"][0]
        assert error["code"] == 3006 and "at most 1000" in error["message"]
    assert batch_rows(tmp_path) == 0


def test_an_unknown_request_id_is_404_and_another_models_batch_is_named(batches: str) -> None:
    url = batches + MODEL
    unknown = post(url, {"request_id": "no-such-batch"})
    assert unknown.status_code == 404
    error = unknown.json()["errors"][0]
    assert error["code"] == 5006 and "no-such-batch" in error["message"]
    assert post(url, {"request_id": 42}).status_code == 400
    request_id = queue(batches + EMBEDDINGS, [{"text": "a"}])
    elsewhere = post(url, {"request_id": request_id})
    assert elsewhere.status_code == 400 and EMBEDDINGS in elsewhere.json()["errors"][0]["message"]
    assert post(url, {"requests": [{"prompt": "a"}]}, queue=True).status_code == 200
    bad_flag = httpx.post(url, json={"requests": [{"prompt": "a"}]}, params={"queueRequest": "maybe"},
                          headers={"authorization": f"Bearer {TOKEN}"})
    assert bad_flag.status_code == 400 and "queueRequest" in bad_flag.json()["errors"][0]["message"]


def test_a_backend_without_a_batch_folder_refuses_batches_clearly(backend: Backend) -> None:
    answer = post(backend.run_url(), {"requests": [{"prompt": "a"}]}, queue=True)
    assert answer.status_code == 400 and "--batch-dir" in answer.json()["errors"][0]["message"]


# ---- persistence ----------------------------------------------------------------------------


def test_finished_results_survive_a_restart(backend: Backend, tmp_path: Path) -> None:
    with batch_server(backend.engines, tmp_path) as (base, _):
        request_id = queue(base + MODEL, [{"prompt": "abc", "max_tokens": 3, "temperature": 0,
                                           "external_reference": "kept"}])
        before = wait_done(base + MODEL, request_id)
    with batch_server(backend.engines, tmp_path) as (base, _):
        assert post(base + MODEL, {"request_id": request_id}).json()["result"] == before


def test_unfinished_batches_run_again_after_a_restart(backend: Backend, tmp_path: Path) -> None:
    store = BatchStore(tmp_path, retention_s=3600)  # a backend that stopped mid-batch
    request_id = store.add(MODEL, [({"prompt": "abc", "max_tokens": 3, "temperature": 0}, "a"),
                                   ({"prompt": "xyz", "max_tokens": 3, "temperature": 0}, "b")])
    running = store.claim_next(MODEL)
    assert running is not None and running.id == 0
    assert store.state(request_id).status == "running"
    store.close()
    with batch_server(backend.engines, tmp_path) as (base, _):
        done = wait_done(base + MODEL, request_id)
    assert [(r["id"], r["success"], r["external_reference"]) for r in done["responses"]] == [(0, True, "a"),
                                                                                            (1, True, "b")]
    assert done["responses"][0]["result"] == backend.run({"prompt": "abc", "max_tokens": 3,
                                                          "temperature": 0}).json()["result"]


def test_a_live_owners_batches_are_left_to_it(tmp_path: Path) -> None:
    first = BatchStore(tmp_path, retention_s=3600)
    request_id = first.add(MODEL, [({"prompt": "a"}, None)])
    second = BatchStore(tmp_path, retention_s=3600)  # another backend on the same folder
    try:
        assert second.queued_models() == [] and second.claim_next(MODEL) is None
        assert second.state(request_id).status == "queued"  # anyone may poll
        assert first.claim_next(MODEL) is not None
    finally:
        first.close()  # gone: the next store to look adopts its batch
    assert second.adopt_orphans() == 1
    third = BatchStore(tmp_path, retention_s=3600)
    try:
        assert third.adopt_orphans() == 0 and third.queued_models() == []  # second is alive and owns it
        assert second.claim_next(MODEL) is not None  # the item first had running is queued again
    finally:
        second.close()
        third.close()


def test_finished_batches_expire_after_the_retention(tmp_path: Path) -> None:
    now = [1000.0]
    store = BatchStore(tmp_path, retention_s=60, clock=lambda: now[0])
    request_id = store.add(MODEL, [({"prompt": "a"}, None)])
    store.finish(store.claim_next(MODEL), ItemOutcome({"response": "b"}, prompt_tokens=1, completion_tokens=1))
    now[0] += 59
    assert store.state(request_id).answer()["responses"][0]["result"] == {"response": "b"}
    now[0] += 2
    assert store.state(request_id) is None and store.purge_expired() == 1
    store.close()
    assert batch_rows(tmp_path) == 0


def test_an_expired_batch_is_unknown_over_http(backend: Backend, tmp_path: Path) -> None:
    with batch_server(backend.engines, tmp_path, retention_s=0.5) as (base, _):
        request_id = queue(base + MODEL, [{"prompt": "a", "max_tokens": 1}])
        wait_done(base + MODEL, request_id)
        time.sleep(0.6)
        gone = post(base + MODEL, {"request_id": request_id})
        assert gone.status_code == 404 and "0.5 s" in gone.json()["errors"][0]["message"]


def test_durations() -> None:
    assert [parse_duration(text) for text in ("90", "90s", "30m", "24h", "7d", "0.5s")] == [
        90, 90, 1800, 86400, 604800, 0.5]
    for bad in ("", "0", "-1h", "1w", "h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


# ---- priority -------------------------------------------------------------------------------


def test_a_background_slot_takes_a_free_slot_and_at_most_half_of_them() -> None:
    admission = Admission(max_queue=4, capacity=lambda model: 4)
    with admission.background_slot("m"), admission.background_slot("m"):
        assert admission.in_flight("m") == 2 and not admission.can_admit_background("m")
        with pytest.raises(NoBackgroundSlot):
            admission.background_slot("m").__enter__()
        assert admission.has_free_slot("m")  # an interactive request still runs at once
    with admission.slot("m"), admission.slot("m"), admission.slot("m"), admission.slot("m"):
        assert not admission.can_admit_background("m")  # every slot taken: the batch waits
    single = Admission(max_queue=0, capacity=lambda model: 1)
    assert single.background_limit("m") == 1 and single.can_admit_background("m")
    assert admission.total_in_flight() == 0


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HeldEngines, Admission]]:
    engines = LocalEngines({TINY: builtin_model_path(TINY)}, device="cpu", dtype="float32", num_kv_blocks=64,
                           max_num_seqs=2)
    held_engines = HeldEngines(engines)
    try:
        with batch_server(held_engines, tmp_path_factory.mktemp("held")) as (base, app):
            yield base + TINY, held_engines, app.state.service.admission
    finally:
        engines.shutdown()


def _until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the backend"
        time.sleep(0.01)


def test_a_batch_waits_while_interactive_requests_hold_every_slot(held: tuple[str, HeldEngines, Admission]) -> None:
    url, engines, admission = held
    engines.release.clear()
    body = {"prompt": "ROMEO:", "max_tokens": 4, "temperature": 0}
    holders = [threading.Thread(target=httpx.post, args=(url,), kwargs={
        "json": body, "headers": {"authorization": f"Bearer {TOKEN}", "x-session-affinity": HOLD}, "timeout": 60})
        for _ in range(2)]
    try:
        for holder in holders:
            holder.start()
        _until(lambda: admission.in_flight(TINY) == 2)
        request_id = queue(url, [body] * 3)
        time.sleep(0.5)
        assert post(url, {"request_id": request_id}).json()["result"]["status"] == "queued"
        assert admission.in_flight(TINY) == 2
        answers: list[httpx.Response] = []
        interactive = threading.Thread(target=lambda: answers.append(post(url, body)))
        interactive.start()
        interactive.join(30)  # admitted beyond the running slots, ahead of every batch item, and answered
        assert answers and answers[0].status_code == 200 and answers[0].json()["result"]["response"]
        assert post(url, {"request_id": request_id}).json()["result"]["status"] == "queued"
        assert admission.in_flight(TINY) == 2
    finally:
        engines.release.set()
    for holder in holders:
        holder.join(30)
    busiest = 0
    deadline = time.monotonic() + DONE_WITHIN_S
    while "responses" not in (result := post(url, {"request_id": request_id}).json()["result"]):
        busiest = max(busiest, admission.in_flight(TINY))
        assert admission.has_free_slot(TINY)  # the batch never takes the slot an interactive request needs
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert busiest <= admission.background_limit(TINY) == 1
    assert [response["success"] for response in result["responses"]] == [True] * 3
    _until(lambda: admission.total_in_flight() == 0)


def test_stopping_the_backend_mid_item_runs_the_item_again_at_the_next_start(tmp_path: Path) -> None:
    engines = LocalEngines({EMBEDDINGS: builtin_model_path(MINILM)}, device="cpu", dtype="float32")
    held_engines = HeldEngines(engines)
    held_engines.release.clear()
    try:
        with batch_server(held_engines, tmp_path) as (base, app):
            request_id = queue(base + EMBEDDINGS, [{"text": HOLD}, {"text": "after"}])
            _until(lambda: app.state.service.admission.in_flight(EMBEDDINGS) == 1)  # the held item runs
            threading.Timer(1.0, held_engines.release.set).start()  # once the runner is cancelled
        with sqlite3.connect(tmp_path / DATABASE) as db:
            states = db.execute("SELECT state FROM items WHERE request_id = ? ORDER BY id", (request_id,)).fetchall()
        assert states == [("running",), ("queued",)]
        with batch_server(held_engines, tmp_path) as (base, _):
            done = wait_done(base + EMBEDDINGS, request_id)
        assert [response["success"] for response in done["responses"]] == [True, True]
        assert done["responses"][0]["result"]["shape"] == [1, 384]
    finally:
        held_engines.release.set()
        engines.shutdown()


def test_a_store_waiting_on_another_backends_write_lock_blocks_no_other_request(backend: Backend,
                                                                              tmp_path: Path) -> None:
    """Another backend on the same folder holds SQLite's write lock: the batch waits for it on the store's
    thread, while the event loop goes on answering everything else at once."""
    with batch_server(backend.engines, tmp_path) as (base, _):
        url = base + MODEL
        holder = sqlite3.connect(tmp_path / DATABASE, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # as a second backend's write would, for a moment
        answers: list[httpx.Response] = []
        queuing = threading.Thread(target=lambda: answers.append(
            post(url, {"requests": [{"prompt": "hi", "max_tokens": 2}]}, queue=True)))
        try:
            queuing.start()
            time.sleep(0.3)  # the batch is now waiting for the lock
            started = time.monotonic()
            health = httpx.get(base.split("/client/")[0] + "/healthz", timeout=5)
            run = post(url, {"prompt": "hi", "max_tokens": 2})
            assert health.status_code == 200 and run.status_code == 200
            assert time.monotonic() - started < 3.0  # not held up behind the waiting batch
            assert not answers  # still waiting
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            queuing.join(30)
        assert answers and answers[0].status_code == 200, answers
        wait_done(url, answers[0].json()["result"]["request_id"])
