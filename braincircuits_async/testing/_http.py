"""HTTP plumbing of the fake: ASGI types, routing and auth, bodies in and out."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ._checks import PROPERTY_NAME, is_segment_id
from ._log import RequestDraft

__all__ = [
    "JSON_HEADERS",
    "ASGIApp",
    "HTTPError",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "check_bearer",
    "format_seconds",
    "lifespan",
    "parse_segments",
    "read_body",
    "route",
    "send_body",
]

# ASGI, typed loosely enough that both httpx.ASGITransport and uvicorn accept it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ENDPOINT = re.compile(rf"/circuit/segment/property/({PROPERTY_NAME.pattern})")
JSON_HEADERS = [(b"content-type", b"application/json")]


class HTTPError(Exception):
    """An error answer: raised inside request handling, sent by `FakeBrainCircuits`."""

    def __init__(self, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = list(headers)


def check_bearer(header: bytes | None, token: str | None, name: str, what: str) -> None:
    """Raise 401 if the header is missing, 403 if it holds the wrong token."""
    if token is None:
        return
    if header is None:
        raise HTTPError(401, f"missing {name} header: send '{name}: Bearer <{what}token>'")
    scheme, _, value = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or value.strip() != token:
        raise HTTPError(403, f"invalid {what}token in the {name} header")


def route(
    scope: Scope,
    request: RequestDraft,
    *,
    token: str | None,
    cave_token: str | None,
    projects: Collection[str],
    cave_projects: Collection[str],
    properties: Collection[str],
) -> tuple[str, str]:
    """Return (project, property) of an allowed request; raise `HTTPError` if not.

    The checks come in the real API's order; ``request`` learns the property and
    the project as soon as they are known, for the log.
    """
    match = _ENDPOINT.fullmatch(request.path)
    if match is None:
        raise HTTPError(404, "Not Found")
    prop = request.prop = match.group(1)
    if request.method != "POST":
        raise HTTPError(405, "Method Not Allowed", [(b"allow", b"POST")])

    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    check_bearer(headers.get(b"authorization"), token, "Authorization", "")

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    project = query.get("project", [""])[0]
    if not project:
        raise HTTPError(422, "missing query parameter 'project'")
    if project not in projects:
        raise HTTPError(404, f"unknown project {project!r}")
    request.project = project
    if project in cave_projects:
        check_bearer(headers.get(b"authorization-cave"), cave_token, "Authorization-Cave", "CAVE ")
    if prop not in properties:
        raise HTTPError(404, f"unknown property {prop!r} in project {project!r}")
    return project, prop


def parse_segments(body: bytes, max_segments: int) -> list[int]:
    """Return the ids of a ``{"segments": [...]}`` body; 422 or 413 if it is not one."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise HTTPError(422, "request body is not valid JSON") from None
    segments = payload.get("segments") if isinstance(payload, dict) else None
    if not isinstance(segments, list):
        raise HTTPError(422, 'request body must be a JSON object {"segments": [segment id, ...]}')
    if len(segments) > max_segments:
        raise HTTPError(
            413,
            f"too many segments: {len(segments)} in one request, at most "
            f"{max_segments}; split the request",
        )
    if not all(is_segment_id(s) for s in segments):
        i, bad = next((i, s) for i, s in enumerate(segments) if not is_segment_id(s))
        raise HTTPError(
            422,
            f"segments[{i}] = {json.dumps(bad)[:40]} is not a segment id "
            "(an integer in [0, 2**64))",
        )
    return segments


async def read_body(receive: Receive) -> bytes | None:
    """Return the request body, or None if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_body(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def format_seconds(seconds: float) -> str:
    """Return seconds as a Retry-After value: ``"1"``, ``"0.01"``."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))
