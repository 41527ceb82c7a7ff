"""The `Incident` record shared by the incident tracker, the knowledge graph and the store.

Kept in its own small module (no imports from other stages) so that `receiver.store` can load and
save incidents without importing the tracker.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATUS_OPEN = "open"
STATUS_RESOLVED = "resolved"
STATUSES = (STATUS_OPEN, STATUS_RESOLVED)

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def max_severity(a: str, b: str) -> str:
    """The worse of two severities; unknown strings rank below `low`."""
    return a if SEVERITY_RANK.get(a, -1) >= SEVERITY_RANK.get(b, -1) else b


@dataclass
class Incident:
    """One correlated burst of anomalies across connected services.

    Times are event times (unix nanos) taken from the findings (`anomaly.window.end` when present).
    `resolution_notes` items are `{"id", "incident_id", "time_ns", "author", "note"}` dicts; the store
    keeps them in their own table and fills this list when it loads an incident.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = STATUS_OPEN
    opened_ns: int = 0
    updated_ns: int = 0
    resolved_ns: int | None = None
    resolve_reason: str = ""  # quiet | manual | evicted | "" while open
    services: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    finding_ids: list[str] = field(default_factory=list)
    finding_count: int = 0
    anomaly_types: list[str] = field(default_factory=list)
    severity: str = "low"
    root_cause_service: str = ""
    root_cause_issue: str = ""
    candidates: list[str] = field(default_factory=list)
    propagation_path: list[str] = field(default_factory=list)
    rca_confidence: float | None = None
    rca_report_id: str = ""
    remediation: list[str] = field(default_factory=list)
    resolution_notes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incident:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        inc = cls(**kwargs)
        # defensive copies so a caller's dict never aliases the incident's lists
        for name in ("services", "templates", "finding_ids", "anomaly_types", "candidates",
                     "propagation_path", "remediation"):
            setattr(inc, name, [str(x) for x in (getattr(inc, name) or [])])
        inc.resolution_notes = [dict(n) for n in (inc.resolution_notes or [])]
        return inc

    def summary(self) -> dict[str, Any]:
        """The compact shape used in incident lists (no finding ids, no notes' text)."""
        return {
            "id": self.id,
            "status": self.status,
            "opened_ns": self.opened_ns,
            "updated_ns": self.updated_ns,
            "resolved_ns": self.resolved_ns,
            "resolve_reason": self.resolve_reason,
            "severity": self.severity,
            "services": list(self.services),
            "root_cause_service": self.root_cause_service,
            "root_cause_issue": self.root_cause_issue,
            "anomaly_types": list(self.anomaly_types),
            "finding_count": self.finding_count,
            "template_count": len(self.templates),
            "resolution_count": len(self.resolution_notes),
        }
