"""Findings -> OTLP protobuf (encoding only; transport lives in `exporter.py`).

Each finding becomes one LogRecord: `event_name` = finding.event_name, body = finding.body,
attributes = finding.attributes, time = finding.time_ns, trace/span id of the evidence span when
set. Severity comes from `anomaly.severity`:

    critical -> FATAL (21)   high -> ERROR (17)   medium -> WARN (13)   low -> INFO (9)
    absent/unknown -> INFO (9)

with `severity_text` = the original severity word ("" when absent). A finding tied to a trace
(valid trace_id and span_id) is also a Span in that trace: parent = the evidence span, name =
event name, kind INTERNAL, zero duration at the finding's time, carrying one span event with the
same name and the same attributes. Its span id is derived from the finding id, so a re-sent
finding (retry after a lost response, restart) yields the same span, not a second one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from receiver.model import A_SEVERITY, Finding

SCOPE_VERSION = "0.1.0"

SEVERITY_NUMBERS: dict[str, int] = {
    "critical": logs_pb2.SEVERITY_NUMBER_FATAL,
    "high": logs_pb2.SEVERITY_NUMBER_ERROR,
    "medium": logs_pb2.SEVERITY_NUMBER_WARN,
    "low": logs_pb2.SEVERITY_NUMBER_INFO,
}
DEFAULT_SEVERITY = logs_pb2.SEVERITY_NUMBER_INFO

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def severity_of(finding: Finding) -> tuple[int, str]:
    word = finding.attributes.get(A_SEVERITY)
    if not isinstance(word, str):
        return DEFAULT_SEVERITY, ""
    return SEVERITY_NUMBERS.get(word.lower(), DEFAULT_SEVERITY), word


def any_value(value: Any) -> AnyValue:
    """Python value -> AnyValue. str/bool/int/float map to their kinds, lists/tuples to ArrayValue
    (element-wise), dicts to KvlistValue, bytes to bytes; anything else (None, objects, ints beyond
    int64) to its string form, so a malformed attribute never breaks the export."""
    v = AnyValue()
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            v.int_value = value
        else:
            v.string_value = str(value)
    elif isinstance(value, float):
        v.double_value = value
    elif isinstance(value, str):
        v.string_value = value
    elif isinstance(value, (list, tuple)):
        v.array_value.SetInParent()
        v.array_value.values.extend(any_value(x) for x in value)
    elif isinstance(value, dict):
        v.kvlist_value.SetInParent()
        v.kvlist_value.values.extend(KeyValue(key=str(k), value=any_value(x)) for k, x in value.items())
    elif isinstance(value, bytes):
        v.bytes_value = value
    elif value is None:
        v.string_value = ""
    else:
        v.string_value = str(value)
    return v


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v)) for k, v in attributes.items()]


def _hex_id(text: str, nbytes: int) -> bytes:
    """Lowercase/uppercase hex of exactly nbytes, not all zero -> bytes; else b''."""
    if len(text) != 2 * nbytes:
        return b""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return b""
    return b"" if raw == bytes(nbytes) else raw


def trace_ids(finding: Finding) -> tuple[bytes, bytes]:
    """(trace_id, span_id) as bytes; each b'' when absent or malformed."""
    return _hex_id(finding.trace_id, 16), _hex_id(finding.span_id, 8)


def is_trace_tied(finding: Finding) -> bool:
    tid, sid = trace_ids(finding)
    return bool(tid and sid)


def finding_span_id(finding: Finding) -> bytes:
    digest = hashlib.sha256(f"finding-span:{finding.id}".encode()).digest()
    sid = digest[:8]
    return sid if sid != bytes(8) else b"\x00" * 7 + b"\x01"


def _resource_attrs(service_name: str) -> list[KeyValue]:
    return [KeyValue(key="service.name", value=AnyValue(string_value=service_name))]


def _scope(service_name: str) -> InstrumentationScope:
    return InstrumentationScope(name=service_name, version=SCOPE_VERSION)


def log_record(finding: Finding) -> logs_pb2.LogRecord:
    number, text = severity_of(finding)
    tid, sid = trace_ids(finding)
    rec = logs_pb2.LogRecord(
        time_unix_nano=max(0, int(finding.time_ns)),
        observed_time_unix_nano=max(0, int(finding.time_ns)),
        severity_number=number,
        severity_text=text,
        body=AnyValue(string_value=finding.body),
        attributes=key_values(finding.attributes),
        event_name=finding.event_name,
    )
    if tid:
        rec.trace_id = tid
        if sid:
            rec.span_id = sid
    return rec


def logs_request(findings: Iterable[Finding],
                 service_name: str = "llm-log-analyzer") -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(_resource_attrs(service_name))
    sl = rl.scope_logs.add()
    sl.scope.CopyFrom(_scope(service_name))
    sl.log_records.extend(log_record(f) for f in findings)
    return req


def finding_span(finding: Finding) -> trace_pb2.Span:
    tid, sid = trace_ids(finding)
    if not (tid and sid):
        raise ValueError(f"finding {finding.id} is not tied to a trace")
    t = max(0, int(finding.time_ns))
    attrs = key_values(finding.attributes)
    span = trace_pb2.Span(
        trace_id=tid,
        span_id=finding_span_id(finding),
        parent_span_id=sid,
        name=finding.event_name,
        kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=t,
        end_time_unix_nano=t,
    )
    span.events.add(time_unix_nano=t, name=finding.event_name, attributes=attrs)
    return span


def traces_request(findings: Iterable[Finding],
                   service_name: str = "llm-log-analyzer") -> ExportTraceServiceRequest:
    """Spans for the trace-tied findings among `findings` (others are skipped)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_resource_attrs(service_name))
    ss = rs.scope_spans.add()
    ss.scope.CopyFrom(_scope(service_name))
    ss.spans.extend(finding_span(f) for f in findings if is_trace_tied(f))
    return req


# --- queue payloads ------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_json_safe(x) for x in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(x) for x in value]
    return value


def dump_finding(finding: Finding) -> bytes:
    """Serialize for the on-disk queue (JSON; types of attribute values preserved)."""
    doc = {
        "event_name": finding.event_name,
        "attributes": _json_safe(dict(finding.attributes)),
        "body": finding.body,
        "time_ns": int(finding.time_ns),
        "id": finding.id,
        "trace_id": finding.trace_id,
        "span_id": finding.span_id,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_finding(data: bytes) -> Finding:
    doc = json.loads(data)
    return Finding(
        event_name=doc["event_name"],
        attributes=_from_json(doc["attributes"]),
        body=doc.get("body", ""),
        time_ns=int(doc["time_ns"]),
        id=doc["id"],
        trace_id=doc.get("trace_id", ""),
        span_id=doc.get("span_id", ""),
    )


__all__: Sequence[str] = (
    "SEVERITY_NUMBERS",
    "any_value",
    "dump_finding",
    "finding_span",
    "finding_span_id",
    "is_trace_tied",
    "load_finding",
    "log_record",
    "logs_request",
    "traces_request",
)
