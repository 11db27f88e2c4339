"""Injected faults: which kinds there are, how they are drawn, how they are sent."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import httpx

from .._exceptions import InvalidArgumentError
from ._checks import check_float
from ._http import JSON_HEADERS, Send, format_seconds, send_body

__all__ = [
    "FAULT_KINDS",
    "FaultDraws",
    "_InjectedFault",
    "check_faults",
    "send_dropped",
    "send_error_fault",
    "send_truncated",
]

#: The faults the fake can inject, for the ``faults=`` mapping.
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "504", "drop", "truncate", "slow")

_FAULT_DETAILS = {
    "429": "fake: too many requests (injected fault)",
    "500": "fake: internal server error (injected fault)",
    "502": "fake: bad gateway (injected fault)",
    "503": "fake: service unavailable (injected fault)",
    "504": "fake: gateway timeout (injected fault)",
}


# The leading underscore stays although other modules import it: clients quote the
# class name in their errors ("_InjectedFault: fake: connection dropped ...").
class _InjectedFault(httpx.RemoteProtocolError):
    """Raised by the app to cut a connection on purpose ("drop", "truncate").

    In-process, httpx.ASGITransport hands it to the client as what it is, an httpx
    transport error; under uvicorn it makes the server close the socket, and the
    runner's log filter keeps uvicorn from logging a traceback for it.
    """


def check_faults(faults: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    """Return (kind, cumulative probability) pairs, kinds in `FAULT_KINDS` order."""
    if faults is None:
        return ()
    unknown = sorted(str(k) for k in faults if k not in FAULT_KINDS)
    if unknown:
        raise InvalidArgumentError(
            f"faults has unknown kinds {unknown}; known kinds: {list(FAULT_KINDS)}"
        )
    table = []
    total = 0.0
    for kind in FAULT_KINDS:
        if kind in faults:
            probability = check_float(f"faults[{kind!r}]", faults[kind], 0.0, 1.0)
            if probability > 0:
                total += probability
                table.append((kind, total))
    if total > 1.0 + 1e-9:
        raise InvalidArgumentError(f"faults probabilities must add up to at most 1, got {total:g}")
    return tuple(table)


class FaultDraws:
    """Seeded fault draws, at most ``max_consecutive`` in a row for one request.

    Not thread-safe: `FakeBrainCircuits` calls it under its lock.
    """

    def __init__(self, table: tuple[tuple[str, float], ...], max_consecutive: int, seed: int):
        #: (kind, cumulative probability) pairs, from `check_faults`.
        self.table = table
        self._max_consecutive = max_consecutive
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        """Draw again from the seed's start, with no streak."""
        self._rng = random.Random(self._seed)
        self._streaks: dict[tuple[str, str, tuple[int, ...]], int] = {}

    def draw(self, project: str, prop: str, segments: list[int]) -> str | None:
        """Return the fault kind for this request, or None for a normal answer."""
        key = (project, prop, tuple(segments))
        streak = self._streaks.get(key, 0)
        fault = None
        if streak < self._max_consecutive:
            draw = self._rng.random()
            for name, cumulative in self.table:
                if draw < cumulative:
                    fault = name
                    break
        if fault is None:
            self._streaks.pop(key, None)
        else:
            self._streaks[key] = streak + 1
        return fault


async def send_error_fault(send: Send, fault: str, retry_after: float | None) -> None:
    """Answer with the injected error status ``fault`` ("429", "500", ...)."""
    status = int(fault)
    extra = []
    if status == 429 and retry_after is not None:
        extra.append((b"retry-after", format_seconds(retry_after).encode()))
    body = json.dumps({"detail": _FAULT_DETAILS[fault]}).encode()
    await send_body(send, status, body, extra)


async def send_dropped(send: Send) -> None:
    """Send the status line, then cut the connection."""
    await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
    raise _InjectedFault("fake: connection dropped (injected fault)")


async def send_truncated(send: Send, payload: bytes) -> None:
    """Announce the full Content-Length, then send only half of the body.

    In-process, httpx.ASGITransport delivers the short body as a 200 whose JSON does
    not parse. Under uvicorn, h11 refuses to end a message short of its
    Content-Length; we turn that refusal into `_InjectedFault`, uvicorn closes the
    socket, and the client's httpx sees the body end early (RemoteProtocolError).
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(payload))],
        }
    )
    try:
        await send({"type": "http.response.body", "body": payload[: len(payload) // 2]})
    except Exception as exc:
        raise _InjectedFault("fake: response truncated (injected fault)") from exc
