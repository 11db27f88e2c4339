"""Fetching with a store: commit as it arrives, fetch only what is missing, lose nothing.

Against the fake both in-process (``httpx.ASGITransport``) and on a loopback
port (the real HTTP stack), with a real SQLite file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async import _store
from braincircuits_async.testing import FakeBrainCircuits

from .conftest import ServeOnLoopback

pytestmark = pytest.mark.anyio

PROJECT = "fruitfly_fafb_flywire"
IDS = list(range(1, 2001))  # 20 chunks of 100
Scope = dict[str, Any]


class TokenExpires:
    """An ASGI wrapper: after ``answers`` requests, every request gets a 401."""

    def __init__(self, app: Any, answers: int) -> None:
        self.app = app
        self.left = answers
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/circuit/"):
            if self.left <= 0:
                self.refused += 1
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"detail":"token expired"}'})
                return
            self.left -= 1
        await self.app(scope, receive, send)


class Server:
    """The fake, reached in-process or over loopback; ``client`` builds clients for it."""

    def __init__(self, fake: FakeBrainCircuits, how: str) -> None:
        self.fake = fake
        self.how = how
        self.app: Any = fake

    def expire_after(self, answers: int) -> TokenExpires:
        """From now on, the token expires after ``answers`` more requests."""
        wrapper = TokenExpires(self.fake, answers)
        self.app = wrapper
        return wrapper

    def fresh_token(self) -> None:
        self.app = self.fake

    def client(self, **kwargs: Any) -> bca.AsyncClient:
        settings: dict[str, Any] = {
            "token": self.fake.token,
            "cave_token": self.fake.cave_token,
            "project": PROJECT,
            "chunk_size": 100,
            "max_concurrency": 4,
            "backoff_base": 0.0,
        }
        settings.update(kwargs)
        if self.how == "in-process":
            settings["transport"] = httpx.ASGITransport(app=self._route)
            settings["base_url"] = "http://fake.test"
        else:
            settings["base_url"] = self._url
        return bca.AsyncClient(**settings)

    async def _route(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def serve(self, serve_on_loopback: ServeOnLoopback) -> None:
        # The loopback server routes to whatever `app` is now.
        self._url = serve_on_loopback(self._route)

    def segments_requested(self) -> int:
        return sum(r.n_segments for r in self.fake.log.records)

    def expected(self, ids: list[int], timestamp: int | None = None) -> dict[int, Any]:
        raw = self.fake.expected_results("link_pre", ids, materialized_timestamp=timestamp)
        return {int(k): v for k, v in raw.items()}


@pytest.fixture(params=["in-process", "loopback"])
def server(request: pytest.FixtureRequest, serve_on_loopback: ServeOnLoopback) -> Server:
    made = Server(FakeBrainCircuits(), request.param)
    if request.param == "loopback":
        made.serve(serve_on_loopback)
    return made


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


async def plain_result(server: Server, ids: list[int] = IDS) -> bca.SegmentPropertyResult:
    async with server.client() as client:
        result = await client.fetch_property("link_pre", ids)
    server.fake.log.reset()
    return result


async def test_a_401_mid_run_keeps_every_chunk_and_the_rerun_sends_only_the_rest(
    server: Server, store_path: Path
) -> None:
    plain = await plain_result(server)
    server.expire_after(8)
    async with server.client(store=store_path) as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_property("link_pre", IDS)
        arrived = client.stats.segments
    partial = caught.value.result
    assert partial is not None
    assert caught.value.results == {"link_pre": partial}
    # Every chunk that succeeded is in the error, value for value, in request order,
    # those whose commit was still queued when the 401 came included.
    assert len(partial) + len(partial.missing) == arrived == 8 * 100
    assert dict(partial) == {s: plain[s] for s in partial}
    assert list(partial) == [s for s in plain if s in partial]
    # ... and in the store.
    with bca.ResultStore(store_path) as store:
        stored = store.read("link_pre", IDS, project=PROJECT)
    assert len(stored) + len(stored.missing) >= len(partial) + len(partial.missing)
    assert dict(stored) == {s: plain[s] for s in stored}

    server.fresh_token()
    server.fake.log.reset()
    async with server.client(store=store_path) as client:
        again = await client.fetch_property("link_pre", IDS)
    assert again == plain
    # Only what the store did not hold was asked for.
    assert server.segments_requested() == len(IDS) - len(stored) - len(stored.missing)


async def test_a_401_without_a_store_still_carries_what_was_fetched(server: Server) -> None:
    plain = await plain_result(server)
    server.expire_after(10)
    async with server.client() as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_properties(["link_pre", "size"], IDS)
        arrived = client.stats.segments
    assert set(caught.value.results) == {"link_pre", "size"}
    partial = caught.value.results["link_pre"]
    assert caught.value.result is partial
    assert dict(partial) == {s: plain[s] for s in partial}
    fetched = sum(len(r) + len(r.missing) for r in caught.value.results.values())
    assert fetched == arrived == 10 * 100


async def test_a_rerun_with_everything_stored_sends_one_request(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path) as client:
        first = await client.fetch_property("link_pre", IDS)
        server.fake.log.reset()
        requests_before = client.stats.requests
        again = await client.fetch_property("link_pre", IDS)
    assert again == first
    assert client.stats.requests - requests_before == 1
    assert server.fake.log.requests == 1
    assert server.segments_requested() == 1


async def test_the_result_is_the_same_with_and_without_a_store(
    server: Server, store_path: Path
) -> None:
    plain = await plain_result(server)
    async with server.client(store=store_path) as client:
        fresh = await client.fetch_property("link_pre", IDS)
        # Every other id stored, in another order: the result keeps the request order.
        shuffled = IDS[::-1]
        partly = await client.fetch_property("link_pre", shuffled[::2] + IDS[:50])
        whole = await client.fetch_property("link_pre", shuffled)
    assert fresh == plain
    assert dict(whole) == dict(plain)
    assert list(whole) == [s for s in shuffled if s in plain]
    assert whole.missing == tuple(s for s in shuffled if s in plain.missing)
    assert dict(partly) == {s: plain[s] for s in partly}


async def test_partly_stored_ids_are_fetched_in_full_chunks(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS[::2])  # every other id
        server.fake.log.reset()
        await client.fetch_property("link_pre", IDS)
    # 1000 ids to fetch make 10 full chunks, not one request per gap.
    assert server.fake.log.requests == 10
    assert server.segments_requested() == 1000


async def test_several_properties_and_streams_use_the_store(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path) as client:
        first = await client.fetch_properties(["link_pre", "size"], IDS)
        server.fake.log.reset()
        again = await client.fetch_properties(["link_pre", "size"], IDS)
        assert server.fake.log.requests == 2  # one per property
        streamed: dict[int, Any] = {}
        async for part in client.iter_property("link_pre", IDS):
            assert part.materialized_timestamp == first["link_pre"].materialized_timestamp
            streamed.update(part)
    assert again == first
    assert streamed == dict(first["link_pre"])
    assert server.fake.log.requests == 3


async def test_a_rollover_between_runs_refetches_the_stale_values(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS)
        new = server.fake.rollover()
        server.fake.log.reset()
        result = await client.fetch_property("link_pre", IDS)
    assert result.materialized_timestamp == new
    assert dict(result) == server.expected(IDS)
    # The probe (one id, at the new materialization), then every other id again.
    assert server.segments_requested() == len(IDS)
    assert server.fake.log.records[0].n_segments == 1
    with bca.ResultStore(store_path) as store:
        held = store.materializations("link_pre", project=PROJECT)
    assert held == {new: len(IDS), new - 3600: len(IDS)}  # the old one is kept


async def test_a_rollover_between_runs_in_strict_mode_raises_with_everything(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path, consistency="strict") as client:
        await client.fetch_property("link_pre", IDS[:1000])
        new = server.fake.rollover()
        with pytest.raises(bca.InconsistentMaterializationError) as caught:
            await client.fetch_property("link_pre", IDS)
    assert caught.value.timestamps == (new - 3600, new)
    kept = caught.value.result
    assert len(kept) + len(kept.missing) == len(IDS)  # stored and fetched, nothing dropped
    assert set(caught.value.segment_timestamps.values()) == {new - 3600, new}


async def test_a_rollover_between_runs_in_ignore_mode_keeps_the_stored_values_and_warns(
    server: Server, store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with server.client(store=store_path, consistency="ignore") as client:
        await client.fetch_property("link_pre", IDS)
        old = server.fake.materialized_timestamp
        new = server.fake.rollover()
        server.fake.log.reset()
        with caplog.at_level(logging.WARNING, logger="braincircuits_async"):
            result = await client.fetch_property("link_pre", IDS)
    assert server.fake.log.requests == 1
    assert result.materialized_timestamp == new  # the newest, as consistency="ignore" reports
    assert result[IDS[1]] == server.fake.expected("link_pre", IDS[1], materialized_timestamp=old)
    assert "different materializations" in caplog.text


async def test_a_deadline_keeps_what_arrived_in_the_store(store_path: Path) -> None:
    fake = FakeBrainCircuits(latency=0.02)
    transport = httpx.ASGITransport(app=fake)
    settings: dict[str, Any] = {
        "token": fake.token,
        "cave_token": fake.cave_token,
        "project": PROJECT,
        "base_url": "http://fake.test",
        "transport": transport,
        "chunk_size": 100,
        "max_concurrency": 2,
    }
    async with bca.AsyncClient(store=store_path, **settings) as client:
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", IDS, deadline=0.1)
        fetched = caught.value.result
        with bca.ResultStore(store_path) as store:
            stored = store.read("link_pre", IDS, project=PROJECT)
        assert len(stored) + len(stored.missing) >= len(fetched) + len(fetched.missing) > 0
        again = await client.fetch_property("link_pre", IDS)
    assert len(again) + len(again.missing) == len(IDS)


async def test_an_interrupted_fetch_keeps_every_answer_that_arrived(
    server: Server, store_path: Path
) -> None:
    arrived: list[int] = []
    async with server.client(store=store_path) as client:
        with anyio.move_on_after(30) as scope:

            def progress(p: bca.Progress) -> None:
                arrived.append(p.done)
                if p.done >= 1000:
                    scope.cancel()  # as a Ctrl-C or a cancelled cell would

            await client.fetch_property("link_pre", IDS, progress=progress)
    assert scope.cancelled_caught
    with bca.ResultStore(store_path) as store:
        stored = store.read("link_pre", IDS, project=PROJECT)
    assert len(stored) + len(stored.missing) >= max(arrived)
    assert dict(stored) == {s: v for s, v in server.expected(IDS).items() if s in stored}


async def test_commits_run_in_a_worker_thread(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    write = _store.ResultStore._write

    def spy(self: bca.ResultStore, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread())
        write(self, *args, **kwargs)

    monkeypatch.setattr(_store.ResultStore, "_write", spy)
    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS)
    assert len(threads) == 20  # one transaction per chunk
    assert threading.main_thread() not in threads


async def test_a_store_that_cannot_be_written_stops_the_fetch_with_what_was_fetched(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = 0
    write = _store.ResultStore._write

    def full_disk(self: bca.ResultStore, *args: Any, **kwargs: Any) -> None:
        nonlocal writes
        writes += 1
        if writes > 5:
            raise bca.StoreError("result store: could not write: database or disk is full")
        write(self, *args, **kwargs)

    monkeypatch.setattr(_store.ResultStore, "_write", full_disk)
    async with server.client(store=store_path) as client:
        with pytest.raises(bca.StoreError, match="disk is full") as caught:
            await client.fetch_property("link_pre", IDS)
        arrived = client.stats.segments
    kept = caught.value.result
    assert kept is not None
    # Every answer that arrived is in the error, the ones the store refused included.
    assert len(kept) + len(kept.missing) == arrived > 500
    assert writes == 6  # the commits queued behind the failed one were skipped


def test_a_store_path_that_is_not_a_store_fails_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("1\n2\n")
    with pytest.raises(bca.StoreError, match="not a braincircuits-async result store"):
        bca.AsyncClient(token="t", store=path)
    assert path.read_text() == "1\n2\n"


async def test_a_client_closes_the_store_it_opened_but_not_one_it_was_given(
    store_path: Path,
) -> None:
    async with bca.AsyncClient(token="t", store=store_path) as client:
        assert client.store is not None
        assert "store.sqlite" in repr(client)
        opened = client.store
    assert opened.closed
    with bca.ResultStore(store_path) as given:
        async with bca.AsyncClient(token="t", store=given) as client:
            assert client.store is given
        assert not given.closed


def test_the_blocking_fetch_takes_a_store(
    store_path: Path, serve_on_loopback: ServeOnLoopback
) -> None:
    fake = FakeBrainCircuits()
    url = serve_on_loopback(fake)

    def fetch() -> bca.SegmentPropertyResult:
        return bca.fetch_property(
            "link_pre",
            IDS[:300],
            project=PROJECT,
            token=fake.token,
            cave_token=fake.cave_token,
            base_url=url,
            store=store_path,
        )

    first = fetch()
    fake.log.reset()
    assert fetch() == first
    assert fake.log.requests == 1


Builder = Callable[..., bca.AsyncClient]


async def test_a_stream_refetches_stale_stored_chunks_and_counts_each_segment_once(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS[:1000])
        new = server.fake.rollover()
        done: list[int] = []
        streamed: dict[int, Any] = {}
        missing: list[int] = []
        async for part in client.iter_property(
            "link_pre", IDS, progress=lambda p: done.append(p.done)
        ):
            assert part.materialized_timestamp == new
            streamed.update(part)
            missing.extend(part.missing)
    assert streamed == server.expected(IDS)
    assert len(streamed) + len(missing) == len(IDS)
    assert done[-1] == len(IDS)
    assert done == sorted(done)


async def test_the_servers_materialization_decides_not_the_stores(
    server: Server, store_path: Path
) -> None:
    # The store holds a newer materialization than the server now serves (a dataset
    # rolled back, another deployment): the server's values win, as without a store.
    plain = await plain_result(server)
    async with server.client(store=store_path) as client:
        server.fake.rollover()
        await client.fetch_property("link_pre", IDS[:1000])
        server.fake.reset()  # back to the first materialization
        result = await client.fetch_property("link_pre", IDS)
    assert result == plain


async def test_strict_mode_says_the_store_holds_another_materialization(
    server: Server, store_path: Path
) -> None:
    async with server.client(store=store_path, consistency="strict") as client:
        await client.fetch_property("link_pre", IDS[:500])
        server.fake.rollover()
        with pytest.raises(bca.InconsistentMaterializationError, match=r"store\.prune"):
            await client.fetch_property("link_pre", IDS[:500])


async def test_one_store_file_per_server(tmp_path: Path, store_path: Path) -> None:
    fake = FakeBrainCircuits()
    settings: dict[str, Any] = {
        "token": fake.token,
        "cave_token": fake.cave_token,
        "project": PROJECT,
        "transport": httpx.ASGITransport(app=fake),
    }
    async with bca.AsyncClient(base_url="http://practice.test", store=store_path, **settings) as c:
        await c.fetch_property("link_pre", IDS[:10])
    with pytest.raises(bca.StoreError, match=r"holds values fetched from http://practice\.test"):
        bca.AsyncClient(base_url="http://production.test", store=store_path, **settings)
    with bca.ResultStore(store_path) as store:  # reading offline needs no server
        assert len(store.read("link_pre", IDS[:10], project=PROJECT).not_stored) == 0


async def test_the_deadline_counts_the_time_the_lookup_took(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookup = _store.ResultStore._lookup

    def slow_disk(self: bca.ResultStore, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return lookup(self, *args, **kwargs)

    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS[:1])  # so that there is a lookup
        server.fake.log.reset()
        monkeypatch.setattr(_store.ResultStore, "_lookup", slow_disk)
        with pytest.raises(bca.IncompleteResultError) as caught:
            await client.fetch_property("link_pre", IDS, deadline=0.1)
    assert len(caught.value.failures) == len(IDS) - 1  # all but the stored one
    assert server.fake.log.requests == 0  # the deadline had passed before any request


async def test_a_stream_reads_stored_values_chunk_by_chunk(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[bool] = []
    loaded: list[int] = []
    lookup, values = _store.ResultStore._lookup, _store.ResultStore._values

    def spy_lookup(self: bca.ResultStore, *args: Any, values: bool = True) -> Any:
        looked_up.append(values)
        return lookup(self, *args, values=values)

    def spy_values(self: bca.ResultStore, *args: Any) -> Any:
        loaded.append(len(args[-1]))
        # The first stored chunk was pruned by another process meanwhile: fetched again.
        return None if len(loaded) == 1 else values(self, *args)

    async with server.client(store=store_path) as client:
        await client.fetch_property("link_pre", IDS)
        monkeypatch.setattr(_store.ResultStore, "_lookup", spy_lookup)
        monkeypatch.setattr(_store.ResultStore, "_values", spy_values)
        server.fake.log.reset()
        streamed: dict[int, Any] = {}
        async for part in client.iter_property("link_pre", IDS):
            streamed.update(part)
    assert looked_up == [False]  # the plan holds timestamps only, not 2000 values
    assert max(loaded) <= 100  # values read one chunk at a time
    assert streamed == server.expected(IDS)
    assert server.segments_requested() == 1 + loaded[0]  # the probe, the pruned chunk


async def test_a_store_that_holds_nothing_for_the_property_costs_no_lookup(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[int] = []
    lookup = _store.ResultStore._lookup

    def spy(self: bca.ResultStore, *args: Any, **kwargs: Any) -> Any:
        lookups.append(len(args[-1]))
        return lookup(self, *args, **kwargs)

    monkeypatch.setattr(_store.ResultStore, "_lookup", spy)
    async with server.client(store=store_path) as client:
        await client.fetch_property("size", IDS[:10])
        await client.fetch_property("link_pre", IDS)  # nothing held for link_pre
        assert lookups == []
        await client.fetch_property("link_pre", IDS)
    assert sum(lookups) == len(IDS)


async def test_answers_waiting_for_a_slow_store_stay_bounded(
    server: Server, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from braincircuits_async import _recording

    queued: list[int] = []
    call, write = _recording.Committer.__call__, _store.ResultStore._write

    async def spy(self: Any, answer: Any) -> None:
        queued.append(len(self._queue))
        await call(self, answer)

    def slow_disk(self: bca.ResultStore, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.01)
        write(self, *args, **kwargs)

    monkeypatch.setattr(_recording.Committer, "__call__", spy)
    monkeypatch.setattr(_store.ResultStore, "_write", slow_disk)
    async with server.client(store=store_path, max_concurrency=2) as client:
        async for _ in client.iter_property("link_pre", IDS):
            pass  # a stream: what waits for the store is alive only because of it
    assert len(queued) == 20
    assert max(queued) < 2 * 2  # at most 2 * max_concurrency answers wait at once
