"""The blocking calls work everywhere, and Ctrl-C stops them cleanly (issue 13, item 1)."""

from __future__ import annotations

import _thread
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async import testing

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = [720575940600000000 + 7 * i for i in range(2000)]


@pytest.fixture
def fake() -> testing.FakeBrainCircuits:
    return testing.FakeBrainCircuits(latency=0.02)


@pytest.fixture
def url(fake: testing.FakeBrainCircuits, serve_on_loopback: ServeOnLoopback) -> str:
    return serve_on_loopback(fake)


def options(url: str, **more: Any) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "token": testing.DEFAULT_TOKEN,
        "cave_token": testing.DEFAULT_CAVE_TOKEN,
        "base_url": url,
        "chunk_size": 20,
        "max_concurrency": 2,
        **more,
    }


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_blocking_calls_work_inside_a_running_event_loop(
    backend: str, url: str, fake: testing.FakeBrainCircuits
) -> None:
    async def main() -> None:  # a notebook's cell, or other async code
        one = bca.fetch_property("link_pre", IDS[:50], **options(url))
        both = bca.fetch_properties(["size", "link_pre"], IDS[:50], **options(url))
        assert dict(one) == dict(both["link_pre"])
        assert both["size"].materialized_timestamp == one.materialized_timestamp
        assert one[IDS[0]] == fake.expected("link_pre", IDS[0])

    anyio.run(main, backend=backend)


def test_errors_of_the_blocking_call_are_the_clients_own(url: str) -> None:
    with pytest.raises(bca.AuthenticationError):
        bca.fetch_property("link_pre", IDS[:5], **options(url, token="wrong"))


def interrupt_after(fake: testing.FakeBrainCircuits, requests: int) -> threading.Thread:
    """Press Ctrl-C (a kernel interrupt) once the server has had ``requests`` requests."""

    def press() -> None:
        while fake.log.requests < requests:
            time.sleep(0.005)
        _thread.interrupt_main()

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_stops_the_blocking_fetch_at_once_and_says_what_was_fetched(
    url: str, fake: testing.FakeBrainCircuits
) -> None:
    interrupt_after(fake, 10)
    with pytest.raises(KeyboardInterrupt) as caught:
        bca.fetch_property("link_pre", IDS, **options(url))
    sent = fake.log.requests
    message = str(caught.value)
    assert message.startswith("fetch_property interrupted: ")
    assert "of 2,000 segments fetched" in message
    assert "pass store=" in message
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    time.sleep(0.1)  # five latencies: a request still being sent would have arrived
    assert fake.log.requests == sent  # nothing after the interrupt
    assert sent < 20  # of 100 chunks


def test_after_ctrl_c_a_store_keeps_what_was_fetched_and_the_rerun_fetches_the_rest(
    url: str, fake: testing.FakeBrainCircuits, tmp_path: Path
) -> None:
    store = tmp_path / "cells.sqlite"
    ids = IDS[:1000]  # 50 chunks: the rerun waits for what the first run left
    interrupt_after(fake, 10)
    with pytest.raises(KeyboardInterrupt, match=r"cells\.sqlite keeps them") as caught:
        bca.fetch_property("link_pre", ids, **options(url, store=store))
    fetched = int(str(caught.value).split(": ")[1].split(" of ")[0].replace(",", ""))
    assert fetched > 0
    with bca.ResultStore(store) as held:
        assert len(held.read("link_pre", ids, project=PROJECT).not_stored) == 1000 - fetched
    before = fake.log.requests
    result = bca.fetch_property("link_pre", ids, **options(url, store=store))
    assert len(result) + len(result.missing) == 1000
    assert fake.log.requests - before < 50  # only the rest, not all 50 chunks
