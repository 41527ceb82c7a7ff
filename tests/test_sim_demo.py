"""The demo: the real analyzer (build_app) fed by the live simulator over OTLP gRPC."""

from __future__ import annotations

import re

import pytest

from receiver.model import EVENT_RCA, R_CANDIDATES, R_PATH
from receiver.sim.demo import main, run_demo


def test_demo_detects_and_explains_an_injected_fault(tmp_path):
    lines: list[str] = []
    res = run_demo("wrong_value", "payment", warmup_s=150.0, fault_s=90.0, speed=40.0, seed=3,
                   out=lines.append, data_dir=str(tmp_path))
    text = "\n".join(lines)
    assert res.spans_sent > 1000 and res.logs_sent > 500
    assert "warm-up" in text and "injecting fault at 150s: wrong_value on checkout -> payment" in text
    assert res.reports, text
    rep = res.reports[0]
    assert rep.event_name == EVENT_RCA
    assert res.root_cause == "payment"  # the callee, although only checkout shows errors
    assert rep.attributes[R_CANDIDATES].index("checkout") > 0
    assert rep.attributes[R_PATH][:2] == ["payment", "checkout"]
    assert res.ttd_event_s is not None and 0 <= res.ttd_event_s <= 90
    assert "RCA REPORT" in text and "root cause reported: payment (correct)" in text


def test_demo_reports_nothing_before_the_fault(tmp_path):
    # the default demo (db_down after 330 s of warm-up): the warm-up's routine errors (declined cards,
    # a feature-store fallback, slow GC) are the services' normal life, not findings
    lines: list[str] = []
    res = run_demo(speed=40.0, seed=1, out=lines.append, data_dir=str(tmp_path))
    text = "\n".join(lines)
    assert res.reports, text
    offsets = [int(m) for m in re.findall(r"([+-]\d+)s from the fault", text)]
    assert offsets, text
    assert min(offsets) >= 0, text


def test_demo_rejects_unknown_fault(capsys):
    assert main("meteor", None) == 2
    assert "unknown fault kind" in capsys.readouterr().out
    with pytest.raises(ValueError, match="service"):
        run_demo("cpu", "postgres")
