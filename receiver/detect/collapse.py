"""Collapsing repeats of one problem into one finding and one summary.

During an incident every failing request's trace session shows the same problem; one finding per
trace would page hundreds of times. A problem's signature is (anomaly type, the templates or the
transition that made it anomalous). Periods are `period_s` long, aligned to the epoch in EVENT time,
by the window's start.
  * trace-id sessions: the FIRST session of a service with a signature in a period is reported at
    once (`anomaly.occurrences` = 1); later ones in that period are suppressed (the detector passes
    their assessment on with `flagged=False`, `duplicate_of` = the first finding's id) and counted.
    When the period is over (the service's windows reached one more period past its end), on
    `flush`, or when the group is evicted, a group with more than one occurrence is reported once
    more as a summary: a copy of the first finding with a new id, `anomaly.occurrences` = all of
    them, `anomaly.update_of` = the first id, the span covering them all, the first `max_trace_ids`
    trace ids (`anomaly.trace_ids`) and an exemplar of each of the next few occurrences.
  * a tumbling window is always reported (at most one per service and period) and opens the group
    for its signature when none is open.
  * regex-keyed sessions name distinct entities: each key keeps its own finding; only repeats of the
    same key and signature in a period collapse.
Open groups are capped (`max_groups`, the oldest closed early and counted by the caller).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from receiver.logs.windows import Window
from receiver.model import (
    A_CONFIDENCE,
    A_EVIDENCE,
    A_SERVICE,
    A_TYPE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    Finding,
)

A_OCCURRENCES = "anomaly.occurrences"  # int: windows this finding counts (collapsed duplicates included)


@dataclass
class _Group:
    first: Finding
    period_end_ns: int
    count: int = 1
    start_ns: int = 0
    end_ns: int = 0
    trace_ids: list[str] = field(default_factory=list)
    extra_evidence: list[str] = field(default_factory=list)


@dataclass
class Summary:
    window: Window
    finding: Finding
    first_id: str
    count: int


class Collapser:
    """Not thread-safe: the detector calls it under its lock."""

    def __init__(self, period_s: float, max_groups: int, max_trace_ids: int, max_evidence: int,
                 on_evict: Callable[[], None]) -> None:
        self.period_ns = int(period_s * 1e9)
        self.max_groups = max_groups
        self.max_trace_ids = max_trace_ids
        self.max_evidence = max_evidence
        self._on_evict = on_evict
        self._groups: OrderedDict[tuple[Any, ...], _Group] = OrderedDict()
        self._wm: dict[str, int] = {}  # service -> latest window end seen (services with open groups)
        self.summaries: list[Summary] = []

    @property
    def enabled(self) -> bool:
        return self.period_ns > 0

    def __len__(self) -> int:
        return len(self._groups)

    def saw(self, w: Window) -> None:
        if w.service in self._wm:
            self._wm[w.service] = max(self._wm[w.service], w.end_ns)

    def add(self, w: Window, problem_type: str, signature: tuple[int, ...], finding: Finding) -> str:
        """Count a flagged window; returns the id of the finding it duplicates ("" when reported)."""
        period = w.start_ns // self.period_ns
        entity = w.key if (w.kind == "session" and w.key_kind != "trace_id") else ""
        key = (w.service, period, problem_type, signature, entity)
        self._wm[w.service] = max(self._wm.get(w.service, 0), w.end_ns)
        g = self._groups.get(key)
        if g is None or w.kind == "tumbling":
            finding.attributes[A_OCCURRENCES] = 1
            if g is None:
                tids = list(w.error_trace_ids[:1]) or ([w.key] if w.key_kind == "trace_id" else [])
                self._groups[key] = _Group(first=finding, period_end_ns=(period + 1) * self.period_ns,
                                           start_ns=w.start_ns, end_ns=w.end_ns, trace_ids=tids)
                while len(self._groups) > self.max_groups:
                    _, old = self._groups.popitem(last=False)
                    self._on_evict()
                    self._summarise(old)
            return ""
        g.count += 1
        g.start_ns = min(g.start_ns, w.start_ns)
        g.end_ns = max(g.end_ns, w.end_ns)
        tid = w.error_trace_ids[0] if w.error_trace_ids else (w.key if w.key_kind == "trace_id" else "")
        if tid and tid not in g.trace_ids and len(g.trace_ids) < self.max_trace_ids:
            g.trace_ids.append(tid)
        if len(g.extra_evidence) < 3 and w.exemplars:
            g.extra_evidence.append(f"occurrence {g.count}: {w.exemplars[0]}")
        return g.first.id

    def close(self, force: bool) -> None:
        """Close the groups whose period is over (or all, with `force`); summaries are queued."""
        if not self._groups:
            return
        done = [k for k, g in self._groups.items()
                if force or self._wm.get(k[0], 0) >= g.period_end_ns + self.period_ns]
        for k in done:
            self._summarise(self._groups.pop(k))
        if done:
            live = {k[0] for k in self._groups}
            for svc in [s for s in self._wm if s not in live]:
                del self._wm[svc]

    def _summarise(self, g: _Group) -> None:
        if g.count <= 1:
            return
        first = g.first
        attrs = dict(first.attributes)
        evidence = list(attrs.get(A_EVIDENCE) or [])[: self.max_evidence] + g.extra_evidence
        attrs.update({
            A_OCCURRENCES: g.count,
            A_WINDOW_START: int(g.start_ns),
            A_WINDOW_END: int(g.end_ns),
            A_EVIDENCE: evidence,
            "anomaly.trace_ids": list(g.trace_ids),
            "anomaly.update_of": first.id,
        })
        body = (f"[collapsed] {g.count} occurrences of the same problem between window start "
                f"{g.start_ns} and end {g.end_ns} (first reported as finding {first.id}): {first.body}")
        finding = Finding(event_name=EVENT_ANOMALY, attributes=attrs, body=body, time_ns=g.end_ns,
                          trace_id=first.trace_id, span_id=first.span_id)
        w = Window(service=str(attrs.get(A_SERVICE, "")),
                   kind=str(attrs.get("anomaly.window.kind", "session")),
                   key="", start_ns=g.start_ns, end_ns=g.end_ns, key_kind="summary")
        self.summaries.append(Summary(w, finding, first.id, g.count))


def summary_type(s: Summary) -> str:
    return str(s.finding.attributes.get(A_TYPE, ""))


def summary_score(s: Summary) -> float:
    return float(s.finding.attributes.get(A_CONFIDENCE, 0.0) or 0.0)
