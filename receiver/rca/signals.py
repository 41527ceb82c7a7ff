"""Per-service and per-edge signals for root-cause ranking, computed from traces (and logs).

`SpanSignals` is a TracesConsumer (and optionally a LogsConsumer). It buffers spans per trace
(bounded, event-time idle timeout), and when a trace is complete it adds to event-time buckets:

per node (service, or virtual node for uninstrumented peers such as a database):
  calls / errors / latency of calls INTO it (its SERVER/CONSUMER spans; for a virtual node the
  client spans that target it), its exclusive (self) time (span duration minus the time spent in
  its own outgoing calls), `deep`: how many failing traces end at it (its span is the deepest span
  with an ERROR status), and ERROR/WARN log counts;
per edge (caller -> callee):
  calls, errors, client latency, server latency, the client-minus-server gap (network and queueing
  between them), and `blamed`: failing spans of the caller that are the deepest failure and whose
  error message names the callee (a wrong answer from the callee, seen only by the caller).

Everything is capped (traces, spans per trace, nodes, edges, buckets per series, samples) and
evictions are counted in Prometheus metrics.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, positive, require
from receiver.otlp.spanwire import signal_rows

K_INTERNAL = Span.SPAN_KIND_INTERNAL
K_SERVER = Span.SPAN_KIND_SERVER
K_CLIENT = Span.SPAN_KIND_CLIENT
K_PRODUCER = Span.SPAN_KIND_PRODUCER
K_CONSUMER = Span.SPAN_KIND_CONSUMER
ERR = Status.STATUS_CODE_ERROR
UNSET = Status.STATUS_CODE_UNSET

PEER_ATTRIBUTES = (
    "peer.service", "server.address", "net.peer.name", "rpc.service", "messaging.destination.name",
    "db.namespace", "db.name", "db.system.name", "db.system",
)


# node bucket slots
N_CALLS, N_ERRORS, N_LAT, N_SELF, N_SELF_N, N_DEEP, N_LOG_ERR, N_LOG_WARN = range(8)
N_SLOTS = 8
# edge bucket slots
E_CALLS, E_ERRORS, E_CLIENT_LAT, E_SERVER_LAT, E_GAP, E_GAP_N, E_BLAMED = range(7)
E_SLOTS = 7


@dataclass
class SignalsConfig(StageConfig):
    bucket_s: float = 10.0  # event-time bucket width
    max_buckets: int = 720  # per series; the oldest bucket is evicted
    max_nodes: int = 1000
    max_edges: int = 5000
    trace_idle_s: float = 5.0  # a trace is complete when none of its spans ended in the last idle seconds
    # ... of event time AND none arrived in the last trace_wall_idle_s seconds of wall time (exporter
    # and Collector batching delays); this only delays the analysis, never changes its result
    trace_wall_idle_s: float = 2.0
    max_traces: int = 20000  # in-flight traces; the oldest is analysed early when full
    max_spans_per_trace: int = 2000
    max_samples: int = 20  # per service: recent failing spans / error log lines kept as evidence
    # the callee's name when no server span answers (databases, caches, uninstrumented peers);
    # the same precedence as the service graph's (Tempo's, widened)
    peer_attributes: list[str] = field(default_factory=lambda: list(PEER_ATTRIBUTES))
    # load shedding, only while the pipeline says analysis is behind (`set_shedding`): of the
    # traces without any failing span, 1 in this many (by trace id) is analysed and counted that many
    # times; every trace with a failing span is analysed. 1: never shed.
    shed_keep_one_in: int = 8

    def validate(self) -> None:
        super().validate()
        positive(self.bucket_s, "signals.bucket_s")
        for key in ("max_buckets", "max_nodes", "max_edges", "max_traces", "max_spans_per_trace",
                    "max_samples"):
            v = getattr(self, key)
            require(isinstance(v, int) and v > 0, f"signals.{key}", f"must be an int > 0, got {v!r}")
        require(self.trace_idle_s >= 0, "signals.trace_idle_s", "must be >= 0")
        require(self.trace_wall_idle_s >= 0, "signals.trace_wall_idle_s", "must be >= 0")
        require(bool(self.peer_attributes), "signals.peer_attributes", "must not be empty")
        require(isinstance(self.shed_keep_one_in, int) and self.shed_keep_one_in >= 1,
                "signals.shed_keep_one_in", f"must be an int >= 1, got {self.shed_keep_one_in!r}")


# A buffered span is a plain tuple (service, span_id, parent_id, kind, start, end, error, message,
# peer, messaging): building one costs a quarter of a slotted object's __init__, and the cyclic GC
# stops tracking it after its first pass (buffered spans are most of the live objects). `peer` is
# the virtual peer name of a CLIENT span ("" if none).
_SERVICE, _SPAN_ID, _PARENT, _KIND, _START, _END, _ERROR, _MESSAGE, _PEER, _MESSAGING = range(10)


@dataclass(slots=True)
class _Sp:
    """A read-only view of one buffered span row (for tests and debugging; see _Trace.spans)."""

    service: str
    span_id: bytes
    parent_id: bytes
    kind: int
    start: int
    end: int
    error: bool
    message: str
    peer: str  # virtual peer name for CLIENT spans ("" if none)
    messaging: bool


class _Trace(list):
    """A buffered trace: the list of its span rows (see _SERVICE ...) with its bookkeeping in slots
    (one object per trace, not a list and its holder: fewer objects for the GC's full passes)."""

    __slots__ = ("last_end", "first_start", "last_wall", "born", "seq")

    def __init__(self, born: int) -> None:
        super().__init__()
        self.last_end = 0
        self.first_start = 0
        self.last_wall = 0.0  # monotonic time of the last span received
        self.born = born  # arrival order (expired traces are analysed in it)
        self.seq = 0  # version of its current expiry-heap entry (older entries are stale)

    @property
    def spans(self) -> list[_Sp]:
        return [_Sp(*r) for r in self]


@dataclass(frozen=True, slots=True)
class Sample:
    """A piece of evidence: a failing span or an error log line."""

    service: str
    time_ns: int
    trace_id: str
    span_id: str
    text: str


class _Series:
    """Event-time buckets (start_ns -> slots), capped at max_buckets (the oldest is evicted)."""

    __slots__ = ("buckets", "nslots", "exemplars")

    def __init__(self, nslots: int) -> None:
        self.buckets: dict[int, list[float]] = {}
        self.nslots = nslots
        # per bucket: the slowest span (value ns, trace id, span id); the ids are hexed when read
        self.exemplars: dict[int, tuple[int, bytes, bytes]] = {}

    def exemplar(self, b: int, value: int, trace_id: bytes, span_id: bytes) -> None:
        if b not in self.buckets:
            return
        cur = self.exemplars.get(b)
        if cur is None or value > cur[0]:
            self.exemplars[b] = (value, trace_id, span_id)

    def slot(self, b: int, cap: int, evicted: Counter) -> list[float]:
        row = self.buckets.get(b)
        if row is None:
            row = [0.0] * self.nslots
            self.buckets[b] = row
            if len(self.buckets) > cap:
                oldest = min(self.buckets)
                del self.buckets[oldest]
                self.exemplars.pop(oldest, None)
                evicted.labels("bucket").inc()
        return row


def _attr_str(attrs: Iterable, keys: list[str]) -> str:
    found: dict[str, str] = {}
    for kv in attrs:
        if kv.key in keys:
            v = kv.value
            s = v.string_value if v.HasField("string_value") else ""
            if s:
                found[kv.key] = s
    for k in keys:
        if k in found:
            return found[k]
    return ""


def _err_below(sp: tuple, children: dict[bytes, list[tuple]], memo: dict[bytes, bool],
               depth: int = 0) -> bool:
    """Does any descendant of span row `sp` fail? Memoised per span id, walked at most 200 deep."""
    sid = sp[_SPAN_ID]
    if sid in memo:
        return memo[sid]
    memo[sid] = False  # in progress: a parent cycle in client data reads "no failure below"
    res = False
    if depth < 200:
        for c in children.get(sid, ()):
            if c[_ERROR] or _err_below(c, children, memo, depth + 1):
                res = True  # no break: the other children's answers are memoised too
    memo[sid] = res
    return res


def _union_len(intervals: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The length of the union of the intervals clipped to [lo, hi)."""
    if len(intervals) == 1:  # the common case: one outgoing call
        s, e = intervals[0]
        if s < lo:
            s = lo
        if e > hi:
            e = hi
        return e - s if e > s else 0
    total = 0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if s < lo:
            s = lo
        if e > hi:
            e = hi
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s  # type: ignore[operator]
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e is not None:
        total += cur_e - cur_s  # type: ignore[operator]
    return total


class SpanSignals:
    """Collects the ranking signals. Thread-safe; all reads return copies."""

    def __init__(self, config: SignalsConfig | None = None,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        cfg = config if config is not None else SignalsConfig()
        cfg.validate()
        self.config: SignalsConfig = cfg
        self._clock = clock
        self._bucket_ns = int(cfg.bucket_s * 1e9)
        self._idle_ns = int(cfg.trace_idle_s * 1e9)
        self._lock = threading.RLock()
        self._traces: OrderedDict[bytes, _Trace] = OrderedDict()
        # expiry index: each buffered trace has one current entry, in _by_end (last_end, seq, id) until
        # its last end is older than the event-time bound, then in _by_wall (last_wall, seq, id) until
        # its last arrival is older than the wall-time bound; entries of updated or gone traces are
        # stale (seq differs) and dropped when met or when the heaps are compacted
        self._by_end: list[tuple[int, int, bytes]] = []
        self._by_wall: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._nodes: OrderedDict[str, _Series] = OrderedDict()
        self._edges: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._edge_type: dict[tuple[str, str], str] = {}
        self._virtual: set[str] = set()
        self._span_samples: dict[str, deque[Sample]] = {}
        self._log_samples: dict[str, deque[Sample]] = {}
        self._watermark = 0
        self._versions: dict[str, str] = {}
        self._instrumented: dict[str, None] = {}  # service.name values seen (insertion ordered)
        self._canon_of: dict[str, str] = {}  # _canon's answers while _instrumented is unchanged
        self._deploys: dict[str, deque[tuple[int, str, str]]] = {}
        self._min_time = 0
        reg = registry if registry is not None else CollectorRegistry()
        self.m_spans = Counter("rca_signals_spans", "Spans consumed by the RCA signals", registry=reg)
        self.m_traces = Counter("rca_signals_traces", "Traces analysed by the RCA signals (or shed)",
                                registry=reg)
        self.m_shed = Counter("rca_signals_shed_traces", "Traces without failures left out of the analysis "
                              "while it was behind (each analysed one counts for signals.shed_keep_one_in)",
                              registry=reg)
        self.shedding = False  # set by the pipeline (set_shedding) while analysis is behind
        self.m_evicted = Counter("rca_signals_evicted", "Items evicted by caps", ["what"], registry=reg)
        self.m_inflight = Gauge("rca_signals_inflight_traces", "Traces buffered", registry=reg)
        self.m_bad = Counter("rca_signals_bad_spans", "Spans skipped (missing ids/times)", registry=reg)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        self.flush()

    # --- consumers -----------------------------------------------------------------------
    def consume_traces(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> None:
        """`raw`: the request's wire bytes when the caller has them (else the request is serialized:
        reading the wire bytes in C is cheaper than reading protobuf fields from Python)."""
        self.consume_wire(raw if raw is not None else request.SerializeToString())

    def consume_wire(self, raw: bytes | memoryview) -> int:
        """Add the spans of one ExportTraceServiceRequest given as wire bytes; returns how many spans
        it held. Raises spanwire.WireError on bytes that are not one (nothing is added then)."""
        resources, total = signal_rows(raw, self.config.peer_attributes)
        cfg = self.config
        wall = self._clock()
        max_spans = cfg.max_spans_per_trace
        max_traces = cfg.max_traces
        traces = self._traces
        get_trace = traces.get
        touched: dict[bytes, _Trace] = {}
        n_ok = n_bad = 0
        with self._lock:
            wm = self._watermark
            try:
                for service, version, rows in resources:
                    if not service:
                        service = "unknown_service"
                    if service not in self._instrumented:
                        if len(self._instrumented) >= cfg.max_nodes:
                            self._instrumented.pop(next(iter(self._instrumented)))
                            self.m_evicted.labels("service").inc()
                        self._instrumented[service] = None
                        self._canon_of.clear()
                    if version and rows:
                        self._note_version(service, version, rows[0][4])
                    for tid, span_id, parent, kind, start, end, code, msg, peer, messaging, attr_err, excs \
                            in rows:
                        if len(tid) != 16 or len(span_id) != 8 or end == 0:
                            n_bad += 1
                            continue
                        n_ok += 1
                        if code == ERR:
                            error = True
                            for m in excs:
                                if m not in msg:
                                    msg = f"{msg}; {m}" if msg else m
                        else:
                            error = code == UNSET and attr_err
                        if end < start:
                            end = start
                        tr = get_trace(tid)
                        if tr is None:
                            self._seq += 1
                            tr = traces[tid] = _Trace(self._seq)
                            if len(traces) > max_traces:
                                old_id, old = traces.popitem(last=False)
                                self.m_evicted.labels("trace").inc()
                                self._analyse(old_id, old)
                        if len(tr) >= max_spans:
                            self.m_evicted.labels("span").inc()
                            continue
                        tr.append((service, span_id, parent, kind, start, end, error, msg[:300], peer,
                                      messaging))
                        if end > tr.last_end:
                            tr.last_end = end
                        fs = tr.first_start
                        if not fs or start < fs:
                            tr.first_start = start
                        touched[tid] = tr
                        if end > wm:
                            wm = end
            finally:
                self._watermark = wm
                if n_ok:
                    self.m_spans.inc(n_ok)
                if n_bad:
                    self.m_bad.inc(n_bad)
                for tr in touched.values():
                    tr.last_wall = wall
                self._index(touched)
            self._expire(wm - self._idle_ns)
            self.m_inflight.set(len(traces))
        return total

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        """Error/warn log counts per service bucket, and recent error lines as evidence."""
        with self._lock:
            for rl in request.resource_logs:
                service = _attr_str(rl.resource.attributes, ["service.name"]) or "unknown_service"
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        sev = lr.severity_number
                        if sev < 13:
                            continue
                        t = lr.time_unix_nano or lr.observed_time_unix_nano
                        if not t:
                            continue
                        series = self._node(service)
                        if series is None:
                            continue
                        row = series.slot(t // self._bucket_ns * self._bucket_ns, self.config.max_buckets,
                                          self.m_evicted)
                        if sev >= 17:
                            row[N_LOG_ERR] += 1
                            body = lr.body.string_value if lr.body.HasField("string_value") else str(lr.body)
                            self._add_sample(self._log_samples, Sample(
                                service, t, lr.trace_id.hex(), lr.span_id.hex(), body[:300]))
                        else:
                            row[N_LOG_WARN] += 1

    def flush(self) -> None:
        """Analyse every buffered trace now."""
        with self._lock:
            self._expire(None)
            self.m_inflight.set(0)

    def expire(self, now_ns: int | None = None) -> None:
        """Analyse traces idle since before `now_ns - trace_idle_s` (event time); None = all."""
        with self._lock:
            self._expire(None if now_ns is None else now_ns - self._idle_ns)
            self.m_inflight.set(len(self._traces))

    # --- internals -----------------------------------------------------------------------
    def _index(self, touched: dict[bytes, _Trace]) -> None:
        """New expiry entries for the traces a request added spans to."""
        traces = self._traces
        by_end = self._by_end
        push = heapq.heappush
        seq = self._seq
        for tid, tr in touched.items():
            if traces.get(tid) is tr:  # not analysed early (max_traces) in the same request
                seq += 1
                tr.seq = seq
                push(by_end, (tr.last_end, seq, tid))
        self._seq = seq
        # stale entries pile up when event time stalls: compact (amortised O(1) per entry)
        limit = 2 * len(traces) + 1024
        if len(by_end) > limit:
            self._by_end = [e for e in by_end if (t := traces.get(e[2])) is not None and t.seq == e[1]]
            heapq.heapify(self._by_end)
        if len(self._by_wall) > limit:
            self._by_wall = [e for e in self._by_wall
                             if (t := traces.get(e[2])) is not None and t.seq == e[1]]
            heapq.heapify(self._by_wall)

    def _expire(self, before_ns: int | None) -> None:
        """Analyse the traces whose last span ended before `before_ns` (event time) and arrived at
        least trace_wall_idle_s ago (None: all), in arrival order. Touches only traces that pass
        the event-time bound (through the heaps), not every buffered trace."""
        wall_before = self._clock() - self.config.trace_wall_idle_s
        traces = self._traces
        if before_ns is None:
            self._analyse_many([(tid, traces.pop(tid)) for tid in list(traces)])
            self._by_end.clear()
            self._by_wall.clear()
            return
        by_end, by_wall = self._by_end, self._by_wall
        pop, push = heapq.heappop, heapq.heappush
        while by_end and by_end[0][0] < before_ns:
            _, seq, tid = pop(by_end)
            tr = traces.get(tid)
            if tr is not None and tr.seq == seq:
                push(by_wall, (tr.last_wall, seq, tid))
        done: list[tuple[int, bytes]] = []
        back: list[tuple[int, int, bytes]] = []
        while by_wall and by_wall[0][0] <= wall_before:
            _, seq, tid = pop(by_wall)
            tr = traces.get(tid)
            if tr is None or tr.seq != seq:
                continue
            if tr.last_end < before_ns:
                done.append((tr.born, tid))
            else:  # an earlier call had a later event-time bound
                back.append((tr.last_end, seq, tid))
        for e in back:
            push(by_end, e)
        done.sort()
        self._analyse_many([(tid, traces.pop(tid)) for _, tid in done])

    def _note_version(self, service: str, version: str, t_ns: int) -> None:
        prev = self._versions.get(service)
        if prev is None:
            if len(self._versions) >= self.config.max_nodes:
                oldest = next(iter(self._versions))
                del self._versions[oldest]
                self._deploys.pop(oldest, None)
                self.m_evicted.labels("version").inc()
            self._versions[service] = version
        elif prev != version:
            self._versions[service] = version
            dq = self._deploys.setdefault(service, deque(maxlen=self.config.max_samples))
            dq.append((t_ns, prev, version))

    def deploys(self, service: str, since_ns: int = 0,
                until_ns: int | None = None) -> list[tuple[int, str, str]]:
        """Version changes of `service` seen in span resources: (first time seen, old, new)."""
        with self._lock:
            return [d for d in self._deploys.get(service, ()) if d[0] >= since_ns
                    and (until_ns is None or d[0] <= until_ns)]

    def _node(self, name: str) -> _Series | None:
        s = self._nodes.get(name)
        if s is None:
            if len(self._nodes) >= self.config.max_nodes:
                self.m_evicted.labels("node").inc()
                old, _ = self._nodes.popitem(last=False)
                self._virtual.discard(old)
                self._span_samples.pop(old, None)
                self._log_samples.pop(old, None)
                self._deploys.pop(old, None)
            s = _Series(N_SLOTS)
            self._nodes[name] = s
        else:
            self._nodes.move_to_end(name)
        return s

    def _edge(self, a: str, b: str, ctype: str) -> _Series:
        key = (a, b)
        s = self._edges.get(key)
        if s is None:
            if len(self._edges) >= self.config.max_edges:
                self.m_evicted.labels("edge").inc()
                old, _ = self._edges.popitem(last=False)
                self._edge_type.pop(old, None)
            s = _Series(E_SLOTS)
            self._edges[key] = s
            self._edge_type[key] = ctype
        else:
            self._edges.move_to_end(key)
        return s

    def _add_sample(self, store: dict[str, deque[Sample]], sample: Sample) -> None:
        dq = store.get(sample.service)
        if dq is None:
            dq = store[sample.service] = deque(maxlen=self.config.max_samples)
        dq.append(sample)

    def _b(self, t: int) -> int:
        return t // self._bucket_ns * self._bucket_ns

    def _analyse(self, trace_id: bytes, tr: _Trace) -> None:
        """Add one complete trace to the buckets."""
        self.m_traces.inc()
        self._add_trace(trace_id, tr)

    def _analyse_many(self, items: Iterable[tuple[bytes, _Trace]]) -> None:
        """_analyse each (trace id, trace), counting them in one metric update."""
        n = 0
        try:
            for tid, tr in items:
                n += 1
                self._add_trace(tid, tr)
        finally:
            if n:
                self.m_traces.inc(n)

    def set_shedding(self, on: bool) -> None:
        """While on, traces without a failing span are sampled (see SignalsConfig.shed_keep_one_in)."""
        self.shedding = on

    def _add_trace(self, trace_id: bytes, spans: list[tuple]) -> None:
        """A span is an ENTRY of its service when it is a SERVER/CONSUMER span or its parent belongs
        to another service (or is missing): so traces whose span kinds are unset still yield edges
        and exclusive times. Nodes and edges are looked up inline (the hot path of _node/_edge and
        _Series.slot/exemplar, in the same order, so the LRU order and evictions are the same).
        While shedding, a trace without failures is analysed with weight w (its calls and latency
        sums count w times) or not at all."""
        w = 1
        if self.shedding and (keep := self.config.shed_keep_one_in) > 1 and \
                not any(sp[_ERROR] for sp in spans):
            if int.from_bytes(trace_id[-4:], "big") % keep:  # trace ids are random: 1 in `keep` stays
                self.m_shed.inc()
                return
            w = keep
        cap, ev = self.config.max_buckets, self.m_evicted
        bns = self._bucket_ns
        nodes, edges = self._nodes, self._edges
        canon_of = self._canon_of
        by_id = {sp[_SPAN_ID]: sp for sp in spans}
        children: dict[bytes, list[tuple]] = {}
        # id(span row) -> the canonical name of its peer, for CLIENT spans to a virtual node analysed
        # so far (_called_services reads it, for spans analysed before the failing one)
        canon_peers: dict[int, str] = {}
        for sp in spans:
            # also under parents that are not in the trace (and b"" for roots): never looked up, as
            # only the ids of spans in the trace are
            p = sp[_PARENT]
            kids = children.get(p)
            if kids is None:
                children[p] = [sp]
            else:
                kids.append(sp)
        get_kids = children.get
        has_err_desc: dict[bytes, bool] = {}  # _err_below's memo

        for sp in spans:
            service, span_id, parent_id, kind, start, end, error, message, peer, messaging = sp
            dur = end - start
            kids = get_kids(span_id)  # None: a leaf
            if kind == K_CLIENT or kind == K_PRODUCER:
                entry = False  # (its parent is not needed)
            else:
                parent = by_id.get(parent_id)
                entry = (kind == K_SERVER or kind == K_CONSUMER or parent is None
                         or parent[_SERVICE] != service)
            if entry:
                # an entry span: a call into `service`
                node = nodes.get(service)
                if node is None:
                    node = self._node(service)
                else:
                    nodes.move_to_end(service)
                b = start // bns * bns
                buckets = node.buckets
                row = buckets.get(b)
                if row is None:
                    row = node.slot(b, cap, ev)
                row[N_CALLS] += w
                row[N_ERRORS] += error
                row[N_LAT] += dur * w
                # exclusive time: minus the time spent in this service's outgoing calls
                if kids is None:
                    self_ns = dur  # >= 0: end >= start
                elif len(kids) == 1 and ((c := kids[0])[_SERVICE] != service or c[_KIND] == K_CLIENT
                                         or c[_KIND] == K_PRODUCER):
                    # the common case, one direct call: _union_len of one interval, inline
                    cs, ce = c[_START], c[_END]
                    if cs < start:
                        cs = start
                    if ce > end:
                        ce = end
                    self_ns = dur - ce + cs if ce > cs else dur
                else:
                    # the calls: spans of other services and client spans, below it or below its own
                    # service's other spans (in any order: _union_len sorts them)
                    calls: list[tuple[int, int]] = []
                    stack = list(kids)
                    seen = {span_id}  # parent ids are client data: a cycle must not loop forever
                    while stack:
                        c = stack.pop()
                        ck = c[_KIND]
                        if c[_SERVICE] != service or ck == K_CLIENT or ck == K_PRODUCER:
                            calls.append((c[_START], c[_END]))
                        elif (cid := c[_SPAN_ID]) not in seen:
                            seen.add(cid)
                            more = get_kids(cid)
                            if more is not None:
                                stack.extend(more)
                    self_ns = dur - _union_len(calls, start, end)
                    if self_ns < 0:
                        self_ns = 0
                row[N_SELF] += self_ns * w
                row[N_SELF_N] += w
                if b in buckets:  # _Series.exemplar, inline (not when the new bucket was the one evicted)
                    ex = node.exemplars.get(b)
                    if ex is None or self_ns > ex[0]:
                        node.exemplars[b] = (self_ns, trace_id, span_id)
                # the edge from the calling service (its client span when there is one)
                if parent is not None and parent[_SERVICE] != service:
                    caller, pkind, pstart = parent[_SERVICE], parent[_KIND], parent[_START]
                    client_like = pkind == K_CLIENT or pkind == K_PRODUCER
                    messaging_edge = pkind == K_PRODUCER or kind == K_CONSUMER
                    key = (caller, service)
                    eseries = edges.get(key)
                    if eseries is None:
                        eseries = self._edge(caller, service, "messaging_system" if messaging_edge else "")
                    else:
                        edges.move_to_end(key)
                    cb = pstart // bns * bns
                    erow = eseries.buckets.get(cb)
                    if erow is None:
                        erow = eseries.slot(cb, cap, ev)
                    erow[E_CALLS] += w
                    erow[E_ERRORS] += error or (client_like and parent[_ERROR])
                    erow[E_SERVER_LAT] += dur * w
                    if client_like:
                        client_ns = parent[_END] - pstart
                        erow[E_CLIENT_LAT] += client_ns * w
                        if not messaging_edge:
                            gap_ns = client_ns - dur
                            if gap_ns < 0:
                                gap_ns = 0
                            erow[E_GAP] += gap_ns * w
                            erow[E_GAP_N] += w
                            if cb in eseries.buckets:  # _Series.exemplar, inline
                                ex = eseries.exemplars.get(cb)
                                if ex is None or gap_ns > ex[0]:
                                    eseries.exemplars[cb] = (gap_ns, trace_id, parent[_SPAN_ID])
                    else:
                        erow[E_CLIENT_LAT] += dur * w
            elif kind == K_CLIENT:
                remote = None  # the service of its first child span in another service
                if kids is not None:
                    for c in kids:
                        if c[_SERVICE] != service:
                            remote = c[_SERVICE]
                            break
                if peer and remote is None:
                    # a call to an uninstrumented peer (a database, a cache ...): a virtual node
                    peer = canon_of.get(peer) or self._canon(peer)
                    if peer != service:
                        canon_peers[id(sp)] = peer
                        if peer not in self._instrumented:
                            self._virtual.add(peer)
                        b = start // bns * bns
                        key = (service, peer)
                        eseries = edges.get(key)
                        if eseries is None:
                            ctype = "messaging_system" if messaging else "database"
                            eseries = self._edge(service, peer, ctype)
                        else:
                            edges.move_to_end(key)
                        erow = eseries.buckets.get(b)
                        if erow is None:
                            erow = eseries.slot(b, cap, ev)
                        erow[E_CALLS] += w
                        erow[E_ERRORS] += error
                        erow[E_CLIENT_LAT] += dur * w
                        erow[E_SERVER_LAT] += dur * w
                        node = nodes.get(peer)
                        if node is None:
                            node = self._node(peer)
                        else:
                            nodes.move_to_end(peer)
                        row = node.buckets.get(b)
                        if row is None:
                            row = node.slot(b, cap, ev)
                        row[N_CALLS] += w
                        row[N_ERRORS] += error
                        row[N_LAT] += dur * w
                        row[N_SELF] += dur * w
                        row[N_SELF_N] += w
                        if b in node.buckets:  # _Series.exemplar, inline
                            ex = node.exemplars.get(b)
                            if ex is None or dur > ex[0]:
                                node.exemplars[b] = (dur, trace_id, span_id)

            # deepest failing span: attribute the failure
            if error and not _err_below(sp, children, has_err_desc):
                blame = service
                if kind == K_CLIENT:  # the branch above set `remote`, and `peer` to its canonical name
                    if remote is not None:
                        blame = remote
                    elif peer:
                        blame = peer
                node = self._node(blame)
                node.slot(start // bns * bns, cap, ev)[N_DEEP] += 1
                self._add_sample(self._span_samples, Sample(
                    blame, end, trace_id.hex(), span_id.hex(),
                    f"{service} span failed: {message or 'status ERROR'}"))
                if blame == service and message:
                    # does the caller's own error name one of the services it called?
                    low = message.lower()
                    for callee in self._called_services(sp, children, canon_peers):
                        if callee.lower() in low:
                            eb = start // bns * bns
                            self._edge(service, callee, "").slot(eb, cap, ev)[E_BLAMED] += 1
                            break

    def _canon(self, p: str) -> str:
        """A peer name as a known service name when it is one (`cart:8080`, `cart.shop.svc` -> cart).
        Cached until the set of instrumented services changes."""
        out = self._canon_of.get(p)
        if out is None:
            out = p
            if p not in self._instrumented:
                host = p.rsplit(":", 1)[0] if p.count(":") == 1 else p
                for cand in (host, host.split(".", 1)[0]):
                    if cand in self._instrumented:
                        out = cand
                        break
            if len(self._canon_of) >= 10000:  # peer names are client data: bound the cache
                self._canon_of.clear()
            self._canon_of[p] = out
        return out

    def _called_services(self, sp: tuple, children: dict[bytes, list[tuple]],
                         canon_peers: dict[int, str]) -> list[str]:
        out: list[str] = []
        service = sp[_SERVICE]
        stack = list(children.get(sp[_SPAN_ID], ()))
        seen = {sp[_SPAN_ID]}  # parent ids are client data: a cycle must not loop forever
        while stack and len(out) < 50:
            c = stack.pop()
            if c[_SERVICE] != service:
                if c[_SERVICE] not in out:
                    out.append(c[_SERVICE])
                continue
            if c[_KIND] in (K_CLIENT, K_PRODUCER):
                remote = [k[_SERVICE] for k in children.get(c[_SPAN_ID], ()) if k[_SERVICE] != c[_SERVICE]]
                name = remote[0] if remote else canon_peers.get(id(c), c[_PEER])
                if name and name not in out:
                    out.append(name)
            elif c[_SPAN_ID] not in seen:
                seen.add(c[_SPAN_ID])
                stack.extend(children.get(c[_SPAN_ID], ()))
        return out

    # --- reads ---------------------------------------------------------------------------
    def watermark_ns(self) -> int:
        with self._lock:
            return self._watermark

    def complete_until_ns(self) -> int:
        """Event time before which every received trace has been analysed (buckets before it are
        final): the watermark minus the idle time, bounded by the oldest buffered trace. Expires idle
        traces first. 0 before any span."""
        with self._lock:
            self._expire(self._watermark - self._idle_ns)
            self.m_inflight.set(len(self._traces))
            if not self._watermark:
                return 0
            t = self._watermark - self._idle_ns
            for tr in self._traces.values():
                if tr.first_start and tr.first_start < t:
                    t = tr.first_start
            return t

    def bucket_ns(self) -> int:
        return self._bucket_ns

    def nodes(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def virtual_nodes(self) -> set[str]:
        with self._lock:
            return set(self._virtual)

    def edges(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._edges)

    def node_buckets(self, node: str) -> dict[int, list[float]]:
        with self._lock:
            s = self._nodes.get(node)
            return {b: list(r) for b, r in s.buckets.items()} if s else {}

    def edge_buckets(self, caller: str, callee: str) -> dict[int, list[float]]:
        with self._lock:
            s = self._edges.get((caller, callee))
            return {b: list(r) for b, r in s.buckets.items()} if s else {}

    def exemplar(self, node: str, since_ns: int, until_ns: int,
                 caller: str | None = None) -> tuple[int, str, str] | None:
        """The slowest span in [since, until): of `node` (self time), or, with `caller`, the largest
        client-server gap on the edge caller -> node. (value ns, trace id, span id)."""
        with self._lock:
            s = self._edges.get((caller, node)) if caller is not None else self._nodes.get(node)
            if s is None:
                return None
            best = None
            for b, ex in s.exemplars.items():
                if since_ns <= b < until_ns and (best is None or ex[0] > best[0]):
                    best = ex
            return None if best is None else (best[0], best[1].hex(), best[2].hex())

    def samples(self, service: str, since_ns: int = 0, until_ns: int | None = None) -> list[Sample]:
        """Recent failing spans attributed to `service`, then its error log lines."""
        with self._lock:
            out = [s for s in self._span_samples.get(service, ()) if s.time_ns >= since_ns
                   and (until_ns is None or s.time_ns <= until_ns)]
            out += [s for s in self._log_samples.get(service, ()) if s.time_ns >= since_ns
                    and (until_ns is None or s.time_ns <= until_ns)]
            return out

    def digraph(self) -> nx.DiGraph:
        """The call graph seen by the signals (caller -> callee), edge attr `calls`, `connection_type`."""
        with self._lock:
            g = nx.DiGraph()
            for n in self._nodes:
                g.add_node(n, virtual=n in self._virtual)
            for (a, b), s in self._edges.items():
                calls = sum(r[E_CALLS] for r in s.buckets.values())
                if calls <= 0:
                    continue
                g.add_edge(a, b, calls=calls, connection_type=self._edge_type.get((a, b), ""))
            return g
