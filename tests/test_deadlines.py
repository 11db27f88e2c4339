"""Deadlines: a call that runs out of time stops and hands back what it fetched."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca

from .conftest import ScriptedServer, requested, value_for

pytestmark = pytest.mark.anyio


def stuck_on(segment: int) -> Any:
    """A handler under which any request holding ``segment`` never answers."""

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if segment in requested(request):
            await anyio.sleep(60)
        return None

    return handler


async def test_a_deadline_cancels_the_rest_and_keeps_what_was_fetched(make_client: Any) -> None:
    server = ScriptedServer(handler=stuck_on(55))
    async with make_client(transport=server, chunk_size=10) as client:
        with anyio.fail_after(5), pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", range(100), deadline=0.2)
    error = caught.value
    assert sorted(error.failures) == list(range(50, 60))
    assert "deadline=0.2 s passed" in error.failures[55]
    assert isinstance(error.errors[0], bca.DeadlineExceededError)
    assert isinstance(error.errors[0], TimeoutError)
    assert list(error.result) == [i for i in range(100) if not 50 <= i < 60]
    assert error.result[99] == value_for(99)
    assert server.in_flight == 0  # the stuck request was cancelled


async def test_a_deadline_that_cuts_everything_still_raises_incomplete_result(
    make_client: Any,
) -> None:
    server = ScriptedServer(latency=10)
    async with make_client(transport=server, chunk_size=10) as client:
        with anyio.fail_after(5), pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", range(30), deadline=0.05)
    assert len(caught.value.result) == 0
    assert sorted(caught.value.failures) == list(range(30))


async def test_the_client_default_deadline_applies_and_a_call_can_override_it(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=stuck_on(5))
    async with make_client(transport=server, chunk_size=10, deadline=0.1) as client:
        with anyio.fail_after(5), pytest.raises(bca.IncompleteResultError):
            await client.fetch_property("link_pre", range(20))
        server.handler = None
        result = await client.fetch_property("link_pre", range(20), deadline=30)
    assert len(result) == 20


async def test_a_deadline_on_several_properties(make_client: Any) -> None:
    server = ScriptedServer(handler=stuck_on(3))
    async with make_client(transport=server, chunk_size=10) as client:
        with anyio.fail_after(5), pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_properties(["size", "link_pre"], range(30), deadline=0.2)
    error = caught.value
    assert sorted(error.failures) == list(range(10))
    assert len(error.results["size"]) == 20
    assert len(error.results["link_pre"]) == 20


async def test_a_deadline_on_a_stream_ends_it_with_incomplete_result(make_client: Any) -> None:
    server = ScriptedServer(handler=stuck_on(15))
    got: list[int] = []
    async with make_client(transport=server, chunk_size=10) as client:
        with anyio.fail_after(5), pytest.raises(bca.IncompleteResultError) as caught:
            async for part in client.iter_property("link_pre", range(40), deadline=0.2):
                got.extend(part)
    assert sorted(got) == [i for i in range(40) if not 10 <= i < 20]
    assert sorted(caught.value.failures) == list(range(10, 20))


@pytest.mark.parametrize("bad", [0, -1, "5", True])
async def test_bad_deadlines_are_refused(make_client: Any, bad: Any) -> None:
    async with make_client(transport=ScriptedServer()) as client:
        with pytest.raises(ValueError, match="deadline"):
            await client.fetch_property("link_pre", [1], deadline=bad)


async def test_repeated_timeouts_halve_a_big_chunk_instead_of_failing_it(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if len(requested(request)) > 8:
            raise httpx.ReadTimeout("too big to answer in time")
        return None

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=16) as client:
        result = await client.fetch_property("link_pre", range(16))
    assert list(result) == list(range(16))
    # The 16 timed out twice (not max_retries + 1 times), then its halves succeeded.
    assert sorted(len(c) for c in server.segments_requested) == [8, 8, 16, 16]
    assert client.stats.splits == 1


async def test_when_the_halves_time_out_too_splitting_stops(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        raise httpx.ReadTimeout("the server is just slow")

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=64, max_retries=3) as client:
        with pytest.raises(bca.APITimeoutError):
            await client.fetch_property("link_pre", range(64))
    sizes = sorted(len(c) for c in server.segments_requested)
    # One split only (no cascade down to single ids): 2 tries of the 64, then each
    # half gets its full 1 + 3 tries (one half had 2 of them before splitting stopped).
    assert set(sizes) == {32, 64}
    assert len(sizes) <= 2 + 2 + 2 * 4
    assert client.stats.splits == 1


async def test_a_single_segment_that_keeps_timing_out_fails_after_its_retries(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        raise httpx.ReadTimeout("slow")

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, max_retries=3) as client:
        with pytest.raises(bca.APITimeoutError):
            await client.fetch_property("link_pre", [7])
    assert len(server.requests) == 4
