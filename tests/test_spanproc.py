"""SpanProcess: the service graph and span signals in a child process, reached through proxies."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry, generate_latest

from receiver.errors import ConfigError, RetryableError
from receiver.graph import GraphConfig, ServiceGraph
from receiver.pipeline.queue import BoundedQueue, QueueConfig
from receiver.pipeline.spanproc import SpanProcess, SpanProcessConfig, SpanProcessError, warn_logs_only
from receiver.rca.signals import SignalsConfig, SpanSignals
from tests.otlp_support import RunningReceiver, local_config, make_logs, make_spans, wait_for
from tests.test_graph import ALL, Services, run_topology


def _without_wall_clock(snap: dict) -> dict:
    for e in snap["edges"]:
        e.pop("updated")  # wall-clock time of the last recorded call: differs between two graphs
    return snap


def chain_request(i: int) -> ExportTraceServiceRequest:
    """One trace through three services (user -> a -> b -> c), 5 spans, real SDK spans."""
    return encode_spans(make_spans(("a", "b", "c"), per_service=1, error_every=5 if i % 2 else 0))


@pytest.fixture
def sp() -> Iterator[SpanProcess]:
    p = SpanProcess(GraphConfig(), SignalsConfig(trace_wall_idle_s=0.0), registry=CollectorRegistry())
    p.start()
    try:
        yield p
    finally:
        p.shutdown()


def test_same_graph_and_signals_as_in_process(sp: SpanProcess) -> None:
    s = Services(*ALL)
    run_topology(s, iterations=6, payment_errors=3)
    reqs = [s.request("payments", "email"), s.request("checkout"), s.request("frontend", "notifier")]
    local = ServiceGraph(GraphConfig(), CollectorRegistry())
    signals = SpanSignals(SignalsConfig(trace_wall_idle_s=0.0), CollectorRegistry())
    for r in reqs:
        sp.consume_traces(r)
        local.consume_traces(r)
        signals.consume_traces(r)
    assert sp.graph.flush() == local.flush() == 12  # 6 geo-api + 6 peerless client halves expire
    remote = _without_wall_clock(sp.graph.snapshot())
    assert remote == _without_wall_clock(local.snapshot())
    calls = {(e["source"], e["target"]): (e["calls"], e["errors"]) for e in remote["edges"]}
    assert calls[("checkout", "payments")] == (6, 3) and calls[("user", "frontend")] == (6, 0)
    dg = sp.graph.digraph()
    assert sorted(dg.edges) == sorted(local.digraph().edges) and dg.nodes["postgres"]["virtual"] is True
    assert [(b.start_s, b.calls, b.errors) for b in sp.graph.edge_series("checkout", "payments")] == [
        (b.start_s, b.calls, b.errors) for b in local.edge_series("checkout", "payments")]
    assert {k: v for k, v in sp.graph.stats().items()} == local.stats()
    # signals: the same buckets, graph and evidence
    sp.signals.flush()
    signals.flush()
    assert sp.signals.nodes() == signals.nodes() and "payments" in sp.signals.nodes()
    assert sp.signals.edges() == signals.edges()
    for n in signals.nodes():
        assert sp.signals.node_buckets(n) == signals.node_buckets(n)
    assert sp.signals.samples("payments") == signals.samples("payments")
    assert len(sp.signals.samples("payments")) == 3
    assert sp.signals.virtual_nodes() == signals.virtual_nodes()
    assert sp.signals.complete_until_ns() == signals.complete_until_ns()


def test_logs_reach_the_signals_and_only_warn_and_above_are_sent(sp: SpanProcess) -> None:
    req = encode_logs(make_logs("checkout", count=4))
    info = ExportLogsServiceRequest()
    info.CopyFrom(req)
    for rl in info.resource_logs:
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                lr.severity_number = 9  # INFO
    assert warn_logs_only(info) is None
    assert warn_logs_only(req) is req
    mixed = ExportLogsServiceRequest()
    mixed.CopyFrom(req)
    mixed.resource_logs.extend(info.resource_logs)
    part = warn_logs_only(mixed)
    assert part is not None and len(part.resource_logs) == 1
    assert [lr.body.string_value for lr in part.resource_logs[0].scope_logs[0].log_records] == [
        f"payment {i} failed: timeout" for i in range(4)]
    sp.consume_logs(info)
    sp.consume_logs(mixed)
    texts = [x.text for x in sp.signals.samples("checkout")]
    assert texts == [f"payment {i} failed: timeout" for i in range(4)]
    sent = sp.registry.get_sample_value("llm_log_analyzer_spanproc_sent_bytes_total", {"signal": "logs"})
    assert sent == len(part.SerializeToString()) + 1  # the INFO-only request was not sent at all


def test_child_errors_propagate_with_their_type_and_traceback(sp: SpanProcess) -> None:
    with pytest.raises(TypeError, match="edge_series") as info:
        sp.graph.edge_series()
    assert any("raised in the span analysis process" in n and "Traceback" in n for n in info.value.__notes__)
    with pytest.raises(AttributeError, match="no_such_method"):
        sp.signals.no_such_method(1, x=2)
    with pytest.raises(AttributeError):
        sp.graph._lock  # noqa: B018 - private names never leave the parent
    with pytest.raises(AttributeError):
        sp.call("os", "system", "true")
    assert sp.alive() and sp.graph.snapshot() == {"nodes": [], "edges": []}  # the child survived


def test_child_metrics_appear_in_the_parent_registry(sp: SpanProcess) -> None:
    for i in range(3):
        sp.consume_traces(chain_request(i))
    sp.graph.flush()
    text = generate_latest(sp.registry).decode()
    assert 'traces_service_graph_request_total{client="a",connection_type="",server="b"} 3.0' in text
    assert 'traces_service_graph_request_failed_total{client="b",connection_type="",server="c"}' in text
    assert "traces_service_graph_request_server_seconds_bucket{" in text
    assert "rca_signals_spans_total 15.0" in text
    assert "llm_log_analyzer_spanproc_up 1.0" in text
    labels = {"client": "user", "server": "a", "connection_type": "virtual_node"}
    assert sp.registry.get_sample_value("traces_service_graph_request_total", labels) == 3.0


def test_backpressure_blocks_the_queue_worker_and_nothing_is_lost() -> None:
    reg = CollectorRegistry()
    sp = SpanProcess(registry=reg, config=SpanProcessConfig(capacity_bytes=1))
    queue = BoundedQueue(QueueConfig(capacity_items=20), [sp], [sp], reg)
    sp.start()
    queue.start()
    try:
        sp.pause()  # the child stops acknowledging
        accepted = 0
        refused = 0
        for i in range(40):
            try:
                queue.consume_traces(chain_request(i))
                accepted += 1
            except RetryableError:
                refused += 1
                break
        assert refused == 1, "the ingest queue must fill up while the child is paused"
        assert 1 <= accepted <= 6  # 1 in the child's pipe, 1 in the blocked worker, 4 queued (20 items)
        assert sp.registry.get_sample_value("llm_log_analyzer_spanproc_inflight_bytes") > 0
        sp.resume()
        assert queue.drain(60)
        stats = sp.stats()
        assert stats["spans"] == accepted * 5 and stats["messages"] == accepted
        sp.graph.flush()
        calls = {(e["source"], e["target"]): e["calls"] for e in sp.graph.snapshot()["edges"]}
        assert calls == {("user", "a"): accepted, ("a", "b"): accepted, ("b", "c"): accepted}
        assert reg.get_sample_value("llm_log_analyzer_queue_consumer_errors_total",
                                    {"signal": "traces", "consumer": "SpanProcess"}) is None
        assert reg.get_sample_value("llm_log_analyzer_spanproc_blocked_seconds_total") > 0
        assert sp.lost_spans == 0
    finally:
        queue.shutdown()
        sp.shutdown()


def test_a_blocked_sender_waits_rather_than_failing() -> None:
    sp = SpanProcess(config=SpanProcessConfig(capacity_bytes=1))
    sp.start()
    try:
        sp.pause()
        sp.consume_traces(chain_request(0))  # nothing in flight: sent at once
        t = threading.Thread(target=sp.consume_traces, args=(chain_request(1),))
        t.start()
        t.join(0.5)
        assert t.is_alive(), "the second request must wait for the first to be processed"
        sp.resume()
        t.join(30)
        assert not t.is_alive()
        assert sp.stats()["spans"] == 10
    finally:
        sp.shutdown()


def test_sigkill_is_detected_counted_and_the_child_restarted() -> None:
    reg = CollectorRegistry()
    sp = SpanProcess(registry=reg, config=SpanProcessConfig(restart_backoff_s=2.0))
    sp.start()
    try:
        sp.consume_traces(chain_request(0))
        assert sp.stats()["spans"] == 5
        first = sp.pid
        assert first is not None
        sp.pause()  # so the next two requests are surely unprocessed at the crash
        sp.consume_traces(chain_request(1))
        sp.consume_traces(chain_request(2))
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not sp.alive(), 10)
        ok, detail = sp.ready()
        assert not ok and "restarting" in detail and "exit code -9" in detail
        assert wait_for(sp.alive, 60)
        assert sp.pid != first and sp.crashes == 1 and sp.restarts == 1
        assert sp.lost_spans == 10
        assert reg.get_sample_value("llm_log_analyzer_spanproc_lost_spans_total") == 10
        assert reg.get_sample_value("llm_log_analyzer_spanproc_restarts_total") == 1
        # the new child starts empty and works
        sp.consume_traces(chain_request(3))
        sp.graph.flush()
        assert sp.stats()["spans"] == 5
        assert {(e["source"], e["target"], e["calls"]) for e in sp.graph.snapshot()["edges"]} == {
            ("user", "a", 1), ("a", "b", 1), ("b", "c", 1)}
    finally:
        sp.shutdown()


def test_without_restart_a_crash_fails_readiness_and_refuses_data() -> None:
    sp = SpanProcess(config=SpanProcessConfig(restart=False))
    sp.start()
    try:
        pid = sp.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: sp.state == "failed", 10)
        ok, detail = sp.ready()
        assert not ok and "restart is off" in detail
        with pytest.raises(RetryableError):
            sp.consume_traces(chain_request(0))
        with pytest.raises(SpanProcessError):
            sp.graph.snapshot()
    finally:
        sp.shutdown()
    assert sp.state == "stopped"


def test_a_stalled_child_is_killed_and_restarted() -> None:
    sp = SpanProcess(config=SpanProcessConfig(stall_timeout_s=1.0, restart_backoff_s=0.1))
    sp.start()
    try:
        pid = sp.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hung, not paused by us
        sp.consume_traces(chain_request(0))
        assert wait_for(lambda: sp.crashes == 1, 30)
        assert wait_for(sp.alive, 60) and sp.pid != pid
        assert sp.lost_spans == 5
    finally:
        sp.shutdown()


def test_shutdown_drains_what_was_sent() -> None:
    sp = SpanProcess()
    sp.start()
    sp.pause()
    for i in range(6):
        sp.consume_traces(chain_request(i))
    sp.shutdown()  # resumes, processes the 6 requests, flushes, stops
    assert sp.final_stats["spans"] == 30 and sp.final_stats["messages"] == 6
    assert sp.final_stats["graph"]["completed_calls"] == 18
    assert sp.state == "stopped" and not sp.alive()
    sp.shutdown()  # idempotent
    with pytest.raises(RetryableError):
        sp.consume_traces(chain_request(0))


def test_lifecycle_without_start() -> None:
    sp = SpanProcess()
    sp.shutdown()  # safe without start
    assert not sp.alive() and sp.ready() == (False, "span analysis process not started")
    with pytest.raises(RetryableError):
        sp.consume_traces(chain_request(0))
    with pytest.raises(SpanProcessError):
        sp.graph.snapshot()
    sp.consume_traces(ExportTraceServiceRequest())  # empty: nothing to do, no error


@pytest.mark.parametrize("key,value", [("capacity_bytes", 0), ("restart_backoff_s", 0),
                                       ("stall_timeout_s", -1), ("call_timeout_s", 0)])
def test_config_validation_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"spanproc.{key}"):
        SpanProcess(config=SpanProcessConfig(**{key: value}))
    with pytest.raises(ConfigError, match="graph.store_ttl_s"):
        SpanProcess(GraphConfig(store_ttl_s=0))


def test_sdk_exporter_through_receiver_queue_and_child() -> None:
    reg = CollectorRegistry()
    sp = SpanProcess(registry=reg)
    queue = BoundedQueue(QueueConfig(), [sp], [sp], reg)
    sp.start()
    queue.start()
    spans = make_spans(("web", "api", "db-proxy"), per_service=7, error_every=4)
    local = ServiceGraph(GraphConfig(), CollectorRegistry())
    local.consume_traces(encode_spans(spans))
    try:
        with RunningReceiver(local_config(http_endpoint=""), queue, queue, reg) as rr:
            exp = OTLPSpanExporter(endpoint=rr.grpc_target, insecure=True)
            assert exp.export(spans) == SpanExportResult.SUCCESS
            exp.shutdown()
            assert queue.drain(30)
        assert sp.graph.flush() == local.flush()
        assert _without_wall_clock(sp.graph.snapshot()) == _without_wall_clock(local.snapshot())
        assert sp.stats()["spans"] == len(spans) == 7 * 5
    finally:
        queue.shutdown()
        sp.shutdown()


def test_graph_only_child_has_no_signals() -> None:
    sp = SpanProcess(config=SpanProcessConfig(signals=False))
    sp.start()
    try:
        sp.consume_traces(chain_request(0))
        sp.consume_logs(encode_logs(make_logs("checkout", count=2)))  # nothing to send without signals
        assert sp.graph.flush() == 0 and len(sp.graph.snapshot()["edges"]) == 3
        with pytest.raises(AttributeError, match="signals is not built"):
            sp.signals.nodes()
        assert sp.registry.get_sample_value("llm_log_analyzer_spanproc_sent_bytes_total",
                                            {"signal": "logs"}) is None
        assert "rca_signals_spans_total" not in generate_latest(sp.registry).decode()
    finally:
        sp.shutdown()


def test_read_now_proxies_answer_behind_a_held_backlog(sp: SpanProcess) -> None:
    sp.consume_traces(chain_request(0))
    assert sp.graph.flush() == 0  # ordered: the first request is in the graph now
    sp.call("_ctl", "set_delay", 120.0)  # the child now holds each data message up to 120 s
    sp.consume_traces(chain_request(1))
    # the read channel answers from the current state, without waiting for the held request
    calls = {(e["source"], e["target"]): e["calls"] for e in sp.graph_now.snapshot()["edges"]}
    assert calls == {("user", "a"): 1, ("a", "b"): 1, ("b", "c"): 1}
    assert sp.signals_now.watermark_ns() > 0
    with pytest.raises(TypeError, match="edge_series"):
        sp.graph_now.edge_series()
    sp.call("_ctl", "set_delay", 0.0, _ordered=False)  # release the held request
    sp.graph_now.flush()  # state-changing methods stay ordered even on the read-now proxy
    calls = {(e["source"], e["target"]): e["calls"] for e in sp.graph_now.snapshot()["edges"]}
    assert calls == {("user", "a"): 2, ("a", "b"): 2, ("b", "c"): 2}
    assert sp.signals_now.nodes() == sp.signals.nodes()


def test_rca_through_the_proxies_matches_in_process() -> None:
    from receiver.model import (
        A_CONFIDENCE,
        A_SERVICE,
        A_WINDOW_END,
        A_WINDOW_START,
        EVENT_ANOMALY,
        EVENT_RCA,
        R_CANDIDATES,
        R_PATH,
        R_ROOT_CAUSE,
        Finding,
        FindingsSink,
    )
    from receiver.rca.stage import RcaConfig, RcaStage
    from receiver.sim.faults import Fault
    from receiver.sim.simulator import Simulator

    warmup, fault = 180.0, 60.0
    sim = Simulator(seed=21, faults=[Fault("db_down", "postgres", start_s=warmup)])
    graph, signals = ServiceGraph(GraphConfig(), CollectorRegistry()), SpanSignals()
    sp = SpanProcess(GraphConfig(), SignalsConfig())
    sp.start()
    try:
        for _, tr, lg in sim.run_virtual(warmup + fault, 10.0):
            for c in (graph, signals, sp):
                c.consume_traces(tr)
            signals.consume_logs(lg)
            sp.consume_logs(lg)
        end = sim.start_ns + int((warmup + 20) * 1e9)
        attrs = {A_SERVICE: "checkout", A_CONFIDENCE: 0.9, A_WINDOW_START: end - 30_000_000_000,
                 A_WINDOW_END: end}
        anomaly = Finding(EVENT_ANOMALY, attrs, body="error burst")
        reports = []
        for g, s in ((graph, signals), (sp.graph_now, sp.signals_now)):
            sink = FindingsSink()
            stage = RcaStage(RcaConfig(check_interval_s=0, trace_triggers=False), g, s, sink)
            stage.consume_findings([anomaly])
            stage.flush()
            reports.append([f.attributes for f in sink.findings if f.event_name == EVENT_RCA])
        local, remote = reports
        assert len(local) == 1 and local[0][R_ROOT_CAUSE] == "postgres"
        assert [(r[R_ROOT_CAUSE], r[R_CANDIDATES], r[R_PATH]) for r in remote] == [
            (r[R_ROOT_CAUSE], r[R_CANDIDATES], r[R_PATH]) for r in local]
    finally:
        sp.shutdown()


def test_raw_wire_bytes_are_sent_as_they_are(sp: SpanProcess) -> None:
    req = chain_request(0)
    raw = req.SerializeToString()
    sp.consume_traces(req, raw=raw)
    sp.graph.flush()
    assert {(e["source"], e["target"]) for e in sp.graph.snapshot()["edges"]} == {
        ("user", "a"), ("a", "b"), ("b", "c")}
    assert sp.stats()["spans"] == 5
    assert sp.registry.get_sample_value("llm_log_analyzer_spanproc_sent_bytes_total",
                                        {"signal": "traces"}) == len(raw) + 1
