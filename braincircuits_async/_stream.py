"""``PropertyStream``: the async iterator that ``iter_property`` returns.

The requests of a stream run in a producer task hosted by the client's own task
group, not inside the iterator: an async generator that owned a task group
could not be closed from another task, which is what a ``break`` does. The
producer hands chunk results over through a bounded buffer, so a slow reader
holds back the requests instead of piling up results. When the reader stops
(a ``break``, ``aclose()``, or the stream being dropped), the producer's cancel
scope is cancelled at once, synchronously: no request is sent after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._exceptions import BrainCircuitsError
from ._models import SegmentPropertyResult

__all__ = ["Producer", "PropertyStream"]


class Producer:
    """The writing end of a stream, run in the client's task group.

    It holds no reference to the :class:`PropertyStream` the reader iterates, so
    that dropping the stream (a ``break``) really drops it and its ``__del__``
    stops this producer.
    """

    def __init__(self, send: MemoryObjectSendStream[SegmentPropertyResult | BaseException]) -> None:
        self._send = send
        self.scope = anyio.CancelScope()
        #: Stopped from outside (the client closed), not by the reader nor by finishing.
        self.interrupted = False

    async def put(self, result: SegmentPropertyResult) -> None:
        """Hand one chunk's result to the reader; waits while the buffer is full."""
        try:
            # No checkpoint when there is room: a result already fetched must not be
            # lost to a cancellation (a strict-mode stop) between fetch and hand-over.
            self._send.send_nowait(result)
        except anyio.WouldBlock:
            await self._send.send(result)

    async def run(self, job: Callable[[], Awaitable[object]], done: Callable[[], None]) -> None:
        """Run the call and close the stream; errors go to the reader, not the group."""
        with self.scope, self._send:
            try:
                await job()
            except anyio.get_cancelled_exc_class():
                # Cancelled, but not through our own scope (the reader stopping): the
                # client was closed under a running stream. The reader must hear of it,
                # not see a normal end with part of the data.
                if not self.scope.cancel_called:
                    self.interrupted = True
                raise
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the reader has gone
            except Exception as error:
                # After every result already buffered, so nothing fetched is skipped.
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._send.send(error)
            finally:
                done()

    def finish(self) -> None:
        """End a stream that has nothing to fetch."""
        self._send.close()


class PropertyStream:
    """Chunk results of one property as they arrive; use with ``async for``.

    ``break`` out of the loop (or call :meth:`aclose`) to stop early: the
    requests still in flight are cancelled and no new one is sent. It can also
    be used as ``async with client.iter_property(...) as stream:`` to make the
    stop explicit.
    """

    def __init__(self, *, buffer: int) -> None:
        send, self._receive = anyio.create_memory_object_stream[
            SegmentPropertyResult | BaseException
        ](max(buffer, 1))
        self.producer = Producer(send)
        self._scope = self.producer.scope
        self._stopped = False

    def __aiter__(self) -> PropertyStream:
        return self

    async def __anext__(self) -> SegmentPropertyResult:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._stopped = True
            self._receive.close()
            if self.producer.interrupted:
                raise BrainCircuitsError(
                    "the client was closed while this stream was still fetching; the "
                    "results so far were yielded, the rest was not fetched. Read the "
                    "stream inside `async with AsyncClient(...) as client:`"
                ) from None
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            self._stop()
            raise item
        return item

    def _stop(self) -> None:
        # Synchronous on purpose: it also runs from __del__, right after a `break`.
        if not self._stopped:
            self._stopped = True
            self._receive.close()
            self._scope.cancel()

    async def aclose(self) -> None:
        """Stop the stream: cancel requests in flight and send no new one."""
        self._stop()

    async def __aenter__(self) -> PropertyStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def __del__(self) -> None:
        # A `break` drops the last reference to the stream: stop the producer now,
        # before it can start another request. (Without a running event loop, as
        # at interpreter exit, there is nothing left to stop.)
        if getattr(self, "_stopped", True):
            return
        with contextlib.suppress(RuntimeError):
            self._stop()
