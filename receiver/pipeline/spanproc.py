"""SpanProcess: span analysis (service graph + RCA span signals) in a child process.

Why: the gRPC event loop, validation and the ingest queue hold the GIL of the main process; building
the service graph (~1 us/span) and above all the RCA span signals (~3 us/span) in the same process
leaves ingest a fraction of one core. The child runs `ServiceGraph` and `SpanSignals` on the second core.

Data path (one-way, ordered): `consume_traces(req, raw=...)` sends `b"T"` + the request's wire bytes as
the receiver got them (`raw`, when validation kept every span) or else `req.SerializeToString()` over a
pipe; the child hands the bytes to `graph.consume_wire` and `signals.consume_wire` (each reads the fields it
needs in C, receiver/otlp/spanwire.py).
`consume_logs` sends only the log records `SpanSignals.consume_logs` can use (severity >= WARN); a
request without any is not sent at all. Several requests are NOT batched into one message: with the OTLP
exporters' usual batches (hundreds of spans) one pipe write per request is a small share of the cost.

Flow control: the parent counts the bytes sent and not yet acknowledged by the child (the child acks
after processing, coalesced). `consume_*` BLOCKS while `capacity_bytes` are in flight (a message larger
than the capacity is sent when nothing is in flight). It does not raise `RetryableError`, because the
`BoundedQueue` worker treats a consumer exception as "log, count, go on" -- the request would be lost for
this consumer. Blocking the worker fills the BoundedQueue instead, whose `consume_*` then raises
`RetryableError`, so the receiver answers UNAVAILABLE + RetryInfo / 503 + Retry-After: accepted data is
never dropped while the child makes progress, and memory stays bounded (queue caps + `capacity_bytes`
plus the pipe buffer). `consume_*` raises `RetryableError` only when the SpanProcess is not running
(before `start()`, after `shutdown()`, or after a crash with `restart=False`).

Load shedding: a traces message sent while half `capacity_bytes` or more is in flight is tagged
"behind"; while the child processes such messages the span signals analyse only 1 in
`signals.shed_keep_one_in` of the traces without a failing span (weighted, so rates and means keep
their expected values) and every trace with one. The service graph never sheds.

Proxies: `.graph` and `.signals` forward any public method call to the child's objects
(`proxy.snapshot()` -> RPC `("graph", "snapshot", args, kwargs)`, pickled result). Calls travel on the
same pipe as the data, so a call sees every request sent before it (`flush()` analyses what was sent).
Exceptions raised in the child are re-raised in the parent (the same type when it pickles, else
`SpanProcessError`), with the child's traceback as a note. Calls are thread-safe and may overlap.
Under sustained load the data pipe holds up to `capacity_bytes` of requests, so an ordered call waits
for that backlog (~20k spans at the 4 MiB default). `.graph_now` / `.signals_now` are read proxies for
the API, /metrics and RCA: reads go over a second pipe to a child thread and are answered at once from
the current state (which includes everything an ordered call that already returned saw); the
state-changing methods (`ORDERED_METHODS`: flush, expire, ...) stay ordered on them too.

Metrics: the child's registry (graph `traces_service_graph_*`, `servicegraph_*`, `rca_signals_*`) is
fetched by RPC at scrape time by a collector registered on the parent registry, beside the parent's own
`llm_log_analyzer_spanproc_*` metrics (up, restarts, lost spans, bytes in flight, blocked time).

Crashes: if the child dies (or stops acknowledging for `stall_timeout_s` while data is outstanding, in
which case it is killed), the crash is logged at ERROR and counted, calls waiting for an answer fail with
`SpanProcessError`, and the spans sent but not processed are counted in
`llm_log_analyzer_spanproc_lost_spans_total`. With `restart=True` (default) a fresh child is started after
`restart_backoff_s` (doubling up to 30 s while it keeps crashing); the graph and signals start EMPTY
(they are derived views that rebuild from new traffic). Senders block while it restarts (backpressure,
not loss). `alive()` is False from the crash until the new child answers, so `/ready` reports it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

from receiver.component import StageConfig, non_negative, positive, require
from receiver.errors import RetryableError
from receiver.graph.config import GraphConfig
from receiver.model import ExportLogsServiceRequest, ExportTraceServiceRequest
from receiver.rca.signals import SignalsConfig

log = logging.getLogger(__name__)

_TRACES, _LOGS, _CALL = b"T", b"L", b"C"
_TRACES_BEHIND = b"t"  # traces sent while half the capacity or more was in flight: the signals shed
_OBJECTS = ("graph", "signals", "_ctl")
_WARN = 13  # SeverityNumber.WARN: the lowest severity SpanSignals.consume_logs counts
_F_SETPIPE_SZ = 1031  # Linux fcntl: a 1 MiB pipe holds several requests (fewer wake-ups than 64 KiB)
_PIPE_BYTES = 1 << 20

# states
STARTING, UP, RESTARTING, STOPPED, FAILED = "starting", "up", "restarting", "stopped", "failed"


@dataclass
class SpanProcessConfig(StageConfig):
    enabled: bool = True  # span analysis in a child process (second core); false: in the receiver process
    capacity_bytes: int = 4 * 1024 * 1024  # serialized requests sent to the child and not yet processed
    signals: bool = True  # build SpanSignals in the child (RCA needs them); off: graph only, no logs sent
    restart: bool = True  # restart a crashed child (else: stay down, alive() False, consume_* raises)
    restart_backoff_s: float = 1.0  # first restart delay; doubles while the child keeps crashing (max 30 s)
    stall_timeout_s: float = 120.0  # no ack/answer this long with data outstanding: kill + restart (0: off)
    call_timeout_s: float = 60.0  # an RPC (snapshot, digraph, flush, ...) waits this long for its answer
    start_timeout_s: float = 60.0  # the child must answer its first call within this
    retry_after_s: float = 1.0  # suggested to clients when not running

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.capacity_bytes, int), "spanproc.capacity_bytes", "must be an integer")
        positive(self.capacity_bytes, "spanproc.capacity_bytes")
        positive(self.restart_backoff_s, "spanproc.restart_backoff_s")
        non_negative(self.stall_timeout_s, "spanproc.stall_timeout_s")
        positive(self.call_timeout_s, "spanproc.call_timeout_s")
        positive(self.start_timeout_s, "spanproc.start_timeout_s")
        positive(self.retry_after_s, "spanproc.retry_after_s")


class SpanProcessError(RuntimeError):
    """A call to the child failed: the child died, timed out, or raised an unpicklable exception."""


def _count_spans(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def warn_logs_only(req: ExportLogsServiceRequest) -> ExportLogsServiceRequest | None:
    """The part of a logs request SpanSignals uses (records with severity >= WARN), None if empty.
    The request itself is returned when every record qualifies."""
    keep_all = True
    any_kept = False
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                if lr.severity_number >= _WARN:
                    any_kept = True
                else:
                    keep_all = False
    if not any_kept:
        return None
    if keep_all:
        return req
    out = ExportLogsServiceRequest()
    for rl in req.resource_logs:
        recs = [lr for sl in rl.scope_logs for lr in sl.log_records if lr.severity_number >= _WARN]
        if not recs:
            continue
        orl = out.resource_logs.add()
        orl.resource.CopyFrom(rl.resource)
        orl.scope_logs.add().log_records.extend(recs)
    return out


# ====================================================================================== child side
class _Control:
    """Child-side helpers reachable as object `_ctl`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.delay_s = 0.0
        self.wake = threading.Event()
        self.processed = 0
        self.spans = 0

    def ping(self) -> int:
        return os.getpid()

    def metrics(self) -> list[Metric]:
        return list(self.registry.collect())

    def stats(self) -> dict[str, Any]:
        return {"messages": self.processed, "spans": self.spans, "pid": os.getpid(),
                "t": time.monotonic(), "cpu_s": time.process_time()}

    def set_delay(self, seconds: float) -> None:
        """Test hook: wait this long before each data message (0 ends a wait in progress)."""
        self.delay_s = float(seconds)
        if self.delay_s:
            self.wake.clear()
        else:
            self.wake.set()


def _answer(objects: dict[str, Any], call_id: int, obj: str, method: str, args: tuple,
            kwargs: dict[str, Any]) -> bytes:
    """Run one call; the pickled reply (the result, or the exception with its traceback)."""
    try:
        if obj not in objects:
            raise AttributeError(f"{obj} is not built in the span analysis process")
        result = getattr(objects[obj], method)(*args, **kwargs)
        return pickle.dumps(("ok", call_id, result), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
        tb = traceback.format_exc()
        try:
            data = pickle.dumps(("err", call_id, exc, tb), pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)
            return data
        except Exception:  # noqa: BLE001 - an exception that does not pickle: send its text
            return pickle.dumps(("err", call_id, f"{type(exc).__name__}: {exc}", tb), pickle.HIGHEST_PROTOCOL)


def _serve_reads(conn_in: Connection, conn_out: Connection, objects: dict[str, Any]) -> None:
    """Child thread: answer read calls at once, beside the ordered data stream (ServiceGraph and
    SpanSignals are thread-safe)."""
    while True:
        try:
            msg = conn_in.recv_bytes()
        except (EOFError, OSError):
            return
        call_id, obj, method, args, kwargs = pickle.loads(msg)
        try:
            conn_out.send_bytes(_answer(objects, call_id, obj, method, args, kwargs))
        except OSError:
            return


def _child_main(conn_in: Connection, conn_out: Connection, reads_in: Connection | None = None,
                reads_out: Connection | None = None) -> None:
    """Entry point of the child process: read messages in order, answer calls, ack processed data."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s spanproc-child %(levelname)s %(message)s")
    # Ctrl-C, systemd and `timeout` signal the whole process group: the parent shuts us down in order
    # (drain, flush) and a dead parent closes our input pipe, which ends us too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    graph_config, signals_config = pickle.loads(conn_in.recv_bytes())  # signals_config None: no signals
    from receiver.graph.graph import ServiceGraph
    from receiver.rca.signals import SpanSignals

    registry = CollectorRegistry()
    graph = ServiceGraph(graph_config, registry)
    signals_ = SpanSignals(signals_config, registry) if signals_config is not None else None
    ctl = _Control(registry)
    errors = Counter("llm_log_analyzer_spanproc_child_consume_errors",
                     "Exceptions raised by the graph or the signals while consuming a request",
                     ["consumer"], registry=registry)
    objects: dict[str, Any] = {"graph": graph, "_ctl": ctl}
    consumers: list[tuple[str, Any]] = [("graph", graph)]
    if signals_ is not None:
        objects["signals"] = signals_
        consumers.append(("signals", signals_))
    for _, c in consumers:
        c.start()
    if reads_in is not None and reads_out is not None:
        threading.Thread(target=_serve_reads, args=(reads_in, reads_out, objects), name="spanproc-reads",
                         daemon=True).start()
    acked = 0
    processed = 0
    last_err = 0.0
    try:
        while True:
            try:
                msg = conn_in.recv_bytes()
            except EOFError:
                break  # the parent went away
            tag = msg[:1]
            if tag == _CALL:
                if signals_ is not None:  # flush / expire are not load: analyse everything
                    signals_.set_shedding(False)
                if processed > acked:  # everything before the call is done: say so first
                    conn_out.send(("ack", processed))
                    acked = processed
                call_id, obj, method, args, kwargs = pickle.loads(memoryview(msg)[1:])
                if obj == "_ctl" and method == "shutdown":
                    for _, c in consumers:
                        c.shutdown()
                    conn_out.send(("ok", call_id, {**ctl.stats(), "graph": graph.stats()}))
                    break
                conn_out.send_bytes(_answer(objects, call_id, obj, method, args, kwargs))
                continue
            if ctl.delay_s:
                ctl.wake.wait(ctl.delay_s)
            body = memoryview(msg)[1:]
            try:
                if tag == _TRACES or tag == _TRACES_BEHIND:
                    if signals_ is not None:
                        signals_.set_shedding(tag == _TRACES_BEHIND)
                    for name, c in consumers:  # both read the wire bytes (in C), no decoding here
                        try:
                            n = c.consume_wire(body)
                            if c is graph:
                                ctl.spans += n
                        except Exception:  # noqa: BLE001 - one bad request must not kill the child
                            errors.labels(name).inc()
                            if time.monotonic() - last_err > 10:
                                last_err = time.monotonic()
                                log.exception("%s.consume_traces failed", name)
                elif tag == _LOGS and signals_ is not None:
                    signals_.consume_logs(ExportLogsServiceRequest.FromString(body))
            except Exception:  # noqa: BLE001 - undecodable message (should not happen)
                errors.labels("decode").inc()
                log.exception("spanproc child: bad message")
            processed += 1
            ctl.processed = processed
            if processed - acked >= 32 or not conn_in.poll():
                conn_out.send(("ack", processed))
                acked = processed
    finally:
        for _, c in consumers:
            c.shutdown()


# ===================================================================================== parent side
# Methods that change state: always on the ordered channel, behind the data sent before them.
ORDERED_METHODS = frozenset({"flush", "expire", "start", "shutdown", "consume_traces", "consume_logs"})


class _Proxy:
    """Forwards any public method call to the child's object of the same name. `ordered`: the call
    travels behind the data sent before it; else it is answered at once from the current state (state
    changing methods in ORDERED_METHODS stay ordered)."""

    def __init__(self, owner: SpanProcess, name: str, ordered: bool = True) -> None:
        self._owner = owner
        self._name = name
        self._ordered = ordered

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        ordered = self._ordered or method in ORDERED_METHODS

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._owner.call(self._name, method, *args, _ordered=ordered, **kwargs)

        call.__name__ = method
        call.__qualname__ = f"{self._name}.{method}"
        return call

    def __repr__(self) -> str:
        return f"<{self._name} proxy in span process {self._owner.pid}>"


class _ChildMetrics:
    """Collector on the parent registry: the child's metric families, fetched at scrape time."""

    def __init__(self, owner: SpanProcess) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return []  # names are only known to the child; never checked for clashes at registration

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        if owner.state != UP:
            return []
        try:
            return owner.call("_ctl", "metrics", _timeout=min(10.0, owner.config.call_timeout_s),
                              _ordered=False)
        except Exception as exc:  # noqa: BLE001 - a scrape must still show the parent's metrics
            log.warning("span process metrics unavailable: %s", exc)
            return []


class _Child:
    """One incarnation of the child process and its pipes."""

    def __init__(self, process: subprocess.Popen, conn_in: Connection, conn_out: Connection,
                 reads_in: Connection, reads_out: Connection) -> None:
        self.process = process
        self.conn_in = conn_in  # parent writes
        self.conn_out = conn_out  # parent reads
        self.reads_in = reads_in  # read calls (answered at once by a child thread)
        self.reads_out = reads_out
        self.reads_lock = threading.Lock()  # one read call at a time on that channel
        self.last_progress = time.monotonic()

    def close(self) -> None:
        for conn in (self.conn_in, self.conn_out, self.reads_in, self.reads_out):
            conn.close()

    def join(self, timeout: float) -> int | None:
        """Wait for the exit (kill it after `timeout`); the exit code."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            try:
                return self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                return None


class SpanProcess:
    """TracesConsumer + LogsConsumer running ServiceGraph and SpanSignals in a child process."""

    def __init__(self, graph_config: GraphConfig | None = None, signals_config: SignalsConfig | None = None,
                 registry: CollectorRegistry | None = None, config: SpanProcessConfig | None = None) -> None:
        self.graph_config = graph_config if graph_config is not None else GraphConfig()
        self.signals_config = signals_config if signals_config is not None else SignalsConfig()
        self.graph_config.validate()  # bad config fails here, not in the child
        self.signals_config.validate()
        self.config = config if config is not None else SpanProcessConfig()
        self.config.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._paused = False
        # ordered proxies: every call sees all data sent before it (flush, tests, replays)
        self.graph = _Proxy(self, "graph")
        self.signals = _Proxy(self, "signals")
        # read-now proxies: reads answered at once, not behind the data backlog (API, metrics, RCA);
        # they see at least everything an ordered call that already returned saw
        self.graph_now = _Proxy(self, "graph", ordered=False)
        self.signals_now = _Proxy(self, "signals", ordered=False)

        self._send_lock = threading.Lock()  # one writer on the pipe at a time; message order = seq order
        self._cond = threading.Condition()  # state, in-flight accounting, pending calls
        self.state = STOPPED
        self.detail = "not started"
        self._child: _Child | None = None
        self._generation = 0
        self._seq = 0  # data messages sent to the current child
        self._unacked: deque[tuple[int, int, int]] = deque()  # (seq, bytes, spans)
        self._inflight_bytes = 0
        self._calls: dict[int, Future] = {}
        self._next_call = 0
        self._supervisor: threading.Thread | None = None
        self._stopping = False
        self.crashes = 0
        self.restarts = 0
        self.lost_spans = 0
        self.final_stats: dict[str, Any] = {}  # the child's counters at its last clean shutdown

        r = self.registry
        up = Gauge("llm_log_analyzer_spanproc_up", "1 while the span analysis child process is running",
                   registry=r)
        up.set_function(lambda: 1.0 if self.state == UP else 0.0)
        infl = Gauge("llm_log_analyzer_spanproc_inflight_bytes",
                     "Serialized bytes sent to the span analysis child and not yet processed", registry=r)
        infl.set_function(lambda: self._inflight_bytes)
        cap = Gauge("llm_log_analyzer_spanproc_capacity_bytes", "Capacity of the span analysis pipe",
                    registry=r)
        cap.set(self.config.capacity_bytes)
        self._m_restarts = Counter("llm_log_analyzer_spanproc_restarts",
                                   "Span analysis child processes restarted after a crash or stall",
                                   registry=r)
        self._m_crashes = Counter("llm_log_analyzer_spanproc_crashes",
                                  "Span analysis child processes that died or stalled", registry=r)
        self._m_lost = Counter("llm_log_analyzer_spanproc_lost_spans",
                               "Spans sent to a child that died before processing them", registry=r)
        self._m_sent = Counter("llm_log_analyzer_spanproc_sent_bytes",
                               "Serialized bytes sent to the span analysis child", ["signal"], registry=r)
        self._m_blocked = Counter("llm_log_analyzer_spanproc_blocked_seconds",
                                  "Time consume_* waited for the child (backpressure)", registry=r)
        self._collector = _ChildMetrics(self)
        r.register(self._collector)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the child and wait until it answers (raises SpanProcessError if it cannot start)."""
        with self._cond:
            if self._supervisor is not None:
                return
            self._stopping = False
            self.state = STARTING
            self.detail = "starting"
            child = self._spawn()
            self._supervisor = threading.Thread(target=self._supervise, args=(child,),
                                                name="spanproc-supervisor", daemon=True)
            self._supervisor.start()
        try:
            self._wait_up(self.config.start_timeout_s)
        except Exception:
            self.shutdown()
            raise

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Process everything sent so far (graph + signals flush), stop the child. Idempotent."""
        timeout = self.config.call_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            sup = self._supervisor
            if sup is None:
                return
            was_up = self.state == UP
            self._stopping = True
            if self._paused:
                self.resume()
        if was_up:
            try:
                self.final_stats = self.call("_ctl", "shutdown", _timeout=timeout, _while_stopping=True)
            except Exception as exc:  # noqa: BLE001
                log.error("span process did not shut down cleanly: %s", exc)
        with self._cond:
            child = self._child
            self._cond.notify_all()
        if child is not None:
            child.join(5.0)
        sup.join(timeout=10.0)
        with self._cond:
            self._supervisor = None
            self.state = STOPPED
            self.detail = "stopped"
            self._cond.notify_all()

    def alive(self) -> bool:
        """True while the child is up and answering (for /ready)."""
        return self.state == UP

    def ready(self) -> tuple[bool, str]:
        """(ok, detail) for /ready."""
        return (True, "ok") if self.state == UP else (False, f"span analysis process {self.detail}")

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def pause(self) -> None:
        """Stop the child (SIGSTOP) without treating it as stalled: data and calls wait, senders block
        once `capacity_bytes` are in flight. For tests and maintenance; resume() undoes it."""
        child = self._child
        if child is not None:
            self._paused = True
            os.kill(child.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        child = self._child
        if child is not None and self._paused:
            os.kill(child.process.pid, signal.SIGCONT)
            child.last_progress = time.monotonic()
        self._paused = False

    # ------------------------------------------------------------------ consumers
    def consume_traces(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> None:
        """`raw`: the request's own wire bytes when the caller has them (the receiver, when validation
        kept every span): re-serializing costs the parent more GIL time than decoding did."""
        n = _count_spans(request)
        if n == 0:
            return
        self._send_data(_TRACES, raw if raw is not None else request.SerializeToString(), n, "traces")

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        if not self.config.signals:
            return
        part = warn_logs_only(request)
        if part is None:
            return
        self._send_data(_LOGS, part.SerializeToString(), 0, "logs")

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until the child processed everything sent before this call. True if it did."""
        try:
            self.call("_ctl", "ping", _timeout=timeout_s)
        except Exception:  # noqa: BLE001
            return False
        return True

    def stats(self) -> dict[str, Any]:
        """The child's counters (messages, spans processed, pid) after everything sent so far."""
        out: dict[str, Any] = self.call("_ctl", "stats")
        out.update(crashes=self.crashes, restarts=self.restarts, lost_spans=self.lost_spans)
        return out

    def _send_data(self, tag: bytes, body: bytes, spans: int, kind: str) -> None:
        """Send one message (`tag` + `body`); a traces message sent while half the capacity or more
        is in flight is tagged _TRACES_BEHIND, so the child's span signals shed load while it lasts."""
        size = len(body) + 1
        cap = self.config.capacity_bytes
        with self._send_lock:
            with self._cond:
                t0 = 0.0
                while True:
                    if self.state == UP and (self._inflight_bytes == 0 or self._inflight_bytes + size <= cap):
                        break
                    if self._stopping or self.state in (STOPPED, FAILED):
                        raise RetryableError(f"span analysis process is {self.detail}",
                                             self.config.retry_after_s)
                    if not t0:
                        t0 = time.monotonic()
                    self._cond.wait(1.0)
                if t0:
                    self._m_blocked.inc(time.monotonic() - t0)
                if tag == _TRACES and self._inflight_bytes * 2 >= cap:
                    tag = _TRACES_BEHIND
                self._seq += 1
                self._unacked.append((self._seq, size, spans))
                self._inflight_bytes += size
                child = self._child
                assert child is not None
                if len(self._unacked) == 1:
                    child.last_progress = time.monotonic()
            try:
                child.conn_in.send_bytes(tag + body)
            except OSError:
                pass  # the child died: the supervisor counts the unacked messages as lost
        self._m_sent.labels(kind).inc(size)

    # ------------------------------------------------------------------ calls
    def call(self, obj: str, method: str, *args: Any, _timeout: float | None = None,
             _while_stopping: bool = False, _ordered: bool = True, **kwargs: Any) -> Any:
        """Call `obj.method(*args, **kwargs)` in the child and return the result: after everything sent
        before (`_ordered`), or at once on the read channel."""
        if obj not in _OBJECTS or method.startswith("_"):
            raise AttributeError(f"{obj}.{method}")
        timeout = self.config.call_timeout_s if _timeout is None else _timeout
        deadline = time.monotonic() + timeout
        if not _ordered:
            return self._read_call(obj, method, args, kwargs, timeout, deadline)
        fut: Future = Future()
        with self._send_lock:
            with self._cond:
                while self.state != UP or (self._stopping and not _while_stopping):
                    if self.state in (STOPPED, FAILED) or (self._stopping and not _while_stopping):
                        raise SpanProcessError(f"span analysis process is {self.detail}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SpanProcessError(f"span analysis process is {self.detail} (waited {timeout}s)")
                    self._cond.wait(min(left, 1.0))
                self._next_call += 1
                call_id = self._next_call
                self._calls[call_id] = fut
                child = self._child
                assert child is not None
            data = _CALL + pickle.dumps((call_id, obj, method, args, kwargs), pickle.HIGHEST_PROTOCOL)
            try:
                child.conn_in.send_bytes(data)
            except OSError:
                pass  # the supervisor fails the future
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            with self._cond:
                self._calls.pop(call_id, None)
            raise SpanProcessError(
                f"{obj}.{method}: no answer from the span analysis process in {timeout}s") from None

    def _read_call(self, obj: str, method: str, args: tuple, kwargs: dict[str, Any], timeout: float,
                   deadline: float) -> Any:
        with self._cond:
            if self.state != UP or self._stopping:
                raise SpanProcessError(f"span analysis process is {self.detail}")
            child = self._child
            self._next_call += 1
            call_id = self._next_call
        assert child is not None
        data = pickle.dumps((call_id, obj, method, args, kwargs), pickle.HIGHEST_PROTOCOL)
        with child.reads_lock:
            try:
                child.reads_in.send_bytes(data)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not child.reads_out.poll(left):
                        raise SpanProcessError(f"{obj}.{method}: no answer from the span analysis process "
                                               f"in {timeout}s")
                    msg = child.reads_out.recv()
                    if msg[1] == call_id:
                        break  # else: the late answer of a call that timed out
            except (OSError, EOFError) as exc:
                raise SpanProcessError(f"{obj}.{method}: the span analysis process went away") from exc
        if msg[0] == "ok":
            return msg[2]
        err, tb = msg[2], msg[3]
        if not isinstance(err, BaseException):
            err = SpanProcessError(str(err))
        err.add_note(f"raised in the span analysis process:\n{tb}")
        raise err

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.state != UP:
                if self.state in (STOPPED, FAILED):
                    raise SpanProcessError(f"span analysis process is {self.detail}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SpanProcessError(f"span analysis process did not start within {timeout}s")
                self._cond.wait(min(left, 1.0))

    # ------------------------------------------------------------------ supervisor
    def _spawn(self) -> _Child:
        """Start a child process (lock held). A fresh interpreter (`python -m receiver.pipeline.spanproc`),
        not multiprocessing's spawn, which would re-run the parent's __main__ module in the child."""
        data_r, data_w = os.pipe()  # parent -> child: data and calls
        ans_r, ans_w = os.pipe()  # child -> parent: acks and answers
        rq_r, rq_w = os.pipe()  # parent -> child: read calls
        ra_r, ra_w = os.pipe()  # child -> parent: their answers
        try:
            fcntl.fcntl(data_w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: the default size works too
            pass
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "receiver.pipeline.spanproc", str(data_r), str(ans_w), str(rq_r),
                 str(ra_w)],
                pass_fds=(data_r, ans_w, rq_r, ra_w), stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            for fd in (data_r, data_w, ans_r, ans_w, rq_r, rq_w, ra_r, ra_w):
                os.close(fd)
            raise
        for fd in (data_r, ans_w, rq_r, ra_w):  # the child's ends: closed here so a dead child gives EOF
            os.close(fd)
        conn_in, conn_out = Connection(data_w, readable=False), Connection(ans_r, writable=False)
        self._generation += 1
        self._paused = False
        self._seq = 0
        self._unacked.clear()
        self._inflight_bytes = 0
        child = _Child(proc, conn_in, conn_out, Connection(rq_w, readable=False),
                       Connection(ra_r, writable=False))
        self._child = child
        try:
            signals = self.signals_config if self.config.signals else None
            conn_in.send_bytes(pickle.dumps((self.graph_config, signals),
                                            pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # it died at once: the supervisor sees EOF
        return child

    def _supervise(self, child: _Child) -> None:
        backoff = self.config.restart_backoff_s
        while True:
            started = time.monotonic()
            self._handshake(child)
            reason = self._read_loop(child)
            with self._cond:
                stopping = self._stopping
            code = child.join(5.0 if stopping else 1.0)
            with child.reads_lock:
                child.close()
            with self._cond:
                self._fail_calls(f"span analysis process exited ({reason}, exit code {code})")
                lost = sum(s for _, _, s in self._unacked)
                self._unacked.clear()
                self._inflight_bytes = 0
                if self._stopping:
                    self._stopped_by_shutdown()
                    return
                self.crashes += 1
                self._m_crashes.inc()
                self.lost_spans += lost
                self._m_lost.inc(lost)
                log.error("span analysis process %s died (%s, exit code %s); %d spans sent to it were not "
                          "processed; the service graph and span signals restart empty%s",
                          child.process.pid, reason, code, lost,
                          "" if self.config.restart else " -- restart is off, /ready stays false")
                if not self.config.restart:
                    self.state = FAILED
                    self.detail = f"died ({reason}, exit code {code}); restart is off"
                    self._cond.notify_all()
                    return
                if time.monotonic() - started > 60.0:
                    backoff = self.config.restart_backoff_s  # it ran fine for a while: no backoff growth
                self.state = RESTARTING
                self.detail = f"restarting after a crash ({reason}, exit code {code})"
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._stopping, timeout=backoff)
                if self._stopping:
                    self._stopped_by_shutdown()
                    return
                backoff = min(backoff * 2, 30.0)
                self.restarts += 1
                self._m_restarts.inc()
                child = self._spawn()

    def _handshake(self, child: _Child) -> None:
        """Send the first call; UP is set when its answer arrives (in _read_loop)."""
        with self._cond:
            self._next_call += 1
            call_id = self._next_call
            fut: Future = Future()
            fut.add_done_callback(lambda f: self._on_ready(child, f))
            self._calls[call_id] = fut
        data = _CALL + pickle.dumps((call_id, "_ctl", "ping", (), {}), pickle.HIGHEST_PROTOCOL)
        try:
            child.conn_in.send_bytes(data)
        except OSError:
            pass
        child.last_progress = time.monotonic()

    def _on_ready(self, child: _Child, fut: Future) -> None:
        if fut.exception() is not None:
            return
        with self._cond:
            if self._child is child and not self._stopping:
                self.state = UP
                self.detail = "ok"
                log.info("span analysis process %s up", child.process.pid)
                self._cond.notify_all()

    def _stopped_by_shutdown(self) -> None:
        """The supervisor ends because shutdown() asked it to (lock held)."""
        self.state = STOPPED
        self.detail = "stopped"
        self._child = None
        self._cond.notify_all()

    def _read_loop(self, child: _Child) -> str:
        """Read acks and answers until the child exits; return why it ended."""
        conn = child.conn_out
        cfg = self.config
        while True:
            try:
                ready = conn.poll(1.0)
            except (OSError, EOFError):
                return "pipe closed"
            if not ready:
                if child.process.poll() is not None and not conn.poll(0):
                    return "exited"
                with self._cond:
                    waiting = bool(self._unacked) or bool(self._calls)
                    starting = self.state != UP
                    stopping = self._stopping
                    since = time.monotonic() - child.last_progress
                limit = cfg.start_timeout_s if starting else cfg.stall_timeout_s
                if waiting and limit and not self._paused and not stopping and since > limit:
                    log.error("span analysis process %s made no progress for %.0fs: killing it",
                              child.process.pid, since)
                    child.process.kill()
                    return f"stalled for {since:.0f}s"
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return "exited"
            except Exception as exc:  # noqa: BLE001 - e.g. an answer that does not unpickle here
                log.error("span analysis process: unreadable answer: %s", exc)
                continue
            child.last_progress = time.monotonic()
            kind = msg[0]
            if kind == "ack":
                with self._cond:
                    done = msg[1]
                    while self._unacked and self._unacked[0][0] <= done:
                        _, size, _ = self._unacked.popleft()
                        self._inflight_bytes -= size
                    self._cond.notify_all()
                continue
            with self._cond:
                fut = self._calls.pop(msg[1], None)
            if fut is None:
                continue
            if kind == "ok":
                fut.set_result(msg[2])
            else:
                exc, tb = msg[2], msg[3]
                if not isinstance(exc, BaseException):
                    exc = SpanProcessError(str(exc))
                exc.add_note(f"raised in the span analysis process:\n{tb}")
                fut.set_exception(exc)

    def _fail_calls(self, why: str) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(SpanProcessError(why))


def main(argv: list[str] | None = None) -> None:
    """Child entry point: `python -m receiver.pipeline.spanproc DATA_FD ANSWER_FD` (run by SpanProcess)."""
    args = [int(a) for a in (sys.argv[1:] if argv is None else argv)]
    _child_main(Connection(args[0], writable=False), Connection(args[1], readable=False),
                Connection(args[2], writable=False), Connection(args[3], readable=False))


if __name__ == "__main__":
    main()
