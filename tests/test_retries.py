"""Retry and backoff against exact response sequences (respx): what is retried, what is not."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import respx

import braincircuits_async as bca

from .conftest import BASE_URL, TIMESTAMP, answer, value_for

pytestmark = pytest.mark.anyio

PATH = "/circuit/segment/property/link_pre"
OK = httpx.Response(200, json=answer([1, 2]))


@pytest.fixture
def api() -> Any:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(429),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(504),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.Response(200, content=b'{"materialized_timestamp": 1677042002, "resu'),
        httpx.Response(200, content=b"<html>Bad gateway</html>"),
        httpx.Response(200, content=b""),
    ],
    ids=lambda f: (
        f"{f.status_code}-{len(f.content)}" if isinstance(f, httpx.Response) else type(f).__name__
    ),
)
async def test_transient_failures_are_retried_until_success(
    api: Any, make_client: Any, sleeps: list[float], failure: Any
) -> None:
    # One segment: a chunk that cannot be split is retried whatever went wrong (two
    # timeouts would split a bigger one, see test_deadlines.py).
    ok = httpx.Response(200, json=answer([2]))
    route = api.post(PATH).mock(side_effect=[failure, failure, ok])
    async with make_client() as client:
        result = await client.fetch_property("link_pre", [2])
    assert route.call_count == 3
    assert result[2] == value_for(2)
    assert client.stats.retries == 2
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, bca.APIStatusError),
        (401, bca.AuthenticationError),
        (403, bca.AuthenticationError),
        (404, bca.APIStatusError),
        (422, bca.APIStatusError),
    ],
)
async def test_permanent_statuses_are_never_retried(
    api: Any, make_client: Any, sleeps: list[float], status: int, error: type[Exception]
) -> None:
    route = api.post(PATH).mock(side_effect=[httpx.Response(status, json={"detail": "nope"}), OK])
    async with make_client() as client:
        with pytest.raises(error) as caught:
            await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 1
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert "nope" in str(caught.value)
    assert sleeps == []


async def test_retries_stop_after_max_retries_with_a_rate_limit_error(
    api: Any, make_client: Any, sleeps: list[float]
) -> None:
    route = api.post(PATH).mock(return_value=httpx.Response(429, json={"detail": "slow down"}))
    async with make_client(max_retries=3) as client:
        with pytest.raises(bca.RateLimitError, match="slow down") as caught:
            await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 4  # the first try and three retries
    assert caught.value.status_code == 429
    assert len(sleeps) == 3


async def test_max_retries_zero_sends_once(api: Any, make_client: Any) -> None:
    route = api.post(PATH).mock(return_value=httpx.Response(503))
    async with make_client(max_retries=0) as client:
        with pytest.raises(bca.APIStatusError):
            await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 1


async def test_retry_after_is_honoured(api: Any, make_client: Any, sleeps: list[float]) -> None:
    api.post(PATH).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), OK])
    async with make_client(backoff_base=0.01, backoff_max=0.01) as client:
        await client.fetch_property("link_pre", [1, 2])
    assert sleeps == [7.0]


async def test_retry_after_as_http_date_is_honoured(
    api: Any, make_client: Any, sleeps: list[float]
) -> None:
    import email.utils
    import time

    date = email.utils.formatdate(time.time() + 60, usegmt=True)
    api.post(PATH).mock(side_effect=[httpx.Response(429, headers={"Retry-After": date}), OK])
    async with make_client() as client:
        await client.fetch_property("link_pre", [1, 2])
    (wait,) = sleeps
    assert 55 <= wait <= 60


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_retry_after_is_honoured_only_up_to_backoff_max(
    api: Any, make_client: Any, sleeps: list[float], status: int
) -> None:
    # A 5xx's Retry-After guesses at the downtime: waiting it out on every retry of
    # every chunk would hold a large fetch for hours (the brake bounds the requests).
    api.post(PATH).mock(
        side_effect=[
            httpx.Response(status, headers={"Retry-After": "100"}),
            httpx.Response(status, headers={"Retry-After": "5"}),
            OK,
        ]
    )
    async with make_client(backoff_base=0.01, backoff_max=20.0) as client:
        await client.fetch_property("link_pre", [1, 2])
    assert sleeps == [20.0, 5.0]


async def test_retry_after_beyond_the_cap_fails_the_chunk_with_the_servers_wait(
    api: Any, make_client: Any, sleeps: list[float]
) -> None:
    route = api.post(PATH).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3600"}), OK]
    )
    async with make_client(max_retry_after=120) as client:
        with pytest.raises(bca.RateLimitError, match="3600") as caught:
            await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 1
    assert sleeps == []
    assert caught.value.retry_after == 3600
    assert "max_retry_after=120" in str(caught.value)


async def test_backoff_waits_grow_exponentially_up_to_the_cap(
    api: Any, make_client: Any, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    monkeypatch.setattr(random, "random", lambda: 1.0)  # the top of every jitter range
    api.post(PATH).mock(return_value=httpx.Response(500))
    async with make_client(backoff_base=1.0, backoff_max=4.0, max_retries=6) as client:
        with pytest.raises(bca.APIStatusError):
            await client.fetch_property("link_pre", [1, 2])
    assert sleeps == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


async def test_backoff_is_jittered(api: Any, make_client: Any, sleeps: list[float]) -> None:
    api.post(PATH).mock(return_value=httpx.Response(500))
    async with make_client(backoff_base=1.0, backoff_max=1.0, max_retries=20) as client:
        with pytest.raises(bca.APIStatusError):
            await client.fetch_property("link_pre", [1, 2])
    assert len(set(sleeps)) > 10  # full jitter: waits spread over [0, 1]
    assert all(0.0 <= wait <= 1.0 for wait in sleeps)


# httpx leaves its own body generator unfinished when decoding fails; trio reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_body_that_cannot_be_decoded_is_retried(
    api: Any, make_client: Any, sleeps: list[float]
) -> None:
    broken = httpx.Response(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )
    route = api.post(PATH).mock(side_effect=[broken, OK])
    async with make_client() as client:
        result = await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 2
    assert list(result) == [1, 2]


async def test_a_real_short_retry_after_is_really_waited(api: Any, make_client: Any) -> None:
    import time

    api.post(PATH).mock(side_effect=[httpx.Response(503, headers={"Retry-After": "0.05"}), OK])
    async with make_client() as client:
        began = time.perf_counter()
        await client.fetch_property("link_pre", [1, 2])
    assert time.perf_counter() - began >= 0.05


async def test_each_retry_is_logged_with_reason_and_wait(
    api: Any, make_client: Any, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    api.post(PATH).mock(side_effect=[httpx.Response(503, headers={"Retry-After": "2"}), OK])
    with caplog.at_level(logging.DEBUG, logger="braincircuits_async"):
        async with make_client() as client:
            await client.fetch_property("link_pre", [1, 2])
    retries = [r for r in caplog.records if r.levelno == logging.INFO and "retrying" in r.message]
    assert len(retries) == 1
    assert "503" in retries[0].message
    assert "2.00s" in retries[0].message
    requests = [r for r in caplog.records if r.levelno == logging.DEBUG and "POST" in r.message]
    assert len(requests) == 2


async def test_an_answer_of_the_wrong_shape_is_a_malformed_response_error(
    api: Any, make_client: Any
) -> None:
    route = api.post(PATH).mock(return_value=httpx.Response(200, json={"results": {}}))
    async with make_client() as client:
        with pytest.raises(bca.MalformedResponseError, match="materialized_timestamp"):
            await client.fetch_property("link_pre", [1, 2])
    assert route.call_count == 1  # a well-formed JSON answer of the wrong shape is not retried


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([1, 2], "top level is a JSON list"),
        ({"materialized_timestamp": TIMESTAMP}, "no 'results'"),
        ({"materialized_timestamp": TIMESTAMP, "results": []}, "'results' is not an object"),
        ({"materialized_timestamp": "x", "results": {}}, "not UNIX seconds"),
        ({"materialized_timestamp": -1, "results": {}}, "not UNIX seconds"),
        ({"materialized_timestamp": True, "results": {}}, "not UNIX seconds"),
        ({"materialized_timestamp": 2**200, "results": {}}, "not UNIX seconds"),
        ({"materialized_timestamp": 2**63, "results": {}}, "not UNIX seconds"),
        ({"materialized_timestamp": TIMESTAMP, "results": {"1": 5}}, "is int, not an object"),
        ({"materialized_timestamp": TIMESTAMP, "results": {"1": None}}, "is null"),
        ({"materialized_timestamp": TIMESTAMP, "results": {"99": {}}}, "99 was not requested"),
        ({"materialized_timestamp": TIMESTAMP, "results": {"abc": {}}}, "not a decimal"),
        ({"materialized_timestamp": TIMESTAMP, "results": {"01": {}}}, "was not requested"),
    ],
)
async def test_answers_of_the_wrong_shape_name_the_problem(
    api: Any, make_client: Any, body: Any, words: str
) -> None:
    api.post(PATH).mock(return_value=httpx.Response(200, json=body))
    async with make_client() as client:
        with pytest.raises(bca.MalformedResponseError, match=words) as caught:
            await client.fetch_property("link_pre", [1, 2])
    assert "ids[0:2]" in str(caught.value)  # names the chunk


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib-json"])
async def test_answers_parse_the_same_with_and_without_orjson(
    api: Any, make_client: Any, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    from braincircuits_async import _json

    if not fast:
        monkeypatch.setattr(_json, "_fast_loads", None)
    # A value orjson refuses (an integer beyond 64 bits) falls back to the stdlib parser.
    body = b'{"materialized_timestamp": 5, "results": {"1": {"n": 123456789012345678901234}}}'
    api.post(PATH).mock(return_value=httpx.Response(200, content=body))
    async with make_client() as client:
        result = await client.fetch_property("link_pre", [1, 2])
    assert result[1] == {"n": 123456789012345678901234}
    assert result.missing == (2,)
    assert result.materialized_timestamp == 5
