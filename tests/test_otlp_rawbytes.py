"""Wire bytes pass-through (receiver -> BoundedQueue -> consumers with a `raw` parameter) and the cheap
refusal of a full queue before decoding."""

from __future__ import annotations

import gzip
import threading
from typing import Any

import grpc
import pytest
import requests
from google.protobuf.internal.encoder import _VarintBytes
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

from receiver.errors import RetryableError
from receiver.graph import GraphConfig, ServiceGraph
from receiver.otlp.grpc_server import TRACE_SERVICE
from receiver.otlp.status import RETRY_INFO_TRAILER
from receiver.pipeline.queue import BoundedQueue, QueueConfig, accepts_raw
from receiver.pipeline.spanproc import SpanProcess
from tests.otlp_support import RunningReceiver, Sink, local_config, make_spans

EXPORT = f"/{TRACE_SERVICE}/Export"


class RawSink(Sink):
    """Records (request, raw) pairs; optionally blocks until released."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.got: list[tuple[ExportTraceServiceRequest, bytes | None]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def consume_traces(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> None:
        self.entered.set()
        self.release.wait(20)
        self.got.append((request, raw))
        super().consume_traces(request)


def _export_bytes(target: str, payload: bytes) -> ExportTraceServiceResponse:
    """Send `payload` as the Export request body exactly as given (no client-side serialization)."""
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=None,
                              response_deserializer=ExportTraceServiceResponse.FromString)
        return call(payload, timeout=10)


def _metric(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def _queue(consumers: list[Any], reg: CollectorRegistry, **cfg: Any) -> BoundedQueue:
    q = BoundedQueue(QueueConfig(**cfg), consumers, [], reg)
    q.start()
    return q


def test_consumer_with_raw_gets_the_bytes_the_sdk_sent_on_both_transports() -> None:
    reg = CollectorRegistry()
    raw_sink, plain = RawSink(), Sink()
    queue = _queue([raw_sink, plain], reg)
    grpc_spans = make_spans(("web", "api"), per_service=3)
    http_spans = make_spans(("cart", "stock"), per_service=2)
    try:
        with RunningReceiver(local_config(), queue, None, reg) as rr:
            ex = OTLPSpanExporter(endpoint=rr.grpc_target, insecure=True)
            assert ex.export(grpc_spans) == SpanExportResult.SUCCESS
            ex.shutdown()
            hx = HttpSpanExporter(endpoint=rr.http_base + "/v1/traces", compression=Compression.Gzip)
            assert hx.export(http_spans) == SpanExportResult.SUCCESS  # raw = the decompressed body
            hx.shutdown()
            assert queue.drain(10)
        assert len(raw_sink.got) == 2
        for (req, raw), spans in zip(raw_sink.got, (grpc_spans, http_spans), strict=True):
            assert raw is not None
            assert ExportTraceServiceRequest.FromString(raw) == req == encode_spans(spans)
        # a consumer without `raw` still gets the request alone (no TypeError in the worker)
        assert [len(r.SerializeToString()) for r in plain.traces] == [len(raw) for _, raw in raw_sink.got]
        assert _metric(reg, "llm_log_analyzer_queue_consumer_errors_total", signal="traces",
                       consumer="Sink") == 0
    finally:
        queue.shutdown()


def test_partial_success_passes_no_raw_bytes_and_only_the_kept_spans() -> None:
    reg = CollectorRegistry()
    raw_sink = RawSink()
    queue = _queue([raw_sink], reg)
    req = encode_spans(make_spans(("web", "api"), per_service=2))  # 6 spans
    bad = req.resource_spans[0].scope_spans[0].spans[0]
    bad.trace_id = bytes(16)  # all-zero trace id: rejected
    try:
        with RunningReceiver(local_config(http_endpoint=""), queue, None, reg) as rr:
            resp = _export_bytes(rr.grpc_target, req.SerializeToString())
            assert resp.partial_success.rejected_spans == 1
            assert queue.drain(10)
        [(got, raw)] = raw_sink.got
        assert raw is None
        names = [s.span_id for rs in got.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert len(names) == 5 and bad.span_id not in names
    finally:
        queue.shutdown()


def test_raw_bytes_count_once_toward_capacity_bytes() -> None:
    reg = CollectorRegistry()
    held = RawSink(hold=True)
    queue = _queue([held], reg)
    data = encode_spans(make_spans(("web", "api"), per_service=2)).SerializeToString()
    try:
        with RunningReceiver(local_config(http_endpoint=""), queue, None, reg) as rr:
            _export_bytes(rr.grpc_target, data)
            assert held.entered.wait(10)  # the worker holds it: its bytes still count
            assert _metric(reg, "llm_log_analyzer_queue_size_bytes") == len(data)
            held.release.set()
            assert queue.drain(10)
        # direct callers that pass only raw= get its length as the size, once
        held.release.clear()
        held.entered.clear()
        queue.consume_traces(ExportTraceServiceRequest.FromString(data), raw=data)
        assert held.entered.wait(10)
        assert _metric(reg, "llm_log_analyzer_queue_size_bytes") == len(data)
        held.release.set()
        assert queue.drain(10)
    finally:
        held.release.set()
        queue.shutdown()


def test_raw_parameter_is_detected_from_the_signature() -> None:
    class KwOnly:
        def consume_traces(self, request: Any, *, raw: bytes | None = None) -> None: ...

    class AnyKw:
        def consume_traces(self, request: Any, **kw: Any) -> None: ...  # may forward to anything

    assert accepts_raw(KwOnly(), "consume_traces")
    assert accepts_raw(RawSink(), "consume_traces")
    assert not accepts_raw(AnyKw(), "consume_traces")
    assert not accepts_raw(Sink(), "consume_traces")
    assert not accepts_raw(object(), "consume_traces")


def test_full_queue_refuses_before_decoding() -> None:
    """While the queue is full, an undecodable payload gets UNAVAILABLE/503 + retry hint, not
    INVALID_ARGUMENT/400: the payload is not parsed at all (the client retries and learns it is invalid once
    there is room). An empty body is still a success, and too-large still wins (checked first)."""
    reg = CollectorRegistry()
    held = RawSink(hold=True)
    queue = _queue([held], reg, capacity_items=6, retry_after_s=2.0)
    first = encode_spans(make_spans(("web", "api"), per_service=2)).SerializeToString()  # 6 spans
    garbage = b"\xff\xff\xff\xff not protobuf"
    try:
        with RunningReceiver(local_config(max_recv_msg_size_mib=1), queue, None, reg) as rr:
            _export_bytes(rr.grpc_target, first)
            assert held.entered.wait(10)  # full: 6 of 6 items

            with pytest.raises(grpc.RpcError) as ei:
                _export_bytes(rr.grpc_target, garbage)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "ingest queue full (6 of 6 items" in ei.value.details()
            trailers = dict(ei.value.trailing_metadata())
            retry = error_details_pb2.RetryInfo.FromString(trailers[RETRY_INFO_TRAILER])
            assert retry.retry_delay.seconds == 2

            url = rr.http_base + "/v1/traces"
            pb = {"Content-Type": "application/x-protobuf"}
            r = requests.post(url, data=garbage, headers=pb, timeout=10)
            assert r.status_code == 503 and r.headers["Retry-After"] == "2"
            r = requests.post(url, data=gzip.compress(garbage), timeout=10,
                              headers={**pb, "Content-Encoding": "gzip"})
            assert r.status_code == 503
            js = {"Content-Type": "application/json"}
            r = requests.post(url, data=b"{not json", headers=js, timeout=10)
            assert r.status_code == 503
            assert requests.post(url, data=b"", headers=pb, timeout=10).status_code == 200  # empty: success
            assert _export_bytes(rr.grpc_target, b"") == ExportTraceServiceResponse()
            r = requests.post(url, data=b"\x00" * (1024 * 1024 + 1), headers=pb, timeout=10)
            assert r.status_code == 413  # size is checked before room
            assert r.headers.get("Retry-After") is None

            undecoded = "llm_log_analyzer_queue_refused_undecoded_requests_total"
            assert _metric(reg, undecoded, signal="traces") == 4
            assert _metric(reg, "otelcol_receiver_requests_total", receiver="otlp", transport="http",
                           signal="traces", outcome="refused") == 3
            assert _metric(reg, "llm_log_analyzer_queue_refused_items_total", signal="traces") == 0

            held.release.set()
            assert queue.drain(10)
            # room again: now the garbage is decoded and rejected as invalid
            with pytest.raises(grpc.RpcError) as ei:
                _export_bytes(rr.grpc_target, garbage)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert requests.post(url, data=garbage, headers=pb, timeout=10).status_code == 400
    finally:
        held.release.set()
        queue.shutdown()


def test_check_room_bytes_and_stopped_queue() -> None:
    reg = CollectorRegistry()
    held = RawSink(hold=True)
    q = BoundedQueue(QueueConfig(capacity_bytes=1000), [held], [], reg)
    with pytest.raises(RetryableError, match="not running"):
        q.check_room("traces", 10)
    q.start()
    try:
        q.check_room("traces", 5000)  # empty queue: even an over-capacity request may come in
        req = encode_spans(make_spans(("a",), per_service=1))
        q.consume_traces(req, size_bytes=600)
        assert held.entered.wait(10)
        q.check_room("traces", 400)  # 600 + 400 fits
        with pytest.raises(RetryableError, match="600 of 1000 bytes"):
            q.check_room("traces", 401)
        q.check_room("logs", 100)
        # both refusals counted (stopped, then full)
        assert _metric(reg, "llm_log_analyzer_queue_refused_undecoded_requests_total", signal="traces") == 2
    finally:
        held.release.set()
        q.shutdown()


def _non_canonical(req: ExportTraceServiceRequest) -> bytes:
    """Bytes that parse to `req` but are NOT what re-serializing it gives: each ResourceSpans repeats its
    (singular) `resource` field as an empty message, which the parser merges away (2 bytes longer each)."""
    out = b""
    for rs in req.resource_spans:
        assert rs.HasField("resource")
        body = rs.SerializeToString() + b"\x0a\x00"
        out += b"\x0a" + _VarintBytes(len(body)) + body
    return out


def test_spanprocess_gets_the_wire_bytes_end_to_end() -> None:
    reg = CollectorRegistry()
    sp = SpanProcess(registry=reg)
    queue = BoundedQueue(QueueConfig(), [sp], [sp], reg)
    sp.start()
    queue.start()
    sdk_spans = make_spans(("web", "api", "db-proxy"), per_service=4, error_every=3)
    odd = encode_spans(make_spans(("cart", "stock"), per_service=2))
    odd_bytes = _non_canonical(odd)
    assert ExportTraceServiceRequest.FromString(odd_bytes) == odd
    assert len(odd_bytes) == len(odd.SerializeToString()) + 2 * len(odd.resource_spans)
    local = ServiceGraph(GraphConfig(), CollectorRegistry())
    local.consume_traces(encode_spans(sdk_spans))
    local.consume_traces(odd)
    try:
        with RunningReceiver(local_config(http_endpoint=""), queue, queue, reg) as rr:
            exp = OTLPSpanExporter(endpoint=rr.grpc_target, insecure=True)
            assert exp.export(sdk_spans) == SpanExportResult.SUCCESS
            exp.shutdown()
            _export_bytes(rr.grpc_target, odd_bytes)
            assert queue.drain(30)
        odd_n = sum(len(ss.spans) for rs in odd.resource_spans for ss in rs.scope_spans)
        assert sp.stats()["spans"] == len(sdk_spans) + odd_n
        # the child was sent the received bytes (+1 tag byte per message), not a re-serialization:
        # the non-canonical request is 2 bytes per resource longer than its re-serialization would be
        sent = reg.get_sample_value("llm_log_analyzer_spanproc_sent_bytes_total", {"signal": "traces"})
        assert sent == len(encode_spans(sdk_spans).SerializeToString()) + 1 + len(odd_bytes) + 1
        assert sp.graph.flush() == local.flush()
        edges = {(e["source"], e["target"]): e["calls"] for e in sp.graph.snapshot()["edges"]}
        assert edges == {(e["source"], e["target"]): e["calls"] for e in local.snapshot()["edges"]}
        assert ("cart", "stock") in edges
    finally:
        queue.shutdown()
        sp.shutdown()


def test_logs_without_raw_consumers_are_unchanged() -> None:
    reg = CollectorRegistry()
    sink = Sink()
    q = BoundedQueue(QueueConfig(), [], [sink], reg)
    q.start()
    try:
        req = ExportLogsServiceRequest()
        req.resource_logs.add().scope_logs.add().log_records.add(body={"string_value": "x"})
        q.consume_logs(req, raw=req.SerializeToString())
        assert q.drain(5)
        assert sink.logs == [req]
    finally:
        q.shutdown()
