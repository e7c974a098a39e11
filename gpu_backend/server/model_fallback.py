"""Which served model answers a Workers AI name that the backend was not given: the built-in of its task.

A Worker written for Cloudflare calls names such as ``@cf/openai/gpt-oss-120b``. Unless the backend
maps that name to a checkpoint, a ``@cf/`` or ``@hf/`` name is answered by the built-in model of its
task: text generation by ``@cf/edgewise/tiny-shakespeare``, text embeddings by the built-in MiniLM.
The task comes from the name, by ``TASK_RULES``: the first marker found in the lower-cased name
wins, so the tasks edgewise has no local model for (images, speech, translation, classification)
are matched before the families that share letters with them (``bge-reranker`` is no embedder,
``uform-gen2-qwen`` no chat model). A name no rule matches, a name of another task, a name outside
``@cf/``/``@hf/``, and every unmapped name under ``strict`` stay ``NoSuchModelError`` (5007).
Each name served this way is logged once per process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

from ..builtin_models import TEXT_EMBEDDINGS, TEXT_GENERATION
from .errors import NoSuchModelError

log = logging.getLogger("edgewise.backend")

WORKERS_AI_PREFIXES = ("@cf/", "@hf/")
# The built-in model that answers each task edgewise runs, by Workers AI's task name.
FALLBACK_MODELS = {
    TEXT_GENERATION: "@cf/edgewise/tiny-shakespeare",
    TEXT_EMBEDDINGS: "@cf/sentence-transformers/all-minilm-l6-v2",
}
_OTHER_TASKS = (
    ("reranker", "Text Classification"), ("distilbert", "Text Classification"),
    ("whisper", "Automatic Speech Recognition"), ("nova-3", "Automatic Speech Recognition"),
    ("smart-turn", "Voice Activity Detection"),
    ("melotts", "Text-to-Speech"), ("aura-", "Text-to-Speech"),
    ("flux", "Text-to-Image"), ("stable-diffusion", "Text-to-Image"), ("dreamshaper", "Text-to-Image"),
    ("lucid-origin", "Text-to-Image"), ("phoenix", "Text-to-Image"),
    ("llava", "Image-to-Text"), ("uform", "Image-to-Text"),
    ("m2m100", "Translation"), ("indictrans", "Translation"),
    ("bart-large-cnn", "Summarization"), ("resnet", "Image Classification"), ("detr-", "Object Detection"),
)
_EMBEDDINGS = tuple((marker, TEXT_EMBEDDINGS) for marker in (
    "bge-", "embedding", "e5-", "minilm", "gte-", "mpnet", "nomic-embed"))
_TEXT_GENERATION = tuple((marker, TEXT_GENERATION) for marker in (
    "llama", "mistral", "mixtral", "qwen", "qwq", "gemma", "gpt-oss", "deepseek", "phi-", "hermes", "openchat",
    "granite", "kimi", "glm-", "falcon", "zephyr", "starling", "neural-chat", "sqlcoder", "cybertron", "discolm",
    "nemotron", "sea-lion", "jais"))
# (marker in the lower-cased name, Workers AI task); the first match wins.
TASK_RULES: tuple[tuple[str, str], ...] = (*_OTHER_TASKS, *_EMBEDDINGS, *_TEXT_GENERATION)


def task_of(name: str) -> str | None:
    """The Workers AI task of a ``@cf/``/``@hf/`` name by ``TASK_RULES``; None for any other name or no match."""
    lowered = name.lower()
    if not lowered.startswith(WORKERS_AI_PREFIXES):
        return None
    return next((task for marker, task in TASK_RULES if marker in lowered), None)


class ModelFallback:
    """Resolves a name to the served model that answers it; ``strict``: only served names answer."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._announced: set[str] = set()
        self._lock = threading.Lock()

    def resolve(self, name: str, served: Collection[str]) -> str:
        """``name`` when served, else the built-in of its task; NoSuchModelError saying why when neither."""
        if name in served:
            return name
        task = task_of(name)
        fallback = FALLBACK_MODELS.get(task or "")
        if fallback is None:
            raise NoSuchModelError(name, list(served), _no_fallback_reason(task))
        if self.strict:
            raise NoSuchModelError(name, list(served), f"it is not mapped and strict_models is on: map it under "
                                   f"[edgewise.models], or turn strict_models off to serve it with the built-in "
                                   f"{fallback}")
        if fallback not in served:
            raise NoSuchModelError(name, list(served), f"it is not mapped and this backend does not serve the "
                                   f"built-in {fallback} that would answer it: map it under [edgewise.models] "
                                   f"(edgewise backend serve: --model NAME=PATH), or serve {fallback}")
        self._announce(name, fallback)
        return fallback

    def _announce(self, name: str, fallback: str) -> None:
        with self._lock:
            if name in self._announced:
                return
            self._announced.add(name)
        log.warning("%s is not mapped: serving it with the built-in %s (map it under [edgewise.models] to use a "
                    "real checkpoint)", name, fallback)


def _no_fallback_reason(task: str | None) -> str | None:
    if task is None:  # outside @cf/ and @hf/, or a family no rule knows: as any unknown name
        return None
    return (f"edgewise has no local model for {task} (it runs text generation and text embeddings); to call "
            f"this name, map it to a local checkpoint under [edgewise.models] in the wrangler config "
            f"(edgewise backend serve: --model NAME=PATH)")
