"""Investigation on demand: the simulator's traffic with a CPU fault replayed into the running app
over OTLP/HTTP, then `POST /api/v1/investigate` for the fault window and the `investigate` command: the
report names the faulty service, is marked on demand, and is stored like every report."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from receiver.model import R_ROOT_CAUSE
from receiver.rca.investigate_cli import parse_duration
from receiver.rca.investigate_cli import run as run_investigate
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator
from tests.test_app import RunningApp

NS = 1_000_000_000


def send(app: RunningApp, path: str, body: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{app.app.otlp.http_port}{path}", data=body,
                                 method="POST", headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def post(app: RunningApp, body: object) -> tuple[int, dict]:
    req = urllib.request.Request(app.url("/api/v1/investigate"), data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_investigate_names_the_faulty_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = RunningApp(tmp_path)
    try:
        onset_s = 240.0
        sim = Simulator(seed=4, faults=[Fault("cpu", "inventory", start_s=onset_s, intensity=1.0)])
        for _, traces, logs in sim.run_virtual(onset_s + 90.0, 5.0):
            send(app, "/v1/traces", traces.SerializeToString())
            send(app, "/v1/logs", logs.SerializeToString())
        sim.shutdown()
        app.post("/api/v1/flush")
        start = sim.start_ns + int(onset_s * NS)
        end = start + 60 * NS
        status, rep = post(app, {"start": start, "end": end})
        assert status == 200, rep
        assert rep["event_name"] == "rca.report"
        assert rep[R_ROOT_CAUSE] == "inventory", rep
        assert rep["rca.on_demand"] is True
        stored = app.get("/api/v1/findings?event_name=rca.report&limit=100")
        assert any(f["id"] == rep["id"] for f in stored)
        # the command asks the same API for the last N minutes (here ending at the fault window's end)
        assert run_investigate("1m", None, app.url(""), None, True, now_ns=end) == 0
        assert json.loads(capsys.readouterr().out)[R_ROOT_CAUSE] == "inventory"
        # bad requests are refused with the reason
        for bad in ({"start": start}, {"start": "x", "end": end}, {"start": start, "end": end, "service": 3}):
            status, body = post(app, bad)
            assert status == 400 and "start" in body["error"], (bad, body)
        status, body = post(app, {"start": end, "end": start})
        assert status == 400 and "after" in body["error"]
        status, body = post(app, {"start": 10 * NS, "end": 20 * NS})  # nothing seen then
        assert status == 404
    finally:
        app.stop()


def test_duration_parsing() -> None:
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("2h") == 7200
    for bad in ("", "10", "-5m", "0s", "ten minutes"):
        with pytest.raises(ValueError, match="--since"):
            parse_duration(bad)
