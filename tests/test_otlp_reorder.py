"""A Collector's concurrent senders, end to end: `HDFS_5k.log` sent to the running app over OTLP/HTTP
as requests of 100 records, once in file order by one sender and once by ten concurrent senders
each taking a request from a shuffled group of ten (as the Collector's `sending_queue` with its
default 10 consumers delivers them: a request is overtaken by at most nine others). Every accepted
record is analysed (none late) and the findings are the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from receiver.app import App, build_app
from receiver.config import load_config

NS = 1_000_000_000
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "anomaly" / "HDFS_100k" / "HDFS_5k.log"
BATCH = 100
SENDERS = 10
_LINE = re.compile(r"^(\d{6}) (\d{6}) (\d+) (INFO|WARN|ERROR) (.*)$")
_SEVERITY = {"INFO": 9, "WARN": 13, "ERROR": 17}


def hdfs_requests() -> list[bytes]:
    """OTLP/HTTP bodies of 100 records each, in file order. Each record carries the line's time and,
    as the Collector's filelog receiver stamps lines when it reads them, an increasing observed time."""
    assert DATA.is_file(), f"dataset missing: {DATA} (../shared/datasets beside the repo)"
    records = []
    read_at = time.time_ns()
    with open(DATA) as f:
        for i, line in enumerate(f):
            m = _LINE.match(line.rstrip("\n"))
            assert m, line
            t = dt.datetime.strptime(m[1] + m[2], "%y%m%d%H%M%S").replace(tzinfo=dt.UTC)
            records.append(LogRecord(
                time_unix_nano=int(t.timestamp()) * NS, observed_time_unix_nano=read_at + i,
                severity_number=_SEVERITY[m[4]], severity_text=m[4],  # type: ignore[arg-type]
                body=AnyValue(string_value=m[5])))
    assert len(records) == 4519
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="hdfs"))])
    return [ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=resource, scope_logs=[ScopeLogs(log_records=records[i:i + BATCH])])]).SerializeToString()
        for i in range(0, len(records), BATCH)]


class RunningApp:
    """The app as `serve` runs it, on free ports, with session windows by block id."""

    def __init__(self, tmp: Path) -> None:
        self.app: App = build_app(load_config(overrides={
            "server": {"llm": "off", "data_dir": str(tmp)},
            "otlp": {"grpc_endpoint": "127.0.0.1:0", "http_endpoint": "127.0.0.1:0"},
            "api": {"endpoint": "127.0.0.1:0"},
            "logs": {"windows": {"session_key": "regex", "session_regex": r"blk_-?\d+",
                                 "session_gap_s": 3600}},
        }, environ={}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.app.api.port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def export(self, body: bytes, deadline: float) -> None:
        """POST /v1/logs; on 503 wait the Retry-After the receiver asks for and send again, as the
        Collector's retry_on_failure does, until the deadline."""
        url = f"http://127.0.0.1:{self.app.otlp.http_port}/v1/logs"
        while True:
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    assert r.status == 200
                    return
            except urllib.error.HTTPError as e:
                if e.code != 503 or time.monotonic() > deadline:
                    raise
                retry_after = float(e.headers.get("Retry-After") or 1)
                time.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))

    def total(self, name: str) -> float:
        return sum(s.value for m in self.app.registry.collect() for s in m.samples if s.name == name)


@dataclass
class Outcome:
    accepted: float
    processed: float
    late: float
    late_sessions: float
    findings: set[tuple[str, str, str, str, int]]


def run(tmp: Path, bodies: list[bytes], waves: list[list[int]]) -> Outcome:
    """Send `bodies`: each wave's requests concurrently (one sender each, released together), the
    next wave once the last one is answered; then flush and read what the app found."""
    app = RunningApp(tmp)
    try:
        deadline = time.monotonic() + 120
        for wave in waves:
            start = threading.Barrier(len(wave))
            errors: list[BaseException] = []

            def send(i: int, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
                try:
                    start.wait(30)
                    app.export(bodies[i], deadline)
                except BaseException as e:  # noqa: BLE001 - reported by the test thread below
                    errors.append(e)

            threads = [threading.Thread(target=send, args=(i,)) for i in wave]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
        flushed = app.api("/api/v1/flush", "POST")
        assert flushed["drained"] is True
        findings = app.api("/api/v1/findings?limit=1000&event_name=anomaly.detected")
        return Outcome(
            accepted=app.total("otelcol_receiver_accepted_log_records_total"),
            processed=app.total("logs_stage_records_total"),
            late=app.total("log_window_late_events_total"),
            late_sessions=app.total("log_window_late_session_events_total"),
            findings={(f["anomaly.type"], f["anomaly.service"], f["anomaly.window.kind"],
                       str(f["anomaly.window.key"]), int(f["anomaly.window.start"])) for f in findings},
        )
    finally:
        app.stop()


def test_concurrent_out_of_order_senders_lose_nothing_and_find_the_same(tmp_path: Path) -> None:
    bodies = hdfs_requests()
    in_order = run(tmp_path / "in_order", bodies, [[i] for i in range(len(bodies))])
    rnd = random.Random(9)
    waves = []
    for start in range(0, len(bodies), SENDERS):
        wave = list(range(start, min(start + SENDERS, len(bodies))))
        rnd.shuffle(wave)
        waves.append(wave)
    assert any(w != sorted(w) for w in waves)
    shuffled = run(tmp_path / "shuffled", bodies, waves)
    print(f"in order: {in_order.late:.0f} late, {len(in_order.findings)} findings; "
          f"{SENDERS} concurrent senders: {shuffled.late:.0f} late, {len(shuffled.findings)} findings")
    for outcome in (in_order, shuffled):
        assert outcome.accepted == outcome.processed == 4519
        assert outcome.late == outcome.late_sessions == 0
    assert in_order.findings, "the in-order run found nothing: nothing to compare"
    assert shuffled.findings == in_order.findings
