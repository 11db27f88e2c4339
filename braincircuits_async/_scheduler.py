"""The scheduler of one property fetch: a queue of slices, a pool of workers, the bookkeeping.

A :class:`Call` fetches one property for one list of ids through a
:class:`~braincircuits_async._wire.Wire`; it knows nothing of the client. A chunk
is the slice ``ids[start:end]``; answers and failures are keyed by ``start``, so
splits and re-fetches simply replace or add slices, and merging in ``start``
order gives the request order back. Workers take slices from a queue
(:class:`Work`), so memory does not grow with the number of chunks. Every
decision (keep or refetch an answer, split a chunk, stop sending to a server that
looks down) is a pure function of ``_policy``; what the whole fetch does with the
calls is the client's orchestration.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio

from ._config import ClientConfig
from ._exceptions import (
    APIError,
    APIStatusError,
    APITimeoutError,
    BrainCircuitsError,
    DeadlineExceededError,
    StoreError,
)
from ._merge import ChunkAnswer, chunk_result
from ._models import SegmentPropertyResult
from ._policy import (
    Brake,
    Outcome,
    Split,
    TooLarge,
    Verdict,
    brake,
    brake_budget,
    judge_timestamp,
    server_down,
    server_down_error,
    split_decision,
    stream_disagreement,
    timeouts_before_splitting,
    too_large_after,
    too_large_error,
    uncovered,
)
from ._progress import Progress, Reporter
from ._resume import Plan
from ._retry import call_with_retry, is_fatal
from ._stats import ClientStats
from ._wire import Target, Wire

__all__ = ["Call", "Load", "Record", "Reference", "Sink", "Streak", "StrictStop", "Work", "run_all"]

logger = logging.getLogger("braincircuits_async")

#: Where a stream's chunk results go instead of being kept.
Sink = Callable[[SegmentPropertyResult], Awaitable[None]]
#: Where every answer from the network is committed as it arrives (a result store).
Record = Callable[[ChunkAnswer], Awaitable[None]]
#: Reads a stored chunk's values (None: no longer held), for a stream's bounded memory.
Load = Callable[[ChunkAnswer], Awaitable["ChunkAnswer | None"]]


class StrictStop(Exception):
    """Raised by a round in strict mode at the first answer from another materialization.

    Not an error of its own: the orchestration stops every call and settles, and
    settling raises :class:`InconsistentMaterializationError` with all results.
    """


class Reference:
    """What the calls of one fetch share: the first materialization seen, and the brake.

    ``fetch_properties`` gives all its calls one reference, so strict mode
    compares every chunk of every property with the same timestamp, and a
    success of any property's request releases the brake for all.
    """

    __slots__ = ("streak", "timestamp")

    def __init__(self) -> None:
        self.timestamp: int | None = None
        self.streak = Streak()


class Streak:
    """The requests since the last success, counted for the brake (see ``_policy.brake``).

    ``sent`` counts requests started since then, ``failed`` those that failed with
    the server down; a request that ends otherwise (a 429, a 4xx, cancelled) is
    taken back from ``sent``. A success starts a new ``epoch``: requests started
    before it no longer count, whatever their outcome.
    """

    __slots__ = ("_changed", "epoch", "failed", "last", "sent")

    def __init__(self) -> None:
        self.epoch = 0
        self.sent = 0
        self.failed = 0
        #: The error of the last request that found the server down.
        self.last: APIError | None = None
        self._changed: anyio.Event | None = None

    def succeeded(self) -> None:
        self.epoch += 1
        self.sent = self.failed = 0
        self._notify()

    def found_down(self, epoch: int, error: APIError) -> None:
        if epoch == self.epoch:
            self.failed += 1
            self.last = error
            self._notify()

    def ended_otherwise(self, epoch: int) -> None:
        if epoch == self.epoch:
            self.sent -= 1
            self._notify()

    async def changed(self) -> None:
        """Wait until a request of the streak ends."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class Work:
    """The slices a round fetches: pieces of split chunks first, newest first, then the queue.

    Pieces are tried depth-first, before the chunks still queued: queued behind
    every other chunk, the halves of a chunk refused as too large would reach a
    single id only after every other chunk was halved as often. Taking work when
    there is some does not pass through the scheduler: at high latency every such
    trip delays the next request. ``outstanding`` counts the slices taken or
    queued but not done; at 0 the round is over and :meth:`take` returns None.
    """

    __slots__ = ("_pieces", "_queue", "_wake", "outstanding")

    def __init__(self, slices: Iterable[tuple[int, int]]) -> None:
        self._queue = deque(slices)
        self._pieces: list[tuple[int, int]] = []
        self.outstanding = len(self._queue)
        self._wake: anyio.Event | None = None

    def take_nowait(self) -> tuple[int, int] | None:
        if self._pieces:
            return self._pieces.pop()
        return self._queue.popleft() if self._queue else None

    async def take(self) -> tuple[int, int] | None:
        """The next slice, waiting while others are in progress; None when the round is over."""
        while (piece := self.take_nowait()) is None:
            if self.outstanding == 0:
                return None
            if self._wake is None:
                self._wake = anyio.Event()
            await self._wake.wait()
        return piece

    def split(self, pieces: Sequence[tuple[int, int]]) -> None:
        """Queue the pieces of a split chunk to be taken next, the first one first."""
        self.outstanding += len(pieces)
        self._pieces.extend(reversed(pieces))
        self._notify()

    def again(self, piece: tuple[int, int]) -> None:
        """Queue a slice again at the end (a stream's stale chunk, fetched anew)."""
        self.outstanding += 1
        self._queue.append(piece)
        self._notify()

    def done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self._notify()  # the round is over: let the waiting workers finish

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None


class Call:
    """The state of fetching one property for one list of ids.

    A call's ids, first slices and stored answers come from its
    :class:`~braincircuits_async._resume.Plan`: without a store, every chunk of
    the ids; with one, the ids the store does not hold, and the held values as
    answers of their own (kept, or in a stream handed on by
    :meth:`deliver_stored`).
    """

    def __init__(
        self,
        wire: Wire,
        target: Target,
        plan: Plan,
        config: ClientConfig,
        stats: ClientStats,
        *,
        reference: Reference,
        reporter: Reporter | None = None,
        sink: Sink | None = None,
        record: Record | None = None,
        load_stored: Load | None = None,
    ) -> None:
        self.wire = wire
        self.target = target
        self.ids: Sequence[int] = plan.ids
        self.order = plan.order
        #: The slices of the first pass (what the store does not hold).
        self.first_pass = plan.slices
        self.config = config
        self.stats = stats
        self.reference = reference
        self.reporter = reporter
        self.sink = sink
        self.record = record
        self.load_stored = load_stored
        self._stored = plan.stored if sink is not None else []
        #: start -> answer of each slice kept (not in a stream: those are handed on).
        self.answers: dict[int, ChunkAnswer] = (
            {} if sink is not None else {a.start: a for a in plan.stored}
        )
        #: start -> (end, error) of each slice that failed for good.
        self.failures: dict[int, tuple[int, BrainCircuitsError]] = {}
        self._delivered: list[tuple[int, int]] = []
        self._refetched: dict[int, int] = {}  # streams: re-fetches per slice
        self._warned_mixed = False
        # Progress: re-fetched segments were counted once already.
        self._refetching = False
        self._done = self._retries = self._failed = 0
        # What the store held counts as done (a stream's once it is handed on).
        if sink is None:
            self._done = sum(a.end - a.start for a in plan.stored)
        # Timeouts and 413s split chunks only while that helps (see `_policy.split_decision`).
        self._split_on_timeout = True
        self._timeout_halves: set[int] = set()
        self._too_large = TooLarge.UNKNOWN
        self._too_large_pieces: set[int] = set()  # starts of pieces split off for a 413
        self._refused: int | None = None  # the single segment refused with a 413
        self._budget = brake_budget(config.max_concurrency, config.retry.max_retries)
        # One round's worker pool.
        self._stop: BaseException | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._work: Work | None = None
        self._stand_ins = 0
        self._commits: anyio.Semaphore | None = None  # commits in the background

    # --- what the orchestration calls --------------------------------------------

    async def refetch(self, slices: list[tuple[int, int]]) -> None:
        """Fetch ``slices`` again (they are from an older materialization)."""
        self._refetching = True
        await self.fetch(slices)

    async def fetch(self, slices: list[tuple[int, int]]) -> None:
        """One round: fetch ``slices`` (and the halves of any that split) with a worker pool.

        Raises what stopped the call: a fatal answer (401, 404, ...), the brake (a
        server that looks down, see :meth:`_send`), a stream's disagreement,
        :class:`StrictStop`, or a bug (the user's callback failing).
        """
        if self._commits is None and self.record is not None:
            self._commits = anyio.Semaphore(2 * self.config.max_concurrency)
        self._work = work = Work(slices)
        # One worker per slot; a worker waiting out a backoff lends its slot to a
        # stand-in (see `_count_retry`). More workers than slots would contend for
        # the gate on every request, which costs ~15 % CPU at full speed.
        async with anyio.create_task_group() as group:
            self._group = group
            for _ in range(min(self.config.max_concurrency, len(slices))):
                group.start_soon(self._worker, work)
        self._group = self._work = None
        if self._stop is not None:
            raise self._stop

    async def deliver_stored(self) -> list[tuple[int, int]]:
        """Streams: hand on the stored chunks, after the fetched ones set the reference.

        Returns the slices to fetch again: stored chunks from an older
        materialization, in ``"refetch"`` mode (see :func:`judge_timestamp`).
        """
        again: list[tuple[int, int]] = []
        stored, self._stored = self._stored, []
        for answer in stored:
            if self.reference.timestamp is None:  # nothing fetched: the store's is the first
                self.reference.timestamp = answer.timestamp
            verdict, why = self._verdict(answer)
            if verdict is Verdict.REFETCH:
                self._refetched[answer.start] = self._refetched.get(answer.start, 0) + 1
                self.stats.refetches += 1
                again.append((answer.start, answer.end))
            elif verdict is Verdict.STOP:
                raise self._disagreement(answer, why)
            elif (loaded := await self._load(answer)) is None:
                again.append((answer.start, answer.end))  # pruned meanwhile: fetch it
            else:
                await self._hand_on(loaded)
                self._report(answer.end - answer.start)
        return again

    async def _load(self, answer: ChunkAnswer) -> ChunkAnswer | None:
        """A stored chunk with its values: a stream's plan holds only the timestamps."""
        return answer if self.load_stored is None else await self.load_stored(answer)

    def deadline_passed(self, seconds: float) -> None:
        """Record every slice not fetched in time as failed because of the deadline."""
        error = DeadlineExceededError(
            f"{self.target.prop} (project {self.target.project!r}): deadline={seconds:g} s "
            "passed before this chunk was fetched; fetch these segments again, or allow more time"
        )
        spans = [(a.start, a.end) for a in self.answers.values()]
        spans += [(start, end) for start, (end, _) in self.failures.items()]
        for start, end in uncovered(spans + self._delivered, len(self.ids)):
            self.failures[start] = (end, error)
            self._failed += end - start

    @property
    def fatal(self) -> BrainCircuitsError | None:
        """The error that stopped the call for good (a 401, a store error), if one did."""
        return self._stop if isinstance(self._stop, BrainCircuitsError) else None

    def outcome(self) -> Outcome:
        return Outcome(
            self.target.prop,
            self.target.project,
            self.ids,
            list(self.answers.values()),
            dict(self.failures),
            len(self._delivered),
            self.order,
        )

    # --- the workers -------------------------------------------------------------

    async def _worker(self, work: Work) -> None:
        while (piece := await work.take()) is not None:
            if not await self._process(*piece):
                return

    async def _stand_in(self, until: float) -> None:
        """Use a slot whose worker waits out a backoff, until that wait is over."""
        try:
            while (
                anyio.current_time() < until
                and (work := self._work) is not None
                and (piece := work.take_nowait()) is not None
            ):
                if not await self._process(*piece):
                    return
        finally:
            self._stand_ins -= 1

    async def _process(self, start: int, end: int) -> bool:
        """Fetch one queued slice and do the bookkeeping; False if the round is over."""
        try:
            await self._chunk(start, end)
        except Exception as error:
            # A bug, the user's progress callback failing, or a stream whose reader
            # went away: stop the call and raise that error as it is, not wrapped in
            # an exception group.
            self._abort(error)
            return False
        assert self._work is not None
        self._work.done()
        return True

    def _describe(self, start: int, end: int) -> str:
        return (
            f"{self.target.prop} (project {self.target.project!r}) chunk ids[{start}:{end}] "
            f"of {end - start} segment(s) from {self.ids[start]}"
        )

    async def _chunk(self, start: int, end: int) -> None:
        """Fetch ``ids[start:end]`` with retries; record its answer or why it failed."""
        self.stats.chunks += 1
        describe = self._describe(start, end)
        ids = self.ids[start:end]
        try:
            answer = await call_with_retry(
                lambda: self._send(ids, start, describe),
                self.config.retry,
                on_retry=self._count_retry,
                timeouts_before_giving_up=timeouts_before_splitting(
                    end - start, split_on_timeout=self._split_on_timeout
                ),
            )
        except BrainCircuitsError as error:
            self._failed_for_good(start, end, error)
            return
        if start in self._too_large_pieces:
            self._too_large_pieces.discard(start)
            self._too_large = too_large_after(self._too_large, size=end - start, answered=True)
        self.stats.segments += end - start
        if self.sink is None:
            self.answers[start] = answer  # kept first: whatever happens next, it is not lost
        if self.record is not None:
            await self._commit_soon(answer)
        if self._stop is not None:
            # Stopped meanwhile (strict mode at this answer, a fatal answer elsewhere, the
            # store): the answer is kept (and stored), nothing more is handed on.
            self._report(end - start)
            return
        if self.sink is not None and not await self._deliver(answer):
            return  # queued again: counted when it is delivered
        self._report(end - start)

    async def _send(self, ids: Sequence[int], start: int, describe: str) -> ChunkAnswer:
        """One request through the wire, if the brake lets it go (see ``_policy.brake``).

        Requests that find the server down count toward the brake; when the whole
        budget failed, the call stops (``_abort``) instead of sending this request
        and the rest. Only a request about to go is stopped: when the last chunk
        failed, there is nothing left to spare the server, and the call ends as
        usual (an :class:`IncompleteResultError` naming the chunks that failed).
        """
        streak = self.reference.streak
        while (verdict := brake(streak.sent, streak.failed, budget=self._budget)) is not Brake.GO:
            if verdict is Brake.STOP:
                self._stop_braking(streak)
            await streak.changed()
        epoch = streak.epoch
        streak.sent += 1
        try:
            answer = await self.wire.send(
                self.target, ids, start=start, describe=describe, judge=self._judge
            )
        except BaseException as error:
            if isinstance(error, APIError) and server_down(error):
                streak.found_down(epoch, error)
            else:
                streak.ended_otherwise(epoch)
            raise
        streak.succeeded()
        return answer

    def _stop_braking(self, streak: Streak) -> None:
        """Stop the call: every request of the brake's budget found the server down."""
        assert streak.last is not None
        if self._stop is None:
            logger.warning("%s; stopping the fetch: the server looks down", streak.last)
        self._abort(
            server_down_error(
                streak.last,
                what=f"{self.target.prop} (project {self.target.project!r})",
                requests=streak.failed,
            )
        )

    async def _commit_soon(self, answer: ChunkAnswer) -> None:
        """Commit ``answer`` to the store in the background, while the worker goes on.

        A worker that awaited its commit would leave its slot idle for the write
        (5-8 % at 50 ms latency, more when the writer falls behind). At most
        ``2 * max_concurrency`` commits wait at once, so what they hold stays bounded;
        the round ends only when every commit is done, and a commit that fails stops
        the call with its :class:`StoreError`.
        """
        assert self._group is not None
        assert self._commits is not None
        with anyio.CancelScope(shield=True):  # an answer that arrived is committed
            await self._commits.acquire()
        self._group.start_soon(self._commit, answer)

    async def _commit(self, answer: ChunkAnswer) -> None:
        assert self.record is not None
        assert self._commits is not None
        try:
            await self.record(answer)
        except StoreError as error:
            self._abort(error)
        finally:
            self._commits.release()

    def _judge(self, outcome: ChunkAnswer | BrainCircuitsError) -> None:
        """The verdict on a request's outcome, taken while it still holds its slot."""
        if isinstance(outcome, BrainCircuitsError):
            if is_fatal(outcome):
                # 401/403/404/422 or a redirect would fail every other chunk alike.
                self._abort(outcome)
            return
        reference = self.reference
        if reference.timestamp is None:
            reference.timestamp = outcome.timestamp
        if outcome.timestamp == reference.timestamp or self.config.consistency != "strict":
            return  # the common case, decided without a call; other modes decide later
        verdict, why = self._verdict(outcome)
        if verdict is Verdict.STOP:
            if self.sink is None:
                self.answers[outcome.start] = outcome  # the error reports what was fetched
                self._abort(StrictStop())
            else:
                self._abort(self._disagreement(outcome, why))

    def _verdict(self, answer: ChunkAnswer) -> tuple[Verdict, str]:
        return judge_timestamp(
            answer.timestamp,
            self.reference.timestamp,
            consistency=self.config.consistency,
            streaming=self.sink is not None,
            refetched=self._refetched.get(answer.start, 0),
            max_refetch_rounds=self.config.max_refetch_rounds,
        )

    async def _deliver(self, answer: ChunkAnswer) -> bool:
        """Streams: hand one chunk on, or queue it again; False when queued again."""
        verdict, why = self._verdict(answer)
        if verdict is Verdict.REFETCH:
            self._refetched[answer.start] = self._refetched.get(answer.start, 0) + 1
            self.stats.refetches += 1
            self._queue_again(answer.start, answer.end)
            return False
        if verdict is Verdict.STOP:
            self._abort(self._disagreement(answer, why))
            return True
        await self._hand_on(answer)
        return True

    async def _hand_on(self, answer: ChunkAnswer) -> None:
        """Streams: give one chunk to the reader (warning once about a mix, if kept)."""
        if answer.timestamp != self.reference.timestamp and not self._warned_mixed:
            self._warned_mixed = True
            logger.warning(
                "%s (project %r): stream chunks come from materializations %s and %s; "
                "consistency='ignore' yields each with its own timestamp",
                self.target.prop,
                self.target.project,
                self.reference.timestamp,
                answer.timestamp,
            )
        assert self.sink is not None
        await self.sink(chunk_result(answer, self.target.prop, self.target.project))
        self._delivered.append((answer.start, answer.end))

    def _disagreement(self, answer: ChunkAnswer, why: str) -> BrainCircuitsError:
        return stream_disagreement(
            answer,
            self.reference.timestamp,
            why,
            prop=self.target.prop,
            project=self.target.project,
        )

    def _report(self, segments: int) -> None:
        if self._refetching:
            return  # re-fetched segments were already counted once
        self._done += segments
        if self.reporter is not None:
            self.reporter(
                Progress(self.target.prop, self._done, len(self.ids), self._retries, self._failed)
            )

    def _count_retry(self, error: BaseException, wait: float) -> None:
        """Before a retry's wait: count it, and lend the idle slot to a stand-in.

        The stand-in still takes its slot from the client's gate, so after 429s it
        only fills what the gate's (cut) limit allows. At most ``max_concurrency``
        stand-ins at once, so what a stream may hold stays bounded. Measured against
        a fake limited to 10 requests/s, stand-ins during 429 waits drew fewer 429s
        (101 against 164) and failed no chunk (against 5 without).
        """
        self.stats.retries += 1
        self._retries += 1
        # Not when the server looks down (a 5xx, no answer): a stand-in would only send
        # it more requests, and spend the brake's budget faster than the backoff.
        if (
            wait > 0
            and not server_down(error)
            and self._group is not None
            and self._stand_ins < self.config.max_concurrency
        ):
            self._stand_ins += 1
            self._group.start_soon(self._stand_in, anyio.current_time() + wait)

    def _queue_again(self, start: int, end: int) -> None:
        assert self._work is not None
        self._work.again((start, end))

    def _failed_for_good(self, start: int, end: int, error: BrainCircuitsError) -> None:
        """After the retries: split the chunk, queue it again whole, or record it as failed."""
        if is_fatal(error):
            self._abort(error)  # `_judge` did so already; an error raised before any answer
            self._report(end - start)
            return
        size = end - start
        if isinstance(error, APIStatusError) and error.status_code == 413:
            self._too_large_pieces.discard(start)
            learned = too_large_after(self._too_large, size=size, answered=False)
            if learned is not self._too_large:
                self._too_large, self._refused = learned, self.ids[start]
                logger.warning(
                    "%s; a single segment was refused as too large, so the 413s are not "
                    "about size: this call stops splitting chunks",
                    error,
                )
        decision = split_decision(
            error,
            size,
            split_on_timeout=self._split_on_timeout,
            timeout_half=start in self._timeout_halves,
            too_large=self._too_large,
        )
        if decision is Split.AGAIN_WHOLE:
            self._split_on_timeout = False
            self._queue_again(start, end)
            return
        if decision in (Split.HALVE, Split.PROBE):
            middle = start + 1 if decision is Split.PROBE else (start + end) // 2
            how = "trying its first segment alone" if decision is Split.PROBE else "splitting it"
            logger.info("%s; %s", error, how)
            self.stats.splits += 1
            if isinstance(error, APITimeoutError):
                self._timeout_halves.update((start, middle))
            else:
                self._too_large_pieces.update((start, middle))
            self.answers.pop(start, None)
            assert self._work is not None
            self._work.split([(start, middle), (middle, end)])
            return
        if decision is Split.NOT_SIZE:
            assert isinstance(error, APIStatusError)
            error = too_large_error(
                error, describe=self._describe(start, end), segment=self._refused
            )
        logger.warning("%s; giving up on this chunk", error)
        self._failed += size
        self.answers.pop(start, None)
        self.failures[start] = (end, error)
        self._report(size)

    def _abort(self, error: BaseException) -> None:
        """Stop the call with ``error``; in-flight requests are cancelled."""
        if self._stop is None:
            self._stop = error
        if self._group is not None:
            self._group.cancel_scope.cancel()


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
