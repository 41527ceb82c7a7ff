"""The LLM analyst: a cost-aware cascade after the tier-0 detector.

    tier 0 (upstream, every window) -> tier 1 (cheap model): flagged windows, optionally borderline
    windows (`route_borderline`: tier-0 score >= `borderline_score`), every window of a service
    while its incident is open (bounded), and an adaptive sample of the rest (base rate, scaled down
    as the queue fills)
    -> tier 2 (precise model): when tier 1 reports high severity or low confidence.
    With one model (tier2_enabled false, or tier2 == tier1) the tiers collapse.

`consume_assessments()` never blocks: windows for the LLM go onto a bounded queue served by one
worker thread; when the queue is full the tier-0 finding is forwarded as is and the skip is counted.

The verdict is not the model's alone (log text can try to steer it):
  * tier 0 flagged and the LLM says "normal": the finding stands (detector stays tier 0's), its
    confidence is lowered, `llm.verdict=normal` and `llm.overruled=true` are recorded (the model
    never takes back what tier 0 found, so it cannot lower recall; counted as `normal_overruled`
    above `strong_evidence_score`, `normal_disputed` below);
  * tier 0 not flagged and the LLM says "anomaly": emitted only when tier 0 saw some signal (score >=
    `borderline_score`), the window has code-counted evidence (error lines or new templates) and the
    LLM's confidence >= `llm_only_min_confidence`. Sampled windows without any tier-0 signal are
    analysed for the record (metrics, audit, cache) but cannot become findings.
Any LLM failure (fault, breaker open, budget spent, invalid output after one repair) leaves the
tier-0 finding standing, with `llm.outcome` saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from receiver.llm.cache import LruTtlCache, RedisCache, VerdictCache, fingerprint
from receiver.llm.client import Backend, CallResult
from receiver.llm.config import BackendConfig, LlmConfig, parse_price
from receiver.llm.guard import Budget
from receiver.llm.localserver import LocalModelServer
from receiver.llm.metrics import LlmMetrics
from receiver.llm.prompt import WindowFacts, fit_to_budget, prefix_text, severity_class
from receiver.llm.schema import ANALYSIS_SCHEMA
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
    Finding,
    FindingsConsumer,
)

log = logging.getLogger(__name__)

_Base = tuple[float | None, float | None]
_SEV_RANK = {"none": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
NS = 1_000_000_000


class _WindowLike(Protocol):
    service: str
    start_ns: int
    end_ns: int
    count: int
    template_counts: dict[int, int]
    templates: dict[int, str]
    new_templates: list[int]
    severity_counts: dict[str, int]
    exemplars: list[str]


class _AssessmentLike(Protocol):
    window: Any
    score: float
    flagged: bool
    finding: Finding | None
    reasons: list[str]


@dataclass
class _ServiceState:
    last_flag_end_ns: int = 0
    followups_left: int = 0
    base_error_share: float | None = None
    base_count: float | None = None


@dataclass
class AnalysisOutcome:
    """What happened to one window in the analyst (used by the worker, eval mode and tests)."""

    findings: list[Finding]
    tier: str = ""  # tier1 | tier2 | "" (stayed at tier 0)
    outcome: str = ""  # ok | cache_hit | <CallResult.outcome> | budget_exhausted | empty
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool = False
    verdict: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class LlmAnalyst:
    def __init__(self, config: LlmConfig, findings_consumer: FindingsConsumer,
                 registry: CollectorRegistry | None = None,
                 known_services: Callable[[], Iterable[str]] | None = None,
                 audit: Callable[[dict[str, Any]], None] | None = None,
                 redactor: Any | None = None,
                 local_server: LocalModelServer | None = None,
                 cache: VerdictCache | None = None) -> None:
        config.validate()
        self.config = config
        self._next = findings_consumer
        self._registry = registry if registry is not None else CollectorRegistry()
        self.metrics = LlmMetrics(self._registry)
        self._known = known_services
        self._audit_sink = audit
        self.audit_log: deque[dict[str, Any]] = deque(maxlen=config.audit_max_records)
        self._redactor = redactor if redactor is not None else _default_redactor()
        self._local = local_server
        self._own_local = local_server is None
        self._cache: VerdictCache = cache or self._make_cache()
        self.budget = Budget(config.daily_token_budget, config.daily_usd_budget)
        self._budget_logged = False
        self._price_warned: set[str] = set()
        self._q: queue.Queue[tuple[Any, str, _Base]] = queue.Queue(config.queue_size)
        self._state: OrderedDict[str, _ServiceState] = OrderedDict()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._inflight: tuple[Any, str, _Base] | None = None
        self._inflight_lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._started = False
        self.tier1: Backend | None = None
        self.tier2: Backend | None = None
        self._prefix_tokens: dict[str, int] = {}

    # -- construction helpers -------------------------------------------------------------------
    def _make_cache(self) -> VerdictCache:
        c = self.config

        def evicted(reason: str) -> None:
            self.metrics.cache_evictions.labels(reason).inc()

        if c.redis_url:
            return RedisCache(c.redis_url, c.cache_max_entries, c.cache_ttl_s, c.cache_key_prefix,
                              on_evict=evicted, on_error=self.metrics.cache_errors.inc)
        return LruTtlCache(c.cache_max_entries, c.cache_ttl_s, on_evict=evicted)

    def _price(self, bc: BackendConfig) -> tuple[float, float]:
        if bc.kind == "local":
            return (0.0, 0.0)
        p = self.config.prices.get(bc.model)
        if p is None:
            if bc.model not in self._price_warned:
                self._price_warned.add(bc.model)
                log.warning("llm: no price for model %s in llm.prices; its cost is counted as 0", bc.model)
            return (0.0, 0.0)
        return parse_price(p, f"prices.{bc.model}")

    def _backend(self, name: str, bc: BackendConfig) -> Backend:
        if bc.kind == "local":
            if self._local is None:
                self._local = LocalModelServer(self.config.local, metrics=self.metrics)
            return Backend(name, bc, self.metrics, (0.0, 0.0), self._local.base_url)
        return Backend(name, bc, self.metrics, self._price(bc), bc.base_url.rstrip("/"))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Builds the backends; with a local backend, verifies the model and starts the embedded server
        (raises ModelNotInstalledError with the install command when the model is missing/corrupt)."""
        with self._lifecycle:
            if self._started:
                return
            c = self.config
            self.tier1 = self._backend("tier1", c.tier1)
            t1, t2 = c.tier1, c.tier2
            same = (t2.kind, t2.model, t2.base_url) == (t1.kind, t1.model, t1.base_url)
            collapse = not c.tier2_enabled or same
            self.tier2 = None if collapse else self._backend("tier2", c.tier2)
            if self._local is not None and self._own_local:
                self._local.start()
            elif self._local is not None:
                self._local.start()  # idempotent
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="llm-analyst", daemon=True)
            self._worker.start()
            self._started = True

    def shutdown(self) -> None:
        """Stops the worker after its current call; queued windows keep their tier-0 findings
        (forwarded, not dropped); stops the embedded server. Idempotent, safe without start()."""
        with self._lifecycle:
            self._stop.set()
            for b in (self.tier1, self.tier2):
                if b is not None:
                    b.close()  # an in-flight call fails fast; its window keeps the tier-0 finding
            w, self._worker = self._worker, None
            if w is not None:
                w.join(timeout=5.0)
                with self._inflight_lock:
                    stuck, self._inflight = self._inflight, None
                if w.is_alive() and stuck is not None:
                    # the call is still blocked in the HTTP client: its window keeps the tier-0 finding
                    # now; the worker (a daemon) drops its late result when the call returns
                    self._forward_tier0(stuck[0], "shutdown")
                    self._q.task_done()
            while True:
                try:
                    a, _reason, _base = self._q.get_nowait()
                except queue.Empty:
                    break
                self._forward_tier0(a, "shutdown")
                self._q.task_done()
            self.metrics.queue_depth.set(0)
            if self._local is not None and self._own_local:
                self._local.shutdown()
            if isinstance(self._cache, RedisCache):
                self._cache.close()
            self._started = False

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued window has been analysed (True) or the timeout passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._q.all_tasks_done:
            while self._q.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._q.all_tasks_done.wait(remaining)
        return True

    # -- the consuming method -------------------------------------------------------------------
    def consume_assessments(self, assessments: Sequence[_AssessmentLike]) -> None:
        """Route each window: tier-0-only windows are forwarded now; the others are queued for the
        LLM worker (never blocking: a full queue forwards the tier-0 finding and counts the skip)."""
        direct: list[Finding] = []
        for a in assessments:
            reason, base = self.route(a)
            if reason is None:
                if a.finding is not None:
                    direct.append(a.finding)
                continue
            if not self._started:
                self.metrics.skipped.labels("not_started").inc()
                if a.finding is not None:
                    direct.append(self._tier0_with_note(a, "not_started"))
                continue
            try:
                self._q.put_nowait((a, reason, base))
                self.metrics.routed.labels(reason).inc()
            except queue.Full:
                self.metrics.skipped.labels("queue_full").inc()
                if a.finding is not None:
                    direct.append(self._tier0_with_note(a, "queue_full"))
        self.metrics.queue_depth.set(self._q.qsize())
        if direct:
            self._emit(direct)

    def route(self, a: _AssessmentLike) -> tuple[str | None, tuple[float | None, float | None]]:
        """Decide whether a window goes to the LLM: 'flagged' | 'incident' | 'borderline' | 'sample' | None.
        Also updates the service's baseline (unflagged windows only) and returns the baseline as it
        was before this window."""
        w = a.window
        c = self.config
        with self._state_lock:
            st = self._state.get(w.service)
            if st is None:
                st = _ServiceState()
                self._state[w.service] = st
                while len(self._state) > c.max_services_tracked:
                    self._state.popitem(last=False)
                    self.metrics.tracked_evicted.inc()
            else:
                self._state.move_to_end(w.service)
            base = (st.base_error_share, st.base_count)
            if getattr(a, "duplicate_of", ""):
                # tier 0 collapsed it (a duplicate of, or the summary of, an earlier finding of the
                # same problem): that finding already went to the model; a duplicate is not normal
                # traffic either, so it is not learned; a summary's finding is forwarded as is
                return None, base
            if a.flagged:
                st.last_flag_end_ns = max(st.last_flag_end_ns, int(w.end_ns))
                st.followups_left = c.incident_followup_max
            elif w.count > 0:
                share = _error_count(w) / max(1, w.count)
                alpha = 0.2
                st.base_error_share = share if st.base_error_share is None else (
                    (1 - alpha) * st.base_error_share + alpha * share)
                st.base_count = float(w.count) if st.base_count is None else (
                    (1 - alpha) * st.base_count + alpha * w.count)
            if w.count <= 0:
                return None, base  # nothing for a model to read (silence is tier 0's call)
            if a.flagged:
                return "flagged", base
            if (st.followups_left > 0 and st.last_flag_end_ns
                    and int(w.end_ns) - st.last_flag_end_ns <= c.incident_followup_s * NS):
                st.followups_left -= 1
                return "incident", base
            if c.route_borderline and a.score >= c.borderline_score:
                return "borderline", base
        rate = c.sample_rate * max(0.0, 1.0 - self._q.qsize() / max(1, c.queue_size))
        if self.budget.exhausted():
            rate = 0.0
        if rate > 0 and _unit_hash(f"{w.service}|{w.start_ns}|{getattr(w, 'key', '')}") < rate:
            return "sample", base
        return None, base

    # -- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                a, reason, base = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            item = (a, reason, base)
            with self._inflight_lock:
                self._inflight = item
            findings: list[Finding] = []
            try:
                findings = self.analyse(a, reason, base).findings
            except Exception:  # noqa: BLE001 - the worker must survive; the tier-0 finding stands
                log.exception("llm analyst: analysis failed; forwarding the tier-0 finding")
                findings = [self._tier0_with_note(a, "internal_error")] if a.finding is not None else []
            with self._inflight_lock:
                abandoned = self._inflight is not item  # shutdown already forwarded its tier-0 finding
                self._inflight = None
            if abandoned:
                continue
            if findings:
                self._emit(findings)
            self._q.task_done()
            self.metrics.queue_depth.set(self._q.qsize())

    def _emit(self, findings: list[Finding]) -> None:
        try:
            self._next.consume_findings(findings)
        except Exception:  # noqa: BLE001 - a failing consumer must not kill the analyst
            log.exception("llm analyst: findings consumer failed")

    def _forward_tier0(self, a: _AssessmentLike, why: str) -> None:
        if a.finding is not None:
            self._emit([self._tier0_with_note(a, why)])

    # -- one window -----------------------------------------------------------------------------
    def known_services(self, service: str) -> list[str]:
        names: list[str] = [service]
        if self._known is not None:
            try:
                for s in self._known():
                    if s not in names:
                        names.append(str(s))
                    if len(names) >= 200:
                        break
            except Exception:  # noqa: BLE001 - a failing graph snapshot only narrows the list
                log.exception("llm analyst: known_services failed")
        return names

    def facts(self, a: _AssessmentLike, base: _Base) -> tuple[WindowFacts, dict[str, int]]:
        """The prompt's view of a window. Template texts, exemplars and tier-0 reasons pass the
        redactor again (defence in depth); returns the facts and the redaction counts."""
        w = a.window
        red: dict[str, int] = {}

        def clean(text: str) -> str:
            if self._redactor is None:
                return text
            out, counts = self._redactor.redact(text)
            for k, v in counts.items():
                red[k] = red.get(k, 0) + v
            return out

        errs = getattr(w, "template_errors", {}) or {}
        new = set(w.new_templates)
        order = sorted(w.template_counts.items(), key=lambda kv: (-(errs.get(kv[0], 0) > 0), -kv[1], kv[0]))
        templates = [(tid, cnt, clean(w.templates.get(tid, f"<template {tid}>")), tid in new)
                     for tid, cnt in order[: self.config.max_templates * 2]]
        duration = max(0.0, (int(w.end_ns) - int(w.start_ns)) / NS)
        f = WindowFacts(
            service=w.service, duration_s=duration, count=int(w.count),
            severity_counts=dict(w.severity_counts), templates=templates,
            exemplars=[clean(x) for x in list(w.exemplars)[: self.config.max_exemplars]],
            tier0_flagged=bool(a.flagged), tier0_score=float(a.score),
            tier0_reasons=[clean(str(r)) for r in list(a.reasons)[:4]],
            baseline_error_share=base[0], baseline_count=base[1],
            known_services=self.known_services(w.service),
        )
        if red:
            self.metrics.redactions.inc(sum(red.values()))
        return f, red

    def _prefix(self, b: Backend) -> int:
        key = f"{b.name}:{b.response_format}"
        n = self._prefix_tokens.get(key)
        if n is None:
            n = b.count_tokens(prefix_text(b.response_format == "json_object")) + 40
            self._prefix_tokens[key] = n
        return n

    def _ask(self, b: Backend, tier: str, f: WindowFacts, red: dict[str, int],
             key: str) -> tuple[dict[str, Any] | None, CallResult | None, bool, str]:
        """One tier: cache, budget, call, audit. Returns (verdict, call result, cache_hit, outcome)."""
        ck = f"{key}:{tier}:{b.model}"
        cached = self._cache.get(ck)
        if cached is not None:
            self.metrics.cache.labels("hit").inc()
            self._audit({"tier": tier, "model": b.model, "outcome": "cache_hit", "cache_hit": True,
                         "prompt_sha256": "", "redaction_counts": red, "prompt_tokens": 0,
                         "completion_tokens": 0, "latency_s": 0.0, "cost_usd": 0.0, "service": f.service})
            return cached, None, True, "cache_hit"
        self.metrics.cache.labels("miss").inc()
        c = self.config
        budget_window = max(120, b.cfg.prompt_budget_tokens - self._prefix(b))
        msgs, win_tokens, neutralised = fit_to_budget(f, budget_window, b.count_tokens, c.max_templates,
                                                      c.max_exemplars, c.max_line_chars,
                                                      include_schema=b.response_format == "json_object")
        if neutralised:
            self.metrics.neutralised.inc(neutralised)
        est_prompt = self._prefix(b) + win_tokens
        est_tokens = est_prompt + b.cfg.max_output_tokens
        if not self.budget.allows(est_tokens, b.cost(est_prompt, b.cfg.max_output_tokens)):
            self._note_budget()
            return None, None, False, "budget_exhausted"
        res = b.complete(msgs, ANALYSIS_SCHEMA, tier, prompt_tokens_est=est_prompt)
        self.budget.spend(res.tokens, res.cost_usd)
        self.metrics.budget_tokens.set(self.budget.tokens)
        self.metrics.budget_usd.set(self.budget.usd)
        self._audit({"tier": tier, "model": b.model, "outcome": res.outcome, "cache_hit": False,
                     "prompt_sha256": _sha(msgs), "redaction_counts": red, "neutralised": neutralised,
                     "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                     "latency_s": round(res.latency_s, 4), "cost_usd": res.cost_usd, "attempts": res.attempts,
                     "error": res.error, "service": f.service, "backend": b.name})
        if res.value is None:
            return None, res, False, res.outcome
        v = dict(res.value)
        known = set(f.known_services)
        v["affected_services"] = [s for s in v.get("affected_services", []) if s in known][:6]
        self._cache.put(ck, v)
        return v, res, False, res.outcome

    def analyse(self, a: _AssessmentLike, reason: str = "flagged",
                base: tuple[float | None, float | None] = (None, None)) -> AnalysisOutcome:
        """Run tier 1 (and tier 2 when warranted) on one window, synchronously; returns the findings
        to emit. Used by the worker thread and by the eval mode."""
        if self.tier1 is None:
            raise RuntimeError("LlmAnalyst.start() was not called")
        w = a.window
        f, red = self.facts(a, base)
        key = fingerprint(w.service, w.template_counts, (), w.severity_counts,
                          extra=f"flagged={bool(a.flagged)}")
        out = AnalysisOutcome(findings=[])
        verdict, res, hit, outcome = self._ask(self.tier1, "tier1", f, red, key)
        tier = "tier1"
        calls = [(res, hit)]
        if verdict is not None and self.tier2 is not None and (
                _SEV_RANK.get(verdict.get("severity", "none"), 0) >= _SEV_RANK[self.config.tier2_min_severity]
                or float(verdict.get("confidence", 0)) < self.config.tier2_below_confidence):
            v2, res2, hit2, outcome2 = self._ask(self.tier2, "tier2", f, red, key)
            calls.append((res2, hit2))
            if v2 is not None:
                verdict, tier, outcome, hit = v2, "tier2", outcome2, hit2
        out.llm_calls = sum(1 for r, _ in calls if r is not None)
        out.tokens = sum(r.tokens for r, _ in calls if r is not None)
        out.cost_usd = sum(r.cost_usd for r, _ in calls if r is not None)
        out.cache_hit = hit
        out.outcome = outcome
        if verdict is None:
            self.metrics.verdicts.labels("tier0", outcome).inc()
            out.findings = [self._tier0_with_note(a, outcome, out)] if a.finding is not None else []
            return out
        out.tier = tier
        out.verdict = verdict
        model = (self.tier2 if tier == "tier2" and self.tier2 else self.tier1).model
        out.findings = self._combine(a, f, verdict, tier, model, out)
        return out

    # -- verdict combination ----------------------------------------------------------------------
    def _llm_attrs(self, verdict: dict[str, Any], tier: str, model: str,
                   out: AnalysisOutcome) -> dict[str, Any]:
        return {
            "llm.model": model, "llm.tier": tier, "llm.tokens": int(out.tokens),
            "llm.cost_usd": float(out.cost_usd), "llm.cache_hit": bool(out.cache_hit),
            "llm.outcome": out.outcome, "llm.verdict": "anomaly" if verdict.get("is_anomaly") else "normal",
            "llm.confidence": float(verdict.get("confidence", 0.0)),
            "llm.root_cause": str(verdict.get("root_cause", ""))[:200],
            "llm.affected_services": [str(s) for s in verdict.get("affected_services", [])],
            "llm.remediation": [str(s)[:160] for s in verdict.get("remediation_steps", [])][:3],
            "llm.reasoning": str(verdict.get("reasoning", ""))[:300],
        }

    def _combine(self, a: _AssessmentLike, f: WindowFacts, verdict: dict[str, Any], tier: str, model: str,
                 out: AnalysisOutcome) -> list[Finding]:
        c = self.config
        llm_anomaly = bool(verdict.get("is_anomaly"))
        llm_conf = float(verdict.get("confidence", 0.0))
        attrs_llm = self._llm_attrs(verdict, tier, model, out)
        t0 = a.finding
        t0_conf = float(t0.attributes.get(A_CONFIDENCE, a.score)) if t0 is not None else float(a.score)
        if llm_anomaly:
            if not a.flagged:
                # the model alone cannot create a finding: tier 0 must have seen some signal, and
                # the window must hold error lines or new templates (code-counted)
                corroborated = (a.score >= c.borderline_score
                                and (f.error_count > 0 or f.new_template_count > 0))
                if not corroborated or llm_conf < c.llm_only_min_confidence:
                    self.metrics.verdicts.labels(tier, "llm_only_uncorroborated").inc()
                    out.extra["dropped"] = "uncorroborated"
                    return []
            self.metrics.verdicts.labels(tier, "anomaly_confirmed" if a.flagged else "anomaly_llm_only").inc()
            sev = verdict.get("severity", "none")
            if sev == "none":
                sev = str(t0.attributes.get(A_SEVERITY, "medium")) if t0 is not None else "medium"
            conf = (llm_conf + t0_conf) / 2 if a.flagged else llm_conf * 0.8
            attrs = dict(t0.attributes) if t0 is not None else self._base_attrs(a)
            evidence = list(attrs.get(A_EVIDENCE, []) or [])
            if verdict.get("root_cause"):
                evidence.append(f"llm: {str(verdict['root_cause'])[:200]}")
            attrs.update({A_SEVERITY: sev, A_TYPE: str(verdict.get("anomaly_type", "other")),
                          A_CONFIDENCE: round(min(1.0, max(0.0, conf)), 4), A_DETECTOR: tier,
                          A_EVIDENCE: evidence[:20]})
            attrs.update(attrs_llm)
            body = str(verdict.get("explanation", "")) or (t0.body if t0 is not None else "")
            return [_finding_like(t0, attrs, body)]
        # the LLM says normal
        if not a.flagged:
            self.metrics.verdicts.labels(tier, "normal_agreed").inc()
            return []
        # the model cannot take back what tier 0 found (log text can steer it, and a dismissed true
        # anomaly is recall lost): the finding stands, with the model's verdict and lower confidence
        strong = a.score >= c.strong_evidence_score
        self.metrics.verdicts.labels(tier, "normal_overruled" if strong else "normal_disputed").inc()
        attrs = dict(t0.attributes) if t0 is not None else self._base_attrs(a)
        attrs[A_CONFIDENCE] = round(max(0.05, t0_conf * (1.0 - 0.5 * llm_conf)), 4)
        attrs.update(attrs_llm)
        attrs["llm.overruled"] = True
        body = ((t0.body + "\n") if t0 is not None and t0.body else "") + (
            f"The {tier} LLM judged this window normal (confidence {llm_conf:.2f}); the finding stands "
            "with lowered confidence" + (", the statistical evidence being strong." if strong else "."))
        return [_finding_like(t0, attrs, body)]

    def _base_attrs(self, a: _AssessmentLike) -> dict[str, Any]:
        w = a.window
        return {A_SERVICE: w.service, A_SEVERITY: "medium", A_TYPE: "other", A_CONFIDENCE: float(a.score),
                A_DETECTOR: "tier0", A_WINDOW_START: int(w.start_ns), A_WINDOW_END: int(w.end_ns),
                A_EVIDENCE: [str(r) for r in list(a.reasons)[:10]]}

    def _tier0_with_note(self, a: _AssessmentLike, why: str, out: AnalysisOutcome | None = None) -> Finding:
        t0 = a.finding if a.finding is not None else Finding(EVENT_ANOMALY, self._base_attrs(a))
        attrs = dict(t0.attributes)
        attrs["llm.outcome"] = why
        attrs["llm.cache_hit"] = False
        if out is not None:
            attrs["llm.tokens"] = int(out.tokens)
            attrs["llm.cost_usd"] = float(out.cost_usd)
        note = f"LLM analysis unavailable ({why}); the tier-0 finding stands."
        return _finding_like(t0, attrs, (t0.body + "\n" + note) if t0.body else note)

    # -- budget / audit ---------------------------------------------------------------------------
    def _note_budget(self) -> None:
        self.metrics.skipped.labels("budget_exhausted").inc()
        self.metrics.budget_exhausted.set(1)
        if not self._budget_logged:
            self._budget_logged = True
            log.warning("llm: daily budget spent (%d tokens, $%.4f); tier 0 only until the next UTC day",
                        self.budget.tokens, self.budget.usd)

    def _audit(self, rec: dict[str, Any]) -> None:
        rec.setdefault("time_ns", time.time_ns())
        if len(self.audit_log) == self.audit_log.maxlen:
            self.metrics.audit_evicted.inc()
        self.audit_log.append(rec)
        if self._audit_sink is not None:
            try:
                self._audit_sink(dict(rec))
            except Exception:  # noqa: BLE001 - auditing never breaks analysis
                self.metrics.audit_errors.inc()
                log.exception("llm: audit sink failed")

    # -- for other stages (RCA) -----------------------------------------------------------------
    def complete_json(self, messages: list[dict[str, str]], schema: dict[str, Any],
                      tier: str | int = "tier1") -> dict[str, Any] | None:
        """A schema-validated JSON answer with the same protections (redaction, budget, rate limit,
        breaker, retries, one repair, audit); None when unavailable. Log text inside `messages` must
        already be quoted and neutralised by the caller (`receiver.llm.prompt.neutralise`)."""
        if not self._started or self.tier1 is None:
            return None
        want2 = str(tier) in ("tier2", "2")
        b = self.tier2 if (want2 and self.tier2 is not None) else self.tier1
        name = "tier2" if b is self.tier2 else "tier1"
        red: dict[str, int] = {}
        clean_msgs: list[dict[str, str]] = []
        for m in messages:
            content = str(m.get("content", ""))
            if self._redactor is not None:
                content, counts = self._redactor.redact(content)
                for k, v in counts.items():
                    red[k] = red.get(k, 0) + v
            clean_msgs.append({"role": str(m.get("role", "user")), "content": content})
        est_prompt = b.count_messages(clean_msgs)
        est_cost = b.cost(est_prompt, b.cfg.max_output_tokens)
        if not self.budget.allows(est_prompt + b.cfg.max_output_tokens, est_cost):
            self._note_budget()
            return None
        res = b.complete(clean_msgs, schema, name, prompt_tokens_est=est_prompt)
        self.budget.spend(res.tokens, res.cost_usd)
        self._audit({"tier": name, "model": b.model, "outcome": res.outcome, "cache_hit": False,
                     "prompt_sha256": _sha(clean_msgs), "redaction_counts": red,
                     "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                     "latency_s": round(res.latency_s, 4), "cost_usd": res.cost_usd, "attempts": res.attempts,
                     "error": res.error, "purpose": "complete_json", "backend": b.name})
        return res.value


# -- helpers --------------------------------------------------------------------------------------
def _default_redactor() -> Any | None:
    try:
        from receiver.logs.redact import RedactConfig, Redactor
    except ImportError:  # pragma: no cover - the logs stage is part of the package
        log.warning("llm: receiver.logs.redact unavailable; prompts are not re-redacted")
        return None
    return Redactor(RedactConfig())


def _error_count(w: Any) -> int:
    return sum(c for k, c in w.severity_counts.items() if severity_class(k) == "error")


def _unit_hash(s: str) -> float:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def _sha(msgs: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()


def _finding_like(t0: Finding | None, attrs: dict[str, Any], body: str) -> Finding:
    if t0 is None:
        return Finding(EVENT_ANOMALY, attrs, body=body)
    return Finding(t0.event_name, attrs, body=body, time_ns=t0.time_ns, id=t0.id, trace_id=t0.trace_id,
                   span_id=t0.span_id)
