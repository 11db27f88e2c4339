"""Bad ids, names and settings are refused before any request, with errors that say what to fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import braincircuits_async as bca
from braincircuits_async._chunking import (
    chunk_slices,
    normalize_segments,
    validate_project,
    validate_property,
)

from .conftest import BASE_URL, ScriptedServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ([3, 1, 2], [3, 1, 2]),
        ([5, 5, 1, 5, 1], [5, 1]),
        (["720575940634474894", 7], [720575940634474894, 7]),
        ([" 42 "], [42]),
        ((i for i in (9, 8, 9)), [9, 8]),
        ([0, 2**64 - 1], [0, 2**64 - 1]),
        (np.array([4, 2, 4], dtype=np.int64), [4, 2]),
        (np.array([2**64 - 1], dtype=np.uint64), [2**64 - 1]),
        ([np.int64(11), np.uint64(12)], [11, 12]),
        ([], []),
    ],
)
def test_segments_are_normalized_deduplicated_in_first_seen_order(
    segments: Any, expected: list[int]
) -> None:
    result = normalize_segments(segments)
    assert result == expected
    assert all(type(x) is int for x in result)


@pytest.mark.parametrize(
    ("segments", "position", "words"),
    [
        ([1, 2.0], 1, "float"),
        ([1, 2, True], 2, "boolean"),
        ([None], 0, "NoneType"),
        ([5, -1], 1, "outside"),
        ([2**64], 0, "outside"),
        ([1, [2, 3]], 1, "nested"),
        (["12a"], 0, "not a decimal"),
        (["-5"], 0, "not a decimal"),
        (["1e5"], 0, "not a decimal"),
        (["9" * 5000], 0, "not a decimal"),
        (["123456789012345678901"], 0, "outside"),
        ([""], 0, "not a decimal"),
        ([np.float64(3.0)], 0, "float"),
        (np.array([1.5, 2.5]), 0, "float"),
        (np.array([-3], dtype=np.int64), 0, "outside"),
        ([np.bool_(True)], 0, "boolean"),
    ],
)
def test_bad_ids_name_the_value_and_its_position(segments: Any, position: int, words: str) -> None:
    with pytest.raises(bca.InvalidSegmentError) as caught:
        normalize_segments(segments)
    assert caught.value.position == position
    assert f"position {position}" in str(caught.value)
    assert words in str(caught.value)
    # Usable as either builtin error, so existing except clauses catch it.
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    "segments",
    ["720575940634474894", 720575940634474894, b"12", None, np.int64(5), np.array(5)],
)
def test_a_single_id_or_string_instead_of_a_list_is_refused(segments: Any) -> None:
    with pytest.raises(bca.InvalidSegmentError, match="iterable of segment ids") as caught:
        normalize_segments(segments)
    assert isinstance(caught.value, TypeError)  # what it was before: except clauses still work
    assert caught.value.position is None


@pytest.mark.parametrize(
    ("make_bad", "builtin"),
    [
        (lambda: bca.AsyncClient(chunk_size=0), ValueError),
        (lambda: bca.AsyncClient(chunk_size="500"), TypeError),
        (lambda: bca.AsyncClient(timeout=-1), ValueError),
        (lambda: bca.AsyncClient(consistency="maybe"), ValueError),
        (lambda: bca.AsyncClient(base_url="ftp://x.test"), ValueError),
        (lambda: bca.AsyncClient(base_url="http://example.com"), ValueError),
        (lambda: bca.AsyncClient(token=" "), ValueError),
        (lambda: bca.AsyncClient(project="bad name"), ValueError),
        (lambda: bca.RetryPolicy(max_retries=-1), ValueError),
    ],
)
def test_bad_settings_raise_one_error_of_the_tree_that_is_also_the_builtin(
    make_bad: Any, builtin: type[Exception]
) -> None:
    with pytest.raises(bca.InvalidArgumentError) as caught:
        make_bad()
    assert isinstance(caught.value, bca.BrainCircuitsError)
    assert isinstance(caught.value, builtin)


def test_two_dimensional_arrays_are_refused() -> None:
    with pytest.raises(bca.InvalidSegmentError, match="1-d"):
        normalize_segments(np.array([[1, 2], [3, 4]]))


@pytest.mark.parametrize(
    ("n", "size", "lengths"),
    [
        (0, 500, []),
        (1, 500, [1]),
        (500, 500, [500]),
        (501, 500, [500, 1]),
        (1234, 500, [500, 500, 234]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_chunks_cover_every_id_once_in_order(n: int, size: int, lengths: list[int]) -> None:
    # The slices the first pass of every fetch sends (`AsyncClient._fetch`).
    ids = list(range(n))
    chunks = [ids[start:end] for start, end in chunk_slices(n, size)]
    assert [len(c) for c in chunks] == lengths
    assert [i for c in chunks for i in c] == ids


@pytest.mark.parametrize("name", ["link_pre", "size", "my-prop_2", "NT"])
def test_valid_property_names_pass(name: str) -> None:
    assert validate_property(name) == name


@pytest.mark.parametrize(
    "name", ["", "link pre", "../size", "size?x=1", "size#", "size\n", "%2e%2e", "s/z", "é"]
)
def test_property_names_outside_the_allowed_characters_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        validate_property(name)


@pytest.mark.parametrize("name", ["a b", "p&x=1", "p#", "p/q", "p\n"])
def test_project_names_that_could_alter_the_query_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        validate_project(name)


def test_missing_project_says_how_to_pass_one() -> None:
    with pytest.raises(ValueError, match="pass project="):
        validate_project(None)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"chunk_size": 0}, "chunk_size must be at least 1"),
        ({"chunk_size": 2.5}, "chunk_size must be an int"),
        ({"max_concurrency": 0}, "max_concurrency must be at least 1"),
        ({"max_retries": -1}, "max_retries must be at least 0"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"consistency": "sometimes"}, "consistency must be one of"),
        ({"backoff_base": -1}, "backoff_base"),
        ({"base_url": "ftp://x.org"}, "http(s) address"),
        ({"base_url": "http://api.example.org"}, "plain http"),
        ({"token": ""}, "token is empty"),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, Any], words: str) -> None:
    settings: dict[str, Any] = {"token": "t", "base_url": "https://api.test"}
    settings.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as caught:
        bca.AsyncClient(**settings)
    assert words in str(caught.value)


async def test_bad_input_sends_no_request(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server) as client:
        with pytest.raises(bca.InvalidSegmentError):
            await client.fetch_property("link_pre", [1, 2, "x"])
        with pytest.raises(ValueError, match="letters, digits"):
            await client.fetch_property("link pre", [1])
    assert server.requests == []


async def test_missing_project_is_a_value_error_before_any_request(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server, project=None) as client:
        with pytest.raises(ValueError, match="pass project="):
            await client.fetch_property("link_pre", [1])
    assert server.requests == []


async def test_empty_request_returns_empty_result_without_a_request(make_client: Any) -> None:
    server = ScriptedServer()
    async with make_client(transport=server) as client:
        result = await client.fetch_property("link_pre", [])
    assert len(result) == 0
    assert result.materialized_timestamp is None
    assert result.missing == ()
    assert server.requests == []


async def test_missing_token_is_an_authentication_error_naming_the_variable() -> None:
    server = ScriptedServer()
    async with bca.AsyncClient(base_url=BASE_URL, project="hemibrain", transport=server) as client:
        with pytest.raises(bca.AuthenticationError, match="BRAINCIRCUITS_TOKEN"):
            await client.fetch_property("size", [1])
    assert server.requests == []


async def test_missing_cave_token_for_a_cave_project_names_the_variable() -> None:
    server = ScriptedServer()
    async with bca.AsyncClient(token="t", base_url=BASE_URL, transport=server) as client:
        with pytest.raises(bca.AuthenticationError, match="BRAINCIRCUITS_CAVE_TOKEN"):
            await client.fetch_property("size", [1], project="fruitfly_fafb_flywire")
        # A project not managed by CAVE needs no CAVE token.
        result = await client.fetch_property("size", [1], project="hemibrain")
    assert list(result) == [1]
    assert len(server.requests) == 1
    assert "authorization-cave" not in server.requests[0].headers
