"""Handler discovery and relaxed calls (checklist 1-4), through the front door of a one-Worker edge."""

from __future__ import annotations

import pytest

from edge_runtime.loader import WorkerLoadError

HELLO = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response("Hello world!")
"""


async def test_hello_world(edge_client) -> None:
    _, client = edge_client(HELLO)
    response = await client.get("/")
    assert response.status_code == 200
    assert response.text == "Hello world!"
    assert response.headers["content-type"] == "text/plain;charset=UTF-8"


@pytest.mark.parametrize(("signature", "body"), [
    ("self", "'no request'"),
    ("self, request", "request.url"),
    ("self, request, env", "f'{request.url} env={env!r}'"),
    ("self, request, env, ctx", "f'{request.url} env={env!r} ctx={ctx!r}'"),
])
async def test_fetch_takes_zero_to_three_arguments(edge_client, signature: str, body: str) -> None:
    _, client = edge_client(f"""
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch({signature}):
                return Response({body})
    """)
    response = await client.get("/path?q=1")
    assert response.status_code == 200
    expected = {
        "self": "no request",
        "self, request": "http://edge.test/path?q=1",
        "self, request, env": "http://edge.test/path?q=1 env=None",
        "self, request, env, ctx": "http://edge.test/path?q=1 env=None ctx=None",
    }[signature]
    assert response.text == expected


async def test_sync_fetch_is_accepted(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            def fetch(self, request):
                return Response("sync")
    """)
    assert (await client.get("/")).text == "sync"


async def test_a_new_instance_serves_each_request(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint

        INSTANCES = []

        class Default(WorkerEntrypoint):
            def __init__(self, ctx, env):
                super().__init__(ctx, env)
                self.count = 0
                INSTANCES.append(self)

            async def fetch(self, request):
                self.count += 1
                return Response(f"count={self.count} instances={len(INSTANCES)}")
    """)
    assert (await client.get("/")).text == "count=1 instances=1"
    assert (await client.get("/")).text == "count=1 instances=2"
    assert (await client.get("/")).text == "count=1 instances=3"


async def test_init_that_skips_super_still_gets_env_and_ctx(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            def __init__(self, ctx, env):
                self.label = "custom"

            async def fetch(self, request):
                return Response(f"{self.label} {self.env.MESSAGE} {type(self.ctx).__name__}")
    """, vars={"MESSAGE": "from vars"})
    assert (await client.get("/")).text == "custom from vars Context"


def test_default_class_and_top_level_on_fetch_fail_at_load(make_edge) -> None:
    source = """
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response("class")

        async def on_fetch(request, env):
            return Response("function")
    """
    with pytest.raises(WorkerLoadError, match="Cannot define multiple default entrypoints"):
        make_edge(source)
    # also where global handlers are honoured
    with pytest.raises(WorkerLoadError, match="Cannot define multiple default entrypoints"):
        make_edge(source, compatibility_date="2024-01-01")


LEGACY = """
    from workers import Response, handler

    {decorator}
    async def on_fetch(request, env):
        return Response(f"legacy {{request.method}} {{env.MESSAGE}}")
"""


@pytest.mark.parametrize("decorator", ["", "@handler"])
@pytest.mark.parametrize(("date", "flags"), [
    ("2024-01-01", ()),
    ("2025-08-13", ()),
    ("2025-11-02", ("disable_python_no_global_handlers",)),
])
async def test_legacy_on_fetch_where_global_handlers_are_honoured(edge_client, decorator: str, date: str,
                                                                  flags: tuple[str, ...]) -> None:
    _, client = edge_client(LEGACY.format(decorator=decorator), compatibility_date=date,
                            compatibility_flags=flags, vars={"MESSAGE": "hi"})
    response = await client.post("/")
    assert response.status_code == 200
    assert response.text == "legacy POST hi"


@pytest.mark.parametrize(("date", "flags"), [
    ("2025-08-14", ()),
    ("2025-11-02", ()),
    ("2024-01-01", ("python_no_global_handlers",)),
])
def test_legacy_on_fetch_with_a_current_date_is_a_clear_load_error(make_edge, date: str,
                                                                   flags: tuple[str, ...]) -> None:
    with pytest.raises(WorkerLoadError) as raised:
        make_edge(LEGACY.format(decorator="@handler"), compatibility_date=date, compatibility_flags=flags)
    message = str(raised.value)
    assert "on_fetch()" in message
    assert "2025-08-14" in message
    assert "class Default(WorkerEntrypoint)" in message
    assert "disable_python_no_global_handlers" in message


async def test_legacy_on_fetch_with_one_argument(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response

        async def on_fetch(request):
            return Response(request.url)
    """, compatibility_date="2024-01-01")
    assert (await client.get("/one")).text == "http://edge.test/one"


async def test_module_without_handlers_answers_1101(edge_client) -> None:
    _, client = edge_client("X = 1\n")
    response = await client.get("/")
    assert response.status_code == 500
    assert "1101" in response.text
    assert "does not export a fetch() function" in response.text
