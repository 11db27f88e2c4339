"""to_pandas and to_edges: typed tables that pandas, networkx and navis users can use."""

from __future__ import annotations

from typing import Any

import pytest

import braincircuits_async as bca

pd = pytest.importorskip("pandas")


def result(data: dict[int, dict[str, Any]], missing: tuple[int, ...] = ()) -> Any:
    return bca.SegmentPropertyResult(
        data, property="x", project="p", materialized_timestamp=1, missing=missing
    )


def test_one_row_per_segment_with_typed_columns() -> None:
    frame = result(
        {
            720575940634474894: {"nr_pre": 3847, "nr_downstream_partner": 1772, "nt": "gaba"},
            720575940630280234: {"nr_pre": 1880, "nr_downstream_partner": 848, "nt": "ach"},
        }
    ).to_pandas()
    assert frame.index.name == "segment_id"
    assert frame.index.dtype == "int64"
    assert list(frame.index) == [720575940634474894, 720575940630280234]
    assert frame["nr_pre"].dtype == "int64"
    assert frame["nt"].dtype == "string"
    assert frame.loc[720575940630280234, "nr_downstream_partner"] == 848


def test_missing_ids_are_rows_only_when_asked_and_ints_stay_ints() -> None:
    r = result({1: {"n": 5, "f": 0.5}}, missing=(2, 3))
    assert list(r.to_pandas().index) == [1]
    frame = r.to_pandas(include_missing=True)
    assert list(frame.index) == [1, 2, 3]
    assert frame["n"].dtype == "Int64"  # nullable: never floats
    assert frame.loc[1, "n"] == 5
    assert frame["n"].isna().tolist() == [False, True, True]
    assert frame["f"].dtype == "float64"


def test_nested_fields_stay_python_objects() -> None:
    frame = result({1: {"position": [1, 2, 3], "id": 9}}).to_pandas()
    assert frame.loc[1, "position"] == [1, 2, 3]
    assert frame["id"].dtype == "int64"


def test_ids_beyond_int64_use_uint64() -> None:
    frame = result({2**64 - 1: {"n": 1}}).to_pandas()
    assert frame.index.dtype == "uint64"
    assert frame.index[0] == 2**64 - 1


def connectivity() -> Any:
    return result(
        {
            10: {
                "upstream": [{"segmentid": "30", "synaptic_count": 5}],
                "downstream": [
                    {"segmentid": "20", "synaptic_count": 7},
                    {"segmentid": "720575940634474894", "synaptic_count": 2},
                ],
            },
            # 20 was requested too: its upstream 10 -> 20 is the same edge as above.
            20: {"upstream": [{"segmentid": "10", "synaptic_count": 7}], "downstream": []},
        }
    )


def test_edges_are_a_long_table_with_each_edge_once() -> None:
    edges = connectivity().to_edges()
    assert list(edges.columns) == ["pre", "post", "synaptic_count"]
    assert {c: str(t) for c, t in edges.dtypes.items()} == {
        "pre": "int64",
        "post": "int64",
        "synaptic_count": "int64",
    }
    rows = sorted(map(tuple, edges.itertuples(index=False)))
    assert rows == [(10, 20, 7), (10, 720575940634474894, 2), (30, 10, 5)]


def test_edges_of_another_property_say_what_is_needed() -> None:
    with pytest.raises(ValueError, match="needs the 'connectivity' property"):
        result({1: {"nr_pre": 3}}).to_edges()


def test_without_pandas_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pandas(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pandas":
            raise ImportError("no pandas here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"braincircuits-async\[pandas\]"):
        result({1: {"n": 1}}).to_pandas()


@pytest.mark.anyio
async def test_tables_from_a_real_fetch_against_the_fake() -> None:
    import httpx

    from braincircuits_async import testing

    fake = testing.FakeBrainCircuits()
    async with bca.AsyncClient(
        token=testing.DEFAULT_TOKEN,
        cave_token=testing.DEFAULT_CAVE_TOKEN,
        base_url="http://fake.test",
        transport=httpx.ASGITransport(app=fake),
        project="fruitfly_fafb_flywire",
    ) as client:
        ids = [720575940600000000 + i for i in range(300)]
        conn = await client.fetch_property("connectivity", ids)
        nt = await client.fetch_property("neurotransmitter", ids)
    edges = conn.to_edges()
    assert len(edges) == len(set(zip(edges["pre"], edges["post"], strict=True)))
    assert edges["pre"].dtype == "int64"
    frame = nt.to_pandas()
    assert len(frame) == len(nt)
    assert frame["gaba"].dtype == "float64"
