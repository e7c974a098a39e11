"""Workers AI inputs, checked against the text-generation and embeddings schemas.

Text generation takes ``prompt`` or ``messages`` (exactly one), or the Responses-style
``instructions`` / ``input`` that some Workers AI models accept; the sampling fields have
Workers AI's ranges and defaults (``max_tokens`` 256, ``temperature`` 0.6). Embeddings take
``text`` as a string or a list of up to 100 strings. Every problem is a ``BadInputError``
naming the field and what to send instead; fields the schemas do not know are ignored, as
Workers AI ignores them. Sizes are capped by ``InputLimits`` (limits.py), and text with a lone
UTF-16 surrogate (JSON's ``"\\ud800"``), which no tokenizer can encode, is refused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..engine.sampling_params import MAX_ABS_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_LOGPROBS, SamplingParams
from ..engine.structured_output import StructuredOutput
from .errors import BadInputError, LoraUnsupportedError
from .limits import DEFAULT_LIMITS, InputLimits
from .responses_input import chat_messages
from .structured import Dialect, parse_response_format
from .tools import Tool, ToolChoice, message_tool_calls, parse_tool_choice, parse_tools

DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.6
MAX_SEED = 9_999_999_999
MAX_CHOICES = 128  # Workers AI's documented bound for n; this backend answers one
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")  # accepted; no served model has a reasoning mode
UNSUPPORTED = {
    "functions": "embedded function calling (functions) is not supported by this backend yet",
    "image": "image inputs are not supported by this backend's models",
    "requests": "the batch form (requests) runs as an async batch only: send it with ?queueRequest=true (REST) or "
                "{'queueRequest': True} (env.AI.run's options)",
}

Message = dict[str, Any]  # role, content, and name, tool_calls or tool_call_id where given


@dataclass(frozen=True)
class TextGenerationInput:
    prompt: str | None  # exactly one of prompt and messages is set
    messages: list[Message] | None
    raw: bool  # the prompt goes to the model as is, without the chat template
    stream: bool
    responses_style: bool  # came as instructions/input: answer with an "output" list
    sampling: SamplingParams
    session: str | None = None  # x-session-affinity: requests of one session go to the same instances
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice("auto")
    parallel_tool_calls: bool = True
    response_format: StructuredOutput | None = None  # JSON mode: also the sampling's constraint


@dataclass(frozen=True)
class EmbeddingsInput:
    texts: list[str]
    pooling: str  # "mean" or "cls"


SESSION_HEADER = "x-session-affinity"


def parse_text_generation(body: Any, model: str, session: str | None = None,
                          limits: InputLimits = DEFAULT_LIMITS, dialect: Dialect = "workers-ai",
                          streams_json: bool = False) -> TextGenerationInput:
    """``dialect``: whose spelling of ``response_format`` the body uses (the OpenAI routes translate the rest).
    ``streams_json``: JSON mode may stream (as text) on the Workers AI route, for a chat.completion-shaped model."""
    inputs = _object(body)
    for name, reason in UNSUPPORTED.items():
        if inputs.get(name) not in (None, [], ""):
            raise BadInputError(f"{reason}; remove '{name}'", param=name)
    if inputs.get("lora") not in (None, ""):
        raise LoraUnsupportedError(model)
    response_format = parse_response_format(inputs.get("response_format"), dialect)
    stream = _bool(inputs, "stream", False)
    if response_format is not None and stream and dialect == "workers-ai" and not streams_json:
        raise BadInputError("JSON mode does not stream on Workers AI (its answer is one JSON object): remove "
                            "'stream', or use /v1/chat/completions, which streams the JSON text", param="stream")
    tools = parse_tools(inputs.get("tools"))
    tool_choice = parse_tool_choice(inputs.get("tool_choice"), tools)
    if tool_choice.is_forced and response_format is not None:
        raise BadInputError("'tool_choice' forces a tool call, which 'response_format' cannot shape: send one of "
                            "them", param="tool_choice")
    prompt, messages, responses_style = _prompt_or_messages(inputs, limits)
    raw = _bool(inputs, "raw", False)
    sampling = replace(_sampling(inputs), structured=response_format)
    return TextGenerationInput(prompt, messages, raw, stream, responses_style, sampling, session or None, tools,
                               tool_choice, _bool(inputs, "parallel_tool_calls", True), response_format)


def parse_embeddings(body: Any, limits: InputLimits = DEFAULT_LIMITS) -> EmbeddingsInput:
    inputs = _object(body)
    text = inputs.get("text")
    texts = [text] if isinstance(text, str) else text
    most = limits.max_embedding_texts
    if not isinstance(texts, list) or not texts:
        raise BadInputError(f"'text' is required: a non-empty string or a list of 1 to {most} strings", param="text")
    if len(texts) > most:
        raise BadInputError(f"'text' has {len(texts)} items; send at most {most} per request", param="text")
    for index, item in enumerate(texts):
        if not isinstance(item, str) or not item:
            raise BadInputError(f"'text[{index}]' must be a non-empty string", param="text")
        _unicode(item, f"text[{index}]", "text")
    pooling = inputs.get("pooling", "mean")
    if pooling not in ("mean", "cls"):
        raise BadInputError(f"'pooling' must be \"mean\" or \"cls\", got {pooling!r}", param="pooling")
    return EmbeddingsInput(list(texts), pooling)


def parse_stop(stop: Any, limits: InputLimits = DEFAULT_LIMITS) -> list[str] | None:
    """OpenAI's ``stop``: a string or a list of strings, each ending the text where it appears."""
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(text, str) for text in stops):
        raise BadInputError("'stop' must be a string or a list of strings", param="stop")
    if len(stops) > limits.max_stop_sequences:
        raise BadInputError(f"'stop' has {len(stops)} strings; send at most {limits.max_stop_sequences}",
                            param="stop")
    for index, text in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop[{index}]"
        if not text:
            raise BadInputError(f"'{where}' is empty: each stop string needs at least one character", param="stop")
        if len(text) > limits.max_stop_chars:
            raise BadInputError(f"'{where}' has {len(text)} characters; at most {limits.max_stop_chars}",
                                param="stop")
        _unicode(text, where, "stop")
    return stops


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadInputError(f"the inputs must be a JSON object, got {type(body).__name__}")
    return body


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _prompt_or_messages(inputs: dict[str, Any], limits: InputLimits) -> tuple[str | None, list[Message] | None, bool]:
    has_prompt, has_messages = "prompt" in inputs, "messages" in inputs
    responses_style = "input" in inputs or "instructions" in inputs
    if has_prompt + has_messages + responses_style > 1:
        raise BadInputError("'prompt', 'messages' and 'instructions'/'input' are mutually exclusive: send one")
    if has_prompt:
        prompt = inputs["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise BadInputError("'prompt' must be a non-empty string", param="prompt")
        if len(prompt) > limits.max_prompt_chars:
            raise BadInputError(f"'prompt' has {len(prompt)} characters; at most {limits.max_prompt_chars}",
                                param="prompt")
        return _unicode(prompt, "prompt", "prompt"), None, False
    if has_messages:
        return None, _capped(_messages(inputs["messages"], "messages", limits), "messages", limits), False
    if responses_style:
        return None, _capped(_responses_messages(inputs, limits), "input", limits), True
    raise BadInputError("required properties at '/' are 'prompt' or 'messages': send one of them")


def _messages(value: Any, field: str, limits: InputLimits) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadInputError(f"'{field}' must be a non-empty list of {{role, content}} objects", param=field)
    if len(value) > limits.max_messages:
        raise BadInputError(f"'{field}' has {len(value)} messages; send at most {limits.max_messages}", param=field)
    messages = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise BadInputError(f"'{where}' must be an object with 'role' and 'content'", param=field)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadInputError(f"'{where}.role' must be a string such as \"user\" or \"assistant\"", param=field)
        calls = message.get("tool_calls")
        given = message.get("content")
        content = "" if given is None and calls else _content(given, where, field)  # a call without text
        entry: Message = {"role": _unicode(role, f"{where}.role", field),
                          "content": _unicode(content, f"{where}.content", field)}
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                entry[key] = _unicode(message[key], f"{where}.{key}", field)
        if calls:
            entry["tool_calls"] = message_tool_calls(calls, where, field)
        messages.append(entry)
    return messages


def _capped(messages: list[Message], field: str, limits: InputLimits) -> list[Message]:
    """``messages`` unless their contents together pass the prompt's cap (they all reach the model)."""
    num_chars = sum(len(message["content"]) for message in messages)
    if num_chars > limits.max_prompt_chars:
        raise BadInputError(f"'{field}' has {num_chars} characters of content; at most {limits.max_prompt_chars} "
                            f"in all", param=field)
    return messages


def _unicode(text: str, where: str, field: str) -> str:
    """``text`` unless it holds a lone surrogate, which JSON's "\\ud800" lets through and no encoder takes."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BadInputError(f"'{where}' has a lone UTF-16 surrogate (\\u{ord(text[error.start]):04x}) at "
                                f"character {error.start}: send valid Unicode, surrogates only in pairs",
                                param=field) from None
    return text


def _content(content: Any, where: str, field: str) -> str:
    """A message's text: a string, or a list of text parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if _get(part, "type") not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
                raise BadInputError(f"'{where}.content' parts must be text parts {{\"type\": \"text\", "
                                    f"\"text\": ...}}; this backend's models take text only", param=field)
            texts.append(part["text"])
        return "".join(texts)
    raise BadInputError(f"'{where}.content' must be a string", param=field)


def _responses_messages(inputs: dict[str, Any], limits: InputLimits) -> list[Message]:
    messages: list[Message] = []
    instructions = inputs.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadInputError("'instructions' must be a string", param="instructions")
        messages.append({"role": "system", "content": _unicode(instructions, "instructions", "instructions")})
    given = inputs.get("input")
    if isinstance(given, str) and given:
        messages.append({"role": "user", "content": _unicode(given, "input", "input")})
    elif isinstance(given, list) and given:
        messages.extend(_messages(chat_messages(given), "input", limits))
    else:
        raise BadInputError("'input' is required: a non-empty string, or a list of items such as {\"role\": \"user\", "
                            "\"content\": \"...\"}", param="input")
    return messages


def _sampling(inputs: dict[str, Any]) -> SamplingParams:
    _check_one_choice(inputs)
    _check_reasoning_effort(inputs)
    max_tokens = _max_tokens(inputs)
    seed = _int(inputs, "seed", None, 1, MAX_SEED)
    top_k = _int(inputs, "top_k", None, 1, 50)
    temperature = _number(inputs, "temperature", DEFAULT_TEMPERATURE, 0.0, 5.0)
    top_p = _number(inputs, "top_p", None, 0.0, 2.0)
    # Workers AI allows 0..2 for both: top_p above 1 keeps every token, 0 only the most likely
    # one; a multiplicative repetition penalty of 0 means none, as 1.0 does
    if top_p == 0.0:
        top_p, top_k = None, 1
    repetition = _number(inputs, "repetition_penalty", None, 0.0, 2.0)
    return SamplingParams(
        temperature=temperature,
        top_p=min(top_p, 1.0) if top_p is not None else 1.0,
        top_k=top_k or -1,
        seed=seed,
        repetition_penalty=repetition if repetition else 1.0,
        frequency_penalty=_number(inputs, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(inputs, "presence_penalty", 0.0, -2.0, 2.0),
        max_tokens=max_tokens,
        ignore_eos=_bool(inputs, "ignore_eos", False),  # the official SDK sends it; benchmarks need it
        logprobs=_logprobs(inputs),
        logit_bias=_logit_bias(inputs),
    )


def _max_tokens(inputs: dict[str, Any]) -> int:
    """``max_tokens``, or OpenAI's newer name for it, ``max_completion_tokens``; two different values are a 400."""
    max_tokens = _int(inputs, "max_tokens", None, 1, None)
    max_completion_tokens = _int(inputs, "max_completion_tokens", None, 1, None)
    if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
        raise BadInputError(f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({max_completion_tokens}) "
                            f"disagree: send one of them", param="max_completion_tokens")
    return max_completion_tokens or max_tokens or DEFAULT_MAX_TOKENS


def _logprobs(inputs: dict[str, Any]) -> int | None:
    """How many most likely tokens to report with each generated token's logprob (None: no logprobs);
    ``top_logprobs`` is checked always, and counts only with ``logprobs: true``."""
    top_logprobs = _int(inputs, "top_logprobs", None, 0, MAX_LOGPROBS)
    return (top_logprobs or 0) if _bool(inputs, "logprobs", False) else None


def _check_one_choice(inputs: dict[str, Any]) -> None:
    num_choices = _int(inputs, "n", 1, 1, MAX_CHOICES)
    if num_choices != 1:
        raise BadInputError(f"'n' must be 1 (or left out): this backend answers one choice per request, and 'n' is "
                            f"{num_choices}; send {num_choices} requests for {num_choices} answers", param="n")


def _check_reasoning_effort(inputs: dict[str, Any]) -> None:
    effort = inputs.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise BadInputError(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}",
                            param="reasoning_effort")


def _logit_bias(inputs: dict[str, Any]) -> dict[int, float] | None:
    """OpenAI's ``logit_bias``: token ids (JSON keys, so strings) to biases in [-100, 100]."""
    bias = inputs.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise BadInputError(f"'logit_bias' must be an object mapping token ids to biases such as "
                            f"{{\"1734\": -100}}, got {type(bias).__name__}", param="logit_bias")
    if len(bias) > MAX_LOGIT_BIAS_TOKENS:
        raise BadInputError(f"'logit_bias' may bias at most {MAX_LOGIT_BIAS_TOKENS} tokens, got {len(bias)}",
                            param="logit_bias")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise BadInputError(f"'logit_bias' keys must be token ids such as \"1734\", got {key!r}",
                                param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -MAX_ABS_LOGIT_BIAS <= value <= \
                MAX_ABS_LOGIT_BIAS:
            raise BadInputError(f"'logit_bias' values must be numbers from -100 to 100, got {value!r} for token "
                                f"{key}", param="logit_bias")
        parsed[int(key)] = float(value)
    return parsed or None


def _bool(inputs: dict[str, Any], name: str, default: bool) -> bool:
    value = inputs.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadInputError(f"'{name}' must be true or false, got {value!r}", param=name)
    return value


def _int(inputs: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = inputs.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"'{name}' must be an integer, got {value!r}", param=name)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise BadInputError(f"'{name}' must be {bounds}, got {value}", param=name)
    return value


def _number(inputs: dict[str, Any], name: str, default: float | None, low: float, high: float) -> float | None:
    value = inputs.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInputError(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}", param=name)
    if not low <= value <= high:
        raise BadInputError(f"'{name}' must be between {low:g} and {high:g}, got {value:g}", param=name)
    return float(value)
