"""A failure does not become normal because it repeats: entity sessions (one per VM instance, keyed by
a regex) where a failure logged at ERROR keeps recurring after the warm-up stay flagged every time,
while a new WARN line is news only while it is new or rare, and a session that looks like the healthy
ones is never flagged."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from receiver.detect import DetectConfig, Tier0Detector
from receiver.logs.windows import NS, Window

TEXT = {
    1: "instance <*> spawning", 2: "instance <*> network allocated", 3: "instance <*> VM started",
    4: "instance <*> took <*> seconds to build", 5: "instance <*> failed to spawn: libvirt error <*>",
    6: "instance <*> image cache is stale, refreshing",
}


def session(i: int, seq: list[int], worst: dict[int, str] | None = None) -> Window:
    worst = worst or {}
    counts: dict[int, int] = {}
    for t in seq:
        counts[t] = counts.get(t, 0) + 1
    sev: dict[str, int] = {}
    for t in seq:
        cls = worst.get(t, "info")
        sev[cls] = sev.get(cls, 0) + 1
    return Window(service="compute", kind="session", key=f"inst-{i}", key_kind="regex",
                  start_ns=i * 10 * NS, end_ns=i * 10 * NS + 5 * NS, count=len(seq), template_counts=counts,
                  templates={t: TEXT[t] for t in counts}, severity_counts=sev,
                  template_errors={t: n for t, n in counts.items() if worst.get(t) in ("error", "fatal")},
                  template_worst={t: worst.get(t, "info") for t in counts}, template_sequence=list(seq),
                  exemplars=[TEXT[t] for t in seq][:5], exemplar_templates=list(seq)[:5])


def run(det: Tier0Detector) -> tuple[list[bool], list[bool], list[bool]]:
    rng = random.Random(3)
    healthy = [1, 2, 3, 4]
    for i in range(80):  # warm-up and a healthy history
        det.consume_windows([session(i, healthy)])
    failing_flags, normal_flags, warn_flags = [], [], []
    for i in range(80, 200):
        r = rng.random()
        if r < 0.3:  # the instance fails to spawn, logged at ERROR
            a = det.consume_windows([session(i, [1, 2, 5], {5: "error"})])[0]
            failing_flags.append(a.flagged or bool(a.duplicate_of))
        elif r < 0.4:  # a new warning, then routine
            a = det.consume_windows([session(i, [1, 6, 2, 3, 4], {6: "warn"})])[0]
            warn_flags.append(a.flagged or bool(a.duplicate_of))
        else:
            a = det.consume_windows([session(i, healthy)])[0]
            normal_flags.append(a.flagged or bool(a.duplicate_of))
    return failing_flags, normal_flags, warn_flags


def test_recurring_failure_stays_news_in_every_session() -> None:
    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    failing, normal, warn = run(det)
    assert len(failing) > 20
    assert all(failing), f"{failing.count(False)} of {len(failing)} failing instances not flagged"
    assert not any(normal)
    # a warning is news when new (and while rare among sessions), then part of normal life
    assert warn[0] and not any(warn[len(warn) // 2:]), warn
    info = det.baseline_info("compute")
    assert info is not None


def test_without_the_memory_the_failure_becomes_normal(monkeypatch: object) -> None:
    # the same run with the known-bad memory switched off shows what the test guards against
    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    det._remember_bad = lambda b, w, seen: set()  # type: ignore[method-assign]
    failing, _normal, _warn = run(det)
    assert failing[0] and not all(failing)


def test_known_bad_memory_is_capped_and_persisted(tmp_path: object) -> None:
    det = Tier0Detector(DetectConfig(max_templates_per_service=20), None, CollectorRegistry())
    for i in range(60):
        det.consume_windows([session(i, [1, 2, 3, 4])])
    for i in range(60, 120):  # 60 distinct new failures, each in a flagged session
        t = 100 + i
        TEXT[t] = f"instance <*> failed: error code {i}x"
        det.consume_windows([session(i, [1, t], {t: "error"})])
    b = det._baselines["compute"]
    assert 0 < len(b.known_bad) <= 20
    path = f"{tmp_path}/tier0.json"
    det.save(path)
    det2 = Tier0Detector(DetectConfig(max_templates_per_service=20), None, CollectorRegistry())
    assert det2.load(path) == 1
    assert det2._baselines["compute"].known_bad == b.known_bad


def test_exception_shapes_name_a_failure() -> None:
    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    assert det.failure_words("Traceback (most recent call last):") == ["traceback"]
    assert det.failure_words("Caused by: <*>") == ["caused by"]
    assert "exception" in det.failure_words("java.net.SocketTimeoutException: <*> millis timeout")
    assert det.failure_words("served <*> requests in <*> ms") == []
