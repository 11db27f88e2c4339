"""Shared fixtures: the async backend, fake tokens, and a scripted in-memory server."""

from __future__ import annotations

import itertools
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async import _retry, testing

TOKEN = "bc-SECRET-token-7f3a9e"
CAVE_TOKEN = "cave-SECRET-token-41d2c8"
PROJECT = "fruitfly_fafb_flywire"
BASE_URL = "https://api.test"
TIMESTAMP = 1677042002


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """One async test mode for the suite: anyio's plugin, on asyncio and on trio.

    ``"trio-fake-clock"`` (see :data:`ON_A_FAKE_CLOCK`) runs on trio with a clock
    that jumps ahead whenever every task waits: sleeps take no real time, and
    every time the client measures is exact, so a test can assert on it.
    """
    backend: str = request.param
    if backend == "trio-fake-clock":
        from trio.testing import MockClock

        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return backend


#: A network test on every HTTP stack: httpx's own (httpcore) on asyncio and on trio, and
#: aiohttp under httpx on asyncio (aiohttp runs on nothing else). The test takes an
#: ``http_backend`` argument and passes it to the client.
ON_EVERY_HTTP_BACKEND = pytest.mark.parametrize(
    ("anyio_backend", "http_backend"),
    [("asyncio", "httpx"), ("asyncio", "aiohttp"), ("trio", "httpx")],
    indirect=["anyio_backend"],
)


def connections_open(client: bca.AsyncClient) -> int:
    """Connections a client's pools hold, on either HTTP stack."""
    total = 0
    session = client._wire.pools.session
    if session is not None:  # the aiohttp backend: its session's connector
        return 0 if session.closed else sum(map(len, session.connector._conns.values()))
    for http in client._wire.pools.clients:
        transport: Any = http._transport
        session = getattr(transport, "client", None)
        if session is not None:  # aiohttp: its session's connector
            total += 0 if session.closed else sum(map(len, session.connector._conns.values()))
        elif hasattr(transport, "_pool"):
            total += len(transport._pool.connections)
    return total


#: Run a test on trio with a fake clock instead of on asyncio and trio.
ON_A_FAKE_CLOCK = pytest.mark.parametrize("anyio_backend", ["trio-fake-clock"], indirect=True)


@pytest.fixture(scope="session")
def _homes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Iterator[int]]:
    return tmp_path_factory.mktemp("homes"), itertools.count()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, _homes: tuple[Path, Iterator[int]]) -> None:
    """Tests never see the developer's own tokens, CAVE secret files or endpoint."""
    # A fresh, empty home per test, numbered here: `tmp_path_factory.mktemp` scans its
    # whole folder for the next number, which over ~1,900 tests cost seconds.
    folder, numbers = _homes
    home = folder / str(next(numbers))
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "BRAINCIRCUITS_TOKEN",
        "BRAINCIRCUITS_CAVE_TOKEN",
        "CAVE_TOKEN",
        "BRAINCIRCUITS_URL",
        "BRAINCIRCUITS_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock for retry waits: records each wait instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(_retry, "sleep", fake_sleep)
    return recorded


def value_for(segment: int, timestamp: int = TIMESTAMP) -> dict[str, int]:
    """The value the scripted server gives ``segment`` at ``timestamp``."""
    return {"nr_pre": (segment * 7 + timestamp) % 5000, "nr_downstream_partner": segment % 997}


def answer(
    segments: list[int], timestamp: int = TIMESTAMP, unknown: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """A documented-shape answer for ``segments``, leaving out ``unknown`` ids."""
    return {
        "materialized_timestamp": timestamp,
        "results": {str(s): value_for(s, timestamp) for s in segments if s not in unknown},
    }


def requested(request: httpx.Request) -> list[int]:
    segments: list[int] = json.loads(request.content)["segments"]
    return segments


def too_large_above(limit: int) -> Any:
    """A :class:`ScriptedServer` handler: 413 for a request of more than ``limit`` segments."""

    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        if len(requested(request)) > limit:
            return httpx.Response(413, json={"detail": f"at most {limit} segments"})
        return None

    return handler


Handler = Callable[[httpx.Request, int], Awaitable[httpx.Response | None]]


class ScriptedServer(httpx.AsyncBaseTransport):
    """An in-memory server that answers from the request body.

    It counts requests and the most requests in flight at once; ``handler``
    (given the request and its 1-based number) may return a response to
    override the normal answer, e.g. an error for some requests.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        timestamp: int = TIMESTAMP,
        unknown: frozenset[int] = frozenset(),
        handler: Handler | None = None,
    ) -> None:
        self.latency = latency
        self.timestamp = timestamp
        self.unknown = unknown
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0
        self.requests_failed = 0  # answered by the handler with an error status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        number = len(self.requests)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await anyio.sleep(self.latency)
            if self.handler is not None:
                override = await self.handler(request, number)
                if override is not None:
                    if override.status_code >= 400:
                        self.requests_failed += 1
                    return override
            return httpx.Response(
                200, json=answer(requested(request), self.timestamp, self.unknown)
            )
        finally:
            self.in_flight -= 1
            self.completed += 1

    @property
    def segments_requested(self) -> list[list[int]]:
        return [requested(r) for r in self.requests]


@pytest.fixture
def make_client() -> Callable[..., bca.AsyncClient]:
    """Build clients with test tokens; tests close them with ``async with``."""

    def build(**kwargs: Any) -> bca.AsyncClient:
        settings: dict[str, Any] = {
            "token": TOKEN,
            "cave_token": CAVE_TOKEN,
            "project": PROJECT,
            "base_url": BASE_URL,
            "backoff_base": 0.0,
        }
        settings.update(kwargs)
        return bca.AsyncClient(**settings)

    return build


class _Routed:
    """The app of the session's loopback server: hands each request to the current test's app.

    The end of each answer is sent once the app has returned, so that what the app
    does after its last send (the fake logs the request then; a wrapper may roll the
    materialization over) is done before the client can act on the answer: a test
    that resets or reads the fake's log after a fetch sees every request of it.
    """

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.app  # taken once: an answer still running when its test ends stays with it
        if app is None:
            raise RuntimeError("a request reached the shared loopback server between tests")
        held: list[Any] = []

        async def send_all_but_the_end(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                held.append(message)
            else:
                await send(message)

        await app(scope, receive, send_all_but_the_end)
        for message in held:
            await send(message)


@pytest.fixture(scope="session")
def _loopback_server() -> Iterator[tuple[_Routed, str]]:
    routed = _Routed()
    with testing.serve_in_thread(routed) as url:
        yield routed, url


ServeOnLoopback = Callable[[Any], str]


@pytest.fixture(scope="module")
def fake() -> testing.FakeBrainCircuits:
    """A fake server, one per test module (a module's own ``fake`` fixture overrides it)."""
    return testing.FakeBrainCircuits()


@pytest.fixture
def fake_url(fake: testing.FakeBrainCircuits, serve_on_loopback: ServeOnLoopback) -> str:
    """The URL of the module's :func:`fake`, on the session's loopback server."""
    return serve_on_loopback(fake)


@pytest.fixture
def serve_on_loopback(_loopback_server: tuple[_Routed, str]) -> Iterator[ServeOnLoopback]:
    """Serve an ASGI app on a real loopback port for this test: ``url = serve_on_loopback(app)``.

    One uvicorn server (127.0.0.1, in a thread, as :func:`testing.serve_in_thread`
    runs it) serves the whole session, and each test hands it its own app, so tests
    share the socket and nothing else. A server per test cost ~0.2 s to stop: uvicorn
    looks at its exit flag every 0.1 s and then waits 0.1 s for its connections.
    Tests of starting and stopping a server use ``serve_in_thread`` itself.
    """
    routed, url = _loopback_server

    def serve(app: Any) -> str:
        routed.app = app
        # What uvicorn logs goes to this test's stderr, as with a server of its own
        # (uvicorn's logging config takes the sys.stderr of the moment it starts).
        # Not setStream: it flushes the old stream, which may be a closed capsys one.
        # Only uvicorn's own handler: pytest's capturing ones are StreamHandlers too.
        for handler in logging.getLogger("uvicorn").handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr
        return url

    try:
        yield serve
    finally:
        routed.app = None
