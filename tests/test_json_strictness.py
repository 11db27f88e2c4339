"""Repeated keys and deep nesting in answers: refused alike, whichever JSON parser runs.

A key repeated at the top level (``materialized_timestamp``, ``results``) or inside
``results`` (a segment id) leaves it unknown which value the server meant, so such an
answer is a non-transient :class:`MalformedResponseError`. Cheap counts clear ordinary
answers; anything they cannot clear goes to an exact check with the standard library.
Nesting deeper than ``MAX_DEPTH`` is refused too, with orjson (which stops at 1,024) and
with the standard library (which stops where the recursion limit does, however deep the
caller's stack is). Every case runs on both parsers; the orjson variant is skipped when
orjson is not installed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from braincircuits_async import MalformedResponseError, _fake_data, _json, _merge
from braincircuits_async._merge import MAX_DEPTH, ChunkAnswer, loads, parse_answer

T = TypeVar("T")
DESCRIBE = "chunk 1 of link_pre (ids 0-2)"
TOKEN = "tok/SECRET+key=="


@pytest.fixture(params=["orjson", "stdlib"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with orjson (when installed) and with the standard library alone."""
    if request.param == "orjson":
        if _json._fast_loads is None:
            pytest.skip("orjson is not installed")
    else:
        monkeypatch.setattr(_json, "_fast_loads", None)
        monkeypatch.setattr(_json, "_fast_dumps", None)
    return str(request.param)


def parse(body: bytes, ids: tuple[int, ...] = (1, 2)) -> ChunkAnswer:
    return parse_answer(
        body,
        list(ids),
        [str(i) for i in ids],
        start=0,
        describe=DESCRIBE,
        redact=lambda text: text.replace(TOKEN, "[token]"),
    )


def outcome(body: bytes, ids: tuple[int, ...] = (1, 2)) -> tuple[Any, ...]:
    """What parsing ``body`` comes to: the values, or the kind and text of the refusal."""
    try:
        answer = parse(body, ids)
    except MalformedResponseError as error:
        return ("refused", error.transient, str(error))
    return ("parsed", answer.timestamp, list(answer.items()))


def answer_text(results: str, *, timestamp: str = '"materialized_timestamp":7') -> bytes:
    return ("{" + timestamp + ',"results":{' + results + "}}").encode()


# --- repeated keys ---------------------------------------------------------------------

REPEATED = {
    "timestamp": (
        b'{"materialized_timestamp":7,"materialized_timestamp":8,"results":{"1":{"n":1}}}',
        "the key 'materialized_timestamp' appears more than once",
    ),
    "timestamp after results": (
        b'{"materialized_timestamp":7,"results":{"1":{"n":1}},"materialized_timestamp":7}',
        "the key 'materialized_timestamp' appears more than once",
    ),
    "results": (
        b'{"materialized_timestamp":7,"results":{"1":{"n":1}},"results":{"2":{"n":2}}}',
        "the key 'results' appears more than once",
    ),
    "results, the first not an object": (
        b'{"results":[],"materialized_timestamp":7,"results":{"2":{"n":2}}}',
        "the key 'results' appears more than once",
    ),
    "segment id": (
        answer_text('"1":{"n":1},"2":{"n":2},"1":{"n":3}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id, the first not an object": (
        answer_text('"1":5,"1":{"n":1}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id with nested values": (
        answer_text('"2":{"up":[{"s":"9","c":1}]},"2":{"up":[]}'),
        "segment 2 appears more than once in 'results'",
    ),
    "segment id escaped as \\u0031": (
        answer_text('"1":{"n":1},"\\u0031":{"n":2}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id with whitespace before the colon": (
        answer_text('"1":{"n":1},"1" :{"n":2}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id with a tab before the colon": (
        answer_text('"1":{"n":1},"1"\t:{"n":2}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id, pretty-printed": (
        b'{\n  "materialized_timestamp": 7,\n  "results": {\n    "1": {\n      "n": 1\n'
        b'    },\n    "1": {\n      "n": 2\n    }\n  }\n}',
        "segment 1 appears more than once in 'results'",
    ),
    "segment id, with the timestamp's name in a string": (
        answer_text('"1":{"t":"\\"materialized_timestamp\\":1,\\"1\\":"},"1":{"n":1}'),
        "segment 1 appears more than once in 'results'",
    ),
    "segment id, with a token echoed": (
        answer_text(f'"1":{{"echo":"{TOKEN}"}},"1":{{"n":1}}'),
        "segment 1 appears more than once in 'results'",
    ),
}


@pytest.mark.parametrize("case", list(REPEATED))
def test_a_repeated_key_is_a_malformed_answer_on_either_parser(parser: str, case: str) -> None:
    body, problem = REPEATED[case]

    with pytest.raises(MalformedResponseError) as caught:
        parse(body)

    error = caught.value
    assert str(error) == f"{DESCRIBE}: the answer is not the documented shape ({problem})"
    assert error.transient is False  # asking again would get the same answer
    assert error.body is not None
    assert TOKEN not in error.body  # the excerpt is blanked like every other one


UNIQUE = {
    "compact": (answer_text('"1":{"n":1},"2":{"n":2}'), [(1, {"n": 1}), (2, {"n": 2})]),
    "pretty-printed": (
        json.dumps(
            {"materialized_timestamp": 7, "results": {"2": {"up": [{"s": "9"}]}, "1": {}}},
            indent=2,
        ).encode(),
        [(1, {}), (2, {"up": [{"s": "9"}]})],
    ),
    "keys' text inside strings": (
        answer_text(
            '"1":{"t":"\\"materialized_timestamp\\": 8, \\"results\\": {\\"1\\": {}}"},'
            '"2":{"u":"\\"2\\":"}'
        ),
        [
            (1, {"t": '"materialized_timestamp": 8, "results": {"1": {}}'}),
            (2, {"u": '"2":'}),
        ],
    ),
    "the names as plain string values": (
        answer_text('"1":{"a":"results","b":"materialized_timestamp","c":"1"}'),
        [(1, {"a": "results", "b": "materialized_timestamp", "c": "1"})],
    ),
    "digit-ending keys inside values": (
        answer_text('"1":{"nt2":{"x1":1},"y3":[{"z4":2}]},"2":{"k5" :1}'),
        [(1, {"nt2": {"x1": 1}, "y3": [{"z4": 2}]}), (2, {"k5": 1})],
    ),
    "colons in strings": (
        answer_text('"1":{"t":"12:30:00","u":{"v":"a:b"}}'),
        [(1, {"t": "12:30:00", "u": {"v": "a:b"}})],
    ),
    "escaped keys": (
        answer_text('"\\u0031":{"\\u006e":1},"2":{"n\\/a":2}'),
        [(1, {"n": 1}), (2, {"n/a": 2})],
    ),
    # Deeper repeats are let through: both parsers keep the last value, in the first place.
    "a repeat inside a value": (
        answer_text('"1":{"a":1,"b":2,"a":3},"2":{"c":{"d":1,"d":[2]}}'),
        [(1, {"a": 3, "b": 2}), (2, {"c": {"d": [2]}})],
    ),
    "a repeated unknown member": (
        b'{"x":1,"materialized_timestamp":7,"x":2,"results":{"1":{"n":1}}}',
        [(1, {"n": 1})],
    ),
}


@pytest.mark.parametrize("case", list(UNIQUE))
def test_answers_without_a_repeated_key_parse_exactly(parser: str, case: str) -> None:
    body, expected = UNIQUE[case]

    answer = parse(body)

    assert answer.timestamp == 7
    assert list(answer.items()) == expected
    assert [list(v) for _, v in answer.items()] == [list(v) for _, v in expected]  # key order


@pytest.mark.parametrize("case", list(REPEATED) + list(UNIQUE))
def test_the_verdict_on_repeats_is_the_same_on_both_parsers(case: str) -> None:
    if _json._fast_loads is None:
        pytest.skip("orjson is not installed")
    body = REPEATED[case][0] if case in REPEATED else UNIQUE[case][0]
    fast = outcome(body)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_json, "_fast_loads", None)
        patch.setattr(_json, "_fast_dumps", None)
        slow = outcome(body)

    assert fast == slow


SLOW = {
    # Colons inside strings and spaces after them: no cheap proof holds.
    "names and ids inside strings, pretty-printed": (
        json.dumps(
            {
                "materialized_timestamp": 7,
                "results": {
                    "1": {"t": '"materialized_timestamp": 8, "results": {"2": {}}'},
                    "2": {"u": '"1": {}, "2": {}'},
                },
            },
            indent=2,
        ).encode(),
        [
            (1, {"t": '"materialized_timestamp": 8, "results": {"2": {}}'}),
            (2, {"u": '"1": {}, "2": {}'}),
        ],
    ),
    "a time of day, with a space before a colon": (
        answer_text('"1":{"at":"12:30"},"2":{"at" :"13:00"}'),
        [(1, {"at": "12:30"}), (2, {"at": "13:00"})],
    ),
}


@pytest.mark.parametrize("case", list(SLOW))
def test_bodies_the_counts_cannot_clear_are_read_exactly_by_the_slow_check(
    parser: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, expected = SLOW[case]
    calls: list[bytes] = []
    exact_check = _json.repeated_key

    def counted(body: bytes) -> str | None:
        calls.append(body)
        return exact_check(body)

    monkeypatch.setattr(_merge, "repeated_key", counted)

    answer = parse(body)

    assert calls == [body]
    assert answer.timestamp == 7
    assert list(answer.items()) == expected


def fake_answer(prop: str, n: int = 500) -> tuple[bytes, list[int]]:
    segments = [720_575_940_600_000_000 + 7919 * i for i in range(n)]
    body, _ = _fake_data.encode_answer(
        segments, 1_677_042_002, _fake_data.generator_for(prop), 12345, 678, 0
    )
    return body, segments


@pytest.mark.parametrize("prop", sorted(_fake_data.DOCUMENTED_PROPERTIES))
def test_the_fake_servers_answers_are_cleared_without_the_exact_check(
    parser: str, prop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exact check parses the body a second time, with a Python hook per object.
    body, segments = fake_answer(prop)

    def exact_check(body: bytes) -> str | None:
        raise AssertionError("the cheap proof failed")

    monkeypatch.setattr(_merge, "repeated_key", exact_check)
    answer = parse_answer(body, segments, list(map(str, segments)), start=0, describe=DESCRIBE)

    assert len(list(answer.items())) == len(segments)


PROOFS = [
    # (body, whether the cheap counts prove there is no repeat)
    (answer_text('"1":{"n":1},"2":{"n":2}'), True),  # colons
    (answer_text('"1":{"a":{"b":1}}'), True),  # nested: what orjson writes, or digit keys
    (answer_text('"1":{"a":{"b":1}},"2":{"c" :1}'), False),  # space before a colon
    (answer_text('"1":{"a":{"b":"\\u0031"}}'), True),  # escapes do not matter to colons
    (answer_text('"1":{"a":{"b":"\\u0031"},"c":2}'), False),  # mixed, and a backslash
    (answer_text('"1":{"a":{"x9":[{"y":1}]}}'), True),  # nested keys are counted too
    (answer_text('"1":{"a":{"x9":1},"c":2}'), None),  # a level that mixes; a digit key
    (answer_text('"1":{"n":1},"1":{"n":2}'), False),
    (answer_text('"1":{"n":1},"\\u0031":{"n":2}'), False),
    (answer_text('"1":{"n":1},"1" :{"n":2}'), False),
]


@pytest.mark.parametrize(("body", "proved"), PROOFS)
def test_the_cheap_proof_clears_only_bodies_without_a_repeat(
    parser: str, body: bytes, proved: bool | None
) -> None:
    data = json.loads(body)
    digits = body.translate(_json._DIGITS)

    result = _json.keys_are_unique(body, digits, data, data["results"])

    if proved is None:  # orjson's writing proves it; the counts alone do not
        proved = parser == "orjson"
    assert result is proved


# --- nesting depth ---------------------------------------------------------------------


def frames() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1  # type: ignore[assignment]
    return n


def with_headroom(headroom: int, call: Callable[[], T]) -> T:
    """``call()`` from a stack that leaves about ``headroom`` frames below the limit."""

    def dive(n: int) -> T:
        return call() if n <= 0 else dive(n - 1)

    return dive(sys.getrecursionlimit() - frames() - headroom)


STACKS = {"shallow": lambda call: call(), "deep": lambda call: with_headroom(100, call)}
DEPTHS = [900, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 999, 1000, 1023, 1024, 1025, 5000]


def nested(depth: int, kind: str) -> bytes:
    """A JSON value ``depth`` arrays or objects deep."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "array around a number":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def depth_of(value: Any) -> int:
    """How deep ``nested`` built ``value``, without recursion (json.dumps would run out)."""
    depth = 0
    while isinstance(value, (list, dict)):
        depth += 1
        value = next(iter(value.values() if isinstance(value, dict) else value), None)
    return depth


def deep_answer(depth: int, kind: str) -> bytes:
    # The top level, results and the value are three levels; the rest is in the value.
    return answer_text('"1":{"v":' + nested(depth - 3, kind).decode() + "}")


@pytest.fixture(scope="module")
def stdlib_fails_in_the_deep_stack() -> None:
    # The deep stack must be one where the standard library alone cannot parse deeply.
    with pytest.raises(RecursionError):
        with_headroom(100, lambda: json.loads(nested(200, "array")))


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("kind", ["array", "array around a number", "object"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_nesting_beyond_max_depth_is_refused_on_either_parser_at_any_stack_depth(
    parser: str, stack: str, kind: str, depth: int, stdlib_fails_in_the_deep_stack: None
) -> None:
    body = deep_answer(depth, kind)

    result = STACKS[stack](lambda: outcome(body, (1,)))

    if depth <= MAX_DEPTH:
        assert result[0] == "parsed"
        assert depth_of(result[2][0][1]["v"]) == depth - 3
    else:
        assert result == (
            "refused",
            False,
            f"{DESCRIBE}: the answer is not the documented shape "
            f"(arrays and objects nested deeper than {MAX_DEPTH} levels)",
        )


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("depth", DEPTHS)
def test_loads_refuses_the_same_depths_on_either_parser(
    parser: str, stack: str, depth: int, stdlib_fails_in_the_deep_stack: None
) -> None:
    body = nested(depth, "array")

    def read() -> Any:
        try:
            return loads(body)
        except ValueError as error:
            return error

    result = STACKS[stack](read)

    if depth <= MAX_DEPTH:
        assert not isinstance(result, ValueError)
        assert depth_of(result) == depth
    else:
        assert isinstance(result, _json.TooDeep)


def every_outcome(body: bytes) -> Iterator[tuple[Any, ...]]:
    """The outcome on each parser, from a shallow and from a deep stack."""
    parsers = ["stdlib"] if _json._fast_loads is None else ["orjson", "stdlib"]
    for name in parsers:
        with pytest.MonkeyPatch.context() as patch:
            if name == "stdlib":
                patch.setattr(_json, "_fast_loads", None)
                patch.setattr(_json, "_fast_dumps", None)
            for run in STACKS.values():
                result = run(lambda: outcome(body, (1,)))
                if result[0] == "parsed":  # deep values compare by their depth (== recurses)
                    result = (*result[:2], [(s, depth_of(v)) for s, v in result[2]])
                yield result


@pytest.mark.parametrize(
    "body",
    [
        *(deep_answer(depth, "array") for depth in DEPTHS),
        *(b"[" * depth for depth in DEPTHS),  # cut short
        *(b"[" * depth + b"x" + b"]" * depth for depth in DEPTHS),  # not JSON deep inside
        *(b"[" + b'"[",' * depth + b'"x"]' for depth in DEPTHS),  # brackets in strings
        b"[" * 100_000,
    ],
    ids=lambda body: f"{body[:12]!r}...{len(body)}",
)
def test_a_deep_body_comes_to_the_same_outcome_on_both_parsers_and_stacks(
    body: bytes, stdlib_fails_in_the_deep_stack: None
) -> None:
    outcomes = list(every_outcome(body))

    assert all(result == outcomes[0] for result in outcomes), outcomes


# --- a chunk answer's repr -------------------------------------------------------------


def test_a_chunk_answers_repr_counts_its_values_instead_of_printing_them() -> None:
    answer = ChunkAnswer(
        0, 3, 7, [11, 12, 13], [{"secret": "value-1"}, None, {"secret": "value-3"}]
    )

    text = repr(answer)

    assert text == (
        "ChunkAnswer(start=0, end=3, timestamp=7, ids=<3 ids>, values=<2 returned>, stored=False)"
    )
    assert "value-1" not in text
    assert "11" not in text


# --- the request body -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "body", "keys"),
    [
        ([7], b'{"segments":[7]}', ["7"]),
        ([0, 2**64 - 1], b'{"segments":[0,18446744073709551615]}', ["0", "18446744073709551615"]),
        (
            (720575940634474894, 12),
            b'{"segments":[720575940634474894,12]}',
            ["720575940634474894", "12"],
        ),
        ([], b'{"segments":[]}', []),
    ],
)
def test_the_request_body_and_its_keys_are_the_same_with_either_writer(
    parser: str, ids: list[int], body: bytes, keys: list[str]
) -> None:
    assert _json.request_body(ids) == (body, keys)


# --- compact bodies: read by orjson and written back ------------------------------------


def same_types(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_types(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_types, a, b))
    return bool(a == b)


COMPACT = [
    # (results of a compact body, whether orjson writes the body back byte for byte)
    ('"1":{"n":1},"2":{"n":2}', True),
    ('"1":{"n":18446744073709551616}', False),  # 2**64: orjson would make it a float
    ('"1":{"n":-9223372036854775809}', False),  # below -2**63
    ('"1":{"n":123456789012345678901234567890}', False),
    ('"1":{"n":-0}', False),  # orjson writes 0
    ('"1":{"n":1.50,"m":1E-7,"k":[0.1,2.0]}', False),  # orjson writes 1.5 and 1e-7
    ('"1":{"n":1.5,"k":[0.1,2.0]}', False),  # orjson's own, but fractions are not tried
    ('"1":{"n":1e+16}', True),
    ('"1":{"s":"d\\u00e9j\\u00e0 vu"}', False),  # escapes: orjson writes the characters
    ('"1":{"s":"déjà vu"}', True),
    ('"1":{"n":null,"t":true,"l":[]}', True),
]


@pytest.mark.parametrize(("results", "written_back"), COMPACT)
def test_a_compact_body_is_read_exactly_and_written_back_only_when_it_is_orjsons_own(
    parser: str, results: str, written_back: bool
) -> None:
    body = answer_text(results)

    reading = _json.parse(body)

    assert same_types(reading.value, json.loads(body))
    assert reading.written_back is (written_back and parser == "orjson")


@pytest.mark.parametrize(
    "results",
    [
        '"1":{"n":1},"1":{"n":2}',
        '"1":{"n":18446744073709551616},"1":{"n":2}',
        '"1":{"n":1.5},"1":{"n":1.5}',
    ],
)
def test_a_compact_body_that_repeats_a_key_is_never_written_back(parser: str, results: str) -> None:
    body = answer_text(results)

    assert not _json.parse(body).written_back
    with pytest.raises(MalformedResponseError, match="appears more than once"):
        parse(body, (1,))
