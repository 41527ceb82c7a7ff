"""Data shared between stages.

Traces and logs travel between stages as the OTLP protobuf messages themselves (like the
Collector's pdata): `ExportTraceServiceRequest` / `ExportLogsServiceRequest`. What the stages
produce travels as the plain dataclasses below.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

# --- the external finding contract (architecture.md) --------------------------------------
EVENT_ANOMALY = "anomaly.detected"
EVENT_RCA = "rca.report"

A_SERVICE = "anomaly.service"
A_SEVERITY = "anomaly.severity"  # critical|high|medium|low
A_TYPE = "anomaly.type"
A_CONFIDENCE = "anomaly.confidence"  # double
A_DETECTOR = "anomaly.detector"
A_WINDOW_START = "anomaly.window.start"  # unix nanos
A_WINDOW_END = "anomaly.window.end"  # unix nanos
A_EVIDENCE = "anomaly.evidence"  # string array

R_ROOT_CAUSE = "rca.root_cause_service"
R_CANDIDATES = "rca.candidates"  # ranked, best first
R_PATH = "rca.propagation_path"  # root cause first
R_CONFIDENCE = "rca.confidence"
R_EVIDENCE = "rca.evidence"

SEVERITIES = ("critical", "high", "medium", "low")

AttrValue = str | bool | int | float | list[str]


@dataclass(slots=True)
class LogEvent:
    """One log record, flattened for the log stages. `body` is already redacted when it leaves
    `receiver.logs.redact`."""

    service: str
    time_ns: int  # event time: time_unix_nano, else observed_time_unix_nano, else receive time
    severity_number: int = 0
    severity_text: str = ""
    body: str = ""
    trace_id: str = ""  # lowercase hex, "" when absent
    span_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Finding:
    """An anomaly or an RCA report. `attributes` use the keys above (plus `llm.*` etc.)."""

    event_name: str
    attributes: dict[str, AttrValue]
    body: str = ""  # human-readable explanation
    time_ns: int = field(default_factory=time.time_ns)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    trace_id: str = ""  # hex; set when the finding is tied to a trace (evidence span)
    span_id: str = ""  # hex; the evidence span, parent of the finding span

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `GET /api/v1/findings`: the attributes plus bookkeeping keys."""
        d: dict[str, Any] = dict(self.attributes)
        d.update(
            event_name=self.event_name,
            id=self.id,
            time_unix_nano=self.time_ns,
            body=self.body,
            trace_id=self.trace_id,
            span_id=self.span_id,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        d = dict(d)
        meta = {k: d.pop(k) for k in ("event_name", "id", "time_unix_nano", "body", "trace_id", "span_id")
                if k in d}
        return cls(
            event_name=meta["event_name"],
            attributes=d,
            body=meta.get("body", ""),
            time_ns=int(meta.get("time_unix_nano", time.time_ns())),
            id=meta.get("id") or uuid.uuid4().hex,
            trace_id=meta.get("trace_id", ""),
            span_id=meta.get("span_id", ""),
        )


# --- the narrow interfaces between stages ------------------------------------------------
class TracesConsumer(Protocol):
    def consume_traces(self, request: ExportTraceServiceRequest) -> None: ...


class LogsConsumer(Protocol):
    def consume_logs(self, request: ExportLogsServiceRequest) -> None: ...


class FindingsConsumer(Protocol):
    def consume_findings(self, findings: Sequence[Finding]) -> None: ...


class FindingsFanout:
    """Hands each batch of findings to every consumer in order (store, exporter, api stream)."""

    def __init__(self, consumers: Sequence[FindingsConsumer]) -> None:
        self._consumers = list(consumers)

    def add(self, consumer: FindingsConsumer) -> None:
        self._consumers.append(consumer)

    def consume_findings(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        for c in self._consumers:
            c.consume_findings(findings)


class FindingsSink:
    """In-memory findings consumer for tests and for the API's recent list."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def consume_findings(self, findings: Sequence[Finding]) -> None:
        self.findings.extend(findings)


__all__ = [
    "ExportLogsServiceRequest",
    "ExportTraceServiceRequest",
]
