"""``ResultStore`` on its own: a real SQLite file, read offline, kept per materialization."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import braincircuits_async as bca
from braincircuits_async import _store
from braincircuits_async._sqlite import encode_value

PROJECT = "fruitfly_fafb_flywire"
T0, T1, T2 = 1_677_042_002, 1_677_045_602, 1_677_049_202


def value(segment: int, timestamp: int) -> dict[str, int]:
    return {"nr_pre": (segment * 7 + timestamp) % 5000, "nr_downstream_partner": segment % 997}


def fill(
    store: bca.ResultStore,
    ids: list[int],
    timestamp: int,
    *,
    prop: str = "link_pre",
    project: str = PROJECT,
    unknown: frozenset[int] = frozenset(),
) -> None:
    store.write(
        prop, project, timestamp, ids, [None if s in unknown else value(s, timestamp) for s in ids]
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with bca.ResultStore(tmp_path / "store.sqlite") as opened:
        yield opened


def test_read_gives_the_newest_materialization_in_request_order(store: bca.ResultStore) -> None:
    fill(store, [1, 2, 3], T0, unknown=frozenset({2}))
    fill(store, [3, 1], T1)
    result = store.read("link_pre", [3, 9, 1, 2], project=PROJECT)
    assert result.materialized_timestamp == T1
    assert list(result.items()) == [(3, value(3, T1)), (1, value(1, T1))]
    # Id 2 is held only at T0, id 9 never: neither is silently dropped.
    assert result.not_stored == (9, 2)
    assert result.missing == ()


def test_read_of_a_named_older_materialization_reproduces_it(store: bca.ResultStore) -> None:
    fill(store, [1, 2, 3], T0, unknown=frozenset({2}))
    fill(store, [1, 2, 3], T1)
    result = store.read("link_pre", [1, 2, 3], project=PROJECT, materialized_timestamp=T0)
    assert result.materialized_timestamp == T0
    assert dict(result) == {1: value(1, T0), 3: value(3, T0)}
    assert result.missing == (2,)  # the server said it does not know it
    assert result.not_stored == ()


def test_read_of_a_materialization_not_held_holds_nothing(store: bca.ResultStore) -> None:
    fill(store, [1, 2], T0)
    result = store.read("link_pre", [1, 2], project=PROJECT, materialized_timestamp=T2)
    assert (len(result), result.materialized_timestamp, result.not_stored) == (0, None, (1, 2))


def test_read_without_segments_gives_everything_held(store: bca.ResultStore) -> None:
    fill(store, [5, 3, 4], T0, unknown=frozenset({4}))
    result = store.read("link_pre", None, project=PROJECT)
    assert list(result) == [3, 5]
    assert result.missing == (4,)


def test_read_keeps_properties_and_projects_apart(store: bca.ResultStore) -> None:
    fill(store, [1], T0, prop="size")
    fill(store, [1], T1, project="fanc_production_mar2021")
    assert store.read("link_pre", [1], project=PROJECT).not_stored == (1,)
    assert store.read("size", [1], project=PROJECT).materialized_timestamp == T0


def test_ids_above_2_63_and_exotic_values_come_back_exactly(store: bca.ResultStore) -> None:
    big = [2**63, 2**64 - 1, 720575940634474894]
    values: list[dict[str, Any] | None] = [
        {"x": 2**70, "s": "ünï"},  # beyond 64 bits: orjson cannot write it
        {"f": math.inf, "n": None, "l": [1, {"a": 0.1}]},
        {"nested": {"deep": [True, False]}},
    ]
    store.write("link_pre", PROJECT, T0, big, values)
    result = store.read("link_pre", big, project=PROJECT)
    assert list(result.items()) == list(zip(big, values, strict=True))
    assert store._lookup("link_pre", PROJECT, big) == [(T0, v) for v in values]


def test_a_lone_surrogate_in_a_string_is_stored_exactly(store: bca.ResultStore) -> None:
    value = {"s": "\ud800 and \udfff", "t": "ok"}  # valid JSON, not valid UTF-8
    store.write("link_pre", PROJECT, T0, [1], [value])
    assert store.read("link_pre", [1], project=PROJECT)[1] == value


def test_a_value_that_is_not_json_is_a_store_error(store: bca.ResultStore) -> None:
    with pytest.raises(bca.StoreError, match="cannot be stored"):
        store.write("link_pre", PROJECT, T0, [1], [{"x": object()}])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("link_pre", PROJECT, -1, [1], [None]), "materialized_timestamp"),
        (("link_pre", PROJECT, 2**63, [1], [None]), "materialized_timestamp"),
        (("link_pre", PROJECT, T0, [1, 2], [None]), "one value per id"),
        (("link_pre", PROJECT, T0, [2**64], [None]), r"\[0, 2\*\*64\)"),
        (("link_pre", PROJECT, T0, [-1], [None]), r"\[0, 2\*\*64\)"),
        (("link pre", PROJECT, T0, [1], [None]), "property"),
    ],
)
def test_write_checks_its_arguments(
    store: bca.ResultStore, args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(bca.InvalidArgumentError, match=message):
        store.write(*args)
    assert store.materializations("link_pre", project=PROJECT) == {}


def test_a_read_is_one_snapshot_whatever_another_process_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite"
    reader, other = bca.ResultStore(path), bca.ResultStore(path)
    fill(other, [1], T0)
    fill(other, [1], T1)
    held = _store.ResultStore._held

    def held_then_another_process_prunes(self: Any, *args: Any) -> Any:
        chosen = held(self, *args)
        if self is reader:  # between the read's statements, another process rewrites it
            other.prune(keep=0)
            other.write("size", PROJECT, T1, [1], [{"size": 654321}])
        return chosen

    monkeypatch.setattr(_store.ResultStore, "_held", held_then_another_process_prunes)
    try:
        result = reader.read("link_pre", [1], project=PROJECT)
    finally:
        reader.close()
        other.close()
    assert dict(result) == {1: value(1, T1)}  # the view the read started with


def test_timeout_and_before_are_checked(store: bca.ResultStore, tmp_path: Path) -> None:
    with pytest.raises(bca.InvalidArgumentError, match="timeout"):
        bca.ResultStore(tmp_path / "other.sqlite", timeout=-1)
    with pytest.raises(bca.InvalidArgumentError, match="before"):
        store.prune(before="yesterday")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        [{"n": 1}, None, {"s": 'ünï \\ "q"', "l": [1.5, -0.0, 10**19]}],  # one statement
        [{"n": None}, None, {"nan": math.nan}],  # nulls in values: one row at a time
    ],
)
def test_both_ways_of_writing_a_chunk_read_back_exactly(
    store: bca.ResultStore, values: list[dict[str, Any] | None]
) -> None:
    ids = [2**64 - 1, 5, 2**63]
    store.write("link_pre", PROJECT, T0, ids, values)
    result = store.read("link_pre", ids, project=PROJECT)
    got = [result.get(s) for s in ids]
    assert repr(got) == repr(values)  # repr: NaN != NaN, and -0.0 == 0.0 otherwise
    assert result.missing == (5,)


def test_encoding_never_turns_a_value_into_null() -> None:
    nan = encode_value({"v": math.nan})
    assert nan is not None
    assert b"NaN" in nan
    assert encode_value(None) is None


def test_lookup_gives_each_id_its_newest_value(store: bca.ResultStore) -> None:
    fill(store, [1, 2], T0)
    fill(store, [2], T1, unknown=frozenset({2}))
    assert store._lookup("link_pre", PROJECT, [2, 3, 1]) == [(T1, None), None, (T0, value(1, T0))]


def test_materializations_counts_each_one_newest_first(store: bca.ResultStore) -> None:
    fill(store, [1, 2, 3], T0, unknown=frozenset({3}))
    fill(store, [1], T1)
    assert store.materializations("link_pre", project=PROJECT) == {T1: 1, T0: 3}
    assert store.materializations("size", project=PROJECT) == {}


def test_rewriting_a_chunk_replaces_its_values(store: bca.ResultStore) -> None:
    fill(store, [1, 2], T0)
    store.write("link_pre", PROJECT, T0, [1], [{"nr_pre": -1}])
    assert store.read("link_pre", [1], project=PROJECT)[1] == {"nr_pre": -1}
    assert store.materializations("link_pre", project=PROJECT) == {T0: 2}


@pytest.mark.parametrize(
    ("kwargs", "left", "dropped"),
    [
        ({}, {"link_pre": [T2], "size": [T1]}, 2 + 1),
        ({"keep": 2}, {"link_pre": [T2, T1], "size": [T1, T0]}, 1),
        ({"keep": 0}, {"link_pre": [], "size": []}, 3 + 2),
        ({"property": "size"}, {"link_pre": [T2, T1, T0], "size": [T1]}, 1),
        ({"before": T1}, {"link_pre": [T2, T1], "size": [T1]}, 1 + 1),
        ({"project": "fanc_production_mar2021"}, {"link_pre": [T2, T1, T0], "size": [T1, T0]}, 0),
    ],
)
def test_prune_drops_old_materializations(
    store: bca.ResultStore, kwargs: dict[str, Any], left: dict[str, list[int]], dropped: int
) -> None:
    for timestamp in (T0, T1, T2):
        fill(store, [1], timestamp)
    for timestamp in (T0, T1):
        fill(store, [1], timestamp, prop="size")
    assert store.prune(**kwargs) == dropped
    for prop, timestamps in left.items():
        assert list(store.materializations(prop, project=PROJECT)) == timestamps


@pytest.mark.parametrize("keep", [-1, 1.5, True, "1"])
def test_prune_refuses_a_bad_keep(store: bca.ResultStore, keep: Any) -> None:
    with pytest.raises(bca.InvalidArgumentError, match="keep"):
        store.prune(keep=keep)


def test_reading_checks_its_arguments(store: bca.ResultStore) -> None:
    with pytest.raises(bca.InvalidSegmentError):
        store.read("link_pre", [-1], project=PROJECT)
    with pytest.raises(bca.InvalidArgumentError, match="materialized_timestamp"):
        store.read("link_pre", [1], project=PROJECT, materialized_timestamp="new")  # type: ignore[arg-type]
    with pytest.raises(bca.InvalidArgumentError, match="project"):
        store.read("link_pre", [1], project="")


def test_the_store_survives_being_reopened(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with bca.ResultStore(path) as first:
        fill(first, [1, 2], T0)
    with bca.ResultStore(path) as again:
        assert dict(again.read("link_pre", [1, 2], project=PROJECT)) == {
            1: value(1, T0),
            2: value(2, T0),
        }


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = bca.ResultStore(tmp_path / "store.sqlite")
    store.close()
    store.close()  # closing twice is fine
    assert store.closed
    assert "closed" in repr(store)
    with pytest.raises(bca.StoreError, match="closed"):
        store.read("link_pre", [1], project=PROJECT)


@pytest.mark.parametrize(
    "content",
    [
        b"segment_id,nr_pre\n1,2\n" * 200,  # a CSV someone gave the wrong name
        b"\x00" * 8192,
    ],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    with pytest.raises(bca.StoreError, match="not a braincircuits-async result store"):
        bca.ResultStore(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def test_another_sqlite_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE neurons (id INTEGER)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(bca.StoreError, match="not a braincircuits-async result store"):
        bca.ResultStore(path)
    assert path.read_bytes() == before


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    bca.ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE store_info SET value = '99' WHERE key = 'version'")
    db.close()
    with pytest.raises(bca.StoreError, match="newer braincircuits-async"):
        bca.ResultStore(path)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing/store.sqlite", "does not exist"),
        (".", "is a directory"),
        ("a-file/store.sqlite", "does not exist"),
    ],
)
def test_a_store_path_that_cannot_be_a_store_says_why(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(bca.StoreError, match=message):
        bca.ResultStore(tmp_path / where)


def test_a_read_only_location_is_a_clear_error() -> None:
    # /proc refuses new files even to root, unlike a chmod-ed folder.
    with pytest.raises(bca.StoreError, match="could not open") as caught:
        bca.ResultStore("/proc/self/store.sqlite")
    assert "/proc/self/store.sqlite" in str(caught.value)


def test_a_store_is_safe_to_use_from_several_threads(store: bca.ResultStore) -> None:
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for start in range(offset, 2000, 400):
                fill(store, list(range(start, start + 200)), T0)
                store.read("link_pre", list(range(start, start + 200)), project=PROJECT)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.materializations("link_pre", project=PROJECT) == {T0: 2000}


def test_the_file_is_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    bca.ResultStore(path, timeout=7).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_path_that_is_not_a_path_is_refused() -> None:
    with pytest.raises(bca.InvalidArgumentError, match="path or a ResultStore"):
        bca.ResultStore(42)  # type: ignore[arg-type]
