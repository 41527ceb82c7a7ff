"""The project's own gRPC API (`proto_gen/llm_log_analyzer/v1/analyzer.proto`), served on the
OTLP grpc.aio server, and the live fan-out of findings behind `WatchFindings`.

Wiring (composition root):

    broadcaster = FindingsBroadcaster(BroadcastConfig(), registry)    # a FindingsConsumer
    fanout.add(broadcaster)
    servicer = AnalyzerServicer(list_findings=store.list_findings,       # (limit, event_name, since_ns)
                                graph_snapshot=graph.snapshot, broadcaster=broadcaster)
    otlp_receiver.add_grpc_service(lambda server: add_analyzer_service(server, servicer))
    ...
    broadcaster.shutdown()   # before stopping the gRPC server: ends open WatchFindings streams

`FindingsBroadcaster.consume_findings` never blocks: each subscriber has a bounded queue; when a
subscriber reads too slowly, its OLDEST queued findings are dropped, counted in
`llm_log_analyzer_api_watch_dropped_total`, and the subscriber is told via `missed_before` on the
next finding it receives.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from proto_gen.llm_log_analyzer.v1 import analyzer_pb2, analyzer_pb2_grpc
from receiver.component import StageConfig, positive, require
from receiver.model import Finding

log = logging.getLogger(__name__)

# (limit, event_name, since_ns) -> findings (Finding objects, or dicts in the Finding.to_dict() shape)
ListFindings = Callable[[int, str | None, int | None], Sequence[Finding | dict[str, Any]]]
GraphSnapshot = Callable[[], dict[str, Any]]


@dataclass
class BroadcastConfig(StageConfig):
    max_subscribers: int = 64  # more concurrent WatchFindings calls get RESOURCE_EXHAUSTED
    subscriber_queue: int = 1000  # findings buffered per subscriber before the oldest are dropped
    list_default_limit: int = 100
    list_max_limit: int = 1000

    def validate(self) -> None:
        super().validate()
        for key in ("max_subscribers", "subscriber_queue", "list_default_limit", "list_max_limit"):
            positive(getattr(self, key), f"api_grpc.{key}")
            require(isinstance(getattr(self, key), int), f"api_grpc.{key}", "must be an integer")
        require(self.list_default_limit <= self.list_max_limit, "api_grpc.list_default_limit",
                "must be <= list_max_limit")


class TooManySubscribers(Exception):
    pass


class Subscription:
    """One live subscriber: a bounded FIFO filled by producer threads and drained by one reader
    (sync `get()` or async `next_batch()`)."""

    def __init__(self, owner: FindingsBroadcaster, capacity: int, event_name: str | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self._owner = owner
        self.capacity = capacity
        self.event_name = event_name or None
        self._items: deque[Finding] = deque()
        self._missed = 0  # dropped since the reader last took items (all older than what is queued)
        self.lost = 0  # dropped in total
        self.closed = False
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._loop = loop
        self._aevent = asyncio.Event() if loop is not None else None
        self._wake_pending = False

    def offer(self, findings: Sequence[Finding]) -> int:
        """Queue findings (called by producers, never blocks). Returns how many were dropped."""
        dropped = 0
        with self._mu:
            if self.closed:
                return 0
            for f in findings:
                if self.event_name is not None and f.event_name != self.event_name:
                    continue
                if len(self._items) >= self.capacity:
                    self._items.popleft()
                    dropped += 1
                self._items.append(f)
            self._missed += dropped
            self.lost += dropped
            has_items = bool(self._items)
            self._cond.notify_all()
            wake = has_items and self._loop is not None and not self._wake_pending
            if wake:
                self._wake_pending = True
        if wake:
            self._wake_async()
        return dropped

    def _wake_async(self) -> None:
        assert self._loop is not None and self._aevent is not None
        try:
            self._loop.call_soon_threadsafe(self._aevent.set)
        except RuntimeError:  # the reader's loop is closed: nobody will read any more
            self.close()

    def _take(self) -> list[tuple[Finding, int]]:
        items = list(self._items)
        self._items.clear()
        out = [(f, 0) for f in items]
        if out:
            out[0] = (out[0][0], self._missed)
            self._missed = 0
        self._wake_pending = False
        return out

    def get(self, timeout: float | None = None) -> list[tuple[Finding, int]] | None:
        """Block until findings arrive: [(finding, missed_before)], [] on timeout, None when closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if self._items:
                return self._take()
            return None if self.closed else []

    async def next_batch(self) -> list[tuple[Finding, int]] | None:
        """Async variant for a subscription created with a loop; None when closed."""
        assert self._aevent is not None, "subscription was created without an event loop"
        while True:
            with self._mu:
                if self._items:
                    self._aevent.clear()
                    return self._take()
                if self.closed:
                    return None
                self._aevent.clear()
                self._wake_pending = False
            await self._aevent.wait()

    def pending(self) -> int:
        with self._mu:
            return len(self._items)

    def close(self) -> None:
        with self._mu:
            if self.closed:
                return
            self.closed = True
            self._items.clear()
            self._cond.notify_all()
        self._owner._forget(self)
        if self._loop is not None and self._aevent is not None:
            try:
                self._loop.call_soon_threadsafe(self._aevent.set)
            except RuntimeError:
                pass


class FindingsBroadcaster:
    """A FindingsConsumer that fans findings out to live subscribers (bounded, drop-oldest)."""

    def __init__(self, config: BroadcastConfig | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or BroadcastConfig()
        self.config.validate()
        registry = registry if registry is not None else CollectorRegistry()
        p = "llm_log_analyzer_api_watch"
        self.m_subscribers = Gauge(f"{p}_subscribers", "Live WatchFindings subscribers", registry=registry)
        self.m_published = Counter(f"{p}_published", "Findings offered to live subscribers",
                                   registry=registry)
        self.m_dropped = Counter(f"{p}_dropped", "Findings a slow subscriber lost (oldest first)",
                                 registry=registry)
        self.m_rejected = Counter(f"{p}_rejected", "Subscriptions refused (max_subscribers reached)",
                                  registry=registry)
        self._subs: set[Subscription] = set()
        self._mu = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        """Close every subscription (their streams end); later subscribe() calls are refused."""
        with self._mu:
            self._stopped = True
            subs = list(self._subs)
        for s in subs:
            s.close()

    def subscribe(self, event_name: str | None = None,
                  loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        with self._mu:
            if self._stopped or len(self._subs) >= self.config.max_subscribers:
                self.m_rejected.inc()
                raise TooManySubscribers(
                    "shutting down" if self._stopped
                    else f"too many watchers (max_subscribers={self.config.max_subscribers})")
            sub = Subscription(self, self.config.subscriber_queue, event_name, loop)
            self._subs.add(sub)
            self.m_subscribers.set(len(self._subs))
        return sub

    def _forget(self, sub: Subscription) -> None:
        with self._mu:
            self._subs.discard(sub)
            self.m_subscribers.set(len(self._subs))

    @property
    def subscribers(self) -> int:
        with self._mu:
            return len(self._subs)

    def consume_findings(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        with self._mu:
            subs = list(self._subs)
        self.m_published.inc(len(findings))
        dropped = 0
        for s in subs:
            dropped += s.offer(findings)
        if dropped:
            self.m_dropped.inc(dropped)


# --- conversion ---------------------------------------------------------------------------
def to_value(v: Any) -> analyzer_pb2.Value:
    out = analyzer_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int) and -(2**63) <= v < 2**63:
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, (list, tuple)):
        out.string_array_value.values.extend(x if isinstance(x, str) else str(x) for x in v)
    else:
        out.string_value = "" if v is None else str(v)
    return out


def finding_to_proto(f: Finding, missed_before: int = 0) -> analyzer_pb2.Finding:
    msg = analyzer_pb2.Finding(
        id=f.id, event_name=f.event_name, time_unix_nano=max(0, int(f.time_ns)), body=f.body,
        trace_id=f.trace_id, span_id=f.span_id, missed_before=missed_before,
    )
    for k, v in f.attributes.items():
        msg.attributes[str(k)].CopyFrom(to_value(v))
    return msg


def from_value(v: analyzer_pb2.Value) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_array_value":
        return list(v.string_array_value.values)
    return getattr(v, kind) if kind else None


def finding_from_proto(msg: analyzer_pb2.Finding) -> Finding:
    attributes = {k: from_value(v) for k, v in msg.attributes.items()}
    return Finding(event_name=msg.event_name, attributes=attributes,
                   body=msg.body, time_ns=msg.time_unix_nano, id=msg.id, trace_id=msg.trace_id,
                   span_id=msg.span_id)


_EDGE_FIELDS = ("source", "target", "calls", "errors", "connection_type", "p50_ms", "p95_ms", "p99_ms",
                "first_seen", "last_seen")


def _num(v: Any, default: float = 0.0) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else default


def graph_to_proto(snapshot: dict[str, Any]) -> analyzer_pb2.Graph:
    g = analyzer_pb2.Graph()
    for n in snapshot.get("nodes", []):
        node = g.nodes.add(id=str(n.get("id", "")))
        for k, v in n.items():
            if k != "id" and v is not None:
                node.attributes[str(k)].CopyFrom(to_value(v))
    for e in snapshot.get("edges", []):
        edge = g.edges.add(
            source=str(e.get("source", "")), target=str(e.get("target", "")),
            calls=max(0, int(e.get("calls") or 0)), errors=max(0, int(e.get("errors") or 0)),
            connection_type=str(e.get("connection_type") or ""),
            first_seen=_num(e.get("first_seen")), last_seen=_num(e.get("last_seen")),
        )
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            if isinstance(e.get(q), (int, float)) and math.isfinite(e[q]):
                setattr(edge, q, float(e[q]))
        for k, v in e.items():
            if k not in _EDGE_FIELDS and v is not None:
                edge.attributes[str(k)].CopyFrom(to_value(v))
    return g


# --- the servicer (grpc.aio) ------------------------------------------------------------------
class AnalyzerServicer(analyzer_pb2_grpc.AnalyzerServicer):
    """`llm_log_analyzer.v1.Analyzer` for a grpc.aio server. The callables run in worker threads
    (`asyncio.to_thread`), so a slow store never stalls the OTLP event loop."""

    def __init__(self, list_findings: ListFindings, graph_snapshot: GraphSnapshot,
                 broadcaster: FindingsBroadcaster) -> None:
        self._list = list_findings
        self._graph = graph_snapshot
        self.broadcaster = broadcaster
        self.config = broadcaster.config

    async def ListFindings(self, request: analyzer_pb2.ListFindingsRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> analyzer_pb2.ListFindingsResponse:
        limit = request.limit or self.config.list_default_limit
        if limit > self.config.list_max_limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"limit must be between 1 and {self.config.list_max_limit}, got {limit}")
        try:
            found = await asyncio.to_thread(self._list, limit, request.event_name or None,
                                            request.since_unix_nano or None)
        except Exception as e:
            log.exception("ListFindings failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"listing findings failed: {e}")
        try:
            items = [f if isinstance(f, Finding) else Finding.from_dict(f) for f in list(found)[:limit]]
            converted = [finding_to_proto(f) for f in items]
        except Exception as e:
            log.exception("ListFindings: bad finding from the store")
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot convert a stored finding: {e}")
        return analyzer_pb2.ListFindingsResponse(findings=converted)

    async def WatchFindings(self, request: analyzer_pb2.WatchFindingsRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext):
        try:
            sub = self.broadcaster.subscribe(request.event_name or None, loop=asyncio.get_running_loop())
        except TooManySubscribers as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        try:
            while True:
                batch = await sub.next_batch()
                if batch is None:
                    return
                for f, missed in batch:
                    yield finding_to_proto(f, missed)
        finally:
            sub.close()

    async def GetGraph(self, request: analyzer_pb2.GetGraphRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> analyzer_pb2.Graph:
        try:
            snap = await asyncio.to_thread(self._graph)
        except Exception as e:
            log.exception("GetGraph failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"graph snapshot failed: {e}")
        return graph_to_proto(snap)


def add_analyzer_service(server: grpc.aio.Server, servicer: AnalyzerServicer) -> None:
    analyzer_pb2_grpc.add_AnalyzerServicer_to_server(servicer, server)
