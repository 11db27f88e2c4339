"""The retry decisions as pure functions: what is retried, how long to wait, what ends a call."""

from __future__ import annotations

import email.utils

import pytest

import braincircuits_async as bca
from braincircuits_async._retry import (
    is_fatal,
    parse_retry_after,
    retry_after_to_honour,
    should_retry,
    wait_for,
)

POLICY = bca.RetryPolicy(max_retries=5, backoff_base=0.5, backoff_max=30.0, max_retry_after=120.0)
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 45), 45.0),  # "-0000" zone
        ("Tue Nov 14 22:14:20 2023", 60.0),  # asctime, GMT by definition
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # RFC 850
    ],
)
def test_retry_after_is_parsed_as_seconds_or_http_date(
    header: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def status(code: int, retry_after: float | None = None) -> bca.APIStatusError:
    cls = bca.RateLimitError if code == 429 else bca.APIStatusError
    return cls("x", status_code=code, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (status(429), True),
        (status(500), True),
        (status(502), True),
        (status(503), True),
        (status(504), True),
        (status(503, retry_after=120.0), True),
        (status(429, retry_after=121.0), False),
        (status(400), False),
        (status(401), False),
        (status(403), False),
        (status(404), False),
        (status(413), False),
        (status(422), False),
        (status(501), False),
        (bca.APIConnectionError("dropped"), True),
        (bca.APITimeoutError("slow"), True),
        (bca.MalformedResponseError("cut short", transient=True), True),
        (bca.MalformedResponseError("wrong shape"), False),
        (bca.AuthenticationError("no token"), False),
        (KeyError("bug"), False),
        (TypeError("bug"), False),
    ],
)
def test_only_transient_failures_are_retried(error: BaseException, retry: bool) -> None:
    assert should_retry(error, POLICY) is retry


def test_cancellation_is_never_retried() -> None:
    import asyncio

    assert should_retry(asyncio.CancelledError(), POLICY) is False


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (status(401), True),
        (status(403), True),
        (status(404), True),
        (status(422), True),
        (status(301), True),
        (status(307), True),
        (status(400), False),
        (status(413), False),
        (status(429), False),
        (status(500), False),
        (bca.AuthenticationError("missing before any request"), False),
        (bca.APIConnectionError("x"), False),
    ],
)
def test_errors_that_doom_every_chunk_end_the_call(error: BaseException, fatal: bool) -> None:
    assert is_fatal(error) is fatal


@pytest.mark.parametrize(
    ("retry_number", "rand", "retry_after", "expected"),
    [
        (1, 1.0, None, 0.5),
        (2, 1.0, None, 1.0),
        (3, 1.0, None, 2.0),
        (3, 0.5, None, 1.0),
        (3, 0.0, None, 0.0),
        (10, 1.0, None, 30.0),  # capped at backoff_max
        (1000, 1.0, None, 30.0),  # no overflow for huge retry numbers
        (1, 1.0, 7.0, 7.0),  # Retry-After longer than the backoff wins
        (8, 1.0, 7.0, 30.0),  # backoff longer than Retry-After wins
        (1, 0.0, 500.0, 120.0),  # never more than max_retry_after
    ],
)
def test_backoff_is_exponential_full_jitter_and_honours_retry_after(
    retry_number: int, rand: float, retry_after: float | None, expected: float
) -> None:
    assert wait_for(retry_number, retry_after, POLICY, rand=lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("error", "honoured"),
    [
        (status(429, retry_after=100.0), 100.0),  # the client's rate allowance: in full
        (status(429, retry_after=7.0), 7.0),
        (status(503, retry_after=100.0), 30.0),  # a guess at the downtime: backoff_max
        (status(500, retry_after=3600.0), 30.0),
        (status(502, retry_after=7.0), 7.0),
        (status(503), None),
        (bca.APIConnectionError("dropped"), None),
        (None, None),
    ],
)
def test_a_5xx_retry_after_is_honoured_up_to_backoff_max_and_a_429s_in_full(
    error: BaseException | None, honoured: float | None
) -> None:
    assert retry_after_to_honour(error, POLICY) == honoured


def test_every_wait_is_bounded() -> None:
    for n in range(1, 200):
        for retry_after in (None, 0.0, 60.0, 10_000.0):
            wait = wait_for(n, retry_after, POLICY)
            assert 0.0 <= wait <= max(POLICY.backoff_max, POLICY.max_retry_after)
