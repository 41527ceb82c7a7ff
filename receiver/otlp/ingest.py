"""Transport-independent export logic shared by the gRPC servicers and the OTLP/HTTP handlers:
validate, hand the accepted records downstream, count, build the (partial-success) response.

Two things a BoundedQueue-like consumer may offer, detected once from its signatures:
  - `check_room(signal, size_bytes)`: called by the transports BEFORE decoding (`Ingest.check_room`), so
    a request that cannot get into a full queue is refused (UNAVAILABLE + RetryInfo / 503) without paying
    for the decode. An undecodable payload is then refused as UNAVAILABLE too, not INVALID_ARGUMENT: the
    client retries and gets INVALID_ARGUMENT once there is room (the OTLP spec asks for UNAVAILABLE when
    the server cannot take data now and does not order the checks).
  - `consume_*(req, raw=bytes)`: the request's original (decompressed) wire bytes, passed only when
    validation kept every record (so they encode exactly `req`); when records were rejected there are no
    raw bytes and whoever needs bytes re-serializes the filtered request.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry, Counter

from receiver.errors import PipelineError
from receiver.model import LogsConsumer, TracesConsumer
from receiver.otlp.status import WireError, from_exception
from receiver.otlp.validate import validate_logs, validate_traces

log = logging.getLogger(__name__)

TRACES = "traces"
LOGS = "logs"


class ReceiverMetrics:
    """Self-metrics named as the Collector's receiverhelper names them."""

    def __init__(self, registry: CollectorRegistry, receiver: str = "otlp") -> None:
        self.receiver = receiver
        labels = ["receiver", "transport"]
        self.accepted_spans = Counter(
            "otelcol_receiver_accepted_spans",
            "Spans successfully pushed into the pipeline.",
            labels,
            registry=registry,
        )
        self.refused_spans = Counter(
            "otelcol_receiver_refused_spans",
            "Spans that could not be pushed into the pipeline (invalid, or pipeline refused them).",
            labels,
            registry=registry,
        )
        self.accepted_logs = Counter(
            "otelcol_receiver_accepted_log_records",
            "Log records successfully pushed into the pipeline.",
            labels,
            registry=registry,
        )
        self.refused_logs = Counter(
            "otelcol_receiver_refused_log_records",
            "Log records that could not be pushed into the pipeline (invalid, or pipeline refused them).",
            labels,
            registry=registry,
        )
        self.requests = Counter(
            "otelcol_receiver_requests",
            "Export requests received, by outcome (success, partial, refused, invalid, too_large, "
            "unauthenticated, unsupported_media_type, internal).",
            [*labels, "signal", "outcome"],
            registry=registry,
        )

        # label children resolved once (hot path: a few increments per request)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Counter, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:  # bounded: transports x signals x outcomes
            child = self._children[key] = metric.labels(self.receiver, *labels)
        return child

    def request(self, transport: str, signal: str, outcome: str) -> None:
        self._child(self.requests, transport, signal, outcome).inc()

    def add(self, metric: Counter, transport: str, n: int) -> None:
        self._child(metric, transport).inc(n)


def outcome_for(err: WireError) -> str:
    name = err.code.name
    return {
        "UNAVAILABLE": "refused",
        "INVALID_ARGUMENT": "invalid",
        "RESOURCE_EXHAUSTED": "too_large",
        "UNAUTHENTICATED": "unauthenticated",
        "UNIMPLEMENTED": "unimplemented",
    }.get(name, "internal")


def _takes(consumer: Any, method: str, *names: str) -> bool:
    """True if `consumer.method` takes keyword arguments with all `names` (inspected once, at init)."""
    fn = getattr(consumer, method, None)
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params and params[n].kind in (params[n].POSITIONAL_OR_KEYWORD, params[n].KEYWORD_ONLY)
               for n in names)


def _takes_sizes(consumer: Any, method: str) -> bool:
    """BoundedQueue.consume_* accept `items=` and `size_bytes=` so the queue need not measure again."""
    return _takes(consumer, method, "items", "size_bytes")


def _room_check(consumer: Any) -> Any:
    fn = getattr(consumer, "check_room", None)
    return fn if callable(fn) else None


class Ingest:
    def __init__(
        self,
        traces: TracesConsumer | None,
        logs: LogsConsumer | None,
        metrics: ReceiverMetrics,
        default_retry_after_s: float,
    ) -> None:
        self.traces = traces
        self.logs = logs
        self.metrics = metrics
        self._retry_after = default_retry_after_s
        self._traces_sizes = _takes_sizes(traces, "consume_traces")
        self._logs_sizes = _takes_sizes(logs, "consume_logs")
        self._traces_raw = _takes(traces, "consume_traces", "raw")
        self._logs_raw = _takes(logs, "consume_logs", "raw")
        self._room = {TRACES: _room_check(traces), LOGS: _room_check(logs)}
        self._last_bug_log = -1e9

    def _refused(self, exc: Exception) -> WireError:
        if not isinstance(exc, PipelineError | WireError):  # a bug downstream: say so, at most every 10 s
            now = time.monotonic()
            if now - self._last_bug_log >= 10.0:
                self._last_bug_log = now
                log.error("OTLP receiver: downstream consumer raised %s", type(exc).__name__, exc_info=exc)
        return from_exception(exc, self._retry_after)

    def check_room(self, signal: str, size_bytes: int) -> None:
        """Before decoding a request of `size_bytes` (decompressed) bytes: raise WireError (UNAVAILABLE,
        retryable) if the consumer says it is full. An empty payload (an empty request, always a
        success) is never refused here."""
        check = self._room[signal]
        if check is None or size_bytes == 0:
            return
        try:
            check(signal, size_bytes)
        except Exception as exc:  # noqa: BLE001 - mapped to a wire status in one place
            raise self._refused(exc) from exc

    def export_traces(
        self,
        req: ExportTraceServiceRequest,
        transport: str,
        wire_bytes: int | None = None,
        raw: bytes | None = None,
    ) -> ExportTraceServiceResponse:
        """`wire_bytes`: the (decompressed) request size if known. `raw`: the bytes `req` was decoded from
        (passed on only if validation keeps every span). Raises WireError when the pipeline refuses the
        request."""
        assert self.traces is not None
        m = self.metrics
        v = validate_traces(req, raw)
        resp = ExportTraceServiceResponse()
        rejected = self._deliver(TRACES, self.traces.consume_traces, v, transport, wire_bytes, raw,
                                 self._traces_sizes, self._traces_raw, m.accepted_spans, m.refused_spans)
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = v.message
        return resp

    def export_logs(
        self,
        req: ExportLogsServiceRequest,
        transport: str,
        wire_bytes: int | None = None,
        raw: bytes | None = None,
    ) -> ExportLogsServiceResponse:
        """As export_traces, for log records."""
        assert self.logs is not None
        m = self.metrics
        v = validate_logs(req)
        resp = ExportLogsServiceResponse()
        rejected = self._deliver(LOGS, self.logs.consume_logs, v, transport, wire_bytes, raw,
                                 self._logs_sizes, self._logs_raw, m.accepted_logs, m.refused_logs)
        if rejected:
            resp.partial_success.rejected_log_records = rejected
            resp.partial_success.error_message = v.message
        return resp

    def _deliver(self, signal: str, consume: Any, v: Any, transport: str, wire_bytes: int | None,
                 raw: bytes | None, takes_sizes: bool, takes_raw: bool, accepted: Counter,
                 refused: Counter) -> int:
        """Hand the validated records to the consumer and count; returns how many were rejected
        (for partial_success). Raises WireError when the pipeline refuses the request."""
        m = self.metrics
        if v.total == 0:
            m.request(transport, signal, "success")
            return 0
        if v.accepted:
            kwargs: dict[str, Any] = {}
            if takes_sizes:
                kwargs["items"] = v.accepted
                kwargs["size_bytes"] = wire_bytes if wire_bytes is not None else v.request.ByteSize()
            if takes_raw and raw is not None and not v.rejected:
                kwargs["raw"] = raw
            try:
                consume(v.request, **kwargs)
            except Exception as exc:  # noqa: BLE001 - mapped to a wire status in one place
                err = self._refused(exc)
                m.add(refused, transport, v.total)
                m.request(transport, signal, outcome_for(err))
                err.counted = True
                raise err from exc
            m.add(accepted, transport, v.accepted)
        if v.rejected:
            m.add(refused, transport, v.rejected)
            m.request(transport, signal, "partial")
        else:
            m.request(transport, signal, "success")
        return v.rejected
