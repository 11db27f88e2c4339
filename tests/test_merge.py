"""Merging chunk answers into one result: request order, missing ids, the same for any split."""

from __future__ import annotations

from typing import Any

import pytest

from braincircuits_async._merge import ChunkAnswer, merge_answers


def answer(start: int, ids: list[int], present: set[int], timestamp: int = 7) -> ChunkAnswer:
    values: list[dict[str, Any] | None] = [{"v": i} if i in present else None for i in ids]
    return ChunkAnswer(start, start + len(ids), timestamp, ids, values)


@pytest.mark.parametrize(
    ("answers", "data", "missing"),
    [
        # (answers, merged values by id in request order, missing ids in request order)
        ([answer(0, [5, 3], {5, 3}), answer(2, [9], {9})], [5, 3, 9], ()),
        ([answer(2, [9], {9}), answer(0, [5, 3], {3})], [3, 9], (5,)),  # start order
        ([answer(0, [1, 2, 3, 4, 5], {4})], [4], (1, 2, 3, 5)),  # mostly missing
        ([answer(0, [1, 2], set()), answer(2, [3], set())], [], (1, 2, 3)),
        ([], [], ()),
        # Answers that share ids (the client never makes them): each keeps what it had.
        ([answer(0, [1, 2], {1, 2}), answer(2, [1], set())], [1, 2], (1,)),
        ([answer(0, [1, 2], {2}), answer(2, [1], {1})], [2, 1], (1,)),
    ],
)
def test_answers_merge_in_request_order_without_their_missing_ids(
    answers: list[ChunkAnswer], data: list[int], missing: tuple[int, ...]
) -> None:
    result = merge_answers(answers, "size", "p")

    assert list(result.items()) == [(i, {"v": i}) for i in data]
    assert result.missing == missing


def test_a_mostly_missing_result_keeps_no_table_sized_for_every_id() -> None:
    ids = list(range(10_000))

    result = merge_answers([answer(0, ids, {7, 8})], "size", "p")

    assert list(result) == [7, 8]
    # A dict keeps its table when keys are deleted: 10,000 slots would be ~295 KB.
    assert result._data.__sizeof__() < 1_000
