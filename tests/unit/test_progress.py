"""advreid.progress: tqdm on a terminal, one plain line with rate and ETA per interval elsewhere."""

from __future__ import annotations

import io
import re

from advreid.progress import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pipe_gets_lines_with_count_rate_and_eta() -> None:
    stream = io.StringIO()  # not a terminal, as under DVC and Prefect
    for _ in progress(range(50), desc="train", unit="batch", stream=stream, interval=0):
        pass
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) > 1
    assert all(line.startswith("train: ") for line in lines)
    last = lines[-1]
    assert re.search(r"50/50 batch \(100%\) \[\d\d:\d\d<\d\d:\d\d, .*batch/s\]", last), last
    # Counts never go backwards: each line is a later state of the same loop.
    counts = [int(re.search(r": (\d+)/50", line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 50


def test_pipe_interval_limits_the_lines_and_manual_updates_work() -> None:
    stream = io.StringIO()
    with progress(total=1000, desc="attack", unit="cell", stream=stream, interval=3600) as bar:
        for _ in range(1000):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) <= 2 and lines[-1].startswith("attack: 1000/1000 cell (100%)")


def test_terminal_gets_tqdm_bar_and_disabled_shows_nothing() -> None:
    terminal = FakeTerminal()
    for _ in progress(range(5), desc="eval", stream=terminal):
        pass
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    for _ in progress(range(5), desc="eval", stream=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""


def test_a_resumed_loop_starts_its_count_at_initial():
    stream = io.StringIO()
    with progress(range(4, 10), total=10, initial=4, desc="resumed", stream=stream, interval=0) as bar:
        assert bar.n == 4
        for _ in bar:
            pass
    assert "resumed: 10/10" in stream.getvalue()
