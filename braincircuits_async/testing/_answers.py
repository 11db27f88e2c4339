"""The answers the fake serves, from `_fake_data`, with an optional answer cache."""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

from .. import _fake_data

__all__ = ["AnswerEncoder"]


class AnswerEncoder:
    """Encodes answers and single values, keeping up to ``cache_bytes`` of answers.

    The cache is an LRU keyed by (project, property, materialization, ids), so a
    repeated request costs a dict lookup; 0 turns it off. Thread-safe: the fake
    encodes outside its own lock, so the cache has one of its own.
    """

    def __init__(self, unknown_fraction: float, cache_bytes: int) -> None:
        self._threshold = _fake_data.unknown_threshold(unknown_fraction)
        self._cache_limit = cache_bytes
        self._cache: collections.OrderedDict[tuple[Any, ...], tuple[bytes, int]] = (
            collections.OrderedDict()
        )
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def value(self, project: str, prop: str, segment: int, timestamp: int) -> dict[str, Any] | None:
        """Return the value served for one segment, or None if it is unknown."""
        salt = _fake_data.presence_salt(project)
        if not _fake_data.is_known(segment, salt, self._threshold):
            return None
        generator = _fake_data.generator_for(prop)
        value_salt = _fake_data.property_salt(project, prop, timestamp)
        value: dict[str, Any] = json.loads(_fake_data.fragment_for(generator, value_salt, segment))
        return value

    def encode(
        self, project: str, prop: str, segments: list[int], timestamp: int
    ) -> tuple[bytes, int]:
        """Return the JSON body of the answer and the number of ids in its ``results``."""
        if len(set(segments)) != len(segments):
            # A JSON object cannot repeat a key; the real API answers each id once.
            segments = list(dict.fromkeys(segments))
        if not self._cache_limit:
            return self._encode_fresh(project, prop, segments, timestamp)
        key = (project, prop, timestamp, tuple(segments))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        answer = self._encode_fresh(project, prop, segments, timestamp)
        with self._lock:
            self._cache[key] = answer
            self._cache_bytes += len(answer[0])
            while self._cache_bytes > self._cache_limit and self._cache:
                _, (old, _) = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)
        return answer

    def _encode_fresh(
        self, project: str, prop: str, segments: list[int], timestamp: int
    ) -> tuple[bytes, int]:
        return _fake_data.encode_answer(
            segments,
            timestamp,
            _fake_data.generator_for(prop),
            _fake_data.property_salt(project, prop, timestamp),
            _fake_data.presence_salt(project),
            self._threshold,
        )
