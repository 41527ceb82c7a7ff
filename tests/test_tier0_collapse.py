"""Tier 0 collapses a burst of the same problem (issue 3): one finding per service, signature and
period for trace-id sessions, plus one summary counting the occurrences; regex-keyed sessions
(entities such as HDFS blocks) keep one finding per key."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from receiver.detect import Assessment, DetectConfig, Tier0Detector, Tier0Only
from receiver.llm.analyst import LlmAnalyst, LlmConfig
from receiver.logs.windows import NS, Window
from receiver.model import A_EVIDENCE, A_TYPE, A_WINDOW_END, A_WINDOW_START, Finding

TEXT = {1: "request <*> received", 2: "cart loaded for <*>", 3: "price computed <*>", 4: "request <*> done",
        9: "db query failed: connection refused (host=postgres)",
        11: "call to payment failed: rpc error code=INTERNAL"}
PERIOD_S = 60


class Collect:
    def __init__(self) -> None:
        self.assessments: list[Assessment] = []

    def consume_assessments(self, a: list[Assessment]) -> None:
        self.assessments.extend(a)


class Findings:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def consume_findings(self, f: list[Finding]) -> None:
        self.findings.extend(f)


def trace_session(i: int, seq: list[int], t_s: float, errors: tuple[int, ...] = (),
                  key_kind: str = "trace_id", service: str = "shop") -> Window:
    counts: dict[int, int] = {}
    for t in seq:
        counts[t] = counts.get(t, 0) + 1
    tid = f"{i:032x}"
    err = {t: counts[t] for t in errors if t in counts}
    n_err = sum(err.values())
    sev = {"info": len(seq) - n_err}
    if n_err:
        sev["error"] = n_err
    key = tid if key_kind == "trace_id" else f"blk_{i}"
    order = sorted(counts, key=lambda t: t not in err)  # error lines first
    start = int(t_s * NS)
    return Window(service=service, kind="session", key=key, key_kind=key_kind, start_ns=start,
                  end_ns=start + NS // 2, count=len(seq), template_counts=counts,
                  templates={t: TEXT[t] for t in counts},
                  severity_counts={k: v for k, v in sev.items() if v}, template_errors=err,
                  template_worst={t: ("error" if t in err else "info") for t in counts},
                  template_sequence=list(seq),
                  exemplars=[f"{TEXT[t]} (trace {i})" for t in order][:3], exemplar_templates=order[:3],
                  error_trace_ids=[tid] if n_err else [], error_span_ids=["ab" * 8] if n_err else [])


def failing(i: int, t_s: float, tmpl: int = 9, **kw: object) -> Window:
    return trace_session(i, [1, 2, tmpl, 4], t_s, errors=(tmpl,), **kw)  # type: ignore[arg-type]


def detector(**kw: object) -> tuple[Tier0Detector, Collect, CollectorRegistry]:
    reg = CollectorRegistry()
    sink = Collect()
    # sequence and invariant checks off (`seq_min_support`, `inv_min_support`): each failing session is
    # judged by one signal (novelty), so the problem signature is stable over the burst; the event-time
    # warm-up is off (the history is 20 s long)
    cfg = DetectConfig(warmup_sessions=50, warmup_s=0.0, rare_session_share=0.5, collapse_period_s=PERIOD_S,
                       seq_min_support=10**9, inv_min_support=10**9, **kw)  # type: ignore[arg-type]
    det = Tier0Detector(cfg, sink, reg)
    out = det.consume_windows([trace_session(i, [1, 2, 3, 4], i * 0.1) for i in range(200)])  # t < 20 s
    assert not any(a.flagged for a in out)
    sink.assessments.clear()
    return det, sink, reg


def reported(assessments: list[Assessment]) -> list[Finding]:
    return [a.finding for a in assessments if a.flagged and a.finding is not None]


def test_burst_of_50_traces_is_one_finding_counting_50() -> None:
    det, sink, reg = detector()
    fs = Findings()
    t0 = 120.0  # period [120 s, 180 s)
    burst = [failing(1000 + i, t0 + i * 0.5) for i in range(50)]
    det.consume_windows(burst[:1])
    first = reported(sink.assessments)
    assert len(first) == 1  # the first occurrence is reported at once, not held for the period
    assert first[0].attributes["anomaly.occurrences"] == 1
    assert first[0].attributes[A_TYPE] == "novel_template"
    det.consume_windows(burst[1:])
    dups = sink.assessments[1:]
    assert len(dups) == 49
    # every window still goes downstream, the duplicates without a finding
    assert all(not a.flagged and a.finding is None and a.duplicate_of == first[0].id for a in dups)
    assert all(a.score >= 0.6 for a in dups)  # the score is kept for the LLM cascade to weigh
    assert reported(sink.assessments) == first  # nothing more until the period is over
    det.flush()
    summaries = [a for a in sink.assessments if a.summary]
    assert len(summaries) == 1
    s = summaries[0].finding
    assert s is not None and summaries[0].flagged
    assert s.attributes["anomaly.occurrences"] == 50
    assert s.attributes["anomaly.update_of"] == first[0].id and s.id != first[0].id
    assert s.attributes[A_WINDOW_START] == burst[0].start_ns
    assert s.attributes[A_WINDOW_END] == burst[-1].end_ns
    tids = s.attributes["anomaly.trace_ids"]
    assert isinstance(tids, list) and len(tids) == 20 and tids[0] == f"{1000:032x}"  # capped
    ev = s.attributes[A_EVIDENCE]
    assert isinstance(ev, list) and sum(1 for e in ev if e.startswith("occurrence ")) == 3
    assert reg.get_sample_value("tier0_collapsed_total", {"type": "novel_template"}) == 49
    assert reg.get_sample_value("tier0_collapse_summaries_total") == 1
    Tier0Only(fs).consume_assessments(sink.assessments)
    assert len(fs.findings) == 2  # the first page and its summary, not 50


def test_two_different_problems_are_two_findings() -> None:
    det, sink, _ = detector()
    ws = []
    for i in range(20):
        ws.append(failing(2000 + i, 125.0 + i, tmpl=9))
        ws.append(failing(3000 + i, 125.5 + i, tmpl=11))
    det.consume_windows(ws)
    first = reported(sink.assessments)
    assert len(first) == 2
    assert {f.attributes["anomaly.occurrences"] for f in first} == {1}
    det.flush()
    summaries = [a.finding for a in sink.assessments if a.summary and a.finding is not None]
    assert sorted(f.attributes["anomaly.update_of"] for f in summaries) == sorted(f.id for f in first)
    assert all(f.attributes["anomaly.occurrences"] == 20 for f in summaries)


def test_next_period_is_a_new_finding_and_closes_the_last() -> None:
    det, sink, _ = detector()
    det.consume_windows([failing(4000 + i, 130.0 + i) for i in range(5)])  # period [120, 180)
    det.consume_windows([failing(5000 + i, 190.0 + i) for i in range(5)])  # period [180, 240)
    firsts = [f for f in reported(sink.assessments) if "anomaly.update_of" not in f.attributes]
    assert len(firsts) == 2 and firsts[0].id != firsts[1].id
    assert not any(a.summary for a in sink.assessments)  # the first period may still get sessions
    # the service's windows pass one more period past the first period's end: it closes by event time
    det.consume_windows([trace_session(6000, [1, 2, 3, 4], 241.0)])
    summaries = [a.finding for a in sink.assessments if a.summary and a.finding is not None]
    assert len(summaries) == 1
    assert summaries[0].attributes["anomaly.update_of"] == firsts[0].id
    assert summaries[0].attributes["anomaly.occurrences"] == 5


def test_group_cap_evicts_oldest_and_counts_it() -> None:
    det, sink, reg = detector(collapse_max_groups=2)
    ws = []
    for p in range(3):  # three periods: three groups of the same problem, one too many
        ws += [failing(7000 + 10 * p + i, 120.0 + 60 * p + i) for i in range(3)]
    # keep the watermark from closing them: feed each group's sessions before the next period's
    det.consume_windows(ws[:3])
    det.consume_windows(ws[3:6])
    assert reg.get_sample_value("tier0_baseline_evictions_total", {"reason": "collapse_groups"}) is None
    det.consume_windows(ws[6:])
    assert reg.get_sample_value("tier0_baseline_evictions_total", {"reason": "collapse_groups"}) == 1
    assert reg.get_sample_value("tier0_collapse_groups") <= 2
    # the evicted group is not lost: its summary is reported when it is evicted
    summaries = [a.finding for a in sink.assessments if a.summary and a.finding is not None]
    assert len(summaries) == 1 and summaries[0].attributes["anomaly.occurrences"] == 3


def test_regex_keyed_sessions_are_entities_one_finding_each() -> None:
    det, sink, _ = detector()
    blocks = [failing(8000 + i, 130.0 + i, key_kind="regex") for i in range(5)]
    det.consume_windows(blocks)
    assert len(reported(sink.assessments)) == 5  # five blocks with the same problem: five findings
    again = failing(8000, 140.0, key_kind="regex")  # the same block again in the period: collapses
    out = det.consume_windows([again])
    assert out[0].duplicate_of and not out[0].flagged


def test_tumbling_finding_suppresses_trace_sessions_of_the_same_problem() -> None:
    det, sink, _ = detector()
    base = trace_session(0, [1, 2, 3, 4], 0.0)
    for k in range(6):  # tumbling warm-up of the service
        tw = Window(service="shop", kind="tumbling", key="", start_ns=k * 60 * NS, end_ns=(k + 1) * 60 * NS,
                    count=40, template_counts={1: 10, 2: 10, 3: 10, 4: 10}, templates=dict(base.templates),
                    severity_counts={"info": 40}, template_worst={t: "info" for t in (1, 2, 3, 4)})
        assert not det.assess(tw).flagged
    tw = Window(service="shop", kind="tumbling", key="", start_ns=360 * NS, end_ns=420 * NS, count=41,
                template_counts={1: 10, 2: 10, 3: 10, 4: 10, 9: 1},  # one line: novelty, not a burst
                templates={**base.templates, 9: TEXT[9]}, severity_counts={"info": 40, "error": 1},
                template_errors={9: 1},
                template_worst={1: "info", 2: "info", 3: "info", 4: "info", 9: "error"},
                exemplars=[TEXT[9]], exemplar_templates=[9])
    out = det.consume_windows([tw])
    assert out[0].flagged and out[0].finding is not None
    assert out[0].finding.attributes[A_TYPE] == "novel_template"
    later = det.consume_windows([failing(9000 + i, 365.0 + i) for i in range(10)])
    assert all(a.duplicate_of == out[0].finding.id and a.finding is None for a in later)
    det.flush()
    s = [a.finding for a in sink.assessments if a.summary and a.finding is not None]
    assert len(s) == 1 and s[0].attributes["anomaly.occurrences"] == 11


def test_collapse_off_reports_every_window() -> None:
    det, sink, _ = detector()
    det.config.collapse_period_s = 0
    det.consume_windows([failing(9500 + i, 130.0 + i) for i in range(10)])
    assert len(reported(sink.assessments)) == 10


def test_llm_analyst_forwards_summary_and_skips_duplicates() -> None:
    det, sink, _ = detector()
    det.consume_windows([failing(9700 + i, 130.0 + i) for i in range(4)])
    det.flush()
    fs = Findings()
    analyst = LlmAnalyst(LlmConfig(), fs, CollectorRegistry())  # not started: no model is called
    for a in sink.assessments:
        if a.duplicate_of:
            assert analyst.route(a)[0] is None  # duplicates and summaries never cost a model call
    analyst.consume_assessments(sink.assessments)
    assert [f.attributes.get("anomaly.occurrences") for f in fs.findings] == [1, 4]


def test_logs_stage_trace_sessions_collapse_and_flush_reports_the_summary() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from receiver.logs.stage import LogsConfig, LogsStage
    from receiver.logs.windows import WindowsConfig

    sink = Collect()
    det = Tier0Detector(DetectConfig(warmup_sessions=0, warmup_s=0.0, rare_session_share=1.0), sink,
                        CollectorRegistry())
    stage = LogsStage(LogsConfig(windows=WindowsConfig(session_key="trace_id")), det, CollectorRegistry())
    t0 = 1_700_000_040 * NS
    records = [LogRecord(time_unix_nano=t0 + i * NS, severity_number=17, trace_id=bytes([i + 1] * 16),
                         span_id=bytes([i + 1] * 8),
                         body=AnyValue(string_value=f"db query failed: connection refused (attempt {i})"))
               for i in range(10)]
    records += [LogRecord(time_unix_nano=t0 + i * NS, severity_number=9, trace_id=bytes([i + 101] * 16),
                          body=AnyValue(string_value="stock served")) for i in range(10)]
    name = KeyValue(key="service.name", value=AnyValue(string_value="inventory"))
    stage.consume_logs(ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=[name]),
        scope_logs=[ScopeLogs(log_records=records)])]))
    stage.flush()  # closes the sessions, then the detector's groups
    sessions = [a for a in sink.assessments if a.window.kind == "session" and not a.summary]
    assert len(sessions) == 20 and all(a.window.key_kind == "trace_id" for a in sessions)
    firsts = [a.finding for a in sessions if a.flagged and a.finding is not None]
    assert len(firsts) == 1 and sum(1 for a in sessions if a.duplicate_of == firsts[0].id) == 9
    summaries = [a.finding for a in sink.assessments if a.summary and a.finding is not None
                 and a.duplicate_of == firsts[0].id]
    assert len(summaries) == 1 and summaries[0].attributes["anomaly.occurrences"] == 10
    assert len(summaries[0].attributes["anomaly.trace_ids"]) == 10  # type: ignore[arg-type]
