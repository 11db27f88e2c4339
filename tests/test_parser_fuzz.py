"""Fuzzing the answer parser: any body gives a right answer or MalformedResponseError.

`parse_answer` stands between the network and the merged result, so it must never
let a wrong value through and never fail with a ``KeyError`` or ``TypeError`` from
deep inside. Hypothesis feeds it arbitrary JSON, near-valid answers (the documented
keys holding anything, results keyed by requested ids, other ids and other strings,
repeated keys) and arbitrary bytes. Every example goes through both JSON parsers,
orjson (the ``fast`` extra, used when installed) and the standard library alone, and
both must come to the same outcome.

The oracle is the standard library's own reading of the body, which keeps every
integer exact: whenever the parser returns, each value must be identical to it (same
types too, so an integer that came back as a float counts as wrong), and the body must
not repeat a key at the top level or in ``results`` (which the parser refuses). When
both parsers refuse, they must refuse alike (the same message, equally transient).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from braincircuits_async import MalformedResponseError, _json
from braincircuits_async._merge import ChunkAnswer, parse_answer
from braincircuits_async.testing import DOCUMENTED_PROPERTIES, FakeBrainCircuits

DESCRIBE = "chunk 3 of link_pre (ids 1500-1999)"
START = 1500

# The autouse `_clean_env` fixture only sets environment variables, which every
# example may share; moderate example counts keep the file to a few seconds.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@contextlib.contextmanager
def stdlib_only() -> Iterator[None]:
    """Make `_json.loads` use only the standard library, as without orjson."""
    with (
        mock.patch.object(_json, "_fast_loads", None),
        mock.patch.object(_json, "_fast_dumps", None),
    ):
        yield


# --- strategies ------------------------------------------------------------------------

SEGMENT = st.integers(min_value=0, max_value=2**64 - 1)


INTEGERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(),  # arbitrary size, beyond 64 bits
    # Near the edges where JSON parsers differ: float precision, int64, uint64, 20 digits.
    st.sampled_from([0, 2**53, 2**63, 2**64, 10**19, 10**20]).flatmap(
        lambda edge: st.integers(edge - 3, edge + 3) | st.integers(-edge - 3, -edge + 3)
    ),
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
# Lone surrogates included: JSON can escape them (``"\ud800"``) though UTF-8 cannot.
TEXT = st.text(st.characters(codec=None), max_size=12)

JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | FLOATS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
# Smaller values for inside answers, where there are several per example.
SMALL_JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | FLOATS | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=4,
)
JSON_OBJECT = st.dictionaries(TEXT, SMALL_JSON, max_size=3)


@st.composite
def chunk_ids(draw: st.DrawFn) -> list[int]:
    """The ids of one chunk, as the client sends them: distinct, in request order."""
    return draw(st.lists(SEGMENT, unique=True, max_size=8))


@st.composite
def other_keys(draw: st.DrawFn, ids: list[int]) -> str:
    """A results key that is not one of the chunk's decimal ids."""
    asked = set(map(str, ids))
    candidates = [
        st.builds(str, SEGMENT),  # an id this chunk did not ask for
        TEXT,
        st.sampled_from(["", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x1", "١٢٣", "null"]),
    ]
    if ids:
        requested = st.sampled_from(ids)
        candidates += [
            requested.map(lambda s: f"0{s}"),  # leading zero: the same number, not the key
            requested.map(lambda s: f"{s} "),
            requested.map(lambda s: f"+{s}"),
            requested.map(lambda s: f"{s}.0"),
            requested.map(lambda s: str(s + 2**64)),
        ]
    key = draw(st.one_of(candidates))
    return key if key not in asked else f"{key}x"


def _dump(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Bodies with the documented keys, holding anything from right to very wrong."""
    ids = draw(chunk_ids())
    ascii_only = draw(st.booleans())

    # results: (key, value) pairs written out by hand, so a key can repeat.
    pairs: list[tuple[str, Any]] = []
    for segment in draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []:
        value = draw(st.one_of(JSON_OBJECT, JSON_OBJECT, JSON_OBJECT, SMALL_JSON))
        pairs.append((str(segment), value))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(other_keys(ids)), draw(SMALL_JSON)))
    if draw(st.booleans()) and pairs:
        key, _ = draw(st.sampled_from(pairs))  # a repeated key: refused
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(SMALL_JSON)))
    pairs = draw(st.permutations(pairs))
    results_text = draw(
        st.one_of(
            st.just(
                "{"
                + ", ".join(f"{_dump(k, ascii_only)}: {_dump(v, ascii_only)}" for k, v in pairs)
                + "}"
            ),
            JSON.map(lambda v: _dump(v, ascii_only)),  # results of the wrong type
        )
    )

    timestamp_text = draw(
        st.one_of(
            st.integers(min_value=-5, max_value=2**70).map(str),
            st.sampled_from(["0", "1677042002", "-1", "-0", "1.0", "1e9", "true", "null"]),
            JSON.map(lambda v: _dump(v, ascii_only)),
        )
    )
    members = [f'"materialized_timestamp": {timestamp_text}', f'"results": {results_text}']
    if draw(st.integers(0, 9)) == 0:  # a documented member repeated: refused
        members.append(draw(st.sampled_from(members)))
    for _ in range(draw(st.integers(0, 2))):  # unknown members, which may shadow ours
        members.append(f"{_dump(draw(TEXT), ascii_only)}: {_dump(draw(SMALL_JSON), ascii_only)}")
    if draw(st.integers(0, 9)) == 0:
        members.pop(draw(st.integers(0, len(members) - 1)))
    members = draw(st.permutations(members))
    text = "{" + ", ".join(members) + "}"
    body = text.encode("utf-8", "surrogatepass")
    # Now and then, damage it the way a network or a proxy might.
    damage = draw(st.integers(0, 7))
    if damage == 0 and body:
        body = body[: draw(st.integers(0, len(body) - 1))]  # cut short
    elif damage == 1 and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    elif damage == 2:
        body = draw(st.sampled_from([b"\xef\xbb\xbf", b" \n\t", b""])) + body
    return body, ids


def valid_values() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries(
            {
                "nr_pre": st.integers(0, 10**6),
                "nr_downstream_partner": st.integers(0, 10**6),
            }
        ),
        JSON_OBJECT,
    )


@st.composite
def valid_answers(draw: st.DrawFn) -> tuple[bytes, list[int], int, dict[str, Any]]:
    ids = draw(chunk_ids())
    known = [s for s in ids if draw(st.integers(0, 9))]  # about 10% unknown
    timestamp = draw(st.one_of(st.integers(0, 2**32), st.integers(0, 2**63 - 1)))
    results = {str(s): draw(valid_values()) for s in draw(st.permutations(known))}
    answer = {"materialized_timestamp": timestamp, "results": results}
    # Compact, spaced or pretty-printed: the check for repeated keys must clear them all.
    layout = draw(st.sampled_from([{"separators": (",", ":")}, {}, {"indent": 2}]))
    body = json.dumps(answer, ensure_ascii=draw(st.booleans()), **layout).encode(
        "utf-8", "surrogatepass"
    )
    return body, ids, timestamp, results


# --- the oracle ------------------------------------------------------------------------


def identical(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (NaN equals NaN, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(identical, a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def check(body: bytes, ids: list[int]) -> ChunkAnswer | None:
    """Parse with each JSON parser; the same outcome, and a right one, from both."""
    with stdlib_only():
        slow = check_one(body, ids)
    if _json._fast_loads is None:  # pragma: no cover - orjson is in the dev extra
        return slow if isinstance(slow, ChunkAnswer) else None
    fast = check_one(body, ids)
    if not isinstance(slow, ChunkAnswer) or not isinstance(fast, ChunkAnswer):
        assert not isinstance(slow, ChunkAnswer), "orjson refused what the stdlib accepted"
        assert not isinstance(fast, ChunkAnswer), "the stdlib refused what orjson accepted"
        assert (str(fast), fast.transient) == (str(slow), slow.transient)
        return None
    assert fast.timestamp == slow.timestamp
    assert fast.ids == slow.ids
    assert identical(fast.values, slow.values)
    return fast


def repeats(body: bytes) -> set[str]:
    """The keys the standard library sees repeated at the top level or in ``results``."""
    found: dict[int, set[str]] = {}
    kept: list[dict[str, Any]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        kept.append(obj)  # alive, so that ids stay unique
        names = [k for k, _ in pairs]
        found[id(obj)] = {k for k in names if names.count(k) > 1}
        return obj

    data = json.loads(body, object_pairs_hook=hook)
    top = found[id(data)] & {"materialized_timestamp", "results"}
    return top | found[id(data["results"])]


def check_one(body: bytes, ids: list[int]) -> ChunkAnswer | MalformedResponseError:
    """Parse; if it returns, check it against the standard library's reading."""
    keys = list(map(str, ids))
    # Anything but MalformedResponseError (KeyError, TypeError, ...) fails the test.
    refused: MalformedResponseError | None
    try:
        answer = parse_answer(body, ids, keys, start=START, describe=DESCRIBE)
    except MalformedResponseError as error:
        refused = error
    else:
        refused = None
    if refused is not None:
        assert str(refused).startswith(DESCRIBE)  # it names the chunk
        assert isinstance(refused.body, str)
        return refused

    data = json.loads(body)  # the body parsed, so the exact reader must agree
    assert type(data) is dict
    timestamp = data["materialized_timestamp"]
    assert type(answer.timestamp) is int
    assert type(timestamp) is int
    assert 0 <= answer.timestamp == timestamp < 2**63
    results = data["results"]
    assert type(results) is dict
    assert (answer.start, answer.end) == (START, START + len(ids))

    returned = list(answer.items())
    for segment, value in returned:
        assert segment in ids
        assert type(value) is dict
        assert identical(value, results[str(segment)])
    got = [segment for segment, _ in returned]
    assert got == [s for s in ids if str(s) in results]  # in request order
    assert answer.missing == [s for s in ids if str(s) not in results]
    assert not set(got) & set(answer.missing)
    # Nothing the chunk did not ask for was silently dropped: every key is accounted for.
    assert set(results) == {str(s) for s in got}
    # Nor was a value shadowed by a repeated key.
    assert not repeats(body)
    return answer


# --- tests -----------------------------------------------------------------------------


@FUZZ
@given(value=JSON, ids=chunk_ids(), ascii_only=st.booleans())
def test_arbitrary_json_gives_a_right_answer_or_malformed_response_error(
    value: Any, ids: list[int], ascii_only: bool
) -> None:
    check(_dump(value, ascii_only).encode("utf-8", "surrogatepass"), ids)


@FUZZ
@given(body_and_ids=near_valid_bodies())
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"01": {}}}', [1]))
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"1": null}}', [1]))
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"1": {}, "1": 3}}', [1]))
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"1": 3, "1": {}}}', [1]))
@example(body_and_ids=(b'{"materialized_timestamp": true, "results": {}}', []))
@example(body_and_ids=(b'{"materialized_timestamp": 18446744073709551616, "results": {}}', []))
@example(body_and_ids=(b'{"materialized_timestamp": 9223372036854775808, "results": {}}', []))
@example(body_and_ids=(b'{"materialized_timestamp": 1, "results": {"2": {"v": NaN}}}', [2]))
@example(body_and_ids=(b'{"materialized_timestamp": 1, "results": {"\\ud800": {}}}', [2]))
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"1": {}, "\\u0031": {}}}', [1]))
@example(body_and_ids=(b'{"materialized_timestamp": 5, "results": {"1": {}, "1" : {}}}', [1]))
@example(
    body_and_ids=(b'{"materialized_timestamp": 5, "materialized_timestamp": 5, "results": {}}', [])
)
@example(body_and_ids=(b'{"results": 1, "materialized_timestamp": 5, "results": {}}', []))
def test_near_valid_answers_give_a_right_answer_or_malformed_response_error(
    body_and_ids: tuple[bytes, list[int]],
) -> None:
    body, ids = body_and_ids
    check(body, ids)


@FUZZ
@given(body=st.binary(max_size=300), ids=chunk_ids())
@example(body=b"", ids=[1])
@example(body=b"<html><body>502 Bad Gateway</body></html>", ids=[1])
@example(body=b"\xff\xfe{\x00}\x00", ids=[])  # UTF-16, which only the stdlib reads
@example(body=b"[" * 100_000, ids=[1])  # deeper than either parser recurses
@example(body=b"1" * 5000, ids=[1])  # beyond the stdlib's integer digit limit
def test_arbitrary_bytes_give_a_right_answer_or_malformed_response_error(
    body: bytes, ids: list[int]
) -> None:
    check(body, ids)


@FUZZ
@given(answer=valid_answers())
def test_valid_documented_answers_always_parse_exactly(
    answer: tuple[bytes, list[int], int, dict[str, Any]],
) -> None:
    body, ids, timestamp, results = answer
    parsed = check(body, ids)

    assert parsed is not None, "a valid answer was refused"
    assert parsed.timestamp == timestamp
    assert all(identical(value, results[str(segment)]) for segment, value in parsed.items())


@settings(max_examples=60, deadline=None)
@given(
    prop=st.sampled_from(sorted(DOCUMENTED_PROPERTIES)),
    ids=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=30),
)
def test_the_fake_servers_answers_parse_exactly(prop: str, ids: list[int]) -> None:
    fake = FakeBrainCircuits()
    results = fake.expected_results(prop, ids)
    timestamp = fake.materialized_timestamp
    body = json.dumps({"materialized_timestamp": timestamp, "results": results}).encode()
    parsed = check(body, ids)

    assert parsed is not None
    assert dict(parsed.items()) == {int(k): v for k, v in results.items()}


@pytest.mark.parametrize("number", [-(2**63) - 1, -(10**19) + 1])
def test_negative_integers_below_int64_keep_their_exact_value(number: int) -> None:
    if _json._fast_loads is None:
        pytest.skip("orjson is not installed")
    body = f'{{"materialized_timestamp": 1, "results": {{"5": {{"v": {number}}}}}}}'.encode()

    answer = parse_answer(body, [5], ["5"], start=0, describe=DESCRIBE)

    assert identical(dict(answer.items()), {5: {"v": number}})
