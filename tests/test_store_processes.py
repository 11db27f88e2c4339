"""The store across real processes: SIGKILL in the middle, two writers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async.testing import FakeBrainCircuits

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = list(range(1, 6001))

FETCH = """
import sys, anyio, braincircuits_async as bca
url, store, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
async def main():
    async with bca.AsyncClient(base_url=url, project="fruitfly_fafb_flywire", store=store,
                               chunk_size=100, max_concurrency=2) as client:
        result = await client.fetch_property("link_pre", range(first, last))
    print(len(result) + len(result.missing))
anyio.run(main)
"""

# Writes chunks of 20,000 ids forever (each one transaction), numbering them.
WRITE_FOREVER = """
import sys, braincircuits_async as bca
store = bca.ResultStore(sys.argv[1])
n = 0
while True:
    ids = list(range(n * 20000, (n + 1) * 20000))
    store.write("link_pre", "fruitfly_fafb_flywire", 1000 + n % 3, ids,
                [{"chunk": n, "id": s} for s in ids])
    n += 1
"""


def child(script: str, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def held(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with bca.ResultStore(path) as store:
            return sum(store.materializations("link_pre", project=PROJECT).values())
    except bca.StoreError:
        return 0  # created by the child this instant


def wait_until(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def fake_url(serve_on_loopback: ServeOnLoopback) -> tuple[FakeBrainCircuits, str]:
    fake = FakeBrainCircuits(latency=0.01)
    return fake, serve_on_loopback(fake)


@pytest.fixture
def tokens() -> dict[str, str]:
    fake = FakeBrainCircuits()
    assert fake.token is not None
    assert fake.cave_token is not None
    return {"BRAINCIRCUITS_TOKEN": fake.token, "BRAINCIRCUITS_CAVE_TOKEN": fake.cave_token}


def rerun(fake: FakeBrainCircuits, url: str, store: Path) -> bca.SegmentPropertyResult:
    async def main() -> bca.SegmentPropertyResult:
        async with bca.AsyncClient(
            base_url=url,
            project=PROJECT,
            token=fake.token,
            cave_token=fake.cave_token,
            store=store,
            chunk_size=100,
        ) as client:
            return await client.fetch_property("link_pre", IDS)

    return anyio.run(main)


def test_a_fetch_killed_mid_run_leaves_a_store_that_resumes(
    fake_url: tuple[FakeBrainCircuits, str], tokens: dict[str, str], tmp_path: Path
) -> None:
    fake, url = fake_url
    store = tmp_path / "store.sqlite"
    process = child(FETCH, url, store, IDS[0], IDS[-1] + 1, env=tokens)
    try:
        wait_until(lambda: held(store) >= 1000)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    with bca.ResultStore(store) as opened:  # it opens, and holds only correct values
        stored = opened.read("link_pre", IDS, project=PROJECT)
    assert 1000 <= len(stored) + len(stored.missing) < len(IDS)
    for segment, value in stored.items():
        assert value == fake.expected("link_pre", segment)
    assert all(fake.expected("link_pre", s) is None for s in stored.missing)

    fake.log.reset()
    result = rerun(fake, url, store)
    assert len(result) + len(result.missing) == len(IDS)
    assert dict(result) == {s: fake.expected("link_pre", s) for s in result}
    # The re-run asked only for what the store did not hold.
    assert sum(r.n_segments for r in fake.log.records) == len(stored.not_stored)


def test_a_process_killed_in_a_write_leaves_only_whole_chunks(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    process = child(WRITE_FOREVER, store)
    try:
        wait_until(lambda: held(store) >= 3 * 20000)
        time.sleep(0.05)  # likely inside a write now: each takes tens of milliseconds
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    with bca.ResultStore(store) as opened:
        counts = opened.materializations("link_pre", project=PROJECT)
        everything = [
            opened.read("link_pre", None, project=PROJECT, materialized_timestamp=ts)
            for ts in counts
        ]
    assert all(count % 20000 == 0 for count in counts.values())  # no half chunk
    for result in everything:
        for segment, value in result.items():
            assert value == {"chunk": segment // 20000, "id": segment}
    # Chunk numbers are contiguous: every chunk committed before the kill is there.
    chunks = sorted({s // 20000 for result in everything for s in result})
    assert chunks == list(range(len(chunks)))


def test_two_processes_fetch_into_one_store_at_once(
    fake_url: tuple[FakeBrainCircuits, str], tokens: dict[str, str], tmp_path: Path
) -> None:
    fake, url = fake_url
    store = tmp_path / "store.sqlite"
    bca.ResultStore(store).close()
    # Overlapping halves, so both write some of the same ids.
    first = child(FETCH, url, store, 1, 4001, env=tokens)
    second = child(FETCH, url, store, 2001, 6001, env=tokens)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert [int(out) for out, _ in outputs] == [4000, 4000]

    with bca.ResultStore(store) as opened:
        stored = opened.read("link_pre", IDS, project=PROJECT)
    assert stored.not_stored == ()
    assert dict(stored) == {s: fake.expected("link_pre", s) for s in stored}
    fake.log.reset()
    rerun(fake, url, store)
    assert fake.log.requests == 1
