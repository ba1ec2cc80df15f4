"""One progress helper for every loop: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

Under DVC and Prefect stdout/stderr are pipes, where a bar that redraws itself with carriage returns is
either switched off (no sign of life for minutes) or one endless line. Off a terminal the same tqdm bar
instead prints one line (count, percentage, rate and time left) at most every
:data:`PIPE_INTERVAL_SECONDS`, each ending in a newline, so logs show progress as it happens.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

PIPE_INTERVAL_SECONDS = 5.0
# Plain text (no bar characters): what a log file shows.
PIPE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:3.0f}%) [{elapsed}<{remaining}, {rate_fmt}]"


class _LineWriter:
    """A text stream for tqdm that turns each carriage-return redraw into one line; blank redraws (the
    clearing tqdm writes on close) are dropped."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
    stream: IO[str] | None = None,
    interval: float | None = None,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``, from ``initial``) with rate and ETA.

    On a terminal it is tqdm's own bar; otherwise one line every ``interval`` seconds (default
    :data:`PIPE_INTERVAL_SECONDS`) and a last line when the loop ends. ``enabled=False`` shows nothing
    (e.g. on DDP ranks other than 0).
    """
    stream = stream or sys.stderr
    options: dict[str, Any] = {"total": total, "initial": initial, "desc": desc, "unit": unit, "disable": not enabled}
    if stream.isatty():
        return tqdm(iterable, leave=leave, file=stream, **options)
    return tqdm(
        iterable,
        file=_LineWriter(stream),
        mininterval=PIPE_INTERVAL_SECONDS if interval is None else interval,
        maxinterval=float("inf"),
        bar_format=PIPE_FORMAT if total is not None or hasattr(iterable, "__len__") else None,
        ascii=True,
        dynamic_ncols=False,
        # A last line with the final count and rate, even for bars a terminal would clear.
        leave=True,
        **options,
    )
