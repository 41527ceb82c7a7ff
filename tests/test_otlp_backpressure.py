"""Backpressure end to end: a tiny BoundedQueue and a slow consumer make the official SDK exporters get
UNAVAILABLE + RetryInfo (gRPC) / 503 + Retry-After (HTTP) and retry; in the end every span is delivered
exactly once. Plus many concurrent clients on both transports."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
import pytest
import requests
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

from receiver.otlp.status import RETRY_INFO_TRAILER
from receiver.pipeline.queue import BoundedQueue, QueueConfig
from tests.otlp_support import RunningReceiver, Sink, local_config, make_logs, make_spans


def _span_key(s) -> bytes:  # SDK ReadableSpan -> the bytes the receiver sees
    return s.context.trace_id.to_bytes(16, "big") + s.context.span_id.to_bytes(8, "big")


def test_full_queue_makes_sdk_exporters_retry_and_every_span_arrives_once() -> None:
    reg = CollectorRegistry()
    sink = Sink(delay_s=0.05)  # slow analysis
    queue = BoundedQueue(QueueConfig(capacity_items=12, retry_after_s=0.25), [sink], [sink], reg)
    queue.start()
    batches = [make_spans((f"svc{i}", f"dep{i}"), per_service=2) for i in range(8)]  # 6 spans each
    results: list[SpanExportResult] = []
    lock = threading.Lock()
    try:
        with RunningReceiver(local_config(), queue, queue, registry=reg) as rr:

            def client(batch) -> None:
                ex = OTLPSpanExporter(endpoint=rr.grpc_target, insecure=True, timeout=30)
                res = ex.export(batch)
                ex.shutdown()
                with lock:
                    results.append(res)

            threads = [threading.Thread(target=client, args=(b,)) for b in batches]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert queue.drain(10)
            assert results == [SpanExportResult.SUCCESS] * len(batches)
            sent = Counter(_span_key(s) for b in batches for s in b)
            got = Counter(s.trace_id + s.span_id for s in sink.spans())
            assert got == sent  # every span exactly once
            assert set(got.values()) == {1}
            # backpressure really happened and was signalled (not a silent drop)
            # refused before decoding while full (queue_refused_undecoded_requests), or after it when the
            # decoded request did not fit (queue_refused_items)
            assert (
                rr.metric("llm_log_analyzer_queue_refused_items_total", signal="traces")
                + rr.metric("llm_log_analyzer_queue_refused_undecoded_requests_total", signal="traces")
                > 0
            )
            assert (
                rr.metric(
                    "otelcol_receiver_requests_total",
                    receiver="otlp",
                    transport="grpc",
                    signal="traces",
                    outcome="refused",
                )
                > 0
            )
            assert rr.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == 48
    finally:
        queue.shutdown()


def test_full_queue_over_http_is_503_with_retry_after_and_sdk_retries() -> None:
    gate = threading.Event()

    class Blocking(Sink):
        def consume_traces(self, request) -> None:
            gate.wait(20)
            super().consume_traces(request)

    sink = Blocking()
    queue = BoundedQueue(QueueConfig(capacity_items=3, retry_after_s=1.0), [sink], [sink])
    queue.start()
    first, second = make_spans(("a", "b"), per_service=1), make_spans(("c", "d"), per_service=1)  # 3 each
    try:
        with RunningReceiver(local_config(), queue, queue) as rr:
            ex = HttpSpanExporter(endpoint=rr.http_base + "/v1/traces", timeout=30)
            assert ex.export(first) == SpanExportResult.SUCCESS  # now held by the blocked worker
            # raw check of the wire answer while the queue is full
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
            r = requests.post(
                rr.http_base + "/v1/traces",
                data=req.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            )
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
                trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            ri = error_details_pb2.RetryInfo.FromString(
                dict(ei.value.trailing_metadata())[RETRY_INFO_TRAILER]
            )
            assert ri.retry_delay.seconds == 1
            # the SDK exporter gets 503, waits Retry-After, retries; release the consumer meanwhile
            threading.Timer(0.5, gate.set).start()
            assert ex.export(second) == SpanExportResult.SUCCESS
            assert queue.drain(10)
            got = Counter(s.trace_id + s.span_id for s in sink.spans())
            assert got == Counter(_span_key(s) for s in first + second)
    finally:
        gate.set()
        queue.shutdown()


def test_many_concurrent_clients_on_both_transports() -> None:
    sink = Sink()
    queue = BoundedQueue(QueueConfig(capacity_items=100_000), [sink], [sink])
    queue.start()
    n_clients, rounds = 8, 5
    batches = {
        (c, r): make_spans((f"c{c}", "shared-db"), per_service=2)
        for c in range(n_clients)
        for r in range(rounds)
    }
    logs = make_logs("c0", 10)
    failures: list[str] = []
    try:
        with RunningReceiver(local_config(), queue, queue) as rr:

            def client(c: int) -> None:
                if c % 2:
                    ex = OTLPSpanExporter(
                        endpoint=rr.grpc_target, insecure=True, compression=grpc.Compression.Gzip
                    )
                else:
                    ex = HttpSpanExporter(endpoint=rr.http_base + "/v1/traces")
                lex = OTLPLogExporter(endpoint=rr.grpc_target, insecure=True)
                for r in range(rounds):
                    if ex.export(batches[(c, r)]) != SpanExportResult.SUCCESS:
                        failures.append(f"spans {c}/{r}")
                    if lex.export(logs) != LogRecordExportResult.SUCCESS:
                        failures.append(f"logs {c}/{r}")
                ex.shutdown()
                lex.shutdown()

            threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert queue.drain(10)
            assert failures == []
            sent = Counter(_span_key(s) for b in batches.values() for s in b)
            got = Counter(s.trace_id + s.span_id for s in sink.spans())
            assert got == sent and sum(got.values()) == n_clients * rounds * 6
            assert len(sink.log_records()) == n_clients * rounds * 10
            total = rr.metric(
                "otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc"
            ) + rr.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http")
            assert total == n_clients * rounds * 6
    finally:
        queue.shutdown()
