"""`fetch --ids`: one id per line, or one column of a CSV/TSV file, with or without a header."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from braincircuits_async import _cli, _cli_ids, testing

PROJECT = "fruitfly_fafb_flywire"
A, B, C = 720575940600000000, 720575940600007919, 720575940600015838


def read(text: str, column: str | None = None) -> list[int]:
    return _cli_ids.read_ids(io.StringIO(text), "ids.csv", column=column)


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        # One id per line, as before: comments, blank lines, a trailing comment.
        (f"# mine\n\n{A}\n{B}  # cell 2, left\n", None, [A, B]),
        (f"id\n{A}\n{B}\n", None, [A, B]),  # a one-column header line is skipped
        (f"root_id\n{A}\n", "root_id", [A]),
        (f"{A}\n{B}\n", "1", [A, B]),  # a number works without a header
        # TSV and CSV, the delimiter found on the first line.
        (f"root_id\tname\n{A}\tx\n{B}\ty\n", "root_id", [A, B]),
        (f"name,root_id\nx,{A}\ny,{B}\n", "root_id", [A, B]),
        (f"name,root_id\nx,{A}\n", "2", [A]),
        (f"x,{A},7\ny,{B},8\n", "2", [A, B]),  # no header, a number
        (f"Name,Root_ID\nx,{A}\n", "root_id", [A]),  # case ignored when it is unique
        (f"a,A\n{A},{B}\n", "a", [A]),  # the exact name first
        (f'name,root_id\n"a, b",{A}\n', "root_id", [A]),  # CSV quoting
        (f"\ufeffroot_id,name\r\n{A},x\r\n", "root_id", [A]),  # Excel: BOM, CRLF
        # Without --column: the one id-like column name of a header.
        (f"root_id,name\n{A},x\n", None, [A]),
        (f"id,pt_root_id,pt_supervoxel_id\n1,{A},5\n2,{B},6\n", None, [A, B]),
        (f",segment_id,name\n0,{A},x\n", None, [A]),  # pandas' index column
        (f"root_id\tname\n{A}\tx\n", None, [A]),
        ("root_id,name\n", None, []),
    ],
)
def test_ids_come_from_the_column_asked_for_and_a_header_is_skipped(
    text: str, column: str | None, expected: list[int]
) -> None:
    assert read(text, column) == expected


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        # A typo on line 1 is not a header.
        (f"72057594060000000x\n{A}\n", None, "line 1: '72057594060000000x' is not a segment id"),
        (f"{A}\n# fine\n72057594060000000x\n", None, "line 3"),
        (f"root_id\n{A}\nroot_id\n", None, "line 3: 'root_id' is not a segment id"),
        (f"root_id,name\n{A},x\n,y\n", None, "line 3: an empty cell in column 'root_id'"),
        (f"root_id,name\n{A}.0,x\n", None, "written as a float has lost digits"),
        (f"root_id,name\n{A},x\n", "nope", "no column 'nope'; its columns are 'root_id', 'name'"),
        (f"{A},x\n", "root_id", "no header line"),
        (f"{A}\n", "root_id", "no header line"),
        (
            f"{A},x\n{B},y\n",
            None,
            "2 columns and no header line: say which holds the ids with --column",
        ),
        ("id,name\n1,x\n", None, "say which holds the ids with --column NAME"),
        (f"root_id,segment_id\n{A},{B}\n", None, "'root_id', 'segment_id'"),
        (f"root_id,name\n{A}\n", "name", "line 2: 1 column(s), no column 2"),
        (f"{A}\n{A},{B}\n", None, f"line 2: '{A},{B}' is not a segment id"),
        (f"{A}\n", "0", "numbered from 1"),
    ],
)
def test_a_file_that_does_not_say_where_its_ids_are_is_an_error_naming_the_line(
    text: str, column: str | None, message: str
) -> None:
    with pytest.raises(_cli_ids.IdFileError, match=re.escape(message)):
        read(text, column)


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [(f"{A}", ""), (f"{A}  # a, b", ""), ("root_id,name", ","), ("root_id\tname, x", "\t")],
)
def test_the_delimiter_is_found_on_the_first_line(line: str, delimiter: str) -> None:
    assert _cli_ids.sniff_delimiter(line) == delimiter


# --- through the command -----------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake_url: str, fake: testing.FakeBrainCircuits) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_URL", fake_url)
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    fake.log.reset()


def fetched(out: str) -> list[int]:
    return [json.loads(line)["segment_id"] for line in out.splitlines()]


@pytest.mark.usefixtures("env")
def test_a_csv_with_a_header_works_with_column_root_id(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "neurons.csv"
    path.write_text(f"name,root_id,type\nDA1,{A},PN\nDA2,{B},PN\nVA1,{C},PN\n")
    code = _cli.main(["fetch", "size", "--project", PROJECT, "--ids", str(path),
                      "--column", "root_id"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(fetched(out)) == sorted({A, B, C} - set(_unknown(A, B, C)))


@pytest.mark.usefixtures("env")
def test_a_tsv_with_a_header_line_works_without_column(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "neurons.tsv"
    path.write_text(f"root_id\tname\n{A}\tDA1\n{B}\tDA2\n")
    code = _cli.main(["fetch", "size", "--project", PROJECT, "--ids", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "is not a segment id" not in err
    assert set(fetched(out)) == {A, B} - set(_unknown(A, B))


@pytest.mark.usefixtures("env")
def test_a_tsv_on_standard_input_with_a_column_number(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"DA1\t{A}\nDA2\t{B}\n"))
    code = _cli.main(["fetch", "size", "--project", PROJECT, "--column", "2", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert set(fetched(out)) == {A, B} - set(_unknown(A, B))


@pytest.mark.usefixtures("env")
def test_a_bad_column_is_found_before_the_first_request(
    tmp_path: Path, fake: testing.FakeBrainCircuits, capsys: Any
) -> None:
    path = tmp_path / "neurons.csv"
    path.write_text(f"name,root_id\nDA1,{A}\n")
    code = _cli.main(["fetch", "size", "--project", PROJECT, "--ids", str(path),
                      "--column", "pt_root_id"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2
    assert "no column 'pt_root_id'; its columns are 'name', 'root_id'" in err
    assert fake.log.requests == 0


def _unknown(*ids: int) -> list[int]:
    truth = testing.FakeBrainCircuits().expected_results("size", ids)
    return [i for i in ids if str(i) not in truth]
