"""Progress bars for long phases: shown on a terminal, silent otherwise and when there is nothing to do."""

from __future__ import annotations

import io

import pytest

from mailcascade.progress import PhaseBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_phase_bar_shows_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with PhaseBar("indexing the catalogue", "passages") as bar:
        bar(512, 1000)
        bar(1000, 1000)
    assert "indexing the catalogue" in screen.getvalue() and "1000/1000" in screen.getvalue()


def test_a_phase_bar_is_silent_off_a_terminal_or_with_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with PhaseBar("embedding") as bar:
        bar(3, 10)
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with PhaseBar("embedding"):
        pass
    assert pipe.getvalue() == "" and screen.getvalue() == ""
