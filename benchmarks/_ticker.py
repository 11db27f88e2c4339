"""The caller's event loop during a fetch: the gaps a 1 ms ticker sees beside it.

Runs in the worker's process (``benchmarks._worker``, contender ``stall``). A task
sleeps 1 ms in a loop next to the fetch and times, with ``time.perf_counter``,
every gap between two of its wake-ups. A gap much longer than 1 ms is a stretch
in which the loop ran something else without yielding (validation, a merge, a
store write) or in which the process did not get a core (the fake server and
others' work share this machine's 2 cores: hence several runs).

Each gap is put in the phase of the call it overlaps most, from timestamps taken
around the call and in its ``progress=`` callback:

- ``open``: building the client (and opening a store file);
- ``before first answer``: from calling ``fetch_property``/``iter_property`` to
  the first progress callback (validation, de-duplication, the store's lookup,
  the first round of requests);
- ``during``: from the first progress callback to the last;
- ``after last answer``: from the last progress callback to the call's return
  (settling and merging);
- ``close``: ``aclose`` (connections, and the store the client opened).

The garbage collector's full collections (generation 2) are timed too
(``gc.callbacks``), and how much of the longest gap they took.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

import anyio

import braincircuits_async as bca

__all__ = ["PHASES", "beside_ticker"]

PERIOD_S = 0.001
#: Gaps longer than this are kept with their times (a free loop wakes every ~1.1 ms).
KEPT_S = 0.002
PHASES = ("open", "before first answer", "during", "after last answer", "close")


class Ticker:
    """Wakes every ``PERIOD_S`` and keeps the gaps between wake-ups that were long."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        self.ticks = 0
        self.longest = 0.0
        self.running = True
        #: Requests sent so far (the client's stats), once there is a client.
        self.requests: Callable[[], int] | None = None
        self.first_request_seen: float | None = None

    async def run(self) -> None:
        last = time.perf_counter()
        while self.running:
            await anyio.sleep(PERIOD_S)
            now = time.perf_counter()
            self.ticks += 1
            gap = now - last
            if gap > KEPT_S:
                self.gaps.append((last, now))
            self.longest = max(self.longest, gap)
            if self.first_request_seen is None and self.requests is not None and self.requests():
                self.first_request_seen = now
            last = now


class Collections:
    """The cyclic garbage collector's runs (``gc.callbacks``): when, how long, which generation.

    A full collection walks every tracked object (each value dict of a result),
    so at a million segments one can hold the loop for tens of milliseconds.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[float, float, int]] = []
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        else:
            self.runs.append((self._began, now, info["generation"]))

    def within(self, start: float, end: float) -> float:
        """Seconds of collecting inside ``[start, end]``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b, _ in self.runs)


class Answers:
    """The ``progress=`` callback: when the first and the last chunk were done."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.calls = 0

    def __call__(self, _progress: object) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.calls += 1


async def beside_ticker(
    spec: dict[str, Any], ids: list[int], settings: dict[str, Any]
) -> tuple[Any, int, dict[str, Any]]:
    """Open a client, run ``spec["call"]`` and close it, beside a ticker.

    ``"fetch"``: ``fetch_property``; ``"iter"``: ``iter_property``, counting the
    segments; ``"idle"``: no call, ``spec["seconds"]`` of sleep (the ticker's floor).
    ``spec["store"]``: a store file's path, given as ``store=``.
    """
    ticker, answers, collections = Ticker(), Answers(), Collections()
    marks: dict[str, float] = {}
    gc.callbacks.append(collections)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker.run)
            await anyio.sleep(0.02)  # the ticker is running
            result, requests, backend = await watched(spec, ids, settings, ticker, answers, marks)
            await anyio.sleep(0.02)  # the ticker sees the end of the last stretch
            ticker.running = False
    finally:
        gc.callbacks.remove(collections)
    # What a full collection walks while the result is held (after the clock).
    tracked = len(gc.get_objects())
    extra = {"http_backend": backend, "gc_tracked_objects": tracked}
    return result, requests, {**extra, **figures(ticker, answers, marks, collections)}


async def watched(
    spec: dict[str, Any],
    ids: list[int],
    settings: dict[str, Any],
    ticker: Ticker,
    answers: Answers,
    marks: dict[str, float],
) -> tuple[Any, int, str]:
    """The client's life: open, the call, close, with a timestamp in ``marks`` between each."""
    store = spec.get("store")
    marks["open"] = time.perf_counter()
    client = bca.AsyncClient(**settings, **({"store": store} if store else {}))
    ticker.requests = lambda: client.stats.requests
    try:
        marks["call"] = time.perf_counter()
        result: Any
        if spec["call"] == "idle":  # the floor: the ticker beside an idle client
            await anyio.sleep(spec["seconds"])
            result = {"count": 0}
        elif spec["call"] == "iter":
            seen = 0
            async for part in client.iter_property(spec["property"], ids, progress=answers):
                seen += len(part)
            result = {"count": seen}
        else:
            result = await client.fetch_property(spec["property"], ids, progress=answers)
        marks["return"] = time.perf_counter()
        requests: int = client.stats.requests
        backend: str = getattr(client, "http_backend", "httpx")
    finally:
        await client.aclose()
    marks["closed"] = time.perf_counter()
    return result, requests, backend


def phase_bounds(answers: Answers, marks: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each phase's start and end (``perf_counter`` seconds)."""
    first = answers.first if answers.first is not None else marks["return"]
    last = answers.last if answers.last is not None else marks["return"]
    return {
        "open": (-math.inf, marks["call"]),
        "before first answer": (marks["call"], first),
        "during": (first, last),
        "after last answer": (last, marks["return"]),
        "close": (marks["return"], math.inf),
    }


def phase_of(gap: tuple[float, float], bounds: dict[str, tuple[float, float]]) -> str:
    """The phase a gap overlaps most (the earlier one on a tie)."""
    start, end = gap
    overlaps = {name: min(end, b) - max(start, a) for name, (a, b) in bounds.items()}
    return max(PHASES, key=lambda name: overlaps[name])


def spanned(gap: tuple[float, float], bounds: dict[str, tuple[float, float]]) -> str:
    """The phases a gap overlaps by more than a millisecond, e.g. ``open + before first
    answer`` for a stretch that began while the client was built."""
    start, end = gap
    names = [n for n in PHASES if min(end, bounds[n][1]) - max(start, bounds[n][0]) > 0.001]
    return " + ".join(names) or phase_of(gap, bounds)


def figures(
    ticker: Ticker, answers: Answers, marks: dict[str, float], collections: Collections
) -> dict[str, Any]:
    """The ticker's figures: the longest gap, counts of long ones, by phase, the garbage
    collector's share; in ms."""
    bounds = phase_bounds(answers, marks)
    kept = [(gap, phase_of(gap, bounds)) for gap in ticker.gaps]
    phases: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        gaps = [gap for gap, phase in kept if phase == name]
        a, b = bounds[name]
        worst = max(gaps, key=lambda g: g[1] - g[0], default=None)
        phases[name] = {
            # None: none over KEPT_S
            "longest_ms": None if worst is None else 1000 * (worst[1] - worst[0]),
            "longest_gc_ms": None if worst is None else 1000 * collections.within(*worst),
            "over_20ms": sum(end - start > 0.020 for start, end in gaps),
            "seconds": min(b, marks["closed"]) - max(a, marks["open"]),
        }
    longest = max(ticker.gaps, key=lambda g: g[1] - g[0], default=None)
    top = sorted(ticker.gaps, key=lambda g: g[0] - g[1])[:5]
    origin = marks["open"]
    seen = ticker.first_request_seen
    full = [b - a for a, b, generation in collections.runs if generation == 2]
    return {
        "ticks": ticker.ticks,
        "longest_gap_ms": 1000 * ticker.longest,
        "longest_phase": None if longest is None else spanned(longest, bounds),
        "gaps_over_20ms": sum(end - start > 0.020 for start, end in ticker.gaps),
        "gaps_over_100ms": sum(end - start > 0.100 for start, end in ticker.gaps),
        "blocked_over_20ms_s": sum(
            end - start for start, end in ticker.gaps if end - start > 0.020
        ),
        "phases": phases,
        "progress_calls": answers.calls,
        "longest_gap_gc_ms": 0.0 if longest is None else 1000 * collections.within(*longest),
        "gc_full": {
            "count": len(full),
            "longest_ms": 1000 * max(full, default=0.0),
            "total_s": sum(full),
        },
        "marks_s": {
            "call": marks["call"] - origin,
            "first_request_seen": None if seen is None else seen - origin,
            "first_answer": None if answers.first is None else answers.first - origin,
            "last_answer": None if answers.last is None else answers.last - origin,
            "return": marks["return"] - origin,
            "closed": marks["closed"] - origin,
        },
        "top_gaps": [
            {
                "start_s": start - origin,
                "ms": 1000 * (end - start),
                "phase": spanned((start, end), bounds),
                "gc_ms": 1000 * collections.within(start, end),
            }
            for start, end in top
        ],
    }
