"""Wrong bearer tokens, rate-limited per client address.

After ``max_failures`` wrong or missing tokens from one address within ``block_s`` seconds, every
handshake from that address is refused with HTTP 429 for ``block_s`` seconds (the right token too:
a blocked address cannot go on guessing). A handshake with the right token, while not blocked,
forgets the address's failures. Only the websocket server's event loop calls it (not thread-safe).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

__all__ = ["AuthThrottle"]

#: Addresses remembered at most; the least recently seen are forgotten first.
MAX_ADDRESSES = 10_000


class AuthThrottle:
    """Failed-handshake counting per address.

    Args:
        max_failures: wrong tokens allowed per address within ``block_s``; the next ones block it.
        block_s: the counting window and the length of a block, in seconds.
    """

    def __init__(self, max_failures: int, block_s: float, *, clock=time.monotonic) -> None:
        self.max_failures = max_failures
        self.block_s = block_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # address -> monotonic failure times
        self._blocked: dict[str, float] = {}  # address -> monotonic end of its block

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._blocked[address]
            return None
        return left

    def failed(self, address: str) -> None:
        """Count a wrong or missing token from ``address`` (blocks it at ``max_failures``)."""
        now = self._clock()
        times = self._failures.pop(address, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.block_s:
            times.popleft()
        if len(times) >= self.max_failures:
            self._blocked[address] = now + self.block_s
            times.clear()
        else:
            self._failures[address] = times
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        if len(self._blocked) > MAX_ADDRESSES:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}

    def succeeded(self, address: str) -> None:
        """A right token from ``address``: its failures are forgotten."""
        self._failures.pop(address, None)
