"""Which schema a Workers AI name answers in: Workers AI's own, or OpenAI's ``chat.completion``.

Cloudflare's catalog gives each model an output schema. Most text models answer ``{response,
tool_calls?, usage}``; the models added in 2026 with the OpenAI-superset schema (gemma-4,
kimi-k2.5 and later, glm-5.x, deepseek-v4, gpt-oss) answer a ``chat.completion`` object, even
through ``env.AI.run``, and stream ``chat.completion.chunk`` events. The shape follows the name a
Worker asks for, not the checkpoint that serves it: ``@cf/openai/gpt-oss-120b`` answered by the
built-in model still answers as gpt-oss does on Cloudflare. The catalog lists the shape of each
served name as the ``output_schema`` property.
"""

from __future__ import annotations

from typing import Literal

AnswerShape = Literal["workers-ai", "chat.completion"]
WORKERS_AI: AnswerShape = "workers-ai"
CHAT_COMPLETION: AnswerShape = "chat.completion"
# Markers (in the lower-cased name) of the families Cloudflare serves with the OpenAI-superset schema
# (shared/reference/cloudflare-2026.md §3.1).
CHAT_COMPLETION_MARKERS = ("gemma-4", "kimi-k2.5", "kimi-k2.6", "kimi-k2.7", "glm-5", "deepseek-v4", "gpt-oss")


def answer_shape(name: str) -> AnswerShape:
    """The schema the text model ``name`` answers in on the Workers AI run route and ``env.AI.run``."""
    lowered = name.lower()
    return CHAT_COMPLETION if any(marker in lowered for marker in CHAT_COMPLETION_MARKERS) else WORKERS_AI
