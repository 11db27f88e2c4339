"""413 splits a chunk; a chunk that fails for good never throws away the others."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import ScriptedServer, requested, too_large_above, value_for

pytestmark = pytest.mark.anyio


async def test_413_tries_one_segment_then_halves_the_rest_and_fetches_every_piece(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=too_large_above(3))
    ids = list(range(100, 110))
    async with make_client(transport=server, chunk_size=10) as client:
        result = await client.fetch_property("link_pre", ids)
    assert list(result) == ids  # still in request order after splitting
    refused = [c for c in server.segments_requested if len(c) > 3]
    # 10 -> its first segment alone (answered: the 413 is about size) + 9 -> 4 + 5,
    # depth-first: the 4 is split before the 5 is tried.
    assert [len(c) for c in refused] == [10, 9, 4, 5]
    assert server.segments_requested[1] == [100]
    served = sorted(s for c in server.segments_requested if len(c) <= 3 for s in c)
    assert served == ids  # every id fetched exactly once after the splits
    assert client.stats.splits == 4


async def test_413_splits_down_to_single_segments(make_client: Any) -> None:
    server = ScriptedServer(handler=too_large_above(1))
    async with make_client(transport=server, chunk_size=8) as client:
        result = await client.fetch_property("link_pre", range(8))
    assert list(result) == list(range(8))
    assert sum(1 for c in server.segments_requested if len(c) == 1) == 8


async def test_413_on_a_single_segment_fails_only_that_segment(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        segments = requested(request)
        if 5 in segments:
            return httpx.Response(413, json={"detail": "too large"})
        return None

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=4) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", range(8))
    error = caught.value
    assert list(error.failures) == [5]
    assert "413" in error.failures[5]
    assert list(error.result) == [0, 1, 2, 3, 4, 6, 7]


async def test_a_chunk_that_never_succeeds_leaves_the_others_in_the_result(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if 42 in requested(request):
            return httpx.Response(503, json={"detail": "shard down"})
        return None

    server = ScriptedServer(handler=handler, unknown=frozenset({7}))
    async with make_client(transport=server, chunk_size=10, max_retries=2) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", range(100))
    error = caught.value
    assert sorted(error.failures) == list(range(40, 50))
    assert all("shard down" in reason for reason in error.failures.values())
    assert list(error.result) == [i for i in range(100) if not 40 <= i < 50 and i != 7]
    assert error.result.missing == (7,)
    assert error.result[99] == value_for(99)
    assert isinstance(error.__cause__, bca.APIStatusError)
    assert error.errors[0].status_code == 503  # type: ignore[attr-defined]
    # The failing chunk was tried 1 + max_retries times; the others once each.
    assert len(server.requests) == 9 + 3


async def test_when_every_chunk_fails_the_error_itself_is_raised(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        return httpx.Response(429, json={"detail": "quota exceeded"})

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=5, max_retries=1) as client:
        with pytest.raises(bca.RateLimitError, match="quota exceeded"):
            await client.fetch_property("link_pre", range(10))


async def test_unreachable_server_is_a_connection_error(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        raise httpx.ConnectError("connection refused")

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, max_retries=2) as client:
        with pytest.raises(bca.APIConnectionError, match="ConnectError") as caught:
            await client.fetch_property("link_pre", [1])
    # The httpx error holds the request and its token headers: it is quoted, not chained.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert len(server.requests) == 3


async def test_timeouts_are_api_timeout_errors(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        raise httpx.ReadTimeout("timed out")

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, max_retries=1) as client:
        with pytest.raises(bca.APITimeoutError, match="timeout="):
            await client.fetch_property("link_pre", [1])
    assert len(server.requests) == 2


async def test_a_closed_client_says_so(make_client: Any) -> None:
    client = make_client(transport=ScriptedServer())
    async with client:
        pass
    with pytest.raises(bca.ClientClosedError, match="closed") as caught:
        await client.fetch_property("link_pre", [1])
    # One hierarchy, and still the RuntimeError that code written before caught.
    assert isinstance(caught.value, bca.BrainCircuitsError)
    assert isinstance(caught.value, RuntimeError)


async def test_an_error_in_the_progress_callback_stops_the_call_as_itself(
    make_client: Any,
) -> None:
    def progress(update: bca.Progress) -> None:
        raise ZeroDivisionError("the user's bug")

    server = ScriptedServer(latency=0.001)
    async with make_client(transport=server, chunk_size=1, max_concurrency=2) as client:
        with pytest.raises(ZeroDivisionError, match="the user's bug"):
            await client.fetch_property("link_pre", range(50), progress=progress)
    assert len(server.requests) < 50  # the call stopped instead of carrying on


async def test_many_small_chunks_use_a_fixed_number_of_workers(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server, chunk_size=1, max_concurrency=4) as client:
        result = await client.fetch_property("link_pre", range(2000))
    assert len(result) == 2000
    assert server.max_in_flight <= 4
    # Chunks leave in request order: the workers take them from one queue.
    firsts = [chunk[0] for chunk in server.segments_requested]
    assert sorted(firsts[:4]) == [0, 1, 2, 3]
    assert firsts[-1] >= 1996
