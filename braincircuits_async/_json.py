"""Reading answer bodies as JSON: the same verdict with orjson or the standard library.

orjson (the ``fast`` extra) parses answers about three times faster, but differs from
the standard library at the edges: integers beyond 64 bits, NaN, nesting depth, and
keys that repeat. Here both give the same value or the same refusal for every body,
and whether a key repeats where it matters (the top level, ``results``) is proved by
cheap counts, with an exact check for the bodies they cannot clear.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

_fast_loads: Callable[[bytes], Any] | None
_fast_dumps: Callable[[Any], bytes] | None
try:  # The `fast` extra: orjson parses answers about three times faster.
    from orjson import dumps as _fast_dumps
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = _fast_dumps = None

#: The deepest nesting of arrays and objects a body may have (answers have 3 to 6).
#: Both parsers refuse deeper bodies alike: orjson refuses beyond its fixed 1,024, and
#: the standard library stops where the recursion limit does, which depends on how deep
#: the caller's stack is. 960 is below the one and, from a fresh thread, within the other
#: (it reaches ~990 levels under Python's default limit of 1,000).
MAX_DEPTH = 960
# orjson's limit is fixed, so a body wrapped in this many arrays reaches it only if it
# nests deeper than MAX_DEPTH: the check costs orjson a few us instead of a scan.
_WRAP = 1024 - MAX_DEPTH
_OPEN, _CLOSE = b"[" * _WRAP, b"]" * _WRAP
_REFUSED = object()
_CONTAINERS = frozenset({dict, list})

# orjson turns integers beyond 64 bits into floats, silently: above 2**64 - 1 (20
# digits or more) and below -2**63 (a minus and 19 digits or more). Bodies with such
# runs go to the standard library instead, which keeps every integer exact. The same
# translation maps JSON's whitespace to spaces, for the duplicate-key proof below.
_DIGITS = bytes.maketrans(b"123456789\t\n\r", b"000000000   ")
_LONG_NUMBER = b"0" * 20
_LONG_NEGATIVE = b"-" + b"0" * 19


class TooDeep(ValueError):
    """A body nested deeper than MAX_DEPTH (refused alike by both parsers)."""


def _has_long_number(body: bytes, digits: bytes) -> bool:
    # Substring searches in C: ~10 us each for a 500-segment answer; the negative one
    # only when there is a minus sign at all (a memchr, well under 1 us).
    return _LONG_NUMBER in digits or (b"-" in body and _LONG_NEGATIVE in digits)


def _orjson(body: bytes) -> Any:
    """orjson's reading of ``body``, or _REFUSED (not JSON, or nested too deep)."""
    assert _fast_loads is not None
    try:
        value = _fast_loads(b"".join((_OPEN, body, _CLOSE)))  # one copy, not two
    except ValueError:
        return _REFUSED
    # Each wrapper must hold exactly one element: a body that closes one of them
    # ("1],[2") or is empty would otherwise pass for JSON.
    for _ in range(_WRAP):
        if len(value) != 1:
            return _REFUSED
        value = value[0]
    return value


def _too_deep(value: Any) -> bool:
    """Whether arrays and objects nest deeper than MAX_DEPTH in a parsed value.

    Level by level with ``gc.get_referents``, in C: a dict gives its values (and
    perhaps its keys, strings), a list its items, and numbers and strings nothing, so
    the levels run out after as many steps as the deepest non-empty array or object is
    deep (an empty one is one level more). Strings cannot fool it, as a scan of the
    text could be, and it never recurses.
    """
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = gc.get_referents(*level)
        if not level:
            return False
    # MAX_DEPTH levels of non-empty ones: anything below, even an empty [], is too deep.
    return bool(gc.get_referents(*level)) or not _CONTAINERS.isdisjoint(map(type, level))


def _in_fresh_thread(body: bytes, hook: Callable[[Any], Any] | None) -> Any:
    """``json.loads`` on a new thread, whose recursion budget does not depend on the caller."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(json.loads(body, object_pairs_hook=hook))
        except BaseException as error:  # handed to the caller as it is
            outcome.append(error)

    thread = threading.Thread(target=run, name="braincircuits-json", daemon=True)
    thread.start()
    thread.join()
    if isinstance(outcome[0], RecursionError):
        raise TooDeep from None
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _stdlib(body: bytes, hook: Callable[[Any], Any] | None = None) -> Any:
    """The standard library's reading of ``body``, the same however deep the caller's stack.

    Where the caller's recursion budget may have decided, a fresh thread has the last
    word: after a RecursionError, and after an error found past MAX_DEPTH characters
    (it may lie deeper than the fresh thread gets before its own RecursionError). A
    body read in full is checked for its depth. This holds with a recursion limit of
    at least MAX_DEPTH + 40 (Python's default is 1,000).
    """
    try:
        value = json.loads(body, object_pairs_hook=hook)
    except RecursionError:
        value = _in_fresh_thread(body, hook)
    except ValueError as error:
        if getattr(error, "pos", 0) <= MAX_DEPTH:
            raise
        value = _in_fresh_thread(body, hook)
    # A body of n bytes nests at most n / 2 deep.
    if len(body) > 2 * MAX_DEPTH and _too_deep(value):
        raise TooDeep
    return value


class Reading(NamedTuple):
    """A body's value; its digits translation, when worked out; whether it is exact."""

    value: Any
    digits: bytes | None
    #: orjson writes ``value`` back as ``body``, byte for byte: so no key of the body
    #: repeats, no integer was turned into a float, and the standard library reads
    #: the same value. (orjson writes nothing nested deeper than about 254 levels, so
    #: deeper bodies always take the scans.)
    written_back: bool = False


def parse(body: bytes) -> Reading:
    """The value of ``body``, the same with orjson or the standard library.

    A compact body without fractions (what orjson, Starlette or
    ``separators=(",", ":")`` write for integers) is first read by orjson and
    written back: when that gives the body again, the reading is exact, and both
    scans of the text (for long integers here, for repeated keys in
    :func:`keys_are_unique`) are spared (500 ``link_pre`` answers: 27 us against
    39; ``connectivity``: 138 against 226).
    """
    if _fast_loads is None:
        return Reading(_stdlib(body), None)
    head = body[:256]
    # Compact, and without fractions: writers disagree on how to write a float (0.0000,
    # 1e-05, 0.00001), so a body with one is seldom orjson's own, and writing it
    # back would be wasted (a third of a parse).
    if b'": ' not in head and b", " not in head and b"." not in body:
        value = _orjson(body)
        if value is _REFUSED:
            return Reading(_stdlib(body), None)
        if _written_by_orjson(body, value):
            return Reading(value, None, written_back=True)
        digits = body.translate(_DIGITS)
        return Reading(_stdlib(body) if _has_long_number(body, digits) else value, digits)
    digits = body.translate(_DIGITS)
    if not _has_long_number(body, digits):
        value = _orjson(body)
        if value is not _REFUSED:
            return Reading(value, digits)
    return Reading(_stdlib(body), digits)


def loads(body: bytes) -> Any:
    """Parse JSON with orjson when it is installed, else with the standard library.

    Bodies orjson could get wrong (integers beyond 64 bits) or refuses (NaN, ...)
    go to the standard library, so the result never depends on which is installed.
    Nesting deeper than :data:`MAX_DEPTH` is a ``ValueError`` with either, however deep
    the caller's stack is.
    """
    return parse(body)[0]


def request_body(ids: Sequence[int]) -> tuple[bytes, list[str]]:
    """The body of a request for ``ids`` (checked ints), and their decimal strings.

    The strings are the keys the answer's ``results`` uses. orjson writes the ids
    in C, and splitting its text costs two thirds of ``str`` on each id (500 ids:
    30 us against 44).
    """
    if _fast_dumps is not None and ids:
        listed = _fast_dumps(ids if isinstance(ids, list) else list(ids))
        return b'{"segments":' + listed + b"}", listed[1:-1].decode().split(",")
    keys = list(map(str, ids))
    return ('{"segments":[' + ",".join(keys) + "]}").encode(), keys


__all__ = [
    "MAX_DEPTH",
    "Reading",
    "TooDeep",
    "keys_are_unique",
    "loads",
    "parse",
    "repeated_key",
    "request_body",
]


_MATERIALIZED = b'"materialized_timestamp"'
_RESULTS = b'"results"'


def keys_are_unique(
    body: bytes, digits: bytes | None, data: dict[str, Any], results: dict[str, dict[str, Any]]
) -> bool:
    """Whether cheap counts prove that no key repeats at the top level or in ``results``.

    ``False`` means "not proved" (the exact check decides). Three proofs:

    1. Outside strings a colon only ever ends a key, so the body has at least as many
       colons as the parsed objects have keys; as many as a count that can only fall
       short of those keys means no object lost a key to a repeat. Holds for any
       spacing and escapes.
    2. orjson writes each key of a dict once: a body that is byte for byte what orjson
       writes for the parsed value repeats no key.
    3. Without a backslash every key is written as it reads, so one occurrence each of
       ``"materialized_timestamp"`` and ``"results"`` means neither repeats; and every
       key of ``results`` is decimal, so when no whitespace precedes a colon, each raw
       key of ``results`` is one occurrence of digit-quote-colon: as many as
       ``len(results)`` means none repeats. Digit-ending keys elsewhere only add to the
       count, so they can make the proof fail, never pass wrongly.
    """
    values = list(results.values())  # all objects: parse_answer checked them
    # Values with arrays or objects inside (connectivity): orjson's writing is cheaper.
    nested = bool(values) and not _CONTAINERS.isdisjoint(map(type, values[0].values()))
    if nested and _written_by_orjson(body, data):
        return True
    keys = len(data) + len(results) + sum(map(len, values))
    if body.count(b":") == keys + (_keys_below(values) if nested else 0):
        return True
    if not nested and _written_by_orjson(body, data):
        return True
    if b"\\" in body:
        return False
    if digits is None:
        digits = body.translate(_DIGITS)
    return (
        (b" " not in digits or b" :" not in digits)
        and body.find(_MATERIALIZED) == body.rfind(_MATERIALIZED)
        and body.find(_RESULTS) == body.rfind(_RESULTS)
        and digits.count(b'0":') == len(results)
    )


def _written_by_orjson(body: bytes, data: Any) -> bool:
    if _fast_dumps is None:
        return False
    try:
        return _fast_dumps(data) == body
    except TypeError:  # integers beyond 64 bits
        return False


def _keys_below(objects: list[dict[str, Any]]) -> int:
    """The keys of the objects nested in ``objects``, or fewer: never more.

    Level by level in C: ``gc.get_referents`` gives a level's values and items, and a
    level that begins with an object is counted if it holds only objects (nested arrays
    of objects, like connectivity's, are counted in full). It stops at a level that
    begins with a plain value, or an object level that mixes, and then counts fewer.
    """
    count = 0
    level = gc.get_referents(*objects)
    while level and type(level[0]) in _CONTAINERS:
        if type(level[0]) is dict:
            try:
                # dict.__len__, not len: a string or array among them must stop the count.
                count += sum(map(dict.__len__, level))
            except TypeError:
                break
        level = gc.get_referents(*level)
    return count


def repeated_key(body: bytes) -> str | None:
    """What repeats at the top level or in ``results``, as the standard library reads it.

    The slow, exact check for bodies the counts could not clear. Repeats deeper inside
    a value are let through: both parsers keep the last value, so the result does not
    depend on which is installed, and refusing them would cost this check on every
    answer with nested values.
    """
    repeats: list[tuple[dict[str, Any], list[str]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            # The dict itself is kept, not its id: a dropped one's id may be reused.
            repeats.append((obj, [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]))
        return obj

    data = _stdlib(body, pairs_hook)
    for obj, names in repeats:
        if obj is data:
            for name in ("materialized_timestamp", "results"):
                if name in names:
                    return f"the key {name!r} appears more than once"
        elif obj is data["results"]:
            # The keys of results were checked: they are requested decimal ids.
            return f"segment {names[0]} appears more than once in 'results'"
    return None
