"""Stopping a run cleanly: the first Ctrl-C or SIGTERM becomes a flag the loop checks."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """Turns the first Ctrl-C or SIGTERM into a flag the loop checks between batches.

    A second Ctrl-C stops at once; `exit_code` is 128 + the signal (130 or 143).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.raised = False
        self.exit_code = 130
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised, self.exit_code = True, 128 + signum

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
