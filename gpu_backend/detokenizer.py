"""Streaming detokenisation: turn each step's new token ids into finished text, and stop at stop strings.

`IncrementalDetokenizer.step` decodes a small window of recent tokens and returns the text the new
tokens add, so the cost per token does not grow with the sequence. Three things are held back until
they are final: bytes of a character split across byte-level tokens (the window's text ends in
U+FFFD), text that `clean_up_tokenization_spaces` may still rewrite, and a tail that could be the
start of a stop string. Runs of SentencePiece byte pieces are held whole (see `_decode_new`). The
deltas concatenate to exactly `tokenizer.decode(generated_ids)`, cut at the first stop string.
`RequestText` is one request's text as the service and the offline engine make it: ids in, one at a
time, text out, and how many of the ids count once a stop string ends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# transformers' clean_up_tokenization: the space WordPiece-style decoding puts before punctuation.
_CLEANUP_PAIRS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# Its patterns start with a space and span at most 4 characters, so text whose
# last 3 characters hold no space can be cleaned now: no pattern can straddle the cut.
_CLEANUP_LOOKBACK = 3


class TextUpdate(NamedTuple):
    text: str  # newly final text
    # of the ids given, those the text took: all, except that RequestText stops at the one that
    # completed a stop string (what the request reports as generated)
    num_tokens: int
    stopped: bool  # a stop string ended the text

    def finish_reason(self, engine_reason: str | None, num_new_tokens: int) -> str | None:
        """Why the request ended: "stop" where a stop string ended the text before the engine ended
        the request, otherwise the engine's reason (a stop string completed by the very token that
        ended it by length keeps "length")."""
        if self.stopped and (engine_reason is None or self.num_tokens < num_new_tokens):
            return "stop"
        return engine_reason


class StopStringMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stop: str | Sequence[str] | None, include_stop_str_in_output: bool = False) -> None:
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        self.stop = [s for s in dict.fromkeys(stops) if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self.stop_reason: str | None = None  # the stop string found
        self._max_stop_len = max(map(len, self.stop), default=0)
        self._prefix_sizes = [_prefix_sizes_by_last_char(s) for s in self.stop]
        # The text not emitted yet, after up to max_stop_len - 1 emitted characters that a stop string
        # completed later may start in; older text can never match and is dropped.
        self._buffer = ""
        self._num_emitted = 0  # characters of _buffer already returned

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def feed(self, delta: str, final: bool = False) -> str:
        """Add `delta`; return the text now safe to emit. `final`: no more text comes, hold nothing back."""
        if self.stopped:
            return ""
        search_from = max(0, len(self._buffer) - self._max_stop_len + 1)  # a new match ends inside delta
        self._buffer += delta
        match = self.find(self._buffer, search_from)
        if match is not None:
            start, self.stop_reason = match
            end = start + len(self.stop_reason) if self.include_stop_str_in_output else start
            return self._emit_until(max(end, self._num_emitted))
        hold = 0 if final or self.include_stop_str_in_output else self.partial_match_len(self._buffer)
        out = self._emit_until(len(self._buffer) - hold)
        keep_from = max(0, min(self._num_emitted, len(self._buffer) - self._max_stop_len + 1))
        self._buffer, self._num_emitted = self._buffer[keep_from:], self._num_emitted - keep_from
        return out

    def find(self, text: str, start: int = 0) -> tuple[int, str] | None:
        """(index, stop string) of the stop string in text[start:] that ends first; the longest wins a tie.

        Ending first is what makes the result independent of how the text was split into deltas.
        """
        found = [(i + len(s), i, s) for s in self.stop if (i := text.find(s, start)) >= 0]
        if not found:
            return None
        _, index, stop = min(found)
        return index, stop

    def partial_match_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string.

        Runs per token on the engine's thread: only prefixes ending in text's last character are
        tried, and their first character is compared before any slice is made.
        """
        if not text:
            return 0
        longest = 0
        for stop, prefix_sizes in zip(self.stop, self._prefix_sizes):
            for size in prefix_sizes.get(text[-1], ()):
                if size <= longest:
                    break
                if size <= len(text) and text[-size] == stop[0] and text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit_until(self, end: int) -> str:
        out = self._buffer[self._num_emitted:end]
        self._num_emitted = max(self._num_emitted, end)
        return out


def _prefix_sizes_by_last_char(stop: str) -> dict[str, list[int]]:
    """The lengths of `stop`'s proper prefixes, by the prefix's last character, longest first."""
    sizes: dict[str, list[int]] = {}
    for size in range(len(stop) - 1, 0, -1):
        sizes.setdefault(stop[size - 1], []).append(size)
    return sizes


class IncrementalDetokenizer:
    """Per-request streaming decoder; see the module docstring for what it holds back and why.

    `prompt_token_ids` is the request's prompt. It is not decoded into the output: the deltas add up
    to `tokenizer.decode(generated_ids)` like transformers, so a SentencePiece tokenizer strips the
    first generated token's leading space exactly as `decode` does.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = (), *,
                 skip_special_tokens: bool = True, stop: str | Sequence[str] | None = None,
                 include_stop_str_in_output: bool = False) -> None:
        self.tokenizer = tokenizer
        self.num_prompt_tokens = len(prompt_token_ids)
        self.skip_special_tokens = skip_special_tokens
        self._skipped_ids = tokenizer.skipped_special_ids if skip_special_tokens else frozenset()
        self._cleanup = tokenizer.clean_up_tokenization_spaces
        self._byte_fallback_ids = tokenizer.byte_fallback_ids
        self.token_ids: list[int] = []  # generated ids that reach the text (skipped special tokens left out)
        # token_ids[prefix_offset:read_offset] were decoded last step and give the context for the next
        # delta (a SentencePiece "▁word" only decodes to " word" after another token); tokens from
        # read_offset on are not emitted yet.
        self.prefix_offset = 0
        self.read_offset = 0
        self._uncleaned = ""  # decoded text the space cleanup may still rewrite
        self._stops = StopStringMatcher(stop, include_stop_str_in_output)
        self._outputs: list[str] = []

    @property
    def output_text(self) -> str:
        """Everything returned so far."""
        return "".join(self._outputs)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self._stops.stop_reason

    def step(self, new_token_ids: Sequence[int]) -> TextUpdate:
        """Take this step's new token ids; return the newly final text and whether a stop string ended it."""
        if self.stopped:
            return TextUpdate("", 0, True)
        self.token_ids.extend(t for t in new_token_ids if t not in self._skipped_ids)
        return self._publish(self._decode_new(), final=False, num_tokens=len(new_token_ids))

    def finish(self) -> str:
        """The request is over: return everything still held back (a stop string may still cut it)."""
        if self.stopped:
            return ""
        window = self.token_ids[self.prefix_offset:]
        prefix_text, new_text = self._decode_pair(window, self.read_offset - self.prefix_offset)
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return self._publish(new_text[len(prefix_text):], final=True, num_tokens=0).text

    def _decode_new(self) -> str:
        """Text of the tokens from read_offset on, or "" while it ends in a partial character."""
        window = self.token_ids[self.prefix_offset:]
        num_context = self.read_offset - self.prefix_offset
        if len(window) == num_context or window[-1] in self._byte_fallback_ids:
            # ByteFallback decodes a run of byte pieces as one: a later invalid byte turns the whole run
            # into U+FFFD, so a run is final only once a non-byte token ends it.
            return ""
        prefix_text, new_text = self._decode_pair(window, num_context)
        if new_text.endswith(REPLACEMENT_CHAR) or len(new_text) < len(prefix_text):
            return ""  # the last token ends inside a UTF-8 character: wait for its other bytes
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return new_text[len(prefix_text):]

    def _decode_pair(self, window: list[int], num_context: int) -> tuple[str, str]:
        decode = self.tokenizer.backend.decode  # two calls beat decode_batch's thread pool on tiny windows
        return decode(window[:num_context], skip_special_tokens=False), decode(window, skip_special_tokens=False)

    def _publish(self, raw_delta: str, final: bool, num_tokens: int) -> TextUpdate:
        text = self._clean(raw_delta, final) if self._cleanup else raw_delta
        out = self._stops.feed(text, final=final)
        if out:
            self._outputs.append(out)
        return TextUpdate(out, num_tokens, self.stopped)

    def _clean(self, raw_delta: str, final: bool) -> str:
        pending = self._uncleaned + raw_delta
        cut = len(pending) if final else _safe_cleanup_cut(pending)
        self._uncleaned = pending[cut:]
        return clean_up_tokenization(pending[:cut])


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (used where `clean_up_tokenization_spaces` is on)."""
    for before, after in _CLEANUP_PAIRS:
        text = text.replace(before, after)
    return text


def _safe_cleanup_cut(text: str) -> int:
    """The longest prefix of `text` whose space cleanup cannot change once more text follows."""
    for cut in range(len(text), -1, -1):
        if " " not in text[max(0, cut - _CLEANUP_LOOKBACK):cut]:
            return cut
    return 0


class RequestText:
    """One request's text, made from its generated token ids as they come, whichever process sampled them.

    Ids are fed one at a time, so a stop string ends the text at the token that completed it (the
    tokens the request reports) however the ids were grouped into outputs: one per step, the first
    token from a prefill instance and the rest from a decode instance, or a recomputed stream. Without a
    tokenizer the text is empty and every id counts.
    """

    def __init__(self, tokenizer: Tokenizer | None, *, stop: str | Sequence[str] | None = None,
                 include_stop_str_in_output: bool = False, skip_special_tokens: bool = True) -> None:
        self._detokenizer = None if tokenizer is None else IncrementalDetokenizer(
            tokenizer, skip_special_tokens=skip_special_tokens, stop=stop,
            include_stop_str_in_output=include_stop_str_in_output)

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the text, or None."""
        return None if self._detokenizer is None else self._detokenizer.stop_reason

    def add(self, token_ids: Sequence[int], finished: bool = False, stop_token: bool = False) -> TextUpdate:
        """Take an output's new ids; ``finished``: the request ended with the last of them, so
        nothing is held back any more (a stop string may still cut what is released). ``stop_token``:
        that last id is an eos or stop token id, which ends the request but is no part of its text
        (it counts as a generated token), even where the tokenizer does not mark it special."""
        if self._detokenizer is None:
            return TextUpdate("", len(token_ids), False)
        if self._detokenizer.stopped:  # ids sampled before the instances heard of the stop
            return TextUpdate("", 0, True)
        pieces = []
        for index, token_id in enumerate(token_ids[:-1] if finished and stop_token else token_ids):
            delta = self._detokenizer.step((token_id,))
            pieces.append(delta.text)
            if delta.stopped:
                return TextUpdate("".join(pieces), index + 1, True)
        if finished:
            pieces.append(self._detokenizer.finish())
        return TextUpdate("".join(pieces), len(token_ids), False)
