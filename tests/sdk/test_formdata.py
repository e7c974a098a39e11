"""``FormData`` as the Python SDK reads and writes it: item access beside the JS methods."""

from __future__ import annotations

import asyncio

import pytest
from workers import Blob, File, FormData, Response


def test_item_assignment_replaces_and_item_access_reads_the_first_value() -> None:
    form = FormData()
    form.append("tag", "a")
    form.append("tag", "b")
    form["prompt"] = "redraw it"
    form["tag"] = "c"  # set(): every earlier "tag" goes
    assert list(form.items()) == [("prompt", "redraw it"), ("tag", "c")]
    assert form["prompt"] == "redraw it" and form["missing"] is None and len(form) == 2
    del form["prompt"]
    assert "prompt" not in form and len(form) == 1
    with pytest.raises(TypeError, match="single item"):
        form["tag"] = ["x", "y"]


def test_a_form_built_with_items_encodes_as_multipart() -> None:
    form = FormData()
    form["prompt"] = "hi"
    form.append("image", Blob(b"\x89PNG", "image/png"), "input.png")
    response = Response(form)
    assert response.headers["content-type"].startswith("multipart/form-data; boundary=")
    parsed = asyncio.run(response.form_data())
    image = parsed["image"]
    assert parsed["prompt"] == "hi" and isinstance(image, File) and image.name == "input.png"
    assert image.content_type == "image/png" and asyncio.run(image.bytes()) == b"\x89PNG"
