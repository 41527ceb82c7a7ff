"""Event-time windows over log events, per service: tumbling windows and session windows.

Tumbling windows (default 60 s, `tumbling_s`) are aligned to the epoch in EVENT time (the record's
timestamp); session windows group the events of one key: the trace id (`session_key: trace_id`), or
the matches of `session_regex` in the body (`session_key: regex`: an id your logs carry, such as a
VM instance id or a job id; a
line mentioning several keys joins each of their sessions, at most `max_keys_per_line`). Events of a
key no more than `session_gap_s` apart (in event time) are one session, up to `session_max_s` from
its first event (a later event starts the next session).

Watermark. Senders deliver out of order: a Collector runs several requests at once (its
`sending_queue.num_consumers`, 10 by default) and retries failed ones, so a request with older
records often arrives after newer ones. Each service keeps its event-time progress: the highest
event time that `max_in_flight` deliveries have reached (the `max_in_flight`-th largest delivery
maximum), so one request far ahead of the rest (a concurrent sender that got there first) does not
move it; a request's maximum also counts once `in_flight_s` of wall time have passed since it
arrived (the requests sent with it are in by then), so a service that sends rarely is not held back.
The watermark is progress - `allowed_lateness_s`. A tumbling window [start, end) closes when
the watermark passes `end`; a session when it passes its last event + `session_gap_s` or its first
event + `session_max_s`.
Until then a record is merged into its window whatever order it arrives in, and what a window holds
does not depend on the arrival order: lists are kept by event time (the template sequence by event
time, then observed time, then arrival; exemplars by severity, then event time; error trace ids by
event time), and a late record that bridges two sessions of a key merges them (unless the merged
session would exceed `session_max_s`: where a key's lines arrive out of order around that limit,
the split point can differ from in-order delivery). `add()` is for a
caller that feeds one ordered stream (replays, eval): its progress is simply the highest event time.
Windows leave in the order the watermark closes them (`close_order`), so the detector sees the same
sequence whatever the delivery order.

An event older than the start of the oldest tumbling window that may still be open (its window has
closed) is LATE: counted in `log_window_late_events_total` and dropped (not folded into a later
window, which would distort that window's rate and severity mix). A late event of a session key
that fits no open session is kept as a session of its own, counted in
`log_window_late_session_events_total`.

Silence. When the watermark passes tumbling slots with no event, up to `max_empty_windows` empty
windows (count 0) are emitted per gap so the detector can judge silence in replays; in live operation
a service that sends nothing for `idle_flush_s` of WALL-clock time gets its open windows closed (idle
flush, `tick()`), then one empty window per `tumbling_s` of wall time, up to `max_empty_windows`
per silence.

Bounds (each overflow counted in `log_window_evictions_total{reason}`): `max_services` (least
recently seen service: its windows are closed and emitted, then forgotten), open tumbling windows
per service (`max_open_windows`, oldest closed early), sessions per service and overall (the one
due to close first is closed early), exemplars, error trace ids, distinct templates per window
(excess counted under id -1), template sequence length (the earliest kept).
"""

from __future__ import annotations

import heapq
import re
import threading
import time
from bisect import insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
    # watermark = progress - this. 300 s: the Collector's retry_on_failure gives up after
    # max_elapsed_time 300 s, so a batch it still delivers is at most that late.
    allowed_lateness_s: float = 300.0
    # deliveries that must reach an event time before it counts as progress: the requests a sender
    # may have in flight at once (the Collector's sending_queue.num_consumers, default 10)
    max_in_flight: int = 10
    # ... or once this many wall seconds have passed since the request that reached it arrived (the
    # requests sent with it have arrived or timed out: the Collector's otlphttp timeout is 30 s), so
    # a service that sends a request every few minutes is not held back by max_in_flight of them
    in_flight_s: float = 30.0
    # wall-clock silence after which a service's windows are closed; as long as the allowed
    # lateness, so a batch the Collector is still retrying finds its window open
    idle_flush_s: float = 300.0
    max_empty_windows: int = 3  # empty windows emitted per silence / per event-time gap
    session_key: str = "trace_id"  # trace_id | regex | off
    session_regex: str = ""  # with session_key: regex, the id to group by (no default: it is yours)
    session_gap_s: float = 30.0  # event-time inactivity that closes a session
    session_max_s: float = 3600.0  # a session longer than this is closed and a new one starts
    max_keys_per_line: int = 4
    max_services: int = 1000
    # open tumbling windows per service: live traffic needs allowed_lateness_s / tumbling_s + 2 (7
    # with the defaults); a fast replay also holds every slot with data in its last max_in_flight
    # requests, which can span hours of event time
    max_open_windows: int = 128
    max_sessions_per_service: int = 5_000
    max_sessions_total: int = 20_000
    max_templates_per_window: int = 512
    max_exemplars: int = 5
    max_exemplar_chars: int = 512
    max_error_trace_ids: int = 20
    max_sequence: int = 256

    def validate(self) -> None:
        super().validate()
        for key in ("tumbling_s", "session_gap_s", "session_max_s", "idle_flush_s", "in_flight_s"):
            positive(getattr(self, key), f"windows.{key}")
        non_negative(self.allowed_lateness_s, "windows.allowed_lateness_s")
        for key in (
            "max_in_flight",
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
            require(bool(self.session_regex), "windows.session_regex",
                    "session_key: regex needs the regex of the id to group by (e.g. an instance id)")
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
    # (an entity such as a storage block or a VM: each key is its own subject); "" for tumbling windows
    key_kind: str = ""

    @property
    def error_count(self) -> int:
        return self.severity_counts.get("error", 0) + self.severity_counts.get("fatal", 0)

    @property
    def warn_count(self) -> int:
        return self.severity_counts.get("warn", 0)


class Record(NamedTuple):
    """One log event for the windows (body already redacted)."""

    service: str
    time_ns: int
    severity: str
    body: str
    template_id: int
    template: str
    is_new: bool
    trace_id: str = ""
    span_id: str = ""
    order_ns: int = 0  # orders events of equal event time (the observed time); 0 when unknown


def _keep_best(entries: list[Any], entry: tuple[Any, ...], group: int, cap: int) -> bool:
    """Keep at most `cap` entries, at most one per group (`entry[group]`): each group's smallest
    entry, for the `cap` groups whose smallest entries are smallest. The result does not depend on
    the order entries arrive in. Returns False when the entry was not kept."""
    g = entry[group]
    for i, e in enumerate(entries):
        if e[group] == g:
            if entry < e:
                entries[i] = entry
            return True
    if len(entries) < cap:
        entries.append(entry)
        return True
    if not entries:
        return False
    worst = max(range(len(entries)), key=entries.__getitem__)
    if entry < entries[worst]:
        entries[worst] = entry
        return True
    return False


class _Open:
    """An open window under construction. The parts that would depend on arrival order are kept
    with their event times and written into the Window when it closes (`_finish`)."""

    __slots__ = ("w", "ex", "seq", "traces", "closed")

    def __init__(self, w: Window) -> None:
        self.w = w
        self.ex: list[tuple[int, int, str, int]] = []  # (severity rank, time, line, template)
        self.seq: list[tuple[int, int, int, int]] = []  # (time, order, arrival, template), sorted
        self.traces: list[tuple[int, str, str]] = []  # (time, trace id, span id) of error lines
        self.closed = False


class _ServiceState:
    __slots__ = (
        "progress",
        "top",
        "pending",
        "tumbling",
        "sessions",
        "n_sessions",
        "heap",
        "last_wall",
        "last_closed_end",
        "empty_emitted",
        "last_empty_wall",
        "idle_closed",
        "gap_empties",
    )

    def __init__(self, now: float) -> None:
        self.progress = 0  # event time the watermark is measured from (see the module docstring)
        self.top: list[int] = []  # min-heap: the `max_in_flight` largest delivery maxima
        self.pending: deque[tuple[float, int]] = deque()  # (arrival wall time, delivery maximum)
        self.tumbling: dict[int, _Open] = {}  # window start -> open window
        self.sessions: dict[str, list[_Open]] = {}  # key -> its open sessions (usually one)
        self.n_sessions = 0
        self.heap: list[tuple[int, int, str, _Open]] = []  # (last event, tie, key, session), lazy
        self.last_wall = now
        self.last_closed_end = 0  # end of the latest closed tumbling window (late-data boundary)
        self.empty_emitted = 0
        self.last_empty_wall = 0.0
        self.idle_closed = False
        self.gap_empties = 0  # empty windows emitted for the current event-time gap


class WindowManager:
    """Assigns events to windows and returns the windows that closed, in close order. Thread-safe
    (one lock).

    `add_delivery(records)` takes one delivery (an OTLP request) and `add(...)` one event of an
    ordered stream; both return the windows the watermark closed. `tick()` applies the idle flush;
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
        self._arrival = 0  # records seen: the last tie-break of the template sequence
        self._tie = 0  # heap tie-breaker
        self._size_ns = int(self.config.tumbling_s * NS)
        self._late_ns = int(self.config.allowed_lateness_s * NS)
        self._gap_ns = int(self.config.session_gap_s * NS)
        self._max_session_ns = int(self.config.session_max_s * NS)
        self._regex = re.compile(self.config.session_regex) if self.config.session_key == "regex" else None
        registry = registry if registry is not None else CollectorRegistry()
        self.m_events = Counter("log_window_events", "Log events assigned to windows", registry=registry)
        self.m_late = Counter(
            "log_window_late_events",
            "Events dropped because their window had closed (behind the watermark)",
            registry=registry,
        )
        self.m_closed = Counter("log_windows_closed", "Windows closed", ["kind", "reason"], registry=registry)
        self.m_evicted = Counter(
            "log_window_evictions",
            "Caps hit (windows closed early or data dropped)",
            ["reason"],
            registry=registry,
        )
        self.m_late_sessions = Counter(
            "log_window_late_session_events",
            "Events behind the watermark that started a session of their own (kept, not merged)",
            registry=registry,
        )
        self.m_merged = Counter(
            "log_window_sessions_merged",
            "Sessions of one key joined by an out-of-order event that falls between them",
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
    def close_order(self, w: Window) -> tuple[int, str, str, str, int]:
        """Sort key of closed windows: the watermark at which each closes (a tumbling window's end,
        a session's last event + gap), then names. Windows handed on in this order reach the
        detector in the same sequence whatever order their records arrived in."""
        due = self._due(w) if w.kind == "session" else w.end_ns
        return (due, w.service, w.kind, w.key, w.start_ns)

    def add_delivery(self, records: Iterable[Record]) -> list[Window]:
        """One delivery (an OTLP request): assign its records, then advance each service's progress
        to the `max_in_flight`-th largest delivery maximum seen (or the largest that arrived
        `in_flight_s` ago) and close what the watermark passed."""
        closed: list[Window] = []
        k = self.config.max_in_flight
        with self._lock:
            now = self._clock()
            maxima: dict[str, int] = {}
            for r in records:
                self._put(r, closed)
                if r.time_ns > maxima.get(r.service, -1):
                    maxima[r.service] = r.time_ns
            for service, m in maxima.items():
                st = self._services.get(service)
                if st is None:  # evicted by max_services within this delivery
                    continue
                if len(st.top) < k:
                    heapq.heappush(st.top, m)
                elif m > st.top[0]:
                    heapq.heapreplace(st.top, m)
                if len(st.top) >= k and st.top[0] > st.progress:
                    st.progress = st.top[0]
                if m > st.progress:
                    st.pending.append((now, m))
                self._confirm(st, now)
                self._advance(service, st, st.progress - self._late_ns, closed)
        closed.sort(key=self.close_order)
        return closed

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
        order_ns: int = 0,
    ) -> list[Window]:
        """One event of an ordered stream (a replay, an evaluation): progress is the highest event
        time seen, out-of-order events within the allowed lateness are still merged."""
        rec = Record(service, time_ns, severity, body, template_id, template, is_new, trace_id, span_id,
                     order_ns)
        closed: list[Window] = []
        with self._lock:
            st = self._put(rec, closed)
            if time_ns > st.progress:
                st.progress = time_ns
            self._advance(service, st, st.progress - self._late_ns, closed)
        closed.sort(key=self.close_order)
        return closed

    def tick(self, now: float | None = None) -> list[Window]:
        """Wall-clock work: count as progress the requests that arrived `in_flight_s` ago and close
        what that passes; idle flush: close the windows of services silent for `idle_flush_s`, then
        emit empty windows (at most one per `tumbling_s` of wall time, `max_empty_windows` per
        silence) so the detector can notice a chatty service going quiet."""
        closed: list[Window] = []
        cfg = self.config
        now = self._clock() if now is None else now
        with self._lock:
            for service, st in self._services.items():
                if st.pending and self._confirm(st, now):
                    self._advance(service, st, st.progress - self._late_ns, closed)
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
        closed.sort(key=self.close_order)
        return closed

    def flush(self) -> list[Window]:
        """Close every open window now (end of a replay, `POST /api/v1/flush`, shutdown)."""
        closed: list[Window] = []
        with self._lock:
            for service, st in self._services.items():
                self._close_all(service, st, "flush", closed)
        closed.sort(key=self.close_order)
        return closed

    def open_windows(self) -> int:
        with self._lock:
            return self._n_tumbling + self._n_sessions

    def services(self) -> list[str]:
        with self._lock:
            return list(self._services)

    # ---------------------------------------------------------------- internals
    def _confirm(self, st: _ServiceState, now: float) -> bool:
        """Progress to the largest delivery maximum that arrived `in_flight_s` ago or earlier."""
        moved = False
        limit = now - self.config.in_flight_s
        while st.pending and st.pending[0][0] <= limit:
            m = st.pending.popleft()[1]
            if m > st.progress:
                st.progress = m
                moved = True
        return moved

    def _put(self, r: Record, closed: list[Window]) -> _ServiceState:
        st = self._service(r.service, closed)
        st.last_wall = self._clock()
        st.empty_emitted = 0
        st.idle_closed = False
        self._arrival += 1
        self.m_events.inc()
        if self.config.tumbling:
            self._add_tumbling(r.service, st, r, closed)
        for key in self._session_keys(r.trace_id, r.body):
            self._add_session(r.service, st, key, r, closed)
        return st

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

    def _slot(self, w: Window, template_id: int) -> int:
        """The template id a line is counted under in `w` (OTHER_TEMPLATE beyond the cap)."""
        if template_id in w.template_counts or len(w.template_counts) < self.config.max_templates_per_window:
            return template_id
        self.m_evicted.labels("templates_per_window").inc()
        return OTHER_TEMPLATE

    def _record(self, o: _Open, r: Record, sequence: bool) -> None:
        cfg = self.config
        w = o.w
        t = r.time_ns
        w.count += 1
        if w.first_ns == 0 or t < w.first_ns:
            w.first_ns = t
        if t > w.last_ns:
            w.last_ns = t
        tid = self._slot(w, r.template_id)
        if tid != OTHER_TEMPLATE:
            if tid not in w.templates:
                w.templates[tid] = r.template
            if r.is_new and tid not in w.new_templates:
                w.new_templates.append(tid)
        w.template_counts[tid] = w.template_counts.get(tid, 0) + 1
        severity = r.severity
        w.severity_counts[severity] = w.severity_counts.get(severity, 0) + 1
        worst = w.template_worst.get(tid)
        if worst is None or _SEV_RANK.get(severity, 3) < _SEV_RANK.get(worst, 3):
            w.template_worst[tid] = severity
        if severity in ERROR_CLASSES:
            w.template_errors[tid] = w.template_errors.get(tid, 0) + 1
            if r.trace_id and cfg.max_error_trace_ids:
                _keep_best(o.traces, (t, r.trace_id, r.span_id), 1, cfg.max_error_trace_ids)
        if sequence and cfg.max_sequence:
            insort(o.seq, (t, r.order_ns, self._arrival, r.template_id))
            if len(o.seq) > cfg.max_sequence:
                o.seq.pop()  # the latest goes: the sequence keeps its first max_sequence events
                self.m_evicted.labels("sequence_length").inc()
        # exemplars: one per template, worst severity first, then the earliest line
        if cfg.max_exemplars:
            body = r.body
            line = body if len(body) <= cfg.max_exemplar_chars else body[: cfg.max_exemplar_chars] + "..."
            _keep_best(o.ex, (_SEV_RANK.get(severity, 3), t, line, tid), 3, cfg.max_exemplars)

    def _merge(self, o: _Open, other: _Open) -> None:
        """Fold session `other` into `o` (an out-of-order event fell between them)."""
        cfg = self.config
        w, x = o.w, other.w
        w.count += x.count
        w.first_ns = min(w.first_ns, x.first_ns)
        w.last_ns = max(w.last_ns, x.last_ns)
        slot = {tid: self._slot(w, tid) if tid != OTHER_TEMPLATE else tid for tid in x.template_counts}
        for tid, n in x.template_counts.items():
            to = slot[tid]
            w.template_counts[to] = w.template_counts.get(to, 0) + n
            if to != OTHER_TEMPLATE and to not in w.templates and tid in x.templates:
                w.templates[to] = x.templates[tid]
        for tid in x.new_templates:
            if slot.get(tid, tid) == tid and tid not in w.new_templates:
                w.new_templates.append(tid)
        for sev, n in x.severity_counts.items():
            w.severity_counts[sev] = w.severity_counts.get(sev, 0) + n
        for tid, n in x.template_errors.items():
            w.template_errors[slot[tid]] = w.template_errors.get(slot[tid], 0) + n
        for tid, sev in x.template_worst.items():
            worst = w.template_worst.get(slot[tid])
            if worst is None or _SEV_RANK.get(sev, 3) < _SEV_RANK.get(worst, 3):
                w.template_worst[slot[tid]] = sev
        for e in other.traces:
            _keep_best(o.traces, e, 1, cfg.max_error_trace_ids)
        for rank, t, line, tid in other.ex:
            _keep_best(o.ex, (rank, t, line, slot.get(tid, tid)), 3, cfg.max_exemplars)
        if other.seq:
            o.seq = sorted(o.seq + other.seq)
            if len(o.seq) > cfg.max_sequence:
                self.m_evicted.labels("sequence_length").inc(len(o.seq) - cfg.max_sequence)
                del o.seq[cfg.max_sequence:]

    def _add_tumbling(self, service: str, st: _ServiceState, r: Record, closed: list[Window]) -> None:
        start = r.time_ns - r.time_ns % self._size_ns
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
                self._fill_gap(service, st, oldest, oldest, closed)
                self._close_tumbling(service, st, oldest, "cap", closed)
                self.m_evicted.labels("max_open_windows").inc()
            o = self._new_window(service, "tumbling", "", start, start + self._size_ns)
            st.tumbling[start] = o
            self._n_tumbling += 1
        self._record(o, r, False)

    def _add_session(
        self, service: str, st: _ServiceState, key: str, r: Record, closed: list[Window]
    ) -> None:
        """Events of a key at most `session_gap_s` apart are one session, up to `session_max_s` from
        its first event; whatever order they come in, an event joins the open session of its key
        that it fits, and merges two it bridges."""
        cfg = self.config
        t = r.time_ns
        gap, longest = self._gap_ns, self._max_session_ns
        segs = st.sessions.get(key)
        hits = []
        if segs:
            for seg in segs:
                w = seg.w
                fits = w.first_ns - gap <= t <= w.last_ns + gap
                if fits and max(t, w.last_ns) - min(t, w.first_ns) <= longest:
                    hits.append(seg)
        o: _Open | None = None
        if hits:
            hits.sort(key=lambda x: x.w.first_ns)
            o = hits[0]
            for other in hits[1:]:
                if max(other.w.last_ns, o.w.last_ns) - min(t, o.w.first_ns) <= longest:
                    self._merge(o, other)
                    self._drop_session(st, key, other)
                    self.m_merged.inc()
        if o is None:
            if st.n_sessions >= cfg.max_sessions_per_service:
                oldest = self._oldest_session(st)
                if oldest is not None:
                    self._close_session(service, st, oldest[1], oldest[2], "cap", closed)
                    self.m_evicted.labels("max_sessions_per_service").inc()
            if self._n_sessions >= cfg.max_sessions_total:
                self._evict_oldest_session(closed)
            if t < st.progress - self._late_ns:
                self.m_late_sessions.inc()
            o = self._new_window(service, "session", key, t, t)
            st.sessions.setdefault(key, []).append(o)
            st.n_sessions += 1
            self._n_sessions += 1
            self._tie += 1
            heapq.heappush(st.heap, (t + min(gap, longest), self._tie, key, o))
        self._record(o, r, True)

    def _due(self, w: Window) -> int:
        """Watermark at which a session closes: its last event + gap, or its first + session_max_s."""
        return min(w.last_ns + self._gap_ns, w.first_ns + self._max_session_ns)

    def _oldest_session(self, st: _ServiceState) -> tuple[int, str, _Open] | None:
        """The open session that closes first (smallest `_due`); stale heap entries are dropped or
        re-filed under the session's current due time on the way."""
        h = st.heap
        while h:
            due, _, key, o = h[0]
            if o.closed:
                heapq.heappop(h)
                continue
            now_due = self._due(o.w)
            if now_due != due:
                self._tie += 1
                heapq.heapreplace(h, (now_due, self._tie, key, o))
            else:
                return due, key, o
        return None

    def _evict_oldest_session(self, closed: list[Window]) -> None:
        best: tuple[int, str, str, _Open] | None = None
        for name, st in self._services.items():
            top = self._oldest_session(st)
            if top is not None and (best is None or top[0] < best[0]):
                best = (top[0], name, top[1], top[2])
        if best is not None:
            _, name, key, o = best
            self._close_session(name, self._services[name], key, o, "cap", closed)
            self.m_evicted.labels("max_sessions_total").inc()

    def _advance(self, service: str, st: _ServiceState, watermark: int, closed: list[Window]) -> None:
        if st.tumbling:
            for start in sorted(st.tumbling):
                if start + self._size_ns > watermark:
                    break
                self._fill_gap(service, st, watermark, start, closed)
                self._close_tumbling(service, st, start, "watermark", closed)
        if self.config.tumbling:
            self._fill_gap(service, st, watermark, min(st.tumbling) if st.tumbling else watermark, closed)
        while st.n_sessions:
            top = self._oldest_session(st)
            if top is None or top[0] >= watermark:
                break
            w = top[2].w
            reason = "gap" if top[0] == w.last_ns + self._gap_ns else "max_length"
            self._close_session(service, st, top[1], top[2], reason, closed)

    def _fill_gap(self, service: str, st: _ServiceState, watermark: int, limit: int,
                  closed: list[Window]) -> None:
        """Tumbling slots from the last closed window up to `limit` (the next window to close or
        the oldest open one) that the watermark has passed without any event: emit (at most
        `max_empty_windows` per gap of) empty windows."""
        start = st.last_closed_end
        if not start:
            return
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

    def _finish(self, o: _Open, reason: str) -> Window:
        o.closed = True
        w = o.w
        o.ex.sort()
        w.exemplars = [e[2] for e in o.ex]
        w.exemplar_templates = [e[3] for e in o.ex]
        o.traces.sort()
        w.error_trace_ids = [e[1] for e in o.traces]
        w.error_span_ids = [e[2] for e in o.traces]
        w.template_sequence = [e[3] for e in o.seq]
        w.closed_by = reason
        return w

    def _close_tumbling(
        self, service: str, st: _ServiceState, start: int, reason: str, closed: list[Window]
    ) -> None:
        o = st.tumbling.pop(start)
        self._n_tumbling -= 1
        st.gap_empties = 0
        w = self._finish(o, reason)
        w.rate = w.count / self.config.tumbling_s
        if w.end_ns > st.last_closed_end:
            st.last_closed_end = w.end_ns
        self._closed_inc("tumbling", reason)
        closed.append(w)

    def _drop_session(self, st: _ServiceState, key: str, o: _Open) -> None:
        segs = st.sessions[key]
        segs.remove(o)
        if not segs:
            del st.sessions[key]
        o.closed = True
        st.n_sessions -= 1
        self._n_sessions -= 1

    def _close_session(
        self, service: str, st: _ServiceState, key: str, o: _Open, reason: str, closed: list[Window]
    ) -> None:
        self._drop_session(st, key, o)
        w = self._finish(o, reason)
        w.start_ns = w.first_ns
        w.end_ns = w.last_ns
        span_s = max(1.0, (w.last_ns - w.first_ns) / NS)
        w.rate = w.count / span_s
        self._closed_inc("session", reason)
        closed.append(w)

    def _close_all(self, service: str, st: _ServiceState, reason: str, closed: list[Window]) -> None:
        for start in sorted(st.tumbling):
            self._fill_gap(service, st, start, start, closed)
            self._close_tumbling(service, st, start, reason, closed)
        for key, segs in list(st.sessions.items()):
            for o in list(segs):
                self._close_session(service, st, key, o, reason, closed)
        st.heap.clear()
