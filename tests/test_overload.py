"""Overload: on 429 the whole client slows down; a client-side rate limit; big answers."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async._limits import RequestGate

from .conftest import ON_A_FAKE_CLOCK, ScriptedServer

pytestmark = pytest.mark.anyio


class Clock:
    """A fake clock for the gate's own decisions: time moves only when a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_429s_in_a_window_halve_the_limit_down_to_one() -> None:
    clock = Clock()
    gate = RequestGate(16, clock=clock)
    limits = []
    for _ in range(12):
        gate.throttled(sent_at=clock() + 1)  # each sent after the last cut
        limits.append(gate.limit)
    assert limits == [16, 8, 8, 4, 4, 2, 2, 1, 1, 1, 1, 1]


def test_a_single_429_in_a_window_of_successes_is_taken_for_chance() -> None:
    clock = Clock()
    gate = RequestGate(8, clock=clock)
    for _ in range(5):
        gate.throttled(sent_at=clock() + 1)
        for _ in range(8):  # a full window of successes in between
            gate.succeeded()
    assert gate.limit == 8
    assert gate.cuts == 0


def test_429s_for_requests_sent_before_the_last_cut_do_not_cut_again() -> None:
    clock = Clock()
    gate = RequestGate(16, clock=clock)
    before = clock()
    gate.throttled(sent_at=before)
    gate.throttled(sent_at=before)  # the second strike: a cut
    gate.throttled(sent_at=before)  # in flight when the cut happened
    gate.throttled(sent_at=before - 1)
    assert gate.limit == 8
    assert gate.cuts == 1


def test_the_limit_grows_back_gently_after_windows_of_successes() -> None:
    clock = Clock()
    gate = RequestGate(8, clock=clock)
    gate.throttled(sent_at=clock() + 1)
    gate.throttled(sent_at=clock() + 1)
    assert gate.limit == 4
    for _ in range(4):  # one window: as many successes as the limit
        gate.succeeded()
    assert gate.limit == 4.25
    for _ in range(10_000):
        gate.succeeded()
    assert gate.limit == 8  # never above max_concurrency


def test_a_fixed_gate_never_moves() -> None:
    clock = Clock()
    gate = RequestGate(8, adaptive=False, clock=clock)
    for _ in range(4):
        gate.throttled(sent_at=clock() + 1)
    gate.succeeded()
    assert gate.limit == 8


def rate_limited(per_second: float) -> ScriptedServer:
    """A scripted server that answers 429 (no Retry-After) above ``per_second``."""
    state = {"tokens": per_second, "at": anyio.current_time()}

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        now = anyio.current_time()
        state["tokens"] = min(per_second, state["tokens"] + (now - state["at"]) * per_second)
        state["at"] = now
        if state["tokens"] < 1:
            return httpx.Response(429, json={"detail": "slow down"})
        state["tokens"] -= 1
        return None

    return ScriptedServer(handler=handler, latency=0.01)


async def run_against_limit(make_client: Any, *, adaptive: bool) -> tuple[int, bool]:
    """The 429s drawn by 300 chunks at concurrency 32, and whether all were fetched."""
    server = rate_limited(200)
    async with make_client(
        transport=server,
        chunk_size=5,
        max_concurrency=32,
        adaptive_concurrency=adaptive,
        backoff_base=0.005,
        max_retries=8,
    ) as client:
        try:
            await client.fetch_property("link_pre", range(1500))
        except bca.IncompleteResultError:
            return server.requests_failed, False
    return server.requests_failed, True


@ON_A_FAKE_CLOCK
async def test_adaptive_concurrency_draws_far_fewer_429s_than_fixed(make_client: Any) -> None:
    fixed_429s, _ = await run_against_limit(make_client, adaptive=False)
    adaptive_429s, complete = await run_against_limit(make_client, adaptive=True)
    assert complete  # the adaptive client fetched every chunk
    assert adaptive_429s < fixed_429s / 2, (adaptive_429s, fixed_429s)


@ON_A_FAKE_CLOCK
async def test_max_requests_per_second_spaces_the_requests(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(
        transport=server, chunk_size=1, max_concurrency=8, max_requests_per_second=200
    ) as client:
        began = anyio.current_time()
        await client.fetch_property("link_pre", range(21))
        elapsed = anyio.current_time() - began
    # 21 starts, 1/200 s apart, and no more: on the fake clock the time is exact.
    assert elapsed == pytest.approx(20 / 200)


async def test_an_answer_larger_than_the_cap_fails_its_chunk_without_reading_it_all(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        # Claims and sends 10 MB: a runaway answer.
        return httpx.Response(200, content=b" " * 10_000_000)

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, max_response_bytes=1_000_000) as client:
        with pytest.raises(bca.MalformedResponseError, match="max_response_bytes=1,000,000"):
            await client.fetch_property("link_pre", [1, 2])
    assert len(server.requests) == 1  # not retried: it would be as big again


# Stopping early leaves httpx's inner body generators unfinished; trio reports them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_streamed_body_without_length_is_capped_too(make_client: Any) -> None:
    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            for _ in range(1000):
                yield b"x" * 100_000
                await anyio.lowlevel.checkpoint()

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        return httpx.Response(200, stream=Endless())

    async with make_client(
        transport=ScriptedServer(handler=handler), max_response_bytes=500_000
    ) as client:
        with pytest.raises(bca.MalformedResponseError, match="larger than max_response_bytes"):
            await client.fetch_property("link_pre", [1])


async def fetch_from_rate_limited_fake(adaptive: bool) -> tuple[int, int]:
    """100 chunks against a fake that allows 50 requests/s and sends no Retry-After."""
    from braincircuits_async import testing

    fake = testing.FakeBrainCircuits(rate_limit=50, rate_limit_retry_after=None, latency=0.02)
    async with bca.AsyncClient(
        token=testing.DEFAULT_TOKEN,
        cave_token=testing.DEFAULT_CAVE_TOKEN,
        base_url="http://fake.test",
        transport=httpx.ASGITransport(app=fake),
        project="fruitfly_fafb_flywire",
        chunk_size=50,
        max_concurrency=32,
        adaptive_concurrency=adaptive,
    ) as client:
        try:
            await client.fetch_property("link_pre", range(1, 5001))
            failed = 0
        except bca.IncompleteResultError as error:
            failed = len(error.failures)
    return fake.log.statuses[429], failed


async def test_against_a_hard_rate_limit_the_adaptive_client_finishes_with_few_429s() -> None:
    adaptive_429s, adaptive_failed = await fetch_from_rate_limited_fake(adaptive=True)
    fixed_429s, _ = await fetch_from_rate_limited_fake(adaptive=False)
    assert adaptive_failed == 0  # no chunk ran out of retries
    assert adaptive_429s < fixed_429s / 2, (adaptive_429s, fixed_429s)


def test_below_one_request_in_flight_further_429s_space_the_starts_out() -> None:
    clock = Clock()
    gate = RequestGate(2, clock=clock)

    def strike_twice() -> None:
        for _ in range(2):
            gate.throttled(sent_at=clock() + 1)

    strike_twice()  # 2 -> 1
    assert (gate.limit, gate.gap) == (1, 0)
    strike_twice()  # already at 1: a gap between starts
    assert gate.gap == 0.05
    strike_twice()
    assert gate.gap == 0.1
    for _ in range(3):  # windows of successes shrink the gap before the limit grows
        gate.succeeded()
    assert gate.gap == 0.0125
    gate.succeeded()
    assert gate.gap == 0
    assert gate.limit == 1
    gate.succeeded()
    assert gate.limit == 1.25
