"""The CLI's files: results as JSON lines, CSV, TSV or Parquet, and the ids it failed.

Everything that can be checked about an output before the first request is
checked here (:func:`output_format`, :func:`check_output`), so a day-long fetch
does not end in a folder that does not exist or a missing pyarrow. Every file is
written under a temporary name and renamed (:func:`write_atomically`): a failed
or interrupted write leaves no half-written file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._exceptions import InvalidArgumentError, MissingDependencyError

__all__ = [
    "FORMATS",
    "OutputError",
    "check_writable_folder",
    "is_special",
    "output_format",
    "prepare_output",
    "table",
    "write_atomically",
    "write_csv",
    "write_ids",
    "write_jsonl",
    "write_parquet",
    "write_result",
    "write_tsv",
]

#: The output formats, each also the extension of OUT that picks it.
FORMATS = ("jsonl", "csv", "tsv", "parquet")

_PARQUET_NEEDS = 'parquet output needs pyarrow: pip install "braincircuits-async[parquet]"'


class OutputError(InvalidArgumentError):
    """An output cannot be written where it was asked for; says what to fix."""


def _fields(data: Mapping[int, Mapping[str, Any]]) -> list[str]:
    fields: dict[str, None] = {}
    for value in data.values():
        fields.update(dict.fromkeys(value))
    fields.pop("segment_id", None)
    return list(fields)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, at any depth (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Valid JSON whatever the value: NaN and infinities as ``null`` (the server may
    send them; JSON cannot hold them), every non-ASCII character escaped, so a lone
    surrogate (``"\\ud800"``) is written as the escape it came as."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: rare, so checked only then
        return json.dumps(_finite(value), allow_nan=False)


def _text(value: str) -> str:
    """A string that UTF-8 can encode: a lone surrogate becomes its ``\\udXXX`` escape."""
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _cell(value: Any) -> Any:
    """One CSV cell: nested values as JSON text, NaN and infinities empty."""
    if isinstance(value, (dict, list)):
        return to_json(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _column_cell(value: Any) -> Any:
    """One Parquet cell: nested values as JSON text; NaN stays a float (Parquet has it)."""
    if isinstance(value, (dict, list)):
        return to_json(value)
    return _text(value) if isinstance(value, str) else value


def write_jsonl(data: Mapping[int, Mapping[str, Any]], out: TextIO) -> None:
    """One JSON object per segment: ``{"segment_id": <int>, ...the property's fields}``,
    valid JSON whatever the values (see :func:`to_json`)."""
    for segment, value in data.items():
        out.write(to_json({"segment_id": segment, **value}) + "\n")


def write_csv(data: Mapping[int, Mapping[str, Any]], out: TextIO) -> None:
    """A header, then one row per segment; nested values as JSON text, NaN and
    infinities as empty cells, strings UTF-8 can always encode."""
    _write_delimited(data, out, ",")


def write_tsv(data: Mapping[int, Mapping[str, Any]], out: TextIO) -> None:
    """As :func:`write_csv`, tab-separated: the TSV that pandas (``sep="\\t"``), R's
    ``read.delim`` and spreadsheets read. A cell holding a tab, a line break or a
    double quote is quoted as in CSV (JSON text of lists of numbers never is), so
    every file parses back to the same cells whatever the values."""
    _write_delimited(data, out, "\t")


def _write_delimited(data: Mapping[int, Mapping[str, Any]], out: TextIO, delimiter: str) -> None:
    fields = _fields(data)
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["segment_id", *map(_text, fields)])
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
        raise MissingDependencyError(_PARQUET_NEEDS) from None
    fields = _fields(data)
    columns: dict[str, Any] = {"segment_id": pa.array(list(data), type=pa.uint64())}
    for field in fields:
        columns[field] = pa.array([_column_cell(v.get(field)) for v in data.values()])
    pq.write_table(pa.table(columns), path)


def write_ids(ids: Iterable[int], path: Path) -> None:
    """One id per line, the format ``--ids`` reads; an empty file for no ids."""

    def write(partial: Path) -> None:
        with open(partial, "w", encoding="utf-8") as stream:
            stream.writelines(f"{segment}\n" for segment in ids)

    write_atomically(path, write)


def write_result(
    result: Mapping[int, Mapping[str, Any]], fmt: str, path: Path | None, out: TextIO
) -> None:
    """Write ``result`` as ``fmt`` to ``path``, or to ``out`` when ``path`` is ``None``."""
    writer = _TEXT_WRITERS.get(fmt, write_jsonl)
    if path is None:
        writer(result, out)
        return

    def write(partial: Path) -> None:
        if fmt == "parquet":
            write_parquet(result, partial)
        else:
            with open(partial, "w", encoding="utf-8", newline="") as stream:
                writer(result, stream)

    write_atomically(path, write)


_TEXT_WRITERS: dict[str, Callable[[Mapping[int, Mapping[str, Any]], TextIO], None]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
    "tsv": write_tsv,
}


def table(
    results: Sequence[Mapping[int, Mapping[str, Any]]],
    names: Sequence[str],
    order: Iterable[int],
    *,
    nested: bool,
) -> Mapping[int, Mapping[str, Any]]:
    """The rows to write for the properties ``names`` (their ``results``, in order).

    One property: its result as it is (no copy), rows as before. Several: one row
    per segment that any of them holds, in ``order`` (the request's): ``nested``
    (JSON lines) maps each property to its fields, or ``None`` where it has no value
    for the segment (unknown, or failed); flat (CSV, TSV, Parquet) has a column
    ``<property>.<field>`` per field, empty where the property has no value.
    """
    if len(results) == 1:
        return results[0]
    rows: dict[int, dict[str, Any]] = {}
    if nested:
        for segment in order:
            values = [r.get(segment) for r in results]
            if any(v is not None for v in values):
                rows[segment] = dict(zip(names, values, strict=True))
        return rows
    columns = [(i, f, f"{name}.{f}") for i, name in enumerate(names) for f in _fields(results[i])]
    for segment in order:
        values = [r.get(segment) for r in results]
        if any(v is not None for v in values):
            rows[segment] = {
                column: None if (v := values[i]) is None else v.get(field)
                for i, field, column in columns
            }
    return rows


def is_special(path: Path) -> bool:
    """Whether ``path`` is a device or a named pipe (``/dev/null``, ``/dev/stdout``, a FIFO).

    Such a file is written into, not replaced: renaming a temporary file over
    ``/dev/null`` would, as root, put a regular file in its place.
    """
    return path.exists() and not path.is_file() and not path.is_dir()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(partial)`` to a temporary file beside ``path``, then rename it to ``path``.

    A failed write leaves ``path`` as it was: no half-written file, ever. A device
    or a named pipe (:func:`is_special`) is written into directly.
    """
    if is_special(path):
        write(path)
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# --- before the first request ---------------------------------------------------------


def output_format(path: Path | None, given: str | None) -> str:
    """The format to write: ``given`` (``--format``), else the extension of ``path``.

    Standard output (``path`` ``None``) is JSON lines unless ``given`` says csv or tsv;
    a file whose extension is not one of :data:`FORMATS` needs ``given``, so that
    ``-o table.json`` or ``-o table`` is not silently written as JSON lines.
    """
    if path is None:
        fmt = given or "jsonl"
        if fmt == "parquet":
            raise OutputError("--format parquet writes a file: give it with -o OUT")
        return fmt
    if given is not None:
        return given
    extension = path.suffix.lstrip(".").lower()
    if extension in FORMATS:
        return extension
    what = f"its extension {path.suffix!r} is not" if path.suffix else "it has no extension, nor"
    raise OutputError(
        f"-o {str(path)!r}: {what} one of .jsonl, .csv, .tsv, .parquet; rename it, or "
        "say which format to write with --format jsonl, csv, tsv or parquet"
    )


def prepare_output(text: str | None, given: str | None, *, force: bool) -> tuple[Path | None, str]:
    """OUT's path (``None``: standard output) and format, checked now, not after the fetch.

    Checks that OUT is not a folder, that its format is known (:func:`output_format`)
    and its library installed (pyarrow for parquet, looked up, not imported), that
    an existing OUT may be replaced (``force``), and that its folder takes a new file.
    """
    path = None if text in (None, "-") else Path(text)
    if path is not None and path.is_dir():
        raise OutputError(f"-o {str(path)!r} is a folder; give the path of a file in it")
    fmt = output_format(path, given)
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise MissingDependencyError(_PARQUET_NEEDS)
    if path is None or is_special(path):
        return path, fmt  # written into as it is, like standard output
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass --force to overwrite it")
    check_writable_folder(path, "-o")
    return path, fmt


def check_writable_folder(path: Path, option: str) -> None:
    """Fail unless a new file can be created in the folder of ``path``.

    Tried, not guessed: ``os.access`` says yes to root even where a write then
    fails (a read-only mount), so a temporary file is created and removed. A
    device or a named pipe is written into, not beside, so it passes.
    """
    if is_special(path):
        return
    folder = path.parent
    if not folder.exists():
        raise OutputError(
            f"{option} {str(path)!r}: the folder {str(folder)!r} does not exist; "
            "create it, or give a path in another folder"
        )
    if not folder.is_dir():
        raise OutputError(
            f"{option} {str(path)!r}: {str(folder)!r} is a file, not a folder; "
            "give a path in a folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=folder)
    except OSError as error:
        raise OutputError(
            f"{option} {str(path)!r}: cannot create a file in the folder {str(folder)!r} "
            f"({error.strerror or error}); give a path in a folder you can write to"
        ) from None
    os.close(handle)
    os.unlink(probe)
