"""IncrementalDetokenizer: deltas add up to `decode`, never split a character, and stop at stop strings;
RequestText: the same text and the same stop token however the ids are grouped."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gpu_backend.detokenizer import IncrementalDetokenizer, RequestText, StopStringMatcher
from gpu_backend.tokenizer import Tokenizer

from tokenizer_fixtures import (
    build_byte_level_tokenizer,
    build_sentencepiece_tokenizer,
    build_wordpiece_tokenizer,
    shakespeare_text,
)

TEXTS = [
    "Hello world",
    "  two leading spaces and   three inside",
    "emoji 😀😀 family 👨‍👩‍👧 flag 🇫🇷 中文字符 é ñ",
    "ROMEO:\nWhat, ho!\n\nJULIET:\nAy me! don't , isn ' t .",
    shakespeare_text(4000),
]
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "byte_level": build_byte_level_tokenizer,
    "sentencepiece": build_sentencepiece_tokenizer,
    "wordpiece": build_wordpiece_tokenizer,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_pretrained(BUILDERS[request.param](tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_pretrained(build_byte_level_tokenizer(tmp_path_factory.mktemp("byte_level")))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_pretrained(build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sentencepiece")))


def stream(detok: IncrementalDetokenizer, ids: Sequence[int], chunks: Sequence[int] = (1,)) -> list[str]:
    """Feed `ids` in chunks of the given sizes (cycled); the deltas, then finish()'s text."""
    deltas, i = [], 0
    for size in _cycle(chunks):
        if i >= len(ids):
            break
        deltas.append(detok.step(ids[i:i + size]).text)
        i += size
    return deltas + [detok.finish()]


def _cycle(sizes: Sequence[int]):
    while True:
        yield from sizes


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_of_real_texts_add_up_to_decode(tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text)
        for chunks in ((1,), (3, 1, 2)):
            detok = IncrementalDetokenizer(tokenizer, [7, 8], skip_special_tokens=skip_special_tokens)
            deltas = stream(detok, ids, chunks)
            full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
            assert "".join(deltas) == detok.output_text == full
            assert not any("\ufffd" in d for d in deltas)
            assert not detok.stopped


def test_deltas_of_random_ids_add_up_to_decode(tokenizer: Tokenizer) -> None:
    # Random ids make invalid UTF-8 and lone special tokens: the sum must still be exactly decode().
    rng = random.Random(1)
    for _ in range(150):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        skip = rng.random() < 0.5
        deltas = stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=skip), ids, (rng.randint(1, 3),))
        full = tokenizer.decode(ids, skip_special_tokens=skip)
        assert "".join(deltas) == full, ids
        if "\ufffd" not in full:
            assert not any("\ufffd" in d for d in deltas), ids


def test_emoji_split_across_byte_level_tokens_is_held_back(byte_level: Tokenizer) -> None:
    emoji_ids = byte_level.encode("😀", add_special_tokens=False)
    assert len(emoji_ids) == 4  # the tiny vocabulary gives each of the emoji's 4 bytes its own token
    ok_ids, bang_ids = (byte_level.encode(t, add_special_tokens=False) for t in ("ok", "!"))
    ids = [*ok_ids, *emoji_ids, *bang_ids]
    detok = IncrementalDetokenizer(byte_level)
    deltas = [detok.step([t]).text for t in ids]
    assert deltas[-5:] == ["", "", "", "😀", "!"]
    assert "".join(deltas) == "ok😀!"


def test_byte_fallback_run_is_emitted_whole(sentencepiece: Tokenizer) -> None:
    ids = sentencepiece.encode("a 😀 b", add_special_tokens=False)
    assert sum(t in sentencepiece.byte_fallback_ids for t in ids) == 4
    detok = IncrementalDetokenizer(sentencepiece)
    deltas = [detok.step([t]).text for t in ids] + [detok.finish()]
    assert "".join(deltas) == "a 😀 b"
    assert sum("😀" in d for d in deltas) == 1 and not any("\ufffd" in d for d in deltas)


def test_sentencepiece_leading_spaces(sentencepiece: Tokenizer) -> None:
    text = "Hello world, my lord, the king"
    ids = sentencepiece.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(sentencepiece)
    deltas = [detok.step([t]).text for t in ids]
    assert "".join(deltas) == text
    pieces = [sentencepiece.id_to_token(t) for t in ids]
    # Like decode(): the first piece's "▁" is stripped, every later "▁" piece starts with a space.
    assert pieces[0].startswith("▁") and not deltas[0].startswith(" ")
    assert sum(p.startswith("▁") for p in pieces[1:]) == 5
    assert all(d.startswith(" ") == p.startswith("▁") for p, d in zip(pieces[1:], deltas[1:], strict=True))


def test_skipped_special_tokens_do_not_eat_the_next_space(sentencepiece: Tokenizer) -> None:
    word_ids = sentencepiece.encode("Hello world", add_special_tokens=False)
    ids = [sentencepiece.bos_token_id, *word_ids[:1], sentencepiece.eos_token_id, *word_ids[1:]]
    for skip in (True, False):
        detok = IncrementalDetokenizer(sentencepiece, skip_special_tokens=skip)
        assert "".join(stream(detok, ids)) == sentencepiece.decode(ids, skip_special_tokens=skip)


def test_window_stays_small(byte_level: Tokenizer) -> None:
    ids = byte_level.encode(shakespeare_text(20_000), add_special_tokens=False)
    lengths: list[int] = []
    real_decode = byte_level.backend.decode

    class CountingBackend:
        def decode(self, window: list[int], skip_special_tokens: bool = True) -> str:
            lengths.append(len(window))
            return real_decode(window, skip_special_tokens=skip_special_tokens)

    detok = IncrementalDetokenizer(byte_level)
    detok.tokenizer = type("T", (), {"backend": CountingBackend()})()  # only the backend is used per step
    assert "".join(stream(detok, ids)) == byte_level.decode(ids)
    assert max(lengths) <= 4  # the cost per token does not grow with the sequence


# -- stop strings ------------------------------------------------------------------------------

QUOTE = "To be, or not to be, that is the question: Whether 'tis nobler in the mind"


def run_with_stop(tok: Tokenizer, stop: str | list[str], include: bool = False
                  ) -> tuple[str, IncrementalDetokenizer, int]:
    """Stream QUOTE token by token; the text, the detokenizer and how many tokens were fed before it stopped."""
    ids = tok.encode(QUOTE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, stop=stop, include_stop_str_in_output=include)
    for fed, token in enumerate(ids, start=1):
        if detok.step([token]).stopped:
            return detok.output_text, detok, fed
    return detok.output_text + detok.finish(), detok, len(ids)


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_several_tokens(tokenizer: Tokenizer, include: bool) -> None:
    text, detok, fed = run_with_stop(tokenizer, "that is the", include)
    assert text == ("To be, or not to be, that is the" if include else "To be, or not to be, ")
    assert detok.stopped and detok.stop_reason == "that is the"
    assert detok.step([5]) == ("", 0, True) and detok.finish() == ""  # (text, ids taken, stopped)
    ids = tokenizer.encode(QUOTE, add_special_tokens=False)
    assert "that is the" in tokenizer.decode(ids[:fed]) and "that is the" not in tokenizer.decode(ids[:fed - 1])
    assert len(tokenizer.decode(ids[fed - 1:fed])) < len("that is the")  # the stop string spans tokens


def test_text_that_may_start_a_stop_string_is_held_back(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("the question: Whether", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, stop=["question!"])
    deltas = [detok.step([t]) for t in ids]
    assert not any(d.stopped for d in deltas)
    num_question_tokens = len(byte_level.encode("the question", add_special_tokens=False))
    emitted_before_colon = "".join(d.text for d in deltas[:num_question_tokens])
    assert "question" not in emitted_before_colon  # could have been "question!"
    assert detok.output_text + detok.finish() == "the question: Whether"


def test_first_stop_string_to_complete_wins(byte_level: Tokenizer) -> None:
    text, detok, _ = run_with_stop(byte_level, ["question", "not to", "nobler"])
    assert text == "To be, or " and detok.stop_reason == "not to"


def test_no_stop_string_found_flushes_everything(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(QUOTE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, stop=["zzz", "mind!"])
    streamed = "".join(detok.step([t]).text for t in ids)
    assert not streamed.endswith("mind")  # it could still have become "mind!"
    assert streamed + detok.finish() == tokenizer.decode(ids) and not detok.stopped


def test_stop_string_made_of_split_bytes(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("abc 😀 def", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, stop=["😀"])
    stopped_at = next(i for i, t in enumerate(ids) if detok.step([t]).stopped)
    assert byte_level.decode(ids[:stopped_at + 1]) == "abc 😀"
    assert detok.output_text == "abc " and detok.stop_reason == "😀"


def test_stop_string_found_by_finish(sentencepiece: Tokenizer) -> None:
    ids = sentencepiece.encode("abc 😀", add_special_tokens=False)  # ends in a held byte-fallback run
    detok = IncrementalDetokenizer(sentencepiece, stop="😀", include_stop_str_in_output=True)
    assert not any(detok.step([t]).stopped for t in ids)
    assert detok.output_text + detok.finish() == "abc 😀" and detok.stopped


def test_stop_string_matcher_unit() -> None:
    matcher = StopStringMatcher(["ab", "abc", "", "xyz"])
    assert matcher.stop == ["ab", "abc", "xyz"]
    assert matcher.partial_match_len("hello xy") == 2
    assert matcher.partial_match_len("hello a") == 1
    assert matcher.partial_match_len("hello") == 0
    assert matcher.find("--abc--ab") == (2, "ab")  # the first to end
    assert StopStringMatcher(["abcd", "bc", "xbc"]).find("xabcd") == (2, "bc")
    assert StopStringMatcher(["bc", "abc"]).find("xabc") == (1, "abc")  # same end: the longest
    assert matcher.feed("hello a") == "hello "
    assert matcher.feed("b and more") == "" and matcher.stop_reason == "ab"
    single = StopStringMatcher("END", include_stop_str_in_output=True)
    assert single.feed("text E") == "text E"  # nothing held back when the stop string is output anyway
    assert single.feed("ND tail") == "ND" and single.stopped
    assert StopStringMatcher(None).feed("x", final=True) == "x"


def test_stop_string_matcher_does_not_depend_on_how_text_is_split() -> None:
    rng = random.Random(2)
    for _ in range(300):
        text = "".join(rng.choice("ab c") for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randrange(1, 5))) for _ in range(rng.randrange(1, 4))]
        include = rng.random() < 0.5
        ends = [(e, -len(s)) for e in range(len(text) + 1) for s in stops if text[:e].endswith(s)]
        if ends:
            end, minus_len = min(ends)
            expected = text[:end] if include else text[:end + minus_len]
        else:
            expected = text
        matcher, out, i = StopStringMatcher(stops, include), [], 0
        while i < len(text):
            size = rng.randint(1, 4)
            out.append(matcher.feed(text[i:i + size]))
            i += size
        out.append(matcher.feed("", final=True))
        assert "".join(out) == expected, (text, stops, include)
        assert matcher.stopped == bool(ends)


def test_partial_match_len_is_the_longest_suffix_that_begins_a_stop_string() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        stops = ["".join(rng.choice("ab ") for _ in range(rng.randrange(1, 9))) for _ in range(rng.randrange(1, 4))]
        text = "".join(rng.choice("ab c") for _ in range(rng.randrange(0, 12)))
        expected = max((size for stop in stops for size in range(1, len(stop)) if text.endswith(stop[:size])),
                       default=0)
        assert StopStringMatcher(stops).partial_match_len(text) == expected, (text, stops)


def feed(text: RequestText, ids: Sequence[int], groups: Sequence[int]) -> tuple[str, int, bool]:
    """Feed ``ids`` to ``text`` in groups of the given sizes (the last one finishes the request):
    the text, the ids that count and whether a stop string ended it."""
    pieces, counted, start = [], 0, 0
    for size in groups:
        update = text.add(ids[start:start + size], finished=start + size >= len(ids))
        pieces.append(update.text)
        counted += update.num_tokens
        start += size
        if update.stopped:
            return "".join(pieces), counted, True
    return "".join(pieces), counted, False


@pytest.mark.parametrize("groups", [[1] * 8, [1, 7], [2, 3, 3], [8]], ids=["by-one", "hand-off", "mixed", "whole"])
def test_request_text_does_not_depend_on_how_the_ids_are_grouped(sentencepiece: Tokenizer, groups: list[int]) -> None:
    """One process streams one id a step, prefill/decode the first id from one instance and the rest from
    another, a recomputed request several at once: the text, the stop and the ids that count are the same.
    SentencePiece drops the first token's leading space only: ' my' after 'Now' keeps its space."""
    ids = sentencepiece.encode("Now my lord, the king is here", add_special_tokens=False)
    assert [sentencepiece.id_to_token(t) for t in ids[:2]] == ["▁Now", "▁my"] and len(ids) == 8
    assert feed(RequestText(sentencepiece), ids, groups) == ("Now my lord, the king is here", 8, False)
    spanning = "w m"  # from the first token into the second: a prefill/decode hand-off
    assert feed(RequestText(sentencepiece, stop=spanning), ids, groups) == ("No", 2, True)
    assert feed(RequestText(sentencepiece, stop=spanning, include_stop_str_in_output=True), ids,
                groups) == ("Now m", 2, True)


def test_request_text_after_a_stop_and_without_a_tokenizer(sentencepiece: Tokenizer) -> None:
    ids = sentencepiece.encode("Now my lord", add_special_tokens=False)
    text = RequestText(sentencepiece, stop="Now")
    assert tuple(text.add(ids)) == ("", 1, True) and text.stop_reason == "Now"
    assert tuple(text.add(ids[1:])) == ("", 0, True)  # ids an instance sampled before it heard of the stop
    assert tuple(RequestText(None, stop="Now").add(ids, finished=True)) == ("", len(ids), False)


def test_a_stop_string_ends_the_request_with_stop_unless_its_last_token_ended_it() -> None:
    stopped_at_second = RequestText(None).add([], True)._replace(num_tokens=2, stopped=True)
    assert stopped_at_second.finish_reason(None, 3) == "stop"  # the engine had not finished
    assert stopped_at_second.finish_reason("length", 3) == "stop"  # tokens after the stop are dropped
    assert stopped_at_second.finish_reason("length", 2) == "length"  # the same token ended it by length
    assert stopped_at_second._replace(stopped=False).finish_reason("length", 2) == "length"
    assert stopped_at_second._replace(stopped=False).finish_reason(None, 2) is None


@pytest.mark.parametrize("groups", [[1] * 8, [1, 7], [8]], ids=["by-one", "hand-off", "whole"])
def test_a_stop_token_that_is_plain_text_counts_but_stays_out_of_the_text(sentencepiece: Tokenizer,
                                                                          groups: list[int]) -> None:
    """A checkpoint whose eos id is an ordinary token ("here" below): ending on it, the request's text
    is what came before, and the token still counts as generated."""
    ids = sentencepiece.encode("Now my lord, the king is here", add_special_tokens=False)
    text, pieces, counted, start = RequestText(sentencepiece), [], 0, 0
    for size in groups:
        last = start + size >= len(ids)
        update = text.add(ids[start:start + size], finished=last, stop_token=last)
        pieces.append(update.text)
        counted += update.num_tokens
        start += size
    assert ("".join(pieces), counted) == ("Now my lord, the king is", 8)
