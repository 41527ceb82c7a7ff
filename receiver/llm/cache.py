"""Verdict cache keyed on a window's template fingerprint (not on raw text).

A recurring incident produces the same templates with new ids, timestamps and slightly different
counts, so the key is: service, template ids with log2-bucketed counts, new-template ids, and the
bucketed severity mix. Two implementations, both capped with an eviction rule: an in-memory LRU with
TTL, and Redis (a TTL per key plus a sorted-set index trimmed to `max_entries`, oldest first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


def bucket(n: int) -> int:
    """log2 bucket: 0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ..."""
    return 0 if n <= 0 else int(n).bit_length()


def fingerprint(service: str, template_counts: Mapping[int, int], new_templates: Sequence[int],
                severity_counts: Mapping[str, int], extra: str = "") -> str:
    doc = {
        "s": service,
        "t": sorted((int(t), bucket(c)) for t, c in template_counts.items() if c > 0),
        "n": sorted(int(t) for t in new_templates),
        "v": sorted((str(k).lower(), bucket(c)) for k, c in severity_counts.items() if c > 0),
        "x": extra,
    }
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


class VerdictCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def __len__(self) -> int: ...


class LruTtlCache:
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[str], None] | None = None) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if self._clock() >= item[0]:
                del self._data[key]
                if self._on_evict:
                    self._on_evict("ttl")
                return None
            self._data.move_to_end(key)
            return item[1]

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._data[key] = (self._clock() + self._ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)
                if self._on_evict:
                    self._on_evict("capacity")

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class RedisCache:
    """Redis-backed cache. Errors never propagate: a failing Redis is a miss (counted)."""

    def __init__(self, url: str, max_entries: int, ttl_s: float, prefix: str = "lla:llm:",
                 on_evict: Callable[[str], None] | None = None,
                 on_error: Callable[[], None] | None = None) -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._max = max_entries
        self._ttl = max(1, int(ttl_s))
        self._prefix = prefix
        self._index = prefix + "index"
        self._on_evict = on_evict
        self._on_error = on_error

    def _err(self, what: str, e: Exception) -> None:
        log.warning("redis cache %s failed: %s", what, e)
        if self._on_error:
            self._on_error()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self._r.get(self._prefix + key)
        except Exception as e:  # redis.RedisError, OSError
            self._err("get", e)
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        now = time.time()
        try:
            p = self._r.pipeline()
            p.set(self._prefix + key, json.dumps(value), ex=self._ttl)
            p.zadd(self._index, {key: now})
            p.zremrangebyscore(self._index, "-inf", now - self._ttl)  # index entries whose key expired
            p.zcard(self._index)
            size = p.execute()[-1]
            excess = int(size) - self._max
            if excess > 0:
                old = self._r.zpopmin(self._index, excess)
                if old:
                    names = [k.decode() if isinstance(k, bytes) else str(k) for k, _ in old]
                    self._r.delete(*[self._prefix + k for k in names])
                    if self._on_evict:
                        for _ in old:
                            self._on_evict("capacity")
        except Exception as e:
            self._err("put", e)

    def __len__(self) -> int:
        try:
            return int(self._r.zcard(self._index))
        except Exception as e:
            self._err("len", e)
            return 0

    def close(self) -> None:
        try:
            self._r.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
