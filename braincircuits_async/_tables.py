"""Results as pandas tables: one row per segment, or one row per connectivity edge.

pandas is an optional extra; it is imported only when a table is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidArgumentError, MissingDependencyError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["edges_frame", "segments_frame"]

INT64_MAX = 2**63 - 1
_SCALARS = (int, float, str, bool, type(None))


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError(
            'tables need pandas: pip install "braincircuits-async[pandas]"'
        ) from None
    return pandas


def _id_dtype(ids: Iterable[int]) -> str:
    # Segment ids are unsigned 64-bit; FlyWire's fit int64, but the top half does not.
    return "int64" if max(ids, default=0) <= INT64_MAX else "uint64"


def segments_frame(
    data: Mapping[int, Mapping[str, Any]],
    missing: tuple[int, ...],
    *,
    include_missing: bool,
) -> pd.DataFrame:
    """One row per segment, indexed by ``segment_id``, one column per field.

    Scalar fields get typed columns (int64, float64, bool, string); nested ones
    (lists, objects) stay Python objects in an ``object`` column. With
    ``include_missing`` the unknown ids are rows of missing values, and integer
    columns become pandas' nullable ``Int64`` so that no id or count turns float.
    """
    pd = _pandas()
    ids = list(data)
    if include_missing:
        ids += list(missing)
    index = pd.Index(ids, dtype=_id_dtype(ids), name="segment_id")
    columns: dict[str, None] = {}
    for value in data.values():
        columns.update(dict.fromkeys(value))
    padding = [None] * (len(ids) - len(data))
    series = {}
    for column in columns:
        values = [value.get(column) for value in data.values()]
        present = [v for v in values if v is not None]
        dtype = _column_dtype(present, nullable=len(present) < len(ids))
        series[column] = pd.Series(values + padding, index=index, dtype=dtype)
    return pd.DataFrame(series, index=index)


def _column_dtype(present: list[Any], *, nullable: bool) -> str:
    """The dtype of a column from its non-missing values."""
    kinds = {type(v) for v in present}
    if not kinds or not kinds <= set(_SCALARS):
        return "object"
    if kinds == {bool}:
        return "boolean" if nullable else "bool"
    if kinds == {int}:
        if not (min(present) >= -(2**63) and max(present) <= INT64_MAX):
            return "object"  # beyond 64 bits: keep exact Python ints
        return "Int64" if nullable else "int64"
    if kinds <= {int, float}:
        return "float64"
    if kinds == {str}:
        return "string"
    return "object"


def edges_frame(data: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """The ``connectivity`` property as a long table of edges: ``pre``, ``post``,
    ``synaptic_count``, each edge once, ids as 64-bit integers (never floats).

    A requested segment's ``upstream`` partners give edges ``partner -> segment``,
    its ``downstream`` partners ``segment -> partner``. An edge between two
    requested segments appears in both of their answers; it is kept once.
    """
    pd = _pandas()
    pre: list[int] = []
    post: list[int] = []
    counts: list[int] = []
    seen: set[tuple[int, int]] = set()
    for segment, value in data.items():
        if "upstream" not in value and "downstream" not in value:
            raise InvalidArgumentError(
                "to_edges() needs the 'connectivity' property (with 'upstream' and "
                f"'downstream' partner lists); segment {segment} has fields {sorted(value)}"
            )
        for direction in ("upstream", "downstream"):
            for partner in value.get(direction) or ():
                other = int(partner["segmentid"])
                edge = (other, segment) if direction == "upstream" else (segment, other)
                if edge in seen:
                    continue
                seen.add(edge)
                pre.append(edge[0])
                post.append(edge[1])
                counts.append(int(partner["synaptic_count"]))
    id_dtype = _id_dtype(pre + post)
    return pd.DataFrame(
        {
            "pre": pd.array(pre, dtype=id_dtype),
            "post": pd.array(post, dtype=id_dtype),
            "synaptic_count": pd.array(counts, dtype="int64"),
        }
    )
