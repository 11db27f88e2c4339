"""The ``demo`` and ``fake-server`` commands: the bundled fake server, from the shell.

The parser of every command is in ``_cli``; these run the two commands that need the
fake (and, for ``fake-server``, the ``fake`` extra).
"""

from __future__ import annotations

import argparse
import random
import shlex
import threading
import time
from typing import TextIO

import anyio

from ._client import AsyncClient
from ._exceptions import BrainCircuitsError
from ._models import SegmentPropertyResult

__all__ = ["FAULT_MIX", "banner", "demo", "fake_server"]

#: The faults the demo and fake-server spread ``--fault-rate`` over, in equal shares.
FAULT_MIX = ("429", "500", "502", "503", "504", "drop", "truncate")

#: FlyWire-like ids: 18 digits starting 7205759406...
ID_BASE = 720575940600000000


def _fault_table(rate: float) -> dict[str, float]:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--fault-rate must be between 0 and 1; got {rate}")
    return {kind: rate / len(FAULT_MIX) for kind in FAULT_MIX} if rate else {}


def _fake_faults(args: argparse.Namespace) -> dict[str, float]:
    """The fault table from --faults, else --fault-rate spread over FAULT_MIX."""
    return args.faults if args.faults is not None else _fault_table(args.fault_rate)


def banner(base_url: str, token: str | None, cave_token: str | None) -> str:
    """What ``fake-server`` prints: a shell snippet that points a client at the fake.

    The ``export`` lines set the address and the fake's own test tokens (public
    values, the same for every fake: printing them is the point; a real token is
    never printed); every other line is a ``#`` comment, so the whole text can be
    saved and sourced (``fake-server > fake.env &``, then ``. ./fake.env``).
    """
    lines = [
        f"# fake BrainCircuits server on {base_url}; Ctrl+C to stop",
        "# to use it from a shell (these are the fake's public test tokens, not secrets):",
        f"export BRAINCIRCUITS_URL={shlex.quote(base_url)}",
    ]
    if token is not None:
        lines.append(f"export BRAINCIRCUITS_TOKEN={shlex.quote(token)}")
    if cave_token is not None:
        lines.append(f"export BRAINCIRCUITS_CAVE_TOKEN={shlex.quote(cave_token)}")
    return "\n".join(lines)


def fake_server(args: argparse.Namespace, out: TextIO) -> int:
    """``braincircuits-async fake-server``: serve the fake on a loopback port until Ctrl+C."""
    from .testing import FakeBrainCircuits, serve_in_thread

    fake = FakeBrainCircuits(
        latency=args.latency_ms / 1000,
        latency_per_segment=args.latency_per_segment_us / 1e6,
        faults=_fake_faults(args),
        retry_after=args.retry_after,
        max_segments=args.max_segments,
        rollover_after=args.rollover_after,
        rate_limit=args.rate_limit,
        seed=args.seed,
        answer_cache_bytes=int(args.cache_mb * 2**20),
    )
    # Served from a thread so that the address printed is the one bound (--port 0).
    with serve_in_thread(fake, host=args.host, port=args.port) as base_url:
        print(banner(base_url, fake.token, fake.cave_token), file=out, flush=True)
        threading.Event().wait()  # until Ctrl+C; main() turns that into exit 130
    return 0


def demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``braincircuits-async demo``: a bulk fetch from the fake, checked value by value."""
    from .testing import DEFAULT_CAVE_TOKEN, DEFAULT_TOKEN, FakeBrainCircuits, serve_in_thread

    fake = FakeBrainCircuits(
        latency=args.latency_ms / 1000,
        faults=_fake_faults(args),
        retry_after=args.retry_after,
        seed=args.seed,
    )
    ids = [ID_BASE + i for i in random.Random(args.seed).sample(range(10**8), args.segments)]
    progress = not args.no_progress and _have_tqdm()

    async def fetch(base_url: str) -> tuple[object, AsyncClient, float]:
        async with AsyncClient(
            token=DEFAULT_TOKEN,
            cave_token=DEFAULT_CAVE_TOKEN,
            base_url=base_url,
            project=fake.default_project,
            chunk_size=args.chunk_size,
            max_concurrency=args.concurrency,
        ) as client:
            began = time.perf_counter()
            try:
                result: object = await client.fetch_property(args.property, ids, progress=progress)
            except BrainCircuitsError as error:
                result = error
            return result, client, time.perf_counter() - began

    with serve_in_thread(fake) as base_url:
        print(f"fake server on {base_url}; fetching {len(ids):,} x {args.property}", file=err)
        result, client, elapsed = anyio.run(fetch, base_url)
    if isinstance(result, BrainCircuitsError):
        print(f"FAILED: {type(result).__name__}: {result}", file=out)
        return 1

    assert isinstance(result, SegmentPropertyResult)
    truth = fake.expected_results(args.property, ids)
    wrong = [s for s in result if truth.get(str(s)) != result[s]]
    lost = [s for s in ids if s not in result and str(s) in truth]
    false_missing = [s for s in result.missing if str(s) in truth]
    chunks = -(-len(ids) // args.chunk_size)
    stats = client.stats
    faults = ", ".join(f"{k} x{v}" for k, v in sorted(fake.log.faults.items())) or "none"
    lines = [
        f"segments      {len(ids):,} requested, {len(result):,} returned, "
        f"{len(result.missing):,} missing (unknown to the server)",
        f"chunks        {chunks:,} of up to {args.chunk_size}, max_concurrency {args.concurrency}",
        f"requests      {stats.requests:,} sent, {stats.retries:,} retries, "
        f"{stats.splits} splits, {stats.refetches} re-fetched",
        f"faults        {faults}",
        f"elapsed       {elapsed:.2f} s ({len(ids) / elapsed:,.0f} segments/s)",
        f"materialized  {result.materialized_timestamp}",
    ]
    ok = not (wrong or lost or false_missing)
    if ok:
        lines.append("check         OK: every value matches the fake's truth")
    else:
        lines.append(
            f"check         FAILED: {len(wrong)} wrong, {len(lost)} lost, "
            f"{len(false_missing)} wrongly reported missing (e.g. {(wrong + lost)[:3]})"
        )
    print("\n".join(lines), file=out)
    return 0 if ok else 1


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
