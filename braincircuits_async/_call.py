"""One property fetch in flight: chunk workers, retries, and the consistency bookkeeping.

A :class:`Call` owns the state of fetching one property for one list of ids.
A chunk is the slice ``ids[start:end]``; answers and failures are keyed by
``start``, so 413 splits and re-fetches simply replace or add slices, and merging
in ``start`` order gives the request order back. Workers take slices from a
queue, so memory does not grow with the number of chunks.

``fetch_property`` runs one call, ``fetch_properties`` several that share one
materialization reference, and ``iter_property`` one whose answers go to a
*sink* (the stream's buffer) instead of being kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BrainCircuitsError,
    DeadlineExceededError,
    IncompleteResultError,
    InconsistentMaterializationError,
    MalformedResponseError,
)
from ._merge import ChunkAnswer, newest_timestamp, parse_answer
from ._models import SegmentPropertyResult
from ._progress import Progress, Reporter
from ._retry import RETRYABLE_STATUS, call_with_retry, is_fatal
from ._transport import ENDPOINT, AuthHeaders, error_for_status, scrubbed

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = ["Call", "Reference", "run_all"]

logger = logging.getLogger("braincircuits_async")

Sink = Callable[[SegmentPropertyResult], Awaitable[None]]


class Reference:
    """The first materialization seen, shared by the calls of one request.

    ``fetch_properties`` gives all its calls one reference, so strict mode
    compares every chunk of every property with the same timestamp.
    """

    __slots__ = ("timestamp",)

    def __init__(self) -> None:
        self.timestamp: int | None = None


class Call:
    """The state of fetching one property for one list of ids."""

    def __init__(
        self,
        client: AsyncClient,
        prop: str,
        project: str,
        ids: list[int],
        headers: AuthHeaders,
        *,
        reporter: Reporter | None = None,
        reference: Reference | None = None,
        sink: Sink | None = None,
        deadline: float | None = None,
    ) -> None:
        self.client = client
        self.config = client.config
        self.prop = prop
        self.project = project
        self.ids = ids
        self.reporter = reporter
        self.reference = reference if reference is not None else Reference()
        self.sink = sink
        self.deadline = deadline
        self._delivered: list[tuple[int, int]] = []  # streaming: slices handed on
        path = ENDPOINT.format(property=prop)
        self.url = httpx.URL(self.config.base_url + path, params={"project": project})
        self.headers = AuthHeaders({**client._http.headers, **headers})
        self.answers: dict[int, ChunkAnswer] = {}
        self.failures: dict[int, tuple[int, BrainCircuitsError]] = {}
        self.fatal: Exception | None = None
        self.inconsistent = False
        self.refetching = False
        self.done = 0
        self.retries = 0
        self.failed = 0
        self._refetched: dict[int, int] = {}  # streaming: re-fetches per chunk
        self._warned_mixed = False
        self._group: anyio.abc.TaskGroup | None = None
        self._queue: MemoryObjectSendStream[tuple[int, int]] | None = None
        self._receive: MemoryObjectReceiveStream[tuple[int, int]] | None = None
        self._stand_ins = 0
        # Timeouts split chunks only while that helps: once a half of a chunk split
        # for timing out times out too, the size was not the trouble.
        self._split_on_timeout = True
        self._timeout_halves: set[int] = set()
        self._outstanding = 0

    # --- the phases ----------------------------------------------------------------

    async def run(self) -> SegmentPropertyResult:
        """Fetch everything, settle the materialization, return the merged result."""
        limit = math.inf if self.deadline is None else self.deadline
        with anyio.move_on_after(limit) as scope:
            await self.first_pass()
            if self.config.consistency == "refetch":
                for round_number in range(1, self.config.max_refetch_rounds + 1):
                    if not await self.refetch_stale(self.newest(), round_number):
                        break
        if scope.cancelled_caught:
            self.deadline_passed(limit)
        return self.finish()

    def deadline_passed(self, seconds: float) -> None:
        """Record every slice not fetched in time as failed because of the deadline."""
        error = DeadlineExceededError(
            f"{self.prop} (project {self.project!r}): deadline={seconds:g} s passed before "
            "this chunk was fetched; fetch these segments again, or allow more time"
        )
        for start, end in self._uncovered():
            self.failures[start] = (end, error)
            self.failed += end - start

    def _uncovered(self) -> list[tuple[int, int]]:
        """The slices of ``ids`` with neither an answer nor a recorded failure."""
        spans = sorted(
            [(a.start, a.end) for a in self.answers.values()]
            + [(start, end) for start, (end, _) in self.failures.items()]
            + self._delivered
        )
        gaps = []
        position = 0
        for start, end in spans:
            if start > position:
                gaps.append((position, start))
            position = max(position, end)
        if position < len(self.ids):
            gaps.append((position, len(self.ids)))
        return gaps

    async def first_pass(self) -> None:
        size = self.config.chunk_size
        await self._fetch(
            [(s, min(s + size, len(self.ids))) for s in range(0, len(self.ids), size)]
        )

    def newest(self) -> int | None:
        return newest_timestamp(self.answers.values())

    async def refetch_stale(self, target: int | None, round_number: int) -> bool:
        """Re-fetch the chunks not from materialization ``target``; False if none."""
        stale = [a for a in self.answers.values() if a.timestamp != target]
        if not stale:
            return False
        logger.info(
            "%s: %d chunk(s) are not from materialization %s; re-fetching (round %d)",
            self.prop,
            len(stale),
            target,
            round_number,
        )
        self.client.stats.refetches += len(stale)
        self.refetching = True
        await self._fetch([(a.start, a.end) for a in stale])
        return True

    def finish(self) -> SegmentPropertyResult:
        """The merged result, or the error that says why there is none to trust."""
        timestamps = {answer.timestamp for answer in self.answers.values()}
        if len(timestamps) > 1:
            if self.config.consistency != "ignore":
                raise self.inconsistent_error(
                    f"chunks still disagree after {self.config.max_refetch_rounds} "
                    "re-fetch round(s)"
                )
            logger.warning(
                "%s (project %r): chunks came from different materializations %s; "
                "consistency='ignore' keeps them all and reports the newest",
                self.prop,
                self.project,
                sorted(timestamps),
            )
        if not self.failures:
            return self.result()
        failures, errors = self.failure_reasons()
        if (
            not self.answers
            and self.sink is None
            and not isinstance(errors[0], DeadlineExceededError)
        ):
            # Nothing succeeded, so nothing is lost by raising the error itself.
            raise errors[0]
        result = self.result()
        where = (
            "were yielded already"
            if self.sink is not None
            else f"({len(result) + len(result.missing)}) are in .result"
        )
        raise IncompleteResultError(
            f"{self.prop} (project {self.project!r}): {len(failures)} of {len(self.ids)} "
            f"segment(s) could not be fetched ({len(self.failures)} chunk(s) failed; first: "
            f"{errors[0]}). The others {where}, the failed ones in .failures",
            result=result,
            failures=failures,
            errors=tuple(errors),
        ) from errors[0]

    # --- the workers ----------------------------------------------------------------

    async def _fetch(self, chunks: list[tuple[int, int]]) -> None:
        """Fetch ``chunks`` (and the halves of any that get a 413) with a worker pool."""
        send, receive = anyio.create_memory_object_stream[tuple[int, int]](math.inf)
        self._queue = send
        self._outstanding = len(chunks)
        for chunk in chunks:
            send.send_nowait(chunk)
        # One worker per slot; a worker waiting out a backoff lends its slot to a
        # stand-in (see `_count_retry`). More workers than slots would contend for
        # the limiter on every request, which costs ~15 % CPU at full speed.
        workers = min(self.config.max_concurrency, len(chunks))
        with send, receive:
            async with anyio.create_task_group() as group:
                self._group, self._receive = group, receive
                for _ in range(workers):
                    group.start_soon(self._worker, receive.clone())
        self._group = self._queue = self._receive = None
        if self.fatal is not None:
            raise self.fatal
        if self.inconsistent:
            raise self.inconsistent_error(
                "consistency='strict' and chunks came from different materializations"
            )

    async def _worker(self, receive: MemoryObjectReceiveStream[tuple[int, int]]) -> None:
        async with receive:
            while True:
                # Take queued work without a trip through the scheduler when there is
                # some: at high latency every such trip delays the next request.
                try:
                    start, end = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        start, end = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                if not await self._process(start, end):
                    return

    async def _stand_in(self, until: float) -> None:
        """Use a slot whose worker waits out a backoff, until that wait is over."""
        try:
            while anyio.current_time() < until and self._receive is not None:
                try:
                    start, end = self._receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                if not await self._process(start, end):
                    return
        finally:
            self._stand_ins -= 1

    async def _process(self, start: int, end: int) -> bool:
        """Fetch one queued chunk and do the bookkeeping; False if the call is over."""
        try:
            await self._chunk(start, end)
        except Exception as error:
            # A bug, the user's progress callback failing, or a stream whose reader
            # went away: stop the call and raise that error as it is, not wrapped in
            # an exception group.
            self.abort(error)
            return False
        self._outstanding -= 1
        if self._outstanding == 0 and self._queue is not None:
            self._queue.close()  # every slice is done: let the workers finish
        return True

    def _describe(self, start: int, end: int) -> str:
        return (
            f"{self.prop} (project {self.project!r}) chunk ids[{start}:{end}] "
            f"of {end - start} segment(s) from {self.ids[start]}"
        )

    async def _chunk(self, start: int, end: int) -> None:
        """Fetch ``ids[start:end]`` with retries; record its answer or why it failed."""
        stats = self.client.stats
        stats.chunks += 1
        describe = self._describe(start, end)
        splittable = end - start > 1
        try:
            answer = await call_with_retry(
                lambda: self._send(start, end, describe),
                self.config.retry,
                describe=describe,
                on_retry=self._count_retry,
                # Two timeouts on a chunk that can be split: it is likely too big to
                # answer in time, so halve it rather than wait out every retry.
                timeouts_before_giving_up=2 if splittable and self._split_on_timeout else None,
            )
        except APIStatusError as error:
            if error.status_code == 413 and splittable:
                self._split(start, end, "too large (413)")
                return
            self._fail(start, end, error)
        except APITimeoutError as error:
            if splittable and self._split_on_timeout:
                if start in self._timeout_halves:
                    # A half timed out too: stop splitting, give it its full retries.
                    self._split_on_timeout = False
                    self._queue_again(start, end)
                    return
                self._split(start, end, "timed out twice")
                self._timeout_halves.update((start, (start + end) // 2))
                return
            self._fail(start, end, error)
        except BrainCircuitsError as error:
            self._fail(start, end, error)
        else:
            stats.segments += end - start
            if self.sink is not None:
                if not await self._deliver(answer):
                    return  # queued again: counted when it is delivered
            else:
                self.answers[start] = answer
        self._report(end - start)

    def _report(self, segments: int) -> None:
        if self.refetching:
            return  # re-fetched segments were already counted once
        self.done += segments
        if self.reporter is not None:
            self.reporter(Progress(self.prop, self.done, len(self.ids), self.retries, self.failed))

    def _count_retry(self, error: BaseException, wait: float) -> None:
        """Before a retry's wait: count it, and lend the idle slot to a stand-in.

        The stand-in still takes its slot from the client's gate, so after 429s it
        only fills what the gate's (cut) limit allows. At most ``max_concurrency``
        stand-ins at once, so what a stream may hold stays bounded. Measured against
        a fake limited to 10 requests/s, stand-ins during 429 waits drew fewer 429s
        (101 against 164) and failed no chunk (against 5 without).
        """
        self.client.stats.retries += 1
        self.retries += 1
        if wait > 0 and self._group is not None and self._stand_ins < self.config.max_concurrency:
            self._stand_ins += 1
            self._group.start_soon(self._stand_in, anyio.current_time() + wait)

    def _queue_again(self, start: int, end: int) -> None:
        assert self._queue is not None
        self._outstanding += 1
        self._queue.send_nowait((start, end))

    def _split(self, start: int, end: int, why: str) -> None:
        """Queue both halves of the chunk as chunks of their own (a 413, or timeouts)."""
        middle = (start + end) // 2
        logger.info("%s: %s; splitting in two", self._describe(start, end), why)
        self.client.stats.splits += 1
        self.answers.pop(start, None)
        self._queue_again(start, middle)
        self._queue_again(middle, end)

    def abort(self, error: Exception) -> None:
        """Stop the whole call with ``error``; in-flight requests are cancelled."""
        if self.fatal is None:
            self.fatal = error
        if self._group is not None:
            self._group.cancel_scope.cancel()

    def _fail(self, start: int, end: int, error: BrainCircuitsError) -> None:
        if is_fatal(error):
            # 401/403/404/422 or a redirect would fail every other chunk alike.
            self.abort(error)
            return
        if isinstance(error, APIStatusError) and error.status_code in RETRYABLE_STATUS:
            limit = self.config.retry.max_retry_after
            if error.retry_after is not None and error.retry_after > limit:
                error.args = (
                    f"{error.args[0]}; the server asked to wait {error.retry_after:g} s, longer "
                    f"than max_retry_after={limit:g} s, so the chunk was not retried",
                )
        logger.warning("%s failed for good: %s", self._describe(start, end), error)
        self.failed += end - start
        self.answers.pop(start, None)
        self.failures[start] = (end, error)

    async def _send(self, start: int, end: int, describe: str) -> ChunkAnswer:
        """One request for ``ids[start:end]``: lower-layer errors become ours here."""
        client = self.client
        ids = self.ids[start:end]
        keys = list(map(str, ids))
        request = httpx.Request(
            "POST",
            self.url,
            headers=self.headers,
            content=('{"segments":[' + ",".join(keys) + "]}").encode(),
        )
        gate = client._limiter
        async with gate as sent_at:
            # Everything up to the verdict happens while holding the slot, so a fatal
            # error or a strict-mode disagreement cancels the rest before another
            # request can start. (Parsing here costs no concurrency: the event loop
            # is busy with it either way.) The fast paths may not have passed a
            # checkpoint: a call stopped meanwhile must send nothing more.
            await anyio.lowlevel.checkpoint_if_cancelled()
            client.stats.requests += 1
            failure: BrainCircuitsError | None = None
            pools = client._http
            slot = pools.take()
            try:
                response = await pools.client_for(slot).send(request, stream=True)
                try:
                    body = await _read_capped(response, self.config.max_response_bytes)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as error:
                failure = APITimeoutError(
                    f"{describe}: no answer within timeout={self.config.timeout:g} s "
                    f"({type(error).__name__})"
                )
            except httpx.DecodingError as error:
                failure = MalformedResponseError(
                    f"{describe}: the answer could not be decoded ({error})", transient=True
                )
            except httpx.RequestError as error:
                failure = APIConnectionError(
                    f"{describe}: connection failed ({type(error).__name__}: {error})"
                )
            finally:
                pools.give_back(slot)
            if failure is not None:
                # Raised outside the except block: the httpx error holds the request,
                # whose headers carry the tokens, so it must not ride along as context.
                raise failure
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "POST %s %s -> %d in %.3fs",
                    self.url.path,
                    describe,
                    response.status_code,
                    time.monotonic() - sent_at,
                )
            if body is None:
                raise MalformedResponseError(
                    f"{describe}: the answer is larger than max_response_bytes="
                    f"{self.config.max_response_bytes:,}; lower chunk_size, or raise the cap"
                )
            if response.status_code != 200:
                if response.status_code == 429:
                    gate.throttled(sent_at)
                failure = error_for_status(
                    response,
                    body,
                    describe=describe,
                    token=client._token,
                    cave_token=client._cave_for(self.project),
                )
                if is_fatal(failure):
                    self.abort(failure)
                raise failure
            gate.succeeded()
            try:
                answer = parse_answer(body, ids, keys, start=start, describe=describe)
            except MalformedResponseError as error:
                failure = scrubbed(error, client._token, client._cave_for(self.project))
            if failure is not None:
                raise failure
            self._observe(answer)
            return answer

    # --- consistency --------------------------------------------------------------

    def _observe(self, answer: ChunkAnswer) -> None:
        """In strict mode, stop everything at the first answer from another materialization."""
        reference = self.reference
        if reference.timestamp is None:
            reference.timestamp = answer.timestamp
        elif answer.timestamp != reference.timestamp and self.config.consistency == "strict":
            if self.sink is not None:
                why = "consistency='strict' allows only one"
                self.abort(self._stream_disagreement(answer, reference.timestamp, why))
                return
            self.answers[answer.start] = answer  # the error reports what was fetched
            self.inconsistent = True
            if self._group is not None:
                self._group.cancel_scope.cancel()

    async def _deliver(self, answer: ChunkAnswer) -> bool:
        """Streaming: hand one chunk on, or queue it again; False when queued again.

        Chunks already handed on cannot be taken back, so the first materialization
        seen is the stream's reference. ``"refetch"``: an older chunk is fetched
        again (a lagging replica catches up); a newer one means the chunks already
        handed on are stale, which raises. ``"strict"``: any other timestamp raises
        (see `_observe`). ``"ignore"``: every chunk is handed on with its own
        timestamp, and the first disagreement is logged.
        """
        reference = self.reference.timestamp
        mode = self.config.consistency
        if answer.timestamp != reference:
            if mode == "strict":
                return True  # `_observe` has stopped the call already
            if mode == "refetch":
                rounds = self._refetched.get(answer.start, 0)
                older = reference is not None and answer.timestamp < reference
                if older and rounds < self.config.max_refetch_rounds:
                    self._refetched[answer.start] = rounds + 1
                    self.client.stats.refetches += 1
                    self._queue_again(answer.start, answer.end)
                    return False
                why = (
                    "chunks of the older one were yielded already"
                    if reference is not None and answer.timestamp > reference
                    else f"{rounds} re-fetch round(s) did not reconcile them"
                )
                self.abort(self._stream_disagreement(answer, reference, why))
                return True
            if not self._warned_mixed:
                self._warned_mixed = True
                logger.warning(
                    "%s (project %r): stream chunks come from materializations %s and %s; "
                    "consistency='ignore' yields each with its own timestamp",
                    self.prop,
                    self.project,
                    reference,
                    answer.timestamp,
                )
        assert self.sink is not None
        await self.sink(self.chunk_result(answer))
        self._delivered.append((answer.start, answer.end))
        return True

    def _stream_disagreement(
        self, answer: ChunkAnswer, reference: int | None, why: str
    ) -> InconsistentMaterializationError:
        timestamps = tuple(sorted({answer.timestamp, reference or answer.timestamp}))
        return InconsistentMaterializationError(
            f"{self.prop} (project {self.project!r}): the stream's chunks came from "
            f"materializations {list(timestamps)}, and {why}; start the stream again "
            "to read one materialization",
            timestamps=timestamps,
            result=self.chunk_result(answer),
            segment_timestamps=dict.fromkeys((s for s, _ in answer.items()), answer.timestamp),
        )

    # --- results --------------------------------------------------------------------

    def chunk_result(self, answer: ChunkAnswer) -> SegmentPropertyResult:
        return SegmentPropertyResult(
            dict(answer.items()),
            property=self.prop,
            project=self.project,
            materialized_timestamp=answer.timestamp,
            missing=tuple(answer.missing),
        )

    def result(self) -> SegmentPropertyResult:
        data: dict[int, dict[str, Any]] = {}
        missing: list[int] = []
        for start in sorted(self.answers):
            answer = self.answers[start]
            data.update(answer.items())
            missing.extend(answer.missing)
        return SegmentPropertyResult(
            data,
            property=self.prop,
            project=self.project,
            materialized_timestamp=self.newest(),
            missing=tuple(missing),
        )

    def failure_reasons(self) -> tuple[dict[int, str], list[BrainCircuitsError]]:
        errors: list[BrainCircuitsError] = []
        failures: dict[int, str] = {}
        for start in sorted(self.failures):
            end, error = self.failures[start]
            if error not in errors:
                errors.append(error)
            failures.update(dict.fromkeys(self.ids[start:end], str(error)))
        return failures, errors

    def segment_timestamps(self) -> dict[int, int]:
        return {
            segment: answer.timestamp
            for answer in self.answers.values()
            for segment, _ in answer.items()
        }

    def inconsistent_error(self, why: str) -> InconsistentMaterializationError:
        timestamps = tuple(sorted({a.timestamp for a in self.answers.values()}))
        failures, _ = self.failure_reasons()
        advice = (
            "raise max_refetch_rounds, or fetch again later"
            if self.config.consistency == "refetch"
            else "fetch again, or use consistency='refetch' to re-fetch stale chunks"
        )
        return InconsistentMaterializationError(
            f"{self.prop} (project {self.project!r}): {why}: timestamps {list(timestamps)}. "
            f"The dataset was re-materialized during the fetch; {advice}",
            timestamps=timestamps,
            result=self.result(),
            segment_timestamps=self.segment_timestamps(),
            failures=failures,
        )


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or None if it is longer than ``cap`` bytes (a runaway answer)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    pieces = []
    size = 0
    # aclosing: stopping early must close httpx's body generators now, not at GC.
    body: Any = response.aiter_bytes()  # an async generator: it has aclose()
    async with contextlib.aclosing(body):
        async for piece in body:
            size += len(piece)
            if size > cap:
                return None
            pieces.append(piece)
    return b"".join(pieces)


async def run_all(jobs: list[Callable[[], Awaitable[Any]]]) -> None:
    """Run ``jobs`` concurrently; the first to fail cancels the others and is raised."""
    errors: list[Exception] = []

    async def one(job: Callable[[], Awaitable[Any]], group: anyio.abc.TaskGroup) -> None:
        try:
            await job()
        except Exception as error:
            errors.append(error)
            group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        for job in jobs:
            group.start_soon(one, job, group)
    if errors:
        raise errors[0]
