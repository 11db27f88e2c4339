"""An interrupted fetch ends with one line saying what was fetched (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async._interrupts import interrupted_note

from .conftest import ScriptedServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("what", "fetched", "total", "store", "expected"),
    [
        ("fetch_property('size')", 0, 10, None,
         "fetch_property('size') interrupted: 0 of 10 segments fetched (and dropped: pass "
         "store= to keep them across an interrupt)"),
        ("fetch_property('size')", 1500, 20000, "/tmp/s.sqlite",
         "fetch_property('size') interrupted: 1,500 of 20,000 segments fetched; "
         "/tmp/s.sqlite keeps them, so the same call fetches only the rest"),
    ],
)  # fmt: skip
def test_the_interrupt_note(
    what: str, fetched: int, total: int, store: str | None, expected: str
) -> None:
    assert interrupted_note(what, fetched, total, store) == expected


def slow_server() -> ScriptedServer:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if number >= 4:
            await anyio.sleep(10)  # cancelled long before
        return None  # the scripted server's normal answer

    return ScriptedServer(handler=handler)


async def test_an_outer_cancel_scope_still_swallows_its_cancellation(make_client: Any) -> None:
    async with make_client(transport=slow_server(), chunk_size=10) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.fetch_property("link_pre", range(1, 201))
    assert scope.cancelled_caught


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_task_says_what_was_fetched_and_stays_cancelled(
    make_client: Any, tmp_path: Path
) -> None:
    store = tmp_path / "kept.sqlite"
    async with make_client(transport=slow_server(), chunk_size=10, store=store) as client:
        task = asyncio.ensure_future(client.fetch_property("link_pre", range(1, 201)))
        await asyncio.sleep(0.2)
        task.cancel()  # what a notebook's interrupt button does to the cell's task
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
    assert task.cancelled()
    with bca.ResultStore(store) as held:
        kept = len(held.read("link_pre", range(1, 201), project="fruitfly_fafb_flywire"))
    assert kept == 30  # the three answers before the server stalled
    assert str(caught.value) == (
        f"fetch_property('link_pre') interrupted: {kept} of 200 segments fetched; "
        f"{store} keeps them, so the same call fetches only the rest"
    )
    assert caught.value.__suppress_context__


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_timeout_still_turns_the_cancellation_into_timeout_error(
    make_client: Any,
) -> None:
    async with make_client(transport=slow_server(), chunk_size=10) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # type: ignore[attr-defined]
                await client.fetch_property("link_pre", range(1, 201))
