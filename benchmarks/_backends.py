"""The HTTP stacks side by side (issue 14): the client on each against raw loops.

Contenders, each in a fresh process against the same fake server (its own
process), all fetching ``plan.n`` ``link_pre`` segments in chunks of
``plan.chunk_size`` and merging them into one mapping:

- ``aiohttp-gather``: a semaphore and ``asyncio.gather`` over aiohttp, what a
  user writes in twenty lines; the reference every ratio is taken against;
- ``httpx-gather``: the same loop over httpx (httpcore's connections);
- ``httpx-aiohttp-gather``: the httpx loop with ``httpx_aiohttp.AiohttpTransport``;
- ``client-httpx`` and ``client-aiohttp``: ``fetch_property`` with
  ``http_backend="httpx"`` and ``"aiohttp"`` (on asyncio, ``"auto"`` is aiohttp);
- ``client-trio``: ``fetch_property`` on trio (httpx's stack: aiohttp is asyncio's).

Latency-bound (``plan.latency_ms``) at each of ``plan.backend_concurrencies``,
against the ideal; CPU-bound (no latency) at ``plan.backend_cpu_concurrencies``,
as throughput. Each figure is the best of ``plan.backend_repeats`` runs (CPU-bound:
``2 x repeats - 1``, as the CPU-bound head-to-head), the contenders interleaved
round by round, in an order that rotates, so that a change in the machine's load
hits them all alike. The raw loops parse with the standard library's json (what
``response.json()`` does); the client with orjson when it is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ._common import Plan, ideal, log, measure, spec
from ._server import fake_server

__all__ = ["backends_section", "backends_summary"]

REFERENCE = "aiohttp-gather"
#: Targets of issue 14, as client-aiohttp (the default on asyncio) / raw aiohttp.
LATENCY_TARGETS = {8: 1.00, 64: 1.15}
CPU_TARGET = 0.9
#: client-trio wall / raw aiohttp wall before the issue-14 work (latency-bound),
#: from the first run of this section (docs/performance.md); "no slower than
#: today" allows 5 % for this machine's noise.
TRIO_BEFORE = {8: 1.24, 64: 1.54}
TRIO_SLACK = 1.05

#: Name: the spec's overrides (contender, the client's settings, the runner).
CONTENDERS: dict[str, dict[str, Any]] = {
    "aiohttp-gather": {"contender": "aiohttp-gather"},
    "httpx-gather": {"contender": "httpx-gather"},
    "httpx-aiohttp-gather": {"contender": "httpx-aiohttp-gather"},
    "client-httpx": {"contender": "client", "client": {"http_backend": "httpx"}},
    "client-aiohttp": {"contender": "client", "client": {"http_backend": "aiohttp"}},
    "client-trio": {"contender": "client", "client": {"http_backend": "httpx"}, "runner": "trio"},
}


def available(concurrency: int, trio_at: list[int]) -> list[str]:
    """The contenders that can run here (aiohttp, httpx-aiohttp, trio installed)."""
    found = {m: importlib.util.find_spec(m) is not None for m in ("aiohttp", "httpx_aiohttp")}
    found["trio"] = importlib.util.find_spec("trio") is not None
    names = []
    for name in CONTENDERS:
        if "aiohttp" in name and not found["aiohttp"]:
            continue
        if name in ("httpx-aiohttp-gather", "client-aiohttp") and not found["httpx_aiohttp"]:
            continue
        if name == "client-trio" and (not found["trio"] or concurrency not in trio_at):
            continue
        names.append(name)
    return names


def contender_spec(url: str, plan: Plan, name: str, concurrency: int) -> dict[str, Any]:
    overrides = dict(CONTENDERS[name])
    return spec(url, plan, overrides.pop("contender"), concurrency=concurrency, **overrides)


def interleaved(url: str, plan: Plan, concurrency: int, runs: int) -> dict[str, Any]:
    """``runs`` rounds of one run per contender (order rotating); the best of each."""
    names = available(concurrency, plan.trio_concurrencies)
    walls: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            walls[name].append(measure(contender_spec(url, plan, name, concurrency)))
    best = {}
    for name, results in walls.items():
        chosen = min(results, key=lambda r: r["wall"])
        chosen["walls"] = [r["wall"] for r in results]
        best[name] = chosen
    returned = {r["returned"] for r in best.values()}
    if len(returned) != 1:
        raise RuntimeError(f"the contenders returned different counts: {returned}")
    return best


def row(
    plan: Plan, concurrency: int, best: dict[str, Any], ideal_s: float | None
) -> dict[str, Any]:
    """A concurrency's figures: each contender's ratios to raw aiohttp and the ideal."""
    reference = best[REFERENCE]["wall"] if REFERENCE in best else None
    for result in best.values():
        result["segments_per_s"] = plan.n / result["wall"]
        result["over_aiohttp"] = result["wall"] / reference if reference else None
        result["throughput_over_aiohttp"] = reference / result["wall"] if reference else None
        result["over_ideal"] = result["wall"] / ideal_s if ideal_s else None
    return {"concurrency": concurrency, "ideal_s": ideal_s, "contenders": best}


def backends_section(plan: Plan) -> dict[str, Any]:
    """Latency-bound rows by concurrency, CPU-bound rows, and the targets."""
    latency: list[dict[str, Any]] = []
    with fake_server(latency_ms=plan.latency_ms) as url:
        measure(spec(url, plan, "client"))  # warm the server's cache up
        for c in plan.backend_concurrencies:
            best = interleaved(url, plan, c, plan.backend_repeats)
            seconds = ideal(plan.n, plan.chunk_size, c, plan.latency_ms / 1000)
            latency.append(row(plan, c, best, seconds))
            log(f"  c={c:>3} (ideal {seconds:.3f} s): " + shown(best, "wall"))
    cpu: list[dict[str, Any]] = []
    with fake_server() as url:
        measure(spec(url, plan, "client"))
        for c in plan.backend_cpu_concurrencies:
            best = interleaved(url, plan, c, 2 * plan.backend_repeats - 1)
            cpu.append(row(plan, c, best, None))
            log(f"  CPU-bound c={c:>3}: " + shown(best, "wall"))
    section = {
        "n": plan.n,
        "latency_ms": plan.latency_ms,
        "chunk_size": plan.chunk_size,
        "runs": plan.backend_repeats,
        "cpu_runs": 2 * plan.backend_repeats - 1,
        "latency_bound": latency,
        "cpu_bound": cpu,
    }
    section["targets"] = targets(section)
    return section


def shown(best: dict[str, Any], key: str) -> str:
    return ", ".join(f"{name} {result[key]:.3f}" for name, result in best.items())


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets beside what was measured (those whose figures were run)."""
    rows = []
    latency = {r["concurrency"]: r["contenders"] for r in section["latency_bound"]}
    for c, bound in LATENCY_TARGETS.items():
        measured = latency.get(c, {}).get("client-aiohttp", {}).get("over_aiohttp")
        if measured is not None:
            rows.append(
                {
                    "figure": f"latency-bound wall, client / raw aiohttp (c={c})",
                    "measured": measured,
                    "target": f"<= {bound:.2f}",
                    "met": measured <= bound,
                }
            )
    for r in section["cpu_bound"]:
        measured = r["contenders"].get("client-aiohttp", {}).get("throughput_over_aiohttp")
        if measured is not None:
            rows.append(
                {
                    "figure": f"CPU-bound throughput, client / raw aiohttp (c={r['concurrency']})",
                    "measured": measured,
                    "target": f">= {CPU_TARGET}",
                    "met": measured >= CPU_TARGET,
                }
            )
    for c, before in TRIO_BEFORE.items():
        measured = latency.get(c, {}).get("client-trio", {}).get("over_aiohttp")
        if measured is not None:
            rows.append(
                {
                    "figure": f"latency-bound wall on trio, client / raw aiohttp (c={c})",
                    "measured": measured,
                    "target": f"<= {before:.2f} x {TRIO_SLACK} (before the issue-14 work)",
                    "met": measured <= before * TRIO_SLACK,
                }
            )
    return rows


def backends_summary(section: dict[str, Any]) -> list[str]:
    """The Markdown of the backends figures: the targets, then a table per kind."""
    lines = [
        f"### HTTP stacks: {section['n']:,} segments, chunk_size {section['chunk_size']}",
        "",
        "| figure | measured | target | |",
        "|---|---:|---|---|",
    ]
    for r in section["targets"]:
        lines.append(
            f"| {r['figure']} | **{r['measured']:.3f}** | {r['target']} | "
            f"{'met' if r['met'] else 'not met'} |"
        )
    rows = section["latency_bound"]
    names = list(CONTENDERS)
    if rows:
        present = [n for n in names if any(n in r["contenders"] for r in rows)]
        lines += [
            "",
            f"Latency-bound ({section['latency_ms']:g} ms), wall in seconds and its ratio to "
            f"raw aiohttp, best of {section['runs']}:",
            "",
            "| contender | " + " | ".join(f"c={r['concurrency']}" for r in rows) + " |",
            "|---|" + "---:|" * len(rows),
            "| ideal | " + " | ".join(f"{r['ideal_s']:.3f}" for r in rows) + " |",
        ]
        for name in present:
            cells = []
            for r in rows:
                result = r["contenders"].get(name)
                cells.append(
                    "-"
                    if result is None
                    else f"{result['wall']:.3f} ({result['over_aiohttp']:.2f}x)"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cpu = section["cpu_bound"]
    if cpu:
        present = [n for n in names if any(n in r["contenders"] for r in cpu)]
        lines += [
            "",
            f"CPU-bound (no latency), segments/s and the throughput ratio to raw aiohttp, "
            f"best of {section['cpu_runs']}; CPU seconds of that run:",
            "",
            "| contender | " + " | ".join(f"c={r['concurrency']}" for r in cpu) + " |",
            "|---|" + "---:|" * len(cpu),
        ]
        for name in present:
            cells = []
            for r in cpu:
                result = r["contenders"].get(name)
                cells.append(
                    "-"
                    if result is None
                    else f"{result['segments_per_s']:,.0f} "
                    f"({result['throughput_over_aiohttp']:.2f}x, CPU {result['cpu']:.2f} s)"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]
