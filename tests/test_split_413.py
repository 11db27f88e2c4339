"""413s split chunks only while that helps, and pieces are tried depth-first.

A server that refuses everything with 413 (a proxy limiting request bodies, a
server misusing the status) once cost about two requests per id: every chunk
was halved down to single ids. Now one segment alone answers "is it the size?",
and when even a single segment is refused, the chunks left fail with that
reason. A server whose 413 is about size still gets every chunk split to sizes
it answers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import ScriptedServer, requested, too_large_above, value_for

pytestmark = pytest.mark.anyio

IDS = range(5000)  # 10 chunks of 500


async def refuse_everything(request: httpx.Request, number: int) -> httpx.Response | None:
    return httpx.Response(413, json={"detail": "request entity too large"})


async def test_a_server_that_refuses_everything_gets_a_few_dozen_requests_not_two_per_id(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=refuse_everything)
    async with make_client(transport=server, chunk_size=500) as client:
        with pytest.raises(bca.APIStatusError) as caught:
            await client.fetch_property("link_pre", IDS)
    # Before: 9,990 requests (every chunk halved down to single ids).
    assert len(server.requests) <= 40
    error = caught.value
    assert error.status_code == 413
    assert "splitting does not help" in str(error)
    assert "Lowering chunk_size will not help" in str(error)


async def test_the_chunks_left_fail_with_the_reason_that_splitting_does_not_help(
    make_client: Any,
) -> None:
    # Refuses every request but those of the last chunk: size is not the trouble.
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if min(requested(request)) < 4500:
            return httpx.Response(413, json={"detail": "request entity too large"})
        return None

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=500) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", IDS)
    assert len(server.requests) <= 40
    error = caught.value
    assert list(error.result) == list(range(4500, 5000))
    assert sorted(error.failures) == list(range(4500))
    for reason in error.failures.values():
        assert "413" in reason
        assert "splitting does not help" in reason
        assert "refused even a single segment" in reason
        assert "not the trouble" in reason
        assert "proxy or gateway" in reason
    assert client.stats.splits <= 10  # no chunk halved down to single ids


async def test_a_413_about_size_still_splits_every_chunk_to_sizes_that_are_answered(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=too_large_above(100))
    async with make_client(transport=server, chunk_size=500) as client:
        result = await client.fetch_property("link_pre", IDS)
    assert list(result) == list(IDS)
    assert all(result[s] == value_for(s) for s in (0, 1, 2499, 4999))
    answered = [c for c in server.segments_requested if len(c) <= 100]
    assert sorted(s for c in answered for s in c) == list(IDS)  # each id once
    # Halving 500 reaches the 62-63 the server answers in 3 splits: 15 requests a chunk,
    # and one more for the segment tried alone first.
    assert len(server.requests) <= 10 * 15 + 8


async def test_the_pieces_of_a_refused_chunk_are_tried_before_the_chunks_still_queued(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=too_large_above(100))
    async with make_client(transport=server, chunk_size=500, max_concurrency=1) as client:
        await client.fetch_property("link_pre", range(1500))
    firsts = [min(c) for c in server.segments_requested]
    # Every piece of ids[0:500] goes before ids[500:1000] is sent, and so on.
    assert firsts == sorted(firsts)
    first_pieces = [c for c in server.segments_requested if max(c) < 500]
    assert sorted(s for c in first_pieces if len(c) <= 100 for s in c) == list(range(500))


async def test_a_segment_refused_among_answered_pieces_fails_alone(make_client: Any) -> None:
    # One segment the server refuses whatever the size: the pieces around it are answered,
    # so splitting goes on and isolates it.
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if 777 in requested(request):
            return httpx.Response(413, json={"detail": "too large"})
        return None

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, chunk_size=500) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", IDS)
    assert list(caught.value.failures) == [777]
    assert len(caught.value.result) == 4999


async def test_a_stream_from_a_server_that_refuses_everything_stops_early(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=refuse_everything)
    async with make_client(transport=server, chunk_size=500) as client:
        with pytest.raises(bca.APIStatusError, match="splitting does not help"):
            async for _ in client.iter_property("link_pre", IDS):
                pass
    assert len(server.requests) <= 40
