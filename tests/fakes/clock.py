"""The real clock the fakes run on, whatever freezegun does to the client's.

freezegun swaps module attributes that are time functions; held in a dict, these are
left alone, so the servers' event loops and every bounded wait keep real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

REAL_CLOCK: Final[dict[str, Callable[[], float]]] = {
    "monotonic": time.monotonic,
    "time": time.time,
}


def wait_until(changed: threading.Condition, ready: Callable[[], bool], timeout: float) -> bool:
    """With `changed` held, wait until `ready()` (True) or until `timeout` seconds of real
    time have passed (False). Whoever makes `ready()` true notifies `changed`."""
    deadline = REAL_CLOCK["monotonic"]() + timeout
    while not ready():
        remaining = deadline - REAL_CLOCK["monotonic"]()
        if remaining <= 0:
            return False
        changed.wait(remaining)
    return True
