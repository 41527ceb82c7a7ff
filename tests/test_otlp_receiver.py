"""OTLP receiver conformance: official SDK exporters (gRPC + HTTP/protobuf) against the real servers,
hand-written OTLP/JSON, every kind of bad input, auth, status mapping."""

from __future__ import annotations

import gzip
import json
import socket
import tracemalloc
import zlib

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from receiver.errors import ConfigError, PermanentError, RetryableError
from receiver.otlp import AuthConfig, OtlpConfig
from receiver.otlp.http_server import _Inflater
from receiver.otlp.status import RETRY_INFO_TRAILER, WireError
from tests.otlp_support import RunningReceiver, Sink, local_config, make_logs, make_spans

PB = "application/x-protobuf"


def _trace_request(
    ids: list[tuple[bytes, bytes, bytes]], service: str = "svc"
) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key = "service.name"
    kv.value.string_value = service
    ss = rs.scope_spans.add()
    for i, (tid, sid, parent) in enumerate(ids):
        ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=parent, name=f"op{i}", kind=2)
    return req


GOOD_TID = bytes(range(1, 17))
GOOD_SID = bytes(range(1, 9))


# --- official SDK exporters, both transports, gzip on both -------------------------------------
@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
def test_grpc_sdk_exporters_deliver_every_span_and_log(compression: grpc.Compression) -> None:
    sink = Sink()
    spans = make_spans(("frontend", "checkout", "payment"), per_service=4, error_every=5)
    logs = make_logs("checkout", 6)
    with RunningReceiver(local_config(), sink, sink) as rr:
        tex = OTLPSpanExporter(endpoint=rr.grpc_target, insecure=True, compression=compression)
        lex = OTLPLogExporter(endpoint=rr.grpc_target, insecure=True, compression=compression)
        assert tex.export(spans) == SpanExportResult.SUCCESS
        assert lex.export(logs) == LogRecordExportResult.SUCCESS
        tex.shutdown()
        lex.shutdown()
        got_ids = sorted(s.span_id for s in sink.spans())
        assert got_ids == sorted(s.context.span_id.to_bytes(8, "big") for s in spans)
        assert sink.span_services() == {"frontend": 8, "checkout": 8, "payment": 4}
        errors = [s for s in sink.spans() if s.status.code == 2]
        assert len(errors) == 2  # every 5th of the 12 server spans
        recs = sink.log_records()
        assert [r.body.string_value for r in recs] == [f"payment {i} failed: timeout" for i in range(6)]
        assert all(len(r.trace_id) == 16 and len(r.span_id) == 8 for r in recs)
        assert rr.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == 20
        assert (
            rr.metric("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="grpc") == 6
        )
        assert (
            rr.metric(
                "otelcol_receiver_requests_total",
                receiver="otlp",
                transport="grpc",
                signal="traces",
                outcome="success",
            )
            == 1
        )


@pytest.mark.parametrize("compression", [HttpCompression.NoCompression, HttpCompression.Gzip])
def test_http_sdk_exporters_deliver_every_span_and_log(compression: HttpCompression) -> None:
    sink = Sink()
    spans = make_spans(("web", "api", "db-proxy"), per_service=3)
    logs = make_logs("api", 4)
    with RunningReceiver(local_config(), sink, sink) as rr:
        tex = HttpSpanExporter(endpoint=rr.http_base + "/v1/traces", compression=compression)
        lex = HttpLogExporter(endpoint=rr.http_base + "/v1/logs", compression=compression)
        assert tex.export(spans) == SpanExportResult.SUCCESS
        assert lex.export(logs) == LogRecordExportResult.SUCCESS
        assert len(sink.spans()) == len(spans) == 15
        assert sink.span_services() == {"web": 6, "api": 6, "db-proxy": 3}
        assert len(sink.log_records()) == 4
        assert rr.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http") == 15
        assert (
            rr.metric("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="http") == 4
        )


# --- hand-written OTLP/JSON -----------------------------------------------------------------
TRACE_JSON = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}],
                "someFutureField": {"x": 1},
            },
            "scopeSpans": [
                {
                    "scope": {"name": "manual"},
                    "spans": [
                        {
                            "traceId": "5B8EFFF798038103D269B633813FC60C",  # upper-case hex
                            "spanId": "eee19b7ec3c1b174",
                            "parentSpanId": "eee19b7ec3c1b173",
                            "name": "GET /cart",
                            "kind": 2,
                            "startTimeUnixNano": "1544712660000000000",  # int64 as string
                            "endTimeUnixNano": 1544712661000000000,  # int64 as number
                            "attributes": [{"key": "http.status_code", "value": {"intValue": "500"}}],
                            "status": {"code": 2, "message": "boom"},
                            "links": [
                                {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708"}
                            ],
                            "unknownField": [1, 2, 3],
                        },
                    ],
                }
            ],
        }
    ],
}


def test_http_json_hex_ids_int64_unknown_fields() -> None:
    sink = Sink()
    with RunningReceiver(local_config(), sink, sink) as rr:
        r = requests.post(
            rr.http_base + "/v1/traces",
            data=json.dumps(TRACE_JSON),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json() == {}
        (span,) = sink.spans()
        assert span.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")
        assert span.span_id == bytes.fromhex("eee19b7ec3c1b174")
        assert span.parent_span_id == bytes.fromhex("eee19b7ec3c1b173")
        assert span.links[0].trace_id == bytes(range(1, 17))
        assert span.links[0].span_id == bytes(range(1, 9))
        assert span.kind == 2
        assert span.start_time_unix_nano == 1544712660000000000
        assert span.end_time_unix_nano == 1544712661000000000
        assert span.attributes[0].value.int_value == 500
        assert span.status.code == 2


def test_http_json_logs_empty_ids_are_absent_and_bad_length_is_partial_success() -> None:
    sink = Sink()
    doc = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000000",
                                "severityNumber": 17,
                                "body": {"stringValue": "no trace context"},
                                "traceId": "",
                                "spanId": "",
                            },
                            {
                                "body": {"stringValue": "with ids"},
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203331",
                            },
                            {"body": {"stringValue": "short span id"}, "spanId": "b7ad6b71"},
                        ]
                    }
                ],
            }
        ]
    }
    with RunningReceiver(local_config(), sink, sink) as rr:
        r = requests.post(rr.http_base + "/v1/logs", json=doc, timeout=10)
        assert r.status_code == 200
        body = r.json()
        assert body["partialSuccess"]["rejectedLogRecords"] == "1"  # int64 -> decimal string
        assert "span_id is 4 bytes" in body["partialSuccess"]["errorMessage"]
        assert [x.body.string_value for x in sink.log_records()] == ["no trace context", "with ids"]
        assert sink.log_records()[0].severity_number == 17
        assert rr.metric("otelcol_receiver_refused_log_records_total", receiver="otlp", transport="http") == 1


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz" * 16}]}]}]}).encode(),
            "resourceSpans[0].scopeSpans[0].spans[0].traceId: invalid hex",
        ),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": 42}]}]}]}).encode(),
            "spans[0].spanId: must be a hex string",
        ),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}).encode(),
            "invalid OTLP/JSON",
        ),
        (json.dumps({"resourceSpans": {"a": 1}}).encode(), "resourceSpans: must be an array"),
    ],
)
def test_http_bad_json_is_400_with_status_naming_the_problem(payload: bytes, needle: str) -> None:
    sink = Sink()
    with RunningReceiver(local_config(), sink, sink) as rr:
        r = requests.post(
            rr.http_base + "/v1/traces",
            data=payload,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400
        st = json_format.Parse(r.text, status_pb2.Status())
        assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert needle in st.message
        assert sink.spans() == []
        # the server is still fine afterwards
        ok = requests.post(rr.http_base + "/v1/traces", json=TRACE_JSON, timeout=10)
        assert ok.status_code == 200


def test_bad_protobuf_is_invalid_argument_on_both_transports() -> None:
    sink = Sink()
    garbage = b"\x0a\xff\xff\xff\xff\x0f\x01"  # field 1, length far beyond the buffer
    with RunningReceiver(local_config(), sink, sink) as rr:
        r = requests.post(rr.http_base + "/v1/traces", data=garbage, headers={"Content-Type": PB}, timeout=10)
        assert r.status_code == 400
        assert r.headers["Content-Type"] == PB
        st = status_pb2.Status.FromString(r.content)
        assert "cannot decode ExportTraceServiceRequest" in st.message
        with grpc.insecure_channel(rr.grpc_target) as ch:
            call = ch.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as ei:
                call(garbage, timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "cannot decode ExportLogsServiceRequest" in ei.value.details()
        assert (
            rr.metric(
                "otelcol_receiver_requests_total",
                receiver="otlp",
                transport="grpc",
                signal="logs",
                outcome="invalid",
            )
            == 1
        )


def test_grpc_partial_success_rejects_bad_ids_keeps_the_rest() -> None:
    sink = Sink()
    req = _trace_request(
        [
            (GOOD_TID, GOOD_SID, b""),
            (GOOD_TID[:15], GOOD_SID, b""),  # 15-byte trace id
            (bytes(16), GOOD_SID, b""),  # all-zero trace id
            (GOOD_TID, GOOD_SID[:7], b""),  # 7-byte span id
            (GOOD_TID, b"\x09" * 8, GOOD_SID),
        ]
    )
    logs = logs_service_pb2.ExportLogsServiceRequest()
    sl = logs.resource_logs.add().scope_logs.add()
    sl.log_records.add(body={"string_value": "ok, no ids"})
    sl.log_records.add(body={"string_value": "bad"}, trace_id=b"\x01" * 10)
    with RunningReceiver(local_config(), sink, sink) as rr, grpc.insecure_channel(rr.grpc_target) as ch:
        resp = trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=10)
        assert resp.partial_success.rejected_spans == 3
        msg = resp.partial_success.error_message
        assert msg.startswith("3 of 5 spans rejected")
        assert "trace_id is 15 bytes (want 16)" in msg and "trace_id is all zero" in msg
        assert "span_id is 7 bytes (want 8)" in msg
        assert [s.name for s in sink.spans()] == ["op0", "op4"]
        lresp = logs_service_pb2_grpc.LogsServiceStub(ch).Export(logs, timeout=10)
        assert lresp.partial_success.rejected_log_records == 1
        assert "trace_id is 10 bytes" in lresp.partial_success.error_message
        assert [x.body.string_value for x in sink.log_records()] == ["ok, no ids"]
        assert rr.metric("otelcol_receiver_refused_spans_total", receiver="otlp", transport="grpc") == 3
        assert rr.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == 2


def test_empty_request_succeeds_without_partial_success() -> None:
    sink = Sink()
    with RunningReceiver(local_config(), sink, sink) as rr, grpc.insecure_channel(rr.grpc_target) as ch:
        resp = trace_service_pb2_grpc.TraceServiceStub(ch).Export(
            trace_service_pb2.ExportTraceServiceRequest(), timeout=10
        )
        assert not resp.HasField("partial_success")
        lresp = logs_service_pb2_grpc.LogsServiceStub(ch).Export(
            logs_service_pb2.ExportLogsServiceRequest(), timeout=10
        )
        assert not lresp.HasField("partial_success")
        r = requests.post(rr.http_base + "/v1/traces", data=b"", headers={"Content-Type": PB}, timeout=10)
        assert r.status_code == 200
        assert not trace_service_pb2.ExportTraceServiceResponse.FromString(r.content).HasField(
            "partial_success"
        )
        r = requests.post(rr.http_base + "/v1/logs", json={}, timeout=10)
        assert r.status_code == 200 and r.json() == {}
        assert sink.traces == [] and sink.logs == []


# --- size limits after decompression -------------------------------------------------------
def test_oversize_after_decompression_grpc_and_http() -> None:
    sink = Sink()
    big = _trace_request([(GOOD_TID, GOOD_SID, b"")])
    attr = big.resource_spans[0].scope_spans[0].spans[0].attributes.add()
    attr.key = "blob"
    attr.value.string_value = "0" * (3 * 1024 * 1024)  # 3 MiB, compresses to a few KiB
    raw = big.SerializeToString()
    bomb = gzip.compress(raw)
    assert len(bomb) < 64 * 1024
    with RunningReceiver(local_config(max_recv_msg_size_mib=1), sink, sink) as rr:
        with grpc.insecure_channel(rr.grpc_target, compression=grpc.Compression.Gzip) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                trace_service_pb2_grpc.TraceServiceStub(ch).Export(big, timeout=10)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # a request under the limit on the same channel still works
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(
                _trace_request([(GOOD_TID, GOOD_SID, b"")]), timeout=10
            )
        r = requests.post(
            rr.http_base + "/v1/traces",
            data=bomb,
            headers={"Content-Type": PB, "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert r.status_code == 413
        assert "exceeds the limit of 1048576 bytes" in status_pb2.Status.FromString(r.content).message
        r = requests.post(rr.http_base + "/v1/traces", data=raw, headers={"Content-Type": PB}, timeout=10)
        assert r.status_code == 413
        assert len(sink.spans()) == 1


def test_gzip_bomb_is_never_inflated_beyond_the_limit() -> None:
    comp = zlib.compressobj(wbits=31)
    chunk = bytes(1024 * 1024)
    bomb = b"".join(comp.compress(chunk) for _ in range(128)) + comp.flush()  # 128 MiB of zeros
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        inflater = _Inflater("gzip", limit)
        with pytest.raises(WireError) as ei:
            for i in range(0, len(bomb), 65536):
                inflater.feed(bomb[i : i + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.http_status == 413
    assert peak < 8 * limit  # the bomb inflates to 128 MiB; we never hold more than ~the limit


def test_http_gzip_multi_member_and_corrupt_bodies() -> None:
    sink = Sink()
    raw = _trace_request([(GOOD_TID, GOOD_SID, b"")]).SerializeToString()
    two_members = gzip.compress(raw[:10]) + gzip.compress(raw[10:])
    with RunningReceiver(local_config(), sink, sink) as rr:
        h = {"Content-Type": PB, "Content-Encoding": "gzip"}
        assert (
            requests.post(rr.http_base + "/v1/traces", data=two_members, headers=h, timeout=10).status_code
            == 200
        )
        deflated = requests.post(
            rr.http_base + "/v1/traces",
            data=zlib.compress(raw),
            headers={"Content-Type": PB, "Content-Encoding": "deflate"},
            timeout=10,
        )
        assert deflated.status_code == 200
        r = requests.post(rr.http_base + "/v1/traces", data=b"not gzip at all", headers=h, timeout=10)
        assert (
            r.status_code == 400
            and "invalid gzip request body" in status_pb2.Status.FromString(r.content).message
        )
        r = requests.post(rr.http_base + "/v1/traces", data=gzip.compress(raw)[:-6], headers=h, timeout=10)
        assert r.status_code == 400 and "truncated gzip" in status_pb2.Status.FromString(r.content).message
        r = requests.post(
            rr.http_base + "/v1/traces",
            data=raw,
            headers={"Content-Type": PB, "Content-Encoding": "br"},
            timeout=10,
        )
        assert r.status_code == 415
        assert len(sink.spans()) == 2


def test_http_wrong_method_and_content_type() -> None:
    sink = Sink()
    with RunningReceiver(local_config(), sink, sink) as rr:
        assert requests.get(rr.http_base + "/v1/traces", timeout=10).status_code == 405
        assert requests.put(rr.http_base + "/v1/logs", data=b"", timeout=10).status_code == 405
        r = requests.post(
            rr.http_base + "/v1/traces", data=b"hello", headers={"Content-Type": "text/plain"}, timeout=10
        )
        assert r.status_code == 415
        assert "application/x-protobuf" in r.text
        assert (
            requests.post(
                rr.http_base + "/v1/metrics", data=b"", headers={"Content-Type": PB}, timeout=10
            ).status_code
            == 404
        )


def test_custom_url_paths_and_disabled_signal() -> None:
    sink = Sink()
    cfg = local_config(traces_url_path="/otlp/traces", logs_url_path="/otlp/logs")
    with RunningReceiver(cfg, sink, None) as rr:
        r = requests.post(rr.http_base + "/otlp/traces", json=TRACE_JSON, timeout=10)
        assert r.status_code == 200
        assert requests.post(rr.http_base + "/otlp/logs", json={}, timeout=10).status_code == 404
        with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
            logs_service_pb2_grpc.LogsServiceStub(ch).Export(
                logs_service_pb2.ExportLogsServiceRequest(), timeout=10
            )
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- pipeline errors -> wire statuses ------------------------------------------------------
class _Raising:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def consume_traces(self, request: object) -> None:
        raise self.exc

    def consume_logs(self, request: object) -> None:
        raise self.exc


def test_retryable_error_maps_to_unavailable_with_retry_info_in_both_trailers_and_503() -> None:
    consumer = _Raising(RetryableError("queue full", retry_after_s=2.5))
    with RunningReceiver(local_config(), consumer, consumer) as rr:
        with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(
                _trace_request([(GOOD_TID, GOOD_SID, b"")]), timeout=10
            )
        err = ei.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(err.trailing_metadata())
        ri = error_details_pb2.RetryInfo.FromString(trailers[RETRY_INFO_TRAILER])
        assert (ri.retry_delay.seconds, ri.retry_delay.nanos) == (2, 500_000_000)
        st = rpc_status.from_call(err)
        assert st is not None and st.code == grpc.StatusCode.UNAVAILABLE.value[0]
        ri2 = error_details_pb2.RetryInfo()
        assert st.details[0].Unpack(ri2) and ri2 == ri
        r = requests.post(
            rr.http_base + "/v1/logs",
            json={"resourceLogs": [{"scopeLogs": [{"logRecords": [{}]}]}]},
            timeout=10,
        )
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "3"
        assert json.loads(r.text)["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
        assert rr.metric("otelcol_receiver_refused_spans_total", receiver="otlp", transport="grpc") == 1
        assert (
            rr.metric(
                "otelcol_receiver_requests_total",
                receiver="otlp",
                transport="http",
                signal="logs",
                outcome="refused",
            )
            == 1
        )


def test_permanent_error_maps_to_invalid_argument_and_400() -> None:
    consumer = _Raising(PermanentError("schema violation"))
    with RunningReceiver(local_config(), consumer, consumer) as rr:
        with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(
                _trace_request([(GOOD_TID, GOOD_SID, b"")]), timeout=10
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "schema violation" in ei.value.details()
        assert RETRY_INFO_TRAILER not in dict(ei.value.trailing_metadata())
        r = requests.post(rr.http_base + "/v1/traces", json=TRACE_JSON, timeout=10)
        assert r.status_code == 400 and "Retry-After" not in r.headers


def test_unexpected_consumer_exception_is_unavailable_logged_and_server_survives(caplog) -> None:
    consumer = _Raising(KeyError("bug"))
    with RunningReceiver(local_config(retry_after_s=4.0), consumer, consumer) as rr:
        for _ in range(2):
            r = requests.post(rr.http_base + "/v1/traces", json=TRACE_JSON, timeout=10)
            assert r.status_code == 503 and r.headers["Retry-After"] == "4"
    bug_logs = [rec for rec in caplog.records if "downstream consumer raised KeyError" in rec.getMessage()]
    assert len(bug_logs) == 1  # rate-limited


# --- auth ----------------------------------------------------------------------------------
def test_bearer_auth_on_both_transports(tmp_path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\nfile-token\n\n")
    sink = Sink()
    cfg = local_config(auth=AuthConfig(bearer_tokens=["s3cret"], token_file=str(token_file)))
    spans = make_spans(("a", "b"), per_service=1)
    with RunningReceiver(cfg, sink, sink) as rr:
        # right token (from the list and from the file), via the SDK exporters
        ok = OTLPSpanExporter(
            endpoint=rr.grpc_target, insecure=True, headers={"authorization": "Bearer s3cret"}
        )
        assert ok.export(spans) == SpanExportResult.SUCCESS
        ok_http = HttpSpanExporter(
            endpoint=rr.http_base + "/v1/traces", headers={"Authorization": "Bearer file-token"}
        )
        assert ok_http.export(spans) == SpanExportResult.SUCCESS
        assert len(sink.spans()) == 2 * len(spans)
        # wrong / missing token
        with grpc.insecure_channel(rr.grpc_target) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            req = _trace_request([(GOOD_TID, GOOD_SID, b"")])
            for md, reason in [
                ((), "missing authorization"),
                ((("authorization", "Bearer nope"),), "invalid"),
                ((("authorization", "Basic czNjcmV0"),), "Bearer scheme"),
            ]:
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Export(req, metadata=md, timeout=10)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason in ei.value.details()
        bad = OTLPSpanExporter(
            endpoint=rr.grpc_target, insecure=True, headers={"authorization": "Bearer wrong"}
        )
        assert bad.export(spans) == SpanExportResult.FAILURE
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = requests.post(rr.http_base + "/v1/traces", json=TRACE_JSON, headers=headers, timeout=10)
            assert r.status_code == 401
            assert json.loads(r.text)["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert len(sink.spans()) == 2 * len(spans)
        assert (
            rr.metric(
                "otelcol_receiver_requests_total",
                receiver="otlp",
                transport="http",
                signal="traces",
                outcome="unauthenticated",
            )
            == 2
        )


def test_extra_grpc_service_shares_server_and_auth() -> None:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"pong:" + request

    async def aecho(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return echo(request, context)

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(aecho)}
                )
            ]
        )

    cfg = local_config(auth=AuthConfig(bearer_tokens=["t0k"]))
    with RunningReceiver(cfg, Sink(), Sink(), grpc_services=[register]) as rr:
        with grpc.insecure_channel(rr.grpc_target) as ch:
            ping = ch.unary_unary("/test.Echo/Ping")
            assert ping(b"x", metadata=(("authorization", "Bearer t0k"),), timeout=10) == b"pong:x"
            with pytest.raises(grpc.RpcError) as ei:
                ping(b"x", timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(RuntimeError):
            rr.receiver.add_grpc_service(register)


# --- config --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"grpc_endpoint": "nohost"}, "otlp.grpc_endpoint"),
        ({"http_endpoint": "127.0.0.1:99999"}, "otlp.http_endpoint"),
        ({"grpc_endpoint": "", "http_endpoint": ""}, "otlp:"),
        ({"max_recv_msg_size_mib": 0}, "otlp.max_recv_msg_size_mib"),
        ({"traces_url_path": "v1/traces"}, "otlp.traces_url_path"),
        ({"logs_url_path": "/v1/traces"}, "otlp.logs_url_path"),
        ({"retry_after_s": 0}, "otlp.retry_after_s"),
        ({"auth": AuthConfig(token_file="/nonexistent/tokens")}, "otlp.auth.token_file"),
        ({"auth": AuthConfig(bearer_tokens=[""])}, "otlp.auth.bearer_tokens"),
    ],
)
def test_config_validation_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        OtlpConfig(**kwargs).validate()
    assert str(ei.value).startswith(key)


def test_default_config_is_valid_and_collector_like() -> None:
    cfg = OtlpConfig()
    cfg.validate()
    assert (cfg.grpc_endpoint, cfg.http_endpoint) == ("127.0.0.1:4317", "127.0.0.1:4318")
    assert cfg.max_recv_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize("key", ["grpc_endpoint", "http_endpoint"])
def test_port_in_use_is_a_clear_error_naming_the_key(key: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = local_config(**{key: f"127.0.0.1:{busy.getsockname()[1]}"})
        with pytest.raises(OSError, match=f"otlp.{key}: cannot listen on 127.0.0.1:"):
            with RunningReceiver(cfg, Sink(), Sink()):
                pass


def test_pathologically_nested_payloads_are_400_not_a_crash() -> None:
    sink = Sink()
    deep_json = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_pb = _trace_request([(GOOD_TID, GOOD_SID, b"")])
    attr = deep_pb.resource_spans[0].scope_spans[0].spans[0].attributes.add()
    attr.key = "deep"
    value = attr.value
    for _ in range(150):  # deeper than the protobuf parser's recursion limit (100)
        kv = value.kvlist_value.values.add()
        kv.key = "k"
        value = kv.value
    data = deep_pb.SerializeToString()
    with RunningReceiver(local_config(), sink, sink) as rr:
        r = requests.post(
            rr.http_base + "/v1/traces",
            data=deep_json,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400 and "nested too deeply" in r.text
        r = requests.post(rr.http_base + "/v1/traces", data=data, headers={"Content-Type": PB}, timeout=10)
        assert r.status_code == 400
        assert "cannot decode" in status_pb2.Status.FromString(r.content).message
        with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(data, timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert requests.post(rr.http_base + "/v1/traces", json=TRACE_JSON, timeout=10).status_code == 200
        assert len(sink.spans()) == 1


def test_shutdown_is_safe_without_start_and_idempotent() -> None:
    import asyncio

    from receiver.otlp import OtlpReceiver

    async def run() -> tuple[int | None, int | None]:
        r = OtlpReceiver(local_config(), Sink(), Sink())
        await r.shutdown()
        await r.start()
        await r.start()  # idempotent
        ports = (r.grpc_port, r.http_port)
        await r.shutdown()
        await r.shutdown()
        return ports

    grpc_port, http_port = asyncio.run(run())
    assert grpc_port and http_port and grpc_port != http_port
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"http://127.0.0.1:{http_port}/v1/traces", json={}, timeout=5)
