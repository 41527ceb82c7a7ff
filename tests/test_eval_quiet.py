"""`eval quiet`: every finding on simulated healthy traffic is counted as a false alarm."""

from __future__ import annotations

import json

import pytest

from receiver.eval import quiet


def test_counts_every_finding_as_a_false_alarm(capsys: pytest.CaptureFixture[str]) -> None:
    assert quiet.main(["--hours", "0.05", "--seed", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["findings"] == res["anomalies"] + res["rca_reports"]
    assert sum(res["per_hour"].values()) == res["findings"]
    assert sum(res["by_service_type"].values()) == res["anomalies"]
    assert quiet.main(["--hours", "0"]) == 2
