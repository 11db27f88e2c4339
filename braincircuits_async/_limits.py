"""How many requests may be in flight, and how fast they may start.

One :class:`RequestGate` per client admits every request of every call, so
when the server says "too many requests" the whole client slows down, not just
the chunk that got the 429. The limit adapts like TCP's congestion window:
it halves on the second 429 within a window (answers to requests sent before
the last cut carry no news) and grows by ``INCREASE`` after every window of
``limit`` successful answers, between 1 and ``max_concurrency``. Below one
request in flight it goes on in time: further 429s double a gap between
request starts (from 50 ms, up to 10 s), and each window of successes halves it.

Time is anyio's clock (``anyio.current_time``), the one the workers' backoff
sleeps on, so a test can drive the gate and the retries with one fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio

__all__ = ["RequestGate"]

#: Growth per window of successes. The textbook +1 kept probing a hard rate limit
#: so often that it drew 2-3x as many 429s as +0.25 (docs/errors.md).
INCREASE = 0.25
#: 429s within one window of successes that cut the limit. A single 429 among many
#: answers is often chance (a shared server's hiccup): cutting on each one held a
#: client at a fraction of its concurrency under 3 % random 429s (3x the ideal
#: time instead of 1.5x); against a hard limit the 429s come in clusters anyway.
STRIKES = 2
#: The first gap between request starts once one request in flight is too many,
#: and the longest.
FIRST_GAP = 0.05
MAX_GAP = 10.0


class RequestGate:
    """Admits requests: at most ``limit`` in flight, at most ``rate`` per second.

    ``limit`` starts at ``max_concurrency``; with ``adaptive`` it then moves
    between 1 and ``max_concurrency`` with the server's 429s. The fast path
    takes a free token without a trip through the scheduler: at high latency
    each such trip delays the next request by every other ready task's work.
    """

    __slots__ = (
        "_clock",
        "_last_cut",
        "_limiter",
        "_next_start",
        "_strikes",
        "_successes",
        "adaptive",
        "cuts",
        "gap",
        "limit",
        "max_concurrency",
        "rate",
    )

    def __init__(
        self,
        max_concurrency: int,
        *,
        adaptive: bool = True,
        rate: float | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._clock = clock
        self.max_concurrency = max_concurrency
        self.adaptive = adaptive
        self.rate = rate
        self.limit = float(max_concurrency)
        #: How many times the limit was cut, for stats and tests.
        self.cuts = 0
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._last_cut = -math.inf
        self._successes = 0
        self._strikes = 0
        self._next_start = 0.0
        #: Seconds between request starts, once the limit is down to one (0: none).
        self.gap = 0.0

    async def __aenter__(self) -> float:
        """Wait for a slot (and, with a rate, for the next start); return the start time."""
        spacing = max(self.gap, 0.0 if self.rate is None else 1.0 / self.rate)
        if spacing:
            now = self._clock()
            start = max(now, self._next_start)
            self._next_start = start + spacing
            if start > now:
                await anyio.sleep(start - now)
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()
        return self._clock()

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()

    def throttled(self, sent_at: float) -> None:
        """A 429 came back for a request sent at ``sent_at``: halve the limit."""
        if not self.adaptive or sent_at < self._last_cut:
            return  # sent before the last cut: that cut already answered it
        self._strikes += 1
        if self._strikes < STRIKES:
            return  # one 429 in a window can be chance; two are a trend
        self._strikes = 0
        self._last_cut = self._clock()
        self._successes = 0
        self.cuts += 1
        if self.limit <= 1:
            # One request at a time is still too many: space the starts out.
            self.gap = min(MAX_GAP, max(FIRST_GAP, 2 * self.gap))
        self._set(max(1.0, self.limit / 2))

    def succeeded(self) -> None:
        """A request was answered: after a window of such answers, ease off."""
        if not self.adaptive:
            return
        if self.limit >= self.max_concurrency and not self.gap:
            self._successes += 1
            if self._successes >= int(self.limit):
                self._successes = self._strikes = 0  # a window without a trend
            return
        self._successes += 1
        if self._successes >= int(self.limit):
            self._successes = 0
            self._strikes = 0
            if self.gap:
                self.gap = self.gap / 2 if self.gap / 2 >= FIRST_GAP / 4 else 0.0
            else:
                self._set(min(float(self.max_concurrency), self.limit + INCREASE))

    def _set(self, limit: float) -> None:
        self.limit = limit
        self._limiter.total_tokens = max(1, int(limit))
