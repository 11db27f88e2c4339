"""fetch_properties: several properties at once, one concurrency bound, one materialization."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import ON_A_FAKE_CLOCK, TIMESTAMP, ScriptedServer, requested, value_for

pytestmark = pytest.mark.anyio

PROPS = ["size", "link_pre", "link_post"]


def link_post_from_a_newer_materialization() -> ScriptedServer:
    """A server whose link_post answers always come from a newer materialization."""
    box: list[ScriptedServer] = []

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        prop = request.url.path.rsplit("/", 1)[1]
        box[0].timestamp = TIMESTAMP + 3600 if prop == "link_post" else TIMESTAMP
        return None

    box.append(ScriptedServer(handler=handler))
    return box[0]


async def test_every_property_comes_back_complete_and_in_order(make_client: Any) -> None:
    server = ScriptedServer(unknown=frozenset({4}))
    async with make_client(transport=server, chunk_size=10) as client:
        results = await client.fetch_properties(PROPS, range(50))
    assert list(results) == PROPS
    for prop, result in results.items():
        assert result.property == prop
        assert list(result) == [i for i in range(50) if i != 4]
        assert result.missing == (4,)
        assert result.materialized_timestamp == TIMESTAMP
    paths = {r.url.path.rsplit("/", 1)[1] for r in server.requests}
    assert paths == set(PROPS)
    assert len(server.requests) == 15


async def test_all_properties_share_one_concurrency_bound(make_client: Any) -> None:
    server = ScriptedServer(latency=0.005)
    async with make_client(transport=server, chunk_size=10, max_concurrency=3) as client:
        await client.fetch_properties(PROPS, range(100))
    assert server.max_in_flight == 3
    assert len(server.requests) == 30


async def test_a_property_behind_the_others_is_fetched_again(make_client: Any) -> None:
    # The answers for "size" come from an older materialization than the rest once.
    box: list[ScriptedServer] = []
    seen: set[str] = set()

    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        prop = request.url.path.rsplit("/", 1)[1]
        stale = prop == "size" and prop not in seen
        seen.add(prop)
        box[0].timestamp = TIMESTAMP - 3600 if stale else TIMESTAMP
        return None

    server = ScriptedServer(handler=handler)
    box.append(server)
    async with make_client(transport=server, chunk_size=100, max_concurrency=1) as client:
        results = await client.fetch_properties(PROPS, range(50))
    assert {r.materialized_timestamp for r in results.values()} == {TIMESTAMP}
    assert results["size"][3] == value_for(3)
    assert client.stats.refetches == 1


async def test_strict_mode_raises_when_properties_disagree(make_client: Any) -> None:
    server = link_post_from_a_newer_materialization()
    async with make_client(
        transport=server, chunk_size=100, max_concurrency=1, consistency="strict"
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError):
            await client.fetch_properties(PROPS, range(50))


async def test_strict_disagreement_keeps_every_propertys_result(make_client: Any) -> None:
    server = link_post_from_a_newer_materialization()
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=1, consistency="strict"
    ) as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="strict") as caught:
            await client.fetch_properties(PROPS, range(50))
    error = caught.value
    assert error.timestamps == (TIMESTAMP, TIMESTAMP + 3600)
    assert set(error.results) == set(PROPS)
    # Whatever each property had fetched when the disagreement stopped the call is kept.
    fetched = {p: r for p, r in error.results.items() if len(r)}
    assert "link_post" in fetched
    for prop, result in fetched.items():
        stamp = TIMESTAMP + 3600 if prop == "link_post" else TIMESTAMP
        assert all(result[s] == value_for(s, stamp) for s in result)
    assert error.result is error.results[error.result.property]


async def test_refetch_disagreement_keeps_every_propertys_result(make_client: Any) -> None:
    server = link_post_from_a_newer_materialization()
    async with make_client(transport=server, chunk_size=10, max_refetch_rounds=2) as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="re-fetch") as caught:
            await client.fetch_properties(PROPS, range(30))
    error = caught.value
    assert {p: len(r) for p, r in error.results.items()} == dict.fromkeys(PROPS, 30)
    assert error.results["link_post"].materialized_timestamp == TIMESTAMP + 3600
    assert error.results["size"].materialized_timestamp == TIMESTAMP
    assert error.result.property in ("size", "link_pre")  # a property that lags


@ON_A_FAKE_CLOCK  # 429s on everything: the gate spaces the starts out by seconds
async def test_when_every_chunk_of_every_property_fails_the_error_is_the_same_as_for_one(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        return httpx.Response(429, json={"detail": "quota exceeded"})

    async with make_client(
        transport=ScriptedServer(handler=handler), chunk_size=10, max_retries=1
    ) as client:
        with pytest.raises(bca.RateLimitError, match="quota exceeded") as one:
            await client.fetch_property("size", range(30))
        with pytest.raises(bca.RateLimitError, match="quota exceeded") as several:
            await client.fetch_properties(PROPS, range(30))
    assert type(one.value) is type(several.value)
    assert not isinstance(several.value, bca.IncompleteResultError)


async def test_a_failing_property_keeps_the_others(make_client: Any) -> None:
    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.url.path.endswith("/link_post") and 7 in requested(request):
            return httpx.Response(503)
        return None

    async with make_client(
        transport=ScriptedServer(handler=handler), chunk_size=10, max_retries=1
    ) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_properties(PROPS, range(30))
    error = caught.value
    assert sorted(error.failures) == list(range(10))
    assert all(reason.startswith("link_post: ") for reason in error.failures.values())
    assert len(error.results["size"]) == 30
    assert len(error.results["link_pre"]) == 30
    assert list(error.results["link_post"]) == list(range(10, 30))
    assert error.result is error.results["link_post"]


async def test_a_permanent_error_stops_every_property(make_client: Any) -> None:
    async def handler(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.url.path.endswith("/link_pre"):
            return httpx.Response(404, json={"detail": "unknown property"})
        return None

    server = ScriptedServer(handler=handler, latency=0.001)
    async with make_client(transport=server, chunk_size=1, max_concurrency=2) as client:
        with pytest.raises(bca.APIStatusError, match="unknown property"):
            await client.fetch_properties(PROPS, range(200))
    assert len(server.requests) < 100


@pytest.mark.parametrize("bad", ["size", [], ["size", "bad name"]])
async def test_bad_property_lists_are_refused(make_client: Any, bad: Any) -> None:
    async with make_client(transport=ScriptedServer()) as client:
        with pytest.raises((TypeError, ValueError)):
            await client.fetch_properties(bad, [1])


async def test_progress_counts_every_property(make_client: Any) -> None:
    seen: list[bca.Progress] = []
    async with make_client(transport=ScriptedServer(), chunk_size=10) as client:
        await client.fetch_properties(PROPS, range(40), progress=seen.append)
    assert seen[-1].done == seen[-1].total == 120
