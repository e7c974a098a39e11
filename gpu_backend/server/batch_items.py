"""One async batch item, run as a single run of its inputs would be, at the batch's priority.

Its result is what ``POST .../ai/run/{model}`` answers for the same inputs (workers_ai.py makes
both); a ServiceError is its ``error``. The item holds a background slot (admission.py) for its run,
and raises ``NoBackgroundSlot`` before any work when none may be had, so that it waits instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .batch_store import ItemOutcome, QueuedItem
from .errors import ServiceError
from .generation import Generation
from .schemas import parse_embeddings, parse_text_generation
from .workers_ai import embeddings_output, text_result

if TYPE_CHECKING:
    from .api import Service


async def run_item(service: Service, item: QueuedItem) -> ItemOutcome:
    try:
        model = service.client.served_name(item.model)
        if service.client.model_info(model).task == "text-embeddings":
            return await _embed(service, model, item)
        return await _generate(service, model, item)
    except ServiceError as error:
        return ItemOutcome(error={"code": error.code, "message": error.message})


async def _generate(service: Service, model: str, item: QueuedItem) -> ItemOutcome:
    inputs = parse_text_generation(item.inputs, item.model, None, service.limits)
    async with Generation(service, model, inputs, background=True) as generation:
        completion = await generation.complete()
    result = text_result(item.model, inputs, completion, generation.tool_parser)
    usage = completion.usage
    return ItemOutcome(result, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


async def _embed(service: Service, model: str, item: QueuedItem) -> ItemOutcome:
    inputs = parse_embeddings(item.inputs, service.limits)
    with service.admission.background_slot(model):
        result = await service.client.embed(model, inputs)
    service.metrics.prompt_tokens.labels(model).inc(result.num_tokens)
    return ItemOutcome(embeddings_output(inputs, result), prompt_tokens=result.num_tokens)
