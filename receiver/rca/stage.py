"""The RCA stage: anomalies (and error/latency shifts seen in the span signals) in, `rca.report`
findings out.

`RcaStage.consume_findings(findings)` forwards every finding to `next` and records anomaly findings as
incident triggers. `check()` (called after each batch, by the background thread when started, and
by `flush()`) also looks for error-rate/latency shifts of calls into each node in the completed
event-time buckets of `SpanSignals`, groups triggers into incidents, and -- once an incident has
settled for `settle_s` of event time -- ranks the candidates, explains the result and emits one
`rca.report` per incident and root cause (deduplicated for `dedup_s`).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx
from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, non_negative, positive, require
from receiver.model import (
    A_CONFIDENCE,
    A_SERVICE,
    A_TYPE,
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
    FindingsConsumer,
)
from receiver.rca.explain import (
    build_evidence,
    check_llm_answer,
    classify,
    deterministic_text,
    llm_messages,
    llm_schema,
)
from receiver.rca.rank import IGNORED_NODES, RankResult, RankWeights, propagation_path, rank
from receiver.rca.signals import N_CALLS, N_ERRORS, N_LAT, N_SELF, N_SELF_N, SpanSignals


@dataclass
class RcaConfig(StageConfig):
    """`rca:` section. The span signals have their own `signals:` section (SignalsConfig)."""

    baseline_s: float = 300.0  # history compared against (event time)
    settle_s: float = 10.0  # wait this long after the first trigger to gather concurrent symptoms
    incident_gap_s: float = 60.0  # triggers closer than this join the same incident
    dedup_s: float = 600.0  # one report per root cause per this period (while its incident is open)
    reanalyse_s: float = 60.0  # re-rank an incident with new triggers at most this often
    max_reports_per_incident: int = 3
    max_window_s: float = 300.0  # the incident window ranked is at most this long
    check_interval_s: float = 2.0  # background check period (wall clock); 0 = only on batches/flush
    trace_triggers: bool = True  # trigger on error/latency shifts of calls into a node
    trigger_min_calls: int = 5  # per bucket
    trigger_min_errors: int = 3
    trigger_error_delta: float = 0.1  # error-rate rise over baseline
    trigger_latency_ratio: float = 1.5
    trigger_min_latency_ms: float = 1.0
    trigger_z: float = 4.0
    min_baseline_buckets: int = 6
    min_score: float = 0.5  # no report when the best candidate's evidence is weaker
    max_candidates: int = 50
    report_candidates: int = 10
    max_incidents: int = 64
    max_reported: int = 1000
    llm_tier: str = "tier2"
    similar_k: int = 3

    def validate(self) -> None:
        super().validate()
        for key in ("baseline_s", "incident_gap_s", "max_window_s"):
            positive(getattr(self, key), f"rca.{key}")
        for key in ("settle_s", "dedup_s", "reanalyse_s", "check_interval_s", "trigger_error_delta",
                    "trigger_min_latency_ms", "trigger_z", "min_score"):
            non_negative(getattr(self, key), f"rca.{key}")
        require(self.trigger_latency_ratio > 1.0, "rca.trigger_latency_ratio", "must be > 1")
        for key in ("max_reports_per_incident", "trigger_min_calls", "trigger_min_errors",
                    "min_baseline_buckets",
                    "max_candidates", "report_candidates", "max_incidents", "max_reported", "similar_k"):
            v = getattr(self, key)
            require(isinstance(v, int) and v > 0, f"rca.{key}", f"must be an int > 0, got {v!r}")
        require(self.llm_tier in ("tier1", "tier2"), "rca.llm_tier", "must be tier1 or tier2")


class IncidentLookup(Protocol):
    """What RCA asks the incident tracker (`IncidentTracker` implements it): the tracker's incident
    that holds given anomaly findings (so a report names the same incident the tracker keeps), and
    past incidents like a probe."""

    def incident_id_for_findings(self, finding_ids: Sequence[str]) -> str | None: ...

    def similar(self, incident: Any, k: int = 3) -> list[tuple[Any, float]]: ...


class _Analyst(Protocol):
    def complete_json(self, messages: list[dict[str, str]], schema: dict[str, Any],
                      tier: str | int = ...) -> dict[str, Any] | None: ...


@dataclass
class _Incident:
    id: str
    first_ns: int  # onset: the earliest symptom
    detect_ns: int  # event time of the first trigger
    last_ns: int
    services: dict[str, float] = field(default_factory=dict)  # service -> anomaly score
    order: list[str] = field(default_factory=list)  # services in trigger order
    anomaly_lines: dict[str, list[str]] = field(default_factory=dict)
    finding_ids: list[str] = field(default_factory=list)  # the anomaly findings that triggered it
    analysed_ns: int | None = None
    changed: bool = True
    pending_ns: int | None = None  # first trigger after the last analysis
    run_start: int = 0  # onset of the current run of contiguous triggers
    run_last: int = 0
    roots: list[str] = field(default_factory=list)
    reports: int = 0


class RcaStage:
    def __init__(self, config: RcaConfig | None, graph: Any, signals: SpanSignals, next: FindingsConsumer,
                 analyst: _Analyst | None = None, incidents: IncidentLookup | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or RcaConfig()
        self.config.validate()
        self.graph = graph
        self.signals = signals
        self.next = next
        self.analyst = analyst
        self.incidents = incidents
        self.weights = RankWeights()
        self._lock = threading.RLock()
        self._open: OrderedDict[str, _Incident] = OrderedDict()
        # root -> (event time of its last report, incident id)
        self._reported: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._flagged: dict[tuple[str, int], bool] = {}
        # (window end, service, confidence) of recent anomaly findings, for investigations
        self._anomalies: deque[tuple[int, str, float]] = deque(maxlen=10_000)
        self._checked_until = 0  # buckets below this start have been checked for shifts
        self._finding_now = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        reg = registry if registry is not None else CollectorRegistry()
        self.m_reports = Counter("rca_reports", "rca.report findings emitted", registry=reg)
        self.m_triggers = Counter("rca_triggers", "RCA triggers", ["source"], registry=reg)
        self.m_suppressed = Counter("rca_suppressed", "RCA results not reported", ["reason"], registry=reg)
        self.m_llm = Counter("rca_llm_answers", "LLM answers for RCA by outcome", ["outcome"], registry=reg)
        self.m_open = Gauge("rca_open_incidents", "Incidents being tracked by RCA", registry=reg)
        self.m_evicted = Counter("rca_evicted", "RCA state evicted by caps", ["what"], registry=reg)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.config.check_interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="rca-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.check_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the checker must survive bad data
                self.m_suppressed.labels("error").inc()

    def shutdown(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=10)
        self._started = False
        self.flush()

    # --- input ---------------------------------------------------------------------------
    def consume_findings(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        self.next.consume_findings(findings)
        with self._lock:
            for f in findings:
                if f.event_name != EVENT_ANOMALY:
                    continue
                svc = f.attributes.get(A_SERVICE)
                if not isinstance(svc, str) or not svc:
                    continue
                end = _as_int(f.attributes.get(A_WINDOW_END)) or f.time_ns
                start = _as_int(f.attributes.get(A_WINDOW_START)) or end
                conf = f.attributes.get(A_CONFIDENCE)
                score = float(conf) if isinstance(conf, (int, float)) and math.isfinite(conf) else 0.5
                line = (f"anomaly.detected in {svc}: {f.attributes.get(A_TYPE, 'anomaly')} "
                        f"(confidence {score:.2f}) {f.body[:200]}").strip()
                self._finding_now = max(self._finding_now, end)
                self._anomalies.append((end, svc, min(1.0, max(0.0, score))))
                self.m_triggers.labels("finding").inc()
                self._trigger(svc, max(start, end - self.signals.bucket_ns()), end,
                              min(1.0, max(0.0, score)), line, finding_id=f.id)
        self.check()

    # --- checks --------------------------------------------------------------------------
    def _now(self, final: bool) -> int:
        """Event time up to which the data is complete: from the span signals when spans flow,
        else from the anomaly findings' windows."""
        wm = self.signals.watermark_ns()
        if final:
            return max(wm, self._finding_now)
        if wm:
            return self.signals.complete_until_ns()
        return self._finding_now

    def check(self) -> None:
        self._check(final=False)

    def flush(self) -> None:
        """Everything buffered is complete: analyse all traces and all pending incidents now."""
        self.signals.flush()
        self._check(final=True)

    def _check(self, final: bool) -> None:
        reports: list[Finding] = []
        with self._lock:
            now = self._now(final)
            if self.config.trace_triggers:
                self._shift_triggers(now, final)
            settle = int(self.config.settle_s * 1e9)
            gap = int(self.config.incident_gap_s * 1e9)
            reanalyse = int(self.config.reanalyse_s * 1e9)
            for inc in list(self._open.values()):
                # the analysed window ends at a point fixed by the triggers (not by when this check
                # runs), so live traffic and a fast replay of the same data give the same report
                if inc.analysed_ns is None:
                    target = inc.detect_ns + settle
                    ready = final or now >= target
                else:
                    # nothing reported yet: look again as soon as new symptoms settle
                    pending = inc.pending_ns if inc.pending_ns is not None else inc.last_ns
                    target = pending + settle if inc.reports == 0 else \
                        max(pending + settle, inc.analysed_ns + reanalyse)
                    ready = inc.changed and inc.reports < self.config.max_reports_per_incident \
                        and (final or now >= target)
                if ready:
                    rep = self._analyse(inc, target)
                    if rep is not None:
                        reports.append(rep)
                if not final and inc.analysed_ns is not None and now > inc.last_ns + gap:
                    del self._open[inc.id]  # quiet for incident_gap_s after its analysis: closed
            self.m_open.set(len(self._open))
        if reports:
            self.m_reports.inc(len(reports))
            self.next.consume_findings(reports)

    def _shift_triggers(self, now: int, final: bool) -> None:
        cfg = self.config
        bns = self.signals.bucket_ns()
        limit = (now // bns) * bns if not final else now + bns  # buckets starting before limit are closed
        if not final:
            limit -= bns  # one bucket of margin for late spans
        start = self._checked_until
        if limit <= start:
            return
        base_ns = int(cfg.baseline_s * 1e9)
        found: list[tuple[int, str]] = []
        for node in self.signals.nodes():
            if node in IGNORED_NODES:
                continue
            buckets = self.signals.node_buckets(node)
            for b in sorted(x for x in buckets if start <= x < limit and x + bns <= max(limit, now)):
                row = buckets[b]
                if row[N_CALLS] < cfg.trigger_min_calls:
                    continue
                base = [(x, r) for x, r in buckets.items()
                        if b - base_ns <= x < b and r[N_CALLS] >= 2 and not self._flagged.get((node, x))]
                if len(base) < cfg.min_baseline_buckets:
                    continue
                reason = self._shifted(row, [r for _, r in base])
                if reason:
                    self._flag(node, b)
                    found.append((b, node))
        # in time order, whatever the check cadence, so incidents group the same way live and replayed
        for b, node in sorted(found):
            self.m_triggers.labels("signals").inc()
            self._trigger(node, b, b + bns, 0.0, "")
        self._checked_until = max(self._checked_until, limit)

    def _flag(self, node: str, b: int) -> None:
        self._flagged[(node, b)] = True
        if len(self._flagged) > 50_000:
            for k in list(self._flagged)[:10_000]:
                del self._flagged[k]
            self.m_evicted.labels("flag").inc(10_000)

    def _shifted(self, row: list[float], base: list[list[float]]) -> str:
        cfg = self.config
        calls = sum(r[N_CALLS] for r in base)
        errs = sum(r[N_ERRORS] for r in base)
        p = (errs + 0.5) / (calls + 1.0)
        rate = row[N_ERRORS] / row[N_CALLS]
        sd = math.sqrt(p * (1 - p) / row[N_CALLS])
        if row[N_ERRORS] >= cfg.trigger_min_errors \
                and rate - p > max(cfg.trigger_error_delta, cfg.trigger_z * sd):
            return f"error rate {p:.3f} -> {rate:.3f}"
        means = [r[N_LAT] / r[N_CALLS] / 1e6 for r in base]
        mu = sum(means) / len(means)
        var = sum((m - mu) ** 2 for m in means) / max(1, len(means) - 1)
        cur = row[N_LAT] / row[N_CALLS] / 1e6
        if cur > mu * cfg.trigger_latency_ratio and cur - mu > cfg.trigger_min_latency_ms \
                and cur - mu > cfg.trigger_z * math.sqrt(var):
            return f"latency {mu:.1f} -> {cur:.1f} ms"
        # exclusive time: less noisy than the latency, which carries the callees' variance too
        selfs = [r[N_SELF] / r[N_SELF_N] / 1e6 for r in base if r[N_SELF_N] > 0]
        if row[N_SELF_N] > 0 and len(selfs) >= 2:
            mu = sum(selfs) / len(selfs)
            sd = math.sqrt(sum((m - mu) ** 2 for m in selfs) / (len(selfs) - 1))
            cur = row[N_SELF] / row[N_SELF_N] / 1e6
            if cur > mu * cfg.trigger_latency_ratio and cur - mu > 0.5 * cfg.trigger_min_latency_ms \
                    and cur - mu > cfg.trigger_z * sd:
                return f"exclusive time {mu:.1f} -> {cur:.1f} ms"
        return ""

    def _trigger(self, service: str, onset_ns: int, t_ns: int, score: float, line: str,
                 finding_id: str = "") -> None:
        gap = int(self.config.incident_gap_s * 1e9)
        inc = None
        for cand in reversed(self._open.values()):
            if cand.first_ns - gap <= t_ns <= cand.last_ns + gap:
                inc = cand
                break
        if inc is None:
            inc = _Incident(uuid.uuid4().hex, onset_ns, t_ns, t_ns)
            self._open[inc.id] = inc
            while len(self._open) > self.config.max_incidents:
                self._open.popitem(last=False)
                self.m_evicted.labels("incident").inc()
        inc.first_ns = min(inc.first_ns, onset_ns)
        inc.last_ns = max(inc.last_ns, t_ns)
        if inc.analysed_ns is None:
            inc.detect_ns = min(inc.detect_ns, t_ns)
        if inc.analysed_ns is not None:
            inc.changed = True  # new symptoms re-arm the analysis
            inc.pending_ns = t_ns if inc.pending_ns is None else min(inc.pending_ns, t_ns)
        # runs of contiguous symptoms: a new run (after a quiet gap of two buckets) is ranked from its
        # own onset, so a long incident does not dilute a new fault with its older quiet minutes
        if not inc.run_last or onset_ns > inc.run_last + 2 * self.signals.bucket_ns():
            inc.run_start = onset_ns
        else:
            inc.run_start = min(inc.run_start, onset_ns)
        inc.run_last = max(inc.run_last, t_ns)
        if service not in inc.services:
            inc.order.append(service)
            inc.changed = True
            if len(inc.order) > 200:
                self.m_evicted.labels("incident_service").inc()
                inc.order = inc.order[:200]
        inc.services[service] = max(inc.services.get(service, 0.0), score)
        if finding_id and len(inc.finding_ids) < 200:
            inc.finding_ids.append(finding_id)
        if line:
            lines = inc.anomaly_lines.setdefault(service, [])
            if len(lines) < 3:
                lines.append(line)

    # --- investigation on demand ------------------------------------------------------------
    def investigate(self, start_ns: int, end_ns: int, service: str | None = None) -> RankResult:
        """Rank root-cause candidates for the event-time window [start, end) without waiting for a
        trigger (the fault time is known: an SRE paged by another system asks "why"). Candidates:
        every service seen (in spans or logs), or, with `service`, that service, what it calls and
        what calls it; anomaly findings in the window lend their confidence."""
        with self._lock:
            g = self.call_graph()
            scores: dict[str, float] = {}
            for end, svc, conf in self._anomalies:
                if start_ns <= end <= end_ns + self.signals.bucket_ns():
                    scores[svc] = max(scores.get(svc, 0.0), conf)
        nodes = set(g.nodes) | set(self.signals.nodes()) | set(scores)
        if service is not None:
            near = {service}
            if service in g:
                near |= nx.descendants(g, service) | nx.ancestors(g, service)
            nodes &= near
            nodes.add(service)
        anomalous = sorted(n for n in nodes if n not in IGNORED_NODES)
        return rank(self.signals, g, anomalous, start_ns, end_ns, anomaly_scores=scores,
                    baseline_s=self.config.baseline_s, weights=self.weights,
                    max_candidates=max(self.config.max_candidates, len(anomalous)))

    def investigate_report(self, start_ns: int, end_ns: int, service: str | None = None) -> Finding | None:
        """`investigate` for a window an SRE names, turned into an `rca.report` (`rca.on_demand` true)
        that goes the way of every report (stored, exported, grouped into incidents) and is returned.
        None when no service shows any evidence in the window (nothing to explain)."""
        if end_ns <= start_ns:
            raise ValueError("end must be after start")
        result = self.investigate(start_ns, end_ns, service)
        if not result.ranked or result.features[result.root].local <= 0:
            return None
        inc = _Incident(uuid.uuid4().hex, start_ns, end_ns, end_ns, order=list(result.candidates))
        g = self.call_graph()
        with self._lock:
            rep = self._report(inc, result, g, start_ns, end_ns)
        rep.attributes["rca.on_demand"] = True
        self.next.consume_findings([rep])
        return rep

    # --- analysis ------------------------------------------------------------------------
    def call_graph(self) -> nx.DiGraph:
        g = self.signals.digraph()
        if self.graph is not None and hasattr(self.graph, "digraph"):
            try:
                other = self.graph.digraph()
            except Exception:  # noqa: BLE001 - the service graph is optional here
                other = None
            if other is not None:
                for u, v in other.edges:
                    if u not in IGNORED_NODES and v not in IGNORED_NODES and not g.has_edge(u, v):
                        g.add_edge(u, v, calls=other.edges[u, v].get("calls", 0))
        return g

    def _analyse(self, inc: _Incident, target: int) -> Finding | None:
        cfg = self.config
        inc.analysed_ns = target
        inc.changed = False
        inc.pending_ns = None
        # the first analysis ranks from the incident's onset; later ones from the onset of the new
        # symptoms, so a long incident does not dilute a new fault with its older quiet minutes
        onset = max(inc.first_ns, inc.run_start)
        g = self.call_graph()
        until = min(target, onset + int(cfg.max_window_s * 1e9))
        scores = dict(inc.services)
        result = rank(self.signals, g, inc.order, onset, until, anomaly_scores=scores,
                      baseline_s=cfg.baseline_s, weights=self.weights, max_candidates=cfg.max_candidates)
        if not result.ranked or result.features[result.root].local < cfg.min_score:
            self.m_suppressed.labels("weak" if result.ranked else "no_candidates").inc()
            return None
        root = result.root
        if root in inc.roots:
            self.m_suppressed.labels("same_root").inc()
            return None
        last = self._reported.get(root)
        if last is not None and until - last[0] < int(cfg.dedup_s * 1e9) and last[1] in self._open:
            # the same root cause was reported by an incident that is still open
            self.m_suppressed.labels("dedup").inc()
            return None
        return self._report(inc, result, g, onset, until)

    def _similar(self, result: RankResult) -> tuple[list[str], list[str]]:
        if self.incidents is None:
            return [], []
        try:
            from receiver.rca.incident_model import Incident

            probe = Incident(services=list(dict.fromkeys([result.root, *result.symptomatic])))
            # past incidents only: the one being analysed is open in the tracker too
            found = [(i, sc) for i, sc in self.incidents.similar(probe, self.config.similar_k + 2)
                     if getattr(i, "status", "") != "open"][: self.config.similar_k]
        except Exception:  # noqa: BLE001 - incident memory is advisory
            self.m_suppressed.labels("similar_error").inc()
            return [], []
        lines, ids = [], []
        for inc, score in found:
            ids.append(str(inc.id))
            notes = "; ".join(str(n.get("note", ""))[:120] for n in (inc.resolution_notes or [])[:2])
            lines.append(f"incident {inc.id} (similarity {float(score):.2f}): root cause "
                         f"{inc.root_cause_service or '?'}; issue: {inc.root_cause_issue or '?'}; "
                         "remediation: "
                         f"{'; '.join(inc.remediation[:3]) or '?'}; resolution notes: {notes or 'none'}")
        return lines, ids

    def _incident_id(self, inc: _Incident) -> str:
        """One identity with the incident tracker: its incident that holds this incident's anomaly
        findings (it saw them first: they were forwarded before the analysis); else this stage's own
        id, under which the tracker opens the incident when the report reaches it."""
        if self.incidents is None or not inc.finding_ids:
            return inc.id
        try:
            found = self.incidents.incident_id_for_findings(inc.finding_ids)
        except Exception:  # noqa: BLE001 - the tracker is advisory here; keep our own id
            self.m_suppressed.labels("incident_lookup_error").inc()
            return inc.id
        return found or inc.id

    def _report(self, inc: _Incident, result: RankResult, g: nx.DiGraph, since: int, until: int) -> Finding:
        cfg = self.config
        evidence = build_evidence(result, self.signals, since - self.signals.bucket_ns(), until,
                                  inc.anomaly_lines)
        samples = self.signals.samples(result.root, since, until)
        kind = classify(result, samples, self.signals.virtual_nodes())
        issue, steps, text = deterministic_text(kind, result, evidence)
        explainer = "deterministic"
        similar_lines, similar_ids = self._similar(result)
        ranked = [n for n, _ in result.ranked]
        path = result.path
        if self.analyst is not None:
            answer = None
            try:
                answer = self.analyst.complete_json(llm_messages(result, evidence, kind, similar_lines),
                                                    llm_schema(ranked, [e.split("]")[0].lstrip("[")
                                                                        for e in evidence.items]),
                                                    cfg.llm_tier)
            except Exception:  # noqa: BLE001 - the LLM is optional; keep the deterministic answer
                answer = None
            if answer is None:
                self.m_llm.labels("none").inc()
            else:
                verdict = check_llm_answer(answer, result, evidence)
                if not verdict.accepted:
                    self.m_llm.labels("rejected").inc()
                    text += f" (LLM answer ignored: {verdict.reason})"
                else:
                    self.m_llm.labels("accepted").inc()
                    explainer = "llm"
                    if verdict.root != result.root:
                        ranked = [verdict.root] + [n for n in ranked if n != verdict.root]
                        sub = g.subgraph(result.candidates)
                        path = propagation_path(sub, verdict.root, result.symptomatic, inc.order)
                    issue = verdict.issue or issue
                    steps = verdict.steps or steps
                    text = verdict.explanation or text
        root = ranked[0]
        incident_id = self._incident_id(inc)
        inc.roots.append(root)
        inc.reports += 1
        self._reported[root] = (until, inc.id)
        self._reported.move_to_end(root)
        while len(self._reported) > cfg.max_reported:
            self._reported.popitem(last=False)
            self.m_evicted.labels("reported").inc()
        attrs: dict[str, Any] = {
            R_ROOT_CAUSE: root,
            R_CANDIDATES: ranked[: cfg.report_candidates],
            R_PATH: list(path),
            R_CONFIDENCE: float(result.confidence),
            R_EVIDENCE: list(evidence.items),
            "rca.fault_kind": kind,
            "rca.root_cause_issue": issue,
            "rca.remediation": list(steps),
            "rca.explainer": explainer,
            "rca.incident_id": incident_id,
            "rca.triggers": list(inc.order[:20]),
            "rca.window.start": int(since),
            "rca.window.end": int(until),
            "rca.detected_at": int(inc.detect_ns),
        }
        if similar_ids:
            attrs["rca.similar_incidents"] = similar_ids
        return Finding(event_name=EVENT_RCA, attributes=attrs, body=text, time_ns=int(until),
                       trace_id=evidence.trace_id, span_id=evidence.span_id)


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return int(v)
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return 0
