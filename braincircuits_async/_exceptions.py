"""The one exception hierarchy of braincircuits-async.

Every error the client raises on purpose derives from :class:`BrainCircuitsError`::

    BrainCircuitsError
    ├── InvalidArgumentError         (also ValueError and TypeError: a bad argument or setting,
    │   │                             before any request; the message names it and its range)
    │   └── InvalidSegmentError      (a bad id, or a single id where a list belongs)
    ├── UsageError                   (also RuntimeError: a call that cannot work here)
    │   └── ClientClosedError        (the client was closed, or a stream needs it open)
    ├── MissingDependencyError       (also ImportError: an optional extra is not installed)
    ├── APIError                     (something went wrong talking to the server)
    │   ├── APIStatusError           (an answer with an error status: .status_code, .body)
    │   │   ├── AuthenticationError  (401/403, or a token missing before any request)
    │   │   └── RateLimitError       (429 after the retries ran out)
    │   ├── APIConnectionError       (no answer: connection refused, dropped, ...)
    │   │   └── APITimeoutError      (no answer within `timeout`)
    │   └── MalformedResponseError   (an answer that is not the documented shape)
    ├── StoreError                   (the result store could not be opened, read or written)
    ├── InconsistentMaterializationError  (.timestamps, .result)
    ├── IncompleteResultError        (.result of the chunks that succeeded, .failures)
    └── DeadlineExceededError        (also TimeoutError: a call's deadline passed; the
                                      reason of the chunks it cut off)

Lower-layer errors (httpx, json) are translated into these in one place, the
client's request step. The message quotes the original's type and text, but the
original is not chained as ``__cause__``: an httpx error holds the request, whose
headers carry the tokens. Messages never contain a token: they name the
argument or environment variable instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import SegmentPropertyResult

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BrainCircuitsError",
    "ClientClosedError",
    "DeadlineExceededError",
    "IncompleteResultError",
    "InconsistentMaterializationError",
    "InvalidArgumentError",
    "InvalidSegmentError",
    "MalformedResponseError",
    "MissingDependencyError",
    "RateLimitError",
    "StoreError",
    "UsageError",
]

_NO_RESULTS: Mapping[str, SegmentPropertyResult] = MappingProxyType({})

#: How much of an error body an exception keeps (characters).
BODY_EXCERPT_CHARS = 300


def excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    """Shorten ``text`` to ``limit`` characters on one line, marking the cut."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BrainCircuitsError(Exception):
    """Base class of every error raised by braincircuits-async.

    Whatever a fetch raises after some chunks succeeded carries them, so nothing
    fetched is lost: ``result`` is what was fetched of the (first) property, and
    ``results`` every property's, as :class:`IncompleteResultError` always had. An
    error raised before any request (a bad argument) has ``result`` ``None`` and
    empty ``results``. The partial result never mixes materializations: with
    ``consistency`` other than ``"ignore"``, it keeps only the chunks of the newest
    one (a :class:`ResultStore` keeps the others too).
    """

    #: What the fetch got before this error (``None`` if it was raised before one).
    result: SegmentPropertyResult | None = None
    #: ``{property: result}`` of what the fetch got before this error.
    results: Mapping[str, SegmentPropertyResult] = _NO_RESULTS


class InvalidArgumentError(BrainCircuitsError, ValueError, TypeError):
    """An argument or setting is not usable; the message names it and what it accepts.

    Raised before any request. It is both a ``ValueError`` and a ``TypeError``
    (what Python code raises for such mistakes), so code written for either
    keeps working.
    """


class InvalidSegmentError(InvalidArgumentError):
    """A segment id is not an integer in [0, 2**64), or ``segments`` is not a list of ids.

    Like every :class:`InvalidArgumentError` it is both a ``ValueError`` and a
    ``TypeError``. ``.position`` is the index of the offending value in
    the input and ``.value`` its ``repr``.
    """

    def __init__(self, message: str, *, position: int | None = None, value: str = "") -> None:
        super().__init__(message)
        self.position = position
        self.value = value


class UsageError(BrainCircuitsError, RuntimeError):
    """A call that cannot work in this state or place (also a ``RuntimeError``)."""


class ClientClosedError(UsageError):
    """The client was closed (it cannot be reopened: create a new one)."""


class StoreError(BrainCircuitsError):
    """A :class:`ResultStore` could not be opened, read or written.

    The message names the file and what went wrong: a folder that does not exist,
    a file that is not a store (left untouched), a read-only location, a disk that
    is full. Raised while fetching, it stops the call like a refused token, and
    carries what was fetched in ``.result`` / ``.results``.
    """


class MissingDependencyError(BrainCircuitsError, ImportError):
    """An optional extra is needed and not installed; the message names the ``pip install``."""


class APIError(BrainCircuitsError):
    """The server could not be reached, refused the request, or answered nonsense."""


class APIStatusError(APIError):
    """The server answered with an error status.

    ``status_code`` is the HTTP status (``None`` when the error was raised before
    any request, as for a missing token), ``body`` a short excerpt of the answer
    and ``retry_after`` the seconds the server asked to wait, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


class AuthenticationError(APIStatusError):
    """A token is missing, or the server refused one (401/403).

    The message says which token (BrainCircuits or CAVE), how to pass it and
    where to get a new one. It never contains the token itself.
    """


class RateLimitError(APIStatusError):
    """The server kept answering 429 (too many requests) after every retry."""


class APIConnectionError(APIError):
    """No answer came back: the connection failed, was dropped, or the body was cut."""


class APITimeoutError(APIConnectionError):
    """No answer came back within the client's ``timeout``."""


class MalformedResponseError(APIError):
    """The server's answer is not the documented shape.

    ``body`` is a short excerpt of the answer, to show what came instead;
    ``transient`` is true when the answer could not even be read (cut short,
    not JSON), which is worth a retry.
    """

    def __init__(self, message: str, *, body: str = "", transient: bool = False) -> None:
        super().__init__(message)
        self.body = body
        self.transient = transient


class InconsistentMaterializationError(BrainCircuitsError):
    """Chunks of one call came from different materializations of the dataset.

    ``timestamps`` are the distinct ``materialized_timestamp`` values seen,
    oldest first. ``result`` holds everything that was fetched (each segment
    with its newest value), and ``segment_timestamps`` tells for each segment
    which materialization its value came from, so nothing fetched is lost.
    ``failures`` maps ids whose chunk failed for good to the reason, as in
    :class:`IncompleteResultError` (empty when none did). From
    ``fetch_properties``, ``results`` holds every property's result (as in
    :class:`IncompleteResultError`), and ``result`` and ``segment_timestamps``
    are those of the first property whose chunks disagree.
    """

    result: SegmentPropertyResult

    def __init__(
        self,
        message: str,
        *,
        timestamps: tuple[int, ...],
        result: SegmentPropertyResult,
        segment_timestamps: Mapping[int, int],
        failures: Mapping[int, str] | None = None,
        results: Mapping[str, SegmentPropertyResult] | None = None,
    ) -> None:
        super().__init__(message)
        self.timestamps = timestamps
        self.result = result
        self.segment_timestamps = segment_timestamps
        self.failures: Mapping[int, str] = {} if failures is None else failures
        self.results: Mapping[str, SegmentPropertyResult] = (
            {result.property: result} if results is None else results
        )


class DeadlineExceededError(BrainCircuitsError, TimeoutError):
    """A call's ``deadline`` passed before a chunk was fetched.

    It is the reason given in ``IncompleteResultError.failures`` (and in
    ``.errors``) for the segments the deadline cut off; the call itself raises
    :class:`IncompleteResultError`, which holds everything fetched in time.
    """


class IncompleteResultError(BrainCircuitsError):
    """Some chunks failed for good while others succeeded.

    ``result`` is the merged result of every chunk that succeeded (nothing
    fetched is thrown away); ``failures`` maps each segment that could not be
    fetched to the reason, as text; ``errors`` holds the distinct underlying
    exceptions, the first of which is also ``__cause__``. From
    ``fetch_properties``, ``results`` holds every property's result and
    ``result`` that of the first property that failed; reasons then start with
    the property's name.
    """

    result: SegmentPropertyResult

    def __init__(
        self,
        message: str,
        *,
        result: SegmentPropertyResult,
        failures: Mapping[int, str],
        errors: tuple[BrainCircuitsError, ...],
        results: Mapping[str, SegmentPropertyResult] | None = None,
    ) -> None:
        super().__init__(message)
        self.result = result
        self.failures = failures
        self.errors = errors
        self.results: Mapping[str, SegmentPropertyResult] = (
            {result.property: result} if results is None else results
        )
