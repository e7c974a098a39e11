"""``Blob`` and ``File`` with both spellings Workers use: the Python SDK's (``content_type``,
``last_modified``) and JS's (``type``, ``lastModified``, ``Blob.new``)."""

from __future__ import annotations

import asyncio
import time

import js
import pytest
from workers import Blob, File


def test_the_python_sdk_spelling() -> None:
    positional = Blob(b"\x89PNG", "image/png")  # the image-redraw template's call
    assert positional.content_type == positional.type == "image/png"
    keyword = Blob([b"a", "b"], content_type="text/plain")
    assert keyword.content_type == "text/plain" and asyncio.run(keyword.text()) == "ab"
    assert Blob(keyword).content_type == "text/plain"  # a single Blob passes its type on
    assert Blob([keyword]).content_type == ""  # in a list it does not, as in JS
    assert keyword.slice(0, 1, content_type="text/x").content_type == "text/x"


def test_files_keep_a_modification_time() -> None:
    before = time.time_ns() // 1_000_000
    made = File([b"x"], "a.txt", content_type="text/plain")
    assert made.name == "a.txt" and made.content_type == "text/plain"
    assert before <= made.last_modified == made.lastModified <= time.time_ns() // 1_000_000
    assert File([b"x"], "b", last_modified=5).last_modified == 5
    assert File(File([b"x"], "c", last_modified=7), "d").last_modified == 7
    assert js.File.new(["x"], "e", {"type": "text/plain", "lastModified": 9}).last_modified == 9


def test_native_endings_turn_text_line_breaks_into_this_systems() -> None:
    assert asyncio.run(Blob(["a\r\nb\rc"], endings="native").text()) == "a\nb\nc"
    assert asyncio.run(Blob(["a\r\nb"]).text()) == "a\r\nb"
    assert asyncio.run(js.Blob.new(["a\r\n", b"\r\n"], {"endings": "native"}).bytes()) == b"a\n\r\n"
    with pytest.raises(TypeError, match="endings must be 'transparent' or 'native'"):
        Blob(["x"], endings="unix")
