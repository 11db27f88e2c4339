"""A client belongs to the event loop that first used it (issue 12, item 8)."""

from __future__ import annotations

import asyncio

import anyio
import anyio.to_thread
import pytest

import braincircuits_async as bca
from braincircuits_async import testing

from .conftest import PROJECT, ServeOnLoopback, connections_open

IDS = [720575940600000000 + i for i in range(40)]


def client_for(url: str) -> bca.AsyncClient:
    return bca.AsyncClient(
        token=testing.DEFAULT_TOKEN,
        cave_token=testing.DEFAULT_CAVE_TOKEN,
        base_url=url,
        project=PROJECT,
        chunk_size=10,
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_second_event_loop_gets_a_clear_error_and_the_first_still_closes(
    backend: str, serve_on_loopback: ServeOnLoopback
) -> None:
    refused: list[BaseException] = []

    def from_another_loop(client: bca.AsyncClient) -> None:
        async def use() -> None:
            for _attempt in range(2):  # the first use and every later one
                try:
                    await client.fetch_property("link_pre", IDS)
                except bca.UsageError as error:
                    refused.append(error)
            try:
                async for _ in client.iter_property("link_pre", IDS):
                    pass
            except bca.UsageError as error:
                refused.append(error)
            try:
                await client.aclose()
            except bca.UsageError as error:
                refused.append(error)

        anyio.run(use, backend=backend)  # a loop of its own, in a worker thread

    async def main(url: str) -> None:
        async with client_for(url) as client:
            assert len(await client.fetch_property("link_pre", IDS)) > 0
            assert connections_open(client) > 0
            await anyio.to_thread.run_sync(from_another_loop, client)
            # Still usable where it belongs, and nothing was opened elsewhere.
            assert len(await client.fetch_property("link_pre", IDS)) > 0
        assert connections_open(client) == 0

    anyio.run(main, serve_on_loopback(testing.FakeBrainCircuits()), backend=backend)
    assert len(refused) == 4
    for error in refused:
        assert isinstance(error, bca.BrainCircuitsError)
        assert "another event loop" in str(error)


def test_a_second_asyncio_run_with_one_client_is_refused_clearly(
    serve_on_loopback: ServeOnLoopback,
) -> None:
    client = client_for(serve_on_loopback(testing.FakeBrainCircuits()))
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(client.fetch_property("link_pre", IDS))
        with pytest.raises(bca.UsageError, match=r"asyncio\.run"):
            asyncio.run(client.fetch_property("link_pre", IDS))
        first.run_until_complete(client.aclose())
        assert connections_open(client) == 0
    finally:
        first.close()
