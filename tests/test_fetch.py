"""Fetching in chunks: every id ends up in the result or in .missing, in request order."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import CAVE_TOKEN, PROJECT, TIMESTAMP, TOKEN, ScriptedServer, value_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("n", "chunk_size", "requests"),
    [(1, 500, 1), (500, 500, 1), (501, 500, 2), (2000, 500, 4), (1234, 100, 13), (7, 1, 7)],
)
async def test_chunk_boundaries(make_client: Any, n: int, chunk_size: int, requests: int) -> None:
    server = ScriptedServer()
    ids = list(range(10**17, 10**17 + n))
    async with make_client(transport=server, chunk_size=chunk_size) as client:
        result = await client.fetch_property("link_pre", ids)
    assert len(server.requests) == requests
    sent = [s for chunk in server.segments_requested for s in chunk]
    assert sorted(sent) == ids  # each id sent exactly once
    assert all(len(chunk) <= chunk_size for chunk in server.segments_requested)
    assert list(result) == ids
    assert result[ids[-1]] == value_for(ids[-1])
    assert result.materialized_timestamp == TIMESTAMP


async def test_result_is_a_read_only_mapping_with_int_keys_in_request_order(
    make_client: Any,
) -> None:
    server = ScriptedServer(unknown=frozenset({3, 6}))
    ids = [9, 3, 1, 7, 6, 2, 9, 1]
    async with make_client(transport=server, chunk_size=2, max_concurrency=4) as client:
        result = await client.fetch_property("link_pre", ids)
    assert list(result) == [9, 1, 7, 2]
    assert result.missing == (3, 6)
    assert result.property == "link_pre"
    assert result.project == PROJECT
    assert result[7] == value_for(7)
    assert "7" not in result
    with pytest.raises(TypeError):
        result[5] = {}  # type: ignore[index]
    assert "segments=4 missing=2" in repr(result)


async def test_request_carries_project_body_and_both_tokens(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server) as client:
        await client.fetch_property("connectivity", ["720575940634474894"])
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url.path == "/circuit/segment/property/connectivity"
    assert request.url.params["project"] == PROJECT
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["authorization-cave"] == f"Bearer {CAVE_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"segments":[720575940634474894]}'


@pytest.mark.parametrize("max_concurrency", [1, 3, 8])
async def test_concurrency_never_exceeds_the_bound(make_client: Any, max_concurrency: int) -> None:
    server = ScriptedServer(latency=0.005)
    async with make_client(
        transport=server, chunk_size=10, max_concurrency=max_concurrency
    ) as client:
        await client.fetch_property("link_pre", range(400))
    assert len(server.requests) == 40
    assert server.max_in_flight == max_concurrency


async def test_the_bound_holds_across_concurrent_calls_on_one_client(make_client: Any) -> None:
    import anyio

    server = ScriptedServer(latency=0.005)
    async with (
        make_client(transport=server, chunk_size=10, max_concurrency=4) as client,
        anyio.create_task_group() as group,
    ):
        for prop in ("size", "link_pre", "link_post"):
            group.start_soon(client.fetch_property, prop, range(200))
    assert len(server.requests) == 60
    assert server.max_in_flight == 4


async def test_httpx_clients_are_built_once_per_client_not_per_call(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[httpx.AsyncClient] = []
    real_init = httpx.AsyncClient.__init__

    def counting_init(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_init)
    server = ScriptedServer()
    async with make_client(transport=server, chunk_size=1, max_concurrency=16) as client:
        at_start = len(built)
        await client.fetch_property("size", range(20))
        await client.fetch_properties(["size", "link_pre"], range(20))
        async for _ in client.iter_property("size", range(20)):
            pass
    assert at_start == 1  # one httpx client around the caller's transport
    assert len(built) == at_start  # and no call built another
    assert client.stats.requests == 80


async def test_client_project_is_the_default_and_a_call_can_override_it(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server, project="hemibrain") as client:
        first = await client.fetch_property("size", [1])
        second = await client.fetch_property("size", [1], project="fruitfly_fanc_cave")
    assert first.project == "hemibrain"
    assert second.project == "fruitfly_fanc_cave"
    assert [r.url.params["project"] for r in server.requests] == ["hemibrain", "fruitfly_fanc_cave"]


async def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", "env-token")
    monkeypatch.setenv("CAVE_TOKEN", "env-cave")
    monkeypatch.setenv("BRAINCIRCUITS_ENDPOINT", "https://mirror.test/")
    server = ScriptedServer()
    async with bca.AsyncClient(project=PROJECT, transport=server) as client:
        assert client.config.base_url == "https://mirror.test"
        await client.fetch_property("size", [1])
    (request,) = server.requests
    assert str(request.url).startswith("https://mirror.test/circuit/")
    assert request.headers["authorization"] == "Bearer env-token"
    assert request.headers["authorization-cave"] == "Bearer env-cave"


async def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", "env-token")
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", "env-cave-1")
    monkeypatch.setenv("CAVE_TOKEN", "env-cave-2")
    monkeypatch.setenv("BRAINCIRCUITS_URL", "https://first.test")
    monkeypatch.setenv("BRAINCIRCUITS_ENDPOINT", "https://second.test")
    server = ScriptedServer()
    async with bca.AsyncClient(token="arg", project=PROJECT, transport=server) as client:
        assert client.config.base_url == "https://first.test"
        await client.fetch_property("size", [1])
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer arg"
    assert request.headers["authorization-cave"] == "Bearer env-cave-1"


async def test_progress_callback_counts_every_segment_and_the_retries(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        return httpx.Response(503) if number == 2 else None

    seen: list[bca.Progress] = []
    server = ScriptedServer(handler=handler, unknown=frozenset({5}))
    async with make_client(transport=server, chunk_size=10, max_concurrency=1) as client:
        await client.fetch_property("link_pre", range(35), progress=seen.append)
    done = [p.done for p in seen]
    assert len(done) == 4  # once per chunk
    assert done == sorted(done)
    assert done[-1] == 35
    assert all(p.total == 35 and p.property == "link_pre" for p in seen)
    assert seen[-1].retries == 1
    assert seen[-1].failed == 0


async def test_progress_true_draws_a_bar_on_stderr(
    make_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    async with make_client(transport=ScriptedServer(), chunk_size=10) as client:
        await client.fetch_property("link_pre", range(30), progress=True)
    err = capsys.readouterr().err
    assert "link_pre" in err
    assert "100%" in err
    assert "30.0/30.0" in err
