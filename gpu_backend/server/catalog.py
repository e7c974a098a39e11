"""The model objects that ``/ai/models/search``, ``env.AI.models()`` and ``/v1/models`` list."""

from __future__ import annotations

import uuid
from typing import Any

from .answer_shapes import answer_shape
from .client import ModelInfo

# Workers AI's task ids (cloudflare.md 2.7): clients filter on them.
TASKS = {
    "text-generation": {"id": "c329a1f9-323d-4e91-b2aa-582dd4188d34", "name": "Text Generation",
                        "description": "Family of generative text models, such as large language models (LLM), "
                                       "that can be adapted for a variety of natural language tasks."},
    "text-embeddings": {"id": "0137cdcf-162a-4108-94f2-1ca59e8c65ee", "name": "Text Embeddings",
                        "description": "Feature extraction models transform raw data into numerical features that "
                                       "can be processed while preserving the information in the original dataset."},
}
_NAMESPACE = uuid.UUID("5f0f5c8e-8d0b-4d55-9a8a-6f5b0c1e2d3a")
DEFAULT_PER_PAGE = 50


def model_object(info: ModelInfo) -> dict[str, Any]:
    """A Workers AI catalog entry; the id is stable for a name, so clients may cache it."""
    return {
        "id": str(uuid.uuid5(_NAMESPACE, info.name)),
        "source": 1,
        "name": info.name,
        "description": f"{info.name}, served by this edgewise backend",
        "task": TASKS[info.task],
        "tags": [],
        "properties": _properties(info),
    }


def _properties(info: ModelInfo) -> list[dict[str, str]]:
    if info.task != "text-generation":
        return [{"property_id": "max_input_tokens", "value": str(info.context_window)}]
    return [{"property_id": "context_window", "value": str(info.context_window)},
            {"property_id": "function_calling", "value": "true"},  # every text model: tools go through its template
            {"property_id": "output_schema", "value": answer_shape(info.name)}]  # edgewise's: answer_shapes.py


def search(models: list[ModelInfo], params: dict[str, str]) -> list[dict[str, Any]]:
    """One page of the models matching ``search``, ``task`` and ``author``; a page past the end is empty."""
    matches = [info for info in models if _matches(info, params)]
    page, per_page = _positive(params.get("page"), 1), _positive(params.get("per_page"), DEFAULT_PER_PAGE)
    return [model_object(info) for info in matches[(page - 1) * per_page:page * per_page]]


def _matches(info: ModelInfo, params: dict[str, str]) -> bool:
    task = params.get("task", "").lower()
    text = params.get("search", "").lower()
    author = params.get("author", "").lower()
    task_info = TASKS[info.task]
    return ((not task or task in (task_info["id"], task_info["name"].lower(), info.task))
            and (not text or text in info.name.lower())
            and (not author or info.name.lower().split("/")[1:2] == [author]))


def _positive(value: str | None, default: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number > 0 else default
