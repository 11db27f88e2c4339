"""A blocking ``fetch_property`` for scripts, on top of the async client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import anyio

from ._client import AsyncClient
from ._exceptions import UsageError
from ._models import SegmentPropertyResult
from ._progress import ProgressArg

__all__ = ["fetch_property"]


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return False
        return True
    return False


def fetch_property(
    property: str,
    segments: Iterable[Any],
    *,
    project: str | None = None,
    progress: ProgressArg = None,
    **client_options: Any,
) -> SegmentPropertyResult:
    """Fetch one property of many segments, blocking until done: for plain scripts.

    The same as ``await AsyncClient(**client_options).fetch_property(property,
    segments, project=..., progress=...)``, run with ``anyio.run``::

        import braincircuits_async as bca

        result = bca.fetch_property("link_pre", [720575940634474894],
                                    project="fruitfly_fafb_flywire")

    ``client_options`` are :class:`AsyncClient`'s keyword arguments (``token``,
    ``chunk_size``, ...). In a notebook or other async code, where an event loop
    is already running, this raises ``RuntimeError``: ``await`` the client there.
    """
    if _event_loop_running():
        raise UsageError(
            "bca.fetch_property() blocks, but an event loop is already running here "
            "(a notebook, or async code): use `async with bca.AsyncClient(...) as client: "
            "result = await client.fetch_property(...)` instead"
        )

    async def main() -> SegmentPropertyResult:
        async with AsyncClient(**client_options) as client:
            return await client.fetch_property(
                property, segments, project=project, progress=progress
            )

    return anyio.run(main)
