"""Root-cause analysis on simulated faults, replayed at event time through the real stages."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.model import (
    A_CONFIDENCE,
    A_SERVICE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_EVIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
    FindingsSink,
)
from receiver.rca.signals import SignalsConfig, SpanSignals
from receiver.rca.stage import RcaConfig, RcaStage
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator
from tests.llm_fake_server import FakeLlmServer

WARMUP, FAULT = 180.0, 60.0

# one case per fault kind; for the edge faults the caller only shows the symptom
CASES = [
    ("db_down", "", "postgres"),
    ("network_delay", "checkout", "payment"),
    ("cpu", "", "inventory"),
    ("exception", "", "shipping"),
    ("wrong_value", "checkout", "payment"),
    ("resource_exhaustion", "", "cart"),
    ("bad_deploy", "", "payment"),
]


def _case(kind: str, caller: str, service: str, seed: int = 11):
    from receiver.eval.rca import run_case

    return run_case(kind, service, caller, seed, warmup_s=WARMUP, fault_s=FAULT)


@pytest.mark.parametrize("kind,caller,service", CASES, ids=[c[0] for c in CASES])
def test_each_fault_kind_ranks_the_root_cause_first(kind: str, caller: str, service: str):
    res = _case(kind, caller, service)
    assert res.report is not None, f"no rca.report for {kind}"
    assert res.false_alarms == 0
    a = res.report.attributes
    assert a[R_ROOT_CAUSE] == service, (kind, a[R_CANDIDATES])
    assert a[R_CANDIDATES][0] == service
    assert res.ttd_s is not None and 0 <= res.ttd_s <= FAULT
    # the report contract
    path = a[R_PATH]
    assert path[0] == service and len(path) >= 2  # someone upstream shows the symptom
    assert 0.0 < a[R_CONFIDENCE] <= 1.0
    assert a[R_EVIDENCE] and all(isinstance(e, str) and e.startswith("[E") for e in a[R_EVIDENCE])
    assert len(res.report.trace_id) == 32 and len(res.report.span_id) == 16
    assert res.report.body.startswith(f"Root cause: {service}")
    assert a["rca.remediation"] and a["rca.root_cause_issue"]
    # one report for the incident, not one per window
    assert res.reports == 1
    if kind == "wrong_value":
        # only the caller shows errors, yet the callee is named; the caller is not blamed
        assert a["rca.fault_kind"] == "wrong_value"
        assert a[R_CANDIDATES].index(caller) > 0
        assert any(f"invalid response from {service}" in e for e in a[R_EVIDENCE])
    if kind == "network_delay":
        assert a["rca.fault_kind"] == "network_delay"
        assert any(f"edge {caller} -> {service}: client-server gap" in e for e in a[R_EVIDENCE])
    if kind == "db_down":
        assert a["rca.fault_kind"] == "dependency_down"
    if kind == "bad_deploy":
        assert a["rca.fault_kind"] == "bad_deploy"
        assert any("version changed 1.4.0 -> 1.5.0" in e for e in a[R_EVIDENCE])


def test_path_follows_real_call_edges():
    from receiver.eval.rca import Pipeline

    pipe = Pipeline(use_logs=False)
    sim = Simulator(seed=4, faults=[Fault("exception", "inventory", start_s=WARMUP)])
    for _, tr, lg in sim.run_virtual(WARMUP + FAULT, 5.0):
        pipe.consume(tr, lg)
    pipe.flush()
    reports = [f for f in pipe.sink.findings if f.event_name == EVENT_RCA]
    assert len(reports) == 1
    path = reports[0].attributes[R_PATH]
    g = pipe.rca.call_graph()
    assert path[0] == "inventory"
    for callee, caller in zip(path, path[1:], strict=False):
        assert g.has_edge(caller, callee), (caller, callee)


def test_broken_caller_does_not_blame_its_healthy_callees():
    res = _case("exception", "", "checkout", seed=12)
    assert res.report is not None
    cands = res.report.attributes[R_CANDIDATES]
    assert cands[0] == "checkout"
    assert res.report.attributes["rca.fault_kind"] == "exception"


# --- the stage itself, on one prepared data set ------------------------------------------
@pytest.fixture(scope="module")
def db_down_signals():
    sim = Simulator(seed=21, faults=[Fault("db_down", "postgres", start_s=WARMUP)])
    sig = SpanSignals()
    for _, tr, lg in sim.run_virtual(WARMUP + FAULT, 10.0):
        sig.consume_traces(tr)
        sig.consume_logs(lg)
    sig.flush()
    return sim, sig


def _anomaly(sim: Simulator, service: str, at_s: float, conf: float = 0.9) -> Finding:
    end = sim.start_ns + int(at_s * 1e9)
    return Finding(EVENT_ANOMALY, {A_SERVICE: service, A_CONFIDENCE: conf, A_WINDOW_START: end - 30 * 10**9,
                                   A_WINDOW_END: end}, body="error burst")


def _stage(sig: SpanSignals, analyst=None, incidents=None) -> tuple[RcaStage, FindingsSink]:
    sink = FindingsSink()
    cfg = RcaConfig(check_interval_s=0, trace_triggers=False)
    return RcaStage(cfg, None, sig, sink, analyst=analyst, incidents=incidents), sink


def test_forwards_every_finding_and_dedups_reports(db_down_signals):
    sim, sig = db_down_signals
    stage, sink = _stage(sig)
    other = Finding("something.else", {"x": 1})
    batch = [_anomaly(sim, "checkout", WARMUP + 20), other]
    stage.consume_findings(batch)
    assert sink.findings[:2] == batch  # forwarded first, unchanged
    stage.consume_findings([_anomaly(sim, "frontend", WARMUP + 30)])
    stage.consume_findings([_anomaly(sim, "inventory", WARMUP + 40)])
    stage.flush()
    stage.flush()
    reports = [f for f in sink.findings if f.event_name == EVENT_RCA]
    assert len(reports) == 1
    assert reports[0].attributes[R_ROOT_CAUSE] == "postgres"
    assert reports[0].attributes["rca.explainer"] == "deterministic"
    assert len(sink.findings) == 5


def _llm_analyst(url: str):
    from receiver.llm.analyst import LlmAnalyst
    from receiver.llm.config import BackendConfig, LlmConfig

    cfg = LlmConfig(tier1=BackendConfig(kind="openai", base_url=url, model="m", api_key_env="NO_SUCH_KEY",
                                        max_attempts=1, timeout_s=10))
    a = LlmAnalyst(cfg, FindingsSink(), registry=CollectorRegistry())
    a.start()
    return a


def _answer(root: str, cited: list[str] | None = None) -> dict:
    return {"root_cause_service": root, "root_cause_issue": f"{root} is broken",
            "remediation_steps": [f"restart {root}"], "explanation": f"because of {root}",
            "cited_evidence": cited or []}


def _report_with(sig, sim, url: str) -> tuple[Finding, RcaStage]:
    analyst = _llm_analyst(url)
    try:
        stage, sink = _stage(sig, analyst=analyst)
        stage.consume_findings([_anomaly(sim, "checkout", WARMUP + 20)])
        stage.flush()
    finally:
        analyst.shutdown()
    reports = [f for f in sink.findings if f.event_name == EVENT_RCA]
    assert len(reports) == 1
    return reports[0], stage


def _llm_outcome(stage: RcaStage, outcome: str) -> float:
    return stage.m_llm.labels(outcome)._value.get()


def test_llm_cannot_name_a_service_outside_the_candidates(db_down_signals):
    sim, sig = db_down_signals
    with FakeLlmServer([("ok", _answer("ghost-service", ["E1"]))]) as fake:
        rep, stage = _report_with(sig, sim, fake.url)
        assert fake.calls >= 1
        sent = json.dumps(fake.bodies[0])
        # the schema limits the root cause to the candidates
        schema_text = sent[sent.find("root_cause_service"):]
        assert "postgres" in schema_text and "ghost-service" not in sent
    a = rep.attributes
    assert a[R_ROOT_CAUSE] == "postgres"
    assert "ghost-service" not in a[R_CANDIDATES] and "ghost-service" not in a[R_PATH]
    assert a["rca.explainer"] == "deterministic"
    assert _llm_outcome(stage, "accepted") == 0


def test_llm_may_reorder_only_by_citing_evidence(db_down_signals):
    sim, sig = db_down_signals
    base, _ = _report_with(sig, sim, "http://127.0.0.1:9/v1")  # unreachable: deterministic answer
    second = base.attributes[R_CANDIDATES][1]
    ids = [e.split("]")[0].lstrip("[") for e in base.attributes[R_EVIDENCE] if e.split("] ", 1)[1].startswith(
        f"{second}:")]
    assert ids, base.attributes[R_EVIDENCE]
    # a different root without citations: rejected, the statistical answer stays
    with FakeLlmServer([("ok", _answer(second))]) as fake:
        rep, stage = _report_with(sig, sim, fake.url)
    assert rep.attributes[R_ROOT_CAUSE] == "postgres"
    assert _llm_outcome(stage, "rejected") == 1
    assert "LLM answer ignored" in rep.body
    # the same answer citing evidence about that candidate: accepted, with the model's text
    with FakeLlmServer([("ok", _answer(second, ids[:1]))]) as fake:
        rep, stage = _report_with(sig, sim, fake.url)
    assert rep.attributes[R_ROOT_CAUSE] == second
    assert rep.attributes[R_CANDIDATES][0] == second and "postgres" in rep.attributes[R_CANDIDATES]
    assert rep.attributes[R_PATH][0] == second
    assert rep.attributes["rca.explainer"] == "llm"
    assert rep.attributes["rca.root_cause_issue"] == f"{second} is broken"
    # agreeing with the ranking needs no citation
    with FakeLlmServer([("ok", _answer("postgres"))]) as fake:
        rep, stage = _report_with(sig, sim, fake.url)
    assert rep.attributes[R_ROOT_CAUSE] == "postgres" and rep.attributes["rca.explainer"] == "llm"
    assert rep.body == "because of postgres"


def test_similar_past_incidents_go_into_the_prompt(db_down_signals):
    """With the real IncidentTracker: a resolved past incident is offered to the LLM and listed."""
    from receiver.rca.incidents import IncidentConfig, IncidentTracker

    sim, sig = db_down_signals
    clock = [10**18]
    tracker = IncidentTracker(IncidentConfig(), None, CollectorRegistry(), clock=lambda: clock[0])
    t = sim.start_ns - 3600 * 10**9  # an hour before the simulated outage
    past = Finding(EVENT_RCA, {R_ROOT_CAUSE: "postgres", R_CANDIDATES: ["postgres", "checkout"],
                               R_PATH: ["postgres", "checkout"], R_CONFIDENCE: 0.9, R_EVIDENCE: ["[E1] x"],
                               "rca.root_cause_issue": "postgres disk full",
                               "rca.remediation": ["free disk space on postgres"]}, time_ns=t)
    tracker.consume_findings([_anomaly(sim, "checkout", -3600.0), past])
    clock[0] += 10**13
    (resolved,) = tracker.resolve_quiet()
    with FakeLlmServer([("ok", _answer("postgres"))]) as fake:
        analyst = _llm_analyst(fake.url)
        try:
            stage, sink = _stage(sig, analyst=analyst, incidents=tracker)
            stage.consume_findings([_anomaly(sim, "checkout", WARMUP + 20)])
            stage.flush()
        finally:
            analyst.shutdown()
        prompt = json.dumps(fake.bodies[0])
    assert "postgres disk full" in prompt and "free disk space on postgres" in prompt
    rep = [f for f in sink.findings if f.event_name == EVENT_RCA][0]
    assert rep.attributes["rca.similar_incidents"] == [resolved.id]


def test_no_report_without_evidence():
    sim = Simulator(seed=5)
    sig = SpanSignals()
    for _, tr, _ in sim.run_virtual(WARMUP, 10.0):
        sig.consume_traces(tr)
    stage, sink = _stage(sig)
    stage.consume_findings([_anomaly(sim, "frontend", WARMUP - 10, conf=0.7)])
    stage.flush()
    assert [f for f in sink.findings if f.event_name == EVENT_RCA] == []
    assert stage.m_suppressed.labels("weak")._value.get() == 1


# --- bounds and config -------------------------------------------------------------------------
def test_signals_caps_are_enforced_and_counted():
    reg = CollectorRegistry()
    sig = SpanSignals(SignalsConfig(max_traces=5, max_buckets=3, max_nodes=4, max_edges=3,
                                    max_spans_per_trace=4, trace_idle_s=1000.0), registry=reg)
    for _, tr, lg in Simulator(seed=1).run_virtual(60, 10):
        sig.consume_traces(tr)
        sig.consume_logs(lg)
        assert reg.get_sample_value("rca_signals_inflight_traces") <= 5
    sig.flush()

    def ev(what: str) -> float:
        return reg.get_sample_value("rca_signals_evicted_total", {"what": what}) or 0.0

    assert ev("trace") > 0 and ev("node") > 0 and ev("edge") > 0 and ev("span") > 0
    assert len(sig.nodes()) <= 4 and len(sig.edges()) <= 3
    # buckets per series
    reg2 = CollectorRegistry()
    sig2 = SpanSignals(SignalsConfig(max_buckets=3), registry=reg2)
    for _, tr, _ in Simulator(seed=1).run_virtual(60, 10):
        sig2.consume_traces(tr)
    sig2.flush()
    assert reg2.get_sample_value("rca_signals_evicted_total", {"what": "bucket"}) > 0
    assert sig2.nodes() and all(len(sig2.node_buckets(n)) <= 3 for n in sig2.nodes())


def test_stage_state_is_capped():
    sim, sig = Simulator(seed=1), SpanSignals()
    for _, tr, _ in sim.run_virtual(30, 10):
        sig.consume_traces(tr)
    sink = FindingsSink()
    stage = RcaStage(RcaConfig(check_interval_s=0, max_incidents=2, incident_gap_s=1.0, settle_s=1e6),
                     None, sig, sink)
    for i in range(5):
        stage.consume_findings([_anomaly(sim, "frontend", 100 + 50 * i)])
    assert len(stage._open) == 2
    assert stage.m_evicted.labels("incident")._value.get() == 3


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="rca.settle_s"):
        RcaConfig(settle_s=-1).validate()
    with pytest.raises(ConfigError, match="rca.llm_tier"):
        RcaConfig(llm_tier="tier9").validate()
    with pytest.raises(ConfigError, match="signals.bucket_s"):
        SpanSignals(SignalsConfig(bucket_s=0))
    with pytest.raises(ConfigError, match="signals.max_traces"):
        SignalsConfig(max_traces=0).validate()


def test_bad_spans_are_skipped_not_fatal():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id = b"\x01" * 3  # invalid length
    sp.span_id = b"\x02" * 8
    sig = SpanSignals(registry=(reg := CollectorRegistry()))
    sig.consume_traces(req)
    sig.flush()
    assert reg.get_sample_value("rca_signals_bad_spans_total") == 1
    assert sig.nodes() == []


def test_kindless_spans_status_codes_and_peer_names():
    """Real-world data: span kinds unset, failures only as HTTP 5xx attributes, peer addresses
    with namespace and port."""
    from opentelemetry import trace as api
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from receiver.rca.signals import E_CALLS, N_DEEP

    mem = InMemorySpanExporter()

    def tracer(name: str):
        tp = TracerProvider(resource=Resource.create({"service.name": name}))
        tp.add_span_processor(SimpleSpanProcessor(mem))
        return tp.get_tracer("t")

    gw, inv = tracer("gateway"), tracer("inventory")
    t0 = 1_700_000_000 * 10**9
    root = gw.start_span("GET /", start_time=t0)  # INTERNAL kinds everywhere
    ctx = api.set_span_in_context(root)
    child = inv.start_span("lookup", context=ctx, start_time=t0 + 10**6,
                           attributes={"http.response.status_code": 503})
    child.end(end_time=t0 + 5 * 10**6)
    call = gw.start_span("inventory call", context=ctx, kind=SpanKind.CLIENT, start_time=t0 + 6 * 10**6,
                         attributes={"server.address": "inventory.shop.svc.cluster.local:8080"})
    call.set_status(api.Status(api.StatusCode.ERROR, "connect timeout"))
    call.end(end_time=t0 + 9 * 10**6)
    root.end(end_time=t0 + 10 * 10**6)
    sig = SpanSignals()
    sig.consume_traces(encode_spans(mem.get_finished_spans()))
    sig.flush()
    assert sum(r[E_CALLS] for r in sig.edge_buckets("gateway", "inventory").values()) == 2
    assert sum(r[N_DEEP] for r in sig.node_buckets("inventory").values()) == 2
    assert sig.virtual_nodes() == set()
    assert set(sig.nodes()) == {"gateway", "inventory"}


def test_checking_live_or_only_at_flush_gives_the_same_report():
    """Live traffic (checks after every batch) and a replay analysed by one flush at the end agree."""
    from receiver.eval.rca import Pipeline

    batches = list(Simulator(seed=8, faults=[Fault("cpu", "shipping", start_s=WARMUP)]).run_virtual(
        WARMUP + FAULT, 5.0))
    live, replay = Pipeline(use_logs=False), Pipeline(use_logs=False)
    for _, tr, lg in batches:
        live.consume(tr, lg)  # consume() runs rca.check()
        replay.graph.consume_traces(tr)
        replay.signals.consume_traces(tr)
        replay.signals.consume_logs(lg)
    live_before_flush = [f for f in live.sink.findings if f.event_name == EVENT_RCA]
    live.flush()
    replay.flush()

    def reports(p) -> list[tuple]:
        return [(f.attributes[R_ROOT_CAUSE], tuple(f.attributes[R_CANDIDATES]), f.time_ns,
                 tuple(f.attributes[R_PATH])) for f in p.sink.findings if f.event_name == EVENT_RCA]

    assert live_before_flush, "the live run reports before the end"
    assert reports(live) == reports(replay)
    assert reports(live)[0][0] == "shipping"


def test_delay_on_all_calls_into_a_service():
    """A delay on the service's own interface (all callers) rather than on one edge."""
    res = _case("network_delay", "*", "inventory", seed=13)
    assert res.report is not None
    a = res.report.attributes
    assert a[R_ROOT_CAUSE] == "inventory" and a["rca.fault_kind"] == "network_delay"
