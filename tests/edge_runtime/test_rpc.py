"""What may cross an RPC boundary, and how calls, results and errors cross it (edge_runtime/rpc.py)."""

from __future__ import annotations

import datetime

import pytest

from edge_runtime.rpc import RpcFunction, call_method, from_rpc, public_method, to_rpc
from edgewise_sdk.pyodide.ffi import JsException
from edgewise_sdk.workers import JsDict, Response


class Target:
    def add(self, a, b):
        return a + b

    async def echo(self, value):
        return value

    async def mutate(self, items):
        items.append("callee")
        return items

    def fail(self):
        raise KeyError("missing thing")

    def _hidden(self):
        return "no"

    async def fetch(self, request):
        return "handlers are not RPC methods"

    label = "an attribute"


class Opaque:
    pass


def test_values_are_copied_and_dicts_get_attribute_access() -> None:
    sent = {"name": "ada", "nested": {"bytes": b"\x00\x01", "when": datetime.datetime(2026, 1, 2)}, "list": [1, 2.5]}
    received = from_rpc(to_rpc(sent))
    assert received == sent and received is not sent
    assert isinstance(received, JsDict) and received.nested.bytes == b"\x00\x01"
    assert to_rpc(memoryview(b"ab")) == b"ab"
    assert to_rpc({1: "a", 2.5: "b", 3.0: "c"}) == {"1": "a", "2.5": "b", "3": "c"}  # keys as JS objects keep them
    assert to_rpc({False: "no"}) == {"false": "no"}
    assert to_rpc({"tags": {"x", "y"}}) == {"tags": {"x", "y"}}  # a JS Set, back as a set
    response = Response("by reference")
    assert to_rpc(response) is response


@pytest.mark.parametrize(("value", "message"), [
    ((1, 2), "tuple cannot be sent over RPC"),
    (bytearray(b"x"), "bytearray cannot be sent over RPC"),
    (Opaque(), "Opaque cannot be sent over RPC"),
    ({"deep": [1, (2,)]}, "tuple cannot be sent over RPC (the argument['deep'][1])"),
    ({None: "null key"}, "a dict key sent over RPC must be a str or a number, got NoneType"),
])
def test_what_cannot_be_cloned_is_refused_by_name(value: object, message: str) -> None:
    with pytest.raises(TypeError) as error:
        to_rpc(value)
    assert message in str(error.value)


async def test_a_call_copies_arguments_in_and_the_result_out() -> None:
    items = ["caller"]
    assert await call_method(Target(), "mutate", (items,), {}) == ["caller", "callee"]
    assert items == ["caller"]  # the callee changed its copy
    assert await call_method(Target(), "add", (2,), {"b": 3}) == 5
    assert (await call_method(Target(), "echo", ({"a": {"b": 1}},), {})).a.b == 1


async def test_an_error_in_the_callee_reaches_the_caller_with_its_message() -> None:
    with pytest.raises(JsException) as error:
        await call_method(Target(), "fail", (), {})
    assert str(error.value) == "KeyError: 'missing thing'"
    assert isinstance(error.value.__cause__, KeyError)


@pytest.mark.parametrize("name", ["nothing", "_hidden", "__init__", "fetch", "label"])
def test_only_public_methods_are_reachable(name: str) -> None:
    with pytest.raises(TypeError, match=f'The RPC receiver does not implement the method "{name}".'):
        public_method(Target(), name)


async def test_a_function_crosses_as_a_stub_that_converts_too() -> None:
    seen = []

    def callback(value):
        seen.append(value)
        return {"got": value}

    stub = to_rpc(callback)
    assert isinstance(stub, RpcFunction)
    assert (await stub([1])).got == [1]
    with pytest.raises(TypeError, match="tuple cannot be sent over RPC"):
        await stub((1,))
    assert seen == [[1]]
