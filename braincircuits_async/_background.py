"""Background tasks of a client that any task of its event loop can stop.

A stream's requests run in a producer task that must outlive a ``break`` in the
reader's loop. An anyio task group would do, but it is bound to the task that
entered it: a client opened in one notebook cell and closed in another (a
different task) could not exit it ("Attempted to exit cancel scope in a
different task"). So each producer runs in a task of its own, started on the
running loop (``asyncio``'s ``create_task``, trio's system tasks), inside a
cancel scope the client keeps; closing the client cancels those scopes and
waits for the tasks to end, from whichever task closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["BackgroundTasks"]

logger = logging.getLogger("braincircuits_async")


class BackgroundTasks:
    """Tasks started from synchronous code, stopped together by :meth:`aclose`."""

    __slots__ = ("_running", "_strong")

    def __init__(self) -> None:
        #: The cancel scope of every running task, and the event it sets when done.
        self._running: dict[anyio.CancelScope, anyio.Event] = {}
        #: asyncio keeps only weak references to tasks: these keep them alive.
        self._strong: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._running)

    def start(self, job: Callable[[], Awaitable[object]]) -> None:
        """Run ``job()`` in a new task of the running event loop."""
        scope = anyio.CancelScope()
        done = anyio.Event()
        self._running[scope] = done

        async def run() -> None:
            try:
                with scope:
                    await job()
            except Exception:  # a bug: the job hands its own errors to its reader
                logger.exception("a background task of braincircuits-async failed")
            finally:
                self._running.pop(scope, None)
                done.set()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio, the other backend anyio runs on
            import trio

            trio.lowlevel.spawn_system_task(run)
            return
        task = loop.create_task(run())
        self._strong.add(task)
        task.add_done_callback(self._strong.discard)

    async def aclose(self) -> None:
        """Cancel every running task and wait until each has ended."""
        running = list(self._running.items())
        for scope, _ in running:
            scope.cancel()
        with anyio.CancelScope(shield=True):
            for _, done in running:
                await done.wait()
