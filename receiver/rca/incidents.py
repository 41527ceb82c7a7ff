"""Incidents: correlated anomalies across connected services within a time span, one page each.

`IncidentTracker.observe(finding)`:
  * an `anomaly.detected` finding for service S at event time t (its `anomaly.window.end`, else its
    time) joins an OPEN incident when t lies within `correlation_window_s` of the incident's span
    [opened - W, updated + W] and S is one of the incident's services or `connected(S, s)` for one of
    them (by default: linked within `connect_hops` hops in the service graph, ignoring direction).
    No match opens a new incident; a finding that matches several incidents merges them into the
    oldest (the others are deleted: one correlated burst, one incident).
  * an `rca.report` finding is attached to its incident: the one named by `rca.incident_id` when the
    report carries it (the RCA stage names the tracker's incident holding its anomaly findings, see
    `incident_id_for_findings`; an id the tracker does not hold opens the incident under that id, so
    both name one incident), else the open (or recently resolved) incident within the window that
    contains the report's symptom service, root cause or a service of its propagation path. It sets the
    incident's root cause, candidates, path, confidence, issue and remediation steps.
  * Re-observing a finding id is a no-op that returns its incident (the RCA stage and the findings
    fan-out may both hand it over).
An incident resolves after `quiet_period_s` without new findings: checked on every observation on
event time (a finding later than updated + quiet closes it) and by `resolve_quiet(now_ns)` on the wall
clock of the last update (run every `resolve_interval_s` by the thread `start()` launches), so both
live traffic and replays of historical data resolve. Every change is persisted in the store and
mirrored in the incident memory (knowledge graph).

Bounded: at most `max_open_incidents` open incidents (the least recently updated is resolved with
reason `evicted`), `max_findings_per_incident` finding ids, `max_services_per_incident` services and
`max_templates_per_incident` templates per incident (the rest are counted, not kept), and at most
`recent_resolved` resolved incidents kept in memory for late RCA reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx
from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, positive, require
from receiver.logs.masking import Masker
from receiver.model import (
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    A_WINDOW_END,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
)
from receiver.rca.incident_model import (
    SEVERITY_RANK,
    STATUS_OPEN,
    STATUS_RESOLVED,
    Incident,
    max_severity,
)
from receiver.rca.memory import IncidentMemory, MemoryConfig

log = logging.getLogger(__name__)

R_INCIDENT_ID = "rca.incident_id"
R_ISSUE_KEYS = ("rca.root_cause_issue", "llm.root_cause_issue", "llm.root_cause")
R_REMEDIATION_KEYS = ("rca.remediation_steps", "rca.remediation", "llm.remediation_steps")
_NS = 1_000_000_000

Connected = Callable[[str, str], bool]


class IncidentStore(Protocol):
    def upsert_incident(self, incident: Incident) -> None: ...

    def get_incident(self, incident_id: str) -> Incident | None: ...

    def list_incidents(self, status: str | None = None, limit: int = 100) -> list[Incident]: ...

    def delete_incident(self, incident_id: str) -> bool: ...

    def add_resolution(self, incident_id: str, note: str, author: str = "",
                       time_ns: int | None = None) -> dict[str, Any] | None: ...

    def get_findings(self, ids: Sequence[str]) -> list[Finding]: ...


@dataclass
class IncidentConfig(StageConfig):
    correlation_window_s: float = 300.0
    quiet_period_s: float = 900.0
    max_open_incidents: int = 200
    max_findings_per_incident: int = 500
    max_services_per_incident: int = 100
    max_templates_per_incident: int = 200
    recent_resolved: int = 100
    resolve_interval_s: float = 10.0
    connect_hops: int = 2
    # finding attributes (string or string array) that name the log templates of an anomaly; when none
    # is present, the masked `anomaly.evidence` lines stand in for templates
    template_attributes: list[str] = field(
        default_factory=lambda: ["anomaly.templates", "anomaly.new_templates", "log.templates"])

    def validate(self) -> None:
        super().validate()
        positive(self.correlation_window_s, "incidents.correlation_window_s")
        positive(self.quiet_period_s, "incidents.quiet_period_s")
        positive(self.resolve_interval_s, "incidents.resolve_interval_s")
        for key in ("max_open_incidents", "max_findings_per_incident", "max_services_per_incident",
                    "max_templates_per_incident", "recent_resolved", "connect_hops"):
            value = getattr(self, key)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"incidents.{key}",
                    f"must be an integer >= 1, got {value!r}")
        require(isinstance(self.template_attributes, list)
                and all(isinstance(x, str) for x in self.template_attributes),
                "incidents.template_attributes", "must be a list of strings")


def same_service_only(a: str, b: str) -> bool:
    return a == b


def graph_connected(digraph: Callable[[], nx.DiGraph], max_hops: int = 2, refresh_s: float = 5.0,
                    clock: Callable[[], float] = time.monotonic) -> Connected:
    """`connected(a, b)` for the tracker from a service graph: True when a == b or a and b are linked
    within `max_hops` edges ignoring direction. `digraph` is e.g. `ServiceGraph.digraph`; it is called
    at most every `refresh_s` seconds, and hop neighbourhoods are cached until the next refresh."""
    state: dict[str, Any] = {"at": None, "g": nx.Graph(), "near": {}}
    lock = threading.Lock()

    def neighbours(a: str) -> frozenset[str]:
        """Every service within `max_hops` of `a` (including `a`); empty if `a` is not in the graph."""
        with lock:
            now = clock()
            if state["at"] is None or now - state["at"] >= refresh_s:
                state["g"] = nx.Graph(digraph().to_undirected(as_view=True))
                state["near"] = {}
                state["at"] = now
            g: nx.Graph = state["g"]
            near: dict[str, frozenset[str]] = state["near"]
            if a not in g:
                return frozenset()
            if a not in near:
                if len(near) >= 4096:  # bounded cache; cleared wholesale (rebuilt on refresh anyway)
                    near.clear()
                near[a] = frozenset(nx.single_source_shortest_path_length(g, a, cutoff=max_hops))
            return near[a]

    def connected(a: str, b: str) -> bool:
        return a == b or b in neighbours(a)

    connected.neighbours = neighbours  # type: ignore[attr-defined]  # lets the tracker test a set at once
    return connected


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)]


class IncidentTracker:
    """Groups findings into incidents, persists them, and remembers them (see module docstring).

    Also a findings consumer (`consume_findings`), so it can sit in the findings fan-out."""

    def __init__(self, config: IncidentConfig | None = None, store: IncidentStore | None = None,
                 registry: CollectorRegistry | None = None, connected: Connected | None = None,
                 memory: IncidentMemory | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config or IncidentConfig()
        self.config.validate()
        self.store = store
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connected = connected or same_service_only
        self.memory = memory if memory is not None else IncidentMemory(MemoryConfig(), self.registry)
        self.clock = clock
        self._lock = threading.RLock()
        self._open: OrderedDict[str, Incident] = OrderedDict()  # least recently updated first
        self._touched: dict[str, int] = {}  # incident id -> wall clock of its last update
        self._recent: OrderedDict[str, Incident] = OrderedDict()  # recently resolved
        self._seen: dict[str, set[str]] = {}  # incident id -> finding ids kept on it
        self._watermark_ns = 0
        self._masker = Masker()
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        r = self.registry
        self.m_opened = Counter("incidents_opened_total", "Incidents opened", registry=r)
        self.m_resolved = Counter("incidents_resolved_total", "Incidents resolved", ["reason"], registry=r)
        self.m_merged = Counter("incidents_merged_total", "Incidents merged into an older one", registry=r)
        self.m_findings = Counter("incident_findings_total", "Findings attached to incidents", ["event"],
                                  registry=r)
        self.m_open = Gauge("incidents_open", "Open incidents", registry=r)
        self.m_capped = Counter("incident_items_dropped_total",
                                "Items not kept on an incident because of a per-incident cap", ["what"],
                                registry=r)
        self.m_errors = Counter("incident_errors_total", "Incident operations that failed", ["op"],
                                registry=r)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Reload open incidents and the memory from the store; start the quiet-period resolver."""
        with self._lock:
            if self._started:
                return
            self._started = True
            if self.store is not None:
                try:
                    for inc in reversed(self.store.list_incidents(status=STATUS_OPEN,
                                                                  limit=self.config.max_open_incidents)):
                        self._open[inc.id] = inc
                        self._touched[inc.id] = self.clock()
                        self._seen[inc.id] = set(inc.finding_ids)
                    self.memory.load(self.store)
                except Exception:  # noqa: BLE001 - start without history rather than not at all
                    self.m_errors.labels("load").inc()
                    log.exception("incidents: could not reload incidents from the store")
            self.m_open.set(len(self._open))
        self._stop.clear()
        self._thread = threading.Thread(target=self._resolver, name="incident-resolver", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        self._started = False

    def _resolver(self) -> None:
        while not self._stop.wait(self.config.resolve_interval_s):
            try:
                self.resolve_quiet()
            except Exception:  # noqa: BLE001 - keep resolving; counted
                self.m_errors.labels("resolve_quiet").inc()
                log.exception("incidents: resolve_quiet failed")

    # ------------------------------------------------------------------ helpers
    def _event_time(self, f: Finding) -> int:
        end = f.attributes.get(A_WINDOW_END) if isinstance(f.attributes, dict) else None
        if isinstance(end, int) and not isinstance(end, bool) and end > 0:
            return end
        return int(f.time_ns)

    def _linked(self, a: str, b: str) -> bool:
        if a == b:
            return True
        try:
            return bool(self.connected(a, b))
        except Exception:  # noqa: BLE001 - a broken graph callback must not stop incident tracking
            self.m_errors.labels("connected").inc()
            log.exception("incidents: connected(%r, %r) failed", a, b)
            return False

    def _neighbours(self, service: str) -> frozenset[str] | None:
        """The services linked to `service` when `connected` can list them (see `graph_connected`),
        else None (the tracker then asks `connected(a, b)` pair by pair)."""
        fn = getattr(self.connected, "neighbours", None)
        if fn is None:
            return None
        try:
            return frozenset(fn(service)) | {service}
        except Exception:  # noqa: BLE001 - a broken graph callback must not stop incident tracking
            self.m_errors.labels("connected").inc()
            log.exception("incidents: neighbours(%r) failed", service)
            return frozenset({service})

    def _templates_of(self, f: Finding) -> list[str]:
        attrs = f.attributes
        for key in self.config.template_attributes:
            values = _as_list(attrs.get(key))
            if values:
                return values
        out: list[str] = []
        for line in _as_list(attrs.get(A_EVIDENCE)):
            if line.startswith("sequence: "):
                continue
            masked = self._masker.mask(line[:2000])[0]
            if masked not in out:
                out.append(masked)
        return out

    def _persist(self, inc: Incident) -> None:
        self.memory.add(inc)
        if self.store is None:
            return
        try:
            self.store.upsert_incident(inc)
        except Exception:  # noqa: BLE001 - tracking continues in memory; counted + logged
            self.m_errors.labels("persist").inc()
            log.exception("incidents: could not persist incident %s", inc.id)

    def _add_item(self, items: list[str], value: str, cap: int, what: str) -> None:
        if value in items:
            return
        if len(items) >= cap:
            self.m_capped.labels(what).inc()
            return
        items.append(value)

    def _attach_finding(self, inc: Incident, f: Finding, t: int) -> None:
        seen = self._seen.setdefault(inc.id, set(inc.finding_ids))
        inc.finding_count += 1
        if len(inc.finding_ids) < self.config.max_findings_per_incident:
            inc.finding_ids.append(f.id)
            seen.add(f.id)
        else:
            self.m_capped.labels("finding_ids").inc()
        inc.opened_ns = min(inc.opened_ns, t) if inc.opened_ns else t
        inc.updated_ns = max(inc.updated_ns, t)
        self._touched[inc.id] = self.clock()
        self._open.move_to_end(inc.id)

    def _resolve(self, inc: Incident, reason: str, resolved_ns: int) -> None:
        inc.status = STATUS_RESOLVED
        inc.resolved_ns = resolved_ns
        inc.resolve_reason = reason
        self._open.pop(inc.id, None)
        self._touched.pop(inc.id, None)
        self._seen.pop(inc.id, None)
        self._recent[inc.id] = inc
        while len(self._recent) > self.config.recent_resolved:
            self._recent.popitem(last=False)
        self.m_resolved.labels(reason).inc()
        self.m_open.set(len(self._open))
        self._persist(inc)

    def _advance_watermark(self, t: int) -> None:
        """Event-time progress, clamped to the wall clock + one correlation window so that one record
        with a clock far in the future cannot close every open incident."""
        limit = self.clock() + int(self.config.correlation_window_s * _NS)
        self._watermark_ns = max(self._watermark_ns, min(t, limit))

    def _close_stale_on_event_time(self) -> None:
        quiet = int(self.config.quiet_period_s * _NS)
        for inc in [i for i in self._open.values() if i.updated_ns + quiet < self._watermark_ns]:
            self._resolve(inc, "quiet", inc.updated_ns + quiet)

    def _find_by_finding(self, finding_id: str) -> Incident | None:
        for inc_id, ids in self._seen.items():
            if finding_id in ids:
                return self._open.get(inc_id)
        for inc in self._recent.values():
            if finding_id in inc.finding_ids:
                return inc
        return None

    def incident_id_for_findings(self, finding_ids: Sequence[str]) -> str | None:
        """The id of the open (else recently resolved) incident holding one of these findings."""
        with self._lock:
            for fid in finding_ids:
                inc = self._find_by_finding(fid)
                if inc is not None:
                    return inc.id
            return None

    @staticmethod
    def _copy(inc: Incident) -> Incident:
        return Incident.from_dict(inc.to_dict())

    # ------------------------------------------------------------------ observing
    def consume_findings(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            try:
                self.observe(f)
            except Exception:  # noqa: BLE001 - one bad finding must not stop the rest
                self.m_errors.labels("observe").inc()
                log.exception("incidents: could not observe finding %r", getattr(f, "id", "?"))

    def observe(self, finding: Finding) -> Incident | None:
        """Attach a finding to its incident (opening one if needed) and return a copy of the incident;
        None for findings that are neither anomalies nor RCA reports."""
        if not isinstance(finding.attributes, dict):
            raise ValueError("finding.attributes must be a dict")
        if finding.event_name == EVENT_ANOMALY:
            return self._observe_anomaly(finding)
        if finding.event_name == EVENT_RCA:
            return self._observe_report(finding)
        return None

    def _observe_anomaly(self, f: Finding) -> Incident:
        attrs = f.attributes
        service = str(attrs.get(A_SERVICE) or "unknown")
        t = self._event_time(f)
        W = int(self.config.correlation_window_s * _NS)
        with self._lock:
            known = self._find_by_finding(f.id)
            if known is not None:
                return self._copy(known)
            self._advance_watermark(t)
            self._close_stale_on_event_time()
            near = self._neighbours(service)
            matches = [inc for inc in self._open.values()
                       if inc.opened_ns - W <= t <= inc.updated_ns + W
                       and (service in inc.services
                            or (not near.isdisjoint(inc.services) if near is not None
                                else any(self._linked(service, s) for s in inc.services)))]
            if not matches:
                inc = Incident(opened_ns=t, updated_ns=t)
                self._open[inc.id] = inc
                self._seen[inc.id] = set()
                self.m_opened.inc()
            else:
                matches.sort(key=lambda i: (i.opened_ns, i.id))
                inc = matches[0]
                for other in matches[1:]:
                    self._merge(inc, other)
            self._add_item(inc.services, service, self.config.max_services_per_incident, "services")
            for tpl in self._templates_of(f):
                self._add_item(inc.templates, tpl, self.config.max_templates_per_incident, "templates")
            kind = attrs.get(A_TYPE)
            if isinstance(kind, str) and kind:
                self._add_item(inc.anomaly_types, kind, 50, "anomaly_types")
            sev = attrs.get(A_SEVERITY)
            if isinstance(sev, str) and sev in SEVERITY_RANK:
                inc.severity = max_severity(inc.severity, sev)
            self._attach_finding(inc, f, t)
            self.m_findings.labels(EVENT_ANOMALY).inc()
            self._enforce_open_cap(keep=inc.id)
            self.m_open.set(len(self._open))
            self._persist(inc)
            return self._copy(inc)

    def _merge(self, into: Incident, other: Incident) -> None:
        for s in other.services:
            self._add_item(into.services, s, self.config.max_services_per_incident, "services")
        for tpl in other.templates:
            self._add_item(into.templates, tpl, self.config.max_templates_per_incident, "templates")
        for kind in other.anomaly_types:
            self._add_item(into.anomaly_types, kind, 50, "anomaly_types")
        seen = self._seen.setdefault(into.id, set(into.finding_ids))
        for fid in other.finding_ids:
            if fid not in seen and len(into.finding_ids) < self.config.max_findings_per_incident:
                into.finding_ids.append(fid)
                seen.add(fid)
        into.finding_count += other.finding_count
        into.severity = max_severity(into.severity, other.severity)
        into.opened_ns = min(into.opened_ns, other.opened_ns)
        into.updated_ns = max(into.updated_ns, other.updated_ns)
        if other.root_cause_service and (not into.root_cause_service
                                         or (other.rca_confidence or 0) > (into.rca_confidence or 0)):
            for name in ("root_cause_service", "root_cause_issue", "candidates", "propagation_path",
                         "rca_confidence", "rca_report_id", "remediation"):
                setattr(into, name, getattr(other, name))
        into.resolution_notes.extend(other.resolution_notes)
        self._open.pop(other.id, None)
        self._touched.pop(other.id, None)
        self._seen.pop(other.id, None)
        self.m_merged.inc()
        self.memory.remove(other.id)
        if self.store is not None:
            try:
                self.store.delete_incident(other.id)
            except Exception:  # noqa: BLE001
                self.m_errors.labels("persist").inc()
                log.exception("incidents: could not delete merged incident %s", other.id)

    def _enforce_open_cap(self, keep: str) -> None:
        while len(self._open) > self.config.max_open_incidents:
            victim = next(i for i in self._open.values() if i.id != keep)
            self._resolve(victim, "evicted", victim.updated_ns)

    def _observe_report(self, f: Finding) -> Incident:
        attrs = f.attributes
        t = self._event_time(f)
        root = str(attrs.get(R_ROOT_CAUSE) or "")
        symptom = str(attrs.get(A_SERVICE) or "")
        path = _as_list(attrs.get(R_PATH))
        involved = [s for s in dict.fromkeys([symptom, root, *path]) if s]
        W = int(self.config.correlation_window_s * _NS)
        with self._lock:
            known = self._find_by_finding(f.id)
            if known is not None:
                return self._copy(known)
            self._advance_watermark(t)
            inc: Incident | None = None
            wanted = attrs.get(R_INCIDENT_ID)
            named = isinstance(wanted, str) and bool(wanted)
            if named:
                inc = self._open.get(wanted) or self._recent.get(wanted)
            if inc is None and not named:
                pool = [*self._open.values(), *reversed(self._recent.values())]
                near = [i for i in pool if i.opened_ns - W <= t <= i.updated_ns + W
                        and any(s in i.services for s in involved)]
                near.sort(key=lambda i: (symptom in i.services, i.status == STATUS_OPEN, i.updated_ns),
                          reverse=True)
                inc = near[0] if near else None
            if inc is None:
                self._close_stale_on_event_time()
                # a report naming an incident this tracker does not hold opens it under that id: the
                # RCA stage and the tracker then name the same incident
                inc = Incident(id=wanted, opened_ns=t, updated_ns=t) if named else \
                    Incident(opened_ns=t, updated_ns=t)
                self._open[inc.id] = inc
                self._seen[inc.id] = set()
                for s in involved:
                    self._add_item(inc.services, s, self.config.max_services_per_incident, "services")
                self.m_opened.inc()
            if root:
                inc.root_cause_service = root
                self._add_item(inc.services, root, self.config.max_services_per_incident, "services")
            inc.candidates = _as_list(attrs.get(R_CANDIDATES))[:20]
            inc.propagation_path = path[:20]
            conf = attrs.get(R_CONFIDENCE)
            numeric = isinstance(conf, (int, float)) and not isinstance(conf, bool)
            inc.rca_confidence = float(conf) if numeric else None
            inc.rca_report_id = f.id
            for key in R_ISSUE_KEYS:
                issue = attrs.get(key)
                if isinstance(issue, str) and issue.strip():
                    inc.root_cause_issue = issue[:1000]
                    break
            for key in R_REMEDIATION_KEYS:
                steps = _as_list(attrs.get(key))
                if steps:
                    inc.remediation = [s[:500] for s in steps[:10]]
                    break
            if inc.status == STATUS_OPEN:
                self._attach_finding(inc, f, t)
            else:  # a late report for a resolved incident: attach without reopening
                inc.finding_count += 1
                if len(inc.finding_ids) < self.config.max_findings_per_incident:
                    inc.finding_ids.append(f.id)
            self.m_findings.labels(EVENT_RCA).inc()
            self._enforce_open_cap(keep=inc.id)
            self.m_open.set(len(self._open))
            self._persist(inc)
            return self._copy(inc)

    # ------------------------------------------------------------------ resolving
    def resolve_quiet(self, now_ns: int | None = None) -> list[Incident]:
        """Resolve open incidents whose last update (wall clock, `clock()`) is `quiet_period_s` or more
        before `now_ns` (default: `clock()`). `resolved_ns` is the incident's last event time plus the
        quiet period. Returns copies of the incidents resolved."""
        now = self.clock() if now_ns is None else int(now_ns)
        quiet = int(self.config.quiet_period_s * _NS)
        out = []
        with self._lock:
            for inc in list(self._open.values()):
                if self._touched.get(inc.id, 0) + quiet <= now:
                    self._resolve(inc, "quiet", inc.updated_ns + quiet)
                    out.append(self._copy(inc))
        return out

    def open_incidents(self) -> list[Incident]:
        with self._lock:
            return [self._copy(i) for i in reversed(self._open.values())]

    def incident(self, incident_id: str) -> Incident | None:
        """An incident by id: open/recent ones from memory, others from the store."""
        with self._lock:
            inc = self._open.get(incident_id) or self._recent.get(incident_id)
            if inc is not None and self.store is None:
                return self._copy(inc)
        if self.store is not None:
            try:
                return self.store.get_incident(incident_id)
            except Exception:  # noqa: BLE001
                self.m_errors.labels("get").inc()
                log.exception("incidents: could not load incident %s", incident_id)
        return self.memory.get(incident_id)

    def add_resolution(self, incident_id: str, note: str, author: str = "",
                       resolve: bool = True) -> dict[str, Any] | None:
        """Record an operator's resolution note (and by default resolve the incident if still open).
        Returns the stored note, or None for an unknown incident. Raises ValueError for a bad note."""
        if not isinstance(note, str) or not note.strip():
            raise ValueError("note must be a non-empty string")
        now = self.clock()
        if self.store is not None:
            stored = self.store.add_resolution(incident_id, note, author=author, time_ns=now)
            if stored is None:
                return None
        else:
            if self.incident(incident_id) is None:
                return None
            stored = {"id": 0, "incident_id": incident_id, "time_ns": now, "author": author, "note": note}
        with self._lock:
            inc = self._open.get(incident_id) or self._recent.get(incident_id)
            if inc is not None:
                inc.resolution_notes.append(dict(stored))
                if stored["id"] == 0:
                    stored["id"] = len(inc.resolution_notes)
            if inc is not None and inc.status == STATUS_OPEN and resolve:
                self._resolve(inc, "manual", max(inc.updated_ns, now))
            elif incident_id in self.memory:
                self.memory.add_resolution(incident_id, stored)
            else:
                full = self.incident(incident_id)
                if full is not None:
                    self.memory.add(full)
        return stored

    def similar(self, incident: Incident, k: int = 3) -> list[tuple[Incident, float]]:
        """Past incidents most like this one (see `IncidentMemory.similar` for the score)."""
        return self.memory.similar(incident, k)

    def similar_descriptions(self, incident: Incident, k: int = 3) -> list[str]:
        """`similar()` as one line of text each, for an LLM prompt or a report's evidence."""
        return [describe_incident(other, score) for other, score in self.similar(incident, k)]


def describe_incident(inc: Incident, score: float | None = None, max_chars: int = 400) -> str:
    """One line: id, score, services, root cause (+ issue), remediation and resolution notes."""
    parts = [f"incident {inc.id[:12]}"]
    if score is not None:
        parts[0] += f" (similarity {score:.2f})"
    parts.append(f"{inc.status}, severity {inc.severity}")
    parts.append("services " + ", ".join(inc.services[:6]))
    if inc.root_cause_service:
        parts.append(f"root cause {inc.root_cause_service}"
                     + (f": {inc.root_cause_issue}" if inc.root_cause_issue else ""))
    if inc.remediation:
        parts.append("remediation: " + "; ".join(inc.remediation[:3]))
    if inc.resolution_notes:
        parts.append("resolved with: " + "; ".join(str(n.get("note", "")) for n in inc.resolution_notes[-2:]))
    text = " | ".join(parts)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
