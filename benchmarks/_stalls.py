"""The caller's event loop during large fetches (issue 14): the longest stretch it is blocked.

A 1 ms ticker runs beside each call in the worker's process (``benchmarks._ticker``)
and reports the longest gap between its wake-ups, how many gaps passed 20 ms and
100 ms, and in which phase of the call the long ones fell. Calls, each at
``plan.stall_sizes`` ``link_pre`` segments, the client's defaults otherwise
(``http_backend="auto"``, c=8, chunk_size 500), against a fake with
``plan.stall_latency_ms`` of latency (a low one: the time goes to the client):

- ``fetch_property``;
- ``iter_property`` (the consumer only counts);
- ``fetch_property`` with ``store=`` a fresh file, then the same fetch again on
  that file (everything is read back from it);
- at the smallest size, ``fetch_property`` in a cold process: httpcore and aiohttp
  not yet imported (every other run imports them before it starts, see
  ``benchmarks._worker.WARM_IMPORTS``), as for the first client of a program.

``plan.stall_repeats`` rounds of all of them; the figure is the median run's (by
its longest gap), with every run's longest gap beside it. First, the floor: the
ticker beside an idle client for two seconds. Store files go to a temporary
folder that is removed at the end.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ._common import Plan, log, measure, spec
from ._server import fake_server

__all__ = ["stalls_section", "stalls_summary"]

#: The issue's target: the longest stall during a 1,000,000-segment fetch_property.
TARGET_MS = 20.0
TARGET_N = 1_000_000
CALLS: dict[str, dict[str, Any]] = {
    "fetch_property": {"call": "fetch"},
    "iter_property": {"call": "iter"},
    "fetch_property, fresh store": {"call": "fetch", "store": "fresh"},
    "fetch_property, all stored": {"call": "fetch", "store": "again"},
    # At the smallest size only: what the first client of a process adds, once.
    "fetch_property, cold process": {"call": "fetch", "cold": True},
}
SHOWN_PHASES = ("open", "before first answer", "during", "after last answer", "close")


def stalls_section(plan: Plan) -> dict[str, Any]:
    """The floor, then every call at every size, ``plan.stall_repeats`` rounds."""
    folder = Path(tempfile.mkdtemp(prefix="bca-bench-stalls-"))
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        with fake_server(latency_ms=plan.stall_latency_ms) as url:
            measure(spec(url, plan, "client", n=max(plan.stall_sizes)))  # warm the cache up
            floor = measure(spec(url, plan, "stall", n=1, call="idle", seconds=2.0))
            log(f"  ticker beside an idle client: longest gap {floor_ms(floor):.1f} ms")
            for i in range(plan.stall_repeats):
                for n in plan.stall_sizes:
                    path = str(folder / f"{n}-{i}.sqlite")
                    for name, how in CALLS.items():
                        if how.get("cold") and n != min(plan.stall_sizes):
                            continue
                        extra = {**how, "store": path} if "store" in how else how
                        result = measure(spec(url, plan, "stall", n=n, **extra))
                        runs.setdefault((name, n), []).append(result)
                        log(
                            f"  round {i + 1}, {name} ({n:,}): longest gap "
                            f"{result['longest_gap_ms']:.1f} ms ({result['longest_phase']}), "
                            f"{result['gaps_over_20ms']} over 20 ms, wall {result['wall']:.2f} s"
                        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [summarized(name, n, results) for (name, n), results in runs.items()]
    section = {
        "latency_ms": plan.stall_latency_ms,
        "chunk_size": plan.chunk_size,
        "concurrency": plan.concurrency,
        "runs": plan.stall_repeats,
        "floor": floor,
        "rows": rows,
    }
    section["targets"] = targets(rows)
    return section


def summarized(name: str, n: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by its longest gap), with every run's longest gap."""
    ordered = sorted(results, key=lambda r: r["longest_gap_ms"])
    median = ordered[(len(ordered) - 1) // 2]
    return {
        "call": name,
        "n": n,
        "median_run": median,
        "longest_gaps_ms": [r["longest_gap_ms"] for r in results],
        "median_longest_ms": statistics.median(r["longest_gap_ms"] for r in results),
    }


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["call"] == "fetch_property" and r["n"] == TARGET_N:
            out.append(
                {
                    "figure": f"longest stall during a {TARGET_N:,}-segment fetch_property (ms)",
                    "measured": r["median_longest_ms"],
                    "target": f"<= {TARGET_MS:g}",
                    "met": r["median_longest_ms"] <= TARGET_MS,
                }
            )
    return out


def floor_ms(floor: dict[str, Any]) -> float:
    """The longest gap while the idle client slept (building it is the ``open`` phase)."""
    longest: float | None = floor["phases"]["before first answer"]["longest_ms"]
    return 2.0 if longest is None else longest


def ms(value: float | None) -> str:
    return "< 2" if value is None else f"{value:.0f}"


def phase_cell(phase: dict[str, Any]) -> str:
    """``longest, GC share (phase's length)``, the GC share only when it is 1 ms or more."""
    gc_ms = phase.get("longest_gc_ms") or 0.0
    gc = f", GC {gc_ms:.0f}" if gc_ms >= 1 else ""
    return f"{ms(phase['longest_ms'])}{gc} ({phase['seconds']:.2f} s)"


def stalls_summary(section: dict[str, Any]) -> list[str]:
    """The Markdown of the stall figures: the target, a table by call, the phases."""
    floor = section["floor"]
    lines = [
        f"### The caller's event loop: a 1 ms ticker beside each call "
        f"({section['latency_ms']:g} ms latency, chunk_size {section['chunk_size']}, "
        f"concurrency {section['concurrency']})",
        "",
    ]
    if section["targets"]:
        lines += ["| figure | measured | target | |", "|---|---:|---|---|"]
        for r in section["targets"]:
            lines.append(
                f"| {r['figure']} | **{r['measured']:.1f}** | {r['target']} | "
                f"{'met' if r['met'] else 'not met'} |"
            )
        lines.append("")
    lines += [
        f"Longest gap between the ticker's wake-ups, in ms, the median of {section['runs']} "
        f"run(s) (every run's in brackets); the floor, the ticker beside an idle client for "
        f"2 s: {floor_ms(floor):.1f} ms (building that client: "
        f"{ms(floor['phases']['open']['longest_ms'])} ms). Counts and phases are the "
        "median run's; a phase named A + B is a stretch that began in A and ended in B; "
        '"of it, GC": the garbage collector\'s time inside the longest gap (ms); full GCs: '
        "generation-2 collections during the run and the longest (ms).",
        "",
        "| call | segments | wall (s) | longest gap | phase of the longest | of it, GC | "
        "gaps > 20 ms | gaps > 100 ms | time in gaps > 20 ms (s) | full GCs (longest) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    rows = section["rows"]
    for r in rows:
        run = r["median_run"]
        every = ", ".join(f"{g:.0f}" for g in r["longest_gaps_ms"])
        lines.append(
            f"| {r['call']} | {r['n']:,} | {run['wall']:.2f} | **{r['median_longest_ms']:.0f}** "
            f"({every}) | {run['longest_phase']} | {run['longest_gap_gc_ms']:.0f} | "
            f"{run['gaps_over_20ms']} | {run['gaps_over_100ms']} | "
            f"{run['blocked_over_20ms_s']:.2f} | {run['gc_full']['count']} "
            f"({run['gc_full']['longest_ms']:.0f} ms) |"
        )
    lines += [
        "",
        'Longest gap by phase (ms; "< 2": none longer than 2 ms; GC: the garbage collector\'s '
        "ms inside it) and the phase's length (s), median run:",
        "",
        "| call | segments | " + " | ".join(SHOWN_PHASES) + " |",
        "|---|---:|" + "---:|" * len(SHOWN_PHASES),
    ]
    for r in rows:
        phases = r["median_run"]["phases"]
        cells = [phase_cell(phases[p]) for p in SHOWN_PHASES]
        lines.append(f"| {r['call']} | {r['n']:,} | " + " | ".join(cells) + " |")
    return [*lines, ""]
