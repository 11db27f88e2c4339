"""Validating segment ids and names, de-duplicating ids and splitting them into chunks.

Everything here is pure and runs before any request, so a bad id or name
never costs a round trip and never leaves half a job done.
"""

from __future__ import annotations

import difflib
import itertools
import operator
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

import anyio.lowlevel

from ._config import DOCUMENTED_PROJECTS, DOCUMENTED_PROPERTIES
from ._exceptions import InvalidArgumentError, InvalidSegmentError

__all__ = [
    "MAX_SEGMENT_ID",
    "chunk_slices",
    "normalize_segments",
    "normalize_segments_async",
    "not_found_hint",
    "validate_project",
    "validate_properties",
    "validate_property",
]

#: Segment ids are unsigned 64-bit integers.
MAX_SEGMENT_ID = 2**64 - 1

_PROPERTY_RE = re.compile(r"[A-Za-z0-9_-]+")
_PROJECT_RE = re.compile(r"[A-Za-z0-9_.-]+")


def validate_property(name: object) -> str:
    """Return ``name`` if it is a valid property name (letters, digits, ``_``, ``-``)."""
    if not isinstance(name, str):
        raise InvalidArgumentError(
            f"property must be a string such as 'link_pre', not {type(name).__name__}"
        )
    if not _PROPERTY_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"property {name!r} is not a valid name: use only letters, digits, '_' and '-' "
            "(for example 'link_pre', 'size', 'connectivity')"
        )
    return name


def _did_you_mean(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close and close[0] != name else ""


def not_found_hint(prop: str, project: str, detail: str) -> str:
    """What to say about a 404: which name is unknown, the documented ones, a close one.

    The server's ``detail`` tells which name it does not know ("unknown project
    ..."); without one (a plain "Not Found") both names, and the address, are
    suspects.
    """
    text = detail.lower()
    projects = ", ".join(DOCUMENTED_PROJECTS)
    properties = ", ".join(DOCUMENTED_PROPERTIES)
    if "project" in text and "propert" not in text:
        return (
            f" (project {project!r} is not known there; the documented projects are "
            f"{projects}{_did_you_mean(project, DOCUMENTED_PROJECTS)})"
        )
    if "propert" in text:
        return (
            f" (property {prop!r} is not known in project {project!r}; the documented "
            f"properties are {properties}{_did_you_mean(prop, DOCUMENTED_PROPERTIES)})"
        )
    guesses = _did_you_mean(prop, DOCUMENTED_PROPERTIES) or _did_you_mean(
        project, DOCUMENTED_PROJECTS
    )
    return (
        f" (check the property and project names, and base_url: the documented properties "
        f"are {properties}, the projects {projects}{guesses})"
    )


def validate_properties(names: Iterable[str]) -> list[str]:
    """The property names in ``names``, validated, de-duplicated, in the order given."""
    if isinstance(names, str):
        raise InvalidArgumentError(
            "properties must be a list of property names such as ['size', 'link_pre'], "
            "not a single string"
        )
    props = list(dict.fromkeys(validate_property(p) for p in names))
    if not props:
        raise InvalidArgumentError("no property given: pass at least one, e.g. ['link_pre']")
    return props


def validate_project(name: object) -> str:
    """Return ``name`` if it is a valid project name, else explain how to pass one."""
    if name is None:
        raise InvalidArgumentError(
            "no project given: pass project= to fetch_property() or to AsyncClient() "
            "(for example project='fruitfly_fafb_flywire')"
        )
    if not isinstance(name, str):
        raise InvalidArgumentError(f"project must be a string, not {type(name).__name__}")
    if not _PROJECT_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"project {name!r} is not a valid name: use only letters, digits, '_', '-' and '.'"
        )
    return name


def _is_ndarray(obj: object) -> bool:
    # numpy is optional: recognise arrays by their interface, never import numpy here.
    return hasattr(obj, "dtype") and hasattr(obj, "ndim") and hasattr(obj, "tolist")


def _one_id(value: Any, position: int) -> int:
    """Convert one id, or raise an error that names the value and its position."""
    where = f"segment at position {position}"
    kind = getattr(getattr(value, "dtype", None), "kind", "")  # numpy scalars
    if isinstance(value, bool) or kind == "b":
        raise InvalidSegmentError(
            f"{where} is a boolean ({value!r}), not a segment id",
            position=position,
            value=repr(value),
        )
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 40:
            raise InvalidSegmentError(
                f"{where} is the string {value!r}, which is not a decimal segment id",
                position=position,
                value=repr(value),
            )
        number = int(text)
    elif isinstance(value, float) or kind in ("f", "c"):
        raise InvalidSegmentError(
            f"{where} is a float ({value!r}); segment ids are integers (a float cannot hold "
            "an 18-digit id exactly, so convert from the original integers or strings)",
            position=position,
            value=repr(value),
        )
    else:
        try:
            number = operator.index(value)
        except TypeError:
            hint = " (nested lists are not accepted: flatten them)" if _is_sequence(value) else ""
            raise InvalidSegmentError(
                f"{where} is {value!r} of type {type(value).__name__}, "
                f"not an integer segment id{hint}",
                position=position,
                value=repr(value),
            ) from None
    if not 0 <= number <= MAX_SEGMENT_ID:
        raise InvalidSegmentError(
            f"{where} is {number}, outside the segment id range [0, 2**64)",
            position=position,
            value=repr(value),
        )
    return number


def _is_sequence(value: object) -> bool:
    if _is_ndarray(value):
        return bool(getattr(value, "ndim", 0))
    return isinstance(value, (list, tuple, set, frozenset))


#: Ids checked per step of :func:`normalize_steps`: a few milliseconds of work each.
SLICE = 50_000


def normalize_segments(segments: Iterable[Any]) -> list[int]:
    """Validate ``segments`` and return them as unique ints in first-seen order.

    Accepts any iterable of Python ints, numpy integers (scalars or a 1-d integer
    array) and decimal strings. Raises :class:`InvalidSegmentError` (a
    ``ValueError`` and ``TypeError``) naming the first bad value and its position.
    """
    steps = normalize_steps(segments)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def normalize_segments_async(segments: Iterable[Any]) -> list[int]:
    """:func:`normalize_segments` with a checkpoint between steps of :data:`SLICE` ids.

    A million ids take ~150 ms, mostly in single C calls (``set``, ``min``, ``max``)
    that a worker thread could not interleave with the event loop (they hold the
    GIL throughout); in slices, a stretch takes 5-10 ms, except where the set of
    distinct ids grows past ~630,000 and is rehashed in one step (20-35 ms).
    """
    steps = normalize_steps(segments)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await anyio.lowlevel.checkpoint()


def normalize_steps(segments: Iterable[Any]) -> Generator[None, None, list[int]]:
    """The work of :func:`normalize_segments`, yielding after every :data:`SLICE` ids."""
    if (
        isinstance(segments, (str, bytes, bytearray))
        or not hasattr(segments, "__iter__")
        or (_is_ndarray(segments) and getattr(segments, "ndim", 1) == 0)
    ):
        raise InvalidSegmentError(
            "segments must be an iterable of segment ids (a list, tuple, numpy array, ...), "
            f"not {type(segments).__name__}; wrap a single id in a list: [720575940634474894]",
            position=None,
        )
    pieces: Iterator[Any]
    if _is_ndarray(segments):
        kind = segments.dtype.kind  # type: ignore[attr-defined]
        if segments.ndim != 1:  # type: ignore[attr-defined]
            raise InvalidSegmentError(
                f"segments must be a 1-d array, not {segments.ndim}-d; flatten it first",  # type: ignore[attr-defined]
                position=None,
            )
        array: Any = segments
        # tolist() yields Python ints (only the range remains to be checked), a slice
        # at a time; other dtypes (floats, objects) are checked value by value.
        pieces = (
            array[i : i + SLICE].tolist() if kind in "iu" else list(array[i : i + SLICE])
            for i in range(0, len(array), SLICE)
        )
    elif isinstance(segments, (list, tuple)):
        sequence: Sequence[Any] = segments
        pieces = (sequence[i : i + SLICE] for i in range(0, len(sequence), SLICE))
    else:
        iterator = iter(segments)
        pieces = iter(lambda: list(itertools.islice(iterator, SLICE)), [])
    ids: list[int] = []
    distinct: set[int] = set()
    for piece in pieces:
        # Fast path, entirely in C: plain ints inside the range.
        if not (
            set(map(type, piece)) == {int} and min(piece) >= 0 and max(piece) <= MAX_SEGMENT_ID
        ):
            piece = [_one_id(v, len(ids) + i) for i, v in enumerate(piece)]
        ids.extend(piece)
        distinct.update(piece)
        yield
    if len(distinct) == len(ids):
        return ids  # no repeats (the common case): a set proves it at half a dict's cost
    del distinct
    # Repeats: the first of each, in order, a slice at a time (as pairs: merging a
    # dict into a large one costs about twice as much).
    first: dict[int, None] = {}
    for start in range(0, len(ids), SLICE):
        first.update(zip(ids[start : start + SLICE], itertools.repeat(None)))
        yield
    return list(first)


def chunk_slices(total: int, size: int) -> list[tuple[int, int]]:
    """The chunks of an id list of ``total`` ids: slices ``(start, end)`` of ``size`` ids
    (the last one may be shorter), in order."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]
