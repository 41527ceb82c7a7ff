"""Event-time windows: tumbling with out-of-order input and lateness, gaps, idle flush, sessions
(trace id and regex), caps counted in metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.logs.windows import NS, OTHER_TEMPLATE, Window, WindowManager, WindowsConfig, severity_class
from tests.fakeclock import FakeClock

T0 = 1_700_000_040 * NS  # aligned to 60 s


def mk(reg: CollectorRegistry | None = None, clock: FakeClock | None = None,
       **kw: object) -> WindowManager:
    kw.setdefault("session_key", "off")
    return WindowManager(WindowsConfig(**kw), reg or CollectorRegistry(), clock=clock or FakeClock())


def add(wm: WindowManager, t_s: float, sev: str = "info", tid: int = 1, body: str = "line",
        service: str = "svc", trace: str = "", new: bool = False) -> list[Window]:
    span = "ab" * 4 if trace else ""
    return wm.add(service, T0 + int(t_s * NS), sev, body, tid, f"template {tid}", new, trace, span)


def test_tumbling_out_of_order_within_lateness_is_kept() -> None:
    wm = mk(tumbling_s=60, allowed_lateness_s=10)
    assert add(wm, 5) == []
    assert add(wm, 65) == []  # next window opens, first still open (watermark 55 < 60)
    assert add(wm, 30) == []  # out of order, but its window is still open
    closed = add(wm, 71)  # watermark 61 >= 60: first window closes
    assert len(closed) == 1
    w = closed[0]
    assert (w.kind, w.start_ns, w.end_ns, w.count) == ("tumbling", T0, T0 + 60 * NS, 2)
    assert w.first_ns == T0 + 5 * NS and w.last_ns == T0 + 30 * NS
    assert w.rate == pytest.approx(2 / 60)
    assert w.closed_by == "watermark"


def test_late_event_is_counted_and_dropped() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling_s=60, allowed_lateness_s=0)
    add(wm, 5)
    closed = add(wm, 61)
    assert [w.count for w in closed] == [1]
    assert add(wm, 10) == []  # window [0, 60) is closed: late
    assert reg.get_sample_value("log_window_late_events_total") == 1
    rest = wm.flush()
    assert [w.count for w in rest] == [1]  # only the event at 61


def test_window_contents() -> None:
    wm = mk(max_exemplars=2, max_error_trace_ids=2)
    add(wm, 1, "info", 1, "hello 1", new=True)
    add(wm, 2, "error", 2, "boom 1", trace="aa" * 16, new=True)
    add(wm, 3, "info", 1, "hello 2")
    add(wm, 4, "fatal", 3, "dead", trace="bb" * 16, new=True)
    add(wm, 5, "error", 2, "boom 2", trace="cc" * 16)
    add(wm, 6, "warn", 4, "hmm")
    (w,) = wm.flush()
    assert w.count == 6
    assert w.template_counts == {1: 2, 2: 2, 3: 1, 4: 1}
    assert w.templates[3] == "template 3"
    assert w.new_templates == [1, 2, 3]
    assert w.severity_counts == {"info": 2, "error": 2, "fatal": 1, "warn": 1}
    assert w.error_count == 3 and w.warn_count == 1
    assert w.template_errors == {2: 2, 3: 1}
    assert w.template_worst[2] == "error" and w.template_worst[1] == "info"
    assert w.error_trace_ids == ["aa" * 16, "bb" * 16]  # capped at 2
    assert sorted(w.exemplars) == ["boom 1", "dead"]  # errors first, one per template, capped
    assert w.closed_by == "flush"


def test_templates_per_window_cap_counts_overflow() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, max_templates_per_window=3)
    for tid in range(10):
        add(wm, 1, tid=tid)
    (w,) = wm.flush()
    assert len(w.template_counts) == 4 and w.template_counts[OTHER_TEMPLATE] == 7
    assert reg.get_sample_value("log_window_evictions_total", {"reason": "templates_per_window"}) == 7


def test_event_time_gap_emits_capped_empty_windows() -> None:
    wm = mk(tumbling_s=60, allowed_lateness_s=0, max_empty_windows=2)
    add(wm, 1)
    closed = add(wm, 60 * 10 + 1)  # jumps over 9 empty slots
    kinds = [(w.count, w.closed_by) for w in closed]
    assert kinds == [(1, "watermark"), (0, "empty"), (0, "empty")]
    assert closed[1].start_ns == T0 + 60 * NS and closed[2].start_ns == T0 + 120 * NS
    # the skipped slots are closed: an event for one of them is late
    assert add(wm, 60 * 5) == []
    assert [w.count for w in wm.flush()] == [1]


def test_idle_flush_by_wall_clock_then_empty_windows() -> None:
    clock = FakeClock()
    wm = mk(clock=clock, tumbling_s=60, idle_flush_s=30, max_empty_windows=2)
    add(wm, 1)
    add(wm, 2, service="other")
    clock.t += 10
    add(wm, 3, service="other")
    clock.t += 25  # svc idle 35 s, other idle 25 s
    closed = wm.tick()
    assert [(w.service, w.count) for w in closed] == [("svc", 1), ("svc", 0)]
    assert closed[0].closed_by == "idle" and closed[1].closed_by == "empty"
    assert wm.tick() == []  # next empty window only after another tumbling_s of wall time
    clock.t += 60
    closed = wm.tick()
    assert sorted((w.service, w.count) for w in closed) == [("other", 0), ("other", 2), ("svc", 0)]
    clock.t += 600
    assert [(w.service, w.count) for w in wm.tick()] == [("other", 0)]  # svc reached its cap of 2
    assert wm.tick() == []
    # the service speaks again: state resets
    add(wm, 200)
    assert [w.count for w in wm.flush()] == [1]


def test_sessions_by_trace_id_with_gap_and_max_length() -> None:
    wm = mk(session_key="trace_id", tumbling=False, session_gap_s=30, session_max_s=100, allowed_lateness_s=0)
    a, b = "aa" * 16, "bb" * 16
    add(wm, 0, tid=1, trace=a)
    add(wm, 1, tid=2, trace=b)
    add(wm, 5, tid=3, trace=a)
    add(wm, 2, tid=9)  # no trace id: no session
    add(wm, 25, tid=7, trace=b)
    closed = add(wm, 36, tid=4, trace=b)  # watermark 36: a's last event 5 + 30 < 36
    assert [(w.key, w.template_sequence, w.closed_by) for w in closed] == [(a, [1, 3], "gap")]
    assert closed[0].start_ns == T0 and closed[0].end_ns == T0 + 5 * NS and closed[0].kind == "session"
    assert add(wm, 60, tid=5, trace=b) == []
    assert add(wm, 84, tid=8, trace=b) == []
    closed = add(wm, 102, tid=6, trace=b)  # b started at 1: spans > 100 s -> closed, new session
    assert [(w.key, w.template_sequence, w.closed_by) for w in closed] == [(b, [2, 7, 4, 5, 8], "max_length")]
    assert [(w.key, w.template_sequence) for w in wm.flush()] == [(b, [6])]


def test_a_session_gap_is_measured_in_event_time() -> None:
    wm = mk(session_key="trace_id", tumbling=False, session_gap_s=30, allowed_lateness_s=0)
    a = "aa" * 16
    add(wm, 0, tid=1, trace=a)
    closed = add(wm, 31, tid=2, trace=a)  # 31 s after the last event: a new session, the first closes
    assert [(w.template_sequence, w.closed_by) for w in closed] == [([1], "gap")]
    assert [w.template_sequence for w in wm.flush()] == [[2]]


def test_sessions_by_regex_line_joins_every_key() -> None:
    wm = mk(session_key="regex", session_regex=r"blk_-?\d+", tumbling=False, session_gap_s=1000)
    add(wm, 0, tid=1, body="Receiving block blk_-16 src")
    add(wm, 1, tid=2, body="Receiving block blk_42 src")
    add(wm, 2, tid=3, body="ask to replicate blk_-16 and blk_42 to datanode")
    add(wm, 3, tid=4, body="timestamp 12 no block")
    got = {w.key: w.template_sequence for w in wm.flush()}
    assert got == {"blk_-16": [1, 3], "blk_42": [2, 3]}


def test_session_and_service_caps_are_counted() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, session_key="trace_id", max_sessions_per_service=2, max_sessions_total=3, max_services=2,
            session_gap_s=1000)
    add(wm, 0, trace="01" * 16)
    add(wm, 1, trace="02" * 16)
    closed = add(wm, 2, trace="03" * 16)  # per-service cap: oldest session closed early
    assert [(w.key, w.closed_by) for w in closed if w.kind == "session"] == [("01" * 16, "cap")]
    add(wm, 3, trace="04" * 16, service="b")
    closed = add(wm, 4, trace="05" * 16, service="b")  # total cap 3: the oldest session overall goes
    assert [(w.service, w.key) for w in closed if w.kind == "session"] == [("svc", "02" * 16)]
    closed = add(wm, 5, service="c")  # service cap: least recently seen service (svc) is flushed out
    assert {w.service for w in closed} == {"svc"}
    assert "svc" not in wm.services()
    ev = {r: reg.get_sample_value("log_window_evictions_total", {"reason": r})
          for r in ("max_sessions_per_service", "max_sessions_total", "max_services")}
    assert ev == {"max_sessions_per_service": 1, "max_sessions_total": 1, "max_services": 1}
    assert wm.open_windows() <= 3 + 2 * 4


def test_max_open_tumbling_windows() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling_s=60, allowed_lateness_s=1000, max_open_windows=2)
    add(wm, 1)
    add(wm, 61)
    closed = add(wm, 121)  # third open window: the oldest is closed early
    assert [(w.start_ns, w.closed_by) for w in closed] == [(T0, "cap")]
    assert add(wm, 2) == []  # belongs to the closed window: late
    assert reg.get_sample_value("log_window_evictions_total", {"reason": "max_open_windows"}) == 1
    assert reg.get_sample_value("log_window_late_events_total") == 1


def test_sequence_cap() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, session_key="trace_id", tumbling=False, max_sequence=3)
    for i in range(5):
        add(wm, i, tid=i, trace="aa" * 16)
    (w,) = wm.flush()
    assert w.template_sequence == [0, 1, 2] and w.count == 5
    assert reg.get_sample_value("log_window_evictions_total", {"reason": "sequence_length"}) == 2


def test_severity_class() -> None:
    assert [severity_class(n) for n in (0, 1, 5, 9, 13, 17, 21)] == [
        "unknown", "trace", "debug", "info", "warn", "error", "fatal"]
    assert [severity_class(0, t) for t in ("ERROR", "Warning", "SEVERE", "info", "crit", "x")] == [
        "error", "warn", "fatal", "info", "fatal", "unknown"]


@pytest.mark.parametrize("kw,key", [
    ({"tumbling_s": 0}, "windows.tumbling_s"),
    ({"session_key": "nope"}, "windows.session_key"),
    ({"session_key": "regex", "session_regex": "("}, "windows.session_regex"),
    ({"max_services": 0}, "windows.max_services"),
    ({"allowed_lateness_s": -1}, "windows.allowed_lateness_s"),
])
def test_config_errors(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        WindowsConfig(**kw).validate()  # type: ignore[arg-type]
