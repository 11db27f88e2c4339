"""The store during a fetch: commits as answers arrive, stored chunks read as handed on.

Both run the store's blocking calls in worker threads, never in the event loop.
"""

from __future__ import annotations

import collections
import dataclasses

import anyio
import anyio.to_thread

from ._exceptions import StoreError
from ._merge import ChunkAnswer
from ._store import ResultStore

__all__ = ["Committer", "Loader"]


class Committer:
    """Commits one call's answers to a store: one transaction per chunk, in a worker
    thread, one writer at a time (more threads would only queue on SQLite's lock).

    Answers that arrive while a write runs wait in a queue (their callers wait until
    it is empty), and the writer's thread takes them all before it hands back, so a
    writer that falls behind costs one thread hop per batch, not per chunk. Shielded
    from cancellation: an answer that arrived is written even when the call is being
    stopped (a deadline, a fatal error, an interrupt). After a commit fails, the ones
    queued behind it are skipped, so stopping takes one busy timeout at most, not one
    per queued chunk; the call stops with that :class:`StoreError`, and the answers
    stay in memory, in its ``result``.
    """

    def __init__(self, store: ResultStore, prop: str, project: str, server: str) -> None:
        self._store = store
        self._prop = prop
        self._project = project
        self._server = server
        self._queue: collections.deque[ChunkAnswer] = collections.deque()
        # Set while a writer runs, until the queue is empty; only used in the loop's thread.
        self._drained: anyio.Event | None = None
        self._failed = False

    async def __call__(self, answer: ChunkAnswer) -> None:
        if self._failed:
            return
        self._queue.append(answer)
        if self._drained is not None:
            # The running writer takes it; waiting for it keeps the caller's bound on
            # answers not yet written true (a stream's answers are alive until then).
            await self._drained.wait()
            return
        self._drained = drained = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                # Checked here, in the loop's thread, so no answer is left behind.
                while self._queue and not self._failed:
                    await anyio.to_thread.run_sync(self._write_queued)
        except StoreError:
            self._failed = True
            self._queue.clear()
            raise
        finally:
            self._drained = None
            drained.set()

    def _write_queued(self) -> None:
        """In the worker thread: write every queued chunk, each its own transaction."""
        while self._queue:
            answer = self._queue.popleft()
            self._store._write(
                self._prop,
                self._project,
                answer.timestamp,
                answer.ids,
                answer.values,
                server=self._server,
            )


class Loader:
    """Reads a stream's stored chunks, one at a time, in a worker thread."""

    def __init__(self, store: ResultStore, prop: str, project: str) -> None:
        self._store = store
        self._prop = prop
        self._project = project

    async def __call__(self, answer: ChunkAnswer) -> ChunkAnswer | None:
        values = await anyio.to_thread.run_sync(
            self._store._values, self._prop, self._project, answer.timestamp, answer.ids
        )
        return None if values is None else dataclasses.replace(answer, values=values)
