"""Tier 0: the cheap, unsupervised, online detector that judges every closed window.

Per service it learns a baseline (no labels, online, bounded):
  * the templates seen so far (with counts)          -> `novel_template`
  * EWMA of the error share and warn share per window -> `error_burst`
  * EWMA histogram of templates + EWMA of its JS divergence -> `distribution_shift`
  * EWMA of lines per tumbling window                -> `silence` (an empty window of a chatty service)
  * template transition counts in sessions, first order and (backing off from) second order, with
    start/end markers                                -> `sequence` (unseen or improbable next template,
                                                        session ending without its usual closing template)

Calibration: every signal except novelty is turned into a tail probability p under the baseline
(Poisson upper tail for error/warn counts, Poisson P(0) for silence, normal tail of the JS z-score,
smoothed transition probability for sequences). Its surprise L = -log10(p) maps to a confidence by
one logistic: confidence = 1 / (1 + exp(-k (L - L0))) with L0 = `surprise_midpoint` (default 3,
p = 0.001 gives confidence 0.5) and k = `surprise_slope`. Novel templates get a prior by their worst
severity in the window and error words in the template (info 0.35, warn 0.6, error 0.8, fatal 0.9;
+0.15 with an error word such as error/exception/fail/refused/timeout/killed), so with the default
threshold 0.6 a new INFO template (0.35, or 0.5 with an error word) is never reported on its own:
new info lines are normal life. Session count invariants (Invariants-Mining spirit:
pairs of frequent templates whose counts are equal, or that always co-occur, in >= 97 % of past
sessions) report the share of past sessions that obeyed the broken invariant as confidence.
Dumped state is not an event: a template that only prints fields (`name.........<*>` table rows,
`key:<*> key:<*>` pairs, or, when it names no failure, `name: <*>` values and `section:` headers; see
`is_field_line`) gets no error-word bonus and a novelty prior capped at `severity_only_cap` (0.5), and
error bursts are counted in event lines: a burst made of dumped fields is capped at 0.5 as well.
An incident is not re-reported for its aftermath: when the last tumbling window of a service that had
lines was flagged and this one starts within `incident_grace_s` (1 h) of its end (silence is not
recovery: empty windows neither extend nor end an incident), the new templates of the window directly
after it are the incident's detail (the rest of a dump, follow-on errors) and their novelty is capped at
`severity_only_cap`; it is flagged again only by a continuing burst or when the incident's OWN new
failure (a failure-naming template first seen in it) recurs with more error lines than the service's
usual error share explains (Poisson p <= 0.05): that template is still news against the history before
the incident, so it keeps its novelty prior (for at most `incident_max_windows` windows; a service that
always logs errors never chains such findings). A window following the incident with still elevated
errors (Poisson p <= 0.05), even too few to flag, keeps it open; windows of an open incident are not
learned by the EWMAs (a storm split over many small windows does not become the new normal).
A never-seen service's FIRST window is judged despite the warm-up when at least half of its lines are
error/fatal lines naming a failure (it introduced itself with failures: a crash loop after a deploy);
any other warm-up window only learns.
Error words also match as CamelCase suffixes (`NullPointerException`, `OutOfMemoryError`).
A window is flagged when its best confidence >= `threshold` (0.6). One window yields ONE finding
(its strongest problem; the others are listed in the finding body and `Assessment.reasons`), never
one per line.

Learning: every window updates the baseline after it is scored; the EWMAs skip flagged windows
(an error storm does not become the new normal), template and transition counts learn, except a
flagged window's new failure templates (logged at ERROR/FATAL, or naming a failure without a level):
they are remembered as known bad (`Baseline.known_bad`, capped) and never learned as seen, so a
failure that repeats stays news instead of becoming normal. A new WARN template is news once.
Nothing is reported during a service's warm-up (its first `warmup_s` of event time, and its first
`warmup_windows` tumbling windows / `warmup_sessions` sessions) except the first-window rule above
(a window made mostly of errors naming a failure); it still learns.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.detect import sessions
from receiver.detect.baseline import Baseline
from receiver.detect.collapse import Collapser, summary_score, summary_type
from receiver.detect.config import DetectConfig
from receiver.detect.problem import Problem
from receiver.detect.stats import (
    confidence_from_surprise,
    count_sf,
    js_divergence,
    normal_sf,
    poisson_sf,
)
from receiver.detect.text import is_field_line, template_family
from receiver.logs.windows import Window
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

STATE_VERSION = 1

TYPES = ("novel_template", "error_burst", "distribution_shift", "silence", "sequence")
_SEV_PRIOR = {"fatal": 0.9, "error": 0.8, "warn": 0.6}
_TEXT_CACHE_MAX = 8192  # template texts whose error words / field-line shape are cached
_MAX_INCIDENT_TEMPLATES = 64


@dataclass
class Assessment:
    """Tier 0's verdict on one window; `finding` is set when flagged."""

    window: Window
    score: float
    flagged: bool
    finding: Finding | None = None
    reasons: list[str] = field(default_factory=list)
    problem: str = ""  # the anomaly type of the strongest problem ("" when none)
    # collapse: the id of the finding this window's problem was counted into; set on suppressed
    # duplicates (then flagged=False and finding=None; the score stays) and on summaries
    duplicate_of: str = ""
    summary: bool = False  # a collapse summary: `finding` counts the occurrences of `duplicate_of`


class AssessmentsConsumer(Protocol):
    def consume_assessments(self, assessments: Sequence[Assessment]) -> None: ...


class Tier0Only:
    """`--llm off`: forwards tier 0's findings straight to the findings consumer."""

    def __init__(self, findings_consumer: FindingsConsumer) -> None:
        self._next = findings_consumer

    def consume_assessments(self, assessments: Sequence[Assessment]) -> None:
        findings = [a.finding for a in assessments if a.flagged and a.finding is not None]
        if findings:
            self._next.consume_findings(findings)

    def start(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class Tier0Detector:
    """Scores windows against per-service baselines; passes `Assessment`s to `next`.

    Repeats of one problem are collapsed (`receiver.detect.collapse`, `collapse_period_s`, default
    60 s of event time): the first finding is reported at once, duplicates go downstream unflagged
    with `duplicate_of`, and one summary counts them; suppressed windows are counted in
    `tier0_collapsed_total{type}`, evicted groups in `tier0_baseline_evictions{reason="collapse_groups"}`.
    """

    def __init__(self, config: DetectConfig | None, next: AssessmentsConsumer | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or DetectConfig()
        self.config.validate()
        self._next = next
        self._lock = threading.Lock()
        self._baselines: OrderedDict[str, Baseline] = OrderedDict()
        self._entries = 0
        words = sorted({w.lower() for w in self.config.error_words if w}, key=len, reverse=True)
        self._error_re = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")", re.IGNORECASE) \
            if words else None
        # identifiers that name a failure in CamelCase (NullPointerException, OutOfMemoryError,
        # SocketTimeoutException) carry it as a suffix, not as a separate word
        suffixes = sorted({w.capitalize() for w in words if w.isalpha()}, key=len, reverse=True)
        self._camel_re = re.compile(r"(?<=[a-z0-9])(?:" + "|".join(suffixes) + r")(?![a-z])") \
            if suffixes else None
        registry = registry if registry is not None else CollectorRegistry()
        self.m_windows = Counter("tier0_windows", "Windows scored by tier 0", ["kind"], registry=registry)
        self.m_flagged = Counter("tier0_flagged", "Windows flagged by tier 0", ["type"], registry=registry)
        self.m_evicted = Counter("tier0_baseline_evictions", "Baseline entries evicted (caps)", ["reason"],
                                 registry=registry)
        self.m_services = Gauge("tier0_services", "Services with a baseline", registry=registry)
        self._window_children = {k: self.m_windows.labels(k) for k in ("tumbling", "session")}
        self.m_collapsed = Counter("tier0_collapsed", "Flagged windows counted into an earlier finding "
                                   "of the same problem instead of reported", ["type"], registry=registry)
        self.m_summaries = Counter("tier0_collapse_summaries", "Summary findings of collapsed problems",
                                   registry=registry)
        self.m_groups = Gauge("tier0_collapse_groups", "Open collapse groups", registry=registry)
        self._collapser = Collapser(self.config.collapse_period_s, self.config.collapse_max_groups,
                                    self.config.collapse_max_trace_ids, self.config.max_evidence,
                                    lambda: self.m_evicted.labels("collapse_groups").inc())  # under _lock
        self._started = False
        self._text_cache: dict[str, tuple[list[str], bool]] = {}  # guarded by self._lock

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._started = True

    def shutdown(self) -> None:
        self._started = False

    # ------------------------------------------------------------------ consuming
    def consume_windows(self, windows: Sequence[Window]) -> list[Assessment]:
        out = [self.assess(w) for w in windows]
        with self._lock:
            self._collapser.close(force=False)
            out += self._take_summaries()
        if out and self._next is not None:
            self._next.consume_assessments(out)
        return out

    def flush(self) -> list[Assessment]:
        """Close every collapse group now and hand the summaries downstream."""
        with self._lock:
            self._collapser.close(force=True)
            out = self._take_summaries()
        if out and self._next is not None:
            self._next.consume_assessments(out)
        return out

    def assess(self, w: Window) -> Assessment:
        with self._lock:
            b = self._baseline(w.service)
            problems = self._score(b, w)
            best = max(problems, key=lambda p: p.confidence) if problems else None
            flagged = best is not None and best.confidence >= self.config.threshold
            self._learn(b, w, flagged)
            self._account(w.service, b)
            self._collapser.saw(w)
        child = self._window_children.get(w.kind)
        (child if child is not None else self.m_windows.labels(w.kind)).inc()
        reasons = [f"{p.type} ({p.confidence:.2f}): {p.explanation}" for p in
                   sorted(problems, key=lambda p: -p.confidence)]
        score = best.confidence if best else 0.0
        finding = None
        duplicate_of = ""
        if flagged and best is not None:
            self.m_flagged.labels(best.type).inc()
            finding = self._finding(w, best, problems)
            if self.config.collapse_period_s > 0:
                with self._lock:
                    signature = best.signature or tuple(best.templates[:1])
                    duplicate_of = self._collapser.add(w, best.type, signature, finding)
                    self.m_groups.set(len(self._collapser))
                if duplicate_of:
                    self.m_collapsed.labels(best.type).inc()
                    flagged, finding = False, None
                    reasons.insert(0, f"collapsed: same problem as finding {duplicate_of} (counted there)")
        return Assessment(window=w, score=score, flagged=flagged, finding=finding, reasons=reasons,
                          problem=best.type if best else "", duplicate_of=duplicate_of)

    # ------------------------------------------------------------------ collapsing
    def _take_summaries(self) -> list[Assessment]:
        """The summaries of the groups closed so far, as assessments (lock held)."""
        out = []
        for sm in self._collapser.summaries:
            self.m_summaries.inc()
            out.append(Assessment(window=sm.window, score=summary_score(sm), flagged=True, finding=sm.finding,
                                  reasons=[f"collapse summary of {sm.first_id}: {sm.count} occurrences"],
                                  problem=summary_type(sm), duplicate_of=sm.first_id, summary=True))
        self._collapser.summaries = []
        self.m_groups.set(len(self._collapser))
        return out

    # ------------------------------------------------------------------ scoring
    def _surprise_conf(self, p: float) -> float:
        s = -math.log10(max(p, 1e-300))
        return confidence_from_surprise(s, self.config.surprise_midpoint, self.config.surprise_slope)

    def error_words_in(self, text: str) -> list[str]:
        if self._error_re is None:
            return []
        found = {m.group(0).lower() for m in self._error_re.finditer(text)}
        if self._camel_re is not None:
            found.update(m.group(0).lower() for m in self._camel_re.finditer(text))
        return sorted(found)

    def _text_info(self, template: str) -> tuple[list[str], bool]:
        """(error words, is a field line) of a template text; cached (bounded, cleared when full)."""
        info = self._text_cache.get(template)
        if info is None:
            words = self.error_words_in(template)
            info = (words, is_field_line(template, words))
            if len(self._text_cache) >= _TEXT_CACHE_MAX:
                self.m_evicted.labels("text_cache").inc(len(self._text_cache))
                self._text_cache.clear()
            self._text_cache[template] = info
        return info

    def failure_words(self, template: str) -> list[str]:
        """The error words of a template that reports an event; a field line reports none."""
        words, field_line = self._text_info(template)
        return [] if field_line else words

    def _failure_lines(self, w: Window) -> int:
        """Error/fatal lines of the window whose template names a failure (has an error word)."""
        return sum(n for t, n in w.template_errors.items() if self.failure_words(w.templates.get(t, "")))

    def _event_error_lines(self, w: Window) -> int:
        """Error/fatal lines of the window that are not field lines (dumped state)."""
        n = 0
        for t, c in w.template_errors.items():
            if not self._text_info(w.templates.get(t, ""))[1]:
                n += c
        return n

    def _score(self, b: Baseline, w: Window) -> list[Problem]:
        cfg = self.config
        problems: list[Problem] = []
        t_ns = w.start_ns or w.end_ns
        if not b.first_ns or t_ns < b.first_ns:
            b.first_ns = t_ns
        if (w.end_ns or t_ns) - b.first_ns < cfg.warmup_s * 1e9:
            # the service's output over a period says whether it is failing; one request or entity
            # made of error lines is the routine failure the warm-up has to learn
            first = self._first_window(b, w) if w.count and w.kind == "tumbling" else None
            return [first] if first else []
        if w.kind == "session":
            if b.sessions >= cfg.warmup_sessions:
                problems += self._novel(b, w)
                if w.key_kind != "trace_id":
                    # the order and counts of an entity's lifecycle (a block, a VM, a job) are judged
                    # one entity at a time; a request path seen in 1 of 1,000 requests is not news in a
                    # stream of thousands a minute (its errors are judged by rate, in tumbling windows)
                    for p in (sessions.invariants(b, w), sessions.sequence(b, w, cfg, self._surprise_conf)):
                        if p:
                            problems.append(p)
            return problems
        if b.windows < cfg.warmup_windows:
            if b.windows == 0 and w.count:
                first = self._first_window(b, w)
                if first:
                    problems.append(first)
            return problems
        if w.count == 0:
            lam = b.count.mean
            if lam >= cfg.silence_min_expected:
                pr = math.exp(-lam)
                conf = self._surprise_conf(pr)
                if b.silent:  # one finding per silence, not one per empty window
                    conf = min(conf, 0.05)
                problems.append(Problem(
                    "silence", conf, "high",
                    f"service {w.service} sent no log lines in this {_dur(w)} window; it usually sends "
                    f"{lam:.1f} lines per window (P(0 lines) = {pr:.2g})"
                    + (" (silence already reported)" if b.silent else "")))
            return problems
        problems += self._novel(b, w)
        recur = self._recurring(b, w)
        if recur:
            problems.append(recur)
        events = self._event_error_lines(w) if w.error_count >= cfg.min_errors else 0
        for kind, count, ewma in (("error", w.error_count, b.error_share),
                                  ("warn", w.warn_count, b.warn_share)):
            if count < cfg.min_errors:
                continue
            share = ewma.mean
            lam = max(w.count * share, 0.05 * cfg.min_errors)
            # errors come in clusters (one failing request logs in every service it crosses) and their
            # share drifts: the count's variance is the learned spread of the share (which holds the
            # sampling noise too) scaled to this window, and never below Poisson
            pr = count_sf(count, lam, max(lam, w.count * w.count * ewma.var))
            conf = self._surprise_conf(pr)
            note = ""
            if kind == "error" and events < count:
                # a burst is counted in events: error/fatal field lines (a register or state dump,
                # `name.......0`, `reg: 0x..`) are the context of an event, they corroborate but
                # cannot raise the alarm alone
                conf = min(conf, cfg.severity_only_cap)
                note = f"; {count - events} of them are dumped fields, {events} report events"
                if events >= cfg.min_errors:
                    pr_e = poisson_sf(events, lam)
                    conf_e = self._surprise_conf(pr_e)
                    if conf_e > conf:
                        conf = conf_e
                        note += f" (P(>= {events}) = {pr_e:.2g})"
            if conf > 0.05:
                sev = "high" if kind == "error" else "medium"
                if w.severity_counts.get("fatal", 0):
                    sev = "critical"
                problems.append(Problem(
                    "error_burst", conf, sev,
                    f"{count} {kind} lines out of {w.count} ({count / w.count:.0%}); baseline {kind} share "
                    f"{share:.2%} predicts {w.count * share:.1f} (P(>= {count}) = {pr:.2g})"
                    + note,
                    [t for t, n in sorted(w.template_errors.items(), key=lambda kv: -kv[1])]))
        if w.count >= cfg.shift_min_count and b.hist and b.js.n >= 3:
            total = float(w.count)
            cur = {t: n / total for t, n in w.template_counts.items()}
            js = js_divergence(cur, b.hist)
            if js >= cfg.shift_min_js:
                sd = math.sqrt(max(b.js.var, 1e-4))
                z = (js - b.js.mean) / sd
                pr = normal_sf(z)
                conf = self._surprise_conf(pr)
                if conf > 0.05:
                    gained = sorted(cur, key=lambda t: -(cur[t] - b.hist.get(t, 0.0)))[:3]
                    problems.append(Problem(
                        "distribution_shift", conf, "medium",
                        f"template mix changed: JS divergence {js:.2f} bits vs baseline {b.js.mean:.2f} "
                        f"+- {sd:.2f} (z = {z:.1f}); most increased: "
                        + ", ".join(f"#{t} {cur[t]:.0%} (was {b.hist.get(t, 0.0):.0%})" for t in gained),
                        gained))
        return problems

    def _novel(self, b: Baseline, w: Window) -> list[Problem]:
        cfg = self.config
        best: Problem | None = None
        # sessions and tumbling windows keep separate memories: a template first seen in a tumbling
        # window (closed earlier) is still news to the session that carries it
        seen: dict[int, int] | OrderedDict[int, int] = b.sess_df if w.kind == "session" else b.templates
        novel = [t for t in w.template_counts if t >= 0 and t not in seen]
        # an open incident: its new templates are the incident's own detail (the rest of a dump,
        # follow-on errors), listed but not reported again; only the burst can say it goes on
        # (only in the window directly after it: after a silence a new failure is news again)
        follow_on = self._follow_on(b, w) and w.start_ns == b.incident_end_ns
        rare: list[int] = []
        if w.kind == "session" and w.key_kind != "trace_id" and cfg.rare_session_share > 0:
            # a warn/error template seen in only a few earlier sessions is still news for a session that
            # names an entity (a block, a VM, a job: each matters on its own). Not for requests: any
            # request stream fails at some steady rate, which the tumbling windows judge
            limit = cfg.rare_session_share * b.sessions
            rare = [t for t in w.template_counts if t >= 0 and 0 < seen.get(t, 0) < limit
                    and w.template_worst.get(t) in ("warn", "error", "fatal") and t not in b.acknowledged]
        for t in novel + rare:
            text = w.templates.get(t, "")
            sev = w.template_worst.get(t, "unknown")
            prior = _SEV_PRIOR.get(sev, cfg.novel_info_prior)
            words, field_line = self._text_info(text)
            if field_line:  # a dumped value (`force load/store alignment.....0`) reports no event
                words = []
                prior = min(prior, cfg.severity_only_cap)
            elif words:
                prior = min(0.97, prior + cfg.error_word_bonus)
            family = template_family(text, cfg.family_tokens)
            known_family = t in novel and bool(family) and f"{w.kind[0]}:{family}" in b.families
            if known_family:  # a variant of a known event (parser split): much weaker evidence
                prior *= cfg.known_family_factor
            if follow_on:
                prior = min(prior, cfg.severity_only_cap)
            if best is None or prior > best.confidence:
                severity = {"fatal": "critical", "error": "high", "warn": "medium"}.get(
                    sev, "medium" if words else "low")
                what = (f"{len(novel)} template(s) never seen before for {w.service}" if t in novel else
                        f"a {sev} template seen in only {seen.get(t, 0)} of {b.sessions} earlier sessions")
                best = Problem(
                    "novel_template", prior, severity,
                    f"{what}; strongest: "
                    f"\"{text[:200]}\" ({w.template_counts[t]} line(s), worst severity {sev}"
                    + (f", error words: {', '.join(words)}" if words else "")
                    + (", a variant of a known event" if known_family else "")
                    + (", a dumped field, not an event" if field_line else "")
                    + (", follow-on of the incident flagged in the previous window" if follow_on else "")
                    + ")",
                    [t] + [x for x in novel if x != t])
        return [best] if best else []

    def _novel_prior(self, w: Window, t: int) -> float:
        text = w.templates.get(t, "")
        words, field_line = self._text_info(text)
        prior = _SEV_PRIOR.get(w.template_worst.get(t, "unknown"), self.config.novel_info_prior)
        if field_line:
            return min(prior, self.config.severity_only_cap)
        return min(0.97, prior + self.config.error_word_bonus) if words else prior

    def _recurring(self, b: Baseline, w: Window) -> Problem | None:
        """The open incident's own failure recurs in the window right after it: a template first
        seen in the incident is still news against the history before it, so it keeps its novelty
        prior (the failure has not stopped), for at most `incident_max_windows` windows."""
        if not b.incident_templates or not self._follow_on(b, w) \
                or b.incident_windows >= self.config.incident_max_windows:
            return None
        hits = [(b.incident_templates[t], t) for t in w.template_errors if t in b.incident_templates]
        if not hits or not self._elevated(b, w, floor=False):
            return None  # a service that always logs errors: its usual share explains them
        prior, t = max(hits)
        lines = sum(w.template_errors[x] for _, x in hits)
        sev = w.template_worst.get(t, "error")
        return Problem(
            "novel_template", prior, {"fatal": "critical", "error": "high"}.get(sev, "medium"),
            f"ongoing incident ({b.incident_windows + 1} window(s)): {lines} line(s) of the failure first "
            f"seen in it recur; strongest: \"{w.templates.get(t, '')[:200]}\" (worst severity {sev})",
            [x for _, x in sorted(hits, reverse=True)])

    def _elevated(self, b: Baseline, w: Window, floor: bool = True) -> bool:
        """More error lines than the baseline share explains at the 5 % level (too few may flag).
        `floor`: the expected count is at least 0.05 * min_errors (as for bursts), so one stray
        error in a clean service is not enough."""
        if not w.error_count:
            return False
        lam = max(w.count * b.error_share.mean, 0.05 * self.config.min_errors if floor else 1e-6)
        return poisson_sf(w.error_count, lam) <= 0.05

    def _track_incident(self, b: Baseline, w: Window, flagged: bool) -> None:
        """Open, extend or close the service's incident (before the window's templates are learned).
        An incident stays open through a window that directly follows it with still elevated
        errors, even when too few to flag: such a window is not learned either."""
        follow = self._follow_on(b, w)
        if not w.count:
            return  # an empty window observes nothing: the incident neither goes on nor ends
        if follow and b.incident_windows >= self.config.incident_max_windows:
            # it has lasted too long to be news: the incident is closed, what follows is learned
            b.incident_end_ns, b.incident_templates, b.incident_windows = 0, {}, 0
            return
        continuing = bool(not flagged and follow and self._elevated(b, w))
        if not (flagged or continuing):
            b.incident_end_ns, b.incident_templates, b.incident_windows = 0, {}, 0
            return
        if not follow:  # a new incident
            b.incident_templates, b.incident_windows = {}, 0
        else:
            b.incident_windows += 1
        b.incident_end_ns = w.end_ns
        for t in w.template_errors:
            if t >= 0 and t not in b.templates and t not in b.incident_templates \
                    and self.failure_words(w.templates.get(t, "")):
                if len(b.incident_templates) >= _MAX_INCIDENT_TEMPLATES:  # the first ones are kept
                    self.m_evicted.labels("incident_templates").inc()
                    continue
                b.incident_templates[t] = self._novel_prior(w, t)

    def _follow_on(self, b: Baseline, w: Window) -> bool:
        """An open incident: the last window of this service with lines was flagged (or continued
        the incident) and this window starts within `incident_grace_s` of its end. Silence is not
        recovery: empty windows in between neither extend nor end the incident."""
        if w.kind != "tumbling" or b.incident_end_ns == 0:
            return False
        return 0 <= w.start_ns - b.incident_end_ns <= self.config.incident_grace_s * 1e9

    def _first_window(self, b: Baseline, w: Window) -> Problem | None:
        """A window of a service whose baseline is still learning (its first minutes) has nothing to be
        compared with, so only what it says counts: when at least half of its lines are error/fatal
        lines naming a failure, the service introduced itself with failures (a crash loop after a
        deploy, a job that cannot start) and its strongest such template is reported with its novelty
        prior. Any other window (info chatter, a single error among many lines, warnings) only
        teaches the baseline."""
        failures = self._failure_lines(w)
        if not failures or 2 * failures < w.count:
            return None
        best = self._novel(b, w)
        if not best:
            return None
        p = best[0]
        p.warmup = True
        p.explanation = (f"while the service's baseline is still learning: {failures} of the {w.count} lines "
                         f"are errors naming a failure; " + p.explanation)
        return p

    # ------------------------------------------------------------------ learning
    def _learn(self, b: Baseline, w: Window, flagged: bool) -> None:
        cfg = self.config
        a = cfg.ewma_alpha
        seen = b.sess_df if w.kind == "session" else b.templates
        if w.kind == "tumbling":
            self._track_incident(b, w, flagged)
        bad = self._remember_bad(b, w, seen) if flagged else set()
        for t, n in w.template_counts.items():
            if t < 0 or t in bad:
                continue
            if t not in seen and cfg.family_tokens:  # families are remembered per window kind
                fam = template_family(w.templates.get(t, ""), cfg.family_tokens)
                if fam:
                    key = f"{w.kind[0]}:{fam}"
                    b.families[key] = b.families.get(key, 0) + 1
                    b.families.move_to_end(key)
            b.templates[t] = b.templates.get(t, 0) + n
            b.templates.move_to_end(t)
        while len(b.families) > cfg.max_templates_per_service:
            b.families.popitem(last=False)
            self.m_evicted.labels("families").inc()
        while len(b.templates) > cfg.max_templates_per_service:
            b.templates.popitem(last=False)
            self.m_evicted.labels("templates").inc()
        if w.kind == "session":
            b.sessions += 1
            sessions.learn_transitions(b, w, cfg, self.m_evicted)
            sessions.learn_invariants(b, w, cfg, self.m_evicted, bad)
            return
        b.windows += 1
        continuing = b.incident_end_ns == w.end_ns and not flagged
        if w.count == 0:
            if flagged:
                b.silent = True
            return  # an empty window says nothing about the mix; the count EWMA keeps its level
        b.silent = False
        if not (flagged or continuing) or b.windows <= cfg.warmup_windows:
            b.error_share.update(w.error_count / w.count, a)
            b.warn_share.update(w.warn_count / w.count, a)
            b.count.update(float(w.count), a)
            total = float(w.count)
            cur = {t: n / total for t, n in w.template_counts.items()}
            if b.hist:
                b.js.update(js_divergence(cur, b.hist), a)
                keys = set(b.hist) | set(cur)
                hist = {k: (1 - a) * b.hist.get(k, 0.0) + a * cur.get(k, 0.0) for k in keys}
                b.hist = {k: v for k, v in hist.items() if v > 1e-3}
                if len(b.hist) > 2 * cfg.max_hist_templates:  # amortised: trim to the heaviest
                    keep = sorted(b.hist.items(), key=lambda kv: -kv[1])[: cfg.max_hist_templates]
                    self.m_evicted.labels("histogram").inc(len(b.hist) - len(keep))
                    b.hist = dict(keep)
            else:
                b.hist = cur

    def _remember_bad(self, b: Baseline, w: Window, seen: dict[int, int]) -> set[int]:
        """A flagged window's new templates that report a failure (logged at ERROR or FATAL, or naming a
        failure when the line has no level) are remembered as known bad instead of learned: a failure
        does not become normal because it repeats, its next occurrence is news again (repeats of one
        problem are collapsed into one finding downstream). A WARN line is a warning: news once, then
        judged by its rate. Returns the templates not to learn."""
        bad: set[int] = set()
        for t in w.template_counts:
            if t < 0 or (t in seen and t not in b.known_bad) or t in b.acknowledged:
                continue
            worst = w.template_worst.get(t, "unknown")
            if worst in ("error", "fatal") or (
                    worst == "unknown" and self.failure_words(w.templates.get(t, ""))):
                bad.add(t)
                b.known_bad[t] = b.known_bad.get(t, 0) + 1
                b.known_bad.move_to_end(t)
                b.known_bad_text[t] = w.templates.get(t, "")[:512]
        while len(b.known_bad) > self.config.max_templates_per_service:
            gone, _ = b.known_bad.popitem(last=False)
            b.known_bad_text.pop(gone, None)
            self.m_evicted.labels("known_bad").inc()
        return bad

    def _account(self, service: str, b: Baseline) -> None:
        """Keep the total size of all baselines under `max_entries_total` (LRU services dropped)."""
        size = (len(b.templates) + len(b.families) + len(b.hist) + len(b.sess_df) + b.n_trans + len(b.pairs)
                + len(b.known_bad) + len(b.acknowledged))
        self._entries += size - b.size
        b.size = size
        while self._entries > self.config.max_entries_total and len(self._baselines) > 1:
            name, old = next(iter(self._baselines.items()))
            if name == service:
                break
            self._drop(name)
            self.m_evicted.labels("entries_budget").inc()

    def _drop(self, name: str) -> None:
        old = self._baselines.pop(name)
        self._entries -= old.size
        self.m_services.set(len(self._baselines))

    def entries(self) -> int:
        """Entries held by all baselines (templates + histogram + transitions + pairs)."""
        with self._lock:
            return self._entries

    def _baseline(self, service: str) -> Baseline:
        b = self._baselines.get(service)
        if b is None:
            if len(self._baselines) >= self.config.max_services:
                self._drop(next(iter(self._baselines)))
                self.m_evicted.labels("services").inc()
            b = self._baselines[service] = Baseline()
            self.m_services.set(len(self._baselines))
        else:
            self._baselines.move_to_end(service)
        return b

    # ------------------------------------------------------------------ findings
    def _finding(self, w: Window, best: Problem, problems: list[Problem]) -> Finding:
        cfg = self.config
        evidence: list[str] = []
        order = list(range(len(w.exemplars)))
        first = set(best.templates[:3])
        order.sort(key=lambda i: 0 if (i < len(w.exemplar_templates) and w.exemplar_templates[i] in first)
                   else 1)
        for i in order[: cfg.max_evidence]:
            evidence.append(w.exemplars[i])
        if best.type == "sequence" and w.template_sequence:
            evidence.append("sequence: " + " -> ".join(str(t) for t in w.template_sequence[:40]))
        others = [p for p in problems if p is not best]
        body = f"[tier0 {best.type}] {best.explanation}."
        if others:
            body += " Also: " + "; ".join(f"{p.type} ({p.confidence:.2f}): {p.explanation}" for p in others)
        attrs: dict[str, Any] = {
            A_SERVICE: w.service,
            A_SEVERITY: best.severity,
            A_TYPE: best.type,
            A_CONFIDENCE: round(float(best.confidence), 4),
            A_DETECTOR: "tier0",
            A_WINDOW_START: int(w.start_ns),
            A_WINDOW_END: int(w.end_ns),
            A_EVIDENCE: evidence,
            "anomaly.window.kind": w.kind,
            "anomaly.window.key": w.key,
        }
        if best.warmup:
            attrs["anomaly.warmup"] = True
        return Finding(event_name=EVENT_ANOMALY, attributes=attrs, body=body,
                       time_ns=w.end_ns or w.start_ns,
                       trace_id=w.error_trace_ids[0] if w.error_trace_ids else "",
                       span_id=w.error_span_ids[0] if w.error_span_ids else "")

    # ------------------------------------------------------------------ state
    def services(self) -> list[str]:
        with self._lock:
            return list(self._baselines)

    def baseline_info(self, service: str) -> dict[str, Any] | None:
        with self._lock:
            b = self._baselines.get(service)
            if b is None:
                return None
            return {"windows": b.windows, "sessions": b.sessions, "templates": len(b.templates),
                    "transitions": b.n_trans, "error_share": b.error_share.mean, "count": b.count.mean}

    def known_bad(self, service: str | None = None) -> list[dict[str, Any]]:
        """The failure templates remembered as known bad (newest first), per service."""
        with self._lock:
            return [{"service": name, "template_id": t, "template": b.known_bad_text.get(t, ""), "windows": n}
                    for name, b in self._baselines.items() if service in (None, name)
                    for t, n in reversed(b.known_bad.items())]

    def mark_normal(self, service: str, template_id: int) -> bool:
        """An operator says a remembered failure is normal: it leaves the known-bad memory, is learned
        as seen and is never news for being rare, so its recurrence is judged by its rate only (the
        shape of the session or window around it is still judged). Returns False when the service
        holds no such template. Persisted with the baselines (`save`)."""
        with self._lock:
            b = self._baselines.get(service)
            if b is None or template_id not in b.known_bad:
                return False
            del b.known_bad[template_id]
            b.known_bad_text.pop(template_id, None)
            b.acknowledged[template_id] = None
            while len(b.acknowledged) > self.config.max_templates_per_service:
                b.acknowledged.popitem(last=False)
            b.templates[template_id] = b.templates.get(template_id, 0) + 1
            b.sess_df[template_id] = b.sess_df.get(template_id, 0) + 1
            self._account(service, b)
            return True

    def save(self, path: str) -> None:
        """Write the baselines as JSON (atomic replace)."""
        with self._lock:
            data = {"version": STATE_VERSION,
                    "services": [[name, b.to_json()] for name, b in self._baselines.items()]}
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tier0-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self, path: str) -> int:
        """Restore baselines saved by `save`; returns the number of services loaded."""
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported tier0 state version {data.get('version')!r}")
        loaded: OrderedDict[str, Baseline] = OrderedDict()
        for name, bj in data["services"][-self.config.max_services:]:
            loaded[str(name)] = Baseline.from_json(bj)
        with self._lock:
            self._baselines = loaded
            self._entries = 0
            for b in loaded.values():
                sessions.rebuild_invariants(b, self.config)  # the active invariants are derived, not stored
                b.size = (len(b.templates) + len(b.families) + len(b.hist) + len(b.sess_df) + b.n_trans
                          + len(b.pairs) + len(b.known_bad) + len(b.acknowledged))
                self._entries += b.size
            self.m_services.set(len(loaded))
        return len(loaded)


def _dur(w: Window) -> str:
    s = (w.end_ns - w.start_ns) / 1e9
    return f"{s:.0f} s"
