"""Incident memory: a knowledge graph (networkx) of past incidents and what they involved.

Nodes (attribute `type`):
  * `incident:<id>`            -- one incident (status, times, severity, label)
  * `service:<name>`           -- a service an incident touched
  * `template:<sha1[:16]>`     -- a log template seen in an incident (`text`)
  * `root_cause:<service>`     -- "the fault was in <service>" (`issue`: last known description)
  * `remediation:<sha1[:16]>`  -- a remediation step (`text`)
  * `resolution:<incident>:<n>`-- an operator's resolution note (`text`, `author`, `time_ns`)
Edges (a `MultiDiGraph`, key = attribute `relation`):
  incident -affects-> service, incident -matched-> template, incident -caused_by-> root_cause,
  root_cause -located_in-> service, incident -remediated_by-> remediation,
  remediation -fixes-> root_cause, incident -has_resolution-> resolution.

Similarity (`similar`): for incidents A and B with service sets S and template sets T,

    score = (w_s * J(S_A, S_B) + w_t * J(T_A, T_B)) / (w_s + w_t)

with J the Jaccard index |X & Y| / |X | Y| and the default weights w_s = 0.4, w_t = 0.6 (templates say
*what* failed, services only *where*). When neither incident has templates the template term is
dropped and score = J(S_A, S_B). The root-cause service counts as one of an incident's services.
Only incidents sharing at least one service or template node are scored (found through the graph),
so a query costs O(neighbours), not O(memory). Ties: resolved incidents first (they carry a known
fix), then the most recently updated.

Bounded: at most `max_incidents` incidents; adding one more evicts the least recently added or
updated incident and every node left without edges (counted in `incident_memory_evicted_total`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx
from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, non_negative, require
from receiver.rca.incident_model import STATUS_RESOLVED, Incident

_TEXT_MAX = 300


class IncidentSource(Protocol):
    def list_incidents(self, status: str | None = None, limit: int = 100) -> list[Incident]: ...


@dataclass
class MemoryConfig(StageConfig):
    max_incidents: int = 2000
    service_weight: float = 0.4
    template_weight: float = 0.6

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.max_incidents, int) and self.max_incidents >= 1,
                "memory.max_incidents", f"must be an integer >= 1, got {self.max_incidents!r}")
        non_negative(self.service_weight, "memory.service_weight")
        non_negative(self.template_weight, "memory.template_weight")
        require(self.service_weight + self.template_weight > 0, "memory",
                "service_weight + template_weight must be > 0")


def _h(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:16]


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def _services(inc: Incident) -> set[str]:
    s = set(inc.services)
    if inc.root_cause_service:
        s.add(inc.root_cause_service)
    return s


class IncidentMemory:
    def __init__(self, config: MemoryConfig | None = None, registry: CollectorRegistry | None = None) -> None:
        self.config = config or MemoryConfig()
        self.config.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.graph: nx.MultiDiGraph = nx.MultiDiGraph()
        self._incidents: OrderedDict[str, Incident] = OrderedDict()
        self._lock = threading.RLock()
        self.m_incidents = Gauge("incident_memory_incidents", "Incidents held in the knowledge graph",
                                 registry=self.registry)
        self.m_nodes = Gauge("incident_memory_nodes", "Nodes in the incident knowledge graph",
                             registry=self.registry)
        self.m_evicted = Counter("incident_memory_evicted_total",
                                 "Incidents evicted from the knowledge graph by the cap",
                                 registry=self.registry)

    # ------------------------------------------------------------------ building
    def __len__(self) -> int:
        return len(self._incidents)

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self._incidents

    def get(self, incident_id: str) -> Incident | None:
        with self._lock:
            inc = self._incidents.get(incident_id)
            return Incident.from_dict(inc.to_dict()) if inc else None

    def load(self, source: IncidentSource) -> int:
        """Rebuild from the store: the most recently updated `max_incidents` incidents."""
        incidents = source.list_incidents(limit=self.config.max_incidents)
        with self._lock:
            for inc in reversed(incidents):  # oldest first, so the newest end up most recent
                self.add(inc)
            return len(self._incidents)

    def add(self, incident: Incident) -> None:
        """Add or update an incident (its services, templates, root cause, remediation, notes)."""
        inc = Incident.from_dict(incident.to_dict())
        with self._lock:
            node = f"incident:{inc.id}"
            if inc.id in self._incidents:
                self._drop_edges(node)
            self._incidents[inc.id] = inc
            self._incidents.move_to_end(inc.id)
            g = self.graph
            label = f"{inc.root_cause_service or ', '.join(inc.services[:3])} ({inc.severity})"
            g.add_node(node, type="incident", status=inc.status, opened_ns=inc.opened_ns,
                       updated_ns=inc.updated_ns, resolved_ns=inc.resolved_ns, severity=inc.severity,
                       label=label)
            for s in inc.services:
                g.add_node(f"service:{s}", type="service", label=s)
                g.add_edge(node, f"service:{s}", key="affects", relation="affects")
            for t in inc.templates:
                tid = f"template:{_h(t)}"
                g.add_node(tid, type="template", text=t[:_TEXT_MAX], label=t[:80])
                g.add_edge(node, tid, key="matched", relation="matched")
            rc = None
            if inc.root_cause_service:
                rc = f"root_cause:{inc.root_cause_service}"
                svc = f"service:{inc.root_cause_service}"
                attrs: dict[str, Any] = {"type": "root_cause", "service": inc.root_cause_service,
                                         "label": f"fault in {inc.root_cause_service}"}
                if inc.root_cause_issue:
                    attrs["issue"] = inc.root_cause_issue[:_TEXT_MAX]
                g.add_node(rc, **attrs)
                g.add_node(svc, type="service", label=inc.root_cause_service)
                g.add_edge(node, rc, key="caused_by", relation="caused_by")
                g.add_edge(rc, svc, key="located_in", relation="located_in")
            for step in inc.remediation:
                rid = f"remediation:{_h(step)}"
                g.add_node(rid, type="remediation", text=step[:_TEXT_MAX], label=step[:80])
                g.add_edge(node, rid, key="remediated_by", relation="remediated_by")
                if rc is not None:
                    g.add_edge(rid, rc, key="fixes", relation="fixes")
            for note in inc.resolution_notes:
                self._add_note(inc.id, note)
            while len(self._incidents) > self.config.max_incidents:
                old_id, _ = self._incidents.popitem(last=False)
                self._remove_incident_node(old_id)
                self.m_evicted.inc()
            self._update_gauges()

    def remove(self, incident_id: str) -> bool:
        """Forget an incident (e.g. merged into another); False if it was not in memory."""
        with self._lock:
            if incident_id not in self._incidents:
                return False
            del self._incidents[incident_id]
            self._remove_incident_node(incident_id)
            self._update_gauges()
            return True

    def add_resolution(self, incident_id: str, note: dict[str, Any] | str, author: str = "") -> bool:
        """Attach a resolution note (a stored note dict, or plain text). False if the incident is unknown."""
        with self._lock:
            inc = self._incidents.get(incident_id)
            if inc is None:
                return False
            if isinstance(note, str):
                note = {"id": len(inc.resolution_notes) + 1, "incident_id": incident_id, "time_ns": 0,
                        "author": author, "note": note}
            inc.resolution_notes.append(dict(note))
            self._add_note(incident_id, note)
            self._update_gauges()
            return True

    def _add_note(self, incident_id: str, note: dict[str, Any]) -> None:
        nid = f"resolution:{incident_id}:{note.get('id', _h(str(note.get('note', ''))))}"
        text = str(note.get("note", ""))
        self.graph.add_node(nid, type="resolution", text=text[:_TEXT_MAX], label=text[:80],
                            author=str(note.get("author", "")), time_ns=int(note.get("time_ns") or 0))
        self.graph.add_edge(f"incident:{incident_id}", nid, key="has_resolution", relation="has_resolution")

    def _drop_edges(self, node: str) -> None:
        """Remove an incident's outgoing edges except its resolution notes, then prune orphans."""
        g = self.graph
        drop = [(u, v, k) for u, v, k in g.out_edges(node, keys=True) if k != "has_resolution"]
        g.remove_edges_from(drop)
        self._prune({v for _, v, _ in drop})

    def _remove_incident_node(self, incident_id: str) -> None:
        g = self.graph
        node = f"incident:{incident_id}"
        if node not in g:
            return
        targets = set(g.successors(node))
        g.remove_node(node)
        for t in list(targets):
            if g.nodes[t].get("type") == "resolution":
                g.remove_node(t)
                targets.discard(t)
        self._prune(targets)

    def _prune(self, nodes: set[str]) -> None:
        """Remove nodes no incident refers to any more (and what only they referred to)."""
        g = self.graph
        pending = list(nodes)
        while pending:
            n = pending.pop()
            if n not in g:
                continue
            kind = g.nodes[n].get("type")
            if kind in ("root_cause", "remediation"):
                referenced = any(g.nodes[u].get("type") == "incident" for u in g.predecessors(n))
                if not referenced:
                    succ = list(g.successors(n))
                    g.remove_node(n)
                    pending.extend(succ)
            elif kind in ("service", "template") and g.degree(n) == 0:
                g.remove_node(n)

    def _update_gauges(self) -> None:
        self.m_incidents.set(len(self._incidents))
        self.m_nodes.set(self.graph.number_of_nodes())

    # ------------------------------------------------------------------ queries
    def score(self, a: Incident, b: Incident) -> float:
        """The documented similarity between two incidents, in [0, 1]."""
        ws, wt = self.config.service_weight, self.config.template_weight
        js = jaccard(_services(a), _services(b))
        ta, tb = set(a.templates), set(b.templates)
        if not ta and not tb:
            return js if ws > 0 else 0.0
        return (ws * js + wt * jaccard(ta, tb)) / (ws + wt)

    def similar(self, incident: Incident, k: int = 3, min_score: float = 0.0) -> list[tuple[Incident, float]]:
        """The `k` most similar OTHER incidents in memory, best first, each with its score (> min_score)."""
        if k <= 0:
            return []
        with self._lock:
            g = self.graph
            keys = [f"service:{s}" for s in _services(incident)]
            keys += [f"template:{_h(t)}" for t in incident.templates]
            candidates: set[str] = set()
            for key in keys:
                if key not in g:
                    continue
                for pred in g.predecessors(key):
                    if g.nodes[pred].get("type") == "incident":
                        candidates.add(pred[len("incident:"):])
                    elif g.nodes[pred].get("type") == "root_cause":  # service reached through a root cause
                        candidates.update(p[len("incident:"):] for p in g.predecessors(pred))
            candidates.discard(incident.id)
            scored = []
            for cid in candidates:
                other = self._incidents.get(cid)
                if other is None:
                    continue
                s = self.score(incident, other)
                if s > min_score:
                    scored.append((s, other.status == STATUS_RESOLVED, other.updated_ns, other))
            scored.sort(key=lambda x: (x[0], x[1], x[2]), reverse=True)
            return [(Incident.from_dict(o.to_dict()), round(s, 6)) for s, _, _, o in scored[:k]]

    def subgraph(self, incident_id: str, similar_k: int = 3) -> dict[str, Any] | None:
        """`{"nodes": [...], "edges": [...]}` around one incident: its services, templates, root cause
        (and where it is located), remediation steps (and what they fix), resolution notes, plus the
        `similar_k` most similar incidents linked by `similar_to` edges carrying the score."""
        with self._lock:
            g = self.graph
            node = f"incident:{incident_id}"
            if node not in g:
                return None
            keep = {node}
            for v in g.successors(node):
                keep.add(v)
                if g.nodes[v].get("type") in ("root_cause", "remediation"):
                    keep.update(g.successors(v))
            edges = [{"source": u, "target": v, "relation": d.get("relation", k)}
                     for u, v, k, d in g.edges(keep, keys=True, data=True) if v in keep]
            inc = self._incidents[incident_id]
            for other, score in self.similar(inc, k=similar_k):
                onode = f"incident:{other.id}"
                keep.add(onode)
                edges.append({"source": node, "target": onode, "relation": "similar_to", "score": score})
            nodes = [{"id": n, **g.nodes[n]} for n in sorted(keep)]
            return {"nodes": nodes, "edges": edges}
