"""Recorded RCA cases (the Nezha format of ../shared/datasets/rca) read and converted to OTLP requests.

Pure functions: CSV rows in, `ExportTraceServiceRequest` / `ExportLogsServiceRequest` out; the replay
(`receiver.eval.rca_replay`) sends them through the stages. The conversion, and what it cannot do:

* Service = pod name less its last two dash-separated parts; one OTLP resource per pod
  (`service.name`, `k8s.pod.name`).
* Spans carry no kind and no status in the data. A call between services is recorded as the callee's
  span whose parent is in another pod; that parent is the caller's outgoing call (`HTTP POST`,
  `hipstershop.X/Y`: its only children are in other pods). Instrumentation records such a call as the
  caller's CLIENT span and the callee's SERVER span, so: a span whose parent is in another service is
  a SERVER span; its parent becomes a CLIENT span when all of the parent's children are in other
  services; otherwise (the parent also has children in its own service, or is itself an entry span)
  a CLIENT span is synthesized
  under the parent with the callee's start and end (its client-server gap is then 0: unknown, not
  invented), and the callee is re-parented under it. Root spans are SERVER spans; every other span is
  INTERNAL (database statements too: their kind and `db.*` attributes are not in the data). No span
  gets an ERROR status (the data has none); failures show in the logs.
* Log lines: the message is the inner `log` string of the Docker JSON line; the severity is the level
  word at the start of the message (`receiver.logs.windows.severity_class` reads it) as severity text
  and the OTLP number of that class (a line without a level, e.g. a stack-trace continuation, is
  UNSPECIFIED); time from `TimeUnixNano`, or from `Timestamp` where `TimeUnixNano` is broken
  (negative); trace and span ids kept.
* Metric rows (per-pod CPU, memory, network, latency per minute) are NOT converted: the receiver does
  not accept OTLP metrics yet (a later issue). The Online Boutique cases therefore replay traces only.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from receiver.logs.windows import severity_class

K_SERVER, K_CLIENT, K_INTERNAL = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL
# OTLP severity numbers of each class (the first number of its range, as the data model defines them)
SEVERITY_NUMBER = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21, "unknown": 0}
_LEVEL = re.compile(r"\b(TRACE|DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|SEVERE|FATAL|CRITICAL)\b")


@dataclass(frozen=True)
class Case:
    case_id: str
    system: str  # the dataset folder's name
    fault_type: str
    root_cause: str  # service
    inject_ns: int
    trace_files: list[Path]
    log_files: list[Path]
    baseline_trace_files: list[Path]
    baseline_log_files: list[Path]


def service_of(pod: str) -> str:
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def load_cases(data: Path) -> list[Case]:
    """The cases of one dataset folder (with `labels/cases.json`) or of every such folder below it."""
    folders = [data] if (data / "labels" / "cases.json").is_file() else \
        sorted(p.parent.parent for p in data.glob("*/labels/cases.json"))
    if not folders:
        raise FileNotFoundError(f"{data}: no labels/cases.json here or one level below")
    out: list[Case] = []
    for folder in folders:
        meta = json.loads((folder / "labels" / "cases.json").read_text())
        for c in meta["cases"]:
            files, base = c["files"], c.get("baseline") or {}
            out.append(Case(
                case_id=c["case_id"], system=folder.name, fault_type=c["fault_type"],
                root_cause=c["root_cause_service"], inject_ns=int(c["inject_timestamp"]) * 10**9,
                trace_files=[folder / p for p in files["trace"]],
                log_files=[folder / p for p in files.get("log", [])],
                baseline_trace_files=[folder / p for p in base.get("trace", [])],
                baseline_log_files=[folder / p for p in base.get("log", [])]))
    return out


# --- rows ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class SpanRow:
    trace_id: bytes
    span_id: bytes
    parent_id: bytes  # b"" for a root
    pod: str
    service: str
    name: str
    start: int
    end: int
    kind: int = K_INTERNAL


@dataclass(slots=True)
class LogRow:
    time_ns: int
    pod: str
    service: str
    trace_id: bytes
    span_id: bytes
    body: str
    severity_text: str
    severity_number: int


def _rows(path: Path) -> Iterable[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        yield from csv.DictReader(f)


def _hex(s: str, n: int) -> bytes:
    try:
        b = bytes.fromhex(s)
    except ValueError:
        return b""
    return b if len(b) == n else b""


def read_spans(paths: Sequence[Path]) -> list[SpanRow]:
    out: list[SpanRow] = []
    for p in paths:
        for r in _rows(p):
            parent = r["ParentID"]
            out.append(SpanRow(_hex(r["TraceID"], 16), _hex(r["SpanID"], 8),
                               b"" if parent == "root" else _hex(parent, 8), r["PodName"],
                               service_of(r["PodName"]), r["OperationName"],
                               int(r["StartTimeUnixNano"]), int(r["EndTimeUnixNano"])))
    return out


def _rfc3339_ns(ts: str) -> int:
    # 2023-01-29T08:51:24.968139185Z: datetime keeps microseconds, the nanoseconds are added back
    head, _, frac = ts.rstrip("Z").partition(".")
    dt = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 10**9 + int((frac + "000000000")[:9])


def parse_level(message: str) -> tuple[str, int]:
    """(severity text, OTLP severity number) from the level word near the start of a message."""
    m = _LEVEL.search(message[:160])
    if not m:
        return "", 0
    word = m.group(1)
    return word, SEVERITY_NUMBER[severity_class(0, word)]


def read_logs(paths: Sequence[Path]) -> list[LogRow]:
    out: list[LogRow] = []
    for p in paths:
        for r in _rows(p):
            raw = r["Log"]
            try:
                msg = json.loads(raw).get("log", raw)
            except (ValueError, AttributeError):
                msg = raw
            msg = msg.rstrip("\n")
            t = int(r["TimeUnixNano"]) if r["TimeUnixNano"].lstrip("-").isdigit() else -1
            if t <= 0:
                t = _rfc3339_ns(r["Timestamp"])
            text, number = parse_level(msg)
            out.append(LogRow(t, r["PodName"], service_of(r["PodName"]), _hex(r["TraceID"], 16),
                              _hex(r["SpanID"], 8), msg, text, number))
    return out


# --- span kinds: the instrumentation's view -----------------------------------------------------
@dataclass
class ConversionStats:
    spans: int = 0
    server: int = 0
    client_marked: int = 0  # caller's outgoing-call spans given the CLIENT kind
    client_synthesized: int = 0  # CLIENT spans made for calls from a span with own-service children
    bad: int = 0  # spans with unreadable ids (skipped)
    logs: int = 0
    logs_without_level: int = 0
    notes: list[str] = field(default_factory=list)


def assign_kinds(spans: list[SpanRow], stats: ConversionStats | None = None) -> list[SpanRow]:
    """Kinds as instrumentation records a call (see the module docstring); returns the spans plus the
    synthesized CLIENT spans. Works per trace (spans of one trace may be in any order)."""
    st = stats if stats is not None else ConversionStats()
    by_id: dict[tuple[bytes, bytes], SpanRow] = {}
    kept: list[SpanRow] = []
    for s in spans:
        if not s.trace_id or not s.span_id:
            st.bad += 1
            continue
        by_id[(s.trace_id, s.span_id)] = s
        kept.append(s)
    own_kids: set[tuple[bytes, bytes]] = set()  # spans with a child in their own service
    for s in kept:
        p = by_id.get((s.trace_id, s.parent_id)) if s.parent_id else None
        if p is not None and p.service == s.service:
            own_kids.add((p.trace_id, p.span_id))
    # entries first (roots, spans called from another service, spans whose caller is missing) ...
    calls: list[tuple[SpanRow, SpanRow]] = []
    for s in kept:
        p = by_id.get((s.trace_id, s.parent_id)) if s.parent_id else None
        if p is None or p.service != s.service:
            s.kind = K_SERVER
            if p is not None:
                calls.append((p, s))
    # ... then the caller's side of each call between services
    extra: list[SpanRow] = []
    for p, s in calls:
        if p.kind == K_SERVER or (p.trace_id, p.span_id) in own_kids:
            cid = hashlib.blake2b(s.trace_id + s.span_id, digest_size=8).digest()
            extra.append(SpanRow(s.trace_id, cid, p.span_id, p.pod, p.service, s.name, s.start, s.end,
                                 K_CLIENT))
            s.parent_id = cid
            st.client_synthesized += 1
        elif p.kind != K_CLIENT:
            p.kind = K_CLIENT
            st.client_marked += 1
    st.spans += len(kept)
    st.server += sum(1 for s in kept if s.kind == K_SERVER)
    return kept + extra


# --- OTLP requests ------------------------------------------------------------------------------
def _resource(attrs, service: str, pod: str) -> None:  # noqa: ANN001 - a protobuf repeated field
    for k, v in (("service.name", service), ("k8s.pod.name", pod)):
        kv = attrs.add()
        kv.key, kv.value.string_value = k, v


def trace_request(spans: Iterable[SpanRow]) -> ExportTraceServiceRequest:
    """One request, one resource per pod."""
    req = ExportTraceServiceRequest()
    scopes: dict[str, object] = {}
    for s in spans:
        ss = scopes.get(s.pod)
        if ss is None:
            rs = req.resource_spans.add()
            _resource(rs.resource.attributes, s.service, s.pod)
            ss = scopes[s.pod] = rs.scope_spans.add()
        sp = ss.spans.add()  # type: ignore[attr-defined]
        sp.trace_id, sp.span_id, sp.parent_span_id = s.trace_id, s.span_id, s.parent_id
        sp.name, sp.kind = s.name, s.kind
        sp.start_time_unix_nano, sp.end_time_unix_nano = s.start, max(s.start, s.end)
    return req


def logs_request(logs: Iterable[LogRow]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    scopes: dict[str, object] = {}
    for r in logs:
        sl = scopes.get(r.pod)
        if sl is None:
            rl = req.resource_logs.add()
            _resource(rl.resource.attributes, r.service, r.pod)
            sl = scopes[r.pod] = rl.scope_logs.add()
        lr = sl.log_records.add()  # type: ignore[attr-defined]
        lr.time_unix_nano = lr.observed_time_unix_nano = r.time_ns
        lr.severity_number, lr.severity_text = r.severity_number, r.severity_text
        lr.body.string_value = r.body
        if r.trace_id:
            lr.trace_id = r.trace_id
        if r.span_id:
            lr.span_id = r.span_id
    return req
