"""Result types handed back to the user."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SegmentPropertyResult"]


class SegmentPropertyResult(Mapping[int, dict[str, Any]]):
    """One property of many segments, from one materialization of the dataset.

    A read-only mapping from segment id (``int``) to that segment's property
    fields (a ``dict`` as the server sent it), in the order the ids were
    requested. Segments the server does not know are not keys; they are listed
    in :attr:`missing`.

    >>> result = await client.fetch_property("link_pre", [720575940634474894])  # doctest: +SKIP
    >>> result[720575940634474894]  # doctest: +SKIP
    {'nr_pre': 3847, 'nr_downstream_partner': 1772}
    >>> result.materialized_timestamp  # doctest: +SKIP
    1677042002

    Attributes:
        property: the property name, e.g. ``"link_pre"``.
        project: the project, e.g. ``"fruitfly_fafb_flywire"``.
        materialized_timestamp: UNIX time (seconds) of the materialization every
            value comes from; ``None`` only for an empty request. (With
            ``consistency="ignore"`` values may also come from older ones; this is
            then the newest, and a warning was logged.)
        missing: requested ids the server did not return, in request order.
        not_stored: from :meth:`ResultStore.read` only, the requested ids the store
            holds nothing for in that materialization (empty from a fetch).
    """

    __slots__ = (
        "_data",
        "materialized_timestamp",
        "missing",
        "not_stored",
        "project",
        "property",
    )

    def __init__(
        self,
        data: dict[int, dict[str, Any]],
        *,
        property: str,
        project: str,
        materialized_timestamp: int | None,
        missing: tuple[int, ...] = (),
        not_stored: tuple[int, ...] = (),
    ) -> None:
        self._data = data
        self.not_stored = not_stored
        self.property = property
        self.project = project
        self.materialized_timestamp = materialized_timestamp
        self.missing = missing

    def __getitem__(self, segment: int) -> dict[str, Any]:
        return self._data[segment]

    def __iter__(self) -> Iterator[int]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, segment: object) -> bool:
        return segment in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SegmentPropertyResult):
            return (
                self._data == other._data
                and self.property == other.property
                and self.project == other.project
                and self.materialized_timestamp == other.materialized_timestamp
                and self.missing == other.missing
                and self.not_stored == other.not_stored
            )
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def to_pandas(self, *, include_missing: bool = False) -> pd.DataFrame:
        """One row per segment, indexed by ``segment_id`` (int64), a column per field.

        Scalar fields get typed columns (int64, float64, bool, string); nested
        ones (lists, objects, such as ``connectivity``'s partner lists) stay Python
        objects. ``include_missing=True`` adds the unknown ids as rows of missing
        values (integer columns then use pandas' nullable ``Int64``). Needs the
        ``pandas`` extra::

            >>> result.to_pandas().head()  # doctest: +SKIP
                                nr_pre  nr_downstream_partner
            segment_id
            720575940634474894    3847                   1772
        """
        from ._tables import segments_frame

        return segments_frame(self._data, self.missing, include_missing=include_missing)

    def to_edges(self) -> pd.DataFrame:
        """The ``connectivity`` property as a long table ``pre``, ``post``,
        ``synaptic_count``: one row per edge, ids as int64, each edge once even
        when both of its ends were requested. Ready for ``networkx`` or ``navis``::

            >>> edges = result.to_edges()  # doctest: +SKIP
            >>> graph = networkx.from_pandas_edgelist(  # doctest: +SKIP
            ...     edges, "pre", "post", "synaptic_count", create_using=networkx.DiGraph
            ... )

        Raises ``ValueError`` for other properties. Needs the ``pandas`` extra.
        """
        from ._tables import edges_frame

        return edges_frame(self._data)

    def __repr__(self) -> str:
        return (
            f"<SegmentPropertyResult property={self.property!r} project={self.project!r} "
            f"segments={len(self._data)} missing={len(self.missing)} "
            + (f"not_stored={len(self.not_stored)} " if self.not_stored else "")
            + f"materialized_timestamp={self.materialized_timestamp}>"
        )
