"""Materialization consistency: no call silently returns data from two materializations."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import TIMESTAMP, ScriptedServer, value_for

pytestmark = pytest.mark.anyio

NEW = TIMESTAMP + 3600


def rollover_before_request(server_box: list[ScriptedServer], number: int, step: int = 3600) -> Any:
    """A handler that advances the server's materialization just before request ``number``."""

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        if n == number:
            server_box[0].timestamp += step
        return None

    return handler


def rolling_server(rollover_at: int) -> ScriptedServer:
    box: list[ScriptedServer] = []
    server = ScriptedServer(handler=rollover_before_request(box, rollover_at))
    box.append(server)
    return server


async def test_refetch_refetches_stale_chunks_after_a_rollover_mid_run(make_client: Any) -> None:
    server = rolling_server(rollover_at=3)
    async with make_client(transport=server, chunk_size=10, max_concurrency=1) as client:
        result = await client.fetch_property("link_pre", range(50))
    assert result.materialized_timestamp == NEW
    assert all(result[s] == value_for(s, NEW) for s in range(50))
    # Five chunks, of which the two answered before the rollover were fetched again.
    assert len(server.requests) == 7
    assert server.segments_requested[5:] == [list(range(10)), list(range(10, 20))]
    assert client.stats.refetches == 2


async def test_refetch_gives_up_with_an_error_that_keeps_everything(make_client: Any) -> None:
    box: list[ScriptedServer] = []

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        box[0].timestamp += 1  # a new materialization for every request
        return None

    server = ScriptedServer(handler=handler)
    box.append(server)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=1, max_refetch_rounds=2
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError) as caught:
            await client.fetch_property("link_pre", range(30))
    error = caught.value
    assert len(error.timestamps) > 1
    assert list(error.timestamps) == sorted(error.timestamps)
    assert list(error.result) == list(range(30))  # nothing fetched is thrown away
    for segment, timestamp in error.segment_timestamps.items():
        assert error.result[segment] == value_for(segment, timestamp)
    assert len(server.requests) == 3 + 2 + 2  # first pass, then two rounds of the stale ones


async def test_strict_raises_at_once_on_disagreement(make_client: Any) -> None:
    server = rolling_server(rollover_at=3)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=1, consistency="strict"
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="strict") as caught:
            await client.fetch_property("link_pre", range(50))
    assert caught.value.timestamps == (TIMESTAMP, NEW)
    assert len(server.requests) == 3  # nothing sent after the disagreement
    assert list(caught.value.result) == list(range(30))


async def test_strict_passes_when_every_chunk_agrees(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server, chunk_size=10, consistency="strict") as client:
        result = await client.fetch_property("link_pre", range(50))
    assert result.materialized_timestamp == TIMESTAMP
    assert len(server.requests) == 5


async def test_ignore_keeps_the_newest_timestamp_and_warns(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = rolling_server(rollover_at=3)
    with caplog.at_level(logging.WARNING, logger="braincircuits_async"):
        async with make_client(
            transport=server, chunk_size=10, max_concurrency=1, consistency="ignore"
        ) as client:
            result = await client.fetch_property("link_pre", range(50))
    assert len(server.requests) == 5  # no re-fetch
    assert result.materialized_timestamp == NEW
    assert result[0] == value_for(0, TIMESTAMP)
    assert result[49] == value_for(49, NEW)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(TIMESTAMP) in warning.message
    assert str(NEW) in warning.message


async def test_inconsistency_with_a_failed_chunk_still_accounts_for_every_id(
    make_client: Any,
) -> None:
    box: list[ScriptedServer] = []

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        segments = json.loads(request.content)["segments"]
        if 45 in segments:
            return httpx.Response(503, json={"detail": "shard down"})
        box[0].timestamp += 1  # every answer from a new materialization
        return None

    server = ScriptedServer(handler=handler)
    box.append(server)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=1, max_retries=1, max_refetch_rounds=1
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError) as caught:
            await client.fetch_property("link_pre", range(50))
    error = caught.value
    assert sorted(error.failures) == list(range(40, 50))
    assert sorted(error.result) == list(range(40))
    assert "max_refetch_rounds" in str(error)  # advice that fits refetch mode
