"""The operator's word on remembered failures, through the HTTP API of the running app: list what the
detector remembers as known bad, mark one normal (then its recurrence is not news), refuse bad input,
and keep the memory across a restart."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.test_app import RunningApp
from tests.test_tier0_known_bad import session


def post(app: RunningApp, path: str, body: object) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(app.url(path), data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def feed(app: RunningApp, start: int, n_healthy: int, failing: bool) -> list[bool]:
    det = app.app.detector
    healthy = [session(i, [1, 2, 3, 4]) for i in range(start, start + n_healthy)]
    flags = [a.flagged or bool(a.duplicate_of) for a in det.consume_windows(healthy)]
    if failing:
        # the failure inside an otherwise complete lifecycle: only the failure line is news
        a = det.consume_windows([session(start + n_healthy, [1, 2, 3, 5, 4], {5: "error"})])[0]
        flags.append(a.flagged or bool(a.duplicate_of))
    return flags


def test_list_mark_normal_and_restart(tmp_path: Path) -> None:
    app = RunningApp(tmp_path)
    try:
        # after the warm-up (300 s of event time, 10 s apart), a failure is flagged and remembered
        assert not any(feed(app, 0, 80, failing=False))
        assert feed(app, 80, 2, failing=True)[-1]
        listed = app.get("/api/v1/detect/known-bad?service=compute")
        assert [r["template"] for r in listed] == ["instance <*> failed to spawn: libvirt error <*>"]
        tid = listed[0]["template_id"]
        assert feed(app, 83, 1, failing=True)[-1]  # still news when it recurs
        assert app.get("/api/v1/detect/known-bad?service=other") == []
    finally:
        app.stop()  # the baselines are saved with the service's state
    app = RunningApp(tmp_path)
    try:
        assert [r["template_id"] for r in app.get("/api/v1/detect/known-bad")] == [tid]
        for bad in (b"not json", {"service": "compute"}, {"service": "compute", "template_id": "5"},
                    {"service": "compute", "template_id": True}, ["compute", tid]):
            status, body = post(app, "/api/v1/detect/normal", bad)
            assert status == 400 and "template_id" in body["error"], (bad, body)
        status, body = post(app, "/api/v1/detect/normal", {"service": "compute", "template_id": tid + 1000})
        assert status == 404 and "remembers no failure template" in body["error"]
        status, body = post(app, "/api/v1/detect/normal", {"service": "compute", "template_id": tid})
        assert status == 200 and body == {"service": "compute", "template_id": tid, "normal": True}
        assert app.get("/api/v1/detect/known-bad") == []
        assert not feed(app, 100, 1, failing=True)[-1]  # the operator said it is normal
    finally:
        app.stop()
