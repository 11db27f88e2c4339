"""The brake: a server that is down gets a bounded number of requests, and the fetch raises.

When every request since the last success failed with a 5xx or got no answer,
a fetch stops after ``max_concurrency x (max_retries + 1)`` of them (the
budget, see ``_policy.brake``) instead of spending every chunk's retries. A
success anywhere resets the count, so 503s among answers never stop a fetch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca

from .conftest import ON_A_FAKE_CLOCK, PROJECT, ScriptedServer, value_for

pytestmark = pytest.mark.anyio

IDS = range(1000)  # 100 chunks of 10
SMALL = {"chunk_size": 10, "max_concurrency": 4, "max_retries": 2}
BUDGET = 4 * (2 + 1)


def down(*, after: int = 0, retry_after: str | None = None) -> Any:
    """A handler: the first ``after`` requests are answered, then 503 for every one."""

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if number <= after:
            return None
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        return httpx.Response(503, headers=headers, json={"detail": "service unavailable"})

    return handler


async def test_a_server_that_answers_503_to_everything_gets_the_budget_and_the_call_raises(
    make_client: Any, sleeps: list[float]
) -> None:
    server = ScriptedServer(handler=down())
    async with make_client(transport=server, backoff_base=0.01, **SMALL) as client:
        with pytest.raises(bca.APIStatusError) as caught:
            await client.fetch_property("link_pre", IDS)
    # Not 100 chunks x 3 tries (300 requests): the chunks left were never sent.
    assert len(server.requests) <= BUDGET
    error = caught.value
    assert error.status_code == 503
    message = str(error)
    assert "the server looks down" in message
    assert f"the last {len(server.requests)} requests all failed" in message
    assert "none succeeded" in message
    assert "Try again later" in message
    assert "service unavailable" in message  # the last error, quoted
    assert error.result is not None
    assert len(error.result) == 0


async def test_a_server_that_does_not_answer_gets_the_budget_and_the_call_raises(
    make_client: Any, sleeps: list[float]
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        raise httpx.ConnectError("connection refused")

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, **SMALL) as client:
        with pytest.raises(bca.APIConnectionError, match="the server looks down") as caught:
            await client.fetch_property("link_pre", IDS)
    assert len(server.requests) <= BUDGET
    assert "ConnectError" in str(caught.value)
    assert caught.value.__cause__ is None  # the httpx error (and its headers) is not chained


async def test_the_brakes_error_carries_what_was_fetched_before(
    make_client: Any, sleeps: list[float]
) -> None:
    server = ScriptedServer(handler=down(after=20))
    async with make_client(transport=server, **SMALL) as client:
        with pytest.raises(bca.APIStatusError, match="looks down") as caught:
            await client.fetch_property("link_pre", IDS)
    assert len(server.requests) <= 20 + BUDGET
    partial = caught.value.result
    assert partial is not None
    assert len(partial) == 20 * 10
    assert list(partial) == sorted(partial)  # in request order
    assert all(partial[s] == value_for(s) for s in partial)
    assert caught.value.results == {"link_pre": partial}


@ON_A_FAKE_CLOCK
async def test_a_503_with_retry_after_100_does_not_hold_the_call_for_hours(
    make_client: Any,
) -> None:
    server = ScriptedServer(handler=down(retry_after="100"))
    async with make_client(transport=server, backoff_max=30.0, **SMALL) as client:
        started = anyio.current_time()
        with pytest.raises(bca.APIStatusError, match="looks down"):
            await client.fetch_property("link_pre", IDS)
        took = anyio.current_time() - started
    # Each chunk waits at most backoff_max before each of its 2 retries: the first chunks
    # spend the budget within that, instead of 100 chunks waiting 200 s each.
    assert took <= 2 * 30.0 + 1
    assert len(server.requests) <= BUDGET


async def test_the_waits_for_a_503s_long_retry_after_are_bounded(
    make_client: Any, sleeps: list[float]
) -> None:
    server = ScriptedServer(handler=down(retry_after="100"))
    async with make_client(transport=server, backoff_max=30.0, **SMALL) as client:
        with pytest.raises(bca.APIStatusError, match="looks down"):
            await client.fetch_property("link_pre", IDS)
    assert max(sleeps) <= 30.0
    # At most one wait per request of the budget (before: 200 waits of 100 s, 20,000 s).
    assert sum(sleeps) <= BUDGET * 30.0


async def test_503s_among_answers_never_stop_the_call(
    make_client: Any, sleeps: list[float]
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if number % 3 == 0:
            return httpx.Response(503, json={"detail": "busy"})
        return None

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server, **SMALL) as client:
        result = await client.fetch_property("link_pre", IDS)
    assert list(result) == list(IDS)
    assert server.requests_failed > BUDGET  # more 503s than the budget, never in a row


async def test_a_success_anywhere_resets_the_brake(make_client: Any, sleeps: list[float]) -> None:
    # Four failures in a row at most, then an answer: the budget of 6 is never spent,
    # though most requests fail and some chunks run out of retries.
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if number % 5:
            return httpx.Response(502, json={"detail": "bad gateway"})
        return None

    server = ScriptedServer(handler=handler)
    settings = {"chunk_size": 10, "max_concurrency": 1, "max_retries": 2}
    async with make_client(transport=server, **settings) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", range(200))
    assert "looks down" not in str(caught.value)
    # Every one of the 20 chunks was tried: the fetch went on to the end.
    firsts = {segments[0] for segments in server.segments_requested}
    assert firsts == set(range(0, 200, 10))


@ON_A_FAKE_CLOCK
async def test_a_server_down_for_two_seconds_does_not_stop_a_large_call(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "random", lambda: 1.0)  # the top of every jitter range
    back_at = anyio.current_time() + 2.0

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if anyio.current_time() < back_at:
            return httpx.Response(503, json={"detail": "restarting"})
        return None

    server = ScriptedServer(handler=handler)
    # The defaults: 8 at once, 5 retries from 0.1 s: each chunk rides out ~3 s.
    async with make_client(transport=server, chunk_size=10, backoff_base=0.1) as client:
        result = await client.fetch_property("link_pre", range(5000))
    assert len(result) == 5000
    assert server.requests_failed > 8  # it was down for every slot, more than once


async def test_the_calls_of_one_fetch_share_the_brake(
    make_client: Any, sleeps: list[float]
) -> None:
    server = ScriptedServer(handler=down())
    async with make_client(transport=server, **SMALL) as client:
        with pytest.raises(bca.APIStatusError, match="looks down") as caught:
            await client.fetch_properties(["link_pre", "size", "nr_pre"], IDS)
    assert len(server.requests) <= BUDGET  # not a budget per property
    assert set(caught.value.results) == {"link_pre", "size", "nr_pre"}


async def test_a_stream_yields_what_was_fetched_then_raises_the_brakes_error(
    make_client: Any, sleeps: list[float]
) -> None:
    server = ScriptedServer(handler=down(after=20))
    yielded = 0
    async with make_client(transport=server, **SMALL) as client:
        with pytest.raises(bca.APIStatusError, match="looks down"):
            async for part in client.iter_property("link_pre", IDS):
                yielded += len(part)
    assert yielded == 20 * 10
    assert len(server.requests) <= 20 + BUDGET


async def test_what_arrived_before_the_brake_is_in_the_store_and_the_rerun_sends_the_rest(
    make_client: Any, sleeps: list[float], tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    server = ScriptedServer(handler=down(after=20))
    async with make_client(transport=server, store=store, **SMALL) as client:
        with pytest.raises(bca.APIStatusError, match="looks down") as caught:
            await client.fetch_property("link_pre", IDS)
    assert caught.value.result is not None
    assert len(caught.value.result) == 200
    with bca.ResultStore(store) as held:
        stored = held.read("link_pre", IDS, project=PROJECT)
    assert len(stored) == 200

    back = ScriptedServer()
    async with make_client(transport=back, store=store, **SMALL) as client:
        result = await client.fetch_property("link_pre", IDS)
    assert list(result) == list(IDS)
    assert sum(len(c) for c in back.segments_requested) == len(IDS) - 200
