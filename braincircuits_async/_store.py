"""``ResultStore``: fetched segment properties kept in one SQLite file, per materialization.

The store keeps, per project, property and ``materialized_timestamp``, each
segment's value as the server sent it (compact JSON) and the ids the server said
it does not know (a ``NULL`` value), so a re-run fetches neither again. Older
materializations stay until :meth:`ResultStore.prune` drops them: the API cannot
serve a past materialization again, so the store is the only way to reproduce
yesterday's table.

One SQLite file in WAL mode with a busy timeout: several processes (two
notebooks, a CLI run) can read and write it at once, and every chunk is one
transaction, so a process killed in the middle of a write leaves a store that
opens and holds every chunk committed before. The client writes from a worker
thread (:meth:`ResultStore.commit`), never in the event loop.

Segment ids are unsigned 64-bit; SQLite integers are signed, so an id at or
above ``2**63`` is kept as ``id - 2**64`` (two's complement) and turned back
on reading.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._chunking import normalize_segments, validate_project, validate_properties
from ._config import check_seconds
from ._exceptions import InvalidArgumentError, InvalidSegmentError, StoreError
from ._models import SegmentPropertyResult
from ._resume import Held
from ._sqlite import (
    INSERT_CHUNK,
    SIGNED,
    UNSIGNED,
    connect,
    decode_all,
    encode_chunk,
    encode_ids,
    encode_value,
    from_sql,
    snapshot,
    to_sql,
    transaction,
)

__all__ = ["ResultStore", "open_store"]

_ABSENT: Any = object()  # a sentinel: the store holds nothing for this id


class ResultStore:
    """Fetched segment properties, kept in one SQLite file, per materialization.

    Give it to a client and every chunk's answer is committed as it arrives; a
    re-run fetches only what the store does not hold yet::

        store = bca.ResultStore("flywire.sqlite")
        async with bca.AsyncClient(project="fruitfly_fafb_flywire", store=store) as client:
            result = await client.fetch_property("link_pre", segment_ids)

    Read it offline, with no network::

        result = store.read("link_pre", segment_ids, project="fruitfly_fafb_flywire")
        result.not_stored      # the ids the store does not hold

    Several processes may open one store at once. The file is created when it does
    not exist; a file that is not a store raises :class:`StoreError` and is left
    untouched. Use it as a context manager, or call :meth:`close`.

    Args:
        path: the SQLite file, e.g. ``"flywire.sqlite"``.
        timeout: seconds to wait for another process's write before giving up.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"store must be a path or a ResultStore, got {type(path).__name__}"
            )
        check_seconds("timeout", timeout)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = connect(self.path, timeout)

    def __repr__(self) -> str:
        state = " closed" if self._db is None else ""
        return f"<ResultStore {str(self.path)!r}{state}>"

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; the store cannot be used afterwards."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    # --- reading, offline ---------------------------------------------------------

    def read(
        self,
        property: str,
        segments: Iterable[Any] | None = None,
        *,
        project: str,
        materialized_timestamp: int | None = None,
    ) -> SegmentPropertyResult:
        """What the store holds for ``segments``, from one materialization; no network.

        Args:
            property: e.g. ``"link_pre"``.
            segments: the ids (as for ``fetch_property``); ``None`` for every id the
                store holds for that materialization.
            project: e.g. ``"fruitfly_fafb_flywire"``.
            materialized_timestamp: the materialization to read; default: the newest
                one the store holds any of ``segments`` for.

        Returns:
            A :class:`SegmentPropertyResult` in request order: ``missing`` are the ids
            the server said it does not know, ``not_stored`` the ids the store does not
            hold for that materialization (neither value nor "unknown"). With nothing
            held at all, ``materialized_timestamp`` is ``None`` and every id is in
            ``not_stored``.
        """
        (prop,) = validate_properties([property])
        proj = validate_project(project)
        ids = None if segments is None else normalize_segments(segments)
        if materialized_timestamp is not None:
            _check_timestamp("materialized_timestamp", materialized_timestamp)
        keys = None if ids is None else _keys(ids)
        with self._lock:
            db = self._open()
            with snapshot(db, self.path):  # one consistent view, whoever writes meanwhile
                # Newest first; the first materialization holding any of the ids is read,
                # in one query (not a "holds any" query over every id before it).
                chosen: int | None = None
                rows: list[tuple[int, bytes | None]] = []
                for ts, mat in self._held(db, prop, proj):
                    if materialized_timestamp is not None and ts != materialized_timestamp:
                        continue
                    rows = self._rows(db, mat, keys)
                    if rows or keys is None or materialized_timestamp is not None:
                        chosen = ts
                        break
        segments = [s for s, _ in rows]
        if segments and min(segments) < 0:
            segments = [from_sql(s) for s in segments]
        found = dict(zip(segments, decode_all([blob for _, blob in rows]), strict=True))
        order = sorted(found) if ids is None else ids
        values: list[Any] = list(map(found.get, order, itertools.repeat(_ABSENT, len(order))))
        data: dict[int, dict[str, Any]]
        missing: list[int] = []
        not_stored: list[int] = []
        if _ABSENT not in values and None not in values:  # all held and known: in C
            data = dict(zip(order, values, strict=True))
        else:
            data = {}
            for segment, value in zip(order, values, strict=True):
                if value is _ABSENT:
                    not_stored.append(segment)
                elif value is None:
                    missing.append(segment)
                else:
                    data[segment] = value
        return SegmentPropertyResult(
            data,
            property=prop,
            project=proj,
            materialized_timestamp=chosen,
            missing=tuple(missing),
            not_stored=tuple(not_stored),
        )

    def materializations(self, property: str, *, project: str) -> dict[int, int]:
        """``{materialized_timestamp: segments held}`` for one property, newest first.

        The count includes the ids the server said it does not know.
        """
        (prop,) = validate_properties([property])
        proj = validate_project(project)
        with self._lock:
            db = self._open()
            with snapshot(db, self.path):
                return {
                    ts: db.execute(
                        "SELECT COUNT(*) FROM segment_values WHERE materialization = ?", (mat,)
                    ).fetchone()[0]
                    for ts, mat in self._held(db, prop, proj)
                }

    def prune(
        self,
        *,
        keep: int = 1,
        property: str | None = None,
        project: str | None = None,
        before: int | None = None,
    ) -> int:
        """Drop old materializations; returns how many segment values were dropped.

        For each (project, property), the newest ``keep`` materializations stay
        (``keep=0`` drops them all); ``before`` drops only materializations older
        than that timestamp, whatever ``keep`` says. ``property`` and ``project``
        narrow it to one property or project. The file's freed pages are reused by
        later writes (SQLite does not shrink the file).
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise InvalidArgumentError(f"keep must be an int >= 0, got {keep!r}")
        if before is not None:
            _check_timestamp("before", before)
        prop = None if property is None else validate_properties([property])[0]
        proj = None if project is None else validate_project(project)
        with self._lock:
            db = self._open()
            # Chosen and dropped in one write transaction: no other process's new
            # materialization can slip in between.
            with transaction(db, self.path):
                groups = db.execute(
                    "SELECT id, project, property, materialized_timestamp FROM materializations "
                    "ORDER BY project, property, materialized_timestamp DESC"
                ).fetchall()
                seen: dict[tuple[str, str], int] = {}
                dropped = 0
                for mat, p, name, ts in groups:
                    if (proj is not None and p != proj) or (prop is not None and name != prop):
                        continue
                    rank = seen[(p, name)] = seen.get((p, name), 0) + 1
                    if (ts < before) if before is not None else (rank > keep):
                        cursor = db.execute(
                            "DELETE FROM segment_values WHERE materialization = ?", (mat,)
                        )
                        dropped += cursor.rowcount
                        db.execute("DELETE FROM materializations WHERE id = ?", (mat,))
            return dropped

    # --- writing ---------------------------------------------------------------------

    def write(
        self,
        property: str,
        project: str,
        materialized_timestamp: int,
        segments: Sequence[int],
        values: Sequence[dict[str, Any] | None],
    ) -> None:
        """Store one chunk as one transaction: ``values[i]`` for ``segments[i]`` (``None``:
        the server does not know it). Blocking; the client calls it from a worker thread.

        For importing values fetched elsewhere; the client writes every chunk itself.
        """
        (prop,) = validate_properties([property])
        proj = validate_project(project)
        _check_timestamp("materialized_timestamp", materialized_timestamp)
        if len(segments) != len(values):
            raise InvalidArgumentError(
                f"{len(segments)} segment(s) but {len(values)} value(s): give one value per id"
            )
        if segments and (min(segments) < 0 or max(segments) >= UNSIGNED):
            raise InvalidSegmentError("segment ids must be integers in [0, 2**64)")
        self._write(prop, proj, materialized_timestamp, segments, values)

    def _write(
        self,
        prop: str,
        project: str,
        timestamp: int,
        ids: Sequence[int],
        values: Sequence[dict[str, Any] | None],
        *,
        server: str | None = None,
    ) -> None:
        keys = _keys(ids)
        chunk = encode_chunk(keys, values)
        rows: list[tuple[int, bytes | None]] = []
        if chunk is None:  # the exact path, one value at a time
            try:
                rows = [(key, encode_value(v)) for key, v in zip(keys, values, strict=True)]
            except (TypeError, ValueError) as error:  # not JSON: a value built by hand
                raise StoreError(
                    f"result store {str(self.path)!r}: a value cannot be stored: {error}"
                ) from None
        with self._lock:
            db = self._open()
            with transaction(db, self.path):
                if server is not None:
                    self._bind(db, server)
                mat = self._materialization_id(db, prop, project, timestamp)
                if chunk is not None:
                    db.execute(INSERT_CHUNK, (mat, chunk))
                else:
                    db.executemany(
                        "INSERT OR REPLACE INTO segment_values "
                        f"(materialization, segment_id, value) VALUES ({mat}, ?, ?)",
                        rows,
                    )

    # --- what the client uses ----------------------------------------------------

    def _lookup(
        self, prop: str, project: str, ids: Sequence[int], *, values: bool = True
    ) -> list[Held | None]:
        """For each of ``ids``, the newest value the store holds, or ``None``: blocking.

        Newest materialization first, and only the ids not found yet in the older
        ones, so a long history costs nothing when the newest holds everything.
        ``values=False`` leaves the values out (``None``): a stream reads them chunk
        by chunk (:meth:`_values`), so its memory stays bounded.
        """
        keys = _keys(ids)
        found: dict[int, tuple[int, bytes | None]] = {}
        with self._lock:
            db = self._open()
            with snapshot(db, self.path):
                remaining = keys
                for ts, mat in self._held(db, prop, project):
                    rows = self._rows(db, mat, remaining)
                    found.update((segment, (ts, blob)) for segment, blob in rows)
                    if len(found) == len(keys):
                        break
                    if rows:
                        remaining = [k for k in remaining if k not in found]
        if not found:
            return [None] * len(ids)
        held = [found.get(key) for key in keys]
        if not values:
            return [None if h is None else (h[0], None) for h in held]
        decoded = iter(decode_all([h[1] for h in held if h is not None]))
        return [None if h is None else (h[0], next(decoded)) for h in held]

    def _values(
        self, prop: str, project: str, timestamp: int, ids: Sequence[int]
    ) -> list[dict[str, Any] | None] | None:
        """The values of ``ids`` in one materialization (None: not all held any more)."""
        keys = _keys(ids)
        with self._lock:
            db = self._open()
            with snapshot(db, self.path):
                mat = dict(self._held(db, prop, project)).get(timestamp)
                rows = [] if mat is None else self._rows(db, mat, keys)
        if len(rows) != len(keys):
            return None
        found = dict(zip((s for s, _ in rows), decode_all([b for _, b in rows]), strict=True))
        return [found[key] for key in keys]

    def _holds_any(self, prop: str, project: str) -> bool:
        """Whether the store holds anything for this property and project: blocking."""
        with self._lock:
            return bool(self._held(self._open(), prop, project))

    def _check_server(self, server: str) -> None:
        """Refuse a store whose values were fetched from another server."""
        with self._lock:
            db = self._open()
            row = db.execute("SELECT value FROM store_info WHERE key = 'server'").fetchone()
        if row is not None and row[0] != server:
            raise self._other_server(row[0], server)

    # --- inside ---------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the result store {str(self.path)!r} is closed")
        return self._db

    def _bind(self, db: sqlite3.Connection, server: str) -> None:
        db.execute("INSERT OR IGNORE INTO store_info VALUES ('server', ?)", (server,))
        (bound,) = db.execute("SELECT value FROM store_info WHERE key = 'server'").fetchone()
        if bound != server:
            raise self._other_server(bound, server)

    def _other_server(self, bound: str, server: str) -> StoreError:
        return StoreError(
            f"the result store {str(self.path)!r} holds values fetched from {bound}, not "
            f"from {server}: use one store file per server (materializations of two servers "
            "must not mix)"
        )

    def _held(self, db: sqlite3.Connection, prop: str, project: str) -> list[tuple[int, int]]:
        """``(timestamp, id)`` of the materializations held, newest first."""
        return db.execute(
            "SELECT materialized_timestamp, id FROM materializations "
            "WHERE project = ? AND property = ? ORDER BY materialized_timestamp DESC",
            (project, prop),
        ).fetchall()

    def _rows(
        self, db: sqlite3.Connection, mat: int, keys: Sequence[int] | None, limit: int = -1
    ) -> list[tuple[int, bytes | None]]:
        """``(id as stored, value)`` of materialization ``mat`` for ``keys`` (None: all)."""
        if keys is None:
            return db.execute(
                "SELECT segment_id, value FROM segment_values WHERE materialization = ? LIMIT ?",
                (mat, limit),
            ).fetchall()
        return db.execute(
            "SELECT segment_id, value FROM segment_values WHERE materialization = ? "
            "AND segment_id IN (SELECT value FROM json_each(?)) LIMIT ?",
            (mat, encode_ids(keys), limit),
        ).fetchall()

    def _materialization_id(
        self, db: sqlite3.Connection, prop: str, project: str, timestamp: int
    ) -> int:
        # Looked up in every write, not cached: another process may prune it meanwhile.
        key = (project, prop, timestamp)
        db.execute(
            "INSERT OR IGNORE INTO materializations (project, property, materialized_timestamp) "
            "VALUES (?, ?, ?)",
            key,
        )
        (mat,) = db.execute(
            "SELECT id FROM materializations WHERE project = ? AND property = ? "
            "AND materialized_timestamp = ?",
            key,
        ).fetchone()
        return int(mat)


def _keys(ids: Sequence[int]) -> list[int]:
    """The ids as SQLite stores them (signed 64-bit)."""
    return [to_sql(s) for s in ids] if ids and max(ids) >= SIGNED else list(ids)


def _check_timestamp(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SIGNED:
        raise InvalidArgumentError(
            f"{name} must be UNIX seconds, an int from 0 to 2**63 - 1, got {str(value)[:30]}"
        )


def open_store(
    store: ResultStore | str | os.PathLike[str] | None,
) -> tuple[ResultStore | None, bool]:
    """The store for ``store=``, and whether the caller owns it (opened it from a path)."""
    if store is None or isinstance(store, ResultStore):
        return store, False
    return ResultStore(store), True
