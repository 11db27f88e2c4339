"""The pure decisions of a fetch (`_policy`) and of the wire (`_wire`), as table tests."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Collection, Mapping

import anyio
import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async._config import Consistency, Secret
from braincircuits_async._merge import ChunkAnswer
from braincircuits_async._models import SegmentPropertyResult
from braincircuits_async._policy import (
    Brake,
    Outcome,
    Split,
    TooLarge,
    Verdict,
    brake,
    brake_budget,
    failure_reasons,
    judge_timestamp,
    refetch_target,
    server_down,
    server_down_error,
    settle,
    split_decision,
    stale_slices,
    timeouts_before_splitting,
    too_large_after,
    too_large_error,
    uncovered,
    with_partial,
)
from braincircuits_async._transport import AuthHeaders
from braincircuits_async._wire import LowerLayerErrors, Target, error_for_status

PROJECT = "fruitfly_fafb_flywire"
IDS = list(range(100, 110))  # the segment at position p of a call is 100 + p
OLD, REF, NEW = 1_600_000_000, 1_700_000_000, 1_800_000_000
REQUEST = httpx.Request("POST", "https://x.test")
TOKEN = Secret("tok-SECRET-123456", "token=")
CAVE = Secret("cave-SECRET-654321", "BRAINCIRCUITS_CAVE_TOKEN")
CONSISTENCIES: list[Consistency] = ["refetch", "strict", "ignore"]


def answer(start: int, end: int, timestamp: int, missing: Collection[int] = ()) -> ChunkAnswer:
    ids = IDS[start:end]
    return ChunkAnswer(
        start, end, timestamp, ids, [None if i in missing else {"n": i} for i in ids]
    )


def outcome(
    prop: str,
    answers: list[ChunkAnswer],
    failures: Mapping[int, tuple[int, bca.BrainCircuitsError]] | None = None,
    delivered: int = 0,
) -> Outcome:
    return Outcome(prop, PROJECT, IDS, answers, failures or {}, delivered)


# judge_timestamp


def judge(
    ts: int, ref: int | None, how: Consistency, stream: bool, done: int
) -> tuple[Verdict, str]:
    """The verdict, with max_refetch_rounds=2 and ``done`` re-fetches of the chunk already."""
    return judge_timestamp(
        ts, ref, consistency=how, streaming=stream, refetched=done, max_refetch_rounds=2
    )


@pytest.mark.parametrize(
    ("reference", "consistency", "streaming", "refetched"),
    list(itertools.product([None, REF], CONSISTENCIES, [True, False], [0, 2])),
)
def test_the_first_answer_and_the_same_materialization_are_kept(
    reference: int | None, consistency: Consistency, streaming: bool, refetched: int
) -> None:
    assert judge(REF, reference, consistency, streaming, refetched) == (Verdict.KEEP, "")


STRICT_STOP = (Verdict.STOP, "consistency='strict' allows only one")


@pytest.mark.parametrize(("timestamp", "refetched"), list(itertools.product([OLD, NEW], [0, 2])))
@pytest.mark.parametrize(
    ("consistency", "streaming", "expected"),
    [
        ("ignore", True, (Verdict.KEEP, "")),
        ("ignore", False, (Verdict.KEEP, "")),
        ("strict", True, STRICT_STOP),
        ("strict", False, STRICT_STOP),
        ("refetch", False, (Verdict.KEEP, "")),  # stale chunks go again in later rounds
    ],
)
def test_another_materialization_stops_strict_and_is_kept_by_ignore_and_outside_streams(
    timestamp: int,
    refetched: int,
    consistency: Consistency,
    streaming: bool,
    expected: tuple[Verdict, str],
) -> None:
    assert judge(timestamp, REF, consistency, streaming, refetched) == expected


@pytest.mark.parametrize(
    ("timestamp", "refetched", "expected"),
    [
        (NEW, 0, (Verdict.STOP, "chunks of the older one were yielded already")),
        (NEW, 2, (Verdict.STOP, "chunks of the older one were yielded already")),
        (OLD, 0, (Verdict.REFETCH, "")),
        (OLD, 1, (Verdict.REFETCH, "")),
        (OLD, 2, (Verdict.STOP, "2 re-fetch round(s) did not reconcile them")),
    ],
)
def test_a_stream_refetches_an_older_chunk_until_the_rounds_run_out_and_stops_at_a_newer_one(
    timestamp: int, refetched: int, expected: tuple[Verdict, str]
) -> None:
    assert judge(timestamp, REF, "refetch", True, refetched) == expected


# stale_slices, uncovered, split_decision, timeouts_before_splitting, failure_reasons


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (REF, [(0, 2), (6, 10)]),
        (OLD, [(2, 4), (4, 6), (6, 10)]),
        (None, [(0, 2), (2, 4), (4, 6), (6, 10)]),
    ],
)
def test_stale_slices_are_those_not_from_the_target_in_start_order(
    target: int | None, expected: list[tuple[int, int]]
) -> None:
    answers = [answer(6, 10, NEW), answer(2, 4, REF), answer(0, 2, OLD), answer(4, 6, REF)]
    assert stale_slices(answers, target) == expected


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([], [(0, 10)]),
        ([(0, 10)], []),
        ([(3, 10)], [(0, 3)]),
        ([(0, 4), (6, 10)], [(4, 6)]),
        ([(0, 7)], [(7, 10)]),
        ([(6, 8), (2, 4)], [(0, 2), (4, 6), (8, 10)]),
        ([(0, 5), (3, 8), (4, 6)], [(8, 10)]),
        ([(0, 5), (5, 10)], []),
    ],
    ids=["nothing", "all", "start", "middle", "end", "unsorted", "overlapping", "adjacent"],
)
def test_uncovered_finds_the_gaps_the_spans_leave(
    spans: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    assert uncovered(spans, 10) == expected


TIMEOUT = bca.APITimeoutError("chunk 1/1: no answer within timeout=5 s")


TOO_LARGE = bca.APIStatusError("413", status_code=413)
UNKNOWN, SIZE, NOT_SIZE = TooLarge.UNKNOWN, TooLarge.SIZE, TooLarge.NOT_SIZE


@pytest.mark.parametrize(
    ("error", "size", "too_large", "expected"),
    [
        # Before the call knows: one segment alone answers "is it the size?".
        (TOO_LARGE, 500, UNKNOWN, Split.PROBE),
        (TOO_LARGE, 2, UNKNOWN, Split.PROBE),
        (TOO_LARGE, 1, UNKNOWN, Split.NOT_SIZE),
        # A piece was answered: halve down to single ids, as before.
        (TOO_LARGE, 500, SIZE, Split.HALVE),
        (TOO_LARGE, 2, SIZE, Split.HALVE),
        (TOO_LARGE, 1, SIZE, Split.FAIL),
        # A single segment was refused: splitting does not help, for any chunk.
        (TOO_LARGE, 500, NOT_SIZE, Split.NOT_SIZE),
        (TOO_LARGE, 1, NOT_SIZE, Split.NOT_SIZE),
        # Other errors do not depend on what the 413s taught.
        (TIMEOUT, 8, NOT_SIZE, Split.HALVE),
        (bca.APIStatusError("503", status_code=503), 8, UNKNOWN, Split.FAIL),
    ],
)
def test_a_413_splits_while_that_helps_probing_with_one_segment_first(
    error: bca.BrainCircuitsError, size: int, too_large: TooLarge, expected: Split
) -> None:
    decision = split_decision(
        error, size, split_on_timeout=True, timeout_half=False, too_large=too_large
    )
    assert decision is expected


@pytest.mark.parametrize(
    ("error", "size", "on_timeout", "half", "expected"),
    [
        (TIMEOUT, 1, True, False, Split.FAIL),
        (TIMEOUT, 8, True, False, Split.HALVE),
        (TIMEOUT, 8, True, True, Split.AGAIN_WHOLE),
        (TIMEOUT, 8, False, False, Split.FAIL),
        (TIMEOUT, 8, False, True, Split.FAIL),
        (TOO_LARGE, 8, False, True, Split.HALVE),  # 413s split whatever the timeouts did
        (bca.APIStatusError("503", status_code=503), 8, True, False, Split.FAIL),
        (bca.RateLimitError("429", status_code=429), 8, True, False, Split.FAIL),
        (bca.APIConnectionError("refused"), 8, True, False, Split.FAIL),
        (bca.MalformedResponseError("bad", transient=True), 8, True, False, Split.FAIL),
    ],
)
def test_timeouts_halve_a_chunk_only_while_that_helps(
    error: bca.BrainCircuitsError, size: int, on_timeout: bool, half: bool, expected: Split
) -> None:
    decision = split_decision(
        error, size, split_on_timeout=on_timeout, timeout_half=half, too_large=SIZE
    )
    assert decision is expected


@pytest.mark.parametrize(
    ("current", "size", "answered", "expected"),
    [
        (UNKNOWN, 1, False, NOT_SIZE),  # a single segment refused: not the size
        (UNKNOWN, 2, False, UNKNOWN),  # two refused: could still be the size
        (UNKNOWN, 250, True, SIZE),
        (UNKNOWN, 1, True, SIZE),
        (SIZE, 1, False, SIZE),  # pieces were answered: this one segment is refused
        (NOT_SIZE, 1, False, NOT_SIZE),
        (NOT_SIZE, 499, True, SIZE),  # a piece answered after all: splitting helped
    ],
)
def test_what_a_call_learns_of_its_413s(
    current: TooLarge, size: int, answered: bool, expected: TooLarge
) -> None:
    assert too_large_after(current, size=size, answered=answered) is expected


def test_a_chunk_failed_for_a_413_that_is_not_about_size_says_why_and_what_to_do() -> None:
    error = too_large_error(
        bca.APIStatusError("x", status_code=413, body="request refused"),
        describe="link_pre chunk ids[0:500]",
        segment=720575940,
    )
    assert error.status_code == 413
    assert str(error).startswith("link_pre chunk ids[0:500]: the server answered 413")
    for said in (
        "splitting does not help",
        "a single segment (720575940)",
        "not the trouble",
        "Lowering chunk_size will not help",
        "proxy or gateway",
        "Server said: request refused",
    ):
        assert said in str(error)


@pytest.mark.parametrize(
    ("max_concurrency", "max_retries", "budget"),
    [(8, 5, 48), (4, 2, 12), (8, 0, 8), (1, 5, 12), (1, 0, 2), (2, 1, 4)],
)
def test_the_brake_budget_is_what_the_first_chunks_spend_on_retries_two_at_least(
    max_concurrency: int, max_retries: int, budget: int
) -> None:
    assert brake_budget(max_concurrency, max_retries) == budget


@pytest.mark.parametrize(
    ("sent", "failed", "expected"),
    [
        (0, 0, Brake.GO),
        (47, 47, Brake.GO),  # every one failed, but the budget is not spent
        (47, 0, Brake.GO),
        (48, 48, Brake.STOP),  # the whole budget failed, none succeeded
        (48, 47, Brake.WAIT),  # one still in flight: it may succeed
        (48, 0, Brake.WAIT),
        (50, 50, Brake.STOP),
    ],
)
def test_the_brake_stops_only_when_every_request_of_the_budget_failed(
    sent: int, failed: int, expected: Brake
) -> None:
    assert brake(sent, failed, budget=48) is expected


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (bca.APIStatusError("500", status_code=500), True),
        (bca.APIStatusError("502", status_code=502), True),
        (bca.APIStatusError("503", status_code=503), True),
        (bca.APIStatusError("504", status_code=504), True),
        (bca.APIConnectionError("refused"), True),
        (bca.APITimeoutError("slow"), True),
        (bca.RateLimitError("429", status_code=429), False),  # alive: the gate slows down
        (bca.APIStatusError("413", status_code=413), False),
        (bca.APIStatusError("400", status_code=400), False),
        (bca.AuthenticationError("401", status_code=401), False),
        (bca.MalformedResponseError("cut short", transient=True), False),
        (KeyError("bug"), False),
    ],
)
def test_a_5xx_or_no_answer_says_the_server_is_down(error: BaseException, down: bool) -> None:
    assert server_down(error) is down


@pytest.mark.parametrize(
    "last",
    [
        bca.APIStatusError("chunk 3: 503: busy", status_code=503, body="busy", retry_after=100.0),
        bca.APIConnectionError("chunk 3: ConnectError: refused"),
        bca.APITimeoutError("chunk 3: no answer within timeout=5 s"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_brakes_error_is_of_the_last_errors_kind_and_says_why_the_fetch_stopped(
    last: bca.APIError,
) -> None:
    error = server_down_error(last, what="link_pre (project 'p')", requests=48)
    assert type(error) is type(last)
    assert str(error).startswith("link_pre (project 'p'): the server looks down")
    assert "the last 48 requests all failed" in str(error)
    assert "none succeeded" in str(error)
    assert "Try again later" in str(error)
    assert str(error).endswith(f"Last error: {last}")
    if isinstance(last, bca.APIStatusError):
        assert isinstance(error, bca.APIStatusError)
        assert (error.status_code, error.body, error.retry_after) == (503, "busy", 100.0)


@pytest.mark.parametrize(
    ("size", "split_on_timeout", "expected"),
    [(1, True, None), (2, True, 2), (500, True, 2), (2, False, None), (1, False, None)],
)
def test_two_timeouts_end_the_retries_of_a_chunk_that_can_split(
    size: int, split_on_timeout: bool, expected: int | None
) -> None:
    assert timeouts_before_splitting(size, split_on_timeout=split_on_timeout) == expected


def test_failure_reasons_give_each_segment_its_error_and_distinct_errors_in_slice_order() -> None:
    first, second = (
        bca.APIStatusError("500 here", status_code=500),
        bca.APIConnectionError("dropped"),
    )
    failures = {7: (9, second), 0: (2, first), 4: (5, first)}
    reasons, errors = failure_reasons(failures, IDS)
    assert errors == [first, second]
    assert reasons == {**dict.fromkeys([100, 101, 104], "500 here"), 107: "dropped", 108: "dropped"}


# settle

ONE, SEVERAL = ["a"], ["a", "b"]


def settle_all(
    outcomes: list[Outcome], consistency: Consistency = "refetch", streaming: bool = False
) -> dict[str, SegmentPropertyResult]:
    return settle(outcomes, consistency=consistency, max_refetch_rounds=3, streaming=streaming)


@pytest.mark.parametrize("props", [ONE, SEVERAL])
def test_settle_merges_each_propertys_chunks_in_request_order(props: list[str]) -> None:
    chunks = [answer(5, 10, REF, missing={107}), answer(0, 5, REF, missing={102})]
    results = settle_all([outcome(p, chunks) for p in props], "strict")
    assert list(results) == props
    for prop, result in results.items():
        assert list(result) == [100, 101, 103, 104, 105, 106, 108, 109]
        assert result[109] == {"n": 109}
        assert result.missing == (102, 107)
        assert result.materialized_timestamp == REF
        assert (result.property, result.project) == (prop, PROJECT)


# One property whose own chunks disagree; two that agree within and disagree across.
@pytest.mark.parametrize(
    "stamps", [{"a": (NEW, OLD)}, {"a": (NEW, NEW), "b": (OLD, OLD)}], ids=["one", "several"]
)
@pytest.mark.parametrize(
    ("consistency", "said", "not_said"),
    [
        ("refetch", "after 3 re-fetch round(s)", "strict"),
        ("strict", "consistency='strict'", "after 3"),
    ],
)
def test_settle_raises_for_mixed_materializations_keeping_every_result(
    stamps: dict[str, tuple[int, int]], consistency: Consistency, said: str, not_said: str
) -> None:
    outcomes = [outcome(p, [answer(0, 5, t), answer(5, 10, u)]) for p, (t, u) in stamps.items()]
    with pytest.raises(bca.InconsistentMaterializationError) as excinfo:
        settle_all(outcomes, consistency)
    error = excinfo.value
    assert error.timestamps == (OLD, NEW)
    assert list(error.results) == list(stamps)
    assert all(list(result) == IDS for result in error.results.values())
    assert error.result.property == list(stamps)[-1]
    assert said in str(error)
    assert not_said not in str(error)


@pytest.mark.parametrize("props", [ONE, SEVERAL])
def test_settle_with_ignore_keeps_mixed_materializations_and_reports_the_newest(
    props: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = [outcome(p, [answer(0, 5, NEW), answer(5, 10, OLD)]) for p in props]
    with caplog.at_level(logging.WARNING, logger="braincircuits_async"):
        results = settle_all(outcomes, "ignore")
    assert all(r.materialized_timestamp == NEW and list(r) == IDS for r in results.values())
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "different materializations" in record.getMessage()


def test_settle_keeps_one_propertys_partial_result_when_chunks_failed() -> None:
    error = bca.APIStatusError("chunk 2/2: the server answered 500", status_code=500)
    failed = outcome("a", [answer(0, 5, REF)], failures={5: (10, error)})
    with pytest.raises(bca.IncompleteResultError) as excinfo:
        settle_all([failed])
    incomplete = excinfo.value
    assert incomplete.failures == dict.fromkeys(range(105, 110), str(error))
    assert list(incomplete.result) == [100, 101, 102, 103, 104]
    assert incomplete.results == {"a": incomplete.result}
    assert incomplete.errors == (error,)
    assert incomplete.__cause__ is error
    assert "5 of 10 segment(s)" in str(incomplete)


def test_settle_with_several_properties_prefixes_reasons_and_keeps_every_result() -> None:
    e500 = bca.APIStatusError("the server answered 500", status_code=500)
    e503 = bca.APIStatusError("the server answered 503", status_code=503)
    outcomes = [
        outcome("a", [answer(0, 10, REF)]),
        outcome("b", [answer(0, 5, REF)], failures={5: (10, e500)}),
        outcome("c", [answer(0, 8, REF)], failures={8: (10, e503)}),
    ]
    with pytest.raises(bca.IncompleteResultError) as excinfo:
        settle_all(outcomes)
    incomplete = excinfo.value
    b, both = f"b: {e500}", f"b: {e500}; c: {e503}"
    assert incomplete.failures == {105: b, 106: b, 107: b, 108: both, 109: both}
    assert incomplete.result.property == "b"
    assert list(incomplete.result) == [100, 101, 102, 103, 104]
    assert sorted(incomplete.results) == ["a", "b", "c"]
    assert list(incomplete.results["a"]) == IDS
    assert incomplete.errors == (e500, e503)
    assert incomplete.__cause__ is e500


@pytest.mark.parametrize(
    ("props", "streaming", "said", "not_said"),
    [
        (ONE, False, "are in .result,", ".results"),
        (SEVERAL, False, "are in .results,", "yielded"),
        (ONE, True, "were yielded already", ".result,"),
        (SEVERAL, True, "were yielded already", ".results,"),
    ],
)
def test_an_incomplete_result_says_where_the_fetched_segments_are(
    props: list[str], streaming: bool, said: str, not_said: str
) -> None:
    error = bca.APIConnectionError("dropped")
    # A stream keeps no answers: it handed its chunks on (delivered), so it too is incomplete.
    kept, delivered = ([], 1) if streaming else ([answer(0, 5, REF)], 0)
    outcomes = [outcome(p, kept, {5: (10, error)}, delivered) for p in props]
    with pytest.raises(bca.IncompleteResultError) as excinfo:
        settle_all(outcomes, streaming=streaming)
    assert excinfo.value.__cause__ is error
    assert sorted(excinfo.value.failures) == list(range(105, 110))
    assert said in str(excinfo.value)
    assert not_said not in str(excinfo.value)


@pytest.mark.parametrize("props", [ONE, SEVERAL])
def test_settle_raises_the_chunks_own_error_when_nothing_was_fetched(props: list[str]) -> None:
    errors = [bca.RateLimitError(f"{p}: rate limited (429)", status_code=429) for p in props]
    outcomes = [outcome(p, [], failures={0: (10, e)}) for p, e in zip(props, errors, strict=True)]
    with pytest.raises(bca.RateLimitError) as excinfo:
        settle_all(outcomes)
    assert excinfo.value is errors[0]


# refetch_target: the server decides, not the store


def stored(start: int, end: int, timestamp: int) -> ChunkAnswer:
    fetched = answer(start, end, timestamp)
    return ChunkAnswer(start, end, timestamp, fetched.ids, fetched.values, stored=True)


@pytest.mark.parametrize(
    ("answers", "target"),
    [
        ([], None),
        ([answer(0, 5, REF), answer(5, 10, OLD)], REF),
        # A store newer than what the server answers is stale, not the target.
        ([answer(0, 5, REF), stored(5, 10, NEW)], REF),
        ([stored(0, 5, OLD), answer(5, 10, REF)], REF),
        ([answer(0, 5, OLD), answer(5, 8, NEW), stored(8, 10, REF)], NEW),
        # Nothing fetched (every request failed): the newest stored one.
        ([stored(0, 5, OLD), stored(5, 10, REF)], REF),
    ],
)
def test_refetch_target_is_the_newest_materialization_fetched(
    answers: list[ChunkAnswer], target: int | None
) -> None:
    assert refetch_target(answers) == target


# with_partial: what a fatal error carries


@pytest.mark.parametrize(
    ("consistency", "answers", "kept"),
    [
        # One materialization: everything fetched, in request order.
        ("refetch", [answer(5, 10, REF), answer(0, 5, REF, missing={101})], IDS),
        # Mixed: only the newest one's chunks, unless "ignore" keeps them all.
        ("refetch", [answer(0, 5, OLD), answer(5, 10, NEW)], IDS[5:]),
        ("strict", [answer(0, 5, OLD), answer(5, 10, NEW)], IDS[5:]),
        ("ignore", [answer(0, 5, OLD), answer(5, 10, NEW)], IDS),
        # Nothing fetched: an empty result all the same.
        ("refetch", [], []),
    ],
)
def test_a_fatal_error_carries_what_was_fetched_without_mixing_materializations(
    consistency: Consistency, answers: list[ChunkAnswer], kept: list[int]
) -> None:
    error = bca.AuthenticationError("token refused (401)", status_code=401)
    raised = with_partial(error, [outcome("a", answers)], consistency=consistency)
    assert raised is error
    assert error.result is not None
    assert error.results == {"a": error.result}
    assert sorted([*error.result, *error.result.missing]) == kept
    assert list(error.result) == sorted(error.result)  # request order


def test_a_fatal_error_carries_every_propertys_result_in_request_order() -> None:
    error = bca.APIStatusError("not found (404)", status_code=404)
    reordered = Outcome("b", PROJECT, IDS[::-1], [answer(0, 3, REF)], {}, 0, IDS)
    with_partial(error, [outcome("a", [answer(0, 2, REF)]), reordered], consistency="refetch")
    assert list(error.results) == ["a", "b"]
    assert error.result is error.results["a"]
    assert list(error.results["a"]) == [100, 101]
    # Outcome "b" worked on the ids in another order; its result is in request order.
    assert list(error.results["b"]) == [100, 101, 102]


def test_a_streams_fatal_error_carries_nothing_it_handed_on_already() -> None:
    error = bca.AuthenticationError("token refused (401)", status_code=401)
    with_partial(error, [outcome("a", [answer(0, 2, REF)])], consistency="refetch", streaming=True)
    assert error.result is None
    assert error.results == {}


def test_an_error_raised_when_nothing_was_fetched_carries_the_empty_result() -> None:
    error = bca.RateLimitError("rate limited (429)", status_code=429)
    with pytest.raises(bca.RateLimitError):
        settle_all([outcome("a", [], failures={0: (10, error)})])
    assert error.result is not None
    assert len(error.result) == 0


def test_a_deadline_that_cut_everything_off_still_raises_incomplete_result() -> None:
    deadline = bca.DeadlineExceededError("the deadline passed")
    with pytest.raises(bca.IncompleteResultError) as excinfo:
        settle_all([outcome("a", [], failures={0: (10, deadline)})])
    assert excinfo.value.__cause__ is deadline
    assert len(excinfo.value.result) == 0
    assert excinfo.value.failures == dict.fromkeys(IDS, str(deadline))


# LowerLayerErrors


@pytest.mark.parametrize(
    ("error", "expected", "said"),
    [
        (httpx.ReadTimeout("timed out", request=REQUEST), bca.APITimeoutError, "timeout=5 s"),
        (httpx.ConnectTimeout("timed out", request=REQUEST), bca.APITimeoutError, "timeout=5 s"),
        (httpx.DecodingError("bad gzip", request=REQUEST), bca.MalformedResponseError, "bad gzip"),
        (httpx.ConnectError("refused", request=REQUEST), bca.APIConnectionError, "ConnectError"),
        (
            httpx.RemoteProtocolError("cut", request=REQUEST),
            bca.APIConnectionError,
            "RemoteProtocol",
        ),
        (OSError("no route to host"), bca.APIConnectionError, "OSError: no route to host"),
        (ConnectionResetError("reset"), bca.APIConnectionError, "ConnectionResetError"),
        (anyio.BrokenResourceError(), bca.APIConnectionError, "BrokenResourceError"),
        (ValueError("a bug"), None, ""),
        (KeyError("a bug"), None, ""),
        (asyncio.CancelledError(), None, ""),
        (KeyboardInterrupt(), None, ""),
    ],
)
def test_lower_layer_errors_become_ours_and_anything_else_passes(
    error: BaseException, expected: type[bca.BrainCircuitsError] | None, said: str
) -> None:
    ours = LowerLayerErrors("link_pre chunk 1/1", 5.0).translate(error)
    assert type(ours) is (type(None) if expected is None else expected)
    if ours is not None:
        assert str(ours).startswith("link_pre chunk 1/1: ")
        assert said in str(ours)
    if isinstance(ours, bca.MalformedResponseError):
        assert ours.transient


def test_a_caught_lower_layer_error_is_raised_after_the_block_without_context_or_cause() -> None:
    request = httpx.Request("POST", "https://x.test", headers={"Authorization": "Bearer tok-S"})
    errors = LowerLayerErrors("link_pre chunk 1/1", 5.0)
    with errors:
        raise httpx.ConnectError("refused", request=request)
    with pytest.raises(bca.APIConnectionError) as excinfo:
        assert errors.caught is not None
        raise errors.caught  # as Wire.send raises it, outside the block
    assert excinfo.value is errors.caught
    assert excinfo.value.__context__ is None
    assert excinfo.value.__cause__ is None
    with pytest.raises(ValueError, match="a bug"), errors:
        raise ValueError("a bug")


# error_for_status

DESCRIBE = "link_pre chunk 1/1"


def status_error(
    status: int,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    cave_token: Secret | None = CAVE,
) -> bca.APIStatusError:
    target = Target(
        "link_pre", PROJECT, httpx.URL("https://x.test/"), AuthHeaders(), TOKEN, cave_token
    )
    return error_for_status(
        status,
        httpx.Headers(headers or {}),
        body,
        encoding=None,
        describe=DESCRIBE,
        target=target,
        max_retry_after=60.0,
    )


@pytest.mark.parametrize("status", [301, 302])
def test_a_redirect_is_reported_with_its_location_and_not_followed(status: int) -> None:
    error = status_error(status, headers={"Location": "https://elsewhere.test/api"})
    assert type(error) is bca.APIStatusError
    assert error.status_code == status
    assert f"answered {status} redirecting to 'https://elsewhere.test/api'" in str(error)
    assert "Redirects are not followed" in str(error)


BY_CAVE = "the CAVE token (BRAINCIRCUITS_CAVE_TOKEN)"
BY_TOKEN = "the BrainCircuits token (token=)"


@pytest.mark.parametrize(
    ("status", "detail", "cave_token", "named", "not_named"),
    [
        (401, "invalid CAVE token", CAVE, f"{BY_CAVE} was not accepted (401)", "BrainCircuits"),
        (403, "cave: permission denied", CAVE, f"{BY_CAVE} was refused", "BrainCircuits"),
        (403, "Cave token missing", None, "CAVE token (none sent) was refused", "BrainCircuits"),
        (401, "invalid token", CAVE, f"{BY_TOKEN} was not accepted (401)", BY_CAVE),
        (403, "forbidden", None, f"{BY_TOKEN} was refused", "CAVE"),
    ],
)
def test_a_refused_token_is_named_by_its_source_and_never_shown(
    status: int, detail: str, cave_token: Secret | None, named: str, not_named: str
) -> None:
    body = f'{{"detail": "{detail}"}}'.encode()
    error = status_error(status, body, cave_token=cave_token)
    assert type(error) is bca.AuthenticationError
    assert error.status_code == status
    assert named in str(error)
    assert not_named not in str(error)
    assert f"Server said: {detail}" in str(error)
    assert TOKEN.reveal() not in str(error)
    assert CAVE.reveal() not in str(error)


def test_a_cave_token_sent_along_is_mentioned_when_the_braincircuits_token_is_refused() -> None:
    error = status_error(401, b'{"detail": "invalid token"}')
    assert "a CAVE token was sent too and may be the one at fault" in str(error)


@pytest.mark.parametrize(
    ("headers", "retry_after", "said"),
    [
        ({}, None, "rate limited by the server (429): slow down"),
        ({"Retry-After": "7"}, 7.0, "by the server (429) (Retry-After: 7 s): slow down"),
    ],
)
def test_a_429_is_a_rate_limit_error_with_the_servers_retry_after(
    headers: dict[str, str], retry_after: float | None, said: str
) -> None:
    error = status_error(429, b'{"detail": "slow down"}', headers)
    assert type(error) is bca.RateLimitError
    assert error.retry_after == retry_after
    assert said in str(error)
    assert "longer than max_retry_after" not in str(error)


TOO_LONG = "; the server asked to wait 600 s, longer than max_retry_after=60 s, so the chunk"


@pytest.mark.parametrize(
    ("status", "expected", "retry_after", "said"),
    [
        (503, bca.APIStatusError, 600.0, f"(Retry-After: 600 s){TOO_LONG} was not retried: busy"),
        (429, bca.RateLimitError, 600.0, f"(Retry-After: 600 s){TOO_LONG} was not retried: busy"),
        (503, bca.APIStatusError, 5.0, "answered 503 (Retry-After: 5 s): busy"),
    ],
)
def test_a_retry_after_longer_than_max_retry_after_is_said_to_be_why_there_was_no_retry(
    status: int, expected: type[bca.APIStatusError], retry_after: float, said: str
) -> None:
    error = status_error(status, b"busy", {"Retry-After": f"{retry_after:g}"})
    assert type(error) is expected
    assert error.retry_after == retry_after
    assert said in str(error)


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (
            404,
            " (check the property and project names, and base_url: the documented properties "
            "are size, link_pre, link_post, neurotransmitter, connectivity, nucleus, soma, "
            "mitochondria, dcv, the projects fruitfly_fafb_flywire, fruitfly_fanc_cave)",
        ),
        (413, " (too many segments in one request; lower chunk_size)"),
        (422, " (the server could not use the request; check the project name)"),
        (500, ""),
    ],
)
def test_a_status_with_a_known_cause_gets_a_hint(status: int, hint: str) -> None:
    error = status_error(status, b'{"detail": "what the server said"}')
    assert type(error) is bca.APIStatusError
    assert error.status_code == status
    answered = f"{DESCRIBE}: the server answered {status}"
    assert str(error) == f"{answered}{hint}: what the server said"


@pytest.mark.parametrize("status", [302, 401, 403, 404, 429, 500, 503])
@pytest.mark.parametrize(
    "body",
    [
        b'{"detail": "bad header Authorization: Bearer tok-SECRET-123456, cave-SECRET-654321"}',
        b"<html>echo: tok-SECRET-123456 / cave-SECRET-654321</html>",
    ],
)
def test_a_body_echoing_a_token_is_blanked_in_the_message_and_the_body(
    status: int, body: bytes
) -> None:
    error = status_error(status, body, {"Location": "https://elsewhere.test"})
    assert "<hidden>" in error.body
    for secret in (TOKEN.reveal(), CAVE.reveal()):
        assert secret not in str(error)
        assert secret not in error.body
        assert secret[-6:] not in str(error) + error.body


def test_a_disagreement_across_properties_names_each_failure_by_its_property() -> None:
    down, slow = bca.APIConnectionError("down"), bca.APITimeoutError("slow")
    outcomes = [
        outcome("a", [answer(0, 5, REF)], {5: (10, down)}),
        outcome("b", [answer(0, 5, NEW)], {5: (10, slow)}),
    ]
    with pytest.raises(bca.InconsistentMaterializationError) as caught:
        settle(outcomes, consistency="refetch", max_refetch_rounds=3)
    failures = caught.value.failures
    assert set(failures) == set(IDS[5:10])
    assert failures[IDS[5]] == "a: down; b: slow"


def test_one_incomplete_property_says_how_many_are_in_the_result() -> None:
    failed = bca.APIConnectionError("down")
    kept = [answer(0, 5, REF, missing={101})]
    with pytest.raises(bca.IncompleteResultError, match=r"The others \(5\) are in \.result"):
        settle([outcome("a", kept, {5: (10, failed)})], consistency="refetch", max_refetch_rounds=3)
