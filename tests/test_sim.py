"""The microservice simulator: official SDK instrumentation, determinism, faults, live OTLP gRPC."""

from __future__ import annotations

import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from receiver.rca.signals import SpanSignals
from receiver.sim.faults import DEFAULT_TARGETS, FAULT_KINDS, Fault, default_fault
from receiver.sim.simulator import SERVICES, Simulator
from tests.otlp_support import RunningReceiver, Sink, local_config


def _attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


def _collect(sim: Simulator, seconds: float, step: float = 10.0):
    spans, logs = [], []
    for _, tr, lg in sim.run_virtual(seconds, step):
        for rs in tr.resource_spans:
            svc = _attrs(rs.resource.attributes)["service.name"]
            for ss in rs.scope_spans:
                spans += [(svc, s, _attrs(rs.resource.attributes)) for s in ss.spans]
        for rl in lg.resource_logs:
            svc = _attrs(rl.resource.attributes)["service.name"]
            for sl in rl.scope_logs:
                logs += [(svc, r) for r in sl.log_records]
    return spans, logs


def test_sdk_instrumentation_shape():
    sim = Simulator(seed=3)
    spans, logs = _collect(sim, 60)
    services = {svc for svc, _, _ in spans}
    assert services == set(SERVICES) and len(services) >= 8
    kinds = {s.kind for _, s, _ in spans}
    assert {Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER,
            Span.SPAN_KIND_CONSUMER} <= kinds
    db = [s for _, s, _ in spans if _attrs(s.attributes).get("db.system") == "postgresql"]
    assert db and all(_attrs(s.attributes).get("db.name") == "shop" for s in db)
    assert all(s.kind == Span.SPAN_KIND_CLIENT for s in db)
    cache = [s for _, s, _ in spans if _attrs(s.attributes).get("db.system") == "redis"]
    assert cache
    # the queue consumer links to the producer span (and is its child in the same trace)
    producers = {s.span_id: s for _, s, _ in spans if s.kind == Span.SPAN_KIND_PRODUCER}
    consumers = [(svc, s) for svc, s, _ in spans if s.kind == Span.SPAN_KIND_CONSUMER]
    assert consumers and all(svc == "notification" for svc, _ in consumers)
    for _, c in consumers:
        assert len(c.links) == 1 and c.links[0].span_id in producers
        assert c.links[0].trace_id == c.trace_id and c.parent_span_id == c.links[0].span_id
    # resources carry service.name and the SDK's telemetry.sdk.* attributes
    res = spans[0][2]
    assert res["telemetry.sdk.name"] == "opentelemetry" and "service.version" in res
    # logs correlate with existing spans
    span_ids = {s.span_id for _, s, _ in spans}
    with_ctx = [r for _, r in logs if r.span_id]
    assert len(with_ctx) > 0.9 * len(logs)
    assert all(r.span_id in span_ids and len(r.trace_id) == 16 for r in with_ctx)
    assert {svc for svc, _ in logs} >= {"frontend", "recommendation", "payment"}
    # the chatty service logs the most
    counts = {}
    for svc, _ in logs:
        counts[svc] = counts.get(svc, 0) + 1
    assert max(counts, key=counts.get) == "recommendation"
    # virtual time: 60 s of spans, historical timestamps
    ts = [s.start_time_unix_nano for _, s, _ in spans]
    assert (max(ts) - min(ts)) / 1e9 == pytest.approx(60, abs=3)
    assert max(ts) < time.time_ns()


def test_deterministic_by_seed():
    a1 = [(t.SerializeToString(), g.SerializeToString()) for _, t, g in Simulator(seed=5).run_virtual(20, 10)]
    a2 = [(t.SerializeToString(), g.SerializeToString()) for _, t, g in Simulator(seed=5).run_virtual(20, 10)]
    b = [(t.SerializeToString(), g.SerializeToString()) for _, t, g in Simulator(seed=6).run_virtual(20, 10)]
    assert a1 == a2
    assert a1 != b


def _errors_by_service(spans) -> dict[str, int]:
    out: dict[str, int] = {}
    for svc, s, _ in spans:
        if s.status.code == Status.STATUS_CODE_ERROR and s.kind == Span.SPAN_KIND_SERVER:
            out[svc] = out.get(svc, 0) + 1
    return out


def test_faults_change_the_telemetry():
    # db down: client spans to postgres fail, callers log the refused connection
    spans, logs = _collect(Simulator(seed=1, faults=[Fault("db_down", "postgres", start_s=0)]), 30)
    db = [s for _, s, _ in spans if _attrs(s.attributes).get("db.system") == "postgresql"]
    assert db and all(s.status.code == Status.STATUS_CODE_ERROR for s in db)
    assert any("Connection refused" in r.body.string_value for _, r in logs)
    # wrong value: the callee's server spans stay OK, the caller's fail and name the callee
    spans, logs = _collect(Simulator(seed=1, faults=[Fault("wrong_value", "payment", caller="checkout")]), 60)
    errs = _errors_by_service(spans)
    assert errs.get("payment", 0) == 0 and errs.get("checkout", 0) > 3
    assert any("invalid response from payment" in r.body.string_value for svc, r in logs if svc == "checkout")
    # bad deploy: a new service.version and a new error template
    spans, logs = _collect(Simulator(seed=1, faults=[Fault("bad_deploy", "cart", start_s=10)]), 40)
    versions = {res["service.version"] for svc, _, res in spans if svc == "cart"}
    assert versions == {"1.4.0", "1.5.0"}
    assert any("unknown field 'discount_v2'" in r.body.string_value for svc, r in logs if svc == "cart")
    # network delay: the client/server gap on one edge grows, nowhere else
    sig = SpanSignals()
    delayed = Simulator(seed=1, faults=[Fault("network_delay", "cart", caller="frontend")])
    for _, tr, _ in delayed.run_virtual(30):
        sig.consume_traces(tr)
    sig.flush()
    from receiver.rca.signals import E_GAP, E_GAP_N

    def gap(a: str, b: str) -> float:
        rows = sig.edge_buckets(a, b).values()
        return sum(r[E_GAP] for r in rows) / max(1, sum(r[E_GAP_N] for r in rows)) / 1e6

    assert gap("frontend", "cart") > 100 > 5 > gap("frontend", "auth")


def test_fault_validation():
    assert set(DEFAULT_TARGETS) == set(FAULT_KINDS)
    with pytest.raises(ValueError, match="fault.kind"):
        Fault("meteor", "payment")
    with pytest.raises(ValueError, match="fault.caller"):
        Fault("wrong_value", "payment")
    with pytest.raises(ValueError, match="service"):
        default_fault("cpu", "postgres")
    f = default_fault("wrong_value", "shipping", start_s=5)
    assert (f.caller, f.service, f.start_s) == ("checkout", "shipping", 5)
    with pytest.raises(ValueError, match="rate_per_s"):
        Simulator(rate_per_s=0)


def test_live_mode_sends_through_sdk_grpc_exporters_to_the_receiver():
    sink = Sink()
    with RunningReceiver(local_config(http_endpoint=""), sink, sink) as rr:
        sim = Simulator(seed=2, endpoint=rr.grpc_target, rate_per_s=20)
        sim.run_live(30.0, speed=60.0, tick_s=0.05)
        sim.shutdown()  # flushes the batch processors
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(sink.spans()) < sim.stats.spans
                                               or len(sink.log_records()) < sim.stats.logs):
            time.sleep(0.1)
    assert sim.stats.requests > 100
    assert len(sink.spans()) == sim.stats.spans
    assert len(sink.log_records()) == sim.stats.logs
    assert set(sink.span_services()) == set(SERVICES)
