"""RCA and the incident tracker name one incident: in the app as it is wired (RCA stage -> findings
fan-out -> store + incident tracker), the report's `rca.incident_id` is the tracker's incident that
holds the anomaly findings, and the tracker attaches the report to it."""

from __future__ import annotations

from pathlib import Path

from receiver.app import build_app
from receiver.config import load_config
from receiver.model import (
    A_CONFIDENCE,
    A_SERVICE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    EVENT_RCA,
    Finding,
)
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator

WARMUP, FAULT = 180.0, 60.0


def _app(tmp: Path, **rca: object):
    cfg = load_config(overrides={
        "server": {"llm": "off", "data_dir": str(tmp / "var")},
        "spanproc": {"enabled": False},
        "rca": {"check_interval_s": 0, "trace_triggers": False, **rca},
    }, environ={})
    return build_app(cfg)


def _anomaly(sim: Simulator, service: str, at_s: float) -> Finding:
    end = sim.start_ns + int(at_s * 1e9)
    return Finding(EVENT_ANOMALY, {A_SERVICE: service, A_CONFIDENCE: 0.9, A_WINDOW_START: end - 30 * 10**9,
                                   A_WINDOW_END: end}, body="error burst")


def _feed(app, sim: Simulator) -> None:  # noqa: ANN001 - the App
    for _, tr, lg in sim.run_virtual(WARMUP + FAULT, 10.0):
        app.graph.consume_traces(tr)
        app.signals.consume_traces(tr)
        app.signals.consume_logs(lg)
    app.graph.flush()
    app.signals.flush()


def test_report_names_the_trackers_incident(tmp_path: Path):
    app = _app(tmp_path)
    sim = Simulator(seed=21, faults=[Fault("db_down", "postgres", start_s=WARMUP)])
    _feed(app, sim)
    first, second = _anomaly(sim, "checkout", WARMUP + 20), _anomaly(sim, "frontend", WARMUP + 30)
    app.rca.consume_findings([first])
    app.rca.consume_findings([second])
    app.rca.flush()
    reports = [f for f in app.store.list_findings(limit=100) if f.event_name == EVENT_RCA]
    assert len(reports) == 1
    rep = reports[0]
    tracked = app.incidents.open_incidents()
    assert len(tracked) == 1
    inc = tracked[0]
    assert rep.attributes["rca.incident_id"] == inc.id
    assert inc.rca_report_id == rep.id and inc.root_cause_service == "postgres"
    assert {first.id, second.id, rep.id} <= set(inc.finding_ids)
    assert app.incidents.incident(inc.id).root_cause_service == "postgres"


def test_report_without_anomaly_findings_opens_the_incident_under_its_id(tmp_path: Path):
    # triggered by the span signals only (no anomaly finding): the tracker adopts RCA's id
    app = _app(tmp_path, trace_triggers=True)
    sim = Simulator(seed=21, faults=[Fault("db_down", "postgres", start_s=WARMUP)])
    _feed(app, sim)
    app.rca.flush()
    reports = [f for f in app.store.list_findings(limit=100) if f.event_name == EVENT_RCA]
    assert reports
    for rep in reports:
        inc = app.incidents.incident(rep.attributes["rca.incident_id"])
        assert inc is not None and rep.id in inc.finding_ids
