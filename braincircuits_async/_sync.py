"""Blocking ``fetch_property`` and ``fetch_properties``, for scripts and notebooks alike.

The fetch runs on an event loop of its own in a worker thread, and the caller's
thread waits for it. So the blocking call works where an event loop is already
running (Jupyter, IPython, other async code), which ``anyio.run`` in the
caller's thread would refuse; and Ctrl-C (a kernel interrupt) lands in the
waiting thread, which stops the fetch at once (no request after it) and raises
``KeyboardInterrupt`` with a one-line note of what was fetched.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio.from_thread

from ._client import AsyncClient
from ._interrupts import interrupted_note
from ._models import SegmentPropertyResult
from ._progress import ProgressArg
from ._stats import ClientStats

__all__ = ["fetch_properties", "fetch_property"]

T = TypeVar("T")

#: How often the waiting thread wakes up: a Ctrl-C is seen within this many seconds.
POLL = 0.05


class _Seen:
    """What the fetch in the worker thread tells the waiting thread: its client's totals."""

    def __init__(self) -> None:
        self.stats = ClientStats()
        self.store: str | None = None


def _blocking(
    what: str, total: int, job: Callable[[AsyncClient], Awaitable[T]], options: dict[str, Any]
) -> T:
    """Run ``job`` with a new client on an event loop in a worker thread; wait for it.

    A ``KeyboardInterrupt`` in the waiting thread cancels the job and waits until
    it has stopped (its client closed, a store's last commit done), then is
    raised again with :func:`interrupted_note`.
    """
    seen = _Seen()

    async def main() -> T:
        async with AsyncClient(**options) as client:
            seen.stats = client.stats
            seen.store = None if client.store is None else str(client.store.path)
            return await job(client)

    try:
        # On leaving, the portal cancels what still runs and waits for its thread.
        with anyio.from_thread.start_blocking_portal() as portal:
            future = portal.start_task_soon(main)
            while True:  # in short waits: a Ctrl-C is only seen between them
                try:
                    return future.result(timeout=POLL)
                except concurrent.futures.TimeoutError:
                    continue
    except KeyboardInterrupt:
        note = interrupted_note(what, seen.stats.segments, total, seen.store)
        raise KeyboardInterrupt(note) from None


def _count(segments: Iterable[Any]) -> tuple[Iterable[Any], int]:
    """The segments, and how many there are (a generator is read into a list once)."""
    if not hasattr(segments, "__len__"):
        segments = list(segments)
    return segments, len(segments)  # type: ignore[arg-type]


def fetch_property(
    property: str,
    segments: Iterable[Any],
    *,
    project: str | None = None,
    progress: ProgressArg = None,
    deadline: float | None = None,
    **client_options: Any,
) -> SegmentPropertyResult:
    """Fetch one property of many segments, blocking until done: scripts and notebooks.

    The same as ``await AsyncClient(**client_options).fetch_property(property,
    segments, project=..., progress=..., deadline=...)``, run on an event loop of
    its own in a worker thread, so it works in a plain script and in a notebook
    (or other code where an event loop is already running) alike::

        import braincircuits_async as bca

        result = bca.fetch_property("link_pre", [720575940634474894],
                                    project="fruitfly_fafb_flywire")

    ``client_options`` are :class:`AsyncClient`'s keyword arguments (``token``,
    ``chunk_size``, ``store``, ...). Ctrl-C (in a notebook, the interrupt button)
    stops the fetch at once and raises ``KeyboardInterrupt`` saying how many
    segments were fetched; with ``store=`` they are kept, and the same call run
    again fetches only the rest.
    """
    segments, total = _count(segments)

    async def job(client: AsyncClient) -> SegmentPropertyResult:
        return await client.fetch_property(
            property, segments, project=project, progress=progress, deadline=deadline
        )

    return _blocking("fetch_property", total, job, client_options)


def fetch_properties(
    properties: Iterable[str],
    segments: Iterable[Any],
    *,
    project: str | None = None,
    progress: ProgressArg = None,
    deadline: float | None = None,
    **client_options: Any,
) -> dict[str, SegmentPropertyResult]:
    """Fetch several properties of the same segments, blocking until done.

    The blocking form of :meth:`AsyncClient.fetch_properties` (every result from
    one materialization), run as :func:`fetch_property` runs.
    """
    properties = list(properties)
    segments, total = _count(segments)

    async def job(client: AsyncClient) -> dict[str, SegmentPropertyResult]:
        return await client.fetch_properties(
            properties, segments, project=project, progress=progress, deadline=deadline
        )

    return _blocking("fetch_properties", total * len(properties), job, client_options)
