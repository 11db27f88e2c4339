"""`fetch -o OUT`: TSV beside JSON lines, CSV and Parquet; several properties in one table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

import braincircuits_async as bca
from braincircuits_async import _cli, _cli_fetch, _export, testing

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = [720575940600000000 + 7919 * i for i in range(300)]


@pytest.fixture
def ids_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_url: str, fake: testing.FakeBrainCircuits
) -> Path:
    monkeypatch.setenv("BRAINCIRCUITS_URL", fake_url)
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    fake.reset()
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in IDS))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = _cli.main(["fetch", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- TSV ---------------------------------------------------------------------------------


def test_tsv_output_from_the_extension_has_a_column_per_field(
    ids_file: Path, fake: testing.FakeBrainCircuits, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "conn.tsv"
    code, stdout, err = run(capsys, "connectivity", "--project", PROJECT, "--ids", str(ids_file),
                            "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert stdout == ""
    assert out.read_text().startswith("segment_id\tupstream\tdownstream\n")
    rows = list(csv.DictReader(io.StringIO(out.read_text()), delimiter="\t"))
    truth = fake.expected_results("connectivity", IDS)
    assert {r["segment_id"]: {k: json.loads(r[k]) for k in ("upstream", "downstream")}
            for r in rows} == truth  # fmt: skip


def test_tsv_on_standard_output_with_format(ids_file: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "size", "--project", PROJECT, "--ids", str(ids_file),
                         "--format", "tsv")  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0] == "segment_id\tsize"
    assert all(len(line.split("\t")) == 2 for line in out.splitlines())


def test_tsv_is_valid_whatever_the_values(tmp_path: Path) -> None:
    data = {
        1: {"a": math.nan, "b": 'tab\there, line\nbreak, "quote"', "c": [math.inf, {"d": 1}]},
        2: {"a": 1.5, "b": "lone \ud800 surrogate", "c": []},
    }
    result = bca.SegmentPropertyResult(
        data, property="p", project=PROJECT, materialized_timestamp=1
    )
    out = tmp_path / "out.tsv"
    _export.write_result(result, "tsv", out, io.StringIO())
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8")), delimiter="\t"))
    assert len(rows) == 2
    assert rows[0]["a"] == ""
    assert rows[0]["b"] == 'tab\there, line\nbreak, "quote"'
    assert json.loads(rows[0]["c"], parse_constant=pytest.fail) == [None, {"d": 1}]
    assert rows[1] == {"segment_id": "2", "a": "1.5", "b": "lone \\ud800 surrogate", "c": "[]"}
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(frame["b"]) == [rows[0]["b"], rows[1]["b"]]


class Unwritable:
    """A value no writer can turn into text (JSON refuses it, ``str`` raises)."""

    def __str__(self) -> str:
        raise OSError("disk full")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_a_write_that_fails_halfway_leaves_no_file(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"out.{fmt}"
    rows: dict[int, dict[str, Any]] = {i: {"a": i} for i in range(100)}
    rows[50] = {"a": Unwritable()}
    with pytest.raises((OSError, TypeError)):
        _export.write_result(rows, fmt, out, io.StringIO())
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a partial file


# --- several properties ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["size"], ["size"]),
        (["size,link_pre"], ["size", "link_pre"]),
        (["size", "link_pre"], ["size", "link_pre"]),
        (["size,", " link_pre ,size"], ["size", "link_pre"]),
        ([","], []),
    ],
)
def test_properties_are_split_at_commas_and_each_kept_once(
    words: list[str], expected: list[str]
) -> None:
    assert _cli_fetch.property_names(words) == expected


def test_several_properties_make_one_table_with_a_column_per_property_and_field(
    ids_file: Path, fake: testing.FakeBrainCircuits, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "both.csv"
    code, _, err = run(capsys, "size,link_pre", "--project", PROJECT, "--ids", str(ids_file),
                       "-o", str(out))  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == [
        "segment_id", "size.size", "link_pre.nr_pre", "link_pre.nr_downstream_partner"
    ]  # fmt: skip
    size, link_pre = fake.expected_results("size", IDS), fake.expected_results("link_pre", IDS)
    assert [r["segment_id"] for r in rows] == [str(i) for i in IDS if str(i) in size]
    for row in rows:
        assert int(row["size.size"]) == size[row["segment_id"]]["size"]
        assert int(row["link_pre.nr_pre"]) == link_pre[row["segment_id"]]["nr_pre"]
    assert f"{len(size):,} segment(s) written, {len(IDS) - len(size):,} unknown" in err


@pytest.mark.parametrize(
    "words", [["size", "link_pre"], ["size,link_pre"], ["size,", "link_pre,size"]]
)
def test_several_properties_in_json_lines_have_a_key_each(
    words: list[str], ids_file: Path, fake: testing.FakeBrainCircuits, capsys: Any
) -> None:
    code, out, err = run(capsys, *words, "--project", PROJECT, "--ids", str(ids_file))
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    size, link_pre = fake.expected_results("size", IDS), fake.expected_results("link_pre", IDS)
    for record in records:
        key = str(record["segment_id"])
        assert record == {"segment_id": int(key), "size": size[key], "link_pre": link_pre[key]}
    assert len(records) == len(size)


class RollOverOnce:
    """The fake, moving to a new materialization right after its first answer."""

    def __init__(self, fake: testing.FakeBrainCircuits) -> None:
        self.fake, self.rolled = fake, False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.fake(scope, receive, send)
        if scope["type"] == "http" and not self.rolled:
            self.rolled = True
            self.fake.rollover()


def test_several_properties_come_from_one_materialization(
    tmp_path: Path,
    ids_file: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    # The first answer is from the old materialization: the client fetches it again,
    # so every value of every property in the table is from the new one.
    fake = testing.FakeBrainCircuits()
    old = fake.materialized_timestamp
    out = tmp_path / "both.jsonl"
    monkeypatch.setenv("BRAINCIRCUITS_URL", serve_on_loopback(RollOverOnce(fake)))
    code, _, err = run(capsys, "size", "link_pre", "--project", PROJECT, "--ids",
                       str(ids_file), "--chunk-size", "100", "--concurrency", "1",
                       "-o", str(out))  # fmt: skip
    assert code == 0, err
    newest = fake.materialized_timestamp
    assert newest != old
    records = {r.pop("segment_id"): r for r in map(json.loads, out.read_text().splitlines())}
    for prop in ("size", "link_pre"):
        truth = fake.expected_results(prop, IDS, materialized_timestamp=newest)
        assert {str(s): r[prop] for s, r in records.items()} == truth
        assert truth != fake.expected_results(prop, IDS, materialized_timestamp=old)
    assert f"materialized_timestamp {newest}" in err


def test_a_property_without_a_value_for_a_segment_leaves_its_cells_empty() -> None:
    size = bca.SegmentPropertyResult(
        {1: {"size": 10}, 2: {"size": 20}}, property="size", project=PROJECT,
        materialized_timestamp=1,
    )  # fmt: skip
    pre = bca.SegmentPropertyResult(
        {2: {"nr_pre": 5}, 3: {"nr_pre": 6}}, property="link_pre", project=PROJECT,
        materialized_timestamp=1, missing=(1,),
    )  # fmt: skip
    names = ["size", "link_pre"]
    flat = _export.table([size, pre], names, [3, 2, 1, 4], nested=False)
    assert list(flat) == [3, 2, 1]  # request order; 4 is in neither
    assert flat[3] == {"size.size": None, "link_pre.nr_pre": 6}
    assert flat[1] == {"size.size": 10, "link_pre.nr_pre": None}
    nested = _export.table([size, pre], names, [3, 2, 1, 4], nested=True)
    assert nested[1] == {"size": {"size": 10}, "link_pre": None}
    assert _export.table([size], ["size"], [1, 2], nested=False) is size  # one: as it is
    out = io.StringIO()
    _export.write_csv(flat, out)
    assert out.getvalue().splitlines()[1:] == ["3,,6", "2,20,5", "1,10,"]


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_several_properties_in_tsv_and_parquet(
    fmt: str, ids_file: Path, fake: testing.FakeBrainCircuits, tmp_path: Path, capsys: Any
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"both.{fmt}"
    code, _, err = run(capsys, "size", "link_pre", "--project", PROJECT, "--ids", str(ids_file),
                       "-o", str(out))  # fmt: skip
    assert code == 0, err
    if fmt == "tsv":
        rows = list(csv.DictReader(io.StringIO(out.read_text()), delimiter="\t"))
        first = {k: int(v) for k, v in rows[0].items()}
    else:
        import pyarrow.parquet as pq

        first = pq.read_table(out).to_pylist()[0]
    key = str(first["segment_id"])
    assert first["size.size"] == fake.expected_results("size", IDS)[key]["size"]
    assert first["link_pre.nr_pre"] == fake.expected_results("link_pre", IDS)[key]["nr_pre"]
