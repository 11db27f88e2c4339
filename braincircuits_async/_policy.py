"""The decisions of a fetch, as small pure functions: no network, no clock, no state.

What to do with an answer's materialization (:func:`judge_timestamp`), which
chunks are stale (:func:`stale_slices`), when a chunk splits
(:func:`split_decision`), which slices a deadline cut off (:func:`uncovered`),
how failures become reasons (:func:`failure_reasons`), whether the server
looks down so a call stops sending (:func:`brake`), and how finished calls
settle into results or one error (:func:`settle`). ``fetch_property``,
``fetch_properties`` and the end of a stream all settle here, so they cannot
drift apart. Each has a table test in ``tests/test_policy.py``.

A *slice* ``(start, end)`` is a chunk: the ids ``ids[start:end]`` of a call's
de-duplicated id list.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ._config import Consistency
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BrainCircuitsError,
    DeadlineExceededError,
    IncompleteResultError,
    InconsistentMaterializationError,
)
from ._merge import ChunkAnswer, chunk_result, merge_answers
from ._models import SegmentPropertyResult

__all__ = [
    "Brake",
    "Outcome",
    "Split",
    "TooLarge",
    "Verdict",
    "brake",
    "brake_budget",
    "failure_reasons",
    "judge_timestamp",
    "refetch_target",
    "server_down",
    "server_down_error",
    "settle",
    "split_decision",
    "stale_slices",
    "stream_disagreement",
    "too_large_after",
    "too_large_error",
    "uncovered",
    "with_partial",
]

logger = logging.getLogger("braincircuits_async")

Slice = tuple[int, int]


class Verdict(enum.Enum):
    """What to do with an answer, given its materialization."""

    KEEP = "keep"  # record it (or hand it on, in a stream)
    REFETCH = "refetch"  # fetch the chunk again now (a stream's lagging replica)
    STOP = "stop"  # the call can no longer be consistent


def judge_timestamp(
    timestamp: int,
    reference: int | None,
    *,
    consistency: Consistency,
    streaming: bool,
    refetched: int,
    max_refetch_rounds: int,
) -> tuple[Verdict, str]:
    """The verdict on an answer from ``timestamp``, and why when it is STOP.

    ``reference`` is the first materialization the call saw; ``refetched`` how
    often this chunk was fetched again already. Outside streams, ``"refetch"``
    keeps every answer here: stale chunks are fetched again in rounds after the
    first pass (see :func:`stale_slices`). A stream has handed chunks on already
    and cannot take them back: an older chunk is fetched again at once, and a
    newer materialization ends the stream.
    """
    if reference is None or timestamp == reference or consistency == "ignore":
        return Verdict.KEEP, ""
    if consistency == "strict":
        return Verdict.STOP, "consistency='strict' allows only one"
    if not streaming:
        return Verdict.KEEP, ""
    if timestamp > reference:
        return Verdict.STOP, "chunks of the older one were yielded already"
    if refetched < max_refetch_rounds:
        return Verdict.REFETCH, ""
    return Verdict.STOP, f"{refetched} re-fetch round(s) did not reconcile them"


def refetch_target(answers: Iterable[ChunkAnswer]) -> int | None:
    """The materialization every answer must come from: the newest one fetched.

    Stored answers do not count unless nothing was fetched: the server decides, so a
    store holding a newer materialization than the server serves (a rolled-back
    dataset, another deployment) is re-fetched instead of failing every answer.
    """
    newest_fetched = newest_stored = None
    for answer in answers:
        if answer.stored:
            if newest_stored is None or answer.timestamp > newest_stored:
                newest_stored = answer.timestamp
        elif newest_fetched is None or answer.timestamp > newest_fetched:
            newest_fetched = answer.timestamp
    return newest_stored if newest_fetched is None else newest_fetched


def stale_slices(answers: Iterable[ChunkAnswer], target: int | None) -> list[Slice]:
    """The slices whose answer is not from materialization ``target``, in start order."""
    return sorted((a.start, a.end) for a in answers if a.timestamp != target)


class Split(enum.Enum):
    """What to do with a chunk whose retries ended in ``error``."""

    HALVE = "halve"  # queue both halves as chunks of their own, tried first
    PROBE = "probe"  # try its first segment alone first: is the 413 about size?
    AGAIN_WHOLE = "again whole"  # stop splitting on timeouts; queue it again as it is
    FAIL = "fail"  # record the chunk as failed
    NOT_SIZE = "not size"  # record it as failed: a 413 that splitting does not cure


class TooLarge(enum.Enum):
    """What a call learned of the server's 413s (see :func:`too_large_after`)."""

    UNKNOWN = "unknown"  # no evidence yet
    SIZE = "size"  # a piece of a refused chunk was answered: splitting helps
    NOT_SIZE = "not size"  # a single segment was refused: size is not the trouble


def split_decision(
    error: BrainCircuitsError,
    size: int,
    *,
    split_on_timeout: bool,
    timeout_half: bool,
    too_large: TooLarge,
) -> Split:
    """Whether a failed chunk of ``size`` ids splits.

    A 413 splits a chunk while that helps, as ``too_large`` tells: before the
    call knows, the chunk's first segment is tried alone first (one request
    answers "is it the size?"; a server that refuses everything would otherwise
    see every chunk halved down to single ids); once a piece was answered, 413s
    halve chunks down to single ids; once a single segment was refused, size is
    not the trouble, and every 413 fails its chunk with that reason.

    Timeouts halve a chunk too, while that helps: ``timeout_half`` says the chunk
    is itself a half of one split for timing out; when it times out as well,
    size was not the trouble, so splitting on timeouts stops for the call and the
    chunk goes again whole, with its full retries.
    """
    if isinstance(error, APIStatusError) and error.status_code == 413:
        if too_large is TooLarge.NOT_SIZE or (size < 2 and too_large is TooLarge.UNKNOWN):
            return Split.NOT_SIZE
        if size < 2:
            return Split.FAIL  # a segment refused where smaller requests were answered
        return Split.PROBE if too_large is TooLarge.UNKNOWN else Split.HALVE
    if size < 2:
        return Split.FAIL
    if isinstance(error, APITimeoutError) and split_on_timeout:
        return Split.AGAIN_WHOLE if timeout_half else Split.HALVE
    return Split.FAIL


def too_large_after(current: TooLarge, *, size: int, answered: bool) -> TooLarge:
    """What the call knows of its 413s after one more piece of evidence.

    ``answered``: a piece of a chunk split for a 413 was answered, so the 413s are
    about size (this wins over an earlier refused segment: splitting did help).
    Otherwise a 413 came back for ``size`` segments: for a single one, before any
    piece was answered, size is not the trouble (a proxy refusing the requests, a
    server misusing 413), and splitting further only multiplies the requests.
    """
    if answered:
        return TooLarge.SIZE
    if size == 1 and current is TooLarge.UNKNOWN:
        return TooLarge.NOT_SIZE
    return current


def too_large_error(error: APIStatusError, *, describe: str, segment: int | None) -> APIStatusError:
    """The error of a chunk failed because splitting does not cure the server's 413."""
    refused = "a single segment" if segment is None else f"a single segment ({segment})"
    return APIStatusError(
        f"{describe}: the server answered 413 (too large), but splitting does not help: "
        f"it refused even {refused} as too large, so the size of a request is not the "
        "trouble and this call stopped splitting chunks. Lowering chunk_size will not "
        "help; look for a proxy or gateway in front of the server that refuses these "
        f"requests (check base_url), or tell the server's operators. Server said: {error.body}",
        status_code=413,
        body=error.body,
    )


def timeouts_before_splitting(size: int, *, split_on_timeout: bool) -> int | None:
    """How many timeouts end a chunk's retries early, so it splits instead (None: never)."""
    return 2 if size > 1 and split_on_timeout else None


class Brake(enum.Enum):
    """Whether the next request of a fetch may go, given the requests since the last success."""

    GO = "go"
    WAIT = "wait"  # the budget is spent, but requests in flight may still succeed
    STOP = "stop"  # every request of the budget failed: the server looks down


def brake_budget(max_concurrency: int, max_retries: int) -> int:
    """How many requests in a row may fail with the server down before a fetch stops.

    As many as the first ``max_concurrency`` chunks would spend on their retries,
    so a fetch rides out an outage as long as one chunk does (its backoff), and a
    server that is down gets that many requests, not every chunk's retries. At
    least two chunks' worth: one chunk that cannot be fetched (a shard down) fails
    alone and never stops the fetch.
    """
    return max(max_concurrency, 2) * (max_retries + 1)


def brake(sent: int, failed: int, *, budget: int) -> Brake:
    """Whether another request may start.

    ``sent`` counts the requests started since the last success (other than those
    that ended neither in success nor with the server down: a 429, a 4xx), and
    ``failed`` those of them that failed with the server down (see
    :func:`server_down`). Only when the whole ``budget`` was sent and every one of
    those requests failed does the brake stop the fetch; a success anywhere resets
    both counts, so a blip of 503s among answers never stops it.
    """
    if sent < budget:
        return Brake.GO
    return Brake.STOP if failed >= sent else Brake.WAIT


def server_down(error: BaseException) -> bool:
    """Whether ``error`` says the server is down: a 5xx answer, or no answer at all."""
    if isinstance(error, APIStatusError):
        return error.status_code is not None and 500 <= error.status_code < 600
    return isinstance(error, APIConnectionError)


def server_down_error(last: APIError, *, what: str, requests: int) -> APIError:
    """The error that stops a fetch whose last ``requests`` requests all found the server down.

    An error of ``last``'s kind (the status and ``Retry-After`` of a 5xx are kept),
    with a message that says why the fetch stopped and what to do.
    """
    message = (
        f"{what}: the server looks down: the last {requests} requests all failed (5xx "
        "answers or no answer at all) and none succeeded, so the fetch stopped instead "
        "of sending the chunks left. What was fetched before is kept (.result; a stream "
        "yielded it already). Try again later; a larger max_retries rides out longer "
        f"outages. Last error: {last}"
    )
    if isinstance(last, APIStatusError):
        return APIStatusError(
            message, status_code=last.status_code, body=last.body, retry_after=last.retry_after
        )
    return type(last)(message)


def uncovered(spans: Iterable[Slice], total: int) -> list[Slice]:
    """The slices of ``range(total)`` that no span covers (what a deadline cut off)."""
    gaps = []
    position = 0
    for start, end in sorted(spans):
        if start > position:
            gaps.append((position, start))
        position = max(position, end)
    if position < total:
        gaps.append((position, total))
    return gaps


@dataclass(frozen=True)
class Outcome:
    """How one call (one property) ended: what it kept, handed on and could not fetch."""

    prop: str
    project: str
    ids: Sequence[int]
    answers: Sequence[ChunkAnswer]
    #: start -> (end, error) of each slice that failed for good.
    failures: Mapping[int, tuple[int, BrainCircuitsError]] = field(default_factory=dict)
    #: Chunks handed on to a stream's reader (not kept in ``answers``).
    delivered: int = 0
    #: The request order, when ``ids`` is in another one (a store's plan).
    order: Sequence[int] | None = None

    def merged(self, answers: Iterable[ChunkAnswer] | None = None) -> SegmentPropertyResult:
        """``answers`` (default: all) merged into one result, in request order."""
        return merge_answers(
            self.answers if answers is None else answers, self.prop, self.project, order=self.order
        )


def failure_reasons(
    failures: Mapping[int, tuple[int, BrainCircuitsError]], ids: Sequence[int]
) -> tuple[dict[int, str], list[BrainCircuitsError]]:
    """Each failed segment's reason as text, and the distinct errors in slice order."""
    errors: list[BrainCircuitsError] = []
    reasons: dict[int, str] = {}
    for start in sorted(failures):
        end, error = failures[start]
        if error not in errors:
            errors.append(error)
        reasons.update(dict.fromkeys(ids[start:end], str(error)))
    return reasons, errors


def settle(
    outcomes: Sequence[Outcome],
    *,
    consistency: Consistency,
    max_refetch_rounds: int,
    streaming: bool = False,
) -> dict[str, SegmentPropertyResult]:
    """The results of finished calls, or the one error that says why they cannot be trusted.

    - Answers from more than one materialization: :class:`InconsistentMaterializationError`
      holding every property's result, unless ``consistency="ignore"`` (a warning).
    - Nothing fetched at all, every chunk failed: that chunk's own error (e.g.
      :class:`RateLimitError`), for one property or several alike, since nothing is
      lost by raising it. A deadline that cut everything off still raises
      :class:`IncompleteResultError`, as every deadline does.
    - Some chunks failed: :class:`IncompleteResultError` with everything else.
    """
    timestamps = sorted({a.timestamp for o in outcomes for a in o.answers})
    if len(timestamps) > 1:
        if consistency != "ignore":
            raise inconsistent_error(outcomes, timestamps, consistency, max_refetch_rounds)
        logger.warning(
            "%s: chunks came from different materializations %s; consistency='ignore' "
            "keeps them all and reports the newest",
            _what(outcomes),
            timestamps,
        )
    results = {o.prop: o.merged() for o in outcomes}
    failing = [o for o in outcomes if o.failures]
    if not failing:
        return results
    several = len(outcomes) > 1
    reasons, errors = _all_reasons(failing, several=several)
    fetched = any(o.answers or o.delivered for o in outcomes)
    if not fetched and not isinstance(errors[0], DeadlineExceededError):
        raise with_partial(errors[0], outcomes, consistency=consistency, streaming=streaming)
    chunks = sum(len(o.failures) for o in failing)
    kept = results[failing[0].prop]
    where = (
        "were yielded already"
        if streaming
        else ("are in .results" if several else f"({len(kept) + len(kept.missing)}) are in .result")
    )
    raise IncompleteResultError(
        f"{_what(outcomes)}: {len(reasons)} of {len(outcomes[0].ids)} segment(s) could not "
        f"be fetched ({chunks} chunk(s) failed; first: {errors[0]}). The others {where}, "
        "the failed ones in .failures",
        result=kept,
        failures=reasons,
        errors=tuple(errors),
        results=results if several else None,
    ) from errors[0]


def with_partial(
    error: BrainCircuitsError,
    outcomes: Sequence[Outcome],
    *,
    consistency: Consistency,
    streaming: bool = False,
) -> BrainCircuitsError:
    """``error``, carrying what the calls fetched before it as ``.result`` and ``.results``.

    Outside ``consistency="ignore"`` only the chunks of the newest materialization
    are kept, so a partial result never mixes two. A stream keeps nothing: its
    chunks were handed on already.
    """
    if streaming:
        return error
    newest = max((a.timestamp for o in outcomes for a in o.answers), default=None)
    results = {
        o.prop: o.merged(
            o.answers
            if consistency == "ignore"
            else [a for a in o.answers if a.timestamp == newest]
        )
        for o in outcomes
    }
    error.results = results
    error.result = results[outcomes[0].prop]
    return error


def _all_reasons(
    outcomes: Sequence[Outcome], *, several: bool
) -> tuple[dict[int, str], list[BrainCircuitsError]]:
    """Every failed segment's reasons across ``outcomes``, each named by its property
    when there are ``several``, and the distinct errors."""
    reasons: dict[int, str] = {}
    errors: list[BrainCircuitsError] = []
    for outcome in outcomes:
        own, own_errors = failure_reasons(outcome.failures, outcome.ids)
        for segment, reason in own.items():
            text = f"{outcome.prop}: {reason}" if several else reason
            reasons[segment] = f"{reasons[segment]}; {text}" if segment in reasons else text
        errors.extend(e for e in own_errors if e not in errors)
    return reasons, errors


def _what(outcomes: Sequence[Outcome]) -> str:
    """What the calls fetched, for messages: ``size (project 'p')``."""
    props = outcomes[0].prop if len(outcomes) == 1 else str([o.prop for o in outcomes])
    return f"{props} (project {outcomes[0].project!r})"


def inconsistent_error(
    outcomes: Sequence[Outcome],
    timestamps: Sequence[int],
    consistency: Consistency,
    max_refetch_rounds: int,
) -> InconsistentMaterializationError:
    """The error for answers from several materializations, keeping every result."""
    why = (
        "consistency='strict' and chunks came from different materializations"
        if consistency == "strict"
        else f"chunks still disagree after {max_refetch_rounds} re-fetch round(s)"
    )
    if consistency == "refetch":
        advice = "raise max_refetch_rounds, or fetch again later"
    elif any(a.stored for o in outcomes for a in o.answers):
        advice = (
            "the result store holds values from another materialization: use "
            "consistency='refetch' to fetch them again (or drop them with store.prune())"
        )
    else:
        advice = "fetch again, or use consistency='refetch' to re-fetch stale chunks"
    newest = max(timestamps)
    # The property to show first: one whose own chunks disagree, or lag the newest.
    worst = next(
        o
        for o in outcomes
        if len({a.timestamp for a in o.answers}) > 1
        or max((a.timestamp for a in o.answers), default=newest) != newest
    )
    results = {o.prop: o.merged() for o in outcomes}
    reasons, _ = _all_reasons(outcomes, several=len(outcomes) > 1)
    return InconsistentMaterializationError(
        f"{_what(outcomes)}: {why}: timestamps {list(timestamps)}. The dataset was "
        f"re-materialized during the fetch; {advice}",
        timestamps=tuple(timestamps),
        result=results[worst.prop],
        segment_timestamps={
            segment: answer.timestamp for answer in worst.answers for segment, _ in answer.items()
        },
        failures=reasons,
        results=results if len(outcomes) > 1 else None,
    )


def stream_disagreement(
    answer: ChunkAnswer, reference: int | None, why: str, *, prop: str, project: str
) -> InconsistentMaterializationError:
    """The error that ends a stream at a chunk from another materialization."""
    timestamps = tuple(
        sorted({answer.timestamp, answer.timestamp if reference is None else reference})
    )
    return InconsistentMaterializationError(
        f"{prop} (project {project!r}): the stream's chunks came from materializations "
        f"{list(timestamps)}, and {why}; start the stream again to read one materialization",
        timestamps=timestamps,
        result=chunk_result(answer, prop, project),
        segment_timestamps=dict.fromkeys((s for s, _ in answer.items()), answer.timestamp),
    )
