"""BoundedQueue: the hand-off between the receive path and the analysis stages.

Ingest never waits on analysis: `consume_traces` / `consume_logs` only append to a bounded in-memory
queue (capacity counted in items = spans + log records, and in bytes of serialized requests, so a few
requests with huge attributes cannot exhaust memory either) and return. Worker thread(s) deliver each
request to every downstream consumer. When the queue is full the caller gets `RetryableError` (the
receiver answers UNAVAILABLE + RetryInfo / 503 + Retry-After) -- data is never dropped silently.

Wire bytes pass-through: the receiver may hand over the request's original serialized bytes with it
(`consume_traces(req, raw=data)`, only when validation kept every record, so they encode exactly `req`).
A downstream consumer whose `consume_traces` / `consume_logs` has a `raw` parameter (detected once, when it
is registered) gets them as `raw=` (None when there are none) and can forward them instead of
re-serializing; other consumers get the request alone. The bytes count toward `capacity_bytes` once: their
length is the request's size.

`check_room(signal, size_bytes)` lets the receiver refuse a request while the queue is full BEFORE decoding
it (a decode costs as much as the rest of the receive path): it raises `RetryableError` when no request of
that size could be accepted now (queue stopped, item capacity reached, or the bytes would not fit).

A request larger than the whole capacity (items or bytes) is accepted when the queue is empty (otherwise
it could never be accepted), so a capacity may be exceeded by at most one request.

A consumer that raises is logged (rate-limited) and counted in
`llm_log_analyzer_queue_consumer_errors_total`; the worker keeps going and the other consumers still get
the request.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, non_negative, positive, require
from receiver.errors import RetryableError
from receiver.model import (
    ExportLogsServiceRequest,
    ExportTraceServiceRequest,
    LogsConsumer,
    TracesConsumer,
)

log = logging.getLogger(__name__)

TRACES = "traces"
LOGS = "logs"


@dataclass
class QueueConfig(StageConfig):
    capacity_items: int = 100_000  # spans + log records waiting for delivery
    capacity_bytes: int = 64 * 1024 * 1024  # serialized size of the requests waiting for delivery
    workers: int = 1  # >1 only if every downstream consumer is thread-safe
    retry_after_s: float = 1.0  # suggested to clients when full
    shutdown_timeout_s: float = 30.0  # how long shutdown waits to deliver what is queued

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.capacity_items, int), "queue.capacity_items", "must be an integer")
        positive(self.capacity_items, "queue.capacity_items")
        require(isinstance(self.capacity_bytes, int), "queue.capacity_bytes", "must be an integer")
        positive(self.capacity_bytes, "queue.capacity_bytes")
        require(
            isinstance(self.workers, int) and 1 <= self.workers <= 64,
            "queue.workers",
            f"must be an integer in 1..64, got {self.workers!r}",
        )
        positive(self.retry_after_s, "queue.retry_after_s")
        non_negative(self.shutdown_timeout_s, "queue.shutdown_timeout_s")


def accepts_raw(consumer: object, method: str) -> bool:
    """True if `consumer.method` takes a `raw` keyword argument (the request's wire bytes)."""
    fn = getattr(consumer, method, None)
    if fn is None:
        return False
    try:
        p = inspect.signature(fn).parameters.get("raw")
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def count_spans(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def count_log_records(req: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


class BoundedQueue:
    """TracesConsumer + LogsConsumer that buffers requests and delivers them on worker threads."""

    def __init__(
        self,
        config: QueueConfig,
        traces_consumers: list[TracesConsumer] | None = None,
        logs_consumers: list[LogsConsumer] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        config.validate()
        self.config = config
        # (consumer, takes raw=) pairs: the signature is inspected once, at registration
        self._traces: list[tuple[TracesConsumer, bool]] = []
        self._logs: list[tuple[LogsConsumer, bool]] = []
        for tc in traces_consumers or []:
            self.add_traces_consumer(tc)
        for lc in logs_consumers or []:
            self.add_logs_consumer(lc)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # workers wait here for requests
        self._done = threading.Condition(self._lock)  # drain() waits here for deliveries
        # entries: (seq, kind, request, items, size_bytes, raw wire bytes or None)
        self._q: collections.deque[tuple[int, str, Any, int, int, bytes | None]] = collections.deque()
        self._items = 0
        self._bytes = 0
        self._next_seq = 0
        self._in_flight: set[int] = set()
        self._running = False
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._last_error_log: dict[str, float] = {}

        r = self.registry
        self._m_size = Gauge(
            "llm_log_analyzer_queue_size_items", "Spans + log records waiting in the ingest queue", registry=r
        )
        self._m_size.set_function(lambda: self._items)
        cap = Gauge("llm_log_analyzer_queue_capacity_items", "Capacity of the ingest queue", registry=r)
        cap.set(config.capacity_items)
        size_b = Gauge(
            "llm_log_analyzer_queue_size_bytes",
            "Serialized bytes of the requests waiting in the ingest queue",
            registry=r,
        )
        size_b.set_function(lambda: self._bytes)
        cap_b = Gauge(
            "llm_log_analyzer_queue_capacity_bytes", "Capacity of the ingest queue in bytes", registry=r
        )
        cap_b.set(config.capacity_bytes)
        self._m_enqueued = Counter(
            "llm_log_analyzer_queue_enqueued_items",
            "Items accepted into the ingest queue",
            ["signal"],
            registry=r,
        )
        self._m_refused = Counter(
            "llm_log_analyzer_queue_refused_items",
            "Items refused because the queue was full or stopped (client told to retry)",
            ["signal"],
            registry=r,
        )
        self._m_refused_undecoded = Counter(
            "llm_log_analyzer_queue_refused_undecoded_requests",
            "Requests refused before they were decoded because the queue was full or stopped (their items "
            "are unknown, so not in queue_refused_items)",
            ["signal"],
            registry=r,
        )
        self._m_delivered = Counter(
            "llm_log_analyzer_queue_delivered_items",
            "Items handed to downstream consumers",
            ["signal"],
            registry=r,
        )
        self._m_errors = Counter(
            "llm_log_analyzer_queue_consumer_errors",
            "Exceptions raised by downstream consumers",
            ["signal", "consumer"],
            registry=r,
        )

        self._c_enqueued = {k: self._m_enqueued.labels(k) for k in (TRACES, LOGS)}
        self._c_delivered = {k: self._m_delivered.labels(k) for k in (TRACES, LOGS)}

    # --- consumers can be added before start (composition root) ------------------------------
    def add_traces_consumer(self, consumer: TracesConsumer) -> None:
        self._traces.append((consumer, accepts_raw(consumer, "consume_traces")))

    def add_logs_consumer(self, consumer: LogsConsumer) -> None:
        self._logs.append((consumer, accepts_raw(consumer, "consume_logs")))

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
            self._stopping = False
        for i in range(self.config.workers):
            t = threading.Thread(target=self._work, name=f"ingest-queue-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def shutdown(self) -> None:
        """Stop accepting, deliver what is queued (up to shutdown_timeout_s), stop the workers."""
        with self._cond:
            if not self._running:
                return
            self._running = False
        if not self.drain(self.config.shutdown_timeout_s):
            log.error("ingest queue: shutdown timed out with %d items undelivered", self._items)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._workers:
            t.join(timeout=max(1.0, self.config.shutdown_timeout_s))
        self._workers.clear()

    # --- the consuming side ------------------------------------------------------------------
    def consume_traces(
        self,
        request: ExportTraceServiceRequest,
        items: int | None = None,
        size_bytes: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        """`items` / `size_bytes` (serialized size) may be passed by a caller that knows them already.
        `raw`: the request's own wire bytes (must encode exactly `request`), handed to consumers that take
        a `raw` argument; its length is the size when `size_bytes` is not given (counted once)."""
        if size_bytes is None:
            size_bytes = len(raw) if raw is not None else request.ByteSize()
        self._put(TRACES, request, count_spans(request) if items is None else items, size_bytes, raw)

    def consume_logs(
        self,
        request: ExportLogsServiceRequest,
        items: int | None = None,
        size_bytes: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        if size_bytes is None:
            size_bytes = len(raw) if raw is not None else request.ByteSize()
        self._put(LOGS, request, count_log_records(request) if items is None else items, size_bytes, raw)

    def check_room(self, kind: str, size_bytes: int) -> None:
        """Raise RetryableError if a (not yet decoded) request of `size_bytes` serialized bytes with at
        least one item would be refused now. Never refuses what `_put` would accept (a request with
        items), so calling it first only saves the decode of a request that cannot get in."""
        with self._lock:
            cfg = self.config
            if not self._running:
                why = "ingest queue is not running"
            elif self._items >= cfg.capacity_items or (
                self._items > 0 and self._bytes + size_bytes > cfg.capacity_bytes
            ):
                why = (
                    f"ingest queue full ({self._items} of {cfg.capacity_items} items, "
                    f"{self._bytes} of {cfg.capacity_bytes} bytes queued)"
                )
            else:
                return
        self._m_refused_undecoded.labels(kind).inc()
        raise RetryableError(why, cfg.retry_after_s)

    def _put(self, kind: str, request: Any, items: int, size_bytes: int, raw: bytes | None) -> None:
        if items <= 0:
            return
        with self._cond:
            if not self._running:
                self._m_refused.labels(kind).inc(items)
                raise RetryableError("ingest queue is not running", self.config.retry_after_s)
            cfg = self.config
            if self._items > 0 and (
                self._items + items > cfg.capacity_items or self._bytes + size_bytes > cfg.capacity_bytes
            ):
                self._m_refused.labels(kind).inc(items)
                raise RetryableError(
                    f"ingest queue full ({self._items} of {cfg.capacity_items} items, "
                    f"{self._bytes} of {cfg.capacity_bytes} bytes queued)",
                    cfg.retry_after_s,
                )
            self._q.append((self._next_seq, kind, request, items, size_bytes, raw))
            self._next_seq += 1
            self._items += items
            self._bytes += size_bytes
            if self._idle_workers:
                self._cond.notify()
        self._c_enqueued[kind].inc(items)

    # --- introspection -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._items

    def _lowest_outstanding(self) -> int:
        low = self._next_seq
        if self._q:
            low = min(low, self._q[0][0])
        if self._in_flight:
            low = min(low, min(self._in_flight))
        return low

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued before this call has been delivered. True if it was."""
        with self._cond:
            target = self._next_seq
            if self._lowest_outstanding() >= target:
                return True
            if not self._workers:
                return False
            return self._done.wait_for(lambda: self._lowest_outstanding() >= target, timeout)

    # --- workers -----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._stopping:
                    self._idle_workers += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle_workers -= 1
                if not self._q:
                    return
                seq, kind, request, items, size_bytes, raw = self._q.popleft()
                self._in_flight.add(seq)
            try:
                self._deliver(kind, request, raw)
            finally:
                with self._cond:
                    self._in_flight.discard(seq)
                    self._items -= items
                    self._bytes -= size_bytes
                    self._done.notify_all()
                self._c_delivered[kind].inc(items)

    def _deliver(self, kind: str, request: Any, raw: bytes | None) -> None:
        if kind == TRACES:
            for c, takes_raw in self._traces:
                try:
                    if takes_raw:
                        c.consume_traces(request, raw=raw)  # type: ignore[call-arg]
                    else:
                        c.consume_traces(request)
                except Exception as exc:  # noqa: BLE001 - a consumer must never kill the worker
                    self._consumer_failed(kind, c, exc)
        else:
            for lc, takes_raw in self._logs:
                try:
                    if takes_raw:
                        lc.consume_logs(request, raw=raw)  # type: ignore[call-arg]
                    else:
                        lc.consume_logs(request)
                except Exception as exc:  # noqa: BLE001
                    self._consumer_failed(kind, lc, exc)

    def _consumer_failed(self, kind: str, consumer: object, exc: Exception) -> None:
        name = type(consumer).__name__
        self._m_errors.labels(kind, name).inc()
        now = time.monotonic()
        if now - self._last_error_log.get(name, -1e9) >= 10.0:  # at most one log line per 10 s per consumer
            self._last_error_log[name] = now
            log.error("ingest queue: %s consumer %s failed: %s", kind, name, exc, exc_info=exc)
