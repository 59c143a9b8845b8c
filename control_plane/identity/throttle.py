"""Slows repeated failed logins from one client address (exponential, capped, decaying delay)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.config import Settings

# Bounded memory whatever an attacker does: the least recently failing addresses are forgotten first.
_MAX_ADDRESSES = 100_000
# Scores below this have decayed to nothing and are dropped.
_FORGET_BELOW = 0.05


@dataclass
class _Entry:
    score: float
    at: float


class LoginThrottle:
    """Per-address failure score that halves every `halflife` seconds.

    Before answering a login from an address whose score exceeds `grace`, the caller sleeps
    `base * 2^(score - grace - 1)` seconds, at most `max_delay`. Only that one login waits; the
    event loop and every other session carry on.
    """

    def __init__(
        self,
        *,
        grace: int = 2,
        base: float = 0.25,
        max_delay: float = 5.0,
        halflife: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.base = base
        self.max_delay = max_delay
        self.halflife = halflife
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginThrottle:
        return cls(
            grace=settings.login_throttle_grace,
            base=settings.login_throttle_base,
            max_delay=settings.login_throttle_max,
            halflife=settings.login_throttle_halflife,
        )

    @staticmethod
    def _key(client_addr: str) -> str:
        # "host:port" from the data plane: the port changes with every connection, the host does not.
        host, sep, port = client_addr.rpartition(":")
        return host.strip("[]") if sep and port.isdigit() else client_addr

    def _score(self, key: str, now: float) -> float:
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        score = entry.score * math.pow(0.5, max(0.0, now - entry.at) / self.halflife)
        if score < _FORGET_BELOW:
            del self._entries[key]
            return 0.0
        return score

    def delay_for(self, client_addr: str) -> float:
        """Seconds to wait before answering the next login from this address."""
        score = self._score(self._key(client_addr), self.clock())
        excess = score - self.grace
        if excess <= 0 or self.base <= 0:
            return 0.0
        return float(min(self.max_delay, self.base * math.pow(2.0, excess - 1)))

    def failed(self, client_addr: str) -> None:
        key = self._key(client_addr)
        now = self.clock()
        score = self._score(key, now) + 1.0
        self._entries[key] = _Entry(score, now)
        self._entries.move_to_end(key)
        while len(self._entries) > _MAX_ADDRESSES:
            self._entries.popitem(last=False)

    async def wait(self, client_addr: str) -> float:
        """Sleep as long as this address has earned; returns the seconds slept."""
        delay = self.delay_for(client_addr)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay
