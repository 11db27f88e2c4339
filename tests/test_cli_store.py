"""`fetch --store` resumes, `--failed-ids` retries, checks come before the first request,
and `export` writes what a store holds: the command line of a day-long fetch."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import braincircuits_async as bca
from braincircuits_async import _cli, _cli_fetch, _cli_ids, _export, testing

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = [720575940600000000 + 7919 * i for i in range(1200)]
CHUNK = 40


class Gate:
    """The fake behind a gate that a test steers between runs.

    ``refuse_after``: requests passed on before every further one gets 401 (a token
    that expires mid-run); ``failing``: ids whose chunks always get 500. ``requested``
    holds the ids of every request passed on to the fake, in arrival order.
    """

    def __init__(self, fake: testing.FakeBrainCircuits) -> None:
        self.fake = fake
        self.refuse_after: int | None = None
        self.failing: frozenset[int] = frozenset()
        self.requested: list[list[int]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        segments: list[int] = json.loads(body)["segments"]
        with self._lock:
            refused = self.refuse_after is not None and len(self.requested) >= self.refuse_after
            failed = not self.failing.isdisjoint(segments)
            if not (refused or failed):
                self.requested.append(segments)
        if refused or failed:
            status, detail = (401, "invalid token") if refused else (500, "internal error")
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            body = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.body", "body": body})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.fake(scope, replay, send)

    @property
    def segments_requested(self) -> int:
        return sum(len(ids) for ids in self.requested)


@pytest.fixture(scope="module")
def module_gate() -> Gate:
    return Gate(testing.FakeBrainCircuits())


@pytest.fixture
def gate(
    module_gate: Gate, serve_on_loopback: ServeOnLoopback, monkeypatch: pytest.MonkeyPatch
) -> Gate:
    """The module's gate, open, before a fake that starts over: log empty, first
    materialization; the environment points the CLI at it (on the session's loopback server)."""
    gate, url = module_gate, serve_on_loopback(module_gate)
    gate.refuse_after = None
    gate.failing = frozenset()
    gate.requested.clear()
    gate.fake.reset()
    monkeypatch.setenv("BRAINCIRCUITS_URL", url)
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    return gate


@pytest.fixture
def fake(gate: Gate) -> testing.FakeBrainCircuits:
    return gate.fake


@pytest.fixture
def ids_file(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in IDS))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = _cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(path: Path) -> dict[str, dict[str, Any]]:
    """``{decimal id: value}`` of a JSON-lines output, as ``fake.expected_results`` has it."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {str(row.pop("segment_id")): row for row in rows}


def stored(path: Path, ids: list[int] = IDS, prop: str = "link_pre") -> int:
    """How many of ``ids`` the store at ``path`` holds (values and unknown ids)."""
    with bca.ResultStore(path) as store:
        held = store.read(prop, ids, project=PROJECT)
    return len(held) + len(held.missing)


# --- resume -------------------------------------------------------------------------------


@contextlib.contextmanager
def interruptible_children() -> Iterator[None]:
    """Children started here take Ctrl-C: one started by a shell in the background
    would inherit an ignored SIGINT, and Python keeps it ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to the default on exec
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str] | None) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert process is None or process.poll() is None, process and process.communicate()
        assert time.monotonic() < deadline, "the fetch did not get that far"
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("stop", "status", "note"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "stopped by SIGTERM"),
        (signal.SIGKILL, -signal.SIGKILL, None),
    ],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
def test_a_stopped_fetch_run_again_fetches_only_what_the_store_lacks(
    stop: signal.Signals,
    status: int,
    note: str | None,
    ids_file: Path,
    tmp_path: Path,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    # The first run meets answers slow enough for the stop to come mid-run.
    slow = testing.FakeBrainCircuits(latency=0.03)
    store, out = tmp_path / "flywire.sqlite", tmp_path / "link_pre.jsonl"
    command = [
        sys.executable, "-m", "braincircuits_async", "fetch", "link_pre", "--project", PROJECT,
        "--ids", str(ids_file), "--store", str(store), "-o", str(out),
        "--chunk-size", str(CHUNK), "--concurrency", "2",
    ]  # fmt: skip
    url = serve_on_loopback(slow)
    with interruptible_children():
        env = {
            **os.environ,
            "BRAINCIRCUITS_URL": url,
            "BRAINCIRCUITS_TOKEN": testing.DEFAULT_TOKEN,
            "BRAINCIRCUITS_CAVE_TOKEN": testing.DEFAULT_CAVE_TOKEN,
        }
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            wait_until(store.exists, first)
            with bca.ResultStore(store) as reader:
                wait_until(
                    lambda: (
                        sum(reader.materializations("link_pre", project=PROJECT).values())
                        >= 2 * CHUNK
                    ),
                    first,
                )
            first.send_signal(stop)
            _, err = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == status, err
        if note is not None:
            assert note in err
            assert "run the same command again" in err
        assert not out.exists()
        held = stored(store)
        assert 2 * CHUNK <= held < len(IDS)

        # The same command, at the same address, now answered at once by a fake with
        # the same values, whose log holds the second run only (the stopped run's last
        # requests may still be on their way through the slow one).
        fake = testing.FakeBrainCircuits()
        assert serve_on_loopback(fake) == url
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    fetched = sum(r.n_segments for r in fake.log.records if r.status == 200)
    assert fetched == len(IDS) - held
    assert records(out) == fake.expected_results("link_pre", IDS)
    assert testing.DEFAULT_TOKEN not in err + second.stderr


def test_a_token_refused_mid_run_keeps_the_chunks_and_the_same_command_finishes(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store, out = tmp_path / "flywire.sqlite", tmp_path / "link_pre.jsonl"
    command = [
        "fetch", "link_pre", "--project", PROJECT, "--ids", str(ids_file), "--store", str(store),
        "-o", str(out), "--chunk-size", str(CHUNK), "--concurrency", "1",
    ]  # fmt: skip
    gate.refuse_after = 5
    code, _, err = run(capsys, *command)
    assert code == 2
    assert "AuthenticationError" in err
    assert f"{5 * CHUNK} of {len(IDS):,} segment(s) are in the result store" in err
    assert "run the same command again" in err
    assert not out.exists()  # so that the same command, without --force, can write it
    assert stored(store) == 5 * CHUNK

    gate.refuse_after = None
    gate.requested.clear()
    code, _, err = run(capsys, *command)
    assert code == 0, err
    assert gate.segments_requested == len(IDS) - 5 * CHUNK
    assert records(out) == fake.expected_results("link_pre", IDS)


def test_several_properties_resume_from_the_store_where_they_stopped(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store, out = tmp_path / "flywire.sqlite", tmp_path / "both.csv"
    command = [
        "fetch", "size,link_pre", "--project", PROJECT, "--ids", str(ids_file),
        "--store", str(store), "-o", str(out), "--chunk-size", str(CHUNK), "--concurrency", "1",
    ]  # fmt: skip
    gate.refuse_after = 7
    code, _, err = run(capsys, *command)
    assert code == 2, err
    assert "run the same command again" in err
    assert not out.exists()
    held = stored(store, prop="size") + stored(store, prop="link_pre")
    assert held == 7 * CHUNK

    gate.refuse_after = None
    gate.requested.clear()
    code, _, err = run(capsys, *command)
    assert code == 0, err
    assert gate.segments_requested == 2 * len(IDS) - held  # only what the store lacked
    rows = {r.pop("segment_id"): r for r in csv.DictReader(io.StringIO(out.read_text()))}
    size, pre = fake.expected_results("size", IDS), fake.expected_results("link_pre", IDS)
    assert rows == {
        s: {"size.size": str(size[s]["size"]), "link_pre.nr_pre": str(pre[s]["nr_pre"]),
            "link_pre.nr_downstream_partner": str(pre[s]["nr_downstream_partner"])}
        for s in size
    }  # fmt: skip


def test_a_token_refused_mid_run_without_a_store_writes_what_was_fetched(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    out, failed = tmp_path / "link_pre.jsonl", tmp_path / "failed.txt"
    gate.refuse_after = 3
    code, _, err = run(
        capsys, "fetch", "link_pre", "--project", PROJECT, "--ids", str(ids_file), "-o", str(out),
        "--chunk-size", str(CHUNK), "--concurrency", "1", "--failed-ids", str(failed),
    )  # fmt: skip
    assert code == 2
    assert "were written to" in err
    assert records(out) == fake.expected_results("link_pre", IDS[: 3 * CHUNK])
    assert failed.read_text().split() == [str(i) for i in IDS[3 * CHUNK :]]


def test_a_rerun_with_everything_stored_sends_one_request(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store, out = tmp_path / "flywire.sqlite", tmp_path / "size.csv"
    command = ["fetch", "size", "--project", PROJECT, "--ids", str(ids_file),
               "--store", str(store), "-o", str(out), "--force"]  # fmt: skip
    assert run(capsys, *command)[0] == 0
    first = out.read_text()
    fake.log.reset()
    code, _, err = run(capsys, *command)
    assert code == 0, err
    assert fake.log.requests == 1
    assert "1 request(s) sent" in err
    assert out.read_text() == first


# --- --failed-ids -------------------------------------------------------------------------


def test_failed_ids_round_trip_into_ids(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    failed = tmp_path / "failed.txt"
    gate.failing = frozenset({IDS[45], IDS[300], IDS[301]})  # in chunks 1 and 7, for good
    code, _, err = run(
        capsys, "fetch", "size", "--project", PROJECT, "--ids", str(ids_file),
        "-o", str(tmp_path / "first.jsonl"), "--chunk-size", str(CHUNK), "--max-retries", "0",
        "--failed-ids", str(failed),
    )  # fmt: skip
    assert code == 1
    in_failed_chunks = IDS[CHUNK : 2 * CHUNK] + IDS[7 * CHUNK : 8 * CHUNK]
    with failed.open() as lines:
        assert _cli_ids.read_ids(lines, "failed.txt") == in_failed_chunks
    assert f"{len(in_failed_chunks)} id(s) not fetched are listed in" in err
    first = records(tmp_path / "first.jsonl")
    assert first == fake.expected_results("size", set(IDS) - set(in_failed_chunks))

    gate.failing = frozenset()
    gate.requested.clear()
    code, _, err = run(
        capsys, "fetch", "size", "--project", PROJECT, "--ids", str(failed),
        "-o", str(tmp_path / "retry.jsonl"), "--failed-ids", str(failed),
    )  # fmt: skip
    assert code == 0, err
    assert sorted(i for ids in gate.requested for i in ids) == sorted(in_failed_chunks)
    assert records(tmp_path / "retry.jsonl") == fake.expected_results("size", in_failed_chunks)
    assert failed.read_text() == ""  # nothing failed: an empty file, not a stale one


@pytest.mark.parametrize(
    ("held", "unknown", "expected"),
    [
        ({}, (), [3, 1, 2]),
        ({1: {}}, (), [3, 2]),
        ({1: {}}, (2,), [3]),  # unknown to the server: not a failure
        ({1: {}, 2: {}, 3: {}}, (), []),
    ],
)
def test_not_fetched_are_the_ids_neither_returned_nor_unknown(
    held: dict[int, dict[str, Any]], unknown: tuple[int, ...], expected: list[int]
) -> None:
    result = bca.SegmentPropertyResult(
        held, property="size", project=PROJECT, materialized_timestamp=1, missing=unknown
    )
    assert _cli_fetch.not_fetched([3, 1, 2, 3, 1], [result]) == expected
    assert _cli_fetch.not_fetched([3, 1, 2], []) == [3, 1, 2]


def test_an_id_is_not_fetched_when_any_property_lacks_it() -> None:
    def result(prop: str, held: list[int], missing: tuple[int, ...]) -> bca.SegmentPropertyResult:
        return bca.SegmentPropertyResult(
            {s: {} for s in held}, property=prop, project=PROJECT, materialized_timestamp=1,
            missing=missing,
        )  # fmt: skip

    both = [result("size", [1, 2], (3,)), result("link_pre", [1], (3,))]
    assert _cli_fetch.not_fetched([1, 2, 3, 4], both) == [2, 4]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (bca.AuthenticationError("refused", status_code=401), 2),
        (bca.APIStatusError("no such project", status_code=404), 2),
        (bca.APIStatusError("unusable", status_code=422), 2),
        (bca.StoreError("disk full"), 2),
        (bca.InvalidArgumentError("bad property"), 2),
        (bca.APIStatusError("unavailable", status_code=503), 1),
        (bca.RateLimitError("slow down", status_code=429), 1),
        (bca.APIConnectionError("dropped"), 1),
    ],
)
def test_exit_status_is_2_for_what_a_rerun_would_repeat(
    error: bca.BrainCircuitsError, status: int
) -> None:
    assert _cli_fetch.exit_status(error) == status


# --- checks before the first request ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "given", "expected"),
    [
        (None, None, "jsonl"),
        (None, "csv", "csv"),
        (Path("out.CSV"), None, "csv"),
        (Path("out.jsonl"), None, "jsonl"),
        (Path("out.parquet"), None, "parquet"),
        (Path("out.tsv"), None, "tsv"),
        (Path("out.TSV"), None, "tsv"),
        (None, "tsv", "tsv"),
        (Path("out.txt"), "jsonl", "jsonl"),
        (Path("out"), "csv", "csv"),
        (Path("out.json"), None, "--format"),
        (Path("out"), None, "no extension"),
        (None, "parquet", "-o OUT"),
    ],
)
def test_output_format_comes_from_format_else_a_known_extension(
    path: Path | None, given: str | None, expected: str
) -> None:
    if expected in _export.FORMATS:
        assert _export.output_format(path, given) == expected
    else:
        with pytest.raises(_export.OutputError, match=expected):
            _export.output_format(path, given)


PREFLIGHT: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("missing-folder", lambda t: ["-o", str(t / "nope" / "out.jsonl")], "does not exist"),
    ("folder-is-a-file", lambda t: ["-o", str(t / "ids.txt" / "out.jsonl")], "not a folder"),
    # /proc refuses new files even to root (tests run as root, where chmod stops nothing).
    ("read-only-folder", lambda t: ["-o", "/proc/self/out.jsonl"], "cannot create a file"),
    ("output-is-a-folder", lambda t: ["-o", str(t)], "is a folder"),
    ("unknown-extension", lambda t: ["-o", str(t / "out.json")], "--format"),
    ("no-extension", lambda t: ["-o", str(t / "out")], "--format"),
    ("parquet-to-stdout", lambda t: ["--format", "parquet"], "-o OUT"),
    ("output-exists", lambda t: ["-o", str(t / "ids.txt"), "--format", "csv"], "--force"),
    (
        "failed-ids-folder",
        lambda t: ["--failed-ids", str(t / "nope" / "failed.txt")],
        "--failed-ids",
    ),
    ("store-folder", lambda t: ["--store", str(t / "nope" / "s.sqlite")], "does not exist"),
    (
        "store-is-out",
        lambda t: ["--store", str(t / "out.jsonl"), "-o", str(t / "out.jsonl")],
        "same file",
    ),
    ("bad-id", lambda t: ["--ids", str(t / "typo.txt")], "line 2"),
]


@pytest.mark.parametrize(("case", "extra", "message"), PREFLIGHT, ids=[c[0] for c in PREFLIGHT])
def test_a_problem_found_before_the_first_request_exits_2_with_nothing_sent(
    case: str,
    extra: Callable[[Path], list[str]],
    message: str,
    gate: Gate,
    fake: testing.FakeBrainCircuits,
    ids_file: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    (tmp_path / "typo.txt").write_text(f"{IDS[0]}\n{IDS[1]}x\n")
    store = tmp_path / "fresh.sqlite"
    arguments = ["--ids", str(ids_file), "--store", str(store), *extra(tmp_path)]
    code, out, err = run(capsys, "fetch", "size", "--project", PROJECT, *arguments)
    assert code == 2
    assert message in err
    assert out == ""
    assert fake.log.requests == 0
    assert not store.exists()  # checks come before the store is created


def test_parquet_without_pyarrow_is_found_before_the_first_request(
    gate: Gate,
    fake: testing.FakeBrainCircuits,
    ids_file: Path,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _export.importlib.util.find_spec

    def without_pyarrow(name: str, *args: Any) -> Any:
        return None if name == "pyarrow" else real(name, *args)

    monkeypatch.setattr(_export.importlib.util, "find_spec", without_pyarrow)
    out = tmp_path / "sizes.parquet"
    code, _, err = run(
        capsys, "fetch", "size", "--project", PROJECT, "--ids", str(ids_file), "-o", str(out)
    )
    assert code == 2
    assert 'pip install "braincircuits-async[parquet]"' in err
    assert fake.log.requests == 0
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_as_out_is_written_into_not_replaced(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    code, _, err = run(capsys, "fetch", "size", "--project", PROJECT, "--ids", str(ids_file),
                       "-o", str(pipe), "--format", "jsonl")  # fmt: skip
    reader.join(10)
    assert code == 0, err
    assert stat.S_ISFIFO(pipe.stat().st_mode)  # a rename would have put a file in its place
    rows = [json.loads(line) for line in received[0].splitlines()]
    assert {str(r.pop("segment_id")): r for r in rows} == fake.expected_results("size", IDS)


def sqlite_with_a_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE neurons (id INTEGER)")
        db.commit()


@pytest.mark.parametrize(
    "make",
    [
        lambda path: path.write_bytes(b"segment_id,size\n720575940600000000,1\n" * 50),
        sqlite_with_a_table,
    ],
    ids=["csv-file", "other-sqlite-database"],
)
def test_a_store_path_that_is_not_a_store_exits_2_and_is_left_untouched(
    make: Callable[[Path], None],
    gate: Gate,
    fake: testing.FakeBrainCircuits,
    ids_file: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    path = tmp_path / "important.db"
    make(path)
    before = path.read_bytes(), path.stat().st_mtime_ns
    code, _, err = run(
        capsys, "fetch", "size", "--project", PROJECT, "--ids", str(ids_file), "--store", str(path)
    )
    assert code == 2
    assert "not a braincircuits-async result store" in err
    assert fake.log.requests == 0
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "important.db"]


# --- export -------------------------------------------------------------------------------


def fill_store(capsys: Any, ids_file: Path, store: Path, prop: str = "connectivity") -> None:
    out = store.with_name("fetched.jsonl")
    code, _, err = run(capsys, "fetch", prop, "--project", PROJECT, "--ids", str(ids_file),
                       "--store", str(store), "-o", str(out), "--force")  # fmt: skip
    assert code == 0, err


def test_export_writes_what_the_store_holds_offline(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store, out = tmp_path / "flywire.sqlite", tmp_path / "connectivity.csv"
    fill_store(capsys, ids_file, store)
    fake.log.reset()
    code, _, err = run(capsys, "export", "--store", str(store), "connectivity",
                       "--project", PROJECT, "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert fake.log.requests == 0
    truth = fake.expected_results("connectivity", IDS)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["segment_id"]: {k: json.loads(r[k]) for k in ("upstream", "downstream")}
            for r in rows} == truth  # fmt: skip
    unknown = len(IDS) - len(truth)
    assert f"{len(truth):,} segment(s) written, {unknown:,} unknown to the server" in err
    assert f"materialized_timestamp {fake.materialized_timestamp}" in err


def test_export_picks_the_newest_materialization_or_the_one_asked_for(
    gate: Gate, fake: testing.FakeBrainCircuits, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store = tmp_path / "flywire.sqlite"
    fill_store(capsys, ids_file, store, "size")
    old = fake.materialized_timestamp
    new = fake.rollover()
    fill_store(capsys, ids_file, store, "size")  # the store keeps the old one too

    code, out, err = run(capsys, "export", "--store", str(store), "size", "--project", PROJECT)
    assert code == 0, err
    newest = {str(r.pop("segment_id")): r for r in map(json.loads, out.splitlines())}
    assert newest == fake.expected_results("size", IDS)
    assert f"the store also holds {old}" in err

    code, out, err = run(capsys, "export", "--store", str(store), "size", "--project", PROJECT,
                         "--materialized-timestamp", str(old), "-o", "-")  # fmt: skip
    assert code == 0, err
    older = {str(r.pop("segment_id")): r for r in map(json.loads, out.splitlines())}
    assert older == fake.expected_results("size", IDS, materialized_timestamp=old)
    assert older != newest
    assert f"the store also holds {new}" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["size"], "holds nothing for 'size'"),
        (["link_pre", "--materialized-timestamp", "1"], "holds no materialized_timestamp 1"),
    ],
)
def test_export_of_what_the_store_does_not_hold_exits_2(
    arguments: list[str], message: str, gate: Gate, ids_file: Path, tmp_path: Path, capsys: Any
) -> None:
    store = tmp_path / "flywire.sqlite"
    fill_store(capsys, ids_file, store, "link_pre")
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "export", "--store", str(store), "--project", PROJECT,
                       "-o", str(out), *arguments)  # fmt: skip
    assert code == 2
    assert message in err
    assert not out.exists()


def test_export_from_a_store_that_does_not_exist_creates_none(tmp_path: Path, capsys: Any) -> None:
    store = tmp_path / "typo.sqlite"
    code, _, err = run(capsys, "export", "--store", str(store), "size", "--project", PROJECT)
    assert code == 2
    assert "no such file" in err
    assert not store.exists()


def test_export_and_fetch_help_name_the_new_options(capsys: Any) -> None:
    for command, options in [
        ("fetch", ("--store", "--failed-ids", "143")),
        ("export", ("--store", "--project", "--materialized-timestamp", "--format", "--force")),
    ]:
        with pytest.raises(SystemExit) as exited:
            _cli.main([command, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        for option in options:
            assert option in text


def test_values_that_disagree_on_the_materialization_are_not_written(
    tmp_path: Path,
    ids_file: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    # Every answer moves the materialization on: the re-fetch rounds cannot reconcile.
    fake = testing.FakeBrainCircuits(rollover_after=1)
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_URL", serve_on_loopback(fake))
    code, _, err = run(capsys, "fetch", "size", "--project", PROJECT, "--ids",
                       str(ids_file), "-o", str(out))  # fmt: skip
    assert code == 1
    assert "InconsistentMaterializationError" in err
    assert "was not written: the values fetched disagree" in err
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_output_is_valid_whatever_the_values(tmp_path: Path, fmt: str) -> None:
    # Values the server may send that JSON lines and CSV cannot hold as they are.
    data = {
        1: {"a": math.nan, "b": "lone \ud800 surrogate", "c": [math.inf, {"d": -math.inf}]},
        2: {"a": 1.5, "b": "ünï", "c": []},
    }
    result = bca.SegmentPropertyResult(
        data, property="size", project=PROJECT, materialized_timestamp=1
    )
    out = tmp_path / f"out.{fmt}"
    _export.write_result(result, fmt, out, io.StringIO())
    if fmt == "jsonl":
        rows = [
            json.loads(line, parse_constant=pytest.fail) for line in out.read_text().splitlines()
        ]
        assert rows[0] == {"segment_id": 1, "a": None, "b": "lone \ud800 surrogate",
                           "c": [None, {"d": None}]}  # fmt: skip
        assert rows[1]["b"] == "ünï"
    elif fmt in ("csv", "tsv"):
        text = io.StringIO(out.read_text(encoding="utf-8"))
        rows = list(csv.DictReader(text, delimiter="," if fmt == "csv" else "\t"))
        assert rows[0]["a"] == ""
        assert rows[0]["b"] == "lone \\ud800 surrogate"
        assert json.loads(rows[0]["c"], parse_constant=pytest.fail) == [None, {"d": None}]
        assert rows[1] == {"segment_id": "2", "a": "1.5", "b": "ünï", "c": "[]"}
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(out).to_pylist()
        assert math.isnan(table[0]["a"])
        assert json.loads(table[0]["c"], parse_constant=pytest.fail) == [None, {"d": None}]


def test_standard_output_is_valid_whatever_the_values() -> None:
    result = bca.SegmentPropertyResult(
        {1: {"a": math.nan, "b": "\udfff"}}, property="size", project=PROJECT,
        materialized_timestamp=1,
    )  # fmt: skip
    out = io.StringIO()
    _export.write_result(result, "jsonl", None, out)
    assert json.loads(out.getvalue(), parse_constant=pytest.fail) == {
        "segment_id": 1, "a": None, "b": "\udfff"
    }  # fmt: skip
    out.getvalue().encode("utf-8")  # encodable: every non-ASCII character is escaped
