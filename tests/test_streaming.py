"""iter_property: chunk results as they arrive, bounded memory, prompt stop on break."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca

from .conftest import TIMESTAMP, ScriptedServer, requested, value_for

pytestmark = pytest.mark.anyio


async def test_stream_yields_every_segment_once_chunk_by_chunk(make_client: Any) -> None:
    server = ScriptedServer(unknown=frozenset({7, 33}))
    seen: dict[int, Any] = {}
    missing: list[int] = []
    async with make_client(transport=server, chunk_size=10) as client:
        async for part in client.iter_property("link_pre", range(95)):
            assert isinstance(part, bca.SegmentPropertyResult)
            assert len(part) + len(part.missing) <= 10
            assert part.materialized_timestamp == TIMESTAMP
            assert not set(part) & set(seen)
            seen.update(part)
            missing.extend(part.missing)
    assert sorted(seen) == [i for i in range(95) if i not in (7, 33)]
    assert sorted(missing) == [7, 33]
    assert seen[94] == value_for(94)


async def test_breaking_out_of_the_loop_cancels_the_rest_and_sends_nothing_more(
    make_client: Any,
) -> None:
    server = ScriptedServer(latency=0.02)
    async with make_client(transport=server, chunk_size=10, max_concurrency=4) as client:
        with anyio.fail_after(5):
            async for _part in client.iter_property("link_pre", range(2000)):
                break
        sent = len(server.requests)
        await anyio.sleep(0.1)  # long enough for several more rounds of requests
        assert len(server.requests) == sent
        assert server.in_flight == 0  # the requests in flight were cancelled
        assert sent < 20
        # The client is still usable afterwards.
        server.latency = 0
        result = await client.fetch_property("link_pre", range(30))
    assert len(result) == 30


async def test_a_slow_reader_holds_back_the_requests(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server, chunk_size=10, max_concurrency=2) as client:
        stream = client.iter_property("link_pre", range(1000))
        first = await stream.__anext__()
        await anyio.sleep(0.05)  # the reader dawdles
        # Bounded by the one read, the buffer and the waiting workers, not by the
        # 100 chunks: 1 + 2 * 2 + 2 * 2.
        assert len(server.requests) <= 9
        await stream.aclose()
    assert len(first) == 10


async def test_stream_with_aclose_in_a_context_manager(make_client: Any) -> None:
    server = ScriptedServer(latency=0.01)
    async with make_client(transport=server, chunk_size=10) as client:
        async with client.iter_property("link_pre", range(500)) as stream:
            async for _ in stream:
                break
        sent = len(server.requests)
        await anyio.sleep(0.05)
        assert len(server.requests) == sent


async def test_empty_stream_yields_nothing_and_sends_nothing(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server) as client:
        parts = [p async for p in client.iter_property("link_pre", [])]
    assert parts == []
    assert server.requests == []


async def test_a_stream_works_without_async_with(make_client: Any) -> None:
    client = make_client(transport=ScriptedServer(), chunk_size=10)
    parts = [part async for part in client.iter_property("link_pre", range(1, 101))]
    assert sum(len(part) for part in parts) == 100
    await client.aclose()
    with pytest.raises(bca.ClientClosedError):
        client.iter_property("link_pre", [1])


async def test_bad_input_is_refused_when_the_stream_is_created(make_client: Any) -> None:
    async with make_client(transport=ScriptedServer()) as client:
        with pytest.raises(bca.InvalidSegmentError):
            client.iter_property("link_pre", [1, -2])


async def test_permanent_error_ends_the_stream_with_that_error(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        return httpx.Response(401, json={"detail": "bad token"})

    async with make_client(transport=ScriptedServer(handler=handler)) as client:
        with pytest.raises(bca.AuthenticationError, match="bad token"):
            async for _ in client.iter_property("link_pre", range(100)):
                pass


async def test_a_chunk_that_fails_for_good_is_reported_after_the_others(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if 55 in requested(request):
            return httpx.Response(503)
        return None

    got: list[int] = []
    async with make_client(
        transport=ScriptedServer(handler=handler), chunk_size=10, max_retries=1
    ) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            async for part in client.iter_property("link_pre", range(100)):
                got.extend(part)
    assert sorted(got) == [i for i in range(100) if not 50 <= i < 60]
    assert sorted(caught.value.failures) == list(range(50, 60))


def rolling(after: int, step: int) -> tuple[ScriptedServer, list[int]]:
    box: list[ScriptedServer] = []

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        if n == after:
            box[0].timestamp += step
        return None

    server = ScriptedServer(handler=handler)
    box.append(server)
    return server, []


async def test_strict_stream_raises_at_a_new_materialization(make_client: Any) -> None:
    server, got = rolling(after=3, step=3600)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=1, consistency="strict"
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError) as caught:
            async for part in client.iter_property("link_pre", range(100)):
                got.extend(part)
    assert caught.value.timestamps == (TIMESTAMP, TIMESTAMP + 3600)
    assert sorted(got) == list(range(20))  # only chunks from the first materialization


async def test_refetch_stream_fetches_an_older_chunk_again(make_client: Any) -> None:
    # A lagging replica: the third request answers from an older materialization.
    box: list[ScriptedServer] = []

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        box[0].timestamp = TIMESTAMP - 3600 if n == 3 else TIMESTAMP
        return None

    server = ScriptedServer(handler=handler)
    box.append(server)
    got: dict[int, Any] = {}
    async with make_client(transport=server, chunk_size=10, max_concurrency=1) as client:
        async for part in client.iter_property("link_pre", range(50)):
            assert part.materialized_timestamp == TIMESTAMP
            got.update(part)
    assert sorted(got) == list(range(50))
    assert all(got[s] == value_for(s) for s in got)
    assert len(server.requests) == 6
    assert client.stats.refetches == 1


async def test_refetch_stream_raises_when_a_newer_materialization_appears(
    make_client: Any,
) -> None:
    server, _ = rolling(after=3, step=3600)
    async with make_client(transport=server, chunk_size=10, max_concurrency=1) as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="yielded already"):
            async for _ in client.iter_property("link_pre", range(100)):
                pass


async def test_ignore_stream_yields_each_chunk_with_its_own_timestamp(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = rolling(after=3, step=3600)
    stamps: list[int | None] = []
    with caplog.at_level(logging.WARNING, logger="braincircuits_async"):
        async with make_client(
            transport=server, chunk_size=10, max_concurrency=1, consistency="ignore"
        ) as client:
            async for part in client.iter_property("link_pre", range(50)):
                stamps.append(part.materialized_timestamp)
                for segment, value in part.items():
                    assert value == value_for(segment, part.materialized_timestamp or 0)
    assert stamps == [TIMESTAMP] * 2 + [TIMESTAMP + 3600] * 3
    assert any("ignore" in r.message for r in caplog.records)


async def test_closing_the_client_stops_a_running_stream_and_the_reader_is_told(
    make_client: Any,
) -> None:
    server = ScriptedServer(latency=0.01)
    client = make_client(transport=server, chunk_size=10)
    async with client:
        stream = client.iter_property("link_pre", range(1000))
        await stream.__anext__()
    sent = len(server.requests)
    await anyio.sleep(0.05)
    assert len(server.requests) == sent
    assert server.in_flight == 0
    # The reader gets an error, not a normal end with part of the data.
    with pytest.raises(bca.BrainCircuitsError, match="client was closed"):
        async for _ in stream:
            pass


async def test_a_slow_reader_bounds_what_is_held_even_while_chunks_are_retried(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        # Every other request fails with a 500: retries, and stand-ins during them.
        return httpx.Response(500) if number % 2 else None

    server = ScriptedServer(handler=handler)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=4, backoff_base=0.02, max_retries=8
    ) as client:
        stream = client.iter_property("link_pre", range(5000))
        await stream.__anext__()
        await anyio.sleep(0.3)  # the reader stalls while retries go on
        answered = len(server.requests) - server.requests_failed
        await stream.aclose()
    # One read, a buffer of 8, and at most 4 workers plus 4 stand-ins waiting to hand
    # their result over: a bound that does not grow with the 500 chunks.
    assert answered <= 1 + 8 + 4 + 4
