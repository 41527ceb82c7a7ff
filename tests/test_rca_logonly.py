"""A service that sends logs but no spans: its log anomaly gets an `rca.report` naming itself, with its
evidence, through the logs stage (templates, windows, tier-0 detector) and the RCA stage; never an
error. Also when the span signals hold more services than `signals.max_nodes`."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver.eval.rca import Pipeline
from receiver.model import EVENT_ANOMALY, EVENT_RCA, R_CANDIDATES, R_EVIDENCE, R_ROOT_CAUSE
from receiver.rca.signals import SignalsConfig, SpanSignals

T0 = 1_700_000_000 * 10**9


def logs_request(service: str, lines: list[tuple[float, int, str]]) -> ExportLogsServiceRequest:
    """(seconds after T0, severity number, body) lines of one service."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    sl = rl.scope_logs.add()
    for t, sev, body in lines:
        lr = sl.log_records.add()
        lr.time_unix_nano = T0 + int(t * 1e9)
        lr.severity_number = sev
        lr.severity_text = "ERROR" if sev >= 17 else "INFO"
        lr.body.string_value = body
    return req


def run_log_only(pipe: Pipeline, spans: ExportTraceServiceRequest | None = None) -> list:
    # ten quiet minutes of INFO lines, then a burst of connection errors
    for minute in range(10):
        pipe.logs.consume_logs(logs_request("hdfs", [
            (minute * 60 + s, 9, f"Receiving block blk_{minute}{s} src /10.0.0.{s % 7} dest /10.0.0.9")
            for s in range(0, 60, 2)]))
        pipe.rca.check()
    if spans is not None:
        pipe.signals.consume_wire(spans.SerializeToString())
    pipe.logs.consume_logs(logs_request("hdfs", [
        (600 + s, 17, f"DataXceiver error processing WRITE_BLOCK: java.io.IOException: Connection refused "
                      f"to /10.0.0.{s % 5}") for s in range(0, 60, 1)]))
    pipe.signals.consume_logs(logs_request("hdfs", [
        (600 + s, 17, "DataXceiver error processing WRITE_BLOCK: java.io.IOException: Connection refused")
        for s in range(0, 60, 1)]))
    pipe.flush()
    return pipe.sink.findings


def test_log_only_service_gets_a_report_naming_itself():
    pipe = Pipeline(use_logs=True)
    findings = run_log_only(pipe)
    anomalies = [f for f in findings if f.event_name == EVENT_ANOMALY]
    assert anomalies and all(f.attributes["anomaly.service"] == "hdfs" for f in anomalies)
    reports = [f for f in findings if f.event_name == EVENT_RCA]
    assert len(reports) == 1
    rep = reports[0].attributes
    assert rep[R_ROOT_CAUSE] == "hdfs"
    assert rep[R_CANDIDATES] == ["hdfs"]
    assert any("hdfs" in e for e in rep[R_EVIDENCE])
    assert pipe.rca.m_suppressed.labels("error")._value.get() == 0


def test_log_only_service_beyond_the_signals_node_cap():
    pipe = Pipeline(use_logs=True)
    # the span signals keep 3 services; the log-only one is evicted by spans of 5 others
    pipe.signals = SpanSignals(SignalsConfig(trace_wall_idle_s=0.0, max_nodes=3))
    pipe.rca.signals = pipe.signals
    req = ExportTraceServiceRequest()
    for i in range(5):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", f"svc{i}"
        sp = rs.scope_spans.add().spans.add()
        sp.trace_id, sp.span_id = bytes([i + 1]) * 16, bytes([i + 1]) * 8
        sp.start_time_unix_nano, sp.end_time_unix_nano = T0 + 590 * 10**9, T0 + 591 * 10**9
    findings = run_log_only(pipe, spans=req)
    assert "hdfs" not in pipe.signals.nodes()
    reports = [f for f in findings if f.event_name == EVENT_RCA]
    assert [r.attributes[R_ROOT_CAUSE] for r in reports] == ["hdfs"]
