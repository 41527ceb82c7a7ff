"""The span fields the receiver and the service graph need, read straight from OTLP wire bytes.

Two functions, each with a C implementation (`_spanwire.c`, used on the hot path) and a Python
reference over decoded protobuf objects (`*_reference`, the definition the C code is tested against
and the path for requests that exist only as objects):

* `check_spans(buf)` -> `(total, bad)`: the number of spans and the (resource, scope, span) index of
  each span whose ids we never accept: trace_id not 16 bytes or all zero, span_id not 8 bytes or all
  zero, parent_span_id neither empty nor 8 bytes.
* `graph_rows(buf, peer_keys, db_keys)` -> `(rows, total, skipped)`: one `GraphRow` tuple per SERVER,
  CLIENT, PRODUCER or CONSUMER span of a resource with a non-empty `service.name` (the first resource
  attribute of that key); `total` counts all spans, `skipped` those of resources without a name.

* `signal_rows(buf, peer_keys)` -> `(resources, total)`: every span, grouped by resource as
  `(service, version, [SignalRow, ...])`, with what the RCA span signals read (see `SignalRow`);
  service and version are read as for the graph (the first attribute of that key), "" if none.

Why C: through the protobuf Python API a field read costs 50-250 ns and the graph needs about eight
per span plus an attribute scan (2-3 us/span); walking the wire bytes costs tens of ns per span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver.otlp import _spanwire  # type: ignore[attr-defined]

WireError = _spanwire.WireError

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
_STATUS_ERROR = 2
_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


class GraphRow(NamedTuple):
    """What the C code returns as a plain tuple, field for field (named here for the reader)."""

    kind: int
    key: bytes  # trace_id + span_id
    parent_key: bytes  # trace_id + parent_span_id, b"" for a root span
    service: str
    latency_s: float  # max(0, (end - start) / 1e9)
    end_ns: int
    failed: bool  # status.code == ERROR
    is_db: bool  # CLIENT/PRODUCER: an attribute key is one of db_keys (else False)
    callee: str | None  # CLIENT/PRODUCER: first non-empty value of peer_keys, then (if is_db) db_keys,
    #                     else "unknown"; None for SERVER/CONSUMER
    links: tuple[bytes, ...] | None  # CONSUMER with links: trace_id + span_id of each link, else None


class SignalRow(NamedTuple):
    """What the C code returns as a plain tuple, field for field (named here for the reader)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    peer: str  # CLIENT/PRODUCER: the non-empty string value of the attribute whose key comes first in
    #            peer_keys (the later attribute on a tie), else ""
    messaging: bool  # CLIENT/PRODUCER: a non-empty string `messaging.system`
    attr_error: bool  # status UNSET: `error` = true, or an HTTP status code >= 500 (int or digits)
    exceptions: tuple[str, ...] | None  # status ERROR: the non-empty `exception.message` of each
    #                                     `exception` event (the last one per event), else None


def check_spans(buf: bytes | memoryview) -> tuple[int, list[tuple[int, int, int]]]:
    """Raises WireError (a ValueError) on bytes that are not a trace request's wire format."""
    return _spanwire.check_spans(buf)


def graph_rows(buf: bytes | memoryview, peer_keys: Sequence[str],
               db_keys: Sequence[str]) -> tuple[list[tuple], int, int]:
    """Raises WireError (a ValueError) on bytes that are not a trace request's wire format."""
    return _spanwire.graph_rows(buf, _encoded(peer_keys), _encoded(db_keys))


def signal_rows(buf: bytes | memoryview,
                peer_keys: Sequence[str]) -> tuple[list[tuple[str, str, list[tuple]]], int]:
    """Raises WireError (a ValueError) on bytes that are not a trace request's wire format."""
    return _spanwire.signal_rows(buf, _encoded(peer_keys))


def _encoded(keys: Sequence[str]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(k.encode() for k in keys))  # a repeated key keeps its first rank


# ------------------------------------------------------------------------------ Python reference
def span_id_problem(trace_id: bytes, span_id: bytes, parent: bytes) -> str | None:
    """Why a span's ids are never accepted (English, for partial_success), or None."""
    if len(trace_id) != 16:
        return f"trace_id is {len(trace_id)} bytes (want 16)"
    if trace_id == _ZERO16:
        return "trace_id is all zero"
    if len(span_id) != 8:
        return f"span_id is {len(span_id)} bytes (want 8)"
    if span_id == _ZERO8:
        return "span_id is all zero"
    if len(parent) not in (0, 8):
        return f"parent_span_id is {len(parent)} bytes (want 0 or 8)"
    return None


def check_spans_reference(req: ExportTraceServiceRequest) -> tuple[int, list[tuple[int, int, int]]]:
    total = 0
    bad: list[tuple[int, int, int]] = []
    for ri, rs in enumerate(req.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            spans = ss.spans
            total += len(spans)
            for pi, s in enumerate(spans):
                if span_id_problem(s.trace_id, s.span_id, s.parent_span_id) is not None:
                    bad.append((ri, si, pi))
    return total, bad


def graph_rows_reference(req: ExportTraceServiceRequest, peer_keys: Sequence[str],
                         db_keys: Sequence[str]) -> tuple[list[tuple], int, int]:
    rows: list[tuple] = []
    total = skipped = 0
    db_set = set(db_keys)
    for rs in req.resource_spans:
        svc = _first_str(rs.resource.attributes, "service.name")
        for ss in rs.scope_spans:
            total += len(ss.spans)
            if not svc:
                skipped += len(ss.spans)
                continue
            for s in ss.spans:
                kind = s.kind
                if kind not in (SERVER, CLIENT, PRODUCER, CONSUMER):
                    continue
                is_db = False
                callee: str | None = None
                if kind in (CLIENT, PRODUCER):
                    keys = [kv.key for kv in s.attributes]
                    is_db = not db_set.isdisjoint(keys)
                    callee = "unknown"
                    for k in [*peer_keys, *db_keys] if is_db else peer_keys:
                        if k in keys:
                            v = s.attributes[keys.index(k)].value.string_value
                            if v:
                                callee = v
                                break
                links = None
                if kind == CONSUMER and len(s.links):
                    links = tuple(ln.trace_id + ln.span_id for ln in s.links)
                start, end = s.start_time_unix_nano, s.end_time_unix_nano
                rows.append((kind, s.trace_id + s.span_id,
                             s.trace_id + s.parent_span_id if s.parent_span_id else b"", svc,
                             (end - start) / 1e9 if end > start else 0.0, end,
                             s.status.code == _STATUS_ERROR, is_db, callee, links))
    return rows, total, skipped


_ERROR_KEYS = ("http.status_code", "http.response.status_code")


def _first_str(attrs: Any, key: str) -> str:
    """The string value of the first attribute named `key` ("" if none, or not a string): how the
    Collector's pdata reads an attribute map."""
    for kv in attrs:
        if kv.key == key:
            return kv.value.string_value
    return ""


def _last_str(attrs: Any, key: str) -> str:
    out = ""
    for kv in attrs:
        if kv.key == key and kv.value.HasField("string_value") and kv.value.string_value:
            out = kv.value.string_value
    return out


def kv_marks_error(kv: Any) -> bool:
    """A failure mark of instrumentations that leave the status unset: `error` = true (Jaeger) or an
    HTTP status code >= 500 (an int, or a string of ASCII digits: client data never raises here)."""
    v = kv.value
    if kv.key == "error":
        return v.HasField("bool_value") and v.bool_value
    if kv.key not in _ERROR_KEYS:
        return False
    if v.HasField("int_value"):
        return v.int_value >= 500
    text = v.string_value if v.HasField("string_value") else ""
    return text.isascii() and text.isdigit() and int(text) >= 500


def signal_rows_reference(req: ExportTraceServiceRequest,
                          peer_keys: Sequence[str]) -> tuple[list[tuple[str, str, list[tuple]]], int]:
    rank = {k: i for i, k in enumerate(dict.fromkeys(peer_keys))}
    out: list[tuple[str, str, list[tuple]]] = []
    total = 0
    for rs in req.resource_spans:
        rows: list[tuple] = []
        for ss in rs.scope_spans:
            for s in ss.spans:
                total += 1
                kind, code = s.kind, s.status.code
                client = kind in (CLIENT, PRODUCER)
                peer, messaging, aerr, best = "", False, False, len(rank)
                for kv in s.attributes:
                    if client:
                        r = rank.get(kv.key)
                        if r is not None and r <= best and kv.value.string_value:
                            best, peer = r, kv.value.string_value
                        if kv.key == "messaging.system" and kv.value.string_value:
                            messaging = True
                    if code == 0 and not aerr:
                        aerr = kv_marks_error(kv)
                excs = None
                if code == _STATUS_ERROR:
                    msgs = (_last_str(ev.attributes, "exception.message") for ev in s.events
                            if ev.name == "exception")
                    excs = tuple(m for m in msgs if m)
                rows.append((s.trace_id, s.span_id, s.parent_span_id, kind, s.start_time_unix_nano,
                             s.end_time_unix_nano, code, s.status.message, peer, messaging, aerr, excs))
        out.append((_first_str(rs.resource.attributes, "service.name"),
                    _first_str(rs.resource.attributes, "service.version"), rows))
    return out, total
