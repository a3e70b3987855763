"""A wall clock that tests and the demo can move forward."""

from __future__ import annotations

import threading
import time


class OffsetClock:
    """Return ``time.time()`` plus an offset that :meth:`advance` increases.

    Real time keeps passing, so leases and backoff behave as in production, while a test can jump
    past an access token's expiry or an idle window without waiting. The product and the
    Salesforce emulator share one instance, so both see the same jump.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds
