"""Hostile servers and environments at the HTTP layer (issue 12).

Proxies in the environment, servers that trickle their answers, and servers that
echo a token into what a traceback or a log line shows: each against a real
socket on loopback, or an ``httpx.MockTransport``-like scripted server.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async import _cli, testing
from braincircuits_async._transport import HideResponseHeaders

from .conftest import (
    CAVE_TOKEN,
    ON_EVERY_HTTP_BACKEND,
    PROJECT,
    TOKEN,
    ScriptedServer,
    ServeOnLoopback,
)

pytestmark = pytest.mark.anyio

# Tokens with the characters JSON encoders and excerpts treat specially.
AWKWARD = "bc/SECRET+tok=en-0123456789abcdef/0123456789abcdef+xyz="
#: A project that is not managed by CAVE: one token is enough.
OPEN = "hemibrain"
AWKWARD_CAVE = "cave-/+=tok/0123456789+abcdef=-ghijklmnop"


def assert_no_piece(text: str) -> None:
    for secret in (AWKWARD, AWKWARD_CAVE, TOKEN, CAVE_TOKEN):
        for start in range(len(secret) - 5):
            assert secret[start : start + 6] not in text, secret[start : start + 6]


def everything_a_traceback_shows(error: BaseException) -> str:
    """The traceback with every frame's locals (IPython verbose, rich, Sentry), chained."""
    shown = "".join(
        traceback.TracebackException.from_exception(error, capture_locals=True).format()
    )
    seen = error
    while (seen := seen.__cause__ or seen.__context__) is not None:  # type: ignore[assignment]
        shown += "".join(
            traceback.TracebackException.from_exception(seen, capture_locals=True).format()
        )
    return shown + repr(error) + repr(vars(error))


# --- a raw socket server on loopback ----------------------------------------------------


@contextmanager
def raw_server(handle: Callable[[socket.socket, bytes], None]) -> Iterator[tuple[str, list[bytes]]]:
    """Serve ``handle(connection, first_bytes)`` per connection; yield (url, what each sent)."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    seen: list[bytes] = []
    stop = threading.Event()

    def one(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                first = connection.recv(65536)
                seen.append(first)
                handle(connection, first)
            except OSError:
                pass  # the client went away: what a trickling server expects

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():  # the connection that wakes us up to stop
                connection.close()
                return
            threading.Thread(target=one, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{address[1]}", seen
    finally:
        stop.set()
        socket.create_connection(address).close()  # wake accept() at once, not by polling
        thread.join()
        listener.close()


def trickle(data: bytes, *, every: float = 0.02) -> Callable[[socket.socket, bytes], None]:
    def handle(connection: socket.socket, first: bytes) -> None:
        for i in range(len(data)):
            connection.sendall(data[i : i + 1])
            time.sleep(every)

    return handle


def answer_502(connection: socket.socket, first: bytes) -> None:
    connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")


GOOD_BODY = b'{"materialized_timestamp":1,"results":{"1":{"nr_pre":1}}}'
SLOW_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: a\r\n" * 400
SLOW_BODY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    + b" " * 100000
)


# --- one request's total time -----------------------------------------------------------


@ON_EVERY_HTTP_BACKEND
@pytest.mark.parametrize("answer", [SLOW_HEADERS, SLOW_BODY], ids=["headers", "body"])
@pytest.mark.usefixtures("sleeps")  # the wait before the retry takes no time
async def test_a_server_that_trickles_its_answer_hits_request_timeout(
    answer: bytes, http_backend: str
) -> None:
    # Every byte comes well within `timeout`, so only a bound on the whole exchange ends it.
    with raw_server(trickle(answer, every=0.01)) as (url, seen):
        client = bca.AsyncClient(
            token="t",
            base_url=url,
            timeout=2,
            request_timeout=0.15,
            max_retries=1,
            http_backend=http_backend,  # type: ignore[arg-type]
        )
        async with client:
            with anyio.fail_after(10):  # without the bound: ~40 s
                with pytest.raises(bca.APITimeoutError, match=r"request_timeout=0\.15 s"):
                    await client.fetch_property("link_pre", [1], project=OPEN)
    assert len(seen) == 2  # the first try and its retry, each cut off


def test_request_timeout_is_validated_and_on_by_default() -> None:
    assert bca.AsyncClient(token="t", base_url="https://api.test").config.request_timeout == 300
    assert (
        bca.AsyncClient(
            token="t", base_url="https://api.test", request_timeout=None
        ).config.request_timeout
        is None
    )
    for bad in (0, -1, float("inf"), "10"):
        with pytest.raises(bca.InvalidArgumentError, match="request_timeout"):
            bca.AsyncClient(token="t", base_url="https://api.test", request_timeout=bad)


def test_the_cli_bounds_each_request_and_the_whole_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", "t")
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    out = tmp_path / "out.jsonl"
    with raw_server(trickle(SLOW_BODY, every=0.01)) as (url, _seen):
        started = time.monotonic()
        code = _cli.main(
            ["fetch", "link_pre", "--project", OPEN, "--ids", str(ids), "-o", str(out),
             "--base-url", url, "--request-timeout", "0.2", "--max-retries", "0"]
        )  # fmt: skip
        assert time.monotonic() - started < 20  # without the bound: ~1,000 s
    assert code == 1
    assert "--request-timeout 0.2 s" in capsys.readouterr().err
    with raw_server(trickle(SLOW_BODY, every=0.01)) as (url, _seen):
        code = _cli.main(
            ["fetch", "link_pre", "--project", OPEN, "--ids", str(ids), "-o", str(out),
             "--base-url", url, "--deadline", "0.3", "--force"]
        )  # fmt: skip
    assert code == 1
    assert "--deadline 0.3 s" in capsys.readouterr().err
    for bad in ("0", "-1", "inf", "x"):
        with pytest.raises(SystemExit):
            _cli.main(["fetch", "link_pre", "--project", OPEN, "--request-timeout", bad])


# --- proxies ---------------------------------------------------------------------------


@ON_EVERY_HTTP_BACKEND
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
async def test_a_loopback_server_is_never_reached_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    http_backend: str,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    url = serve_on_loopback(testing.FakeBrainCircuits())
    with raw_server(answer_502) as (proxy, seen):
        monkeypatch.setenv(variable, proxy)
        async with bca.AsyncClient(
            token=testing.DEFAULT_TOKEN,
            cave_token=testing.DEFAULT_CAVE_TOKEN,
            base_url=url,
            http_backend=http_backend,  # type: ignore[arg-type]
        ) as client:
            result = await client.fetch_property("link_pre", [720575940600000001], project=PROJECT)
    assert result.materialized_timestamp
    assert seen == []  # the proxy saw nothing: not the request, not the tokens


@pytest.mark.parametrize(
    ("anyio_backend", "http_backend"),
    [("asyncio", "auto"), ("asyncio", "aiohttp"), ("trio", "auto")],
    indirect=["anyio_backend"],
)
async def test_another_host_goes_through_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch, http_backend: str
) -> None:
    with raw_server(answer_502) as (proxy, seen):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        async with bca.AsyncClient(
            token=AWKWARD,
            base_url="https://api.braincircuits.test",
            max_retries=0,
            http_backend=http_backend,  # type: ignore[arg-type]
        ) as client:
            with pytest.raises(bca.APIConnectionError):
                await client.fetch_property("link_pre", [1], project=OPEN)
            assert client.http_backend == ("httpx" if http_backend == "auto" else "aiohttp")
    # A tunnel: the proxy learns the host, never the request or its tokens.
    assert seen
    assert seen[0].startswith(b"CONNECT api.braincircuits.test:443 ")
    assert_no_piece(repr(seen))


async def test_trust_env_false_ignores_the_environments_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    url = httpx.URL("https://api.braincircuits.test/circuit")

    async def proxied(**options: Any) -> bool:
        async with bca.AsyncClient(
            token="t", base_url="https://api.braincircuits.test", **options
        ) as client:
            pools = client._wire.pools.clients
            mounted = [c._transport_for_url(url) for c in pools]
            return any(m is not c._transport for m, c in zip(mounted, pools, strict=True))

    assert await proxied()  # "auto" stays on httpx's stack, which honours the proxy
    assert not await proxied(trust_env=False)


def test_a_socks_proxy_without_socksio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://alice:hunter2@127.0.0.1:1080")
    monkeypatch.setitem(sys.modules, "socksio", None)  # as if not installed
    with pytest.raises(bca.MissingDependencyError, match=r"braincircuits-async\[socks\]") as caught:
        bca.AsyncClient(token="t", base_url="https://api.braincircuits.test")
    assert isinstance(caught.value, bca.BrainCircuitsError)
    assert "hunter2" not in str(caught.value)  # a proxy's address may carry a password
    # Turned off, the environment's proxy is not even looked at.
    bca.AsyncClient(token="t", base_url="https://api.braincircuits.test", trust_env=False)


# --- echoed tokens in tracebacks and logs ------------------------------------------------


def echoing(kind: str) -> Callable[[httpx.Request, int], Any]:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        cave = request.headers["authorization-cave"].removeprefix("Bearer ")
        both = f"{token} {cave}"
        escaped = both.replace("/", "\\/")
        if kind == "html-200":
            return httpx.Response(200, text=f"<html>{both}</html>")
        if kind == "escaped-500":
            return httpx.Response(500, content=b'{"detail": "' + escaped.encode() + b'"}')
        if kind == "escaped-200":
            return httpx.Response(200, content=b'{"oops": "' + escaped.encode() + b'"}')
        if kind == "result-key":
            return httpx.Response(
                200, json={"materialized_timestamp": 1, "results": {token: {}, cave: {}}}
            )
        if kind == "long-page":
            return httpx.Response(200, text=" " * 1990 + both + "</html>")
        if kind == "redirect":
            return httpx.Response(302, headers={"Location": f"https://x.test/?t={escaped}"})
        raise AssertionError(kind)

    return handler


@pytest.mark.parametrize(
    "kind", ["html-200", "escaped-500", "escaped-200", "result-key", "long-page", "redirect"]
)
async def test_no_frame_a_traceback_shows_holds_an_echoed_token(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with bca.AsyncClient(
            token=AWKWARD,
            cave_token=AWKWARD_CAVE,
            project=PROJECT,
            base_url="https://api.test",
            transport=ScriptedServer(handler=echoing(kind)),
            max_retries=1,
            backoff_base=0.001,
        ) as client:
            with pytest.raises(bca.BrainCircuitsError) as caught:
                await client.fetch_property("link_pre", [1])
    shown = everything_a_traceback_shows(caught.value)
    assert "_wire.py" in shown  # the frames of the wire are there, with their locals
    assert_no_piece(shown)
    assert_no_piece(caplog.text)


@ON_EVERY_HTTP_BACKEND
async def test_httpx_and_httpcore_logs_show_no_echoed_header(
    caplog: pytest.LogCaptureFixture, http_backend: str, serve_on_loopback: ServeOnLoopback
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        token = headers[b"authorization"].removeprefix(b"Bearer ")
        await send({"type": "http.response.start", "status": 302, "headers": [
            (b"location", b"https://x.test/?t=" + token), (b"x-echo", token)]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    url = serve_on_loopback(app)
    with caplog.at_level(logging.DEBUG):
        async with bca.AsyncClient(
            token=AWKWARD,
            base_url=url,
            http_backend=http_backend,  # type: ignore[arg-type]
        ) as client:
            with pytest.raises(bca.APIStatusError):
                await client.fetch_property("link_pre", [1], project=OPEN)
    if http_backend == "httpx":  # aiohttp goes round httpx: neither line is written
        assert "receive_response_headers.complete" in caplog.text  # httpcore did log it ...
        assert '"HTTP/1.1 302 Found"' in caplog.text  # ... and httpx its INFO line
    assert "-> 302 in" in caplog.text  # the client's own line, on both
    assert_no_piece(caplog.text)  # ... without the headers


@pytest.mark.parametrize(
    ("status", "reason", "shown"),
    [(200, "OK", "OK"), (302, "Found", "Found"), (302, AWKWARD, "<reason hidden>"),
     (599, "Odd", "<reason hidden>")],
)  # fmt: skip
def test_httpx_info_line_keeps_only_standard_reason_phrases(
    status: int, reason: str, shown: str
) -> None:
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s %d %s"',
        ("POST", "https://x.test/", "HTTP/1.1", status, reason), None,
    )  # fmt: skip
    assert HideResponseHeaders().filter(record)
    assert record.getMessage().endswith(f'{status} {shown}"')


async def test_a_servers_cookies_are_never_kept_nor_sent_back() -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response | None:
        assert "cookie" not in request.headers, "a cookie was sent back"
        answer = httpx.Response(
            200, json={"materialized_timestamp": 1, "results": {}}, headers={"Set-Cookie": "s=1"}
        )
        return answer

    server = ScriptedServer(handler=handler)
    async with bca.AsyncClient(
        token=AWKWARD, base_url="https://api.test", transport=server, chunk_size=1
    ) as client:
        await client.fetch_property("link_pre", [1, 2, 3], project=OPEN)
        assert all(len(http.cookies) == 0 for http in client._wire.pools.clients)  # none kept
    assert len(server.requests) == 3
    assert all("cookie" not in r.headers for r in server.requests)


@ON_EVERY_HTTP_BACKEND
async def test_no_stack_sends_a_servers_cookie_back(
    http_backend: str, serve_on_loopback: ServeOnLoopback
) -> None:
    cookies_sent: list[bytes | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cookies_sent.append(dict(scope["headers"]).get(b"cookie"))
        body = b'{"materialized_timestamp": 1, "results": {}}'
        headers = [(b"content-type", b"application/json"), (b"set-cookie", b"s=abc; Path=/")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    url = serve_on_loopback(app)
    # A name, not an address: aiohttp's cookie jar ignores the cookies of addresses.
    async with bca.AsyncClient(
        token=AWKWARD,
        base_url=url.replace("127.0.0.1", "localhost"),
        chunk_size=1,
        max_concurrency=1,
        http_backend=http_backend,  # type: ignore[arg-type]
    ) as client:
        await client.fetch_property("link_pre", [1, 2, 3], project=OPEN)
    assert cookies_sent == [None, None, None]
