"""The PNG of a run: one panel for each figure whose section is in the results.

Scaling with size and with concurrency and the chunk-size sweep (sections
``scaling`` and ``chunk_sizes``); the HTTP stacks as ratios to the raw aiohttp loop,
latency-bound by concurrency and CPU-bound as throughput (``backends``); the
longest stall of the caller's event loop by call (``stalls``). Panels lay out two
rows of three at most; without matplotlib there is no plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["plot"]

CLIENT = "braincircuits-async"
#: The backends panel's highest ratio; higher points are drawn at it, with their value.
TOP = 2.5
#: How each backends contender is drawn: label, marker and line style.
STYLES = {
    "aiohttp-gather": ("raw aiohttp loop", "s", "-"),
    "httpx-gather": ("raw httpx loop", "v", "--"),
    "httpx-aiohttp-gather": ("raw httpx + AiohttpTransport", "^", "--"),
    "client-httpx": (f"{CLIENT}, httpx", "o", "-"),
    "client-aiohttp": (f"{CLIENT}, aiohttp", "D", "-"),
    "client-trio": (f"{CLIENT} on trio", "x", ":"),
}


def size_panel(ax: Any, results: dict[str, Any]) -> None:
    sizes = results["scaling"]["sizes"]
    ns = [r["n"] for r in sizes]
    ax.loglog(ns, [r["client"]["wall"] for r in sizes], "o-", label=CLIENT)
    ax.loglog(ns, [r["httpx-gather"]["wall"] for r in sizes], "s--", label="httpx + gather")
    ax.loglog(ns, [r["ideal_s"] for r in sizes], "k:", label="ideal")
    ax.set(xlabel="segments", ylabel="wall time (s)", title="Size (50 ms latency)")
    ax.legend()


def concurrency_panel(ax: Any, results: dict[str, Any]) -> None:
    conc = results["scaling"]["concurrency"]
    cs = [r["concurrency"] for r in conc]
    ax.loglog(cs, [r["client"]["wall"] for r in conc], "o-", label=CLIENT)
    ax.loglog(cs, [r["httpx-gather"]["wall"] for r in conc], "s--", label="httpx + gather")
    ax.loglog(cs, [r["ideal_s"] for r in conc], "k:", label="ideal")
    ax.set(xlabel="max_concurrency", ylabel="wall time (s)", title="Concurrency")
    ax.legend()


def chunk_panel(ax: Any, results: dict[str, Any]) -> None:
    rows = results["chunk_sizes"]
    ks = [r["chunk_size"] for r in rows]
    ax.semilogx(ks, [r["client"]["wall"] for r in rows], "o-", label=CLIENT)
    ax.semilogx(ks, [r["ideal_s"] for r in rows], "k:", label="ideal")
    ax.set(xlabel="chunk_size", ylabel="wall time (s)", title="Chunk size")
    ax.legend()


def backends_panel(ax: Any, results: dict[str, Any]) -> None:
    """Wall / raw aiohttp wall by concurrency, with the ideal and the targets."""
    section = results["backends"]
    rows = section["latency_bound"]
    cs = [r["concurrency"] for r in rows]
    reference = [r["contenders"]["aiohttp-gather"]["wall"] for r in rows]
    for name, (label, marker, line) in STYLES.items():
        points = [
            (r["concurrency"], r["contenders"][name]["over_aiohttp"])
            for r in rows
            if name in r["contenders"]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            shown = [min(y, TOP) for y in ys]
            (drawn,) = ax.semilogx(xs, shown, marker=marker, linestyle=line, label=label)
            for x, y in points:  # off the scale (the raw httpx loop's pool): say how far
                if y > TOP:
                    ax.annotate(
                        f"{y:.1f}x",
                        (x, TOP),
                        textcoords="offset points",
                        xytext=(-28, -12),
                        color=drawn.get_color(),
                        fontsize="small",
                    )
    ideal = [r["ideal_s"] / ref for r, ref in zip(rows, reference, strict=True)]
    ax.semilogx(cs, ideal, "k:", label="ideal")
    ax.plot([8, 64], [1.00, 1.15], "r*", markersize=12, label="target (client)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_ylim(0.4, TOP * 1.02)
    ax.set(
        xlabel="max_concurrency",
        ylabel="wall / raw aiohttp loop's wall",
        title=f"HTTP stacks ({section['latency_ms']:g} ms latency, {section['n']:,} segments)",
    )
    ax.legend(fontsize="small")


def cpu_panel(ax: Any, results: dict[str, Any]) -> None:
    """CPU-bound throughput / the raw aiohttp loop's, bars by contender and concurrency."""
    rows = results["backends"]["cpu_bound"]
    names = [n for n in STYLES if any(n in r["contenders"] for r in rows)]
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        ys = [r["contenders"].get(n, {}).get("throughput_over_aiohttp", 0.0) for n in names]
        ax.bar(xs, ys, width, label=f"c={r['concurrency']}")
    ax.axhline(0.9, color="r", linestyle=":", label="target (client, aiohttp): 0.9")
    ax.axhline(1.0, color="k", linewidth=0.5)
    ax.set_xticks(range(len(names)), [STYLES[n][0] for n in names], rotation=25, ha="right")
    ax.set(ylabel="throughput / raw aiohttp loop's", title="CPU-bound (no latency)")
    ax.legend(fontsize="small")


def stalls_panel(ax: Any, results: dict[str, Any]) -> None:
    """The longest gap a 1 ms ticker saw, by call and size (median of the runs)."""
    section = results["stalls"]
    rows = section["rows"]
    calls = list(dict.fromkeys(r["call"] for r in rows))
    sizes = sorted({r["n"] for r in rows})
    width = 0.8 / max(len(sizes), 1)
    for i, n in enumerate(sizes):
        by_call = {r["call"]: r["median_longest_ms"] for r in rows if r["n"] == n}
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(calls))]
        ax.bar(xs, [by_call.get(c, 0.0) for c in calls], width, label=f"{n:,} segments")
    ax.axhline(20, color="r", linestyle=":", label="target (1M fetch_property): 20 ms")
    floor = section["floor"]["phases"]["before first answer"]["longest_ms"] or 2.0
    ax.axhline(floor, color="k", linewidth=0.5, label="idle floor")
    ax.set_yscale("log")
    highest = max((r["median_longest_ms"] for r in rows), default=20.0)
    ax.set_ylim(1, 20 * max(highest, 20.0))  # room above the bars for the legend
    ax.set_xticks(range(len(calls)), calls, rotation=20, ha="right")
    ax.set(ylabel="longest event-loop gap (ms)", title="Caller's event loop (1 ms ticker)")
    ax.legend(fontsize="small", loc="upper left", ncol=2)


#: Panels in order, each with the sections it needs.
PANELS: list[tuple[set[str], Callable[[Any, dict[str, Any]], None]]] = [
    ({"scaling"}, size_panel),
    ({"scaling"}, concurrency_panel),
    ({"chunk_sizes"}, chunk_panel),
    ({"backends"}, backends_panel),
    ({"backends"}, cpu_panel),
    ({"stalls"}, stalls_panel),
]


def plot(results: dict[str, Any], path: Path) -> bool:
    """Draw the panels the results allow into ``path``; False if none or no matplotlib."""
    panels = [draw for needs, draw in PANELS if needs <= results.keys()]
    if not panels:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, draw in zip(flat, panels, strict=False):
        draw(ax, results)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
