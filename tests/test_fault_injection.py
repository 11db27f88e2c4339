"""The client against the fake server misbehaving: nothing is lost, nothing is mixed.

Every test here drives the real `AsyncClient` through `FakeBrainCircuits` (in-process
through ``httpx.ASGITransport``, and once over a loopback socket) with injected
faults, materialization rollovers, or a chunk that can never succeed, and checks one
invariant: every requested segment ends up either in the result with exactly the
fake's value for the result's materialization, or in ``.missing`` exactly when the
fake does not know it. Nothing sleeps for real: the client's backoff is 0, the
fake's ``Retry-After`` is 0 and its "slow" fault is a few milliseconds.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import braincircuits_async as bca
from braincircuits_async.testing import (
    DEFAULT_CAVE_TOKEN,
    DEFAULT_MATERIALIZED_TIMESTAMP,
    DEFAULT_TOKEN,
    FAULT_KINDS,
    FakeBrainCircuits,
)

from .conftest import ON_EVERY_HTTP_BACKEND, ServeOnLoopback

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROP = "link_pre"
START = DEFAULT_MATERIALIZED_TIMESTAMP
STEP = 3600  # the fake's default rollover_step
#: The most faults the fake injects in a row for one request (its default).
MAX_CONSECUTIVE_FAULTS = 2
#: One more retry than the fake can refuse, so a correctly retrying client finishes.
MAX_RETRIES = MAX_CONSECUTIVE_FAULTS + 1
#: FlyWire-like ids; with the fake's default unknown_fraction about 2% are unknown.
IDS = [720575940600000000 + 7919 * i for i in range(600)]


def make_fake(**knobs: Any) -> FakeBrainCircuits:
    """A fake whose faults cost no real time: Retry-After 0, "slow" by 2 ms."""
    settings: dict[str, Any] = {
        "retry_after": 0,
        "slow_delay": 0.002,
        "max_consecutive_faults": MAX_CONSECUTIVE_FAULTS,
    }
    settings.update(knobs)
    return FakeBrainCircuits(**settings)


def client_for(
    app: ASGIApp | None = None, *, base_url: str = "http://fake.test", **kwargs: Any
) -> bca.AsyncClient:
    """A client for ``app`` in-process (or for ``base_url`` over the network if no app)."""
    settings: dict[str, Any] = {
        "token": DEFAULT_TOKEN,
        "cave_token": DEFAULT_CAVE_TOKEN,
        "base_url": base_url,
        "project": "fruitfly_fafb_flywire",
        "transport": None if app is None else httpx.ASGITransport(app=app),
        "max_retries": MAX_RETRIES,
        "backoff_base": 0.0,
    }
    settings.update(kwargs)
    client = bca.AsyncClient(**settings)
    assert client.config.retry.max_retries > MAX_CONSECUTIVE_FAULTS
    return client


def assert_every_segment_right(
    result: bca.SegmentPropertyResult, fake: FakeBrainCircuits, ids: Iterable[int]
) -> None:
    """Each id is in ``result`` with the fake's value for ``result``'s materialization,
    or in ``result.missing`` exactly when the fake does not know it; nothing else is.
    """
    timestamp = result.materialized_timestamp
    assert timestamp is not None
    requested = list(dict.fromkeys(ids))
    truth = {s: fake.expected(PROP, s, materialized_timestamp=timestamp) for s in requested}
    wrong = [s for s in requested if s in result and result[s] != truth[s]]
    lost = [s for s in requested if s not in result and truth[s] is not None]
    invented = [s for s in result.missing if truth[s] is not None]
    assert (wrong, lost, invented) == ([], [], [])
    assert list(result) == [s for s in requested if truth[s] is not None]  # request order
    assert list(result.missing) == [s for s in requested if truth[s] is None]


def assert_each_value_is_from_its_materialization(
    error: bca.InconsistentMaterializationError, fake: FakeBrainCircuits
) -> None:
    """The error keeps every fetched value, each the fake's value at the timestamp it names."""
    assert len(error.timestamps) > 1
    assert set(error.segment_timestamps) == set(error.result)
    assert set(error.segment_timestamps.values()) <= set(error.timestamps)
    for segment, timestamp in error.segment_timestamps.items():
        assert error.result[segment] == fake.expected(
            PROP, segment, materialized_timestamp=timestamp
        )


def answered_timestamps(fake: FakeBrainCircuits) -> list[int]:
    """The materialization of every complete 200 answer the fake sent, in order."""
    return [
        r.materialized_timestamp
        for r in fake.log.records
        if r.status == 200 and r.fault in (None, "slow") and r.materialized_timestamp is not None
    ]


def retried_faults(fake: FakeBrainCircuits) -> int:
    """Injected faults that make a request fail ("slow" answers normally, just late)."""
    return sum(n for kind, n in fake.log.faults.items() if kind != "slow")


# --- one fault kind at a time, then all of them --------------------------------------


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_fault_kind_alone_is_retried_until_every_value_is_right(kind: str) -> None:
    fake = make_fake(faults={kind: 0.5})
    async with client_for(fake, chunk_size=20, max_concurrency=4) as client:
        result = await client.fetch_property(PROP, IDS)

    assert_every_segment_right(result, fake, IDS)
    assert result.materialized_timestamp == START
    # The faults really happened, and each failed request was retried exactly once.
    assert set(fake.log.faults) == {kind}
    assert fake.log.faults[kind] >= 10
    assert client.stats.retries == retried_faults(fake)
    assert client.stats.requests == fake.log.requests


async def test_a_mix_of_every_fault_kind_is_retried_until_every_value_is_right() -> None:
    fake = make_fake(faults=dict.fromkeys(FAULT_KINDS, 0.1), seed=3)
    async with client_for(fake, chunk_size=25, max_concurrency=8) as client:
        result = await client.fetch_property(PROP, IDS)

    assert_every_segment_right(result, fake, IDS)
    assert result.materialized_timestamp == START
    assert set(fake.log.faults) == set(FAULT_KINDS)
    assert client.stats.retries == retried_faults(fake)
    assert 1 < fake.log.max_in_flight <= 8  # concurrent, within max_concurrency


# --- property-based: any fault mix, chunking, concurrency and rollover ---------------


fault_mixes = st.fixed_dictionaries(
    # At most 0.12 per kind keeps the total under 1, as the fake requires.
    {kind: st.sampled_from([0.0, 0.03, 0.12]) | st.floats(0.0, 0.12) for kind in FAULT_KINDS}
)


@settings(
    max_examples=30,
    deadline=None,
    # conftest's autouse env-cleaning fixture runs once per test, not per example;
    # that is fine, since no example touches the environment.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    faults=fault_mixes,
    n_ids=st.integers(1, 300),
    chunk_size=st.integers(1, 80),
    max_concurrency=st.integers(1, 8),
    max_segments=st.integers(1, 100),
    unknown_fraction=st.sampled_from([0.0, 0.02, 0.5]),
    rollover_after=st.none() | st.integers(1, 15),
    consistency=st.sampled_from(["refetch", "strict"]),
    seed=st.integers(0, 2**32),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_any_fault_mix_gives_every_value_from_one_materialization(
    faults: dict[str, float],
    n_ids: int,
    chunk_size: int,
    max_concurrency: int,
    max_segments: int,
    unknown_fraction: float,
    rollover_after: int | None,
    consistency: str,
    seed: int,
    backend: str,
) -> None:
    # "ignore" is left out on purpose: it is the one mode that may return mixed values.
    # Hypothesis would mostly draw tiny id lists; drawing the count keeps runs sizeable.
    rng = random.Random(seed)
    ids = [rng.randrange(2**64) for _ in range(n_ids)]
    ids += rng.choices(ids, k=n_ids // 10)  # duplicates, which the client drops
    fake = make_fake(
        faults=faults,
        max_segments=max_segments,  # below chunk_size, 413 splits join the faults
        unknown_fraction=unknown_fraction,
        rollover_after=rollover_after,
        seed=seed,
    )

    async def fetch() -> bca.SegmentPropertyResult:
        async with client_for(
            fake, chunk_size=chunk_size, max_concurrency=max_concurrency, consistency=consistency
        ) as client:
            return await client.fetch_property(PROP, ids)

    outcome: bca.SegmentPropertyResult | bca.InconsistentMaterializationError
    try:
        outcome = anyio.run(fetch, backend=backend)
    except bca.InconsistentMaterializationError as error:
        outcome = error
    note(f"log: {fake.log!r}")

    assert fake.log.max_in_flight <= max_concurrency
    if isinstance(outcome, bca.InconsistentMaterializationError):
        # Only a moving materialization may stop the call, and then it says so
        # instead of returning values from two materializations.
        assert rollover_after is not None
        assert_each_value_is_from_its_materialization(outcome, fake)
        return
    assert_every_segment_right(outcome, fake, ids)
    if rollover_after is None:
        assert outcome.materialized_timestamp == START


# --- a materialization that moves on mid-run ------------------------------------------


def rolling_over_once(fake: FakeBrainCircuits, *, after: int) -> ASGIApp:
    """The fake, moved on to a new materialization once, right after ``after`` requests."""
    handled = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal handled
        await fake(scope, receive, send)
        if scope["type"] == "http":
            handled += 1
            if handled == after:
                fake.rollover()

    return app


async def test_refetch_mode_returns_everything_from_the_final_materialization() -> None:
    fake = make_fake()
    app = rolling_over_once(fake, after=7)
    async with client_for(app, chunk_size=30, max_concurrency=4) as client:
        result = await client.fetch_property(PROP, IDS)

    assert result.materialized_timestamp == START + STEP == fake.materialized_timestamp
    assert_every_segment_right(result, fake, IDS)
    stale = answered_timestamps(fake).count(START)
    assert stale >= 7  # the rollover really happened mid-run ...
    assert client.stats.refetches == stale  # ... and every stale chunk was fetched again


async def test_refetch_mode_settles_despite_faults_during_the_refetch() -> None:
    fake = make_fake(faults=dict.fromkeys(FAULT_KINDS, 0.08))
    app = rolling_over_once(fake, after=10)
    async with client_for(app, chunk_size=30, max_concurrency=4) as client:
        result = await client.fetch_property(PROP, IDS)

    assert result.materialized_timestamp == START + STEP
    assert_every_segment_right(result, fake, IDS)
    assert client.stats.refetches > 0
    assert retried_faults(fake) > 0


async def test_refetch_mode_raises_rather_than_mix_when_the_materialization_keeps_moving() -> None:
    # A rollover every 5 answers outpaces every re-fetch round.
    fake = make_fake(rollover_after=5)
    async with client_for(fake, chunk_size=30, max_concurrency=4) as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="re-fetch") as caught:
            await client.fetch_property(PROP, IDS)

    assert_each_value_is_from_its_materialization(caught.value, fake)
    assert client.stats.refetches > 0


async def test_strict_mode_raises_at_the_first_disagreement() -> None:
    fake = make_fake(rollover_after=5)
    async with client_for(fake, chunk_size=30, max_concurrency=4, consistency="strict") as client:
        with pytest.raises(bca.InconsistentMaterializationError, match="strict") as caught:
            await client.fetch_property(PROP, IDS)

    assert caught.value.timestamps == (START, START + STEP)
    assert_each_value_is_from_its_materialization(caught.value, fake)
    # It stopped instead of fetching all 20 chunks.
    assert fake.log.requests < len(IDS) // 30


async def test_ignore_mode_keeps_mixed_values_reports_the_newest_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = make_fake(rollover_after=5)
    with caplog.at_level(logging.WARNING, logger="braincircuits_async"):
        async with client_for(
            fake, chunk_size=30, max_concurrency=4, consistency="ignore"
        ) as client:
            result = await client.fetch_property(PROP, IDS)

    served = set(answered_timestamps(fake))
    assert len(served) > 1
    assert result.materialized_timestamp == max(served)
    # Each value is the fake's value at one of the materializations it served ...
    sources: set[int] = set()
    for segment in IDS:
        if fake.expected(PROP, segment) is None:
            assert segment in result.missing
            continue
        matching = [
            t
            for t in served
            if result[segment] == fake.expected(PROP, segment, materialized_timestamp=t)
        ]
        assert matching, segment
        sources.update(matching)
    # ... and the result really is mixed, which the warning owns up to.
    assert len(sources) > 1
    assert any(
        r.levelno == logging.WARNING and "different materializations" in r.getMessage()
        for r in caplog.records
    )


# --- a chunk that can never succeed ------------------------------------------------------


class Refusing:
    """The fake, except that every request carrying ``poison`` gets a 503."""

    def __init__(self, fake: FakeBrainCircuits, poison: int) -> None:
        self.fake = fake
        self.poison = poison
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if self.poison in json.loads(body)["segments"]:
            self.refused += 1
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail": "down"}'})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.fake(scope, replay, send)


async def test_a_chunk_that_never_succeeds_gives_incomplete_result_with_everything_else() -> None:
    fake = make_fake(faults={"500": 0.1, "drop": 0.1, "truncate": 0.1})
    app = Refusing(fake, poison=IDS[275])
    async with client_for(app, chunk_size=50, max_concurrency=4) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property(PROP, IDS)

    error = caught.value
    doomed = IDS[250:300]  # the chunk holding the poisoned id
    assert set(error.failures) == set(doomed)
    assert all("503" in reason for reason in error.failures.values())
    assert_every_segment_right(error.result, fake, [s for s in IDS if s not in doomed])
    assert app.refused == MAX_RETRIES + 1  # it was retried, then given up
    assert retried_faults(fake) > 0  # the other chunks got through real faults


# --- over a real socket ----------------------------------------------------------------


@ON_EVERY_HTTP_BACKEND
async def test_fault_mix_over_a_real_loopback_socket_loses_nothing(
    http_backend: str, serve_on_loopback: ServeOnLoopback
) -> None:
    ids = [720575940600000000 + 104729 * i for i in range(3000)]
    faults = {"429": 0.05, "503": 0.05, "drop": 0.1, "truncate": 0.1, "slow": 0.05}
    fake = make_fake(faults=faults, seed=1)
    async with client_for(
        base_url=serve_on_loopback(fake),
        chunk_size=100,
        max_concurrency=8,
        http_backend=http_backend,
    ) as client:
        result = await client.fetch_property(PROP, ids)
        assert client.http_backend == http_backend

    assert_every_segment_right(result, fake, ids)
    assert result.materialized_timestamp == START
    assert fake.log.faults["drop"] > 0
    assert fake.log.faults["truncate"] > 0
    assert client.stats.retries == retried_faults(fake)
