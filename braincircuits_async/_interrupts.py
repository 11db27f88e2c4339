"""What an interrupted fetch says: one line, not a page of anyio frames.

A notebook's interrupt button cancels the task running the cell (``await
client.fetch_property(...)``), and Ctrl-C stops a blocking call. Either way the
user wants to know what was fetched and whether it is kept; the frames of the
task groups it passed through tell them nothing.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancelled_with_note", "interrupted_note"]


def interrupted_note(what: str, fetched: int, total: int, store: str | None) -> str:
    """The one line an interrupt carries: what was fetched, and where it is kept."""
    done = f"{what} interrupted: {fetched:,} of {total:,} segments fetched"
    if store is None:
        return done + " (and dropped: pass store= to keep them across an interrupt)"
    return done + f"; {store} keeps them, so the same call fetches only the rest"


def cancelled_with_note(cancelled: BaseException, note: str) -> BaseException:
    """The exception to raise for ``cancelled``: asyncio's with ``note``, trio's as it is.

    On asyncio a fresh ``CancelledError`` (raised ``from None``) ends the traceback
    at the library's public method, and cancels the task just the same (asyncio,
    ``asyncio.timeout`` and anyio's scopes check its type, not its identity). trio's
    ``Cancelled`` cannot be made anew, and notebooks run on asyncio.
    """
    if isinstance(cancelled, asyncio.CancelledError):
        return asyncio.CancelledError(note)
    return cancelled
