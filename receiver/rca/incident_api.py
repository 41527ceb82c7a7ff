"""The JSON the HTTP API serves for incidents (pure functions over the tracker + store).

`IncidentApi(tracker)` has exactly the three callables `receiver.api.http.ApiSources` expects:
  * `list_incidents(status, limit) -> list[dict]`      GET  /api/v1/incidents?status=open&limit=100
  * `get_incident(id) -> dict | None`                  GET  /api/v1/incidents/{id}
  * `add_resolution(id, note, author) -> dict | None`  POST /api/v1/incidents/{id}/resolution
They block (database I/O): call them from an executor. Bad arguments raise ValueError (-> 400).
"""

from __future__ import annotations

from typing import Any

from receiver.rca.incident_model import STATUSES, Incident
from receiver.rca.incidents import IncidentTracker
from receiver.rca.memory import IncidentMemory, MemoryConfig

MAX_DETAIL_FINDINGS = 50


def similar_entry(inc: Incident, score: float) -> dict[str, Any]:
    return {
        "id": inc.id,
        "score": score,
        "status": inc.status,
        "opened_ns": inc.opened_ns,
        "services": list(inc.services),
        "root_cause_service": inc.root_cause_service,
        "root_cause_issue": inc.root_cause_issue,
        "remediation": list(inc.remediation),
        "resolution_notes": [n.get("note", "") for n in inc.resolution_notes],
    }


class IncidentApi:
    def __init__(self, tracker: IncidentTracker) -> None:
        self.tracker = tracker

    def list_incidents(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Incident summaries, most recently updated first (see `Incident.summary`)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        store = self.tracker.store
        if store is not None:
            incidents = store.list_incidents(status=status, limit=min(limit, 1000))
        else:
            incidents = [i for i in self.tracker.open_incidents() if status in (None, i.status)][:limit]
        return [i.summary() for i in incidents]

    def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        """The whole incident, its findings (newest first, at most 50), similar past incidents and its
        knowledge-graph neighbourhood (`graph`: {"nodes": [...], "edges": [...]})."""
        inc = self.tracker.incident(incident_id)
        if inc is None:
            return None
        out = inc.to_dict()
        findings: list[dict[str, Any]] = []
        store = self.tracker.store
        if store is not None and inc.finding_ids:
            got = store.get_findings(inc.finding_ids[-MAX_DETAIL_FINDINGS:])
            got.sort(key=lambda f: f.time_ns, reverse=True)
            findings = [f.to_dict() for f in got]
        out["findings"] = findings
        out["similar"] = [similar_entry(o, s) for o, s in self.tracker.similar(inc, k=3)]
        graph = self.tracker.memory.subgraph(inc.id)
        if graph is None:  # evicted from memory: draw it alone
            alone = IncidentMemory(MemoryConfig(max_incidents=1))
            alone.add(inc)
            graph = alone.subgraph(inc.id) or {"nodes": [], "edges": []}
        out["graph"] = graph
        return out

    def add_resolution(self, incident_id: str, note: str, author: str = "") -> dict[str, Any] | None:
        """Store the note and resolve the incident if open; `{"resolution": {...}, "incident": summary}`."""
        stored = self.tracker.add_resolution(incident_id, note, author=author or "")
        if stored is None:
            return None
        inc = self.tracker.incident(incident_id)
        return {"resolution": stored, "incident": inc.summary() if inc else None}
