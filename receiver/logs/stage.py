"""The logs stage: OTLP log records -> redact -> mine templates -> event-time windows.

`LogsStage.consume_logs(ExportLogsServiceRequest)` flattens every record into a `LogEvent`
(service = resource attribute `service.name`, event time = `time_unix_nano`, else
`observed_time_unix_nano`, else the receive time; severity number/text, inferred from a leading
level word of the body when both are unset; body rendered as a string; trace/span ids in hex),
redacts the body, matches it against the service's templates and adds it to the windows; one request
is one delivery for the windows' watermark (records of equal event time keep the order of their
observed time). Windows that close (watermark, gap, caps) go to
`windows_consumer.consume_windows(list[Window])` in close order.

Lifecycle: `start()` runs a small thread that applies the idle flush every `tick_s` seconds;
`flush()` closes every open window now and hands them on; `shutdown()` stops the thread and
flushes. `save_state(dir)` / `load_state(dir)` persist the templates (`templates.json`) and, when
the windows consumer can (`save`/`load`, e.g. `Tier0Detector`), its baselines (`tier0.json`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry, Counter

from receiver.component import StageConfig, positive
from receiver.logs.redact import RedactConfig, Redactor
from receiver.logs.templates import TemplateMiner, TemplatesConfig
from receiver.logs.windows import Record, Window, WindowManager, WindowsConfig, severity_class
from receiver.model import LogEvent

TEMPLATES_FILE = "templates.json"
DETECTOR_FILE = "tier0.json"
UNKNOWN_SERVICE = "unknown_service"

_LEVEL_RE = re.compile(
    r"\b(FATAL|CRITICAL|CRIT|SEVERE|EMERG|ALERT|PANIC|ERROR|ERR|WARNING|WARN|NOTICE|INFO|DEBUG|TRACE)\b"
)


class WindowsConsumer(Protocol):
    def consume_windows(self, windows: Sequence[Window]) -> Any: ...


@dataclass
class LogsConfig(StageConfig):
    """`logs:` section: redaction, template mining, windows."""

    redact: RedactConfig = field(default_factory=RedactConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    tick_s: float = 1.0  # how often the idle flush is checked (wall clock)
    infer_severity: bool = True  # take a leading level word of the body when severity is unset
    max_body_chars: int = 16384  # bodies are cut here before anything else
    max_future_s: float = 3600.0  # event times further ahead of the wall clock are replaced

    def validate(self) -> None:
        super().validate()
        positive(self.tick_s, "logs.tick_s")
        positive(self.max_body_chars, "logs.max_body_chars")
        positive(self.max_future_s, "logs.max_future_s")


def render_any_value(v: AnyValue, depth: int = 0) -> str:
    """AnyValue -> compact string: strings as is, scalars by str(), kvlists/arrays as compact JSON."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which is None:
        return ""
    return json.dumps(_any_to_py(v, depth), separators=(",", ":"), ensure_ascii=False, default=str)


def _any_to_py(v: AnyValue, depth: int) -> Any:
    which = v.WhichOneof("value")
    if depth > 8:
        return "..."
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return v.bool_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "array_value":
        return [_any_to_py(x, depth + 1) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_to_py(kv.value, depth + 1) for kv in v.kvlist_value.values}
    return None


class LogsStage:
    """OTLP logs in, closed windows out."""

    def __init__(
        self,
        config: LogsConfig | None,
        windows_consumer: WindowsConsumer | None,
        registry: CollectorRegistry | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.config = config or LogsConfig()
        self.config.validate()
        registry = registry if registry is not None else CollectorRegistry()
        self._next = windows_consumer
        self.redactor = Redactor(self.config.redact, registry)
        self.miner = TemplateMiner(self.config.templates, registry)
        self.windows = WindowManager(self.config.windows, registry, clock=clock)
        self.m_records = Counter(
            "logs_stage_records", "Log records processed by the logs stage", registry=registry
        )
        self.m_windows = Counter(
            "logs_stage_windows", "Closed windows handed to the detector", ["kind"], registry=registry
        )
        self.m_future = Counter(
            "logs_stage_future_timestamps",
            "Records whose event time was too far in the future (observed or receive time used instead)",
            registry=registry,
        )
        self.m_errors = Counter(
            "logs_stage_record_errors", "Log records that could not be processed", registry=registry
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._emit_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._ticker, name="logs-idle-flush", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        t = self._thread
        if t is not None:
            self._stop.set()
            t.join(timeout=5)
            self._thread = None
        self.flush()

    def _ticker(self) -> None:
        while not self._stop.wait(self.config.tick_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the idle flush must survive a bad consumer
                self.m_errors.inc()

    # ------------------------------------------------------------------ data
    def events(self, req: ExportLogsServiceRequest) -> list[LogEvent]:
        """Flatten a request into LogEvents (bodies NOT yet redacted)."""
        return [ev for ev, _ in self._events(req)]

    def _events(self, req: ExportLogsServiceRequest) -> list[tuple[LogEvent, int]]:
        """(event, observed time or 0) for every record of a request."""
        out: list[tuple[LogEvent, int]] = []
        now = time.time_ns()
        cut = self.config.max_body_chars
        horizon = now + int(self.config.max_future_s * 1e9)
        for rl in req.resource_logs:
            service = UNKNOWN_SERVICE
            for kv in rl.resource.attributes:
                if kv.key == "service.name" and kv.value.WhichOneof("value") == "string_value":
                    service = kv.value.string_value or UNKNOWN_SERVICE
                    break
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    body = render_any_value(r.body)
                    if len(body) > cut:
                        body = body[:cut]
                    t = r.time_unix_nano or r.observed_time_unix_nano or now
                    if t > horizon:  # a clock far ahead would push the watermark past all real data
                        self.m_future.inc()
                        t = r.observed_time_unix_nano if 0 < r.observed_time_unix_nano <= horizon else now
                    out.append((
                        LogEvent(
                            service=service,
                            time_ns=int(t),
                            severity_number=int(r.severity_number),
                            severity_text=r.severity_text,
                            body=body,
                            trace_id=r.trace_id.hex() if len(r.trace_id) == 16 and any(r.trace_id) else "",
                            span_id=r.span_id.hex() if len(r.span_id) == 8 and any(r.span_id) else "",
                        ),
                        int(r.observed_time_unix_nano),
                    ))
        return out

    def consume_logs(self, req: ExportLogsServiceRequest) -> None:
        records: list[Record] = []
        for ev, observed in self._events(req):
            try:
                records.append(self._record(ev, observed))
            except Exception:  # noqa: BLE001 - one bad record never stops the batch
                self.m_errors.inc()
        self._emit(self.windows.add_delivery(records))

    def consume_event(self, ev: LogEvent) -> list[Window]:
        """Redact, mine and window one event (a delivery of its own); returns the windows it closed
        (not yet emitted)."""
        return self.windows.add_delivery([self._record(ev, 0)])

    def _record(self, ev: LogEvent, observed_ns: int) -> Record:
        """Redact and mine one event: what the windows take."""
        self.m_records.inc()
        body, _ = self.redactor.redact(ev.body)
        ev.body = body
        sev = severity_class(ev.severity_number, ev.severity_text)
        if sev == "unknown" and self.config.infer_severity:
            m = _LEVEL_RE.search(body, 0, 96)
            if m:
                sev = severity_class(0, m.group(1))
        match = self.miner.match(ev.service, body)
        return Record(ev.service, ev.time_ns, sev, body, match.template_id, match.template, match.is_new,
                      ev.trace_id, ev.span_id, observed_ns)

    def tick(self, now: float | None = None) -> list[Window]:
        """Apply the idle flush now (the start() thread calls this every tick_s)."""
        closed = self.windows.tick(now)
        self._emit(closed)
        return closed

    def flush(self) -> list[Window]:
        """Close every open window now and hand them to the windows consumer."""
        closed = self.windows.flush()
        self._emit(closed)
        flush_next = getattr(self._next, "flush", None)  # the detector reports its pending collapses
        if callable(flush_next):
            with self._emit_lock:
                flush_next()
        return closed

    def _emit(self, closed: list[Window]) -> None:
        if not closed:
            return
        closed.sort(key=self.windows.close_order)
        n_session = sum(1 for w in closed if w.kind == "session")
        if n_session:
            self.m_windows.labels("session").inc(n_session)
        if len(closed) > n_session:
            self.m_windows.labels("tumbling").inc(len(closed) - n_session)
        if self._next is not None:
            with self._emit_lock:  # keep windows in order when the ticker and ingest both emit
                self._next.consume_windows(closed)

    # ------------------------------------------------------------------ state
    def save_state(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.miner.save(os.path.join(directory, TEMPLATES_FILE))
        save = getattr(self._next, "save", None)
        if callable(save):
            save(os.path.join(directory, DETECTOR_FILE))

    def load_state(self, directory: str) -> dict[str, int]:
        """Restore what `save_state` wrote; missing files are skipped. Returns what was loaded."""
        loaded: dict[str, int] = {}
        path = os.path.join(directory, TEMPLATES_FILE)
        if os.path.exists(path):
            loaded["templates"] = int(self.miner.load(path) or 0)
        path = os.path.join(directory, DETECTOR_FILE)
        load = getattr(self._next, "load", None)
        if callable(load) and os.path.exists(path):
            loaded["detector_services"] = int(load(path) or 0)
        return loaded
