"""Recovery after overload: once answers succeed again, requests in flight come back at once.

A gap between starts applies to the next start, not to starts booked under an
old gap; the limit doubles back to half where an overload began (slow start);
a cancelled starter gives its turn and its slot to the others.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest

from braincircuits_async._config import DEFAULT_BACKOFF_BASE
from braincircuits_async._limits import (
    FIRST_GAP,
    GAP_EASING,
    INCREASE,
    MAX_GAP,
    RequestGate,
    grown,
    narrowed_gap,
    start_booked,
    start_spacing,
    start_wait,
    widened_gap,
)

from .conftest import ON_A_FAKE_CLOCK, answer, requested

pytestmark = pytest.mark.anyio

# --- the decisions, as tables ----------------------------------------------------


@pytest.mark.parametrize(
    ("gap", "rate", "expected"),
    [
        (0.0, None, 0.0),
        (0.4, None, 0.4),
        (0.0, 10.0, 0.1),
        (0.4, 10.0, 0.4),  # the longer of the two
        (0.05, 10.0, 0.1),
    ],
)
def test_the_spacing_is_the_gap_or_the_rate_interval_whichever_is_longer(
    gap: float, rate: float | None, expected: float
) -> None:
    assert start_spacing(gap, rate) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("now", "last_start", "spacing", "expected"),
    [
        (100.0, -math.inf, 10.0, 0.0),  # nothing started yet
        (100.0, 99.0, 0.0, 0.0),  # no spacing: at once
        (100.0, 99.0, 10.0, 9.0),  # the spacing counts from the last start
        (100.0, 99.0, 0.5, 0.0),  # already past it
        (100.0, 95.0, 10.0, 5.0),
    ],
)
def test_the_first_in_line_waits_until_the_last_start_plus_the_spacing_of_the_moment(
    now: float, last_start: float, spacing: float, expected: float
) -> None:
    assert start_wait(now, last_start, spacing) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("now", "due", "spacing", "slept", "expected"),
    [
        (100.0, 90.0, 0.1, False, 100.0),  # did not wait: from now
        (100.0, 100.0, 0.1, True, 100.0),  # woke when due
        (100.002, 100.0, 0.1, True, 100.0),  # woke late: from its due time, the rate holds
        (100.2, 100.0, 0.1, True, 100.2),  # a whole spacing late (a stalled loop): from now
        (101.0, 100.2, 0.2, False, 101.0),  # woken as the gap shrank: from now, no burst
    ],
)
def test_a_start_books_its_due_time_only_when_it_slept_until_then(
    now: float, due: float, spacing: float, slept: bool, expected: float
) -> None:
    booked = start_booked(now, due, spacing, slept=slept)
    assert booked == pytest.approx(expected)
    assert booked + spacing > now  # the next start is after this one


@pytest.mark.parametrize(
    ("limit", "threshold", "expected"),
    [
        (1.0, 16.0, 2.0),  # slow start: doubles
        (8.0, 16.0, 16.0),
        (12.0, 16.0, 16.0),  # up to the threshold, not past it
        (16.0, 16.0, 16.0 + INCREASE),  # from there on, gently
        (4.0, 0.0, 4.0 + INCREASE),  # no overload yet
        (1.0, 0.5, 1.0 + INCREASE),
        (20.0, 64.0, 32.0),  # never above max_concurrency
        (31.9, 0.0, 32.0),
    ],
)
def test_the_limit_doubles_below_the_threshold_and_grows_gently_above(
    limit: float, threshold: float, expected: float
) -> None:
    assert grown(limit, threshold, 32) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gap", "floor", "expected"),
    [
        (10.0, 0.0, 5.0),  # no known trouble: halved
        (0.4, 0.1, 0.2),
        (0.2, 0.1, 0.1),  # down to the floor
        (0.1, 0.1, 0.1 * GAP_EASING),  # below it, gently
        (0.16, 0.1, 0.16 * GAP_EASING),
        (FIRST_GAP / 4, 0.0, 0.0),  # small enough to drop
        (0.014, 0.1, 0.0),
    ],
)
def test_the_gap_halves_down_to_where_it_drew_429s_and_narrows_gently_below(
    gap: float, floor: float, expected: float
) -> None:
    assert narrowed_gap(gap, floor) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gap", "expected"), [(0.0, FIRST_GAP), (0.05, 0.1), (0.8, 1.6), (6.0, MAX_GAP)]
)
def test_a_cut_at_one_request_doubles_the_gap_within_its_bounds(
    gap: float, expected: float
) -> None:
    assert widened_gap(gap) == pytest.approx(expected)


# --- the gate's state, on a clock that moves only when a test says -------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def strike_twice(gate: RequestGate) -> None:
    for _ in range(2):
        gate.throttled(sent_at=math.inf)  # each sent after the last cut


def window(gate: RequestGate) -> float:
    """One window of successes (as many as the limit); the limit after it."""
    for _ in range(int(gate.limit)):
        gate.succeeded()
    return gate.limit


def test_after_an_overload_the_limit_doubles_back_to_half_where_it_began() -> None:
    gate = RequestGate(32, clock=Clock())
    while gate.limit > 1:  # every request refused: 32 -> 16 -> ... -> 1
        strike_twice(gate)
    limits = [window(gate) for _ in range(6)]
    assert limits == [2, 4, 8, 16, 16 + INCREASE, 16 + 2 * INCREASE]


def test_an_overload_during_slow_start_lowers_the_threshold() -> None:
    gate = RequestGate(32, clock=Clock())
    while gate.limit > 1:
        strike_twice(gate)
    assert [window(gate), window(gate)] == [2, 4]
    strike_twice(gate)  # 429s again at 4: the trouble now begins at 4
    assert gate.limit == 2
    assert [window(gate), window(gate)] == [2 + INCREASE, 2 + 2 * INCREASE]


def test_a_gap_narrows_gently_below_where_it_drew_429s_until_it_is_gone() -> None:
    gate = RequestGate(2, clock=Clock())
    strike_twice(gate)  # 2 -> 1
    gaps = []
    for step in ("429", "429", "ok", "429", "ok", "ok"):
        if step == "429":
            strike_twice(gate)
        else:
            gate.succeeded()
        gaps.append(gate.gap)
    # After a success, 429s at 0.05 set the floor at 0.1: halving it again would
    # go straight back to where the 429s were.
    assert gaps == pytest.approx([0.05, 0.1, 0.05, 0.1, 0.1 * GAP_EASING, 0.1 * GAP_EASING**2])
    while gate.gap:
        gate.succeeded()
    while gate.gap < MAX_GAP:  # a new overload, every request refused
        strike_twice(gate)
    gaps = []
    for _ in range(3):
        gate.succeeded()
        gaps.append(gate.gap)
    assert gaps == [MAX_GAP / 2, MAX_GAP / 4, MAX_GAP / 8]  # the old floor is forgotten


# --- starts, on anyio's clock ----------------------------------------------------


def overload(gate: RequestGate, gap: float = MAX_GAP) -> None:
    """The gate after 429s to every request: one in flight, ``gap`` between starts."""
    while gate.gap < gap:
        strike_twice(gate)


def recover(gate: RequestGate) -> None:
    """Answers succeed again, until the gap is gone."""
    while gate.gap:
        gate.succeeded()


async def start(gate: RequestGate, starts: list[float]) -> None:
    async with gate:
        starts.append(anyio.current_time())


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio", "trio-fake-clock"], indirect=True)
async def test_starters_waiting_under_a_long_gap_go_at_once_when_it_is_gone() -> None:
    gate = RequestGate(4)
    overload(gate)
    await start(gate, [])  # the last start: the next one is due MAX_GAP later
    starts: list[float] = []
    with anyio.fail_after(MAX_GAP / 2):
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(start, gate, starts)
            await anyio.sleep(0.05)
            recovered = anyio.current_time()
            recover(gate)
    assert len(starts) == 5
    assert max(starts) - recovered < 1.0  # not MAX_GAP (or 5 x MAX_GAP) after it
    assert min(starts) >= recovered


@ON_A_FAKE_CLOCK
async def test_when_the_gap_is_gone_a_rate_still_spaces_the_waiting_starters() -> None:
    gate = RequestGate(4, rate=5)
    overload(gate)
    await start(gate, [])
    began = anyio.current_time()
    starts: list[float] = []
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(start, gate, starts)
        await anyio.sleep(1)
        recover(gate)
    assert [s - began for s in starts] == pytest.approx([1.0, 1.2, 1.4])


@ON_A_FAKE_CLOCK
async def test_a_gap_that_grows_while_a_starter_waits_applies_to_it() -> None:
    gate = RequestGate(2)
    overload(gate, gap=0.4)
    await start(gate, [])
    began = anyio.current_time()
    starts: list[float] = []
    async with anyio.create_task_group() as group:
        group.start_soon(start, gate, starts)
        await anyio.sleep(0.1)
        strike_twice(gate)  # 429s meanwhile: 0.8 between starts now
    assert [s - began for s in starts] == pytest.approx([0.8])


@ON_A_FAKE_CLOCK
async def test_a_starter_cancelled_while_it_waits_frees_its_slot_and_its_turn() -> None:
    gate = RequestGate(2)
    overload(gate, gap=1.6)  # one in flight, 1.6 s between starts
    await start(gate, [])
    began = anyio.current_time()
    starts: list[float] = []
    first = anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(cancellable_start, gate, starts, first)
        await anyio.sleep(0.1)
        group.start_soon(start, gate, starts)  # waits for the one slot
        await anyio.sleep(0.1)
        first.cancel()
        await anyio.sleep(0.1)
        group.start_soon(start, gate, starts)
    # The second goes when the first would have; the third one gap later, so the
    # cancelled one left neither its slot taken nor a turn booked.
    assert [s - began for s in starts] == pytest.approx([1.6, 3.2])


async def cancellable_start(
    gate: RequestGate, starts: list[float], scope: anyio.CancelScope
) -> None:
    with scope:
        await start(gate, starts)


@pytest.mark.parametrize("cancelled", [0, 1])
@ON_A_FAKE_CLOCK
async def test_a_starter_cancelled_in_line_does_not_hold_up_the_others(cancelled: int) -> None:
    gate = RequestGate(4, rate=1)  # four slots, so three starters wait in line
    await start(gate, [])
    began = anyio.current_time()
    starts: list[float] = []
    scopes = [anyio.CancelScope() for _ in range(3)]
    async with anyio.create_task_group() as group:
        for scope in scopes:
            group.start_soon(cancellable_start, gate, starts, scope)
            await anyio.sleep(0.01)  # in this order
        await anyio.sleep(0.5)
        scopes[cancelled].cancel()  # the first in line, or one behind it
    assert [s - began for s in starts] == pytest.approx([1.0, 2.0])


# --- requests in flight through a client, counted by the server --------------------


class BurstOf429s(httpx.AsyncBaseTransport):
    """Answers 429 (no Retry-After) for ``seconds`` from the first request, then OK.

    OK answers take ``latency``. It counts the requests in flight, and notes when
    they first reach ``watch`` after the overload ended.
    """

    def __init__(self, *, seconds: float, latency: float, watch: int) -> None:
        self.seconds = seconds
        self.latency = latency
        self.watch = watch
        self.began: float | None = None
        self.in_flight = 0
        self.full_again_after: float | None = None  # seconds after the overload ended

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        if self.began is None:
            self.began = now
        self.in_flight += 1
        try:
            since_end = now - self.began - self.seconds
            if since_end < 0:
                return httpx.Response(429, json={"detail": "slow down"})
            if self.in_flight >= self.watch and self.full_again_after is None:
                self.full_again_after = since_end
            await anyio.sleep(self.latency)
            return httpx.Response(200, json=answer(requested(request)))
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize(
    ("max_concurrency", "chunks", "within"),
    [(8, 400, 3.0), (32, 3000, 5.0)],
)
@ON_A_FAKE_CLOCK
async def test_after_a_burst_of_429s_requests_in_flight_are_back_at_max_concurrency_within_seconds(
    make_client: Any, max_concurrency: int, chunks: int, within: float
) -> None:
    server = BurstOf429s(seconds=3.0, latency=0.05, watch=max_concurrency)
    async with make_client(
        transport=server,
        chunk_size=10,
        max_concurrency=max_concurrency,
        backoff_base=DEFAULT_BACKOFF_BASE,
        max_retries=10,
    ) as client:
        result = await client.fetch_property("link_pre", range(10 * chunks))
    assert len(result) == 10 * chunks
    # Counted by the server, after the 429s ended: not the gate's own numbers.
    assert server.full_again_after is not None, "never back at max_concurrency"
    assert server.full_again_after <= within, server.full_again_after
