"""`eval anomaly --otlp`: a raw log with `anomaly_label.csv` replayed through the running product.

The analyzer is built as `serve` builds it (`build_app`, `--llm off`, loopback ports, a temporary data
directory) with session windows keyed by the session regex (closing after an hour without lines, as
the in-process evaluation does), and the log is sent to its OTLP/HTTP endpoint in file order, 500
records a request, one sender, each record with the line's time and severity and one service name.
Then `POST /api/v1/flush`-equivalent `App.flush()` closes every window and the anomaly findings are read
back from the store: a labelled id is predicted anomalous when a finding names it as its window key.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from receiver.eval.anomaly_data import ENTITY_GAP_S, FormatError, raw_events, read_label_csv

BATCH = 500
SERVICE = "log"
_SEVERITY_NUMBER = {"fatal": 21, "error": 17, "warn": 13, "info": 9, "debug": 5, "trace": 1}
FINDINGS_CAP = 1_000_000  # findings read back from the store


def _requests(log: Path) -> tuple[list[bytes], int, int]:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=SERVICE))])
    out: list[bytes] = []
    records: list[LogRecord] = []
    lines = bad = 0
    observed = time.time_ns()
    for ev in raw_events(log):
        if ev is None:
            bad += 1
            continue
        t_ns, sev, body = ev
        records.append(LogRecord(time_unix_nano=t_ns, observed_time_unix_nano=observed + lines,
                                 severity_number=_SEVERITY_NUMBER.get(sev, 0),  # type: ignore[arg-type]
                                 severity_text=sev.upper(), body=AnyValue(string_value=body)))
        lines += 1
        if len(records) == BATCH:
            out.append(_encode(resource, records))
            records = []
    if records:
        out.append(_encode(resource, records))
    return out, lines, bad


def _encode(resource: Resource, records: list[LogRecord]) -> bytes:
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=resource, scope_logs=[ScopeLogs(log_records=records)])]).SerializeToString()


def replay(path: Path, session_regex: str | None = None) -> dict[str, Any]:
    """-> {"pred": {id: flagged}, "labels": {id: anomalous}, "lines", "unparsed_lines", "accepted"}."""
    from receiver.app import build_app
    from receiver.config import load_config

    logs = sorted(path.glob("*.log"))
    if len(logs) != 1 or not (path / "anomaly_label.csv").is_file():
        raise FormatError(f"{path}: --otlp replays a directory with anomaly_label.csv and one *.log")
    if not session_regex:
        raise FormatError(f"{path}: --otlp needs --session-regex, the regex of the labelled id in the lines")
    labels = read_label_csv(path / "anomaly_label.csv")
    bodies, lines, bad = _requests(logs[0])
    windows: dict[str, Any] = {"session_key": "regex", "session_gap_s": ENTITY_GAP_S,
                               "session_max_s": 7 * 86400.0, "max_sessions_per_service": 100_000,
                               "max_sessions_total": 100_000, "max_in_flight": 1,
                               "session_regex": session_regex}
    with tempfile.TemporaryDirectory(prefix="lla-eval-") as tmp:
        app = build_app(load_config(overrides={
            "server": {"llm": "off", "data_dir": tmp},
            "otlp": {"grpc_endpoint": "127.0.0.1:0", "http_endpoint": "127.0.0.1:0"},
            "api": {"endpoint": "127.0.0.1:0"},
            "logs": {"windows": windows},
        }, environ={}))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(app.start(), loop).result(120)
            url = f"http://127.0.0.1:{app.otlp.http_port}/v1/logs"
            for body in bodies:
                _post(url, body)
            asyncio.run_coroutine_threadsafe(app.flush(), loop).result(1800)
            found = app.store.list_findings(limit=FINDINGS_CAP, event_name="anomaly.detected")
            accepted = lines
        finally:
            asyncio.run_coroutine_threadsafe(app.shutdown(), loop).result(120)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
    keys = {str(f.attributes.get("anomaly.window.key", "")) for f in found}
    return {"pred": {k: k in keys for k in labels}, "labels": labels, "lines": lines, "unparsed_lines": bad,
            "accepted": accepted, "findings": len(found)}


def _post(url: str, body: bytes, attempts: int = 100) -> None:
    """One OTLP/HTTP export; 503 (backpressure) is retried after its Retry-After, as an exporter does."""
    for _ in range(attempts):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                raise
            time.sleep(min(5.0, float(e.headers.get("Retry-After", "0.2") or 0.2)))
    raise RuntimeError(f"{url}: still refused after {attempts} attempts")
