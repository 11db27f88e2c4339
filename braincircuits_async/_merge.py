"""Parsing one chunk's answer, and the materialization bookkeeping across chunks.

Pure functions: they see bytes and ids, never the network. A chunk answer is
accepted only if it is exactly the documented shape and covers only the ids
that chunk asked for, so a wrong answer can never slip into a merged result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, is_not
from typing import Any

from ._exceptions import MalformedResponseError, excerpt
from ._json import MAX_DEPTH, TooDeep, keys_are_unique, loads, parse, repeated_key
from ._models import SegmentPropertyResult

__all__ = [
    "MAX_DEPTH",
    "ChunkAnswer",
    "chunk_result",
    "loads",
    "merge_answers",
    "newest_timestamp",
    "parse_answer",
]

Redact = Callable[[str], str]

#: Timestamps are UNIX seconds; beyond SQLite's (and numpy's) int64 nothing is a date.
MAX_TIMESTAMP = 2**63


def _unchanged(text: str) -> str:
    return text


@dataclass(frozen=True, slots=True)
class ChunkAnswer:
    """What one request returned, aligned with the ids it asked for.

    ``values[i]`` is the value of ``ids[i]``, or ``None`` when the server left
    that id out. A list, not a dict: it costs 8 bytes a segment until the final
    merge, where a dict per chunk would cost about ten times that.
    """

    start: int
    end: int
    timestamp: int
    ids: list[int]
    values: list[dict[str, Any] | None]
    #: Read from a result store, not fetched: it cannot tell the server's materialization.
    stored: bool = False

    def __repr__(self) -> str:
        # Counts, not the lists: a traceback's locals would otherwise print every value.
        returned = len(self.values) - self.values.count(None)
        return (
            f"ChunkAnswer(start={self.start}, end={self.end}, timestamp={self.timestamp}, "
            f"ids=<{len(self.ids)} ids>, values=<{returned} returned>, stored={self.stored})"
        )

    def items(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(segment, value)`` for the ids the server returned, in request order."""
        present = map(is_not, self.values, repeat(None))
        return compress(zip(self.ids, self.values, strict=True), present)  # type: ignore[arg-type]

    @property
    def missing(self) -> list[int]:
        """The ids the server left out, in request order."""
        return list(compress(self.ids, map(is_, self.values, repeat(None))))


def _malformed(
    message: str, body: bytes, redact: Redact, *, transient: bool = False
) -> MalformedResponseError:
    """The error for an unusable answer, built with every token echo already blanked."""
    # Blanked before and after the cut, so no piece of a token survives the cut either;
    # the first cut is marked too, so a token's start cut off there is blanked as well.
    text = body[:2000].decode("utf-8", "replace") + ("…" if len(body) > 2000 else "")
    shown = redact(excerpt(redact(text)))
    return MalformedResponseError(redact(message), body=shown, transient=transient)


def parse_answer(
    body: bytes,
    ids: Sequence[int],
    keys: Sequence[str],
    *,
    start: int,
    describe: str,
    redact: Redact = _unchanged,
) -> ChunkAnswer:
    """Parse one 200 answer for the chunk ``ids`` (whose decimal strings are ``keys``).

    Raises :class:`MalformedResponseError`: ``transient`` when the body cannot be
    read as JSON at all (cut short, empty, an HTML page), which is worth a retry,
    and not transient when it is JSON of the wrong shape: that includes a key repeated
    at the top level or in ``results`` (which value the server meant is unknown) and
    nesting deeper than :data:`MAX_DEPTH`, refused alike whichever parser is installed.
    ``redact`` blanks the tokens in the text an error quotes (a server may echo
    request headers).
    """

    def wrong(problem: str) -> MalformedResponseError:
        return _malformed(
            f"{describe}: the answer is not the documented shape ({problem})", body, redact
        )

    try:
        data, digits, written_back = parse(body)
    except TooDeep:
        raise wrong(f"arrays and objects nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, RecursionError) as error:
        problem = "empty body" if not body.strip() else f"not JSON: {error}"
        raise _malformed(
            f"{describe}: the answer could not be read ({problem})", body, redact, transient=True
        ) from None

    if not isinstance(data, dict):
        raise wrong(f"top level is a JSON {type(data).__name__}, not an object")
    timestamp = data.get("materialized_timestamp")
    if (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int)
        or not 0 <= timestamp < MAX_TIMESTAMP
    ):
        problem = (
            "no 'materialized_timestamp'"
            if timestamp is None
            else f"'materialized_timestamp' is {str(timestamp)[:30]}, not UNIX seconds "
            "(an integer from 0 to 2**63 - 1)"
        )
        raise wrong(problem)
    results = data.get("results")
    if not isinstance(results, dict):
        raise wrong("no 'results'" if results is None else "'results' is not an object")

    # All in C: one lookup per requested id, then counts and type checks.
    values = list(map(results.get, keys))
    if len(values) - values.count(None) != len(results):
        raise wrong(_unexpected_keys(results, keys, redact))
    if not set(map(type, values)) <= {dict, type(None)}:
        bad = next(i for i, v in enumerate(values) if v is not None and type(v) is not dict)
        raise wrong(
            f"the value for segment {ids[bad]} is {type(values[bad]).__name__}, not an object"
        )
    # Both parsers keep a repeated key's last value; which one the server meant is unknown.
    if not (written_back or keys_are_unique(body, digits, data, results)):
        repeated = repeated_key(body)
        if repeated is not None:
            raise wrong(repeated)
    return ChunkAnswer(start, start + len(ids), timestamp, list(ids), values)


def _unexpected_keys(results: dict[str, Any], keys: Sequence[str], redact: Redact) -> str:
    asked = set(keys)
    for key, value in results.items():
        if key not in asked:
            if not (key.isascii() and key.isdigit()):
                # Blanked before the cut: a token used as a key must not leave its start.
                return f"result key {redact(key)[:40]!r} is not a decimal segment id"
            return f"segment {key} was not requested in this chunk"
        if value is None:
            return f"the value for segment {key} is null"
    return "unexpected result keys"  # pragma: no cover - len mismatch always has a cause


def newest_timestamp(answers: Iterable[ChunkAnswer]) -> int | None:
    """The newest materialization among ``answers`` (``None`` if there are none)."""
    return max((answer.timestamp for answer in answers), default=None)


def chunk_result(answer: ChunkAnswer, prop: str, project: str) -> SegmentPropertyResult:
    """One chunk's answer as a result of its own (what a stream hands on)."""
    return SegmentPropertyResult(
        dict(answer.items()),
        property=prop,
        project=project,
        materialized_timestamp=answer.timestamp,
        missing=tuple(answer.missing),
    )


def merge_answers(
    answers: Iterable[ChunkAnswer],
    prop: str,
    project: str,
    *,
    order: Sequence[int] | None = None,
) -> SegmentPropertyResult:
    """Chunk answers merged in request order (by their start in the id list).

    ``order`` is the request order when the answers' id list is in another one
    (a store's plan puts the ids to fetch first). The result reports the newest
    materialization among them; whether they may be merged at all is
    :func:`~braincircuits_async._policy.settle`'s decision.
    """
    ordered = sorted(answers, key=lambda answer: answer.start)
    data: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    for answer in ordered:
        # Every pair, then the missing ones (None) out: half the cost of filtering each
        # answer's pairs (100,000 segments: 7 ms against 13).
        data.update(zip(answer.ids, answer.values, strict=True))  # type: ignore[arg-type]
        missing.extend(answer.missing)
    if len(data) != sum(len(answer.ids) for answer in ordered):
        # Answers that share ids (none do: one answer per slice of the id list): a
        # deletion could hit another's value, so each answer's pairs are filtered.
        data = {}
        for answer in ordered:
            data.update(answer.items())
    else:
        for segment in missing:
            del data[segment]
        if 4 * len(missing) > len(data):
            data = dict(data)  # a dict keeps its size when keys go: mostly missing, compact it
    if order is not None:
        unknown = set(missing)
        missing = [s for s in order if s in unknown]
        data = {s: data[s] for s in order if s in data}
    return SegmentPropertyResult(
        data,
        property=prop,
        project=project,
        materialized_timestamp=newest_timestamp(ordered),
        missing=tuple(missing),
    )
