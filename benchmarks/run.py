"""Benchmarks: this client against the naive loop, hand-written loops and the ideal.

Run from the repository root::

    python -m benchmarks.run                # the full run (several minutes)
    python -m benchmarks.run --quick        # small sizes, about a minute (CI runs this)
    python -m benchmarks.run --only store   # one section (writes store.json, store.md)
    python -m benchmarks.run --only backends --repeats 5   # best of 5 instead of 3
    python -m benchmarks.run --replot docs/assets/performance.png benchmarks/results/*.json

The fake server runs in its own process (``braincircuits-async fake-server``) so
that client and server do not share one event loop; every measurement runs in a
fresh client process (``benchmarks._worker``). Results go to a JSON file, a
Markdown summary and, when matplotlib is installed, a PNG of the figures
(``benchmarks._plot``).
Times are reported as ratios to the ideal and to the other contenders measured
in the same run, never judged against absolute numbers. Sections of issue 14:
``backends`` (the client on each HTTP stack against raw aiohttp and httpx loops,
``benchmarks._backends``) and ``stalls`` (the longest stretch a call blocks the
caller's event loop, ``benchmarks._stalls``); ``python -m benchmarks._profile``
profiles one contender.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._backends import backends_section, backends_summary
from ._common import FULL, QUICK, Plan, ideal, log, measure, spec
from ._plot import plot
from ._server import fake_server
from ._stalls import stalls_section, stalls_summary
from ._store import store_section, store_summary

RESULTS = Path(__file__).parent / "results"
FAULTS = "429=0.034,503=0.033,drop=0.033"  # 10 % mixed, as in the issue


def contenders() -> list[str]:
    names = ["client", "naive", "httpx-gather"]
    if importlib.util.find_spec("aiohttp") is not None:
        names.append("aiohttp-gather")
    return names


def has_streaming() -> bool:
    import braincircuits_async as bca

    return hasattr(bca.AsyncClient, "iter_property")


def head_to_head(plan: Plan, latency_ms: float) -> dict[str, Any]:
    """The four contenders on one server: wall/ideal and segments per second."""
    rows: dict[str, Any] = {}
    with fake_server(latency_ms=latency_ms) as url:
        measure(spec(url, plan, "client"))  # warm the server up
        cpu_bound = latency_ms == 0
        for name in contenders():
            repeats = 1 if name == "naive" and not cpu_bound else plan.repeats
            if cpu_bound:
                repeats = 2 * plan.repeats - 1
            result = measure(spec(url, plan, name), repeats, best=cpu_bound)
            rows[name] = result
            log(f"  {name:15s} wall {result['wall']:.3f} s  cpu {result['cpu']:.3f} s")
    best = ideal(plan.n, plan.chunk_size, plan.concurrency, latency_ms / 1000)
    for row in rows.values():
        row["segments_per_s"] = plan.n / row["wall"]
        row["wall_over_ideal"] = row["wall"] / best if best else None
    client = rows["client"]
    return {
        "n": plan.n,
        "latency_ms": latency_ms,
        "chunk_size": plan.chunk_size,
        "concurrency": plan.concurrency,
        "ideal_s": best,
        "contenders": rows,
        "client_over_httpx_wall": client["wall"] / rows["httpx-gather"]["wall"],
        "client_throughput_over_httpx": rows["httpx-gather"]["wall"] / client["wall"],
        "speedup_over_naive": rows["naive"]["wall"] / client["wall"],
    }


def scaling(plan: Plan) -> dict[str, Any]:
    """Wall time and memory over sizes, and wall time over concurrency, at latency."""
    latency = plan.latency_ms / 1000
    sizes: list[dict[str, Any]] = []
    by_concurrency: list[dict[str, Any]] = []
    with fake_server(latency_ms=plan.latency_ms) as url:
        measure(spec(url, plan, "client"))
        for n in plan.sizes:
            row: dict[str, Any] = {
                "n": n,
                "ideal_s": ideal(n, plan.chunk_size, plan.concurrency, latency),
            }
            for name in ("client", "httpx-gather"):
                result = measure(spec(url, plan, name, n=n))
                row[name] = result
            log(f"  n={n:>9,}  client {row['client']['wall']:.3f} s  ideal {row['ideal_s']:.3f} s")
            sizes.append(row)
        for c in plan.concurrencies:
            row = {"concurrency": c, "ideal_s": ideal(plan.n, plan.chunk_size, c, latency)}
            for name in ("client", "httpx-gather"):
                # Low concurrency is slow and steady: one run says enough.
                repeats = plan.repeats if c >= 4 else 1
                row[name] = measure(spec(url, plan, name, concurrency=c), repeats)
            log(f"  c={c:>3}  client {row['client']['wall']:.3f} s  ideal {row['ideal_s']:.3f} s")
            by_concurrency.append(row)
    return {"sizes": sizes, "concurrency": by_concurrency}


def under_faults(plan: Plan) -> dict[str, Any]:
    """10 % mixed faults (429 with Retry-After, 503, dropped connections)."""
    with fake_server(latency_ms=plan.latency_ms, faults=FAULTS, retry_after=0.1) as url:
        result = measure(spec(url, plan, "client"), plan.repeats)
    chunks = math.ceil(plan.n / plan.chunk_size)
    best = ideal(plan.n, plan.chunk_size, plan.concurrency, plan.latency_ms / 1000)
    log(f"  wall {result['wall']:.3f} s, {result['requests']} requests for {chunks} chunks")
    return {
        "faults": FAULTS,
        "retry_after_s": 0.1,
        "ideal_s": best,
        "client": result,
        "wall_over_ideal": result["wall"] / best,
        "requests_over_minimum": result["requests"] / chunks,
    }


def memory(plan: Plan) -> dict[str, Any]:
    """RSS growth per segment held by fetch_property, and the streaming peak."""
    rows: dict[str, Any] = {}
    with fake_server() as url:
        names = ["client", "httpx-gather"] + (["client-stream"] if has_streaming() else [])
        for name in names:
            for n in sorted({plan.memory_n // 10, plan.memory_n}):
                result = measure(spec(url, plan, name, n=n))
                result["held_bytes_per_segment"] = result["held_bytes"] / n
                result["peak_bytes_per_segment"] = result["peak_bytes"] / n
                rows[f"{name}@{n}"] = result
                log(
                    f"  {name:15s} n={n:>9,}  held {result['held_bytes'] / 2**20:.1f} MiB "
                    f"({result['held_bytes_per_segment']:.0f} B/seg), "
                    f"peak {result['peak_bytes'] / 2**20:.1f} MiB"
                )
    return rows


def chunk_sizes(plan: Plan) -> list[dict[str, Any]]:
    """Wall time over chunk_size at latency plus a per-segment server cost."""
    rows = []
    per_request = plan.latency_ms / 1000
    per_segment = plan.per_segment_us / 1e6
    with fake_server(latency_ms=plan.latency_ms, latency_per_segment_us=plan.per_segment_us) as url:
        for size in plan.chunk_sizes:
            result = measure(spec(url, plan, "client", chunk_size=size), plan.repeats)
            best = ideal(plan.n, size, plan.concurrency, per_request + size * per_segment)
            rows.append({"chunk_size": size, "ideal_s": best, "client": result})
            log(f"  chunk_size={size:>5}  wall {result['wall']:.3f} s  ideal {best:.3f} s")
    return rows


#: The versions a run records (None: not installed).
PACKAGES = (
    *("braincircuits-async", "httpx", "httpcore", "anyio"),
    *("aiohttp", "httpx-aiohttp", "orjson", "trio"),
)


def installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        **{name: installed(name) for name in PACKAGES},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def head_to_head_summary(run: dict[str, Any], title: str) -> list[str]:
    lines = [
        f"### {title}: {run['n']:,} segments, {run['latency_ms']:g} ms latency, "
        f"chunk_size {run['chunk_size']}, concurrency {run['concurrency']}",
        "",
        "| contender | wall (s) | wall / ideal | segments/s | CPU (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in run["contenders"].items():
        ratio = f"{row['wall_over_ideal']:.2f}" if row["wall_over_ideal"] else "-"
        lines.append(
            f"| {name} | {row['wall']:.3f} | {ratio} | {row['segments_per_s']:,.0f} "
            f"| {row['cpu']:.3f} |"
        )
    return [
        *lines,
        "",
        f"client / httpx-gather wall: **{run['client_over_httpx_wall']:.3f}**; "
        f"speed-up over naive: **{run['speedup_over_naive']:.1f}x**; ideal "
        f"{run['ideal_s']:.3f} s",
        "",
    ]


def faults_summary(faults: dict[str, Any]) -> list[str]:
    return [
        "### Under 10 % mixed faults",
        "",
        f"wall / ideal **{faults['wall_over_ideal']:.2f}**, requests / minimum "
        f"**{faults['requests_over_minimum']:.3f}** ({faults['faults']}, Retry-After "
        f"{faults['retry_after_s']} s)",
        "",
    ]


def scaling_summary(scaling: dict[str, Any]) -> list[str]:
    lines = [
        "### Scaling with concurrency (latency-bound)",
        "",
        "| max_concurrency | ideal (s) | client (s) | httpx-gather (s) | client / ideal |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in scaling["concurrency"]:
        lines.append(
            f"| {row['concurrency']} | {row['ideal_s']:.3f} | {row['client']['wall']:.3f} | "
            f"{row['httpx-gather']['wall']:.3f} | {row['client']['wall'] / row['ideal_s']:.2f} |"
        )
    lines += [
        "",
        "### Scaling with size (latency-bound)",
        "",
        "| segments | ideal (s) | client (s) | client peak RSS (MiB) | httpx-gather (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in scaling["sizes"]:
        lines.append(
            f"| {row['n']:,} | {row['ideal_s']:.3f} | {row['client']['wall']:.3f} | "
            f"{row['client']['peak_bytes'] / 2**20:.1f} | {row['httpx-gather']['wall']:.3f} |"
        )
    return [*lines, ""]


def memory_summary(memory: dict[str, Any]) -> list[str]:
    lines = ["### Memory", "", "| run | held B/segment | peak B/segment |", "|---|---:|---:|"]
    for name, row in memory.items():
        held, peak = row["held_bytes_per_segment"], row["peak_bytes_per_segment"]
        lines.append(f"| {name} | {held:.0f} | {peak:.0f} |")
    return [*lines, ""]


def chunk_sizes_summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["### chunk_size (latency plus per-segment cost)", ""]
    lines += ["| chunk_size | ideal (s) | client (s) |", "|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['chunk_size']} | {row['ideal_s']:.3f} | {row['client']['wall']:.3f} |"
        )
    return [*lines, ""]


#: The sections of a run, in order: what measures each, and what summarizes it.
SECTIONS: dict[str, tuple[str, Callable[[Plan], Any], Callable[[Any], list[str]]]] = {
    "latency_bound": (
        "latency-bound",
        lambda plan: head_to_head(plan, plan.latency_ms),
        lambda run: head_to_head_summary(run, "Latency-bound"),
    ),
    "cpu_bound": (
        "CPU-bound",
        lambda plan: head_to_head(plan, 0.0),
        lambda run: head_to_head_summary(run, "CPU-bound"),
    ),
    "faults": ("under faults", under_faults, faults_summary),
    "scaling": ("scaling", scaling, scaling_summary),
    "memory": ("memory", memory, memory_summary),
    "chunk_sizes": ("chunk sizes", chunk_sizes, chunk_sizes_summary),
    "store": ("result store", store_section, store_summary),
    "backends": ("HTTP stacks", backends_section, backends_summary),
    "stalls": ("the caller's event loop", stalls_section, stalls_summary),
}


def summary(results: dict[str, Any]) -> str:
    """The Markdown tables that docs/performance.md shows, for the sections run."""
    lines: list[str] = []
    for key, (_, _, summarize) in SECTIONS.items():
        if key in results:
            lines += summarize(results[key])
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: benchmarks/results)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}); the files are named "
        "after them (store.json, quick-store.json with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="runs of each figure of the backends section (best of N; CPU-bound: of 2N-1) "
        "and of the stalls section (median of N); default 3 (--quick: 1)",
    )
    parser.add_argument(
        "--replot",
        nargs="+",
        type=Path,
        metavar=("PNG", "JSON"),
        help="measure nothing: draw PNG from the results in the JSON files (merged, later "
        "files win), e.g. full.json and backends.json for docs/assets/performance.png",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot[0], args.replot[1:])
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        plan = dataclasses.replace(plan, backend_repeats=args.repeats, stall_repeats=args.repeats)
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    chosen = [key for key in SECTIONS if args.only is None or key in args.only]
    stem = "quick" if args.quick else "full"
    if args.only is not None:
        stem = "-".join((["quick"] if args.quick else []) + chosen)
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    for key in chosen:
        title, run, _ = SECTIONS[key]
        log(f"{title} ({plan.n:,} segments)")
        results[key] = run(plan)
    results["seconds"] = time.perf_counter() - began
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(summary(results))
    plotted = plot(results, out / f"{stem}.png")
    log(f"wrote {out / f'{stem}.json'}, {out / f'{stem}.md'}" + (" and a plot" if plotted else ""))
    log(f"took {results['seconds']:.0f} s")
    print(summary(results))
    return 0


def replot(png: Path, sources: list[Path]) -> int:
    """Draw ``png`` from saved results, e.g. a full run's and a later section's."""
    results: dict[str, Any] = {}
    for source in sources:
        results.update(json.loads(source.read_text()))
    if not plot(results, png):
        log("nothing to plot (or matplotlib is missing)")
        return 1
    log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
