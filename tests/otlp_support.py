"""Helpers for the OTLP receiver tests: run the receiver on its own event-loop thread, in-memory sinks,
and telemetry made by the official OpenTelemetry SDK (TracerProvider / LoggerProvider)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from receiver.otlp import OtlpConfig, OtlpReceiver


class Sink:
    """Thread-safe in-memory TracesConsumer + LogsConsumer."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def consume_traces(self, request: ExportTraceServiceRequest) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.traces.append(request)

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.logs.append(request)

    def spans(self) -> list[Any]:
        with self._lock:
            reqs = list(self.traces)
        return [s for r in reqs for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def log_records(self) -> list[Any]:
        with self._lock:
            reqs = list(self.logs)
        return [x for r in reqs for rl in r.resource_logs for sl in rl.scope_logs for x in sl.log_records]

    def span_services(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            reqs = list(self.traces)
        for r in reqs:
            for rs in r.resource_spans:
                svc = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                )
                n = sum(len(ss.spans) for ss in rs.scope_spans)
                out[svc] = out.get(svc, 0) + n
        return out


class RunningReceiver:
    """Context manager: an OtlpReceiver started on a private asyncio loop in a background thread."""

    def __init__(
        self,
        config: OtlpConfig,
        traces: Any,
        logs: Any,
        registry: CollectorRegistry | None = None,
        grpc_services: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.receiver = OtlpReceiver(config, traces, logs, self.registry)
        for fn in grpc_services:
            self.receiver.add_grpc_service(fn)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="receiver-loop", daemon=True)

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> RunningReceiver:
        self.thread.start()
        try:
            self.run(self.receiver.start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self.receiver.shutdown(1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.receiver.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.receiver.http_port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def local_config(**kw: Any) -> OtlpConfig:
    kw.setdefault("grpc_endpoint", "127.0.0.1:0")
    kw.setdefault("http_endpoint", "127.0.0.1:0")
    return OtlpConfig(**kw)


def make_spans(
    services: Sequence[str] = ("frontend", "checkout", "payment"), per_service: int = 3, error_every: int = 0
) -> list[ReadableSpan]:
    """Real SDK spans: one trace per call chain, CLIENT/SERVER pairs across the given services."""
    out: list[ReadableSpan] = []
    providers = []
    for svc in services:
        mem = InMemorySpanExporter()
        tp = TracerProvider(resource=Resource.create({"service.name": svc}))
        tp.add_span_processor(SimpleSpanProcessor(mem))
        providers.append((tp, mem))
    n = 0
    for i in range(per_service):
        ctx = None
        for k, (tp, _mem) in enumerate(providers):
            tracer = tp.get_tracer("test")
            with tracer.start_as_current_span(f"handle {i}", context=ctx, kind=SpanKind.SERVER) as server:
                n += 1
                if error_every and n % error_every == 0:
                    server.set_status(Status(StatusCode.ERROR, "boom"))
                if k + 1 < len(providers):
                    with tracer.start_as_current_span(f"call {i}", kind=SpanKind.CLIENT) as client:
                        ctx = trace.set_span_in_context(client)
                        client.set_attribute("peer.service", services[k + 1])
    for tp, mem in providers:
        tp.force_flush()
        out.extend(mem.get_finished_spans())
        tp.shutdown()
    return out


def make_logs(service: str = "checkout", count: int = 5) -> list[ReadableLogRecord]:
    mem = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=Resource.create({"service.name": service}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    logger = lp.get_logger("test")
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tracer = tp.get_tracer("test")
    for i in range(count):
        with tracer.start_as_current_span("op"):  # gives the record a trace/span id
            logger.emit(
                body=f"payment {i} failed: timeout",
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                attributes={"attempt": i},
            )
    lp.force_flush()
    records = list(mem.get_finished_logs())
    lp.shutdown()
    tp.shutdown()
    return records


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def add_attr(attrs: Any, key: str, value: str | bool | int) -> None:
    """Append an OTLP KeyValue to a repeated attributes field, typed by the Python value."""
    a = attrs.add()
    a.key = key
    if isinstance(value, bool):
        a.value.bool_value = value
    elif isinstance(value, int):
        a.value.int_value = value
    else:
        a.value.string_value = value
