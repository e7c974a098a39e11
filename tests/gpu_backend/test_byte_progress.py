"""The bytes progress bar that loading and compressing weights draw."""

from __future__ import annotations

import pytest

from gpu_backend.byte_progress import byte_progress


def test_the_bar_runs_when_shown() -> None:
    with byte_progress("Loading weights", 100, True) as advance:
        advance(60)
        advance(30)  # the last 10 bytes were never read: the bar is filled at the end


def test_hidden_it_draws_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with byte_progress("Compressing weights", 100, False) as advance:
        advance(100)
    assert capfd.readouterr().err == ""
