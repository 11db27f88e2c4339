"""Permanent errors stop a call at once; cancelling a call cancels its requests."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca

from .conftest import ScriptedServer

pytestmark = pytest.mark.anyio


class SlowServer(ScriptedServer):
    """Answers request ``fail_at`` with ``status`` at once; every other request hangs."""

    def __init__(self, fail_at: int | None = None, status: int = 401) -> None:
        super().__init__(handler=self._handle)
        self.fail_at = fail_at
        self.status = status
        self.cancelled = 0
        self.started = anyio.Event()

    async def _handle(self, request: httpx.Request, number: int) -> httpx.Response | None:
        if number == self.fail_at:
            await anyio.sleep(0.01)  # let the other requests get in flight first
            return httpx.Response(self.status, json={"detail": "Invalid token"})
        if len(self.requests) >= 4:
            self.started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, bca.AuthenticationError),
        (403, bca.AuthenticationError),
        (404, bca.APIStatusError),
        (422, bca.APIStatusError),
    ],
)
async def test_a_permanent_error_on_one_chunk_stops_the_whole_call(
    make_client: Any, status: int, error: type[bca.APIStatusError]
) -> None:
    server = SlowServer(fail_at=1, status=status)
    async with make_client(transport=server, chunk_size=10, max_concurrency=4) as client:
        with anyio.fail_after(5), pytest.raises(error) as caught:
            await client.fetch_property("link_pre", range(200))
    assert caught.value.status_code == status
    assert len(server.requests) == 4  # the other 16 chunks were never sent
    assert server.cancelled == 3  # the requests in flight were cancelled
    assert client.stats.retries == 0


async def test_401_says_which_token_was_refused_and_where_to_get_one(make_client: Any) -> None:
    server = SlowServer(fail_at=1, status=401)
    async with make_client(transport=server, max_concurrency=1) as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_property("link_pre", [1])
    message = str(caught.value)
    assert "BrainCircuits token (token=)" in message
    assert "Profile widget" in message
    assert "Invalid token" in message  # the server's own detail


async def test_403_naming_cave_blames_the_cave_token(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        return httpx.Response(403, json={"detail": "CAVE token expired"})

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server) as client:
        with pytest.raises(bca.AuthenticationError, match=r"the CAVE token \(cave_token=\)"):
            await client.fetch_property("link_pre", [1])


async def test_cancelling_the_call_cancels_every_request_and_the_client_stays_usable(
    make_client: Any,
) -> None:
    server = SlowServer()
    async with make_client(transport=server, chunk_size=10, max_concurrency=4) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(client.fetch_property, "link_pre", range(200))
                await server.started.wait()
                group.cancel_scope.cancel()
        assert len(server.requests) == 4
        assert server.cancelled == 4
        await anyio.sleep(0.05)
        assert len(server.requests) == 4  # nothing sent after the cancellation

        server.handler = None  # the server recovers; the same client still works
        result = await client.fetch_property("link_pre", range(20))
    assert list(result) == list(range(20))


async def test_a_timeout_around_the_call_cancels_it(make_client: Any) -> None:
    server = SlowServer()
    async with make_client(transport=server, chunk_size=10, max_concurrency=2) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.fetch_property("link_pre", range(100))
    assert scope.cancelled_caught
    assert server.cancelled == 2
    assert len(server.requests) == 2
