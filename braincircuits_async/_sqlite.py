"""The SQLite side of the result store: the file, its schema, one transaction, the encoding.

Kept apart from :class:`~braincircuits_async._store.ResultStore` (what the store
means) so each reads on its own: here is how a file is opened without touching
one that is not a store, how a write is one ``BEGIN IMMEDIATE`` transaction, and
how values and unsigned ids are put in SQLite's types.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._exceptions import StoreError
from ._json import loads

__all__ = [
    "SIGNED",
    "connect",
    "decode_all",
    "encode_ids",
    "encode_value",
    "from_sql",
    "to_sql",
    "transaction",
]

_FORMAT = "braincircuits-async result store"
_VERSION = 1
SIGNED = 2**63
UNSIGNED = 2**64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS materializations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    property TEXT NOT NULL,
    materialized_timestamp INTEGER NOT NULL,
    UNIQUE (project, property, materialized_timestamp)
);
CREATE TABLE IF NOT EXISTS segment_values (
    materialization INTEGER NOT NULL REFERENCES materializations (id),
    segment_id INTEGER NOT NULL,
    value BLOB,
    PRIMARY KEY (materialization, segment_id)
) WITHOUT ROWID;
"""

_dumps_fast: Any
_NON_STR_KEYS = 0
try:  # The `fast` extra: orjson writes values about five times faster.
    from orjson import OPT_NON_STR_KEYS as _NON_STR_KEYS
    from orjson import dumps as _dumps_fast
except ImportError:  # pragma: no cover - depends on the environment
    _dumps_fast = None


def _dumps_exact(value: Any) -> bytes:
    # ASCII escapes keep every string exact, a lone surrogate ("\ud800") included.
    return json.dumps(value, separators=(",", ":")).encode()


def encode_value(value: dict[str, Any] | None) -> bytes | None:
    """A value as compact JSON bytes; exactly what ``loads`` reads back.

    orjson writes NaN and infinities as ``null`` and refuses integers beyond 64
    bits; a value with a ``null`` in orjson's output (rare) or one it refuses is
    written by the standard library instead, which keeps it exact.
    """
    if value is None:
        return None
    if _dumps_fast is not None:
        try:
            encoded: bytes = _dumps_fast(value)
        except TypeError:
            return _dumps_exact(value)
        return encoded if b"null" not in encoded else _dumps_exact(value)
    return _dumps_exact(value)


def encode_chunk(keys: Sequence[int], values: Sequence[dict[str, Any] | None]) -> bytes | None:
    """The chunk as one JSON text for :data:`INSERT_CHUNK`, or ``None`` when the exact
    per-value path is needed.

    ``{id: value, ...}``: one orjson call for the whole chunk, and SQLite then inserts
    it in one statement (without the GIL) instead of binding and stepping each row
    from Python. An object rather than ``[id, value]`` pairs: ``json_each`` hands out
    each member's key and value from its one parse, where every ``->>`` and ``->`` of
    every row parses its pair again (half the SQLite time). Exact only for dicts
    (``json_each`` would unquote a string value), if orjson wrote no ``null`` but those
    of the unknown ids (it writes NaN and infinities as ``null``) and took every
    integer; otherwise ``None``.
    """
    if _dumps_fast is None or not all(type(v) is dict or v is None for v in values):
        return None
    try:
        encoded: bytes = _dumps_fast(dict(zip(keys, values, strict=True)), option=_NON_STR_KEYS)
    except TypeError:
        return None
    return encoded if encoded.count(b"null") == values.count(None) else None


#: Inserts a chunk encoded by :func:`encode_chunk` (parameters: materialization, JSON);
#: a JSON ``null`` member is SQL NULL: an unknown id.
INSERT_CHUNK = (
    "INSERT OR REPLACE INTO segment_values (materialization, segment_id, value) "
    "SELECT ?, CAST(key AS INTEGER), CAST(value AS BLOB) FROM json_each(?)"
)


def encode_ids(keys: Sequence[int]) -> str | bytes:
    """Stored (signed) ids as one JSON array for ``json_each``: orjson when installed."""
    if _dumps_fast is not None:
        encoded: bytes = _dumps_fast(list(keys))
        return encoded
    return json.dumps(list(keys))


def to_sql(segment: int) -> int:
    return segment - UNSIGNED if segment >= SIGNED else segment


def from_sql(segment: int) -> int:
    return segment + UNSIGNED if segment < 0 else segment


def decode_all(blobs: Sequence[bytes | None]) -> list[Any]:
    """Decode many stored values with one parse (``None`` stays ``None``)."""
    if not blobs:
        return []
    return list(loads(b"[" + b",".join(b"null" if b is None else b for b in blobs) + b"]"))


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (a write), or ``ROLLBACK`` on any error."""

    _begin = "BEGIN IMMEDIATE"

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute(self._begin)
        except sqlite3.Error as error:
            raise store_error(self._path, error, "could not start a write") from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                self._db.execute("ROLLBACK")
                raise store_error(self._path, error, "could not commit a write") from None
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise store_error(self._path, exc, "could not write") from None


class snapshot(transaction):
    """``BEGIN`` ... ``COMMIT`` around reads: in WAL mode, one consistent view of the
    file, whatever other processes commit meanwhile."""

    _begin = "BEGIN"


def store_error(path: Path, error: sqlite3.Error, what: str) -> StoreError:
    return StoreError(f"result store {str(path)!r}: {what}: {error}")


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """Open (or create) the store at ``path``; a file that is not one is left untouched."""
    if path.is_dir():
        raise StoreError(f"result store {str(path)!r} is a directory; give a file path")
    if not path.parent.is_dir():
        raise StoreError(
            f"result store {str(path)!r}: the folder {str(path.parent)!r} does not exist"
        )
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise store_error(path, error, "could not open the file") from None
    try:
        # Read before anything is written: a file that is not SQLite fails here.
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if tables and "store_info" not in tables:
            raise StoreError(
                f"{str(path)!r} is an SQLite database but not a braincircuits-async result "
                f"store (it has tables {sorted(tables)[:5]}); give another path"
            )
        if tables:
            info = dict(db.execute("SELECT key, value FROM store_info").fetchall())
            if info.get("format") != _FORMAT:
                raise StoreError(f"{str(path)!r} is not a braincircuits-async result store")
            if int(info.get("version", "0")) > _VERSION:
                raise StoreError(
                    f"{str(path)!r} was written by a newer braincircuits-async (store "
                    f"version {info.get('version')}); upgrade braincircuits-async to read it"
                )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if not tables:
            db.executescript(
                "BEGIN IMMEDIATE;"
                + _SCHEMA
                + f"INSERT OR IGNORE INTO store_info VALUES ('format', '{_FORMAT}');"
                + f"INSERT OR IGNORE INTO store_info VALUES ('version', '{_VERSION}');"
                + "COMMIT;"
            )
    except sqlite3.DatabaseError as error:
        db.close()
        if "not a database" in str(error) or "malformed" in str(error):
            raise StoreError(
                f"{str(path)!r} is not a braincircuits-async result store (not an SQLite "
                "file); it was left untouched: give another path"
            ) from None
        raise store_error(path, error, "could not open the store") from None
    except BaseException:
        db.close()
        raise
    return db
