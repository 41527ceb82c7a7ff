"""Out-of-order delivery: what the windows hold and when they close does not depend on the order
requests arrive in, as long as no request is overtaken by more than `max_in_flight` others."""

from __future__ import annotations

import dataclasses
import random

from prometheus_client import CollectorRegistry

from receiver.logs.windows import NS, Record, Window, WindowManager, WindowsConfig
from tests.fakeclock import FakeClock

T0 = 1_700_000_040 * NS  # aligned to 60 s


def mk(reg: CollectorRegistry | None = None, **kw: object) -> WindowManager:
    kw.setdefault("session_key", "off")
    return WindowManager(WindowsConfig(**kw), reg or CollectorRegistry(), clock=FakeClock())


def rec(t_s: float, tid: int = 1, sev: str = "info", body: str = "", trace: str = "", service: str = "svc",
        order: int = 0) -> Record:
    return Record(service, T0 + int(t_s * NS), sev, body or f"line {tid} at {t_s}", tid, f"template {tid}",
                  False, trace, "ab" * 4 if trace else "", order)


def content(windows: list[Window]) -> list[dict[str, object]]:
    return [dataclasses.asdict(w) for w in windows]


def test_one_request_far_ahead_does_not_close_windows() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling_s=60, allowed_lateness_s=0, max_in_flight=3)
    assert wm.add_delivery([rec(5)]) == []
    assert wm.add_delivery([rec(3600)]) == []  # a concurrent sender got there first
    assert wm.add_delivery([rec(30), rec(70)]) == []  # older records: still merged, nothing late
    closed = wm.add_delivery([rec(3610)])  # three requests have reached 70: [0, 60) closes
    assert [(w.start_ns - T0, w.count, w.closed_by) for w in closed] == [(0, 2, "watermark")]
    assert reg.get_sample_value("log_window_late_events_total") == 0
    assert [w.count for w in wm.flush() if w.count] == [1, 2]


def test_a_rarely_sending_service_is_not_held_back_by_max_in_flight() -> None:
    clock = FakeClock()
    wm = WindowManager(WindowsConfig(session_key="off", tumbling_s=60, allowed_lateness_s=0, max_in_flight=10,
                                     in_flight_s=30, idle_flush_s=3600), CollectorRegistry(), clock=clock)
    wm.add_delivery([rec(5)])
    clock.t += 20
    assert wm.add_delivery([rec(70)]) == []  # two requests of ten: not progress yet
    clock.t += 29
    assert wm.tick() == []  # 29 s after the second request arrived: one sent with it may still come
    clock.t += 1
    assert [(w.start_ns - T0, w.count) for w in wm.tick()] == [(0, 1)]  # its maximum (70) counts now


def test_a_record_behind_the_watermark_is_late() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling_s=60, allowed_lateness_s=0, max_in_flight=2)
    wm.add_delivery([rec(5)])
    wm.add_delivery([rec(65)])
    assert [w.count for w in wm.add_delivery([rec(66)])] == [1]  # two requests reached 65
    assert wm.add_delivery([rec(10)]) == []
    assert reg.get_sample_value("log_window_late_events_total") == 1


def test_gap_closed_session_waits_for_the_other_senders() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling=False, session_key="trace_id", session_gap_s=30, allowed_lateness_s=0,
            max_in_flight=2)
    a = "aa" * 16
    wm.add_delivery([rec(0, 1, trace=a), rec(10, 2, trace=a)])
    assert wm.add_delivery([rec(500, 9, trace="bb" * 16)]) == []  # one far-ahead request
    wm.add_delivery([rec(20, 3, trace=a)])  # the slower sender's record still joins the session
    closed = wm.add_delivery([rec(501, 9, trace="bb" * 16)])
    assert [(w.key, w.template_sequence, w.closed_by) for w in closed] == [(a, [1, 2, 3], "gap")]
    late = wm.add_delivery([rec(25, 4, trace=a)])  # behind the watermark now: a session of its own
    assert [(w.key, w.template_sequence) for w in late] == [(a, [4])]
    assert reg.get_sample_value("log_window_late_session_events_total") == 1


def test_a_late_record_between_two_sessions_merges_them() -> None:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling=False, session_key="trace_id", session_gap_s=30)
    a = "aa" * 16
    wm.add_delivery([rec(0, 1, trace=a)])
    wm.add_delivery([rec(50, 3, trace=a)])  # 50 s later: a session of its own so far
    wm.add_delivery([rec(25, 2, trace=a)])  # within the gap of both: one session after all
    (w,) = wm.flush()
    assert (w.template_sequence, w.count, w.start_ns - T0, w.end_ns - T0) == ([1, 2, 3], 3, 0, 50 * NS)
    assert reg.get_sample_value("log_window_sessions_merged_total") == 1


def stream() -> list[Record]:
    """Two services, errors with trace ids, equal timestamps ordered by observed time, sessions
    by trace id with gaps, more templates than exemplar and sequence slots."""
    rnd = random.Random(7)
    out = []
    for i in range(600):
        t = i // 3 + rnd.choice([0, 0, 1])  # several records per second, some equal
        tid = rnd.randrange(12)
        sev = rnd.choice(["info"] * 6 + ["warn", "error", "fatal"])
        trace = f"{rnd.randrange(40):032x}" if rnd.random() < 0.7 else ""
        out.append(rec(t, tid, sev, f"msg {tid} n={i % 7}", trace, rnd.choice(["api", "db"]), order=i + 1))
    return out


def run(batches: list[list[Record]], order: list[int]) -> tuple[list[dict[str, object]], float]:
    reg = CollectorRegistry()
    wm = mk(reg, tumbling_s=30, allowed_lateness_s=5, max_in_flight=10, session_key="trace_id",
            session_gap_s=20, max_exemplars=3, max_error_trace_ids=4, max_sequence=4)
    closed: list[Window] = []
    for i in order:
        closed += wm.add_delivery(batches[i])
    closed += wm.flush()
    return content(closed), reg.get_sample_value("log_window_late_events_total") or 0.0


def test_windows_are_the_same_whatever_the_delivery_order() -> None:
    records = stream()
    batches = [records[i:i + 20] for i in range(0, len(records), 20)]
    in_order, late = run(batches, list(range(len(batches))))
    assert late == 0 and len(in_order) > 20
    assert any(w["closed_by"] == "gap" for w in in_order)
    rnd = random.Random(1)
    for _ in range(5):
        order: list[int] = []
        for start in range(0, len(batches), 10):  # ten senders: a request is overtaken by at most 9
            wave = list(range(start, min(start + 10, len(batches))))
            rnd.shuffle(wave)
            order += wave
        shuffled, late = run(batches, order)
        assert late == 0
        assert shuffled == in_order  # same windows, same contents, handed on in the same order


def test_records_inside_one_request_in_any_order() -> None:
    records = stream()[:200]
    a = run([records], [0])[0]
    rnd = random.Random(3)
    mixed = list(records)
    rnd.shuffle(mixed)
    assert run([mixed], [0])[0] == a
