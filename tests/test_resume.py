"""Table tests of ``_resume.plan_call``: what a store holds becomes a call's plan."""

from __future__ import annotations

from typing import Any

import pytest

from braincircuits_async._resume import Held, plan_call

V = {"v": 1}


def held_at(*timestamps: int | None) -> list[Held | None]:
    """``held`` for ids 10, 11, ...: None (not held), or held at that timestamp."""
    return [None if t is None else (t, V) for t in timestamps]


@pytest.mark.parametrize(
    ("held", "chunk_size", "ids", "slices", "stored", "reordered"),
    [
        # No store, or nothing held: every chunk, request order.
        (None, 2, [10, 11, 12], [(0, 2), (2, 3)], [], False),
        (held_at(None, None, None), 2, [10, 11, 12], [(0, 2), (2, 3)], [], False),
        # Held ids go after those to fetch, so the rest makes full chunks.
        (held_at(None, 5, None, 5), 2, [10, 12, 11, 13], [(0, 2)], [(2, 4, 5)], True),
        # Held at the end only: the order does not change.
        (held_at(None, None, 5, 5), 2, [10, 11, 12, 13], [(0, 2)], [(2, 4, 5)], False),
        # Stored answers are cut at the chunk size ...
        (held_at(None, 5, 5, 5), 2, [10, 11, 12, 13], [(0, 1)], [(1, 3, 5), (3, 4, 5)], False),
        # ... and grouped by materialization, oldest first, request order within.
        (
            held_at(None, 7, 5, 7, 5),
            4,
            [10, 12, 14, 11, 13],
            [(0, 1)],
            [(1, 3, 5), (3, 5, 7)],
            True,
        ),
        # Everything held: the first id is fetched, to learn the materialization.
        (held_at(5, 5, 5), 2, [10, 11, 12], [(0, 1)], [(1, 3, 5)], False),
        (held_at(7, 5), 2, [10, 11], [(0, 1)], [(1, 2, 5)], False),
        (held_at(5), 2, [10], [(0, 1)], [], False),
    ],
)
def test_plan_call(
    held: list[Held | None] | None,
    chunk_size: int,
    ids: list[int],
    slices: list[tuple[int, int]],
    stored: list[tuple[int, int, int]],
    reordered: bool,
) -> None:
    request = list(range(10, 10 + (3 if held is None else len(held))))
    plan = plan_call(request, held, chunk_size)
    assert plan.ids == ids
    assert plan.slices == slices
    assert [(a.start, a.end, a.timestamp) for a in plan.stored] == stored
    for answer in plan.stored:
        assert answer.ids == plan.ids[answer.start : answer.end]
    assert plan.order == (request if reordered else None)


def test_stored_answers_carry_the_held_values_and_unknown_ids() -> None:
    values: list[Any] = [None, (5, {"v": 11}), (5, None)]
    plan = plan_call([10, 11, 12], values, 500)
    (answer,) = plan.stored
    assert answer.values == [{"v": 11}, None]
    assert answer.missing == [12]
    assert list(answer.items()) == [(11, {"v": 11})]
