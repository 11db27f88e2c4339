"""What the fake has seen: `FakeLog`, its `RequestRecord` rows and their drafts."""

from __future__ import annotations

import builtins
import collections
import threading
from dataclasses import dataclass

__all__ = ["FakeLog", "RequestDraft", "RequestRecord"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake received, as kept in `FakeLog.records`.

    ``project`` and ``property`` are None when the request failed before they were
    read; ``n_segments`` counts the ids in the body (0 if it was not read).
    ``status`` is None when the connection was dropped (or the client left);
    ``fault`` names the injected fault, if any ("slow" and "truncate" come with
    status 200), or is ``"rate_limit"`` for a 429 from the ``rate_limit`` knob.
    ``materialized_timestamp`` is that of the answer, for 200s.
    ``header_names`` lists the request's header names (lower case), never their
    values, so no token is kept.
    """

    method: str
    path: str
    project: str | None
    property: str | None
    n_segments: int
    status: int | None
    fault: str | None
    materialized_timestamp: int | None
    header_names: tuple[str, ...]

    # `builtins.property`: the field above named `property` shadows the builtin here.
    @builtins.property
    def outcome(self) -> str:
        """The fault name if a fault was injected, else the status code as text."""
        if self.fault is not None:
            return self.fault
        return "disconnected" if self.status is None else str(self.status)


@dataclass(slots=True)
class RequestDraft:
    """What the log needs to know about a request, filled in as handling goes."""

    method: str
    path: str
    header_names: tuple[str, ...]
    project: str | None = None
    prop: str | None = None
    segments: int = 0


class FakeLog:
    """What a `FakeBrainCircuits` has seen: counters for assertions, and every request.

    Attributes:
        requests: HTTP requests received (any path, any outcome).
        in_flight: requests being handled right now.
        max_in_flight: the most requests handled at once since the last `reset`; more
            than 1 means the client really sent requests concurrently.
        segments_served: ids requested in complete 200 answers (unknown ids included,
            so it adds up to what the client asked for).
        statuses: how many responses had each status code.
        faults: how many times each fault kind was injected, and how many requests
            the ``rate_limit`` knob turned away (as ``"rate_limit"``).
        records: one `RequestRecord` per finished request, in finishing order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (``in_flight`` stays: it is the present)."""
        with self._lock:
            self.requests = 0
            self.max_in_flight = self.in_flight
            self.segments_served = 0
            self.statuses: collections.Counter[int] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.records: list[RequestRecord] = []

    def __repr__(self) -> str:
        return (
            f"<FakeLog requests={self.requests} max_in_flight={self.max_in_flight} "
            f"segments_served={self.segments_served} statuses={dict(self.statuses)} "
            f"faults={dict(self.faults)}>"
        )

    def _enter(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _add(
        self,
        request: RequestDraft,
        status: int | None,
        fault: str | None = None,
        timestamp: int | None = None,
        served: int = 0,
    ) -> None:
        record = RequestRecord(
            method=request.method,
            path=request.path,
            project=request.project,
            property=request.prop,
            n_segments=request.segments,
            status=status,
            fault=fault,
            materialized_timestamp=timestamp,
            header_names=request.header_names,
        )
        with self._lock:
            self.records.append(record)
            if record.status is not None:
                self.statuses[record.status] += 1
            if record.fault is not None:
                self.faults[record.fault] += 1
            self.segments_served += served
