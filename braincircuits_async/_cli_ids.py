"""The ids ``fetch`` reads: one per line, or one column of a CSV or TSV file.

The rules, each a small function below:

* **delimiter** (:func:`sniff_delimiter`): found on the first line that is not
  blank or a ``#`` comment, whatever the file is called: a tab makes it TSV, else
  a comma CSV, else it is one id per line. So a tab-separated ``.csv`` works, and
  standard input too.
* **header** (:func:`is_header_cell`): only the first line can be one, when the
  cell the ids come from is a name (it starts with a letter or ``_``) rather than
  an id; it is skipped. A first line such as ``72057594060000000x`` is a typo, not
  a header, and is reported like any bad line.
* **column** (:func:`pick_column`): ``--column NAME`` needs a header (exact name,
  else the one name that matches ignoring case); ``--column N`` counts from 1 and
  works with or without one. Without ``--column``, a one-column file is read as it
  is; a file of several columns needs a header with exactly one of
  :data:`ID_COLUMNS` (``root_id``, ...), otherwise it is an error that lists the
  columns. A bare ``id`` is not guessed: in CAVE tables it is the annotation's id,
  next to the ``pt_root_id`` of its segment.
* **comments**: blank lines and lines starting with ``#`` are skipped; in a
  one-column file, so is everything after a ``#`` on a line.

Every error names the source and the line, and nothing is fetched: a file with a
typo in it is not half-fetched.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence

from ._exceptions import InvalidArgumentError

__all__ = [
    "ID_COLUMNS",
    "IdFileError",
    "is_header_cell",
    "is_id",
    "pick_column",
    "read_ids",
    "sniff_delimiter",
]

#: Column names taken for the ids when ``--column`` is not given (ignoring case).
ID_COLUMNS = ("root_id", "pt_root_id", "segment_id")

_NAME = re.compile(r"[A-Za-z_]")


class IdFileError(InvalidArgumentError):
    """A line of an id file is not a segment id, or its columns do not say where the
    ids are; says which line, and what to give."""


def is_id(text: str) -> bool:
    """Whether ``text`` is a segment id: a decimal integer in [0, 2**64)."""
    return text.isascii() and text.isdigit() and len(text) <= 20 and int(text) < 2**64


def is_header_cell(text: str) -> bool:
    """Whether a first line's cell is a column name (``root_id``, ``Segment ID``), not data."""
    return _NAME.match(text) is not None


def sniff_delimiter(line: str) -> str:
    """The delimiter of a file whose first line is ``line``: tab, comma, or ``""`` (one column)."""
    text = line.split("#", 1)[0]
    if "\t" in text:
        return "\t"
    return "," if "," in text else ""


def pick_column(first: Sequence[str], column: str | None, source: str) -> tuple[int | None, bool]:
    """The 0-based index of the id column and whether ``first`` (the first line's
    cells) is a header; ``None`` for a one-column file read as it is.

    Raises :class:`IdFileError` when the column cannot be told: a name that is not
    in the header (the message lists the columns), a name without a header, several
    columns and no ``--column``.
    """
    listing = ", ".join(repr(c) for c in first)
    if column is not None and column.isdigit():
        index = int(column) - 1
        if index < 0:
            raise IdFileError(f"--column {column}: columns are numbered from 1")
        header = index < len(first) and not is_id(first[index]) and is_header_cell(first[index])
        return index, header
    if column is not None:
        if any(is_id(c) for c in first) or not any(is_header_cell(c) for c in first):
            raise IdFileError(
                f"--column {column!r}: {source} has no header line (its line 1 is data), so "
                "give the column's number instead, counting from 1 (--column 1)"
            )
        exact = [i for i, c in enumerate(first) if c == column]
        loose = [i for i, c in enumerate(first) if c.lower() == column.lower()]
        found = exact or loose
        if len(found) != 1:
            what = "several columns named" if found else "no column"
            raise IdFileError(
                f"--column {column!r}: {source} has {what} {column!r}; its columns are "
                f"{listing} (or give a number, counting from 1)"
            )
        return found[0], True
    if len(first) == 1:
        return None, not is_id(first[0]) and is_header_cell(first[0])
    if any(is_id(c) for c in first) or not any(is_header_cell(c) for c in first):
        raise IdFileError(
            f"{source} has {len(first)} columns and no header line: say which holds the "
            "ids with --column NUMBER, counting from 1"
        )
    named = [i for i, c in enumerate(first) if c.lower() in ID_COLUMNS]
    if len(named) != 1:
        raise IdFileError(
            f"{source} has {len(first)} columns ({listing}): say which holds the ids with "
            "--column NAME (or a number, counting from 1)"
        )
    return named[0], True


def _cells(line: str, delimiter: str) -> list[str]:
    if not delimiter:
        return [line.split("#", 1)[0].strip()]
    return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter), [])]


def read_ids(lines: Iterable[str], source: str, *, column: str | None = None) -> list[int]:
    """Segment ids, one per line or from one column of a CSV/TSV file (see the module).

    Raises :class:`IdFileError` naming the first bad line, so nothing is fetched
    for a file with a typo in it.
    """
    ids: list[int] = []
    delimiter: str | None = None
    index: int | None = None
    name = ""
    for number, raw in enumerate(lines, start=1):
        line = raw.lstrip("\ufeff") if number == 1 else raw  # a BOM, as Excel writes
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if delimiter is None:
            delimiter = sniff_delimiter(line)
            cells = _cells(line, delimiter)
            index, header = pick_column(cells, column, source)
            if index is not None and header:
                name = f" in column {cells[index]!r}"
            elif index is not None:
                name = f" in column {index + 1}"
            if header:
                continue
        cells = _cells(line, delimiter)
        at = 0 if index is None else index
        if at >= len(cells):
            raise IdFileError(
                f"{source}, line {number}: {len(cells)} column(s), no column {at + 1}{name}"
            )
        text = cells[at]
        if not is_id(text):
            raise IdFileError(_not_an_id(source, number, text, name))
        ids.append(int(text))
    return ids


def _not_an_id(source: str, number: int, text: str, where: str) -> str:
    what = repr(text[:40]) if text else "an empty cell"
    hint = (
        "; a number written as a float has lost digits: write ids as integers"
        if re.fullmatch(r"[0-9.eE+-]+", text) and any(c in text for c in ".eE")
        else ""
    )
    return (
        f"{source}, line {number}: {what}{where} is not a segment id "
        f"(a non-negative integer below 2**64{', one per line' if not where else ''}){hint}"
    )
