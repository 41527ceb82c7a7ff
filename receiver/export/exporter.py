"""FindingsExporter: findings -> durable on-disk queue -> OTLP/gRPC (logs + finding spans).

`consume_findings()` appends to the queue (fsync'd) and returns at once; one sender thread
takes batches in order, encodes them (`encode.py`), exports log records via LogsService and
trace-tied findings as spans via TraceService, and removes a finding from disk only after every
signal it needs was accepted. Retryable failures back off (honouring RetryInfo) and retry
forever: the data waits on disk, bounded by the queue caps. Permanent failures (INVALID_ARGUMENT,
UNIMPLEMENTED, ...) and partial-success rejections are counted in `failed_total` and not retried.
A new instance on the same `queue_dir` resumes whatever an earlier one left unsent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.export.config import ExportConfig
from receiver.export.encode import dump_finding, is_trace_tied, load_finding, logs_request, traces_request
from receiver.export.queue import DiskQueue, Row
from receiver.export.retry import Backoff, classify
from receiver.model import Finding

log = logging.getLogger(__name__)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "llm_log_analyzer_export"
        self.enqueued = Counter(f"{p}_enqueued", "Findings written to the export queue", registry=registry)
        self.sent = Counter(f"{p}_sent", "Findings accepted by the export endpoint", ["signal"],
                            registry=registry)
        self.failed = Counter(f"{p}_failed", "Findings permanently refused by the endpoint (not retried)",
                              ["signal"], registry=registry)
        self.retried = Counter(f"{p}_retried", "Export calls that failed retryably and will be retried",
                               ["signal"], registry=registry)
        self.dropped = Counter(f"{p}_dropped", "Findings dropped before export", ["reason"],
                               registry=registry)
        self.queue_items = Gauge(f"{p}_queue_size", "Findings waiting in the on-disk export queue",
                                 registry=registry)
        self.queue_bytes = Gauge(f"{p}_queue_bytes", "Bytes of findings in the on-disk export queue",
                                 registry=registry)
        for s in ("logs", "traces"):
            self.sent.labels(s)
            self.failed.labels(s)
            self.retried.labels(s)
        for r in ("queue_full", "undecodable", "stopped", "disk_error"):
            self.dropped.labels(r)


class FindingsExporter:
    """See module doc. Wiring: `FindingsExporter(ExportConfig(endpoint="host:4317"), registry)`,
    `start()`, feed `consume_findings()`, `flush(timeout)` to wait until the queue is empty,
    `shutdown()` sends for up to `shutdown_timeout_s` and leaves the rest on disk."""

    def __init__(self, config: ExportConfig, registry: CollectorRegistry | None = None,
                 channel_factory: Callable[[], grpc.Channel] | None = None) -> None:
        config.validate()
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self._channel_factory = channel_factory or self._make_channel
        self._queue: DiskQueue | None = None
        if config.enabled:
            self._queue = DiskQueue(config.queue_dir, config.queue_max_items, config.queue_max_bytes)
            self._update_gauges()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._started = False
        self._stopped = False
        self._lifecycle = threading.Lock()
        self._backoff = Backoff(config.retry_initial_backoff_s, config.retry_max_backoff_s,
                                config.retry_multiplier, config.retry_jitter, config.retry_max_server_delay_s)
        self._metadata = tuple(config.headers.items())

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lifecycle:
            if self._started or self._stopped or not self.config.enabled:
                return
            self._started = True
            self._channel = self._channel_factory()
            self._thread = threading.Thread(target=self._run, name="findings-exporter", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._draining.set()
            self._wake.set()
            self.flush(self.config.shutdown_timeout_s)
            self._stop.set()
            self._wake.set()
            thread.join(self.config.timeout_s + 5)
        if self._channel is not None:
            self._channel.close()
        if self._queue is not None:
            self._queue.close()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def queue_size(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty (everything exported or permanently refused). Returns False
        on timeout or when the sender is not running."""
        if self._queue is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while len(self._queue) > 0:
                if self._thread is None or not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    # --- the consuming method -------------------------------------------------------------
    def consume_findings(self, findings: Sequence[Finding]) -> None:
        if not findings or self._queue is None:
            return
        if self._stopped:
            self.metrics.dropped.labels("stopped").inc(len(findings))
            log.warning("findings exporter is shut down; %d findings not queued", len(findings))
            return
        items = [(dump_finding(f), self.config.export_spans and is_trace_tied(f)) for f in findings]
        try:
            dropped = self._queue.append(items)
        except RuntimeError:  # closed by a concurrent shutdown()
            self.metrics.dropped.labels("stopped").inc(len(findings))
            log.warning("findings exporter is shut down; %d findings not queued", len(findings))
            return
        except sqlite3.Error as e:  # disk full, I/O error: count and report, never break the pipeline
            self.metrics.dropped.labels("disk_error").inc(len(findings))
            log.error("export queue write failed (%s); %d findings not queued", e, len(findings))
            return
        self.metrics.enqueued.inc(len(items))
        if dropped:
            self.metrics.dropped.labels("queue_full").inc(dropped)
            log.warning("export queue full (%d items / %d bytes cap): dropped the %d oldest findings",
                        self.config.queue_max_items, self.config.queue_max_bytes, dropped)
        self._update_gauges()
        self._wake.set()

    # --- sender ----------------------------------------------------------------------------
    def _make_channel(self) -> grpc.Channel:
        c = self.config
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(c.retry_initial_backoff_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(c.retry_initial_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(c.retry_max_backoff_s * 1000)),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        compression = grpc.Compression.Gzip if c.compression == "gzip" else grpc.Compression.NoCompression
        if c.insecure:
            return grpc.insecure_channel(c.endpoint, options=options, compression=compression)
        root = Path(c.ca_file).read_bytes() if c.ca_file else None
        key = Path(c.key_file).read_bytes() if c.key_file else None
        cert = Path(c.cert_file).read_bytes() if c.cert_file else None
        creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
        return grpc.secure_channel(c.endpoint, creds, options=options, compression=compression)

    def _update_gauges(self) -> None:
        if self._queue is not None:
            self.metrics.queue_items.set(len(self._queue))
            self.metrics.queue_bytes.set(self._queue.nbytes)

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Interruptible backoff sleep; returns False when the exporter is stopping."""
        return not self._stop.wait(seconds)

    def _run(self) -> None:
        assert self._queue is not None and self._channel is not None
        logs_stub = logs_service_pb2_grpc.LogsServiceStub(self._channel)
        trace_stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        while not self._stop.is_set():
            try:
                rows = self._queue.peek(self.config.batch_max_items)
            except RuntimeError:  # queue closed under us
                return
            except sqlite3.Error:
                log.exception("export queue read failed; retrying")
                if not self._sleep(self._backoff.next_delay()):
                    return
                continue
            if not rows:
                self._notify_idle()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                delay = self._send_batch(rows, logs_stub, trace_stub)
            except Exception:  # never let the sender thread die
                log.exception("findings exporter: unexpected error; retrying")
                delay = self._backoff.next_delay()
            self._update_gauges()
            self._notify_idle()
            if delay is not None and not self._sleep(delay):
                return

    def _decode(self, rows: list[Row]) -> list[tuple[Row, Finding]]:
        out: list[tuple[Row, Finding]] = []
        bad: list[int] = []
        for row in rows:
            try:
                out.append((row, load_finding(row.payload)))
            except Exception:
                bad.append(row.seq)
        if bad and self._queue is not None:
            log.error("export queue: %d undecodable rows removed", len(bad))
            self._queue.mark_done(bad, "logs")
            self._queue.mark_done(bad, "spans")
            self.metrics.dropped.labels("undecodable").inc(len(bad))
        return out

    def _send_batch(self, rows: list[Row], logs_stub: logs_service_pb2_grpc.LogsServiceStub,
                    trace_stub: trace_service_pb2_grpc.TraceServiceStub) -> float | None:
        """Export one batch; return a delay before the next attempt (None: go on at once)."""
        assert self._queue is not None
        decoded = self._decode(rows)
        name = self.config.service_name
        pending_logs = [(r, f) for r, f in decoded if not r.logs_done]
        if pending_logs:
            request = logs_request([f for _, f in pending_logs], name)
            delay = self._export("logs", logs_stub.Export, request, [r.seq for r, _ in pending_logs],
                                 lambda resp: resp.partial_success.rejected_log_records)
            if delay is not None:
                return delay
        pending_spans = [(r, f) for r, f in decoded if not r.spans_done]
        if pending_spans:
            tied = [(r, f) for r, f in pending_spans if is_trace_tied(f)]
            untied = [r.seq for r, f in pending_spans if not is_trace_tied(f)]
            if untied:
                self._queue.mark_done(untied, "spans")
            if tied:
                request = traces_request([f for _, f in tied], name)
                delay = self._export("traces", trace_stub.Export, request, [r.seq for r, _ in tied],
                                     lambda resp: resp.partial_success.rejected_spans)
                if delay is not None:
                    return delay
        return None

    def _export(self, signal: str, call: Callable, request: object, seqs: list[int],
                rejected_of: Callable[[object], int]) -> float | None:
        assert self._queue is not None
        done = "logs" if signal == "logs" else "spans"
        try:
            response = call(request, timeout=self.config.timeout_s, metadata=self._metadata or None)
        except grpc.RpcError as e:
            verdict = classify(e)
            code = e.code() if hasattr(e, "code") else None
            if verdict.retryable:
                self.metrics.retried.labels(signal).inc()
                delay = self._backoff.next_delay(verdict.server_delay_s)
                log.info("export %s: %s (%s); retrying %d findings in %.2fs", signal,
                         getattr(code, "name", code), e.details() if hasattr(e, "details") else "",
                         len(seqs), delay)
                return delay
            self.metrics.failed.labels(signal).inc(len(seqs))
            log.error("export %s: permanent error %s (%s); dropping %d findings", signal,
                      getattr(code, "name", code), e.details() if hasattr(e, "details") else "", len(seqs))
            self._queue.mark_done(seqs, done)
            self._backoff.reset()
            return None
        rejected = int(rejected_of(response) or 0)
        rejected = min(rejected, len(seqs))
        if rejected:
            self.metrics.failed.labels(signal).inc(rejected)
            log.warning("export %s: endpoint rejected %d of %d (partial success: %s)", signal, rejected,
                        len(seqs), getattr(response.partial_success, "error_message", ""))  # type: ignore[attr-defined]
        self.metrics.sent.labels(signal).inc(len(seqs) - rejected)
        self._queue.mark_done(seqs, done)
        self._backoff.reset()
        return None
