"""What to retry and how long to wait, and the tenacity wiring around one request.

The decisions are small pure functions (``should_retry``, ``parse_retry_after``,
``retry_after_to_honour``, ``wait_for``) covered by table-driven tests; tenacity
is an implementation detail behind :func:`call_with_retry`.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from ._config import RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    MalformedResponseError,
)

__all__ = [
    "RETRYABLE_STATUS",
    "call_with_retry",
    "is_fatal",
    "parse_retry_after",
    "retry_after_to_honour",
    "should_retry",
    "wait_for",
]

logger = logging.getLogger("braincircuits_async")

T = TypeVar("T")

#: Statuses worth another try: throttling and transient server trouble.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

#: Statuses that end the whole call at once (see :func:`is_fatal`).
FATAL_STATUS = frozenset({401, 403, 404, 422})

# Indirection so tests can swap in a fake clock without sleeping.
sleep: Callable[[float], Awaitable[None]] = anyio.sleep


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    Returns ``None`` when the header is absent or unreadable, and never a
    negative number (a date in the past means "now").
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            # asctime dates and "-0000" carry no zone; HTTP dates are always GMT.
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def should_retry(error: BaseException, policy: RetryPolicy) -> bool:
    """Whether ``error`` from one request is worth another try.

    An allow-list: connection trouble, timeouts, unreadable (e.g. truncated)
    bodies, and the statuses in :data:`RETRYABLE_STATUS`, unless the server
    asked for a longer wait than ``policy.max_retry_after``. Everything else,
    cancellation and programming errors included, is not retried.
    """
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, MalformedResponseError):
        return error.transient
    if isinstance(error, APIStatusError) and error.status_code in RETRYABLE_STATUS:
        return error.retry_after is None or error.retry_after <= policy.max_retry_after
    return False


def is_fatal(error: BaseException) -> bool:
    """Whether ``error`` dooms the whole call, not just one chunk.

    Refused tokens (401/403), an unknown path (404), a request the server cannot
    use (422) and redirects would fail every other chunk the same way, so the
    call stops at once instead of sending them.
    """
    if not isinstance(error, APIStatusError) or error.status_code is None:
        return False
    return error.status_code in FATAL_STATUS or 300 <= error.status_code < 400


def wait_for(
    retry_number: int,
    retry_after: float | None,
    policy: RetryPolicy,
    rand: Callable[[], float] | None = None,
) -> float:
    """Seconds to sleep before retry ``retry_number`` (1 for the first retry).

    Exponential backoff with full jitter, capped at ``policy.backoff_max``; at
    least the server's ``Retry-After`` when it sent one (callers never retry
    past ``policy.max_retry_after``, see :func:`should_retry`).
    """
    exponent = min(retry_number - 1, 62)  # keeps 2**exponent a finite float
    ceiling = min(policy.backoff_max, policy.backoff_base * 2.0**exponent)
    backoff = (rand or random.random)() * ceiling
    if retry_after is None:
        return backoff
    return max(min(retry_after, policy.max_retry_after), backoff)


def retry_after_to_honour(error: BaseException | None, policy: RetryPolicy) -> float | None:
    """The server's ``Retry-After`` that the wait before the next retry honours.

    A 429's in full (up to ``policy.max_retry_after``): it is this client's rate
    allowance, and sending sooner only draws more 429s. A 5xx's only up to
    ``policy.backoff_max``: it is a guess at the downtime (often one constant of a
    maintenance page or load balancer, the same for every request), and each chunk
    waiting out ``Retry-After: 100`` on every retry would hold a large fetch for
    hours; a request sent sooner costs one refused answer, and the fetch's brake
    (``_policy.brake``) bounds how many of those there are.
    """
    if not isinstance(error, APIStatusError) or error.retry_after is None:
        return None
    if error.status_code is not None and 500 <= error.status_code < 600:
        return min(error.retry_after, policy.backoff_max)
    return error.retry_after


async def call_with_retry(
    send: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[BaseException, float], None] | None = None,
    timeouts_before_giving_up: int | None = None,
) -> T:
    """Await ``send()`` until it succeeds, retrying what :func:`should_retry` allows.

    After ``policy.max_retries`` retries the last error is raised as it is.
    Each retry is logged with its error, which names the chunk (never a token);
    ``on_retry(error, wait)`` is told of every retry. With
    ``timeouts_before_giving_up``, that many timeouts end the retries early (the
    caller splits the chunk instead of waiting out every retry).
    """
    # The first try without tenacity: nearly every request succeeds at once, and
    # setting up the retry machinery costs ~50 us a request (at 64 in flight, a
    # tenth of the client's own time).
    try:
        return await send()
    except Exception as error:  # cancellation passes through, as it does in tenacity
        first = error
    timeouts = 0

    def worth_another(error: BaseException) -> bool:
        nonlocal timeouts
        if isinstance(error, APITimeoutError) and timeouts_before_giving_up is not None:
            timeouts += 1
            if timeouts >= timeouts_before_giving_up:
                return False
        return should_retry(error, policy)

    def announce(error: BaseException, retry_number: int, delay: float) -> None:
        logger.info(
            "retrying in %.2fs (retry %d of %d) after: %s",
            delay,
            retry_number,
            policy.max_retries,
            error,
        )
        if on_retry is not None:
            on_retry(error, delay)

    if policy.max_retries == 0 or not worth_another(first):
        raise first
    delay = wait_for(1, retry_after_to_honour(first, policy), policy)
    announce(first, 1, delay)
    await sleep(delay)

    # The retries after the first: tenacity's attempt n is retry n + 1 overall.
    def retry(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return error is not None and worth_another(error)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return wait_for(state.attempt_number + 1, retry_after_to_honour(error, policy), policy)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert error is not None
        announce(error, state.attempt_number + 1, state.upcoming_sleep)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries),
        wait=wait,
        retry=retry,
        before_sleep=before_sleep,
        sleep=lambda seconds: sleep(seconds),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await send()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
