"""What a result store already holds, turned into the plan of one call: a pure function.

With a store, a call fetches only the ids the store does not hold. Its id list
is put in a new order, the ids to fetch first and the held ones after, so both
parts are contiguous: the ids to fetch make full chunks (not one request per
gap between held ids), and the held values become chunk answers of their own,
cut at the chunk size and grouped by materialization, so a stale group is
re-fetched in full chunks exactly like a stale answer. ``order`` keeps the
request order, in which the results are merged.

When the store holds every id, one of them is fetched anyway: one small request
tells the server's current materialization, which decides whether the held
values can be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._chunking import chunk_slices
from ._merge import ChunkAnswer

__all__ = ["Held", "Plan", "plan_call"]

#: What a store holds for one id: ``(materialized_timestamp, value or None)``.
Held = tuple[int, dict[str, Any] | None]


@dataclass(frozen=True)
class Plan:
    """How one call runs: its ids (in the order it works on them) and what is held."""

    #: The call's ids: those to fetch first, then the held ones.
    ids: list[int]
    #: The slices of ``ids`` to fetch in the first pass.
    slices: list[tuple[int, int]]
    #: The held values, as chunk answers over the rest of ``ids``.
    stored: list[ChunkAnswer] = field(default_factory=list)
    #: The request order, when ``ids`` differs from it (results are merged in it).
    order: list[int] | None = None


def plan_call(ids: list[int], held: Sequence[Held | None] | None, chunk_size: int) -> Plan:
    """The plan for fetching ``ids`` when the store holds ``held[i]`` for ``ids[i]``.

    ``held`` is ``None`` without a store. Held ids are grouped by materialization
    (oldest first), in request order within each group.
    """
    if held is None or all(h is None for h in held):
        return Plan(ids, chunk_slices(len(ids), chunk_size))
    to_fetch = [h is None for h in held]
    if not any(to_fetch):
        to_fetch[0] = True  # one request learns the current materialization
    fetch = [i for i, wanted in enumerate(to_fetch) if wanted]
    kept = sorted(
        (entry[0], i) for i, entry in enumerate(held) if entry is not None and not to_fetch[i]
    )
    order = [ids[i] for i in fetch] + [ids[i] for _, i in kept]
    stored: list[ChunkAnswer] = []
    start = len(fetch)
    position = 0
    while position < len(kept):
        timestamp = kept[position][0]
        end = position
        while end < len(kept) and end - position < chunk_size and kept[end][0] == timestamp:
            end += 1
        run = [i for _, i in kept[position:end]]
        stored.append(
            ChunkAnswer(
                start + position,
                start + end,
                timestamp,
                [ids[i] for i in run],
                [_value(held[i]) for i in run],
                stored=True,
            )
        )
        position = end
    return Plan(
        order,
        chunk_slices(len(fetch), chunk_size),
        stored,
        None if order == ids else ids,
    )


def _value(entry: Held | None) -> dict[str, Any] | None:
    assert entry is not None
    return entry[1]
