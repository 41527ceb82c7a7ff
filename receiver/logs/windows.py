"""Event-time windows over log events, per service: tumbling windows and session windows.

Tumbling windows (default 60 s, `tumbling_s`) are aligned to the epoch in EVENT time (the record's
timestamp). Each service has its own watermark = (max event time seen) - `allowed_lateness_s`; a
window [start, end) closes when the watermark passes `end`. An event older than the start of the
oldest window that may still be open (i.e. its window already closed) is LATE: it is counted in
`log_window_late_events_total` and dropped (not folded into a later window, which would distort
that window's rate and severity mix).

When a service's next event jumps over empty tumbling slots, up to `max_empty_windows` empty windows
(count 0) are emitted for the gap so the detector can judge silence in replays; in live operation a
service that sends nothing for `idle_flush_s` of WALL-clock time gets its open windows closed
(idle flush, `tick()`), then one empty window per `tumbling_s` of wall time, up to
`max_empty_windows` per silence.

Session windows group the events of one key: the trace id (`session_key: trace_id`), or the
matches of `session_regex` in the body (`session_key: regex`, e.g. HDFS block ids `blk_-?\\d+`; a
line mentioning several keys joins each of their sessions, at most `max_keys_per_line`). A session
closes when the watermark passes its last event + `session_gap_s`, when it spans more than
`session_max_s` (the next event starts a new session), or on idle flush.

Bounds (each overflow counted in `log_window_evictions_total{reason}`): `max_services` (least
recently seen service: its windows are closed and emitted, then forgotten), open tumbling windows
per service (`max_open_windows`, oldest closed early), sessions per service and overall (oldest
closed early), exemplars, error trace ids, distinct templates per window (excess counted under id
-1), template sequence length.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.component import StageConfig, non_negative, positive, require

NS = 1_000_000_000
OTHER_TEMPLATE = -1  # template id under which lines beyond `max_templates_per_window` are counted


def severity_class(number: int, text: str = "") -> str:
    """OTLP severity number (or text when the number is 0) -> fatal|error|warn|info|debug|trace|unknown."""
    if number >= 21:
        return "fatal"
    if number >= 17:
        return "error"
    if number >= 13:
        return "warn"
    if number >= 9:
        return "info"
    if number >= 5:
        return "debug"
    if number >= 1:
        return "trace"
    t = text.strip().upper()
    for prefixes, cls in _TEXT_CLASSES:
        if t.startswith(prefixes):
            return cls
    return "unknown"


_TEXT_CLASSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("FATAL", "CRIT", "EMERG", "ALERT", "PANIC", "SEVERE", "FAILURE"), "fatal"),
    (("ERR",), "error"),
    (("WARN",), "warn"),
    (("INFO", "NOTICE"), "info"),
    (("DEBUG", "FINE", "CONFIG"), "debug"),
    (("TRACE", "FINEST", "VERBOSE"), "trace"),
)


ERROR_CLASSES = frozenset({"error", "fatal"})
_SEV_RANK = {"fatal": 0, "error": 1, "warn": 2, "unknown": 3, "info": 4, "debug": 5, "trace": 6}


@dataclass
class WindowsConfig(StageConfig):
    """Event-time windowing of log events (per service)."""

    tumbling: bool = True
    tumbling_s: float = 60.0  # window size; aligned to the epoch in event time
    allowed_lateness_s: float = 10.0  # watermark = max event time - this
    idle_flush_s: float = 30.0  # wall-clock silence after which a service's windows are closed
    max_empty_windows: int = 3  # empty windows emitted per silence / per event-time gap
    session_key: str = "trace_id"  # trace_id | regex | off
    session_regex: str = r"blk_-?\d+"
    session_gap_s: float = 30.0  # event-time inactivity that closes a session
    session_max_s: float = 3600.0  # a session longer than this is closed and a new one starts
    max_keys_per_line: int = 4
    max_services: int = 1000
    max_open_windows: int = 4  # open tumbling windows per service
    max_sessions_per_service: int = 5_000
    max_sessions_total: int = 20_000
    max_templates_per_window: int = 512
    max_exemplars: int = 5
    max_exemplar_chars: int = 512
    max_error_trace_ids: int = 20
    max_sequence: int = 256

    def validate(self) -> None:
        super().validate()
        for key in ("tumbling_s", "session_gap_s", "session_max_s", "idle_flush_s"):
            positive(getattr(self, key), f"windows.{key}")
        non_negative(self.allowed_lateness_s, "windows.allowed_lateness_s")
        for key in (
            "max_services",
            "max_open_windows",
            "max_sessions_per_service",
            "max_sessions_total",
            "max_templates_per_window",
            "max_keys_per_line",
            "max_exemplar_chars",
        ):
            v = getattr(self, key)
            require(isinstance(v, int), f"windows.{key}", f"must be an integer, got {v!r}")
            positive(v, f"windows.{key}")
        for key in ("max_empty_windows", "max_exemplars", "max_error_trace_ids", "max_sequence"):
            v = getattr(self, key)
            require(isinstance(v, int), f"windows.{key}", f"must be an integer, got {v!r}")
            non_negative(v, f"windows.{key}")
        require(
            self.session_key in ("trace_id", "regex", "off"),
            "windows.session_key",
            f"must be trace_id, regex or off, got {self.session_key!r}",
        )
        if self.session_key == "regex":
            try:
                re.compile(self.session_regex)
            except re.error as exc:
                require(False, "windows.session_regex", f"invalid regex: {exc}")


@dataclass
class Window:
    """A closed window of one service's log events (bodies already redacted)."""

    service: str
    kind: str  # tumbling | session
    key: str  # "" for tumbling; the trace id / regex match for sessions
    start_ns: int
    end_ns: int
    count: int = 0
    template_counts: dict[int, int] = field(default_factory=dict)
    templates: dict[int, str] = field(default_factory=dict)
    new_templates: list[int] = field(default_factory=list)  # created by the miner in this window
    severity_counts: dict[str, int] = field(default_factory=dict)  # fatal/error/warn/info/debug/...
    template_errors: dict[int, int] = field(default_factory=dict)  # error+fatal lines per template
    template_worst: dict[int, str] = field(default_factory=dict)  # worst severity class per template
    rate: float = 0.0  # lines per second over the window span
    exemplars: list[str] = field(default_factory=list)  # redacted lines, errors first
    exemplar_templates: list[int] = field(default_factory=list)  # template of each exemplar
    error_trace_ids: list[str] = field(default_factory=list)
    error_span_ids: list[str] = field(default_factory=list)  # aligned with error_trace_ids
    template_sequence: list[int] = field(default_factory=list)  # sessions: ordered template ids
    first_ns: int = 0  # first / last event time seen inside
    last_ns: int = 0
    closed_by: str = ""  # watermark | gap | max_length | idle | flush | cap | empty
    # sessions: what the key names, "trace_id" (one request: many keys show one problem) or "regex"
    # (an entity such as an HDFS block: each key is its own subject); "" for tumbling windows
    key_kind: str = ""

    @property
    def error_count(self) -> int:
        return self.severity_counts.get("error", 0) + self.severity_counts.get("fatal", 0)

    @property
    def warn_count(self) -> int:
        return self.severity_counts.get("warn", 0)


class _Open:
    """An open window under construction."""

    __slots__ = ("w", "ex_rank")

    def __init__(self, w: Window) -> None:
        self.w = w
        self.ex_rank: list[int] = []  # severity rank of each exemplar (lower = worse)


class _ServiceState:
    __slots__ = (
        "max_ns",
        "tumbling",
        "sessions",
        "last_wall",
        "last_closed_end",
        "empty_emitted",
        "last_empty_wall",
        "idle_closed",
        "gap_empties",
    )

    def __init__(self, now: float) -> None:
        self.max_ns = 0
        self.tumbling: dict[int, _Open] = {}  # window start -> open window
        self.sessions: OrderedDict[str, _Open] = OrderedDict()  # key -> open session (LRU by last event)
        self.last_wall = now
        self.last_closed_end = 0  # end of the latest closed tumbling window (late-data boundary)
        self.empty_emitted = 0
        self.last_empty_wall = 0.0
        self.idle_closed = False
        self.gap_empties = 0  # empty windows emitted for the current event-time gap


class WindowManager:
    """Assigns events to windows and returns the windows that closed. Thread-safe (one lock).

    `add(...)` returns the windows closed by the watermark advance; `tick()` applies the idle flush;
    `flush()` closes everything now.
    """

    def __init__(
        self,
        config: WindowsConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or WindowsConfig()
        self.config.validate()
        self._clock = clock
        self._lock = threading.Lock()
        self._services: OrderedDict[str, _ServiceState] = OrderedDict()
        self._n_sessions = 0
        self._n_tumbling = 0
        self._size_ns = int(self.config.tumbling_s * NS)
        self._late_ns = int(self.config.allowed_lateness_s * NS)
        self._gap_ns = int(self.config.session_gap_s * NS)
        self._max_session_ns = int(self.config.session_max_s * NS)
        self._regex = re.compile(self.config.session_regex) if self.config.session_key == "regex" else None
        registry = registry if registry is not None else CollectorRegistry()
        self.m_events = Counter("log_window_events", "Log events assigned to windows", registry=registry)
        self.m_late = Counter(
            "log_window_late_events", "Events dropped because their window had closed", registry=registry
        )
        self.m_closed = Counter("log_windows_closed", "Windows closed", ["kind", "reason"], registry=registry)
        self.m_evicted = Counter(
            "log_window_evictions",
            "Caps hit (windows closed early or data dropped)",
            ["reason"],
            registry=registry,
        )
        self.m_open = Gauge("log_windows_open", "Open windows", ["kind"], registry=registry)
        self.m_services = Gauge("log_window_services", "Services with window state", registry=registry)
        self.m_open.labels("tumbling").set_function(lambda: self._n_tumbling)
        self.m_open.labels("session").set_function(lambda: self._n_sessions)
        self.m_services.set_function(lambda: len(self._services))
        self._closed_children: dict[tuple[str, str], Any] = {}

    def _closed_inc(self, kind: str, reason: str) -> None:
        child = self._closed_children.get((kind, reason))
        if child is None:
            child = self._closed_children[(kind, reason)] = self.m_closed.labels(kind, reason)
        child.inc()

    # ---------------------------------------------------------------- public
    def add(
        self,
        service: str,
        time_ns: int,
        severity: str,
        body: str,
        template_id: int,
        template: str,
        is_new: bool,
        trace_id: str = "",
        span_id: str = "",
    ) -> list[Window]:
        closed: list[Window] = []
        cfg = self.config
        with self._lock:
            st = self._service(service, closed)
            now = self._clock()
            st.last_wall = now
            st.empty_emitted = 0
            st.idle_closed = False
            self.m_events.inc()
            if time_ns > st.max_ns:
                st.max_ns = time_ns
            watermark = st.max_ns - self._late_ns
            if cfg.tumbling:
                self._add_tumbling(
                    service,
                    st,
                    time_ns,
                    severity,
                    body,
                    template_id,
                    template,
                    is_new,
                    trace_id,
                    span_id,
                    closed,
                )
            keys = self._session_keys(trace_id, body)
            for key in keys:
                self._add_session(
                    service,
                    st,
                    key,
                    time_ns,
                    severity,
                    body,
                    template_id,
                    template,
                    is_new,
                    trace_id,
                    span_id,
                    closed,
                )
            self._advance(service, st, watermark, closed)
            self._gauges()
        return closed

    def tick(self, now: float | None = None) -> list[Window]:
        """Idle flush (wall clock): close the windows of services silent for `idle_flush_s`, then
        emit empty windows (at most one per `tumbling_s` of wall time, `max_empty_windows` per
        silence) so the detector can notice a chatty service going quiet."""
        closed: list[Window] = []
        cfg = self.config
        now = self._clock() if now is None else now
        with self._lock:
            for service, st in self._services.items():
                idle = now - st.last_wall
                if idle < cfg.idle_flush_s:
                    continue
                if not st.idle_closed:
                    self._close_all(service, st, "idle", closed)
                    st.idle_closed = True
                    st.last_empty_wall = now - cfg.tumbling_s  # first empty window right away
                if (
                    cfg.tumbling
                    and st.last_closed_end
                    and st.empty_emitted < cfg.max_empty_windows
                    and now - st.last_empty_wall >= cfg.tumbling_s
                ):
                    start = st.last_closed_end
                    closed.append(self._empty(service, start))
                    st.last_closed_end = start + self._size_ns
                    st.empty_emitted += 1
                    st.last_empty_wall = now
            self._gauges()
        return closed

    def flush(self) -> list[Window]:
        """Close every open window now (end of a replay, `POST /api/v1/flush`, shutdown)."""
        closed: list[Window] = []
        with self._lock:
            for service, st in self._services.items():
                self._close_all(service, st, "flush", closed)
            self._gauges()
        return closed

    def open_windows(self) -> int:
        with self._lock:
            return self._n_tumbling + self._n_sessions

    def services(self) -> list[str]:
        with self._lock:
            return list(self._services)

    # ---------------------------------------------------------------- internals
    def _service(self, service: str, closed: list[Window]) -> _ServiceState:
        st = self._services.get(service)
        if st is not None:
            self._services.move_to_end(service)
            return st
        if len(self._services) >= self.config.max_services:
            old_name, old = self._services.popitem(last=False)
            self._close_all(old_name, old, "cap", closed)
            self.m_evicted.labels("max_services").inc()
        st = _ServiceState(self._clock())
        self._services[service] = st
        return st

    def _session_keys(self, trace_id: str, body: str) -> list[str]:
        mode = self.config.session_key
        if mode == "trace_id":
            return [trace_id] if trace_id else []
        if mode == "regex" and self._regex is not None:
            keys: list[str] = []
            for m in self._regex.finditer(body):
                k = m.group(0)
                if k not in keys:
                    keys.append(k)
                    if len(keys) >= self.config.max_keys_per_line:
                        break
            return keys
        return []

    def _new_window(self, service: str, kind: str, key: str, start: int, end: int) -> _Open:
        key_kind = self.config.session_key if kind == "session" else ""
        return _Open(Window(service=service, kind=kind, key=key, start_ns=start, end_ns=end,
                            key_kind=key_kind))

    def _record(
        self,
        o: _Open,
        time_ns: int,
        severity: str,
        body: str,
        template_id: int,
        template: str,
        is_new: bool,
        trace_id: str,
        span_id: str,
        sequence: bool,
    ) -> None:
        cfg = self.config
        w = o.w
        w.count += 1
        if w.first_ns == 0 or time_ns < w.first_ns:
            w.first_ns = time_ns
        if time_ns > w.last_ns:
            w.last_ns = time_ns
        tid = template_id
        if tid not in w.template_counts and len(w.template_counts) >= cfg.max_templates_per_window:
            tid = OTHER_TEMPLATE
            self.m_evicted.labels("templates_per_window").inc()
        else:
            if tid not in w.templates:
                w.templates[tid] = template
            if is_new and tid not in w.new_templates:
                w.new_templates.append(tid)
        w.template_counts[tid] = w.template_counts.get(tid, 0) + 1
        w.severity_counts[severity] = w.severity_counts.get(severity, 0) + 1
        worst = w.template_worst.get(tid)
        if worst is None or _SEV_RANK.get(severity, 3) < _SEV_RANK.get(worst, 3):
            w.template_worst[tid] = severity
        is_error = severity in ERROR_CLASSES
        if is_error:
            w.template_errors[tid] = w.template_errors.get(tid, 0) + 1
            if (
                trace_id
                and len(w.error_trace_ids) < cfg.max_error_trace_ids
                and trace_id not in w.error_trace_ids
            ):
                w.error_trace_ids.append(trace_id)
                w.error_span_ids.append(span_id)
        if sequence and cfg.max_sequence:
            if len(w.template_sequence) < cfg.max_sequence:
                w.template_sequence.append(template_id)
            else:
                self.m_evicted.labels("sequence_length").inc()
        # exemplars: one per template preferred, worst severity first
        if cfg.max_exemplars:
            rank = _SEV_RANK.get(severity, 3)
            line = body if len(body) <= cfg.max_exemplar_chars else body[: cfg.max_exemplar_chars] + "..."
            if tid in w.exemplar_templates:
                i = w.exemplar_templates.index(tid)
                if rank < o.ex_rank[i]:
                    w.exemplars[i] = line
                    o.ex_rank[i] = rank
            elif len(w.exemplars) < cfg.max_exemplars:
                w.exemplars.append(line)
                w.exemplar_templates.append(tid)
                o.ex_rank.append(rank)
            else:
                worst_i = max(range(len(o.ex_rank)), key=o.ex_rank.__getitem__)
                if rank < o.ex_rank[worst_i]:
                    w.exemplars[worst_i] = line
                    w.exemplar_templates[worst_i] = tid
                    o.ex_rank[worst_i] = rank

    def _add_tumbling(
        self,
        service: str,
        st: _ServiceState,
        time_ns: int,
        severity: str,
        body: str,
        template_id: int,
        template: str,
        is_new: bool,
        trace_id: str,
        span_id: str,
        closed: list[Window],
    ) -> None:
        start = time_ns - time_ns % self._size_ns
        if start < st.last_closed_end:
            self.m_late.inc()
            return
        o = st.tumbling.get(start)
        if o is None:
            if len(st.tumbling) >= self.config.max_open_windows:
                oldest = min(st.tumbling)
                if start < oldest:  # would be the oldest open window of a full set: treat as late
                    self.m_late.inc()
                    self.m_evicted.labels("max_open_windows").inc()
                    return
                self._close_tumbling(service, st, oldest, "cap", closed)
                self.m_evicted.labels("max_open_windows").inc()
            o = self._new_window(service, "tumbling", "", start, start + self._size_ns)
            st.tumbling[start] = o
            self._n_tumbling += 1
        self._record(o, time_ns, severity, body, template_id, template, is_new, trace_id, span_id, False)

    def _add_session(
        self,
        service: str,
        st: _ServiceState,
        key: str,
        time_ns: int,
        severity: str,
        body: str,
        template_id: int,
        template: str,
        is_new: bool,
        trace_id: str,
        span_id: str,
        closed: list[Window],
    ) -> None:
        cfg = self.config
        o = st.sessions.get(key)
        if o is not None and time_ns - o.w.first_ns > self._max_session_ns:
            self._close_session(service, st, key, "max_length", closed)
            o = None
        if o is None:
            if len(st.sessions) >= cfg.max_sessions_per_service:
                old_key = next(iter(st.sessions))
                self._close_session(service, st, old_key, "cap", closed)
                self.m_evicted.labels("max_sessions_per_service").inc()
            if self._n_sessions >= cfg.max_sessions_total:
                self._evict_oldest_session(closed)
            o = self._new_window(service, "session", key, time_ns, time_ns)
            st.sessions[key] = o
            self._n_sessions += 1
        else:
            st.sessions.move_to_end(key)
        self._record(o, time_ns, severity, body, template_id, template, is_new, trace_id, span_id, True)

    def _evict_oldest_session(self, closed: list[Window]) -> None:
        best: tuple[int, str, str] | None = None
        for name, st in self._services.items():
            if st.sessions:
                key, o = next(iter(st.sessions.items()))
                if best is None or o.w.last_ns < best[0]:
                    best = (o.w.last_ns, name, key)
        if best is not None:
            _, name, key = best
            self._close_session(name, self._services[name], key, "cap", closed)
            self.m_evicted.labels("max_sessions_total").inc()

    def _advance(self, service: str, st: _ServiceState, watermark: int, closed: list[Window]) -> None:
        if st.tumbling:
            for start in sorted(st.tumbling):
                if start + self._size_ns <= watermark:
                    self._close_tumbling(service, st, start, "watermark", closed)
                else:
                    break
            self._fill_gap(service, st, watermark, closed)
        if st.sessions:
            # LRU order (least recently updated first): stop at the first session still active
            expired = []
            for k, o in st.sessions.items():
                if o.w.last_ns + self._gap_ns <= watermark:
                    expired.append(k)
                else:
                    break
            for k in expired:
                self._close_session(service, st, k, "gap", closed)

    def _fill_gap(self, service: str, st: _ServiceState, watermark: int, closed: list[Window]) -> None:
        """Tumbling slots between the last closed window and the oldest open one that the watermark
        has passed without any event: emit (at most `max_empty_windows` per gap of) empty windows."""
        start = st.last_closed_end
        if not start:
            return
        limit = min(st.tumbling) if st.tumbling else watermark
        size = self._size_ns
        while start + size <= watermark and start < limit:
            if st.gap_empties >= self.config.max_empty_windows:
                # cap reached: skip the remaining empty slots in one step (a huge gap costs O(1))
                last = min((watermark - size) - (watermark - size) % size, limit - size)
                if last >= start:
                    start = last + size
                break
            closed.append(self._empty(service, start))
            st.gap_empties += 1
            start += size
        st.last_closed_end = start

    def _empty(self, service: str, start: int) -> Window:
        self._closed_inc("tumbling", "empty")
        return Window(
            service=service,
            kind="tumbling",
            key="",
            start_ns=start,
            end_ns=start + self._size_ns,
            closed_by="empty",
        )

    def _close_tumbling(
        self, service: str, st: _ServiceState, start: int, reason: str, closed: list[Window]
    ) -> None:
        o = st.tumbling.pop(start)
        self._n_tumbling -= 1
        st.gap_empties = 0
        w = o.w
        w.rate = w.count / self.config.tumbling_s
        w.closed_by = reason
        if w.end_ns > st.last_closed_end:
            st.last_closed_end = w.end_ns
        self._closed_inc("tumbling", reason)
        closed.append(w)

    def _close_session(
        self, service: str, st: _ServiceState, key: str, reason: str, closed: list[Window]
    ) -> None:
        o = st.sessions.pop(key)
        self._n_sessions -= 1
        w = o.w
        w.start_ns = w.first_ns
        w.end_ns = w.last_ns
        span_s = max(1.0, (w.last_ns - w.first_ns) / NS)
        w.rate = w.count / span_s
        w.closed_by = reason
        self._closed_inc("session", reason)
        closed.append(w)

    def _close_all(self, service: str, st: _ServiceState, reason: str, closed: list[Window]) -> None:
        for start in sorted(st.tumbling):
            self._close_tumbling(service, st, start, reason, closed)
        for key in list(st.sessions):
            self._close_session(service, st, key, reason, closed)

    def _gauges(self) -> None:
        return None  # the gauges read the counters through set_function
