"""``JsDict`` and the RPC conversions: binding results read as ``r["x"]`` and ``r.x`` alike."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from workers import JsDict, python_from_rpc, python_to_rpc
from workers._jsdict import to_jsdict


def test_attribute_and_key_access() -> None:
    result = JsDict({"response": "hi", "usage": 3})
    assert result.response == "hi" == result["response"]
    result.extra = [1]
    assert result["extra"] == [1]
    del result.extra
    assert "extra" not in result
    assert isinstance(result, dict)


def test_nested_dicts_inside_lists_are_converted() -> None:
    value = to_jsdict({"results": [{"id": 1, "tags": {"a": True}}], "plain": (1, 2)})
    assert isinstance(value, JsDict)
    assert value.results[0].id == 1
    assert value.results[0].tags.a is True
    assert isinstance(value.results, list)
    assert value.plain == (1, 2)


def test_python_from_rpc_converts_recursively() -> None:
    value = python_from_rpc([{"a": {"b": 2}}, "x", None])
    assert value[0].a.b == 2
    assert value[1:] == ["x", None]


def test_missing_attribute_is_attribute_error() -> None:
    value = JsDict(a=1)
    with pytest.raises(AttributeError, match="missing"):
        _ = value.missing
    with pytest.raises(AttributeError):
        del value.missing
    assert getattr(value, "missing", "default") == "default"
    assert not hasattr(value, "missing")


def test_dict_methods_shadow_keys() -> None:
    value = JsDict({"items": "shadowed", "keys": 1})
    assert callable(value.items)
    assert value["items"] == "shadowed"


def test_copies_pickles_and_serialises_as_a_dict() -> None:
    value = to_jsdict({"a": {"b": [1, {"c": 2}]}, "dunder": "__class__"})
    for clone in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert type(clone) is JsDict and clone == value and clone.a.b[1].c == 2
    assert json.loads(json.dumps(value)) == value
    assert value.__class__ is JsDict


def test_to_py_returns_the_dict() -> None:
    value = JsDict(a=1)
    assert value.to_py() is value


@pytest.mark.parametrize("bad", [(1, 2), bytearray(b"x"), {"nested": (1,)}, [{"deep": bytearray()}]])
def test_python_to_rpc_rejects_tuples_and_bytearrays(bad: object) -> None:
    with pytest.raises(TypeError, match=r"cannot be sent over RPC\.$"):
        python_to_rpc(bad)


def test_python_to_rpc_names_the_type() -> None:
    with pytest.raises(TypeError, match=r"^tuple cannot be sent over RPC\.$"):
        python_to_rpc((1,))
    with pytest.raises(TypeError, match=r"^bytearray cannot be sent over RPC\.$"):
        python_to_rpc(bytearray())


def test_python_to_rpc_passes_plain_values_through() -> None:
    value = {"a": [1, "b", None, {"c": b"bytes"}]}
    assert python_to_rpc(value) == value
