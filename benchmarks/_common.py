"""What every benchmark section shares: the plans, the ideal, one measurement, the log."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FULL", "QUICK", "Plan", "ideal", "log", "measure", "spec"]


@dataclass
class Plan:
    """Sizes for one run; the quick plan keeps every scenario but shrinks it."""

    n: int
    latency_ms: float
    chunk_size: int
    concurrency: int
    repeats: int
    sizes: list[int]
    concurrencies: list[int]
    chunk_sizes: list[int]
    per_segment_us: float
    memory_n: int
    #: The result store: segments to fill a store with (size and read speed), runs
    #: of each latency-bound figure (its target is a 5 % margin: more runs than the
    #: others), and the concurrencies of the CPU-bound figure.
    store_fill_n: int
    store_repeats: int
    store_concurrencies: list[int]
    #: The HTTP stacks (issue 14): the latency-bound concurrencies, the CPU-bound
    #: ones and trio's, and runs of each figure (the best is kept).
    backend_concurrencies: list[int]
    backend_cpu_concurrencies: list[int]
    trio_concurrencies: list[int]
    backend_repeats: int
    #: The caller's event loop: segments per fetch, the fake's latency, runs each.
    stall_sizes: list[int]
    stall_latency_ms: float
    stall_repeats: int
    contenders: list[str] = field(default_factory=list)


FULL = Plan(
    n=100_000,
    latency_ms=50,
    chunk_size=500,
    concurrency=8,
    repeats=3,
    sizes=[1_000, 10_000, 100_000, 300_000, 1_000_000],
    concurrencies=[1, 2, 4, 8, 16, 32, 64],
    chunk_sizes=[50, 100, 200, 500, 1000, 2000, 5000],
    per_segment_us=20,
    memory_n=1_000_000,
    store_fill_n=1_000_000,
    store_repeats=5,
    store_concurrencies=[8, 64],
    backend_concurrencies=[8, 16, 32, 64],
    backend_cpu_concurrencies=[8, 64],
    trio_concurrencies=[8, 64],
    backend_repeats=3,
    stall_sizes=[100_000, 1_000_000],
    stall_latency_ms=1,
    stall_repeats=3,
)
QUICK = Plan(
    n=5_000,
    latency_ms=20,
    chunk_size=250,
    concurrency=8,
    repeats=1,
    sizes=[1_000, 5_000, 20_000],
    concurrencies=[1, 8, 64],
    chunk_sizes=[100, 500],
    per_segment_us=20,
    memory_n=20_000,
    store_fill_n=20_000,
    store_repeats=1,
    store_concurrencies=[8, 64],
    backend_concurrencies=[8, 64],
    backend_cpu_concurrencies=[8],
    trio_concurrencies=[8],
    backend_repeats=1,
    stall_sizes=[10_000],
    stall_latency_ms=1,
    stall_repeats=1,
)


def ideal(n: int, chunk_size: int, concurrency: int, seconds_per_request: float) -> float:
    """Wall time if the client cost nothing: full rounds of requests, back to back."""
    return math.ceil(math.ceil(n / chunk_size) / concurrency) * seconds_per_request


def measure(spec: dict[str, Any], repeats: int = 1, *, best: bool = False) -> dict[str, Any]:
    """Median (or, with ``best``, the fastest) of ``repeats`` fresh-process runs.

    CPU-bound runs use the fastest: on this shared 2-core machine their times
    vary by up to 2x from run to run, and the minimum is the least disturbed.
    """
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks._worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{spec['contender']} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout))
    ordered = sorted(runs, key=lambda r: r["wall"])
    chosen = ordered[0] if best else ordered[len(runs) // 2]
    chosen["walls"] = [r["wall"] for r in runs]
    return chosen


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spec(base_url: str, plan: Plan, contender: str, **overrides: Any) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "property": "link_pre",
        "n": plan.n,
        "chunk_size": plan.chunk_size,
        "concurrency": plan.concurrency,
        "contender": contender,
        **overrides,
    }
