"""Checked by mypy --strict in CI (never run): the public API's types stay honest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import numpy as np
from typing_extensions import assert_type

import braincircuits_async as bca
from braincircuits_async.testing import DEFAULT_TOKEN, FakeBrainCircuits


async def everything() -> None:
    fake = FakeBrainCircuits()
    async with bca.AsyncClient(
        token=DEFAULT_TOKEN,
        base_url="http://fake.test",
        transport=httpx.ASGITransport(app=fake),
        project="hemibrain",
        chunk_size=100,
        max_concurrency=4,
        consistency="strict",
        deadline=5.0,
    ) as client:
        assert_type(client, bca.AsyncClient)
        result = await client.fetch_property("size", [1, "2", np.int64(3)], progress=True)
        assert_type(result, bca.SegmentPropertyResult)
        assert_type(result[1], dict[str, Any])
        assert_type(result.materialized_timestamp, int | None)
        assert_type(result.missing, tuple[int, ...])
        mapping: Mapping[int, dict[str, Any]] = result
        del mapping
        several = await client.fetch_properties(["size", "link_pre"], np.arange(10))
        assert_type(several, dict[str, bca.SegmentPropertyResult])
        stream = client.iter_property("link_pre", range(10), deadline=1)
        assert_type(stream, bca.PropertyStream)
        async for part in stream:
            assert_type(part, bca.SegmentPropertyResult)
        assert_type(client.stats, bca.ClientStats)
        assert_type(client.config, bca.ClientConfig)

    try:
        bca.fetch_property("size", [1], project="p", token="t")
    except bca.IncompleteResultError as error:
        assert_type(error.result, bca.SegmentPropertyResult)
        assert_type(error.failures, Mapping[int, str])
    except bca.InconsistentMaterializationError as error:
        assert_type(error.timestamps, tuple[int, ...])
    except bca.APIStatusError as error:
        assert_type(error.status_code, int | None)


anyio.run(everything)
