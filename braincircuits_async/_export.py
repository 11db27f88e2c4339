"""Writing results as JSON lines, CSV or Parquet (the CLI's ``fetch`` output)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from ._exceptions import InvalidArgumentError, MissingDependencyError

__all__ = ["FORMATS", "read_ids", "write_csv", "write_jsonl", "write_parquet"]

FORMATS = ("jsonl", "csv", "parquet")


class IdFileError(InvalidArgumentError):
    """A line of an id file is not a segment id; says which line."""


def read_ids(lines: Iterable[str], source: str) -> list[int]:
    """Segment ids, one per line; blank lines and ``#`` comments are skipped.

    Raises :class:`IdFileError` naming the first bad line, so nothing is
    fetched for a file with a typo in it.
    """
    ids: list[int] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 2**64:
            raise IdFileError(
                f"{source}, line {number}: {text[:40]!r} is not a segment id "
                "(a non-negative integer below 2**64, one per line)"
            )
        ids.append(int(text))
    return ids


def _fields(data: Mapping[int, Mapping[str, Any]]) -> list[str]:
    fields: dict[str, None] = {}
    for value in data.values():
        fields.update(dict.fromkeys(value))
    fields.pop("segment_id", None)
    return list(fields)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def write_jsonl(data: Mapping[int, Mapping[str, Any]], out: TextIO) -> None:
    """One JSON object per segment: ``{"segment_id": <int>, ...the property's fields}``."""
    for segment, value in data.items():
        out.write(json.dumps({"segment_id": segment, **value}) + "\n")


def write_csv(data: Mapping[int, Mapping[str, Any]], out: TextIO) -> None:
    """A header, then one row per segment; nested values as JSON text."""
    fields = _fields(data)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["segment_id", *fields])
    for segment, value in data.items():
        writer.writerow([segment, *(_cell(value.get(f)) for f in fields)])


def write_parquet(data: Mapping[int, Mapping[str, Any]], path: Path) -> None:
    """A Parquet file: ``segment_id`` (uint64) and a column per field; nested values
    as JSON text, as in the CSV. Needs the ``parquet`` extra (pyarrow).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            'parquet output needs pyarrow: pip install "braincircuits-async[parquet]"'
        ) from None
    fields = _fields(data)
    columns: dict[str, Any] = {"segment_id": pa.array(list(data), type=pa.uint64())}
    for field in fields:
        columns[field] = pa.array([_cell(v.get(field)) for v in data.values()])
    pq.write_table(pa.table(columns), path)
