"""ctx.storage of one Durable Object (edge_runtime/bindings/do_storage.py): the KV API with the call shapes
of workers-py's worker_durable_object.py, values, limits, transactions, the alarm, exclusivity, persistence."""

from __future__ import annotations

import asyncio
import datetime
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_runtime.bindings.durable_objects.sql import SqlError
from edge_runtime.bindings.durable_objects.storage import (DurableObjectStorage, StorageLimits, StorageRangeError,
                                              TransactionError)

MIB = 1024 * 1024


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "objects" / "counter.sqlite"


@pytest.fixture
def storage(path: Path):
    opened = DurableObjectStorage(path)
    yield opened
    opened.close()


# --- the call shapes of workers-py's own Durable Object tests ------------------------------------------

async def test_put_and_get(storage):
    await storage.deleteAll()
    await storage.put("key1", "value1")
    assert await storage.get("key1") == "value1"
    assert await storage.get("missing") is None


async def test_put_many_and_get_many(storage):
    await storage.put({"a": 1, "b": 2, "c": 3})
    assert [await storage.get(key) for key in "abc"] == [1, 2, 3]
    result = await storage.get(["c", "a", "missing"])
    assert result == {"a": 1, "c": 3} and list(result) == ["a", "c"]  # found keys only, in key order
    assert result.get("missing") is None


async def test_delete_one_and_many(storage):
    await storage.put("to_delete", "gone")
    assert await storage.delete("to_delete") is True
    assert await storage.delete("to_delete") is False
    assert await storage.get("to_delete") is None
    await storage.put({"d1": 1, "d2": 2, "d3": 3})
    assert await storage.delete(["d1", "d2", "nope"]) == 2
    assert await storage.list() == {"d3": 3}


async def test_list_with_an_options_dict(storage):
    await storage.put({"list:a": 1, "list:b": 2, "list:c": 3, "other": 99})
    result = await storage.list({"prefix": "list:"})
    assert result == {"list:a": 1, "list:b": 2, "list:c": 3}
    for i in range(5):
        await storage.put(f"item:{i:03d}", i)
    assert list(await storage.list({"prefix": "item:", "limit": 2})) == ["item:000", "item:001"]


async def test_delete_all_clears_kv_sql_and_alarm(storage):
    await storage.put("before_clear", "exists")
    storage.sql.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES notes(id))")
    storage.sql.exec("CREATE VIEW note_ids AS SELECT id FROM notes")
    await storage.setAlarm(time.time() * 1000 + 60_000)
    await storage.deleteAll()
    assert await storage.get("before_clear") is None
    assert await storage.getAlarm() is None and storage.alarm_at() is None
    tables = storage.sql.exec("SELECT name FROM sqlite_master WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\'")
    assert tables.toArray() == []
    await storage.put("after", 1)  # the storage's own tables are still there
    assert await storage.get("after") == 1


async def test_value_types_of_the_sdk_test(storage):
    await storage.put("str", "hello")
    await storage.put("int", 42)
    await storage.put("float", 3.14)
    await storage.put("bool", True)
    assert await storage.get("str") == "hello"
    assert await storage.get("int") == 42
    assert abs(await storage.get("float") - 3.14) < 0.001
    assert await storage.get("bool") is True


async def test_transaction_of_the_sdk_test(storage):
    async def txn_body(txn):
        await txn.put("txn_key", "txn_value")
        return await txn.get("txn_key")

    assert await storage.transaction(txn_body) == "txn_value"
    assert await storage.get("txn_key") == "txn_value"


async def test_sync_resolves(storage):
    await storage.put("sync_key", "sync_value")
    assert await storage.sync() is None
    assert await storage.get("sync_key") == "sync_value"


async def test_alarm_set_get_delete_with_a_naive_datetime(storage):
    await storage.deleteAlarm()
    assert await storage.getAlarm() is None
    future_time = datetime.datetime.now() + datetime.timedelta(minutes=1)  # local time, as timestamp() reads it
    await storage.setAlarm(future_time)
    assert await storage.getAlarm() == int(future_time.timestamp() * 1000)
    await storage.deleteAlarm()
    assert await storage.getAlarm() is None


async def test_options_are_accepted_as_a_dict_or_keywords(storage):
    await storage.put("k", 1, {"allowUnconfirmed": True, "noCache": True})
    await storage.put({"j": 2}, {"allowConcurrency": True})
    await storage.put("i", 3, allowUnconfirmed=True)
    assert await storage.get("k", {"allowConcurrency": True}) == 1
    assert await storage.get(["i", "j"], noCache=True) == {"i": 3, "j": 2}
    assert await storage.delete("k", allowUnconfirmed=True) is True
    with pytest.raises(TypeError, match="no option 'cacheTtl'"):
        await storage.get("k", cacheTtl=60)
    with pytest.raises(TypeError, match="put\\(\\) called with no value"):
        await storage.put("k")


# --- values --------------------------------------------------------------------------------------------

async def test_values_round_trip_exactly(storage):
    moment = datetime.datetime(2026, 12, 7, 9, 30, 15, 123456, tzinfo=datetime.timezone.utc)
    value = {"n": 2**70, "f": 1.0, "neg_zero": -0.0, "b": b"\x00\xffraw", "none": None, "t": True,
             "s": "caf\u00e9 \U0001f600 \ud800", "when": moment, "naive": moment.replace(tzinfo=None),
             "nested": [[1, [2.5, b"x"]], {"$": "a dollar key", "v": [None]}], "empty": {}}
    await storage.put("v", value)
    got = await storage.get("v")
    assert got == value
    assert type(got["n"]) is int and type(got["f"]) is float and math.copysign(1, got["neg_zero"]) == -1
    assert type(got["b"]) is bytes and got["nested"][1]["$"] == "a dollar key"
    assert got.nested[0][1][1] == b"x"  # dicts come back as JsDicts, with attribute access
    await storage.put({"top": memoryview(b"bytes"), "nan": float("nan")})
    assert await storage.get("top") == b"bytes" and math.isnan(await storage.get("nan"))
    await storage.put("none", None)
    assert await storage.get(["none"]) == {"none": None}  # stored, so found


@pytest.mark.parametrize(("value", "message"), [
    ((1, 2), r"tuple cannot be stored \(the value for key 'k'\); use a list"),
    (bytearray(b"x"), r"bytearray cannot be stored"),
    ({"deep": [1, (2,)]}, r"tuple cannot be stored \(the value for key 'k'\['deep'\]\[1\]\)"),
    ({1: "x"}, r"dict keys must be str"),
    ({1, 2}, r"set cannot be stored"),
    (object(), r"object cannot be stored"),
])
async def test_values_that_cannot_be_stored(storage, value, message):
    with pytest.raises(TypeError, match=message):
        await storage.put("k", value)
    with pytest.raises(TypeError, match=message):
        await storage.put({"ok": 1, "k": value})
    assert await storage.list() == {}  # nothing of the batch was written


async def test_a_value_containing_itself_is_refused(storage):
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="nested too deeply"):
        await storage.put("k", loop)


# --- list ----------------------------------------------------------------------------------------------

async def test_list_bounds_order_and_limits(storage):
    await storage.put({key: index for index, key in enumerate(["a", "b", "ba", "bb", "c", "\u00e9", "\U0001f600"])})
    assert list(await storage.list()) == ["a", "b", "ba", "bb", "c", "\u00e9", "\U0001f600"]  # UTF-8 order
    assert list(await storage.list(start="b", end="c")) == ["b", "ba", "bb"]
    assert list(await storage.list(startAfter="b", end="c")) == ["ba", "bb"]
    assert list(await storage.list(prefix="b", reverse=True)) == ["bb", "ba", "b"]
    assert list(await storage.list({"prefix": "b", "start": "ba", "limit": 1})) == ["ba"]
    assert list(await storage.list(reverse=True, limit=2)) == ["\U0001f600", "\u00e9"]
    assert await storage.list(prefix="zz") == {}


@pytest.mark.parametrize(("options", "message"), [
    ({"limit": 0}, "List limit must be positive"),
    ({"limit": "3"}, "List limit must be positive"),
    ({"start": "a", "startAfter": "a"}, "both start and startAfter"),
    ({"prefix": 3}, "prefix must be a str"),
    ({"cursor": "x"}, "no option 'cursor'"),
])
async def test_list_refuses_bad_options(storage, options, message):
    with pytest.raises(TypeError, match=message):
        await storage.list(options)


# --- limits --------------------------------------------------------------------------------------------

async def test_sqlite_backed_limits_key_and_value_together(storage):
    await storage.put("big", b"x" * (2 * MIB - 3))  # key (3 bytes) and value: exactly 2 MiB
    with pytest.raises(StorageRangeError, match=r"together cannot be larger than 2097152 bytes; key 'big2'"):
        await storage.put("big2", b"x" * (2 * MIB - 3))
    with pytest.raises(StorageRangeError, match=r"Values cannot be larger than 2097152 bytes; .*'huge'"):
        await storage.put({"small": 1, "huge": "y" * (2 * MIB + 1)})
    assert list(await storage.list()) == ["big"]  # nothing else was written
    assert isinstance(StorageRangeError("x"), ValueError)


async def test_key_value_backed_limits(path):
    storage = DurableObjectStorage(path, limits=StorageLimits.key_value_backed(), sqlite_backed=False)
    try:
        await storage.put("k" * 2048, b"v" * (128 * 1024))  # the largest key and ArrayBuffer that fit
        too_long = r"Keys cannot be larger than 2048 bytes; key 'kkk.*'\.\.\. is 2049 bytes"
        with pytest.raises(StorageRangeError, match=too_long):
            await storage.put("k" * 2049, 1)
        with pytest.raises(StorageRangeError, match=r"Keys cannot be larger than 2048 bytes"):
            await storage.get("\u00e9" * 1025)  # 2050 bytes of UTF-8
        with pytest.raises(StorageRangeError, match=r"Values cannot be larger than 131072 bytes; the value for "
                                                     r"key 'v' is 131073 bytes"):
            await storage.put("v", b"v" * (128 * 1024 + 1))
        assert await storage.get("v") is None
    finally:
        storage.close()


async def test_a_key_value_backed_object_has_no_sqlite_apis(path):
    storage = DurableObjectStorage(path, limits=StorageLimits.key_value_backed(), sqlite_backed=False)
    try:
        await storage.put("k", 1)
        assert await storage.transaction(lambda txn: "sync closures work too") == "sync closures work too"
        for call in (lambda: storage.sql.exec("SELECT 1"), lambda: storage.sql.databaseSize,
                     lambda: storage.kv.get("k"), lambda: storage.transactionSync(lambda: None)):
            with pytest.raises(SqlError, match="change `new_classes` to `new_sqlite_classes`"):
                call()
        await storage.deleteAll()
        assert await storage.list() == {}
    finally:
        storage.close()


async def test_batches_hold_at_most_128_keys(storage):
    await storage.put({f"k{i:03d}": i for i in range(128)})
    assert len(await storage.get([f"k{i:03d}" for i in range(128)])) == 128
    with pytest.raises(StorageRangeError, match=r"put\(\) takes at most 128 keys at a time; 129 were given"):
        await storage.put({f"n{i:03d}": i for i in range(129)})
    with pytest.raises(StorageRangeError, match="get"):
        await storage.get([f"k{i:03d}" for i in range(129)])
    with pytest.raises(StorageRangeError, match="delete"):
        await storage.delete([f"k{i:03d}" for i in range(129)])
    assert len(await storage.list()) == 128


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_batch_keys must be a positive int"):
        StorageLimits(max_batch_keys=0)


async def test_keys_must_be_str(storage):
    with pytest.raises(TypeError, match=r"a key \(str\) or a list of keys, got int"):
        await storage.get(1)
    with pytest.raises(TypeError, match=r"put\(\): keys are str, got int"):
        await storage.put(1, "x")
    with pytest.raises(TypeError, match=r"kv.get\(\): keys are str, got NoneType"):
        storage.kv.get(None)
    with pytest.raises(TypeError, match="a list of keys, got tuple"):
        await storage.get(("a", "b"))


# --- exclusivity and transactions ----------------------------------------------------------------------

async def test_concurrent_increments_never_interleave(storage):
    async def increment() -> None:
        value = await storage.get("n") or 0
        await storage.put("n", value + 1)

    await asyncio.gather(*(increment() for _ in range(200)))
    assert await storage.get("n") == 200


async def test_a_failing_transaction_writes_nothing(storage):
    await storage.put("kept", 1)

    async def body(txn):
        await txn.put("kept", 2)
        await txn.delete("kept")
        storage.sql.exec("CREATE TABLE made_in_txn (x)")
        await txn.setAlarm(time.time() * 1000 + 60_000)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await storage.transaction(body)
    assert await storage.get("kept") == 1 and await storage.getAlarm() is None
    assert storage.sql.exec("SELECT count(*) AS n FROM sqlite_master WHERE name = 'made_in_txn'").one()["n"] == 0


async def test_rollback_undoes_and_ends_the_transaction(storage):
    async def body(txn):
        await txn.put("a", 1)
        txn.rollback()
        with pytest.raises(TransactionError, match="rolled back"):
            await txn.put("b", 2)
        return "returned"

    assert await storage.transaction(body) == "returned"
    assert await storage.list() == {}


async def test_delete_all_is_refused_in_a_transaction(storage):
    async def body(txn):
        await txn.deleteAll()

    with pytest.raises(TransactionError, match=r"Cannot call deleteAll\(\) within a transaction"):
        await storage.transaction(body)


async def test_other_events_wait_for_an_open_transaction(storage):
    order: list[str] = []

    async def body(txn):
        await txn.put("x", "in txn")
        await asyncio.sleep(0.02)  # another event runs meanwhile: its storage calls must wait
        order.append("txn done")
        raise RuntimeError("abort")

    async def other() -> None:
        await asyncio.sleep(0.005)
        await storage.put("y", await storage.get("x"))
        order.append("other done")

    results = await asyncio.gather(storage.transaction(body), other(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] is None
    assert order == ["txn done", "other done"]
    assert await storage.list() == {"y": None}  # the other event saw no uncommitted write, and kept its own


async def test_nested_transactions_and_transaction_sync(storage):
    async def inner(txn):
        await txn.put("inner", 1)
        raise ValueError("inner fails")

    async def outer(txn):
        await txn.put("outer", 1)
        with pytest.raises(ValueError):
            await storage.transaction(inner)
        return storage.transactionSync(lambda: storage.kv.put("sync", 2))

    await storage.transaction(outer)
    assert await storage.list() == {"outer": 1, "sync": 2}
    with pytest.raises(ZeroDivisionError):
        storage.transactionSync(lambda: (storage.kv.put("gone", 1), 1 / 0))
    assert storage.kv.get("gone") is None


# --- the alarm -----------------------------------------------------------------------------------------

async def test_alarm_changes_reach_the_scheduler_once_committed(path):
    changes: list[float | None] = []
    storage = DurableObjectStorage(path, on_alarm_change=changes.append)
    try:
        at_ms = int(time.time() * 1000) + 60_000
        await storage.setAlarm(at_ms)
        await storage.setAlarm(at_ms)  # unchanged: no second announcement
        assert changes == [at_ms / 1000] and storage.alarm_at() == at_ms / 1000

        async def moved_then_failed(txn):
            await txn.setAlarm(at_ms + 5000)
            assert changes == [at_ms / 1000]  # not committed yet
            raise RuntimeError

        with pytest.raises(RuntimeError):
            await storage.transaction(moved_then_failed)
        assert changes == [at_ms / 1000] and await storage.getAlarm() == at_ms
        await storage.setAlarm(datetime.datetime.fromtimestamp(1, datetime.timezone.utc))  # the past: now
        assert abs(changes[-1] - time.time()) < 2
        await storage.deleteAlarm()
        assert changes[-1] is None and storage.alarm_at() is None
    finally:
        storage.close()


@pytest.mark.parametrize("when", [0, -5, "soon", float("inf"), True])
async def test_set_alarm_refuses_bad_times(storage, when):
    with pytest.raises(TypeError, match="setAlarm"):
        await storage.setAlarm(when)


# --- persistence and durability ------------------------------------------------------------------------

async def test_everything_survives_close_and_reopen(path):
    storage = DurableObjectStorage(path)
    at_ms = int(time.time() * 1000) + 3_600_000
    await storage.put({"a": [1, b"2"], "b": {"c": 3}})
    storage.sql.exec("CREATE TABLE t (x); INSERT INTO t VALUES (?)", 7)
    await storage.setAlarm(at_ms)
    storage.close()
    with pytest.raises(RuntimeError, match="storage is closed"):
        await storage.get("a")

    reopened = DurableObjectStorage(path)
    try:
        assert await reopened.list() == {"a": [1, b"2"], "b": {"c": 3}}
        assert reopened.sql.exec("SELECT x FROM t").one()["x"] == 7
        assert reopened.alarm_at() == at_ms / 1000
    finally:
        reopened.close()


def test_a_crash_loses_no_committed_write(path):
    script = textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from edge_runtime.bindings.durable_objects.storage import DurableObjectStorage
        storage = DurableObjectStorage(Path({str(path)!r}))
        asyncio.run(storage.put("committed", 1))
        storage.kv.put("also", 2)
        os._exit(9)  # no close, no checkpoint
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == 9
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    storage = DurableObjectStorage(path)
    try:
        assert storage.kv.list() == [["also", 2], ["committed", 1]]
    finally:
        storage.close()


# --- the synchronous kv --------------------------------------------------------------------------------

async def test_sync_kv_shares_the_async_data(storage):
    storage.kv.put("counter", 42)
    storage.kv.put("user", {"name": "Alice", "age": 30})
    assert await storage.get("counter") == 42
    await storage.put("user:2", "Bob")
    assert storage.kv.get("user:2") == "Bob" and storage.kv.get("missing") is None
    assert dict(storage.kv.list(prefix="user")) == {"user": {"name": "Alice", "age": 30}, "user:2": "Bob"}
    assert [key for key, _ in storage.kv.list({"start": "user:", "reverse": True, "limit": 100})] == ["user:2"]
    assert storage.kv.delete("counter") is True and storage.kv.delete("counter") is False
