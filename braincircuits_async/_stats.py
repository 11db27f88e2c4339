"""Running totals of what a client has done: one object per client, shared by its parts."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientStats"]


@dataclass
class ClientStats:
    """Running totals of what a client has done, for summaries and tests.

    ``requests``: HTTP requests sent; ``retries``: of those, retries;
    ``chunks``: chunks attempted (413 halves count as chunks); ``segments``: ids
    covered by successful answers (unknown ids included); ``splits``: 413 splits;
    ``refetches``: chunks re-fetched because they were from an older materialization.
    """

    requests: int = 0
    retries: int = 0
    chunks: int = 0
    segments: int = 0
    splits: int = 0
    refetches: int = 0
