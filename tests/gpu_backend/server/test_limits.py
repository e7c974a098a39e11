"""InputLimits: Cloudflare's values by default, and only positive whole numbers accepted."""

from __future__ import annotations

import pytest

from gpu_backend.server.limits import DEFAULT_LIMITS, InputLimits


def test_defaults_are_cloudflares_where_cloudflare_has_them() -> None:
    assert DEFAULT_LIMITS.max_body_bytes == 10 * 1024 * 1024  # Workers AI: payloads under 10 MB
    assert DEFAULT_LIMITS.max_prompt_chars == 131072  # llama-3.1-8b's prompt maxLength
    assert DEFAULT_LIMITS.max_embedding_texts == 100  # bge's text maxItems


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10"])
def test_each_cap_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match="InputLimits.max_stop_sequences must be a positive integer"):
        InputLimits(max_stop_sequences=value)  # type: ignore[arg-type]
