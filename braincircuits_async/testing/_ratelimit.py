"""The fake's rate limit: a token bucket driven by the time it is given."""

from __future__ import annotations

import json

from .._exceptions import InvalidArgumentError
from ._checks import check_float, check_positive
from ._http import format_seconds

__all__ = ["TokenBucket", "rate_limit_bucket"]


def rate_limit_bucket(
    rate_limit: float | None, retry_after: float | None, *, now: float
) -> TokenBucket | None:
    """Check the ``rate_limit`` and ``rate_limit_retry_after`` knobs; return their
    bucket, full as of ``now``, or None for no limit.
    """
    rate = None if rate_limit is None else check_positive("rate_limit", rate_limit)
    if retry_after is not None and rate is None:
        raise InvalidArgumentError(
            "rate_limit_retry_after needs rate_limit (requests per second) to be set"
        )
    if retry_after is not None:
        retry_after = check_float("rate_limit_retry_after", retry_after, 0.0)
    return None if rate is None else TokenBucket(rate, retry_after=retry_after, now=now)


class TokenBucket:
    """Holds ``max(1, rate)`` requests and refills continuously at ``rate`` per second.

    Every method takes ``now`` (seconds on any monotonic clock), so a test can drive
    the bucket with a fake clock. Not thread-safe: `FakeBrainCircuits` calls it
    under its lock.
    """

    def __init__(self, rate: float, *, retry_after: float | None, now: float) -> None:
        self.rate = rate
        self.size = max(1.0, rate)
        #: The 429 answer to a request the bucket turns away: body and extra headers.
        self.refusal = json.dumps(
            {"detail": f"fake: too many requests (rate limit: {rate:g} requests/s)"}
        ).encode()
        self.refusal_headers = (
            [] if retry_after is None else [(b"retry-after", format_seconds(retry_after).encode())]
        )
        self.fill(now)

    def fill(self, now: float) -> None:
        """Fill the bucket to the brim, as of ``now``."""
        self._level = self.size
        self._time = now

    def take(self, now: float) -> bool:
        """Take one request from the bucket; False if it is empty."""
        # max(): a clock that steps back (a test's fake clock) must not drain it.
        elapsed = max(0.0, now - self._time)
        self._level = min(self.size, self._level + elapsed * self.rate)
        self._time = now
        if self._level < 1.0:
            return False
        self._level -= 1.0
        return True
