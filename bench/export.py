"""Findings exporter throughput: durable queue + OTLP/gRPC export vs. direct export (baseline).

    python -m bench export

Rows: (1) consume_findings() alone (fsync'd enqueue) with 1 and 100 findings per call; (2) end to end
(enqueue 100 per call, sender exports in batches of 256 over loopback gRPC with gzip, until flush);
baseline: the same findings encoded and exported directly over the same channel settings, no queue.
"""

from __future__ import annotations

import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from receiver.export import ExportConfig, FindingsExporter
from receiver.export.encode import logs_request
from receiver.model import Finding

N = 5000


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self) -> None:
        self.records = 0

    def Export(self, request, context):  # noqa: N802
        self.records += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        return logs_service_pb2.ExportLogsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):  # noqa: N802
        return trace_service_pb2.ExportTraceServiceResponse()


def _findings(n: int) -> list[Finding]:
    return [Finding(event_name="anomaly.detected", body=f"checkout error burst {i}",
                    attributes={"anomaly.service": f"svc-{i % 10}", "anomaly.severity": "high",
                                "anomaly.type": "error_burst", "anomaly.confidence": 0.8,
                                "anomaly.detector": "tier0",
                                "anomaly.window.start": 1_700_000_000_000_000_000,
                                "anomaly.window.end": 1_700_000_060_000_000_000,
                                "anomaly.evidence": ["ERROR payment timeout after <NUM>ms", "ERROR pool"]})
            for i in range(n)]


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    logs = _Logs()
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(logs, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    endpoint = f"127.0.0.1:{port}"
    rows: list[tuple[str, int, float]] = []
    try:
        findings = _findings(N)
        with tempfile.TemporaryDirectory() as tmp:
            # (1) enqueue only (exporter not started)
            for per_call in (1, 100):
                n = 500 if per_call == 1 else N
                qdir = str(Path(tmp) / f"q{per_call}")
                exp = FindingsExporter(ExportConfig(endpoint=endpoint, queue_dir=qdir))
                t = time.perf_counter()
                for i in range(0, n, per_call):
                    exp.consume_findings(findings[i:i + per_call])
                rows.append((f"enqueue only, {per_call}/call (fsync each)", n, time.perf_counter() - t))
                exp.shutdown()
            # (2) end to end
            exp = FindingsExporter(ExportConfig(endpoint=endpoint, queue_dir=str(Path(tmp) / "e2e")))
            exp.start()
            t = time.perf_counter()
            for i in range(0, N, 100):
                exp.consume_findings(findings[i:i + 100])
            assert exp.flush(120), "exporter did not drain"
            rows.append(("queue + export (batch 256, gzip)", N, time.perf_counter() - t))
            exp.shutdown()
        # baseline: direct export, no queue
        channel = grpc.insecure_channel(endpoint, compression=grpc.Compression.Gzip)
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        t = time.perf_counter()
        for i in range(0, N, 256):
            stub.Export(logs_request(findings[i:i + 256]), timeout=10)
        rows.append(("BASELINE direct encode + export (batch 256, gzip)", N, time.perf_counter() - t))
        channel.close()
        assert logs.records == 2 * N, logs.records
    finally:
        server.stop(0)
    print(f"{'case':52} {'findings':>9} {'seconds':>8} {'findings/s':>11}")
    for name, n, secs in rows:
        print(f"{name:52} {n:9d} {secs:8.3f} {n / secs:11.0f}")
    e2e, base = rows[2], rows[3]
    print(f"ratio end-to-end / baseline: {(e2e[1] / e2e[2]) / (base[1] / base[2]):.2f}")


if __name__ == "__main__":
    main()
