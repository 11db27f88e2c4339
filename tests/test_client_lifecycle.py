"""A client that lives across notebook cells: opened, used and closed by different tasks."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import braincircuits_async as bca

from .conftest import ScriptedServer

pytestmark = pytest.mark.anyio


async def in_a_cell(job: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``job`` in a task of its own, as a notebook runs each cell."""
    box: list[Any] = []

    async def run() -> None:
        box.append(await job())

    async with anyio.create_task_group() as group:
        group.start_soon(run)
    return box[0]


async def test_a_client_opened_in_one_cell_is_used_and_closed_in_others(make_client: Any) -> None:
    client = make_client(transport=ScriptedServer(), chunk_size=10)
    await in_a_cell(client.__aenter__)
    result = await in_a_cell(lambda: client.fetch_property("link_pre", range(1, 51)))
    assert len(result) == 50

    async def first_two() -> list[Any]:
        stream = client.iter_property("link_pre", range(1, 1001))
        return [await stream.__anext__(), await stream.__anext__(), stream]

    *parts, stream = await in_a_cell(first_two)
    assert len(parts) == 2
    assert len(client._tasks) == 1  # the stream's producer, still running
    await in_a_cell(client.aclose)  # a third task: before, "exit cancel scope in a different task"
    assert len(client._tasks) == 0
    with pytest.raises(bca.BrainCircuitsError, match="closed while this stream"):
        async for _ in stream:
            pass


async def test_a_client_used_without_async_with_needs_only_aclose(make_client: Any) -> None:
    client = make_client(transport=ScriptedServer(), chunk_size=10)
    assert len(await client.fetch_property("link_pre", range(1, 31))) == 30
    assert sum([len(p) async for p in client.iter_property("link_pre", range(1, 31))]) == 30
    await client.aclose()
    assert client._http.is_closed
    with pytest.raises(bca.ClientClosedError):
        await client.fetch_property("link_pre", [1])


async def test_an_unclosed_client_warns_once_when_collected(make_client: Any) -> None:
    client = make_client(transport=ScriptedServer())
    await client.fetch_property("link_pre", [1])
    warned = pytest.warns(ResourceWarning, match=r"unclosed <AsyncClient.*aclose\(\)")
    with warned as caught:  # from `del` (or from a collection, were there a cycle)
        del client
        gc.collect()
    assert len([w for w in caught if issubclass(w.category, ResourceWarning)]) == 1


async def test_a_client_never_used_or_closed_properly_does_not_warn(make_client: Any) -> None:
    make_client(transport=ScriptedServer())  # never used: nothing to close
    async with make_client(transport=ScriptedServer()) as client:
        await client.fetch_property("link_pre", [1])
    del client
    gc.collect()  # filterwarnings = error: a warning here fails the test
