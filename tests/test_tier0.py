"""Tier-0 detector: one unit test per anomaly type, calibration, dedup, warm-up, caps, persistence."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from receiver.detect import Assessment, DetectConfig, Tier0Detector, Tier0Only
from receiver.detect.tier0 import confidence_from_surprise, js_divergence, poisson_sf
from receiver.errors import ConfigError
from receiver.logs.windows import NS, Window
from receiver.model import (
    A_CONFIDENCE,
    A_DETECTOR,
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    SEVERITIES,
    FindingsSink,
)

TEMPLATES = {1: "GET <*> 200", 2: "cache hit <*>", 3: "user <*> logged in", 4: "db query took <*> ms",
             9: "connection refused to <*>", 10: "payment service restarted", 11: "Exception in thread <*>"}


class Collect:
    def __init__(self) -> None:
        self.assessments: list[Assessment] = []

    def consume_assessments(self, a: list[Assessment]) -> None:
        self.assessments.extend(a)


def win(i: int, counts: dict[int, int], errors: dict[int, int] | None = None, warns: int = 0,
        service: str = "api", trace: str = "") -> Window:
    errors = errors or {}
    n = sum(counts.values())
    n_err = sum(errors.values())
    sev = {"info": n - n_err - warns}
    if n_err:
        sev["error"] = n_err
    if warns:
        sev["warn"] = warns
    worst = {t: ("error" if t in errors else "info") for t in counts}
    ex = [f"line of {t}" for t in counts][:5]
    traced = bool(trace and n_err)
    return Window(service=service, kind="tumbling", key="", start_ns=i * 60 * NS, end_ns=(i + 1) * 60 * NS,
                  count=n, template_counts=dict(counts),
                  templates={t: TEMPLATES.get(t, f"t{t}") for t in counts},
                  severity_counts={k: v for k, v in sev.items() if v}, template_errors=dict(errors),
                  template_worst=worst, rate=n / 60, exemplars=ex, exemplar_templates=list(counts)[:5],
                  error_trace_ids=[trace] if traced else [], error_span_ids=["cd" * 8] if traced else [])


def normal(i: int, rng: random.Random, service: str = "api") -> Window:
    counts = {1: 40 + rng.randint(-5, 5), 2: 25 + rng.randint(-4, 4), 3: 10 + rng.randint(-3, 3),
              4: 5 + rng.randint(-2, 2)}
    err = {4: 1} if rng.random() < 0.2 else {}
    return win(i, counts, err, service=service)


def trained(n: int = 30, **kw: object) -> tuple[Tier0Detector, Collect]:
    sink = Collect()
    det = Tier0Detector(DetectConfig(**kw), sink, CollectorRegistry())  # type: ignore[arg-type]
    rng = random.Random(7)
    out = det.consume_windows([normal(i, rng) for i in range(n)])
    assert not any(a.flagged for a in out)  # normal traffic: quiet
    return det, sink


def check_contract(a: Assessment, type_: str) -> None:
    assert a.flagged and a.finding is not None
    f = a.finding
    assert f.event_name == EVENT_ANOMALY
    at = f.attributes
    assert at[A_TYPE] == type_ and at[A_DETECTOR] == "tier0" and at[A_SERVICE] == a.window.service
    assert at[A_SEVERITY] in SEVERITIES
    assert isinstance(at[A_CONFIDENCE], float) and 0.6 <= at[A_CONFIDENCE] <= 1.0
    assert at[A_WINDOW_START] == a.window.start_ns and at[A_WINDOW_END] == a.window.end_ns
    assert isinstance(at[A_EVIDENCE], list) and all(isinstance(x, str) for x in at[A_EVIDENCE])
    assert f.body.startswith(f"[tier0 {type_}]")


def test_quiet_on_normal_and_warmup() -> None:
    det, sink = trained()
    assert len(sink.assessments) == 30
    # during warm-up nothing is reported, except a window that is mostly error lines naming a
    # failure (a service that introduces itself with failures: nothing to learn first)
    fresh = Tier0Detector(DetectConfig(warmup_windows=5), None, CollectorRegistry())
    a = fresh.assess(win(0, {9: 50}, {9: 50}))
    check_contract(a, "novel_template")
    assert "baseline is still learning" in a.finding.body  # type: ignore[union-attr]
    assert a.finding.attributes["anomaly.warmup"] is True  # type: ignore[union-attr]
    a = fresh.assess(win(1, {9: 50, 11: 5}, {9: 50, 11: 5}))  # the same incident's next window
    assert not a.flagged and any("follow-on of the incident" in r for r in a.reasons)
    a = fresh.assess(win(2, {1: 50, 9: 1}, {9: 1}))  # routine lines with one failure: warm-up learns
    assert not a.flagged and a.reasons == []
    # a first window of info chatter with one failure, or of failures that name nothing, waits
    for svc, counts, errors in (("b", {1: 20, 9: 1}, {9: 1}), ("c", {1: 10, 2: 10}, {1: 10, 2: 10})):
        a = fresh.assess(win(0, counts, errors, service=svc))
        assert not a.flagged and a.reasons == []


def test_novel_template_weighted_by_severity_and_error_words() -> None:
    det, _ = trained()
    rng = random.Random(1)
    w = normal(100, rng)
    w.template_counts[9] = 2
    w.templates[9] = TEMPLATES[9]
    w.template_worst[9] = "error"
    w.template_errors[9] = 2
    w.severity_counts["error"] = w.severity_counts.get("error", 0) + 2
    w.count += 2
    w.exemplars.append("connection refused to db:5432")
    w.exemplar_templates.append(9)
    w.error_trace_ids, w.error_span_ids = ["ab" * 16], ["cd" * 8]
    a = det.assess(w)
    check_contract(a, "novel_template")
    assert a.finding is not None
    assert a.finding.attributes[A_CONFIDENCE] == pytest.approx(0.95)  # error 0.8 + error word 0.15
    assert a.finding.attributes[A_EVIDENCE][0] == "connection refused to db:5432"  # its exemplar first
    assert a.finding.trace_id == "ab" * 16 and a.finding.span_id == "cd" * 8
    assert "refused" in a.finding.body
    # an INFO novel template without error words stays below the threshold (0.35)
    w2 = normal(101, rng)
    w2.template_counts[10] = 1
    w2.templates[10] = TEMPLATES[10]
    w2.template_worst[10] = "info"
    w2.count += 1
    a2 = det.assess(w2)
    assert not a2.flagged and any("novel_template (0.35)" in r for r in a2.reasons)
    # the unflagged INFO template is learned: not novel again
    w2.start_ns += 60 * NS
    assert not any(r.startswith("novel_template") for r in det.assess(w2).reasons)
    # the flagged ERROR template is remembered as known bad, not learned: its recurrence is news again
    w.start_ns += 120 * NS
    again = det.assess(w)
    assert again.flagged and again.problem == "novel_template"


def test_error_burst_one_finding_per_window() -> None:
    det, _ = trained()
    counts = {1: 40, 2: 25, 3: 10, 4: 5}
    a = det.assess(win(200, counts, {4: 5}, trace="ef" * 16))
    check_contract(a, "error_burst")
    assert a.finding is not None and a.finding.attributes[A_SEVERITY] == "high"
    assert "5 error lines out of 80" in a.finding.body
    # the burst goes on: still ONE finding per window, and the storm does not become the baseline
    later = det.consume_windows([win(201 + i, counts, {4: 5}) for i in range(5)])
    assert all(x.flagged and x.problem == "error_burst" for x in later)
    assert sum(1 for x in later if x.finding) == 5
    info = det.baseline_info("api")
    assert info is not None and info["error_share"] < 0.01


def test_warn_burst() -> None:
    det, _ = trained()
    a = det.assess(win(300, {1: 40, 2: 25, 3: 10, 4: 5}, warns=12))
    check_contract(a, "error_burst")
    assert "12 warn lines" in a.finding.body  # type: ignore[union-attr]


def test_distribution_shift() -> None:
    det, _ = trained(60)
    a = det.assess(win(400, {1: 2, 2: 70, 3: 1, 4: 5}))  # same templates, very different mix
    check_contract(a, "distribution_shift")
    assert "JS divergence" in a.finding.body  # type: ignore[union-attr]


def test_silence_of_a_chatty_service() -> None:
    det, _ = trained()
    empty = Window(service="api", kind="tumbling", key="", start_ns=500 * 60 * NS, end_ns=501 * 60 * NS,
                   closed_by="empty")
    a = det.assess(empty)
    check_contract(a, "silence")
    assert a.finding is not None and a.finding.attributes[A_CONFIDENCE] > 0.99
    # the silence goes on: reported once, not once per empty window
    empty2 = Window(service="api", kind="tumbling", key="", start_ns=501 * 60 * NS, end_ns=502 * 60 * NS)
    again = det.assess(empty2)
    assert not again.flagged and "already reported" in again.reasons[0]
    # the service speaks, then falls silent again: a new silence
    det.assess(normal(502, random.Random(2)))
    empty3 = Window(service="api", kind="tumbling", key="", start_ns=503 * 60 * NS, end_ns=504 * 60 * NS)
    check_contract(det.assess(empty3), "silence")
    # a quiet service going silent is not news
    quiet = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    for i in range(10):
        quiet.assess(win(i, {1: 2}, service="cron"))
    e2 = Window(service="cron", kind="tumbling", key="", start_ns=99 * 60 * NS, end_ns=100 * 60 * NS)
    assert not quiet.assess(e2).flagged


def session(i: int, seq: list[int]) -> Window:
    counts: dict[int, int] = {}
    for t in seq:
        counts[t] = counts.get(t, 0) + 1
    return Window(service="hdfs", kind="session", key=f"blk_{i}", start_ns=i * NS, end_ns=i * NS + NS,
                  count=len(seq), template_counts=counts, templates={t: f"step {t}" for t in counts},
                  severity_counts={"info": len(seq)}, template_worst={t: "info" for t in counts},
                  template_sequence=list(seq), exemplars=[f"step {t}" for t in seq[:3]])


def trained_sessions() -> Tier0Detector:
    det = Tier0Detector(DetectConfig(warmup_sessions=50), None, CollectorRegistry())
    rng = random.Random(3)
    for i in range(1500):  # an unseen step needs ~1/1000 support to be surprising enough
        mid = [2, 2, 2, 3, 3, 3]
        rng.shuffle(mid)  # concurrency: the middle order varies
        out = det.assess(session(i, [1, *mid, 4]))
        assert not out.flagged
    return det


def test_sequence_unseen_transition() -> None:
    det = trained_sessions()
    a = det.assess(session(1000, [1, 4, 2, 2, 2, 3, 3, 3]))  # closes before the work
    check_contract(a, "sequence")
    assert "unusual order" in a.finding.body and "learned P = " in a.finding.body  # type: ignore[union-attr]
    assert "sequence: 1 -> 4 -> 2" in a.finding.attributes[A_EVIDENCE][-1]  # type: ignore[union-attr]


def test_sequence_missing_closing_template() -> None:
    det = trained_sessions()
    a = det.assess(session(1001, [1, 2, 3, 2, 3, 2, 3]))  # never reaches step 4
    check_contract(a, "sequence")


def test_session_count_invariant() -> None:
    det = trained_sessions()
    a = det.assess(session(1002, [1, 2, 2, 3, 3, 2, 3, 3, 4]))  # 3 x step 2 but 4 x step 3
    check_contract(a, "sequence")
    assert "invariant" in a.finding.body  # type: ignore[union-attr]
    ok = det.assess(session(1003, [1, 3, 2, 2, 3, 3, 2, 4]))
    assert not ok.flagged


def test_tier0only_forwards_findings_only() -> None:
    sink = FindingsSink()
    fwd = Tier0Only(sink)
    det = Tier0Detector(DetectConfig(warmup_windows=2), fwd, CollectorRegistry())
    rng = random.Random(5)
    det.consume_windows([normal(i, rng) for i in range(10)])
    assert sink.findings == []
    det.consume_windows([win(50, {1: 40, 2: 25, 3: 10, 4: 5}, {4: 20}), normal(51, rng)])
    assert [f.attributes[A_TYPE] for f in sink.findings] == ["error_burst"]


def test_caps_and_eviction_are_counted() -> None:
    reg = CollectorRegistry()
    det = Tier0Detector(DetectConfig(max_services=2, max_templates_per_service=5,
                                     max_transitions_per_service=20), None, reg)
    for s in ("a", "b", "c"):
        det.assess(win(0, {1: 1}, service=s))
    assert det.services() == ["b", "c"]
    det.assess(win(1, {t: 1 for t in range(20, 30)}, service="c"))
    info = det.baseline_info("c")
    assert info is not None and info["templates"] == 5
    for i in range(40):
        det.assess(session(i, [100 + i, 200 + i, 300 + i]))
    info = det.baseline_info("hdfs")
    assert info is not None and info["transitions"] <= 20
    ev = {r: reg.get_sample_value("tier0_baseline_evictions_total", {"reason": r})
          for r in ("services", "templates", "transitions")}
    assert ev["services"] == 2 and ev["templates"] >= 6 and ev["transitions"] > 0


def test_save_and_load_restore_baselines(tmp_path: Path) -> None:
    det, _ = trained()
    for i in range(60):
        det.assess(session(i, [1, 2, 3, 4]))
    path = tmp_path / "state" / "tier0.json"
    det.save(str(path))
    fresh = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    assert fresh.load(str(path)) == 2
    assert fresh.baseline_info("api") == det.baseline_info("api")
    assert fresh.baseline_info("hdfs") == det.baseline_info("hdfs")
    # the restored detector knows the session invariants right away
    broken = session(5000, [1, 2, 2, 4])
    restored, original = fresh.assess(broken), det.assess(broken)
    assert restored.flagged and original.flagged and restored.score == original.score
    # the restored detector is past warm-up and reports the same burst the original does
    burst = win(900, {1: 40, 2: 25, 3: 10, 4: 5}, {4: 6})
    assert fresh.assess(burst).problem == det.assess(burst).problem == "error_burst"
    (tmp_path / "bad.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="version"):
        fresh.load(str(tmp_path / "bad.json"))


def test_calibration_helpers() -> None:
    assert confidence_from_surprise(3.0, 3.0, 1.5) == pytest.approx(0.5)
    assert confidence_from_surprise(6.0, 3.0, 1.5) > 0.98
    assert confidence_from_surprise(1.0, 3.0, 1.5) < 0.05
    assert poisson_sf(0, 2.0) == 1.0
    assert poisson_sf(1, 2.0) == pytest.approx(1 - 2.718281828 ** -2, rel=1e-6)
    assert poisson_sf(10, 1.0) == pytest.approx(1.1142e-7, rel=1e-3)
    assert js_divergence({1: 1.0}, {1: 1.0}) == 0.0
    assert js_divergence({1: 1.0}, {2: 1.0}) == pytest.approx(1.0)


@pytest.mark.parametrize("kw,key", [
    ({"threshold": 0}, "detect.threshold"),
    ({"ewma_alpha": 2}, "detect.ewma_alpha"),
    ({"max_services": 0}, "detect.max_services"),
    ({"inv_min_hold": 1.0}, "detect.inv_min_hold"),
])
def test_config_errors(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DetectConfig(**kw).validate()  # type: ignore[arg-type]


def test_session_implication_invariant() -> None:
    det = Tier0Detector(DetectConfig(warmup_sessions=50), None, CollectorRegistry())
    rng = random.Random(4)
    for i in range(400):
        # step 1 occurs once or twice, so no count equality holds for it: only "X comes with 1" does
        seq = [1] * rng.randint(1, 2) + [2, 3, 4] + ([7] if rng.random() < 0.3 else [])
        assert not det.assess(session(i, seq)).flagged
    a = det.assess(session(999, [7, 2, 3, 4]))  # 7 always came with 1 (and 1 is missing)
    check_contract(a, "sequence")
    assert "occurred without #1" in a.finding.body  # type: ignore[union-attr]
    assert not det.assess(session(1000, [1, 2, 3, 4, 7])).flagged


def test_total_entries_budget_drops_least_recent_services() -> None:
    reg = CollectorRegistry()
    det = Tier0Detector(DetectConfig(max_entries_total=50), None, reg)
    for k, s in enumerate(("a", "b", "c", "d", "e")):
        det.assess(win(0, {t: 1 for t in range(100 * k, 100 * k + 12)}, service=s))  # 12 templates + hist
        assert det.entries() <= 50
    assert det.services() == ["e"] or det.services()[-1] == "e"
    assert len(det.services()) < 5
    assert reg.get_sample_value("tier0_baseline_evictions_total", {"reason": "entries_budget"}) >= 3
    info = det.baseline_info("e")
    assert info is not None and info["templates"] == 12


def test_new_variant_of_a_known_event_family_is_weak_evidence() -> None:
    from receiver.detect.tier0 import template_family

    assert template_family("ciod: Error creating node map from file <*>: Permission denied", 4) == \
        "ciod: Error creating node"
    ddr = "<*> ddr errors(s) detected and corrected on rank <*>"
    assert template_family(ddr, 3) == "ddr errors(s) detected"
    assert template_family("anything", 0) == ""
    det, _ = trained()
    rng = random.Random(9)

    def with_template(i: int, tid: int, text: str, level: str = "fatal") -> Window:
        w = normal(i, rng)
        w.template_counts[tid] = 1
        w.templates[tid] = text
        w.template_worst[tid] = level
        if level == "fatal":
            w.template_errors[tid] = 1
        w.severity_counts[level] = w.severity_counts.get(level, 0) + 1
        w.count += 1
        return w

    node_map = "ciod: Error creating node map from file <*>: "
    # the event is first seen in a window that is not flagged (at INFO): it is learned with its family
    first = det.assess(with_template(200, 50, node_map + "No child processes", "info"))
    assert not first.flagged
    variant = det.assess(with_template(201, 51, node_map + "Permission denied"))
    assert not variant.flagged and "a variant of a known event" in variant.reasons[0]
    other = det.assess(with_template(202, 52, "rts panic! - stopping execution"))
    check_contract(other, "novel_template")


def test_rare_error_template_in_sessions() -> None:
    det = trained_sessions()
    w = session(2000, [1, 2, 2, 2, 3, 3, 3, 4, 9])
    w.templates[9] = "Unexpected error trying to delete block <*>"
    w.template_worst[9] = "warn"
    w.severity_counts = {"info": 8, "warn": 1}
    a = det.assess(w)
    check_contract(a, "novel_template")
    w2 = session(2001, [1, 2, 2, 2, 3, 3, 3, 4, 9])
    w2.templates, w2.template_worst, w2.severity_counts = w.templates, w.template_worst, w.severity_counts
    a2 = det.assess(w2)  # seen once in 1500+ sessions: still rare (< 2 %), still reported
    check_contract(a2, "novel_template")
    assert "seen in only 1 of" in a2.finding.body  # type: ignore[union-attr]


def test_dumped_fields_are_context_not_events() -> None:
    from receiver.detect.tier0 import is_field_line

    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    for t in ("icache prefetch depth..........<*>", "program interrupt: imprecise exception......<*>",
              "machine state register: <*>", "lr:<*> cr:<*> xer:<*> ctr:<*>", "special purpose registers:"):
        assert is_field_line(t, det.error_words_in(t)), t
        assert det.failure_words(t) == []
    for t in ("Connection failed: <*>", "error=<*>", "data TLB error interrupt", "db query took <*> ms",
              "Exception in thread <*>:"):
        assert not is_field_line(t, det.error_words_in(t)), t
    # CamelCase identifiers name failures too
    assert det.error_words_in("java.lang.NullPointerException: <*>") == ["exception"]
    assert "error" in det.error_words_in("OutOfMemoryError in <*>")
    assert det.error_words_in("RequestHandler served <*>") == []

    det, _ = trained()
    dump = {20 + i: 1 for i in range(12)}
    names = {20 + i: f"register field {chr(97 + i)}{'.' * 12}<*>" for i in range(12)}

    def fatal_window(i: int, counts: dict[int, int], texts: dict[int, str]) -> Window:
        w = win(i, counts, counts)
        w.templates = texts
        w.template_worst = {t: "fatal" for t in counts}
        w.severity_counts = {"fatal": sum(counts.values())}
        return w

    a = det.assess(fatal_window(100, dump, names))  # 12 new FATAL dump rows, nothing reports an event
    assert not a.flagged
    assert any("12 of them are dumped fields, 0 report events" in r for r in a.reasons)
    assert any("a dumped field, not an event" in r for r in a.reasons)
    # the same count of FATAL lines that report an event is flagged, as a new failure and as a burst
    b = det.assess(fatal_window(102, {40: 12}, {40: "data TLB error interrupt"}))
    assert b.flagged and b.finding is not None
    assert any(r.startswith("error_burst") for r in b.reasons)


def test_incident_follow_on_window_is_not_reported_again_for_novelty() -> None:
    det, _ = trained()
    rng = random.Random(3)

    def with_new(i: int, tid: int, text: str, n: int = 1) -> Window:
        w = normal(i, rng)
        w.template_counts[tid] = n
        w.templates[tid] = text
        w.template_worst[tid] = "error"
        w.template_errors[tid] = n
        w.severity_counts["error"] = w.severity_counts.get("error", 0) + n
        w.count += n
        return w

    first = det.assess(with_new(100, 60, "rts panic! - stopping execution"))
    check_contract(first, "novel_template")
    # the next window, right after the flagged one: its new failure line is the incident's detail
    nxt = det.assess(with_new(101, 61, "rts internal error"))
    assert not nxt.flagged and "follow-on of the incident" in nxt.reasons[0]
    # ...but a storm that goes on is still flagged in the follow-on window
    storm = det.assess(with_new(102, 60, "rts panic! - stopping execution", n=12))
    check_contract(storm, "error_burst")
    # after a quiet gap the incident is closed: a new failure template is reported again
    det.assess(normal(103, rng))
    later = det.assess(with_new(105, 62, "kernel watchdog timeout on <*>"))
    check_contract(later, "novel_template")


def test_windows_continuing_an_incident_are_not_learned() -> None:
    det, _ = trained()
    counts = {1: 40, 2: 25, 3: 10, 4: 5}
    storm = win(200, counts | {4: 13}, {4: 8})  # a known template, at error severity this time
    check_contract(det.assess(storm), "error_burst")
    base = det.baseline_info("api")
    assert base is not None
    # the next windows still carry a few errors each: too few to flag, but the incident goes on,
    # so they do not teach the baseline that errors are normal now
    for i in range(201, 206):
        a = det.assess(win(i, {4: 2}, {4: 2}))
        assert not a.flagged
    info = det.baseline_info("api")
    assert info is not None and info["error_share"] == pytest.approx(base["error_share"])
    # a quiet window closes the incident; normal windows are learned again
    rng = random.Random(11)
    det.assess(normal(206, rng))
    assert det.baseline_info("api")["windows"] == base["windows"] + 6  # type: ignore[index]


def test_an_incidents_own_new_failure_keeps_flagging_while_it_recurs() -> None:
    det, _ = trained(incident_max_windows=3)
    counts = {1: 40, 2: 25, 3: 10, 4: 5}
    check_contract(det.assess(win(200, counts | {9: 1}, {9: 1})), "novel_template")
    # two lines of that failure in each following window (too few for a burst, more errors than the
    # service's usual share explains): the incident is not over
    for i in range(201, 204):
        a = det.assess(win(i, counts | {9: 2}, {9: 2}))
        check_contract(a, "novel_template")
        assert "ongoing incident" in a.finding.body  # type: ignore[union-attr]
    # after incident_max_windows it is no longer news on its own
    assert not det.assess(win(204, counts | {9: 2}, {9: 2})).flagged
    assert det._baselines["api"].incident_end_ns == 0  # closed: what follows is learned again
    # the failure recurring after a healthy window: it was remembered as known bad, not learned, so it
    # is news again (a failure does not become normal because it repeats)
    det2, _ = trained()
    check_contract(det2.assess(win(200, counts | {9: 1}, {9: 1})), "novel_template")
    det2.assess(win(201, counts, {}))
    check_contract(det2.assess(win(202, counts | {9: 2}, {9: 2})), "novel_template")


def test_incident_failure_templates_are_capped() -> None:
    from receiver.detect.tier0 import _MAX_INCIDENT_TEMPLATES

    reg = CollectorRegistry()
    det = Tier0Detector(DetectConfig(warmup_windows=2), None, reg)
    rng = random.Random(2)
    det.consume_windows([normal(i, rng) for i in range(5)])
    n = _MAX_INCIDENT_TEMPLATES + 6
    w = win(10, {100 + i: 1 for i in range(n)}, {100 + i: 1 for i in range(n)})
    w.templates = {100 + i: f"worker {i} failed with code <*>" for i in range(n)}
    assert det.assess(w).flagged
    assert len(det._baselines["api"].incident_templates) == _MAX_INCIDENT_TEMPLATES
    assert reg.get_sample_value("tier0_baseline_evictions_total", {"reason": "incident_templates"}) == 6


def test_template_text_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.detect import tier0

    monkeypatch.setattr(tier0, "_TEXT_CACHE_MAX", 4)
    reg = CollectorRegistry()
    det = Tier0Detector(DetectConfig(), None, reg)
    for i in range(10):
        assert det.failure_words(f"job {i} failed: <*>") == ["failed"]
    assert det.failure_words("reg{0}.........<*>") == []
    assert len(det._text_cache) <= 4
    assert reg.get_sample_value("tier0_baseline_evictions_total", {"reason": "text_cache"}) == 8


def test_incident_recurrence_needs_errors_above_the_services_usual_share() -> None:
    # a service that only ever logs errors: its new failure is flagged once, its recurrence in the next
    # window is what it always does (error share 100 % explains it), not an ongoing incident
    det = Tier0Detector(DetectConfig(warmup_windows=3), None, CollectorRegistry())
    for i in range(6):
        det.assess(win(i * 2, {4: 2}, {4: 2}))  # "db query took <*> ms" at error, every window
    check_contract(det.assess(win(20, {4: 2, 9: 1}, {4: 2, 9: 1})), "novel_template")
    a = det.assess(win(21, {4: 2, 9: 1}, {4: 2, 9: 1}))
    assert not a.flagged and not any("ongoing incident" in r for r in a.reasons)


def test_silence_is_not_recovery_within_the_incident_grace() -> None:
    det, _ = trained(incident_grace_s=600.0)  # 10 windows of 60 s
    counts = {1: 40, 2: 25, 3: 10, 4: 5}
    check_contract(det.assess(win(200, counts | {9: 1}, {9: 1})), "novel_template")
    det.assess(win(201, {}, {}))  # an empty window: nothing observed
    a = det.assess(win(205, counts | {9: 2}, {9: 2}))  # 4 windows of silence later: still the incident
    check_contract(a, "novel_template")
    assert "ongoing incident" in a.finding.body  # type: ignore[union-attr]
    # a different new failure after a silence is news of its own (not the incident's aftermath)
    other = det.assess(win(207, counts | {11: 1}, {11: 1}))
    check_contract(other, "novel_template")
    assert "follow-on" not in other.finding.body  # type: ignore[union-attr]
    # more silence than the grace: the incident is over; the failure, remembered as known bad, is
    # news again when it comes back (not the incident's follow-on)
    again = det.assess(win(220, counts | {9: 2}, {9: 2}))
    check_contract(again, "novel_template")
    assert "ongoing incident" not in again.finding.body  # type: ignore[union-attr]
    with pytest.raises(ConfigError):
        DetectConfig(incident_grace_s=-1).validate()
