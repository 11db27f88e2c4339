"""The fake server itself: data, errors, faults, log, and the loopback runner.

These tests talk to `FakeBrainCircuits` with plain httpx, not with our client, so a
bug in the client cannot hide a bug in the fake (or the other way round).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest

from braincircuits_async import _cli, testing
from braincircuits_async.testing import (
    DEFAULT_CAVE_TOKEN,
    DEFAULT_MATERIALIZED_TIMESTAMP,
    DEFAULT_TOKEN,
    DOCUMENTED_PROPERTIES,
    FAULT_KINDS,
    FakeBrainCircuits,
    serve,
    serve_in_thread,
)

pytestmark = pytest.mark.anyio

FLYWIRE = "fruitfly_fafb_flywire"  # a CAVE project
HEMIBRAIN = "hemibrain"  # not a CAVE project
SEGMENTS = [720575940634474894 + 7919 * i for i in range(300)]
AUTH = {
    "Authorization": f"Bearer {DEFAULT_TOKEN}",
    "Authorization-Cave": f"Bearer {DEFAULT_CAVE_TOKEN}",
}
NT_NAMES = {"gaba", "acetylcholine", "glutamate", "octopamine", "serotonin", "dopamine"}


@asynccontextmanager
async def connect(fake: FakeBrainCircuits) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test") as http:
        yield http


async def post(
    http: httpx.AsyncClient,
    prop: str = "link_pre",
    segments: Any = SEGMENTS,
    *,
    project: str | None = FLYWIRE,
    headers: Mapping[str, str] = AUTH,
    content: bytes | None = None,
) -> httpx.Response:
    params = {} if project is None else {"project": project}
    if content is None:
        content = json.dumps({"segments": segments}).encode()
    return await http.post(
        f"/circuit/segment/property/{prop}", params=params, headers=dict(headers), content=content
    )


async def fetch(fake: FakeBrainCircuits, prop: str = "link_pre", **kwargs: Any) -> dict[str, Any]:
    async with connect(fake) as http:
        response = await post(http, prop, **kwargs)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --- data ----------------------------------------------------------------------------


def check_shape(prop: str, value: dict[str, Any]) -> None:
    counts = {
        "link_pre": {"nr_pre", "nr_downstream_partner"},
        "link_post": {"nr_post", "nr_upstream_partner"},
        "size": {"size"},
        "dcv": {"nr_dcv"},
    }
    if prop in counts:
        assert set(value) == counts[prop]
        assert all(type(v) is int and v >= 0 for v in value.values())
    elif prop == "neurotransmitter":
        assert set(value) == NT_NAMES | {"top_nt"}
        probabilities = {k: v for k, v in value.items() if k != "top_nt"}
        assert all(type(v) is float and 0 <= v <= 1 for v in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
        assert value["top_nt"] == max(probabilities, key=probabilities.__getitem__)
    elif prop == "connectivity":
        assert set(value) == {"upstream", "downstream"}
        for partners in value.values():
            assert 0 <= len(partners) <= 5
            for partner in partners:
                assert set(partner) == {"segmentid", "synaptic_count"}
                assert type(partner["segmentid"]) is str
                assert len(partner["segmentid"]) == 18
                assert type(partner["synaptic_count"]) is int
                assert partner["synaptic_count"] >= 1
            counts_ = [p["synaptic_count"] for p in partners]
            assert counts_ == sorted(counts_, reverse=True)
    elif prop == "nucleus":
        assert set(value) == {"nucleus_id", "position"}
        assert type(value["nucleus_id"]) is int
        assert len(value["position"]) == 3
        assert all(type(c) is int for c in value["position"])
    elif prop == "soma":
        assert set(value) == {"soma_x", "soma_y", "soma_z", "soma_radius"}
        assert all(type(value[k]) is int for k in ("soma_x", "soma_y", "soma_z"))
        assert type(value["soma_radius"]) is float
        assert value["soma_radius"] > 0
    elif prop == "mitochondria":
        assert set(value) == {"nr_mitochondria", "total_volume"}
        assert type(value["nr_mitochondria"]) is int
        assert type(value["total_volume"]) is float
        assert value["total_volume"] >= 0
    else:
        raise AssertionError(f"no shape check for {prop}")


@pytest.mark.parametrize("prop", sorted(DOCUMENTED_PROPERTIES))
async def test_every_documented_property_has_its_shape_and_matches_expected(prop: str) -> None:
    fake = FakeBrainCircuits()
    answer = await fetch(fake, prop)

    assert answer["materialized_timestamp"] == DEFAULT_MATERIALIZED_TIMESTAMP
    results = answer["results"]
    assert len(results) > 250  # about 2% unknown
    for segment in SEGMENTS:
        value = results.get(str(segment))
        assert value == fake.expected(prop, segment)
        if value is not None:
            check_shape(prop, value)
    assert results == fake.expected_results(prop, SEGMENTS)


@pytest.mark.parametrize("prop", ["connectivity", "neurotransmitter", "link_pre", "size"])
async def test_values_vary_between_segments(prop: str) -> None:
    results = (await fetch(FakeBrainCircuits(), prop))["results"]

    distinct = {json.dumps(v, sort_keys=True) for v in results.values()}
    assert len(distinct) > len(results) // 2


async def test_answers_are_byte_identical_across_instances() -> None:
    async with connect(FakeBrainCircuits()) as a, connect(FakeBrainCircuits()) as b:
        for prop in sorted(DOCUMENTED_PROPERTIES):
            assert (await post(a, prop)).content == (await post(b, prop)).content


async def test_values_depend_on_project_and_materialization() -> None:
    fake = FakeBrainCircuits()
    segment = next(s for s in SEGMENTS if fake.expected("size", s) is not None)

    assert fake.expected("size", segment) != fake.expected("size", segment, project="hemibrain")
    assert fake.expected("size", segment) != fake.expected(
        "size", segment, materialized_timestamp=fake.materialized_timestamp + 1
    )


async def test_unknown_ids_are_absent_and_expected_returns_none() -> None:
    fake = FakeBrainCircuits(unknown_fraction=0.02)
    segments = [0, *range(1, 5001)]
    async with connect(fake) as http:
        results = (await post(http, "dcv", segments)).json()["results"]

    assert "0" not in results
    assert fake.expected("dcv", 0) is None
    missing = [s for s in segments if str(s) not in results]
    assert 0.01 * 5000 < len(missing) < 0.03 * 5000
    assert all(fake.expected("dcv", s) is None for s in missing)


@pytest.mark.parametrize(("fraction", "known"), [(0.0, 5000), (1.0, 0)])
async def test_unknown_fraction_bounds(fraction: float, known: int) -> None:
    answer = await fetch(FakeBrainCircuits(unknown_fraction=fraction), segments=list(range(5001)))

    assert len(answer["results"]) == known


async def test_unknown_ids_do_not_depend_on_property_or_materialization() -> None:
    fake = FakeBrainCircuits(unknown_fraction=0.2)
    before = set((await fetch(fake, "size"))["results"])
    fake.rollover()

    assert set((await fetch(fake, "size"))["results"]) == before
    assert set((await fetch(fake, "soma"))["results"]) == before


async def test_duplicate_ids_are_answered_once() -> None:
    answer = await fetch(FakeBrainCircuits(), segments=[SEGMENTS[0], SEGMENTS[1], SEGMENTS[0]])

    assert sorted(answer["results"]) == sorted({str(SEGMENTS[0]), str(SEGMENTS[1])})


async def test_undocumented_property_listed_in_properties_is_served() -> None:
    fake = FakeBrainCircuits(properties={"link_pre", "hemilineage"})
    results = (await fetch(fake, "hemilineage"))["results"]

    value = next(iter(results.values()))
    assert set(value) == {"value"}
    assert type(value["value"]) is int
    assert results == fake.expected_results("hemilineage", SEGMENTS)


def test_expected_rejects_unknown_property_project_and_segment() -> None:
    fake = FakeBrainCircuits()
    with pytest.raises(ValueError, match="property"):
        fake.expected("colour", 1)
    with pytest.raises(ValueError, match="project"):
        fake.expected("size", 1, project="mouse")
    with pytest.raises(ValueError, match="segment"):
        fake.expected("size", -1)


# --- materialization ---------------------------------------------------------------


async def test_rollover_changes_timestamp_and_values() -> None:
    fake = FakeBrainCircuits()
    before = await fetch(fake)
    old = fake.materialized_timestamp

    assert fake.rollover() == old + 3600 == fake.materialized_timestamp
    after = await fetch(fake)

    assert after["materialized_timestamp"] == old + 3600
    assert set(after["results"]) == set(before["results"])
    changed = [k for k in before["results"] if before["results"][k] != after["results"][k]]
    assert len(changed) > 0.9 * len(before["results"])
    segment = int(changed[0])
    assert fake.expected("link_pre", segment) == after["results"][changed[0]]
    assert (
        fake.expected("link_pre", segment, materialized_timestamp=old)
        == (before["results"][changed[0]])
    )


async def test_rollover_after_advances_every_n_complete_answers() -> None:
    fake = FakeBrainCircuits(rollover_after=2, rollover_step=60)
    start = fake.materialized_timestamp
    async with connect(fake) as http:
        seen = [(await post(http)).json()["materialized_timestamp"] for _ in range(5)]
        await post(http, project="mouse")  # errors do not count

    assert seen == [start, start, start + 60, start + 60, start + 120]
    assert fake.materialized_timestamp == start + 120


async def test_reset_returns_to_the_first_materialization_and_empties_the_log() -> None:
    fake = FakeBrainCircuits(rollover_after=1)
    await fetch(fake)
    fake.reset()

    assert fake.materialized_timestamp == DEFAULT_MATERIALIZED_TIMESTAMP
    assert fake.log.requests == 0
    assert fake.log.records == []


# --- auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "project", "status", "detail"),
    [
        ({}, HEMIBRAIN, 401, "Authorization"),
        ({"Authorization": "Bearer wrong"}, HEMIBRAIN, 403, "token"),
        ({"Authorization": f"Basic {DEFAULT_TOKEN}"}, HEMIBRAIN, 403, "token"),
        ({"Authorization": f"Bearer {DEFAULT_TOKEN}"}, FLYWIRE, 401, "CAVE"),
        (
            {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Authorization-Cave": "Bearer nope"},
            FLYWIRE,
            403,
            "CAVE",
        ),
        ({"Authorization-Cave": f"Bearer {DEFAULT_CAVE_TOKEN}"}, FLYWIRE, 401, "Authorization"),
    ],
)
async def test_auth_failures_get_401_or_403_with_json_detail(
    headers: dict[str, str], project: str, status: int, detail: str
) -> None:
    async with connect(FakeBrainCircuits()) as http:
        response = await post(http, project=project, headers=headers)

    assert response.status_code == status
    assert detail in response.json()["detail"]


async def test_non_cave_project_needs_no_cave_token() -> None:
    async with connect(FakeBrainCircuits()) as http:
        response = await post(
            http, project=HEMIBRAIN, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        )

    assert response.status_code == 200


async def test_token_none_turns_each_check_off() -> None:
    async with connect(FakeBrainCircuits(token=None, cave_token=None)) as http:
        assert (await post(http, headers={})).status_code == 200
    async with connect(FakeBrainCircuits(cave_token=None)) as http:
        no_cave = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        assert (await post(http, headers=no_cave)).status_code == 200
        assert (await post(http, headers={})).status_code == 401


async def test_tokens_never_appear_in_answers_or_the_log() -> None:
    token, cave = "bc-SECRET-1234", "cave-SECRET-5678"
    fake = FakeBrainCircuits(token=token, cave_token=cave, faults={"503": 0.3})
    bodies = []
    async with connect(fake) as http:
        for headers in (
            {"Authorization": f"Bearer {token}", "Authorization-Cave": f"Bearer {cave}"},
            {"Authorization": f"Bearer {token}", "Authorization-Cave": "Bearer wrong-SECRET"},
            {"Authorization": "Bearer also-wrong-SECRET"},
        ):
            for _ in range(3):
                response = await post(http, headers=headers)
                bodies.append(response.text + str(response.headers))

    everything = " ".join(bodies) + repr(fake.log) + repr(fake.log.records) + repr(fake)
    assert "SECRET" not in everything
    assert "authorization" in fake.log.records[0].header_names


# --- request errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "content", "detail"),
    [
        (None, b'{"segments": [1]}', "project"),
        ("", b'{"segments": [1]}', "project"),
        (FLYWIRE, b"segments=1", "JSON"),
        (FLYWIRE, b"", "JSON"),
        (FLYWIRE, b"[1, 2]", "segments"),
        (FLYWIRE, b'{"ids": [1]}', "segments"),
        (FLYWIRE, b'{"segments": "1,2"}', "segments"),
        (FLYWIRE, b'{"segments": [1, -2]}', "segments[1]"),
        (FLYWIRE, b'{"segments": [18446744073709551616]}', "segments[0]"),
        (FLYWIRE, b'{"segments": [1.5]}', "segments[0]"),
        (FLYWIRE, b'{"segments": ["720575940634474894"]}', "segments[0]"),
        (FLYWIRE, b'{"segments": [true]}', "segments[0]"),
    ],
)
async def test_malformed_requests_get_422_with_detail(
    project: str | None, content: bytes, detail: str
) -> None:
    async with connect(FakeBrainCircuits()) as http:
        response = await post(http, project=project, content=content)

    assert response.status_code == 422
    assert detail in response.json()["detail"]


async def test_largest_segment_id_is_accepted() -> None:
    answer = await fetch(FakeBrainCircuits(unknown_fraction=0), segments=[2**64 - 1])

    assert list(answer["results"]) == [str(2**64 - 1)]


async def test_more_than_max_segments_gets_413() -> None:
    async with connect(FakeBrainCircuits(max_segments=10)) as http:
        assert (await post(http, segments=list(range(1, 11)))).status_code == 200
        response = await post(http, segments=list(range(1, 12)))

    assert response.status_code == 413
    assert "at most 10" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "project", "detail"),
    [
        ("/circuit/segment/property/colour", FLYWIRE, "unknown property"),
        ("/circuit/segment/property/link_pre", "mouse", "unknown project"),
        ("/circuit/segment/property/", FLYWIRE, "Not Found"),
        ("/circuit/segment/property/link.pre", FLYWIRE, "Not Found"),
        ("/circuit/segment/property/link_pre/extra", FLYWIRE, "Not Found"),
        ("/", FLYWIRE, "Not Found"),
    ],
)
async def test_unknown_paths_properties_and_projects_get_404(
    path: str, project: str, detail: str
) -> None:
    async with connect(FakeBrainCircuits()) as http:
        response = await http.post(path, params={"project": project}, headers=AUTH, json={})

    assert response.status_code == 404
    assert detail in response.json()["detail"]


async def test_non_post_on_the_endpoint_gets_405() -> None:
    async with connect(FakeBrainCircuits()) as http:
        response = await http.get(
            "/circuit/segment/property/link_pre", params={"project": FLYWIRE}, headers=AUTH
        )

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "504"])
async def test_status_faults_answer_their_status_with_json_detail(kind: str) -> None:
    fake = FakeBrainCircuits(faults={kind: 1.0}, retry_after=0.01)
    async with connect(fake) as http:
        response = await post(http)

    assert response.status_code == int(kind)
    assert "injected" in response.json()["detail"]
    assert response.headers.get("retry-after") == ("0.01" if kind == "429" else None)
    assert fake.log.faults == {kind: 1}
    assert fake.log.statuses == {int(kind): 1}


@pytest.mark.parametrize(
    ("retry_after", "header"), [(1, "1"), (0, "0"), (2.5, "2.5"), (None, None)]
)
async def test_retry_after_header_text(retry_after: float | None, header: str | None) -> None:
    async with connect(FakeBrainCircuits(faults={"429": 1}, retry_after=retry_after)) as http:
        response = await post(http)

    assert response.headers.get("retry-after") == header


async def test_drop_fault_is_an_httpx_transport_error_in_process() -> None:
    fake = FakeBrainCircuits(faults={"drop": 1.0})
    async with connect(fake) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="dropped"):
            await post(http)

    assert fake.log.faults == {"drop": 1}
    assert fake.log.records[0].status is None
    assert fake.log.in_flight == 0


async def test_truncate_fault_is_a_200_whose_json_does_not_parse_in_process() -> None:
    fake = FakeBrainCircuits(faults={"truncate": 1.0})
    async with connect(fake) as http:
        response = await post(http)

    assert response.status_code == 200
    assert 0 < len(response.content) < int(response.headers["content-length"])
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert fake.log.faults == {"truncate": 1}
    assert fake.log.segments_served == 0


async def test_slow_fault_answers_normally_after_slow_delay() -> None:
    fake = FakeBrainCircuits(faults={"slow": 1.0}, slow_delay=0.05)
    async with connect(fake) as http:
        started = time.monotonic()
        response = await post(http)
        elapsed = time.monotonic() - started

    assert elapsed >= 0.05
    assert response.json()["results"] == fake.expected_results("link_pre", SEGMENTS)
    assert fake.log.faults == {"slow": 1}


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_max_consecutive_faults_lets_the_next_identical_request_succeed(kind: str) -> None:
    fake = FakeBrainCircuits(faults={kind: 1.0}, max_consecutive_faults=3, slow_delay=0)
    async with connect(fake) as http:
        for segments in (SEGMENTS,) * 5 + (SEGMENTS[:5],):
            try:
                response = await post(http, segments=segments)
                response.json()
            except (httpx.TransportError, json.JSONDecodeError):
                pass
    outcomes = [r.outcome for r in fake.log.records]

    # Three faults, one success (which ends the streak), then the next fault; a
    # different request is a different streak.
    assert outcomes == [kind, kind, kind, "200", kind, kind]


async def test_faults_follow_their_probabilities_and_the_seed() -> None:
    async def outcomes(seed: int) -> list[str]:
        fake = FakeBrainCircuits(faults={"500": 0.3, "503": 0.2}, seed=seed)
        async with connect(fake) as http:
            for i in range(200):
                await post(http, segments=[i + 1])
        return [r.outcome for r in fake.log.records]

    first = await outcomes(seed=7)

    assert first == await outcomes(seed=7)
    assert first != await outcomes(seed=8)
    assert 30 < first.count("500") < 90
    assert 15 < first.count("503") < 65


# --- rate limit ------------------------------------------------------------------------


class Clock:
    """A clock that moves only when told to, for the fake's rate limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def on_clock(clock: Clock, **knobs: Any) -> FakeBrainCircuits:
    fake = FakeBrainCircuits(**knobs)
    fake._clock = clock
    fake.reset()  # start the (full) bucket at the fake clock's time
    return fake


async def burst(fake: FakeBrainCircuits, n: int, **kwargs: Any) -> list[httpx.Response]:
    """``n`` one-segment requests at once; the responses in sending order."""
    responses: list[httpx.Response | None] = [None] * n

    async def one(i: int) -> None:
        responses[i] = await post(http, segments=[i + 1], **kwargs)

    async with connect(fake) as http, anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return [r for r in responses if r is not None]


@pytest.mark.parametrize(("rate", "n", "passed"), [(10, 30, 10), (100, 130, 100), (0.5, 5, 1)])
async def test_rate_limit_lets_a_bucketful_through_then_answers_429(
    rate: float, n: int, passed: int
) -> None:
    fake = on_clock(Clock(), rate_limit=rate)

    responses = await burst(fake, n)

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == passed  # max(1, rate): the bucket's size
    assert statuses.count(429) == n - passed
    limited = next(r for r in responses if r.status_code == 429)
    assert "too many requests" in limited.json()["detail"]
    assert fake.log.statuses == {200: passed, 429: n - passed}
    assert fake.log.faults == {"rate_limit": n - passed}
    assert {r.outcome for r in fake.log.records if r.status == 429} == {"rate_limit"}
    assert fake.log.segments_served == passed


async def test_rate_limit_on_the_real_clock_limits_a_burst() -> None:
    fake = FakeBrainCircuits(rate_limit=10)

    responses = await burst(fake, 30)
    await anyio.sleep(0.15)  # refills at least one request
    again = await fetch(fake, segments=[1])

    ok = sum(r.status_code == 200 for r in responses)
    assert 10 <= ok <= 20  # the bucket, plus what refills while the burst runs (slow CI)
    assert fake.log.faults["rate_limit"] == 30 - ok
    assert again["results"] == fake.expected_results("link_pre", [1])


@pytest.mark.parametrize(("per_second", "limited"), [(90, False), (99, False), (110, True)])
async def test_steady_traffic_below_the_rate_is_never_limited(
    per_second: float, limited: bool
) -> None:
    clock = Clock()
    fake = on_clock(clock, rate_limit=100)
    await burst(fake, 100)  # empty the bucket: the hardest start for steady traffic
    fake.log.reset()

    async with connect(fake) as http:
        for i in range(300):
            clock.now += 1 / per_second
            await post(http, segments=[i + 1])

    assert (fake.log.statuses[429] > 0) is limited
    if limited:  # about the excess: 300 * (1 - 100/110) ~ 27
        assert 20 <= fake.log.statuses[429] <= 35


async def test_rate_limit_refills_continuously_and_reset_fills_it() -> None:
    clock = Clock()
    fake = on_clock(clock, rate_limit=100)
    await burst(fake, 100)

    assert [r.status_code for r in await burst(fake, 1)] == [429]
    clock.now += 0.055  # 5.5 requests' worth
    assert [r.status_code for r in await burst(fake, 8)].count(200) == 5
    clock.now += 60  # never more than a bucketful
    assert [r.status_code for r in await burst(fake, 120)].count(200) == 100
    fake.reset()
    assert [r.status_code for r in await burst(fake, 100)].count(200) == 100


async def test_rate_limit_is_shared_by_all_clients() -> None:
    fake = on_clock(Clock(), rate_limit=4)

    async with connect(fake) as first, connect(fake) as second:
        statuses = [(await post(http, segments=[1])).status_code for http in [first, second] * 4]

    assert statuses == [200] * 4 + [429] * 4


@pytest.mark.parametrize(
    ("retry_after", "header"), [(None, None), (0, "0"), (0.05, "0.05"), (2, "2")]
)
async def test_rate_limit_retry_after_header_follows_its_knob(
    retry_after: float | None, header: str | None
) -> None:
    # `retry_after` (for injected 429s) is set too: it must not leak into these 429s.
    fake = on_clock(Clock(), rate_limit=1, rate_limit_retry_after=retry_after, retry_after=7)

    async with connect(fake) as http:
        first = await post(http)
        limited = await post(http)

    assert (first.status_code, limited.status_code) == (200, 429)
    assert limited.headers.get("retry-after") == header
    assert "retry-after" not in first.headers


async def test_rate_limit_is_checked_after_auth_and_validation() -> None:
    clock = Clock()
    fake = on_clock(clock, rate_limit=1)
    async with connect(fake) as http:
        assert (await post(http)).status_code == 200  # the bucket is now empty
        refused = [
            await post(http, headers={}),
            await post(http, headers={**AUTH, "Authorization": "Bearer wrong"}),
            await post(http, content=b"not json"),
            await post(http, "no_such_property"),
            await post(http, project="mouse"),
        ]
        clock.now += 1  # one request's worth: the refused requests took none
        after = await post(http)

    assert [r.status_code for r in refused] == [401, 403, 422, 404, 404]
    assert after.status_code == 200
    assert "rate_limit" not in fake.log.faults


async def test_rate_limit_is_checked_before_latency_and_faults() -> None:
    clock = Clock()
    fake = on_clock(clock, rate_limit=1, faults={"500": 1.0}, max_consecutive_faults=1, latency=0.2)
    async with connect(fake) as http:
        await post(http)  # a 500, after the latency; the fault streak is now 1
        started = time.monotonic()
        limited = await post(http)
        limited_took = time.monotonic() - started
        clock.now += 1
        last = await post(http)

    assert (limited.status_code, last.status_code) == (429, 200)
    assert limited_took < 0.1  # turned away at once, without the latency
    # Had the rate limit come after the fault draw, it would have used up the streak
    # and the last request would have been a 500.
    assert [r.outcome for r in fake.log.records] == ["500", "rate_limit", "200"]


async def test_fake_server_command_passes_rate_limit_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[FakeBrainCircuits] = []

    class Served(Exception):
        pass

    @contextmanager
    def capture(app: FakeBrainCircuits, **kwargs: Any) -> Iterator[str]:
        served.append(app)
        raise Served
        yield ""  # a generator, for contextmanager

    monkeypatch.setattr(testing, "serve_in_thread", capture)
    args = _cli._build_parser().parse_args(["fake-server", "--port", "0", "--rate-limit", "2"])
    with pytest.raises(Served):
        _cli._fake_server(args, io.StringIO())

    responses = await burst(served[0], 3)
    assert [r.status_code for r in responses].count(429) >= 1
    assert all("retry-after" not in r.headers for r in responses)


@pytest.mark.parametrize("value", ["0", "-3", "nan"])
def test_fake_server_command_rejects_a_bad_rate_limit(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(["fake-server", "--port", "0", "--rate-limit", value]) == 2
    assert "rate_limit must be a finite number > 0" in capsys.readouterr().err


# --- latency and the log ------------------------------------------------------------


async def test_latency_overlaps_for_concurrent_requests() -> None:
    fake = FakeBrainCircuits(latency=0.05)
    async with connect(fake) as http:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(post, http, "size", [i + 1])
        elapsed = time.monotonic() - started

    assert fake.log.max_in_flight == 10
    assert fake.log.in_flight == 0
    assert 0.05 <= elapsed < 0.25  # 10 requests in one latency, not ten


async def test_latency_per_segment_adds_up() -> None:
    fake = FakeBrainCircuits(latency_per_segment=0.0005)
    async with connect(fake) as http:
        started = time.monotonic()
        await post(http, segments=list(range(1, 101)))

    assert time.monotonic() - started >= 0.05


async def test_log_records_each_request_without_header_values() -> None:
    fake = FakeBrainCircuits(max_segments=5)
    async with connect(fake) as http:
        await post(http, "size", [1, 2, 3])
        await post(http, "size", list(range(1, 7)))
        await post(http, "size", [1], project=None)
        await http.get("/nowhere")

    log = fake.log
    assert log.requests == 4
    assert log.statuses == {200: 1, 413: 1, 422: 1, 404: 1}
    assert log.segments_served == 3
    first = log.records[0]
    assert (first.method, first.path, first.project, first.property) == (
        "POST",
        "/circuit/segment/property/size",
        FLYWIRE,
        "size",
    )
    assert (first.n_segments, first.status, first.fault) == (3, 200, None)
    assert first.materialized_timestamp == DEFAULT_MATERIALIZED_TIMESTAMP
    assert {"authorization", "authorization-cave"} <= set(first.header_names)
    assert [r.outcome for r in log.records] == ["200", "413", "422", "404"]

    log.reset()
    assert (log.requests, log.segments_served, log.records, log.statuses) == (0, 0, [], {})


# --- construction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"latency": -0.1}, "latency"),
        ({"latency": float("nan")}, "latency"),
        ({"latency_per_segment": -1}, "latency_per_segment"),
        ({"slow_delay": -1}, "slow_delay"),
        ({"retry_after": -1}, "retry_after"),
        ({"unknown_fraction": 1.5}, "unknown_fraction"),
        ({"unknown_fraction": -0.01}, "unknown_fraction"),
        ({"max_segments": 0}, "max_segments"),
        ({"rollover_after": 0}, "rollover_after"),
        ({"rollover_step": 0}, "rollover_step"),
        ({"max_consecutive_faults": -1}, "max_consecutive_faults"),
        ({"materialized_timestamp": -5}, "materialized_timestamp"),
        ({"faults": {"503": 1.2}}, "faults"),
        ({"faults": {"503": -0.1}}, "faults"),
        ({"faults": {"503": 0.6, "drop": 0.5}}, "add up to at most 1"),
        ({"faults": {"404": 0.1}}, "unknown kinds"),
        ({"token": ""}, "token"),
        ({"projects": []}, "projects"),
        ({"projects": "hemibrain"}, "projects"),
        ({"projects": {"hemibrain"}}, "cave_projects"),
        ({"default_project": "mouse"}, "default_project"),
        ({"properties": {"bad/name"}}, "properties"),
        ({"rate_limit": 0}, "rate_limit must be a finite number > 0"),
        ({"rate_limit": -10}, "rate_limit must be a finite number > 0"),
        ({"rate_limit": float("nan")}, "rate_limit must"),
        ({"rate_limit": float("inf")}, "rate_limit must"),
        ({"rate_limit": True}, "rate_limit must"),
        ({"rate_limit": "50"}, "rate_limit must"),
        ({"rate_limit": 50, "rate_limit_retry_after": -1}, "rate_limit_retry_after must"),
        ({"rate_limit": 50, "rate_limit_retry_after": float("nan")}, "rate_limit_retry_after"),
        ({"rate_limit_retry_after": 1}, "rate_limit_retry_after needs rate_limit"),
    ],
)
def test_bad_knobs_raise_value_error_naming_the_knob(knobs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FakeBrainCircuits(**knobs)


def test_default_project_falls_back_to_a_known_project() -> None:
    fake = FakeBrainCircuits(projects={"hemibrain", "zebrafish"}, cave_projects=set())

    assert fake.default_project == "hemibrain"


# --- loopback ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "truncate"])
async def test_loopback_server_cuts_connections_for_real(kind: str) -> None:
    fake = FakeBrainCircuits(faults={kind: 1.0}, max_consecutive_faults=1)
    with serve_in_thread(fake) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        assert base_url == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url) as http:
            # Over a socket both faults end the body early, which httpx reports as
            # a transport error; the JSON error is there for other HTTP stacks.
            with pytest.raises((httpx.TransportError, json.JSONDecodeError)):
                (await post(http)).json()
            answer = (await post(http)).json()  # the streak limit lets the retry through

    assert answer["results"] == fake.expected_results("link_pre", SEGMENTS)
    assert [r.outcome for r in fake.log.records] == [kind, "200"]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the server has stopped


def test_runners_explain_how_to_install_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail

    with pytest.raises(ImportError, match=r"braincircuits-async\[fake\]"):
        serve(FakeBrainCircuits())
    with (
        pytest.raises(ImportError, match=r"braincircuits-async\[fake\]"),
        serve_in_thread(FakeBrainCircuits()),
    ):
        pass


def test_a_server_in_the_background_spans_cells_and_says_how_to_reach_it() -> None:
    fake = testing.FakeBrainCircuits()
    server = testing.serve_in_background(fake)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.environment == {
            "BRAINCIRCUITS_URL": server.url,
            "BRAINCIRCUITS_TOKEN": testing.DEFAULT_TOKEN,
            "BRAINCIRCUITS_CAVE_TOKEN": testing.DEFAULT_CAVE_TOKEN,
        }
        assert "serving" in repr(server)
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))):
            pass
    finally:
        server.stop()
        server.stop()  # twice is harmless
    assert "stopped" in repr(server)
    with (
        pytest.raises(OSError),
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=1),
    ):
        pass
