"""`braincircuits-async fetch`: ids from a file, records out, exit codes scripts can test."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from braincircuits_async import _cli, testing

from .conftest import ServeOnLoopback

IDS = [720575940600000000 + 7919 * i for i in range(300)]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake_url: str) -> str:
    monkeypatch.setenv("BRAINCIRCUITS_URL", fake_url)
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    return fake_url


@pytest.fixture
def ids_file(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    lines = ["# my neurons", ""] + [
        f"{i}  # cell {n}" if n % 7 == 0 else str(i) for n, i in enumerate(IDS)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = _cli.main(["fetch", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_jsonl_to_stdout_has_one_object_per_known_segment(
    env: str, ids_file: Path, fake: testing.FakeBrainCircuits, capsys: Any
) -> None:
    code, out, err = run(
        capsys, "link_pre", "--project", "fruitfly_fafb_flywire", "--ids", str(ids_file)
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    truth = fake.expected_results("link_pre", IDS)
    assert len(records) == len(truth)
    for record in records:
        segment = record.pop("segment_id")
        assert isinstance(segment, int)
        assert record == truth[str(segment)]
    assert "unknown to the server" in err
    assert testing.DEFAULT_TOKEN not in out + err


def test_csv_file_has_a_column_per_field_and_nested_values_as_json(
    env: str, ids_file: Path, fake: testing.FakeBrainCircuits, tmp_path: Path, capsys: Any
) -> None:
    out_file = tmp_path / "conn.csv"
    code, out, err = run(
        capsys, "connectivity", "--project", "fruitfly_fafb_flywire", "--ids", str(ids_file),
        "-o", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    assert out == ""
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert set(rows[0]) == {"segment_id", "upstream", "downstream"}
    first = rows[0]
    truth = fake.expected("connectivity", int(first["segment_id"]))
    assert truth is not None
    assert json.loads(first["upstream"]) == truth["upstream"]


def test_ids_from_standard_input(env: str, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(map(str, IDS[:10])) + "\n"))
    code, out, _ = run(capsys, "size", "--project", "fruitfly_fafb_flywire", "-")
    assert code == 0
    assert 1 <= len(out.splitlines()) <= 10


def test_a_bad_line_is_reported_with_its_number_and_nothing_is_fetched(
    env: str, tmp_path: Path, fake: testing.FakeBrainCircuits, capsys: Any
) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("720575940600000000\n# fine\n72057594060000000x\n")
    before = fake.log.requests
    code, out, err = run(capsys, "size", "--project", "fruitfly_fafb_flywire", "--ids", str(path))
    assert code == 2
    assert "line 3" in err
    assert out == ""
    assert fake.log.requests == before


def test_an_existing_output_file_is_kept_unless_forced(
    env: str, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    out_file = tmp_path / "out.jsonl"
    out_file.write_text("precious\n")
    args = [
        "size",
        "--project",
        "fruitfly_fafb_flywire",
        "--ids",
        str(ids_file),
        "-o",
        str(out_file),
    ]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert "--force" in err
    assert out_file.read_text() == "precious\n"
    code, _, _ = run(capsys, *args, "--force")
    assert code == 0
    assert out_file.read_text().startswith('{"segment_id": ')


def test_a_refused_token_exits_2_without_printing_it(
    env: str, ids_file: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", "wrong-SECRET-token")
    code, out, err = run(
        capsys, "size", "--project", "fruitfly_fafb_flywire", "--ids", str(ids_file)
    )
    assert code == 2
    assert "BrainCircuits token" in err
    assert "wrong-SECRET-token" not in out + err


def test_failed_segments_exit_1_and_the_rest_is_written(
    monkeypatch: pytest.MonkeyPatch,
    ids_file: Path,
    tmp_path: Path,
    capsys: Any,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    # Half the requests fail with 503 and are not retried: some chunks fail for good.
    fake = testing.FakeBrainCircuits(faults={"503": 0.5}, max_consecutive_faults=100, seed=1)
    out_file = tmp_path / "out.jsonl"
    monkeypatch.setenv("BRAINCIRCUITS_URL", serve_on_loopback(fake))
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    code, _, err = run(
        capsys, "size", "--project", "fruitfly_fafb_flywire", "--ids", str(ids_file),
        "--chunk-size", "20", "--max-retries", "0", "-o", str(out_file),
    )  # fmt: skip
    assert code == 1
    written = [json.loads(line)["segment_id"] for line in out_file.read_text().splitlines()]
    assert 0 < len(written) < len(IDS)
    assert "failed" in err
    assert "503" in err


def test_an_unknown_project_is_bad_usage_exit_2(env: str, ids_file: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "size", "--project", "hemibrain2", "--ids", str(ids_file))
    assert code == 2
    assert "404" in err
    assert out == ""


def test_dash_as_output_means_standard_output(env: str, ids_file: Path, capsys: Any) -> None:
    code, out, _ = run(
        capsys, "size", "--project", "fruitfly_fafb_flywire", "--ids", str(ids_file), "-o", "-"
    )
    assert code == 0
    assert out.startswith('{"segment_id": ')


def test_parquet_output_round_trips(
    env: str, ids_file: Path, tmp_path: Path, fake: testing.FakeBrainCircuits, capsys: Any
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out_file = tmp_path / "sizes.parquet"
    code, _, err = run(
        capsys,
        "size",
        "--project",
        "fruitfly_fafb_flywire",
        "--ids",
        str(ids_file),
        "-o",
        str(out_file),
    )
    assert code == 0, err
    table = pq.read_table(out_file).to_pydict()
    assert str(pq.read_schema(out_file).field("segment_id").type) == "uint64"
    first = table["segment_id"][0]
    assert table["size"][0] == fake.expected("size", first)["size"]  # type: ignore[index]


def test_fetch_help_explains_each_option(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli.main(["fetch", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--project", "--ids", "--column", "--output", "--format", "tsv", "--force",
                   "--progress", "-vv", "<property>.<field>"):  # fmt: skip
        assert option in text
