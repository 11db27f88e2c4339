"""Soak: a million segments through the real client, over loopback, with 20% faults.

The fake runs on a real socket in a thread of this process (so its CPU time counts
against the budget too) and fails one request in five: 429s with a short
Retry-After, 500/502/503/504, dropped connections and truncated bodies. The run must
lose nothing, get nothing wrong, leave no connection open and warn about nothing.

Slow (about 20 s on two cores): deselected by ``-m 'not slow'``. Run it alone, with
its report, as ``pytest -q -m slow tests/test_soak.py -s``.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async.testing import (
    DEFAULT_CAVE_TOKEN,
    DEFAULT_TOKEN,
    FakeBrainCircuits,
    serve_in_thread,
)

SEGMENTS = 1_000_000
FAULT_RATE = 0.2
FAULT_MIX = ("429", "500", "502", "503", "504", "drop", "truncate")
PROJECT = "fruitfly_fafb_flywire"
PROPERTY = "link_pre"
BUDGET_SECONDS = 60.0  # what CI can afford; the fetch takes about a sixth of it


def flywire_like_ids(n: int, seed: int = 0) -> list[int]:
    """``n`` distinct 18-digit ids starting 7205759406..., plus id 0 (always unknown)."""
    base = 720575940600000000
    return [0] + [base + i for i in random.Random(seed).sample(range(10**9), n - 1)]


def established(port: int) -> tuple[int, int]:
    """ESTABLISHED TCP connections on this host to ``port`` and from it.

    Returns (client ends, server ends). Read from /proc/net/tcp{,6}, where addresses
    are hex ``ADDR:PORT`` and state ``01`` is ESTABLISHED.
    """
    clients = servers = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state != "01":
                continue
            servers += int(local.rsplit(":", 1)[1], 16) == port
            clients += int(remote.rsplit(":", 1)[1], 16) == port
    return clients, servers


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Run:
    result: bca.SegmentPropertyResult
    stats: bca.ClientStats
    elapsed: float
    peak_connections: int
    connections_after_close: tuple[int, int]


async def fetch_everything(base_url: str, port: int, ids: list[int]) -> Run:
    """Fetch ``ids`` with a fresh client, sampling open connections meanwhile."""
    samples: list[int] = []

    async def sample_connections() -> None:
        while True:
            samples.append(established(port)[0])
            await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample_connections)
        started = time.perf_counter()
        async with bca.AsyncClient(
            token=DEFAULT_TOKEN,
            cave_token=DEFAULT_CAVE_TOKEN,
            base_url=base_url,
            project=PROJECT,
            chunk_size=500,
            max_concurrency=8,
            backoff_base=0.01,
        ) as client:
            result = await client.fetch_property(PROPERTY, ids)
        elapsed = time.perf_counter() - started
        # The client is closed: its ends of the connections must be gone at once.
        after_close = established(port)
        tg.cancel_scope.cancel()
    return Run(result, client.stats, elapsed, max(samples, default=0), after_close)


def wait_for_server_ends_to_close(port: int, timeout: float = 5.0) -> int:
    """The server notices the client's FINs on its next loop turn; wait for that."""
    deadline = time.monotonic() + timeout
    while (servers := established(port)[1]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return servers


@pytest.mark.slow
def test_soak_a_million_segments_through_20_percent_faults_loses_nothing() -> None:
    ids = flywire_like_ids(SEGMENTS)
    fake = FakeBrainCircuits(
        faults={kind: FAULT_RATE / len(FAULT_MIX) for kind in FAULT_MIX},
        retry_after=0.01,
        seed=7,
    )
    fds_before = open_fds()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record every warning, in every thread
        with serve_in_thread(fake) as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            run = anyio.run(fetch_everything, base_url, port, ids, backend="asyncio")
            server_ends_left = wait_for_server_ends_to_close(port)
        gc.collect()  # unclosed sockets and transports warn when collected
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fds_after = open_fds()

    truth = fake.expected_results(PROPERTY, ids)
    result = run.result
    wrong = [s for s in result if truth.get(str(s)) != result[s]]
    lost = [s for s in ids if str(s) in truth and s not in result]
    missing = set(result.missing)
    wrongly_missing = [s for s in missing if str(s) in truth]
    unknown_unreported = [s for s in ids if str(s) not in truth and s not in missing]
    log = fake.log
    print(
        f"\nsoak: {SEGMENTS:,} x {PROPERTY} over {base_url}, {FAULT_RATE:.0%} faults\n"
        f"  elapsed         {run.elapsed:.1f} s ({SEGMENTS / run.elapsed:,.0f} segments/s; "
        f"the fake's CPU included)\n"
        f"  result          {len(result):,} values, {len(result.missing):,} missing "
        f"(unknown to the server: {SEGMENTS - len(truth):,})\n"
        f"  check           {len(wrong)} wrong, {len(lost)} lost, "
        f"{len(wrongly_missing)} wrongly missing, {len(unknown_unreported)} unknown unreported\n"
        f"  client          {run.stats.requests:,} requests, {run.stats.retries:,} retries, "
        f"{run.stats.chunks:,} chunks, {run.stats.splits} splits, "
        f"{run.stats.refetches} re-fetched\n"
        f"  fake            {log.requests:,} requests, "
        f"statuses {dict(sorted(log.statuses.items()))}, "
        f"faults {dict(sorted(log.faults.items()))}, "
        f"{log.segments_served:,} segments served\n"
        f"  peak RSS        {peak_rss_mib:,.0f} MiB (process high-water mark; "
        f"{rss_before / 1024:,.0f} MiB before)\n"
        f"  connections     peak {run.peak_connections} open; after close "
        f"{run.connections_after_close[0]} client / {run.connections_after_close[1]} server "
        f"ends, server ends {server_ends_left} once it noticed\n"
        f"  file descriptors {fds_before} before, {fds_after} after\n"
        f"  warnings        {len(caught)}"
    )

    assert not wrong, f"{len(wrong)} wrong values, e.g. {wrong[:3]}"
    assert not lost, f"{len(lost)} known ids lost, e.g. {lost[:3]}"
    assert not wrongly_missing, f"known ids reported missing, e.g. {wrongly_missing[:3]}"
    assert not unknown_unreported, f"unknown ids not in .missing: {unknown_unreported[:3]}"
    assert len(result) == len(truth)
    assert len(result.missing) == SEGMENTS - len(truth)
    assert result.materialized_timestamp == fake.materialized_timestamp
    # The faults really happened, about as often as asked, and each was retried.
    assert sum(log.faults.values()) > 0.15 * run.stats.chunks
    assert run.stats.retries >= sum(log.faults.values())
    assert 0 < run.peak_connections <= 8  # never more than max_concurrency
    assert run.connections_after_close[0] == 0, "the closed client left connections open"
    assert server_ends_left == 0
    assert fds_after <= fds_before, "file descriptors leaked"
    assert not caught, [str(w.message) for w in caught]
    assert run.elapsed < BUDGET_SECONDS
