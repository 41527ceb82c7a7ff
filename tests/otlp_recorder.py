"""A real OTLP gRPC server (loopback) that records the requests it gets and can inject failures:
the peer the findings exporter and the app's end-to-end tests send to."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1 import logs_pb2


class Fault:
    def __init__(self, code: grpc.StatusCode, delay_s: float | None = None, where: str = "details",
                 signal_name: str = "any") -> None:
        self.code, self.delay_s, self.where, self.signal = code, delay_s, where, signal_name


class OtlpRecorder:
    def __init__(self, port: int = 0, credentials: grpc.ServerCredentials | None = None) -> None:
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.attempts: list[tuple[str, float, str]] = []  # (signal, monotonic time, outcome)
        self.faults: deque[Fault] = deque()
        self.always_fail: dict[str, grpc.StatusCode] = {}
        self._mu = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rec = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                rec._maybe_fail("logs", context)
                with rec._mu:
                    rec.logs.append(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802
                rec._maybe_fail("traces", context)
                with rec._mu:
                    rec.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        assert self.port, "could not bind"
        self.server.start()

    def _maybe_fail(self, signal_name: str, context: grpc.ServicerContext) -> None:
        with self._mu:
            self.metadata.append({m.key: m.value for m in context.invocation_metadata()})
            fault = None
            if signal_name in self.always_fail:
                fault = Fault(self.always_fail[signal_name])
            elif self.faults and self.faults[0].signal in ("any", signal_name):
                fault = self.faults.popleft()
            self.attempts.append((signal_name, time.monotonic(), fault.code.name if fault else "OK"))
        if fault is None:
            return
        if fault.delay_s is None:
            context.abort(fault.code, "injected")
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=int(fault.delay_s), nanos=int((fault.delay_s % 1) * 1e9)))
        if fault.where == "retryinfo-bin":
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(fault.code, "injected with retryinfo-bin")
        detail = any_pb2.Any()
        detail.Pack(info)
        st = status_pb2.Status(code=fault.code.value[0], message="injected with status details",
                               details=[detail])
        context.abort_with_status(rpc_status.to_status(st))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_records(self) -> list[logs_pb2.LogRecord]:
        with self._mu:
            return [r for req in self.logs for rl in req.resource_logs for sl in rl.scope_logs
                    for r in sl.log_records]

    def spans(self) -> list[Any]:
        with self._mu:
            return [s for req in self.traces for rs in req.resource_spans for ss in rs.scope_spans
                    for s in ss.spans]

    def stop(self) -> None:
        self.server.stop(0).wait()


def py(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [py(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs) -> dict[str, Any]:
    return {kv.key: py(kv.value) for kv in kvs}


