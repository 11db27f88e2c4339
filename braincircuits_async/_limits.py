"""How many requests may be in flight, and how fast they may start.

One :class:`RequestGate` per client admits every request of every call, so
when the server says "too many requests" the whole client slows down, not just
the chunk that got the 429. The limit adapts like TCP's congestion window:
it halves on the second 429 within a window (answers to requests sent before
the last cut carry no news) and grows after every window of ``limit``
successful answers, between 1 and ``max_concurrency``: it doubles back up to
half the limit the overload began at (slow start), then grows by ``INCREASE``.
Below one request in flight it goes on in time: further 429s double a gap
between request starts (from 50 ms, up to 10 s), and each success halves it
again, but only down to the gap that last drew 429s after a success; below
that it narrows by ``GAP_EASING`` per success.

A gap or a rate spaces the *next* start, never a start booked earlier: a
starter takes its slot, then waits in line (first come, first served), and the
first in line waits until the last start plus the spacing of the moment, woken
early when the gap changes. So when answers succeed again after an overload,
the starters go as soon as the gap allows, not at times booked under the gap
of the worst moment.

Time is anyio's clock (``anyio.current_time``), the one the workers' backoff
sleeps on, so a test can drive the gate and the retries with one fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import anyio

__all__ = [
    "RequestGate",
    "grown",
    "narrowed_gap",
    "start_booked",
    "start_spacing",
    "start_wait",
    "widened_gap",
]

#: Growth per window of successes above the slow-start threshold. The textbook +1
#: kept probing a hard rate limit so often that it drew 2-3x as many 429s as +0.25
#: (docs/errors.md).
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
#: How a success narrows a gap at or below the one that last drew 429s. Halving it
#: there too drew two 429s per success against a server allowing fewer requests per
#: second than one per latency, and chunks ran out of retries (2 per second at
#: 300 ms: 93 429s for 40 chunks and 2-5 chunks failed; with 7/8: 51 429s, none).
GAP_EASING = 0.875


def grown(limit: float, threshold: float, max_concurrency: int) -> float:
    """The limit after a window of successful answers.

    Below ``threshold`` it doubles, up to the threshold (slow start: back to
    half the limit an overload began at, within a few windows); from there on
    it grows by ``INCREASE``. Never above ``max_concurrency``.
    """
    if limit < threshold:
        return min(float(max_concurrency), threshold, 2 * limit)
    return min(float(max_concurrency), limit + INCREASE)


def widened_gap(gap: float) -> float:
    """The gap between starts after a cut at one request in flight: doubled, 50 ms to 10 s."""
    return min(MAX_GAP, max(FIRST_GAP, 2 * gap))


def narrowed_gap(gap: float, floor: float) -> float:
    """The gap after a successful answer (0: none).

    Halved while that stays at or above ``floor``, the gap that last drew 429s
    after a success (0 when none did since the gap was last gone); narrowed by
    ``GAP_EASING`` below it, where halving would draw the 429s again.
    """
    narrower = gap / 2 if gap / 2 >= floor else gap * GAP_EASING
    return narrower if narrower >= FIRST_GAP / 4 else 0.0


def start_spacing(gap: float, rate: float | None) -> float:
    """Seconds between two request starts: the gap, or the rate's interval if longer."""
    return max(gap, 0.0 if rate is None else 1.0 / rate)


def start_wait(now: float, last_start: float, spacing: float) -> float:
    """Seconds the first starter in line waits before it may start (0: at once).

    The spacing of the moment counts from the last start, so a gap that shrank
    while the starter waited lets it go at once.
    """
    return max(0.0, last_start + spacing - now)


def start_booked(now: float, due: float, spacing: float, *, slept: bool) -> float:
    """The start to space the next one from, for a starter that goes at ``now``.

    One that slept until it was ``due`` counts as started then, so the
    scheduler's lateness in waking it does not lower a rate. Any other counts
    from ``now``: one that did not wait, one woken early because the gap shrank
    (its due time may be long past), and one woken a whole spacing late (a
    stalled loop), so that no burst of starts follows.
    """
    return due if slept and now - due < spacing else now


class RequestGate:
    """Admits requests: at most ``limit`` in flight, at most ``rate`` per second.

    ``limit`` starts at ``max_concurrency``; with ``adaptive`` it then moves
    between 1 and ``max_concurrency`` with the server's 429s. The fast path
    takes a free token without a trip through the scheduler: at high latency
    each such trip delays the next request by every other ready task's work.
    """

    __slots__ = (
        "_calm",
        "_changed",
        "_clock",
        "_gap_floor",
        "_last_cut",
        "_last_start",
        "_limiter",
        "_line",
        "_strikes",
        "_successes",
        "_threshold",
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
        # A window of successes came back since the last cut: the next cut is the
        # first of an overload, and says where the trouble began.
        self._calm = True
        self._threshold = 0.0  # slow start up to here (see `grown`)
        #: Seconds between request starts, once the limit is down to one (0: none).
        self.gap = 0.0
        self._gap_floor = 0.0  # see `narrowed_gap`
        # The starters waiting for their turn, first in line first; each one's event
        # is set when it comes to the front.
        self._line: deque[anyio.Event] = deque()
        self._last_start = -math.inf
        # Set when the gap changes, to wake the first in line to look again.
        self._changed: anyio.Event | None = None

    async def __aenter__(self) -> float:
        """Wait for a slot, then (with a gap or a rate) for a turn to start; return the start time.

        The slot comes first, so the spacing is looked at just before the start: a
        starter that waited for a slot while the gap grew keeps the new gap.
        """
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()
        if self._line or self.gap or self.rate is not None:
            try:
                await self._take_turn()
            except BaseException:
                self._limiter.release()  # cancelled while it waited: the slot is free
                raise
        return self._clock()

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()

    async def _take_turn(self) -> None:
        """Wait in line, then until the last start plus the spacing of the moment.

        The first in line is woken early when the gap changes, and looks again. A
        starter cancelled while it waits leaves the line, and hands the front on
        when it held it.
        """
        turn = anyio.Event()
        self._line.append(turn)
        try:
            if self._line[0] is not turn:
                await turn.wait()
            while True:
                spacing = start_spacing(self.gap, self.rate)
                wait = start_wait(self._clock(), self._last_start, spacing)
                slept = False
                if wait <= 0:
                    break
                self._changed = changed = anyio.Event()
                with anyio.move_on_after(wait) as scope:
                    await changed.wait()
                slept = scope.cancelled_caught
                if slept:
                    break  # waited it out (on anyio's clock, which a test's may not be)
            due = self._last_start + spacing
            self._last_start = start_booked(self._clock(), due, spacing, slept=slept)
        finally:
            if self._line[0] is turn:
                self._line.popleft()
                if self._line:
                    self._line[0].set()
            else:
                self._line.remove(turn)

    def throttled(self, sent_at: float) -> None:
        """A 429 came back for a request sent at ``sent_at``: on the second, halve the limit.

        At one request in flight the gap between starts doubles instead.
        """
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
            self._set_gap(widened_gap(self.gap))
            if self._calm:
                self._gap_floor = self.gap  # 429s again after a success: too narrow
        elif self._calm:
            self._threshold = self.limit / 2  # the first cut of an overload
        self._calm = False
        self._set(max(1.0, self.limit / 2))

    def succeeded(self) -> None:
        """A request was answered: after a window of such answers, ease off."""
        if not self.adaptive:
            return
        self._successes += 1
        if self._successes < int(self.limit):
            return
        # A window of successes without a trend.
        self._successes = self._strikes = 0
        self._calm = True
        if self.gap:
            gap = narrowed_gap(self.gap, self._gap_floor)
            if not gap:
                self._gap_floor = 0.0  # a later overload starts afresh
            self._set_gap(gap)
        elif self.limit < self.max_concurrency:
            self._set(grown(self.limit, self._threshold, self.max_concurrency))

    def _set(self, limit: float) -> None:
        self.limit = limit
        self._limiter.total_tokens = max(1, int(limit))

    def _set_gap(self, gap: float) -> None:
        """Change the gap, and wake the first in line to look at it."""
        self.gap = gap
        if self._changed is not None:
            self._changed.set()
            self._changed = None
