"""A run stops when asked: SIGINT or SIGTERM sets one flag, and the loops that take time check it.

The command line installs the handlers (:func:`on_signals`); the main thread is interrupted at
once (``KeyboardInterrupt``), and threads computing blocks see the flag at their next batch (or
band of a strip, or training step) and raise :class:`Stopped`. Everything written before stays:
a block's manifest entry follows its chunks, so the same command resumes where it stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

REQUESTED = threading.Event()
"""Set when the process was asked to stop; one per process, as the signals are."""

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """The run stopped because it was asked to; the message says how to go on."""


def request() -> None:
    """Ask every loop of this process to stop at its next check."""
    REQUESTED.set()


def check(where: str = "the run") -> None:
    """Raise :class:`Stopped` if a stop was asked for."""
    if REQUESTED.is_set():
        raise Stopped(f"{where} stopped when asked.")


@contextmanager
def on_signals(received: list[int]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask for a stop and interrupt the main thread once.

    ``received`` collects the signals that came (for the exit status: 128 + the first one). A
    second signal while stopping interrupts again.
    """

    def handle(number: int, frame: FrameType | None) -> None:
        received.append(number)
        request()
        raise KeyboardInterrupt

    REQUESTED.clear()  # a new run in this process (a test's, a served schedule's)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {
        number: signal.signal(number, handle) for number in SIGNALS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
