"""The result store's figures (issue 11): its cost on a fetch, a re-run, its size, read speed.

Each figure compares runs made in this one run on this one machine:

- latency-bound: the same fetch with a fresh store file and without a store, the
  two interleaved (one of each per round, in alternating order) so that a change
  in the machine's load hits both alike; the median of each;
- CPU-bound (no latency): throughput with a store against without, the best of
  several runs as for the CPU-bound head-to-head;
- the re-run: the latency-bound fetch again on the store its first run filled:
  requests sent and wall time against that first run;
- size: a store filled with ``store_fill_n`` ``link_pre`` segments through the
  client, measured after closing it (SQLite then checkpoints the write-ahead log
  into the file and deletes it) and, for reference, while still open;
- ``store.read`` of all those ids, offline, in a fresh process.

Store files go to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ._common import Plan, log, measure, spec
from ._server import fake_server

__all__ = ["store_section", "store_summary"]

#: Targets of issue 11: (key of the ratio, comparison, bound).
LATENCY_TARGET = 1.05
CPU_TARGET = 0.7
RERUN_REQUESTS_TARGET = 1


def store_section(plan: Plan) -> dict[str, Any]:
    """Every store figure, with store files in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bca-bench-store-"))
    try:
        log(f"  latency-bound with and without a store, and the re-run ({plan.n:,} segments)")
        latency, rerun = latency_and_rerun(plan, folder)
        log(f"  CPU-bound with and without a store ({plan.n:,} segments)")
        cpu = cpu_bound(plan, folder)
        log(f"  store size and store.read ({plan.store_fill_n:,} segments)")
        size, read = size_and_read(plan, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    section = {"latency_bound": latency, "rerun": rerun, "cpu_bound": cpu, "size": size}
    section["read"] = read
    section["targets"] = targets(section)
    return section


def latency_and_rerun(plan: Plan, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The latency-bound fetch with a fresh store against without; then its re-run."""
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": [], "rerun": []}
    with fake_server(latency_ms=plan.latency_ms) as url:
        measure(spec(url, plan, "client"))  # warm the server's cache up
        for i in range(plan.store_repeats):
            with_store = spec(url, plan, "client-store", store=str(folder / f"latency-{i}.sqlite"))
            for name in ("without", "with") if i % 2 == 0 else ("with", "without"):
                if name == "without":
                    runs["without"].append(measure(spec(url, plan, "client")))
                else:
                    runs["with"].append(measure(with_store))
                    runs["rerun"].append(measure(with_store))  # everything is stored now
            last = {key: value[-1] for key, value in runs.items()}
            log(
                f"    round {i + 1}: without {last['without']['wall']:.3f} s, with "
                f"{last['with']['wall']:.3f} s, re-run {last['rerun']['wall']:.3f} s "
                f"({last['rerun']['requests']} request(s))"
            )
    check_same(runs["without"] + runs["with"] + runs["rerun"])
    without = median_wall(runs["without"])
    with_store = median_wall(runs["with"])
    rerun = median_wall(runs["rerun"])
    paired = [w["wall"] / o["wall"] for w, o in zip(runs["with"], runs["without"], strict=True)]
    latency = {
        "n": plan.n,
        "latency_ms": plan.latency_ms,
        "chunk_size": plan.chunk_size,
        "concurrency": plan.concurrency,
        "runs": plan.store_repeats,
        "without": runs["without"],
        "with_store": runs["with"],
        "without_wall_s": without,
        "with_store_wall_s": with_store,
        "with_over_without": with_store / without,
        "paired_ratios": paired,
        "median_paired_ratio": statistics.median(paired),
    }
    rerun_figures = {
        "n": plan.n,
        "runs": runs["rerun"],
        "requests": [r["requests"] for r in runs["rerun"]],
        "wall_s": rerun,
        "first_run_wall_s": with_store,
        "rerun_over_first_run": rerun / with_store,
    }
    return latency, rerun_figures


def cpu_bound(plan: Plan, folder: Path) -> list[dict[str, Any]]:
    """Throughput with a fresh store against without, no latency: best of the runs."""
    rows = []
    with fake_server() as url:
        measure(spec(url, plan, "client"))  # warm the server's cache up
        for c in plan.store_concurrencies:
            without: list[dict[str, Any]] = []
            with_store: list[dict[str, Any]] = []
            for i in range(plan.store_repeats):
                path = folder / f"cpu-{c}-{i}.sqlite"
                without.append(measure(spec(url, plan, "client", concurrency=c)))
                with_store.append(
                    measure(spec(url, plan, "client-store", concurrency=c, store=str(path)))
                )
            check_same(without + with_store)
            best_without = min(without, key=lambda r: r["wall"])
            best_with = min(with_store, key=lambda r: r["wall"])
            row = {
                "n": plan.n,
                "concurrency": c,
                "runs": plan.store_repeats,
                "without": without,
                "with_store": with_store,
                "without_segments_per_s": plan.n / best_without["wall"],
                "with_store_segments_per_s": plan.n / best_with["wall"],
                "without_cpu_s": best_without["cpu"],
                "with_store_cpu_s": best_with["cpu"],
                "throughput_ratio": best_without["wall"] / best_with["wall"],
            }
            log(
                f"    c={c}: without {best_without['wall']:.3f} s, with {best_with['wall']:.3f} s"
                f" (best of {plan.store_repeats}): throughput {row['throughput_ratio']:.2f}x"
            )
            rows.append(row)
    return rows


def size_and_read(plan: Plan, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fill a store through the client; its size on disk; then read it back offline."""
    n = plan.store_fill_n
    path = folder / "fill.sqlite"
    with fake_server() as url:
        fill = measure(spec(url, plan, "client-store", n=n, store=str(path)))
    closed, still_open = fill["store_closed"], fill["store_open"]
    size = {
        "n": n,
        "property": "link_pre",
        "fill_wall_s": fill["wall"],
        "fill_segments_per_s": n / fill["wall"],
        "file_bytes": closed["file"],
        "wal_bytes": closed["wal"],
        "open_file_bytes": still_open["file"],
        "open_wal_bytes": still_open["wal"],
        "bytes_per_segment": (closed["file"] + closed["wal"]) / n,
        "mb_per_million": (closed["file"] + closed["wal"]) / n,  # 10**6 bytes per 10**6
        "measured": "after closing: the write-ahead log checkpointed into the file",
    }
    log(
        f"    {n:,} segments: {size['file_bytes'] / 1e6:.1f} MB file + {size['wal_bytes']} B "
        f"-wal after closing ({size['bytes_per_segment']:.1f} B/segment); while open "
        f"{still_open['file'] / 1e6:.1f} MB + {still_open['wal'] / 1e6:.1f} MB -wal"
    )
    read: dict[str, Any] = {"n": n}
    for key, extra in (("ids", {}), ("all", {"all": True})):
        result = measure(
            spec("", plan, "store-read", n=n, store=str(path), **extra), plan.store_repeats
        )
        if result["returned"] + result["missing"] != n or result["not_stored"]:
            raise RuntimeError(f"store.read ({key}) did not give back all {n} segments: {result}")
        result["segments_per_s"] = n / result["wall"]
        read[key] = result
        log(
            f"    store.read ({key}): {result['wall']:.3f} s, "
            f"{result['segments_per_s']:,.0f} segments/s (median of {plan.store_repeats})"
        )
    read["segments_per_s"] = read["ids"]["segments_per_s"]
    return size, read


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets beside what was measured."""
    latency = section["latency_bound"]
    rows = [
        {
            "figure": "latency-bound wall, store / no store",
            "measured": latency["with_over_without"],
            "target": f"<= {LATENCY_TARGET}",
            "met": latency["with_over_without"] <= LATENCY_TARGET,
        }
    ]
    for row in section["cpu_bound"]:
        rows.append(
            {
                "figure": f"CPU-bound throughput, store / no store (c={row['concurrency']})",
                "measured": row["throughput_ratio"],
                "target": f">= {CPU_TARGET}",
                "met": row["throughput_ratio"] >= CPU_TARGET,
            }
        )
    requests = section["rerun"]["requests"]
    rows.append(
        {
            "figure": "re-run with everything stored: requests sent",
            "measured": max(requests),
            "target": f"{RERUN_REQUESTS_TARGET}",
            "met": all(r == RERUN_REQUESTS_TARGET for r in requests),
        }
    )
    return rows


def store_summary(section: dict[str, Any]) -> list[str]:
    """The Markdown of the store figures: the targets, then the details."""
    latency, rerun = section["latency_bound"], section["rerun"]
    size, read = section["size"], section["read"]
    lines = [
        f"### Result store: {latency['n']:,} segments, {latency['latency_ms']:g} ms latency, "
        f"chunk_size {latency['chunk_size']}, concurrency {latency['concurrency']}",
        "",
        "| figure | measured | target | |",
        "|---|---:|---|---|",
    ]
    for row in section["targets"]:
        shown = f"{row['measured']:.3f}" if isinstance(row["measured"], float) else row["measured"]
        lines.append(
            f"| {row['figure']} | **{shown}** | {row['target']} | "
            f"{'met' if row['met'] else 'not met'} |"
        )
    lines += [
        "",
        "| run | wall (s) | runs |",
        "|---|---:|---|",
        f"| latency-bound, no store | {latency['without_wall_s']:.3f} | "
        f"median of {latency['runs']} |",
        f"| latency-bound, fresh store | {latency['with_store_wall_s']:.3f} | "
        f"median of {latency['runs']} |",
        f"| re-run, everything stored | {rerun['wall_s']:.3f} | median of {latency['runs']} |",
    ]
    for row in section["cpu_bound"]:
        for key, label in (("without", "no store"), ("with_store", "fresh store")):
            best = min(r["wall"] for r in row[key])
            lines.append(
                f"| CPU-bound c={row['concurrency']}, {label} | {best:.3f} | best of {row['runs']} "
                f"({row[f'{key}_segments_per_s']:,.0f} segments/s, CPU "
                f"{row[f'{key}_cpu_s']:.3f} s) |"
            )
    paired = ", ".join(f"{r:.3f}" for r in latency["paired_ratios"])
    lines += [
        "",
        f"Latency-bound store / no store, round by round: {paired} (median "
        f"{latency['median_paired_ratio']:.3f}).",
        f"Re-run: {', '.join(str(r) for r in rerun['requests'])} request(s); wall "
        f"**{rerun['rerun_over_first_run']:.3f}x** the first run's.",
        f"Store size ({size['n']:,} `link_pre` segments, filled through the client, measured "
        f"after closing: write-ahead log checkpointed, -wal {size['wal_bytes']} B): "
        f"**{size['bytes_per_segment']:.1f} bytes/segment, {size['mb_per_million']:.1f} MB per "
        f"1M** (while still open: {size['open_file_bytes'] / 1e6:.1f} MB file + "
        f"{size['open_wal_bytes'] / 1e6:.1f} MB -wal).",
        f"`store.read` of {read['n']:,} ids: **{read['ids']['segments_per_s']:,.0f} segments/s** "
        f"({read['ids']['wall']:.3f} s, median of {len(read['ids']['walls'])}); of the whole "
        f"store (`segments=None`): {read['all']['segments_per_s']:,.0f} segments/s.",
        "",
    ]
    return lines


def check_same(runs: list[dict[str, Any]]) -> None:
    """Every run gave back the same number of values (a store must not change results)."""
    returned = {r["returned"] for r in runs}
    if len(returned) != 1:
        raise RuntimeError(f"runs with and without a store returned different counts: {returned}")


def median_wall(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["wall"] for r in runs)
