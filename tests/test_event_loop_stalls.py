"""A large fetch lets the caller's other tasks run (issue 14, item 3).

No timing here (the benchmarks measure the longest stall): these tests check the
mechanisms, that checking the ids yields to the loop between slices and that a
large call's merge runs in a worker thread.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import braincircuits_async as bca
from braincircuits_async import _client
from braincircuits_async._chunking import SLICE, normalize_segments, normalize_segments_async

from .conftest import ScriptedServer

pytestmark = pytest.mark.anyio

BASE = 720575940600000000


@pytest.mark.parametrize(
    "make",
    [
        lambda n: [BASE + i for i in range(n)],
        lambda n: tuple(BASE + i for i in range(n)),
        lambda n: (BASE + i for i in range(n)),  # a generator: no length
        lambda n: np.arange(BASE, BASE + n, dtype=np.uint64),
        lambda n: [str(BASE + i) for i in range(n)],
    ],
    ids=["list", "tuple", "generator", "numpy", "strings"],
)
async def test_checking_many_ids_lets_other_tasks_run_between_slices(make: Any) -> None:
    n = 4 * SLICE + 7
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.lowlevel.checkpoint()
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await anyio.lowlevel.checkpoint()  # the ticker is running
        before = ticks
        ids = await normalize_segments_async(make(n))
        during = ticks - before
        group.cancel_scope.cancel()
    assert ids == [BASE + i for i in range(n)]
    assert during >= 4  # one turn of the ticker per slice at least


@pytest.mark.parametrize(
    ("segments", "position"),
    [
        ([BASE, BASE + 1, -5], 2),
        ([BASE] * SLICE + ["x"], SLICE),
        ([BASE] * (SLICE + 3) + [2**64], SLICE + 3),
    ],
)
def test_a_bad_id_in_a_later_slice_names_its_position_in_the_whole_list(
    segments: list[Any], position: int
) -> None:
    with pytest.raises(bca.InvalidSegmentError) as caught:
        normalize_segments(segments)
    assert caught.value.position == position


def test_duplicates_across_slices_keep_the_first_seen_order() -> None:
    ids = [BASE + i % (SLICE + 10) for i in range(3 * SLICE)]
    assert normalize_segments(ids) == list(dict.fromkeys(ids))


async def test_a_large_calls_merge_runs_in_a_worker_thread(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threaded: list[str] = []
    real = _client.off_loop

    async def recording(work: Any, *args: Any) -> Any:
        threaded.append(getattr(work, "func", work).__name__)
        return await real(work, *args)

    monkeypatch.setattr(_client, "off_loop", recording)
    monkeypatch.setattr(_client, "OFF_LOOP", 100)
    async with make_client(transport=ScriptedServer(), chunk_size=50) as client:
        small = await client.fetch_property("link_pre", range(1, 51))
        assert threaded == []  # below the threshold: merged on the loop
        large = await client.fetch_property("link_pre", range(1, 501))
    assert threaded == ["settle"]
    assert len(small) == 50
    assert len(large) == 500
    assert list(large) == list(range(1, 501))


def test_the_sync_and_async_checks_agree() -> None:
    ids = [BASE + 3, BASE + 1, BASE + 3]
    assert normalize_segments(ids) == anyio.run(normalize_segments_async, ids)


async def test_a_stream_of_many_ids_checks_them_as_it_starts(make_client: Any) -> None:
    async with make_client(transport=ScriptedServer()) as client:
        with pytest.raises(bca.InvalidSegmentError):
            client.iter_property("link_pre", [1, -2])  # few: checked at once
        stream = client.iter_property("link_pre", [*range(1, _client.OFF_LOOP + 1), -2])
        with pytest.raises(bca.InvalidSegmentError, match="-2"):
            async for _ in stream:
                pass
