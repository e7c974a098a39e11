"""Durable Object bindings and migrations: declared classes, renames that keep data, deletes, another
Worker's classes (``script_name``), and clear errors for what cannot run."""

from __future__ import annotations

import logging

import pytest
from durable_objects_fixtures import COUNTER_BINDING, Edges, env_at
from edgewise_sdk.pyodide.ffi import JsException

from edge_runtime.bindings.durable_objects.migrations import DurableObjectConfigError
from edge_runtime.config import ConfigError

SOURCE = """
    from workers import DurableObject

    WORKER = "{worker}"

    class {cls}(DurableObject):
        async def increment(self):
            value = (await self.ctx.storage.get("count") or 0) + 1
            await self.ctx.storage.put("count", value)
            return value

        def worker(self):
            return WORKER
"""


def source(cls: str = "Counter", worker: str = "objects") -> str:
    return SOURCE.format(cls=cls, worker=worker)


@pytest.fixture
async def edges(tmp_path):
    factory = Edges(tmp_path)
    yield factory
    await factory.aclose()


async def test_an_unknown_class_in_migrations_stops_the_start_naming_class_and_tag(edges: Edges) -> None:
    with pytest.raises(DurableObjectConfigError) as caught:
        await edges.make(source(), migrations=[{"tag": "v1", "new_sqlite_classes": ["Counter"]},
                                               {"tag": "v2", "new_classes": ["Ghost"]}])
    message = str(caught.value)
    assert '"Ghost"' in message and 'tag "v2"' in message and "entry.py" in message


async def test_a_renamed_class_keeps_its_objects_and_data(edges: Edges) -> None:
    edge = await edges.make(source("Counter"))
    stub = env_at(edge, "LHR").COUNTER.getByName("kept")
    assert await stub.increment() == 1
    await edges.close(edge)
    edge = await edges.make(source("Tally"), bindings=[{"name": "COUNTER", "class_name": "Tally"}],
                            migrations=[{"tag": "v1", "new_sqlite_classes": ["Counter"]},
                                        {"tag": "v2", "renamed_classes": [{"from": "Counter", "to": "Tally"}]}])
    renamed = env_at(edge, "LHR").COUNTER.getByName("kept")
    assert renamed.id == stub.id  # the same object
    assert await renamed.increment() == 2


async def test_deleted_classes_lose_their_data_and_cannot_be_bound(edges: Edges) -> None:
    edge = await edges.make(source("Counter"))
    await env_at(edge, "LHR").COUNTER.getByName("gone").increment()
    await edges.close(edge)
    folder = edges.state / "v3" / "do" / "objects-Counter"
    assert folder.is_dir()
    deleted = [{"tag": "v1", "new_sqlite_classes": ["Counter"]}, {"tag": "v2", "deleted_classes": ["Counter"]}]
    with pytest.raises(ConfigError, match='tag "v2" deleted it'):
        await edges.make(source("Counter"), migrations=deleted)
    edge = await edges.make(source("Other"), bindings=[{"name": "OTHER", "class_name": "Other"}],
                            migrations=[*deleted, {"tag": "v3", "new_sqlite_classes": ["Other"]}])
    assert not folder.exists()
    assert await env_at(edge, "LHR").OTHER.getByName("new").increment() == 1


async def test_a_class_in_no_migration_warns_but_runs(edges: Edges, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="edgewise.durable_objects"):
        edge = await edges.make(source(), migrations=[])
    assert "is in no migration" in caplog.text and '"Counter"' in caplog.text
    assert await env_at(edge, "LHR").COUNTER.getByName("x").increment() == 1


@pytest.mark.parametrize(("migrations", "message"), [
    ([{"tag": "v1", "renamed_classes": [{"from": "Nope", "to": "Counter"}]}], 'tag "v1" renames class "Nope"'),
    ([{"tag": "v1", "deleted_classes": ["Nope"]}], 'tag "v1" deletes class "Nope"'),
    ([{"tag": "v1", "new_classes": ["Counter"]}, {"tag": "v2", "new_sqlite_classes": ["Counter"]}],
     'tag "v2" adds class "Counter", but tag "v1" already added it'),
    ([{"new_classes": ["Counter"]}], "migrations[0].tag"),
])
async def test_migrations_that_cannot_be_replayed_are_clear_errors(edges: Edges, migrations, message) -> None:
    with pytest.raises(ConfigError) as caught:
        await edges.make(source(), migrations=migrations)
    assert message in str(caught.value)


async def test_a_class_of_another_worker_runs_there(edges: Edges) -> None:
    back = ("back", source("Counter", worker="back"), {"name": "back", "bindings": []})
    edge = await edges.make(source("Unused"), bindings=[{**COUNTER_BINDING, "script_name": "back"}],
                            migrations=[], workers=[back])
    stub = env_at(edge, "SFO").COUNTER.getByName("remote")
    assert await stub.worker() == "back"
    assert await stub.increment() == 1
    assert (edges.state / "v3" / "do" / "back-Counter" / f"{stub.id.toString()}.sqlite").is_file()


async def test_a_script_name_that_is_not_running_is_a_clear_error(edges: Edges) -> None:
    with pytest.raises(ConfigError, match="script_name 'elsewhere'"):
        await edges.make(source(), bindings=[{**COUNTER_BINDING, "script_name": "elsewhere"}])


async def test_new_classes_get_key_value_storage_and_new_sqlite_classes_sql(edges: Edges) -> None:
    source = """
        from workers import DurableObject

        class Counter(DurableObject):
            def tables(self):
                return self.ctx.storage.sql.exec("SELECT 1 AS one").one()

            async def big(self, size):
                await self.ctx.storage.put("big", "x" * size)
    """
    edge = await edges.make(source, migrations=[{"tag": "v1", "new_classes": ["Counter"]}])
    stub = env_at(edge, "LHR").COUNTER.getByName("kv")
    with pytest.raises(JsException, match="SQL is not enabled"):
        await stub.tables()
    with pytest.raises(JsException, match="Values cannot be larger than"):
        await stub.big(200 * 1024)  # over the key-value backend's 128 KiB
    await edges.close(edge)
    edge = await edges.make(source, bindings=[{"name": "COUNTER", "class_name": "Counter"}],
                            migrations=[{"tag": "v1", "new_sqlite_classes": ["Counter"]}])
    stub = env_at(edge, "LHR").COUNTER.getByName("sql")
    assert await stub.tables() == {"one": 1}
    await stub.big(200 * 1024)
