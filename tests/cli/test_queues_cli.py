"""``edgewise queues list --local``: the declared queues and the messages the store keeps for them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge_runtime.bindings.queues.broker import queue_broker
from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.main import cli

WRANGLER_TOML = """\
name = "shop"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[[queues.producers]]
binding = "ORDERS"
queue = "orders"

[[queues.producers]]
binding = "MAIL"
queue = "mail"

[[queues.consumers]]
queue = "mail"
max_batch_size = 20
max_retries = 5
dead_letter_queue = "mail-dlq"
"""
WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("")
"""


def project(tmp_path: Path, toml: str = WRANGLER_TOML) -> Path:
    (tmp_path / "src").mkdir(parents=True)
    (tmp_path / "src" / "entry.py").write_text(WORKER)
    (tmp_path / "wrangler.toml").write_text(toml)
    return tmp_path


def run(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["queues", "list", "--config", str(root / "wrangler.toml"), *args])
    return result.exit_code, result.output


async def test_lists_declared_queues_and_waiting_messages(tmp_path: Path) -> None:
    root = project(tmp_path)
    edge = Edge(load_config(root))  # not started: the messages stay in the store
    try:
        queue_broker(edge)
        orders = edge.script().instance(edge.colos[0])[1].ORDERS
        await orders.sendBatch([{"body": "a", "contentType": "text"}, {"body": b"xyz", "contentType": "bytes"}])
    finally:
        await edge.aclose()
    code, output = run(root, "--json")
    assert code == 0, output
    rows = {row["queue"]: row for row in json.loads(output)}
    assert list(rows) == ["mail", "orders"]
    assert (rows["orders"]["messages"], rows["orders"]["bytes"], rows["orders"]["producers"]) == (2, 4, ["ORDERS"])
    assert rows["orders"]["oldest_message"] is not None and rows["orders"]["consumer"] is None
    assert rows["mail"]["messages"] == 0
    assert rows["mail"]["consumer"] == {"worker": "shop", "type": "worker", "max_batch_size": 20,
                                        "max_batch_timeout": 5, "max_retries": 5, "dead_letter_queue": "mail-dlq",
                                        "retry_delay": 0}
    code, table = run(root)
    assert code == 0 and "orders" in table and "ORDERS" in table and "mail-dlq" in table


def test_no_queues_and_bad_consumers_say_so(tmp_path: Path) -> None:
    plain = project(tmp_path / "plain", WRANGLER_TOML.split("[[queues.producers]]")[0])
    code, output = run(plain)
    assert code == 0 and "No queues" in output
    bad = project(tmp_path / "bad", WRANGLER_TOML.replace("max_batch_size = 20", "max_batch_size = 500"))
    code, output = run(bad)
    assert code == 1 and "'queues.consumers[0].max_batch_size' must be at most 100" in output
    code, output = run(plain, "--remote")
    assert code == 1 and "drop --remote" in output
