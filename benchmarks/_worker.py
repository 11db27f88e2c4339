"""One measurement in a fresh process: ``python -m benchmarks._worker '<json spec>'``.

Each contender fetches the same ids from the same fake server and merges the
answers into one mapping held in memory; the worker prints one JSON line with
the wall time, requests sent, segments returned and memory figures. The result
store's contenders fetch into a store file (``client-store``, which also reports
the file's size) or read one offline (``store-read``); ``stall`` runs a fetch
beside a 1 ms ticker that times the caller's event loop (``benchmarks._ticker``).
A fresh process per measurement keeps one contender's garbage out of the next
one's memory figures. ``"runner": "trio"`` in the spec runs the contender on trio
(the client's only). ``--profile PATH`` before the spec writes a cProfile of the
measurement to PATH (``python -m benchmarks._profile`` prints it). The HTTP stacks
are imported before any clock starts (``WARM_IMPORTS``), unless ``"cold": true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

import braincircuits_async as bca
from braincircuits_async import testing

from ._ticker import beside_ticker

PROJECT = "fruitfly_fafb_flywire"
ID_BASE = 720575940600000000
HEADERS = {
    "Authorization": f"Bearer {testing.DEFAULT_TOKEN}",
    "Authorization-Cave": f"Bearer {testing.DEFAULT_CAVE_TOKEN}",
}


#: Imported before the clock starts, where installed (unless the spec says ``"cold"``):
#: httpx imports httpcore (which imports trio) on its first AsyncClient, and the client
#: aiohttp on its first request, 100-250 ms once per process. A running program pays
#: that once; charged to one fetch, it would skew the comparison by contender.
WARM_IMPORTS = (
    "httpcore",
    "aiohttp",
    "httpx_aiohttp",
    "anyio._backends._asyncio",
    "anyio._backends._trio",
)


def warm_imports() -> None:
    for name in WARM_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def url(spec: dict[str, Any]) -> str:
    return f"{spec['base_url']}/circuit/segment/property/{spec['property']}"


def naive(spec: dict[str, Any], ids: list[int]) -> tuple[dict[Any, Any], int]:
    """The reference's way: one chunk after another with a blocking client."""
    results: dict[Any, Any] = {}
    requests = 0
    with httpx.Client(timeout=60) as http:
        for chunk in chunks(ids, spec["chunk_size"]):
            while True:  # a minimal retry, so faults do not end the run
                requests += 1
                try:
                    response = http.post(
                        url(spec),
                        params={"project": PROJECT},
                        headers=HEADERS,
                        json={"segments": chunk},
                    )
                    if response.status_code == 200:
                        results.update(response.json()["results"])
                        break
                except (httpx.TransportError, ValueError):
                    pass
                time.sleep(0.1)
    return results, requests


async def httpx_gather(
    spec: dict[str, Any], ids: list[int], *, aiohttp_under: bool = False
) -> tuple[dict[Any, Any], int]:
    """A hand-written asyncio.gather over httpx with a semaphore: what users write.

    ``aiohttp_under``: the same loop with ``httpx_aiohttp.AiohttpTransport``
    under httpx (aiohttp's connections, httpx's interface).
    """
    concurrency = spec["concurrency"]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    results: dict[Any, Any] = {}
    requests = 0
    transport: httpx.AsyncBaseTransport | None = None
    if aiohttp_under:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)

    async with httpx.AsyncClient(limits=limits, timeout=60, transport=transport) as http:

        async def one(chunk: list[int]) -> None:
            nonlocal requests
            while True:
                async with semaphore:
                    requests += 1
                    try:
                        response = await http.post(
                            url(spec),
                            params={"project": PROJECT},
                            headers=HEADERS,
                            json={"segments": chunk},
                        )
                        if response.status_code == 200:
                            results.update(response.json()["results"])
                            return
                    except (httpx.TransportError, ValueError):
                        pass
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one(c) for c in chunks(ids, spec["chunk_size"])))
    return results, requests


async def httpx_aiohttp_gather(spec: dict[str, Any], ids: list[int]) -> tuple[dict[Any, Any], int]:
    """The httpx loop with aiohttp under it (``httpx_aiohttp.AiohttpTransport``)."""
    return await httpx_gather(spec, ids, aiohttp_under=True)


async def aiohttp_gather(spec: dict[str, Any], ids: list[int]) -> tuple[dict[Any, Any], int]:
    """The same loop over aiohttp."""
    import aiohttp

    concurrency = spec["concurrency"]
    semaphore = asyncio.Semaphore(concurrency)
    results: dict[Any, Any] = {}
    requests = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(chunk: list[int]) -> None:
            nonlocal requests
            while True:
                async with semaphore:
                    requests += 1
                    try:
                        async with session.post(
                            url(spec),
                            params={"project": PROJECT},
                            headers=HEADERS,
                            json={"segments": chunk},
                        ) as response:
                            if response.status == 200:
                                results.update(json.loads(await response.read())["results"])
                                return
                    except (aiohttp.ClientError, ValueError):
                        pass
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one(c) for c in chunks(ids, spec["chunk_size"])))
    return results, requests


def client_settings(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": testing.DEFAULT_TOKEN,
        "cave_token": testing.DEFAULT_CAVE_TOKEN,
        "base_url": spec["base_url"],
        "project": PROJECT,
        "chunk_size": spec["chunk_size"],
        "max_concurrency": spec["concurrency"],
        **spec.get("client", {}),
    }


async def client(spec: dict[str, Any], ids: list[int]) -> tuple[Any, int, dict[str, Any]]:
    """This library's fetch_property; which HTTP stack it used (``http_backend``)."""
    async with bca.AsyncClient(**client_settings(spec)) as c:
        result = await c.fetch_property(spec["property"], ids)
        # Clients from before issue 14 had only httpx's own stack.
        return result, c.stats.requests, {"http_backend": getattr(c, "http_backend", "httpx")}


async def client_stream(spec: dict[str, Any], ids: list[int]) -> tuple[Any, int]:
    """This library's iter_property, keeping only a count (memory bounded by chunks)."""
    seen = 0
    async with bca.AsyncClient(**client_settings(spec)) as c:
        async for part in c.iter_property(spec["property"], ids):  # type: ignore[attr-defined]
            seen += len(part)
        return {"count": seen}, c.stats.requests


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes of a store's file and of its write-ahead log (0 when there is none)."""
    wal = path.with_name(path.name + "-wal")
    return {
        "file": path.stat().st_size if path.exists() else 0,
        "wal": wal.stat().st_size if wal.exists() else 0,
    }


async def client_store(spec: dict[str, Any], ids: list[int]) -> tuple[Any, int, dict[str, Any]]:
    """fetch_property with a result store; the file's size before and after closing.

    The store is opened here rather than given as a path so its size can be read
    while it is still open (the write-ahead log not yet checkpointed) and again
    once closing it folded the log into the file. Both lie inside the timing, as
    they would for ``store=PATH``.
    """
    path = Path(spec["store"])
    store = bca.ResultStore(path)
    async with bca.AsyncClient(store=store, **client_settings(spec)) as c:
        result = await c.fetch_property(spec["property"], ids)
        requests = c.stats.requests
    open_sizes = file_sizes(path)
    store.close()
    return result, requests, {"store_open": open_sizes, "store_closed": file_sizes(path)}


def store_read(spec: dict[str, Any], ids: list[int]) -> tuple[Any, int, dict[str, Any]]:
    """ResultStore.read of every id, offline (``"all": true``: of the whole store)."""
    with bca.ResultStore(spec["store"]) as store:
        segments = None if spec.get("all") else ids
        result = store.read(spec["property"], segments, project=PROJECT)
    return result, 0, {"not_stored": len(result.not_stored), "missing": len(result.missing)}


async def stall(spec: dict[str, Any], ids: list[int]) -> tuple[Any, int, dict[str, Any]]:
    """A fetch (``"call"``: fetch or iter, ``"store"``: a path) beside a 1 ms ticker."""
    return await beside_ticker(spec, ids, client_settings(spec))


CONTENDERS: dict[str, Callable[..., Any]] = {
    "naive": naive,
    "httpx-gather": httpx_gather,
    "aiohttp-gather": aiohttp_gather,
    "httpx-aiohttp-gather": httpx_aiohttp_gather,
    "client": client,
    "client-stream": client_stream,
    "client-store": client_store,
    "store-read": store_read,
    "stall": stall,
}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    ids = [ID_BASE + i * 7919 for i in range(n)]
    gc.collect()
    before = rss_bytes()
    contender = CONTENDERS[spec["contender"]]
    began = time.perf_counter()
    cpu_began = time.process_time()
    if spec.get("runner") == "trio":
        import anyio

        result, requests, *extra = anyio.run(contender, spec, ids, backend="trio")
    elif asyncio.iscoroutinefunction(contender):
        coroutine: Coroutine[Any, Any, tuple[Any, ...]] = contender(spec, ids)
        result, requests, *extra = asyncio.run(coroutine)
    else:
        result, requests, *extra = contender(spec, ids)
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    held = rss_bytes() - before
    peak = peak_rss_bytes() - before
    returned = result["count"] if "count" in result else len(result)
    return {
        "wall": wall,
        "cpu": cpu,
        "requests": requests,
        "returned": returned,
        "held_bytes": held,
        "peak_bytes": peak,
        **(extra[0] if extra else {}),
    }


def main(argv: list[str]) -> None:
    profile_to = argv[1] if argv[0] == "--profile" else None
    spec = json.loads(argv[-1])
    if not spec.get("cold"):
        warm_imports()
    if profile_to is not None:
        import cProfile

        profile = cProfile.Profile()
        result = profile.runcall(measure, spec)
        profile.dump_stats(profile_to)
    else:
        result = measure(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
