"""The replay of recorded incidents (`eval rca --data`): CSV rows -> OTLP requests -> the stages.
Reads ../shared/datasets/rca (fails loudly when it is missing); one small case per system."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.eval.rca_data import (
    K_CLIENT,
    K_INTERNAL,
    K_SERVER,
    SpanRow,
    assign_kinds,
    load_cases,
    parse_level,
)
from receiver.eval.rca_replay import expected_hits, run_case

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "rca"


@pytest.fixture(scope="module")
def cases():
    assert DATA.is_dir(), f"datasets folder missing: {DATA} (../shared/datasets beside the repo)"
    return {c.case_id: c for c in load_cases(DATA)}


def _span(sid: int, parent: int, service: str, start: int, end: int) -> SpanRow:
    return SpanRow(b"t" * 16, bytes([sid]) * 8, bytes([parent]) * 8 if parent else b"", f"{service}-a-b",
                   service, "op", start, end)


def test_a_call_between_services_becomes_a_client_and_a_server_span():
    root = _span(1, 0, "gateway", 0, 100)
    call = _span(2, 1, "gateway", 5, 90)  # the gateway's outgoing call: only a child in another service
    served = _span(3, 2, "order", 10, 80)
    db = _span(4, 3, "order", 20, 30)
    direct = _span(5, 3, "user", 40, 50)  # called from a span that also has own-service children
    out = assign_kinds([served, db, direct, call, root])
    kinds = {s.span_id[0]: s.kind for s in out}
    assert kinds[1] == K_SERVER and kinds[2] == K_CLIENT and kinds[3] == K_SERVER and kinds[4] == K_INTERNAL
    (synth,) = [s for s in out if s.span_id[0] not in (1, 2, 3, 4, 5)]
    assert synth.kind == K_CLIENT and synth.service == "order" and (synth.start, synth.end) == (40, 50)
    assert direct.parent_id == synth.span_id and direct.kind == K_SERVER


def test_levels_and_expected_hits():
    assert parse_level("16:51:51.940 ERROR o.a.c.c.C.[.[.[.[dispatcherServlet]#175 threw") == ("ERROR", 17)
    assert parse_level("16:51:24.967 INFO  u.c.UserController#48") == ("INFO", 9)
    assert parse_level("\tat java.base/java.lang.Thread.run(Thread.java:829)") == ("", 0)
    # tied with two others at the top: AC@1 = 1/3, AC@3 = 1
    hits = expected_hits({"a": 1.0, "b": 1.0, "c": 1.0}, ["a", "b", "c", "d"], "b")
    assert hits[1] == pytest.approx(1 / 3) and hits[3] == 1.0


@pytest.mark.parametrize("case_id", ["2023-01-30T125204", "2022-08-22T052706"])
def test_replay_one_case_per_system(cases, case_id: str):
    case = cases[case_id]
    run = run_case(case, "localize", 120.0)
    assert run.seconds < 30
    assert case.root_cause in run.services
    assert run.stats.spans > 1000 and run.stats.client_marked > 100
    # every service seen is ranked, and the report names the signal that decided
    assert sorted(run.ranked) == sorted(s for s in run.services if s in run.ranked)
    assert run.decided_by
    assert set(run.baselines) == {"error_logs", "p90_server", "p90_self", "p90_gap"}


def test_cli_json_and_missing_data():
    cmd = [sys.executable, "-m", "receiver", "eval", "rca", "--data", str(DATA / "nezha-onlineboutique"),
           "--cases", "1", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mode"] == "localize" and len(out["cases"]) == 1
    table = out["systems"]["nezha-onlineboutique"]["overall"]
    assert {"product", "random", "error_logs", "p90_server", "p90_self", "p90_gap"} <= set(table)
    r = subprocess.run([sys.executable, "-m", "receiver", "eval", "rca", "--data", "/nonexistent"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "nonexistent" in r.stderr
