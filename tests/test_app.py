"""The whole pipeline as `serve` builds it: SDK exporters in, graph/findings/metrics out, findings
exported to a real OTLP gRPC server, the CLI's config errors and the process lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from proto_gen.llm_log_analyzer.v1 import analyzer_pb2, analyzer_pb2_grpc
from receiver.app import App, build_app
from receiver.config import load_config
from receiver.model import A_CONFIDENCE, A_EVIDENCE, A_SERVICE, A_SEVERITY, EVENT_ANOMALY, Finding
from tests.otlp_recorder import OtlpRecorder, attrs
from tests.otlp_support import make_spans

REPO = Path(__file__).resolve().parents[1]


class RunningApp:
    """The app on its own event loop in a thread, as `serve` runs it, on free ports."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "server": {"llm": "off", "data_dir": str(tmp / "var")},
            "otlp": {"grpc_endpoint": "127.0.0.1:0", "http_endpoint": "127.0.0.1:0"},
            "api": {"endpoint": "127.0.0.1:0"},
            "graph": {"store_ttl_s": 0.5},
        }
        for k, v in overrides.items():
            base.setdefault(k, {}).update(v)
        self.app: App = build_app(load_config(overrides=base, environ={}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(60)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.app.api.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as r:
            body = r.read().decode()
        return json.loads(body) if path.startswith(("/api", "/health", "/ready")) else body

    def post(self, path: str, body: bytes = b"") -> Any:
        req = urllib.request.Request(self.url(path), data=body, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def recorder() -> Iterator[OtlpRecorder]:
    rec = OtlpRecorder()
    yield rec
    rec.stop()


@pytest.fixture
def running(tmp_path: Path, recorder: OtlpRecorder) -> Iterator[RunningApp]:
    app = RunningApp(tmp_path, export={"endpoint": recorder.endpoint, "retry_initial_backoff_s": 0.1})
    yield app
    app.stop()


def db_spans() -> list[Any]:
    """checkout SERVER -> checkout CLIENT to PostgreSQL (db.system/db.name), one failing."""
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("t")
    for i in range(4):
        with tracer.start_as_current_span("POST /order", kind=SpanKind.SERVER):
            with tracer.start_as_current_span("INSERT orders", kind=SpanKind.CLIENT) as db:
                db.set_attribute("db.system", "postgresql")
                db.set_attribute("db.name", "orders")
                if i == 0:
                    db.set_status(Status(StatusCode.ERROR, "deadlock"))
    tp.force_flush()
    spans = list(mem.get_finished_spans())
    tp.shutdown()
    return spans


def edge(graph: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    found = [e for e in graph["edges"] if e["source"] == source and e["target"] == target]
    assert found, f"no edge {source} -> {target} in {[(e['source'], e['target']) for e in graph['edges']]}"
    return found[0]


def test_sdk_traffic_builds_graph_metrics_and_api(running: RunningApp) -> None:
    check_sdk_traffic(running)


def test_span_stages_in_process_give_the_same_answers(tmp_path: Path) -> None:
    app = RunningApp(tmp_path, spanproc={"enabled": False})
    try:
        assert app.app.spans is None
        check_sdk_traffic(app)
    finally:
        app.stop()


def check_sdk_traffic(running: RunningApp) -> None:
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{running.app.otlp.grpc_port}", insecure=True)
    chain = make_spans(("frontend", "checkout", "payment"), per_service=3, error_every=5)
    assert exporter.export(chain).name == "SUCCESS"
    assert exporter.export(db_spans()).name == "SUCCESS"
    assert exporter.export(chain).name == "SUCCESS"  # an OTLP retry re-sends: must not double count
    exporter.shutdown()
    time.sleep(0.6)  # past the pairing TTL, so root server spans become edges from `user`
    flushed = running.post("/api/v1/flush")
    assert flushed["drained"] is True

    graph = running.get("/api/v1/graph")
    fc = edge(graph, "frontend", "checkout")
    cp = edge(graph, "checkout", "payment")
    assert fc["calls"] == 3 and cp["calls"] == 3
    # error_every=5 marks the 5th server span: checkout in the second trace
    assert fc["errors"] == 1 and cp["errors"] == 0
    db = edge(graph, "checkout", "orders")
    assert db["connection_type"] == "database" and db["calls"] == 4 and db["errors"] == 1
    user = edge(graph, "user", "frontend")
    assert user["calls"] == 3 and user["connection_type"] == "virtual_node"

    metrics = running.get("/metrics")
    assert ('traces_service_graph_request_total{client="frontend",connection_type="",server="checkout"} 3.0'
            in metrics)
    assert "traces_service_graph_request_server_seconds_bucket" in metrics
    assert 'otelcol_receiver_accepted_spans' in metrics
    assert running.get("/health") == {"status": "ok"}
    assert running.get("/ready")["ready"] is True


def test_findings_are_stored_listed_streamed_and_exported(running: RunningApp, recorder: OtlpRecorder
                                                          ) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.app.otlp.grpc_port}")
    stub = analyzer_pb2_grpc.AnalyzerStub(channel)
    watch = stub.WatchFindings(analyzer_pb2.WatchFindingsRequest())
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(next(iter(watch))), daemon=True)
    reader.start()
    time.sleep(0.5)  # the subscription is registered before the finding is published

    finding = Finding(EVENT_ANOMALY, {A_SERVICE: "checkout", A_SEVERITY: "high", A_CONFIDENCE: 0.91,
                                      A_EVIDENCE: ["ERROR connection refused", "ERROR retry 3/3"]},
                      body="test-made finding", trace_id="0af7651916cd43dd8448eb211c80319c",
                      span_id="b7ad6b7169203331")
    running.app.findings_out.consume_findings([finding])

    listed = running.get("/api/v1/findings?event_name=anomaly.detected")
    assert [f["id"] for f in listed] == [finding.id]
    assert listed[0]["anomaly.evidence"] == ["ERROR connection refused", "ERROR retry 3/3"]
    resp = stub.ListFindings(analyzer_pb2.ListFindingsRequest(limit=10))
    assert [f.id for f in resp.findings] == [finding.id]

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (recorder.log_records() and recorder.spans()):
        time.sleep(0.1)
    (record,) = recorder.log_records()
    assert record.event_name == EVENT_ANOMALY
    a = attrs(record.attributes)
    assert a[A_SERVICE] == "checkout" and a[A_SEVERITY] == "high" and a[A_CONFIDENCE] == 0.91
    (span,) = recorder.spans()
    assert span.trace_id.hex() == finding.trace_id and span.parent_span_id.hex() == finding.span_id
    assert [e.name for e in span.events] == [EVENT_ANOMALY]

    reader.join(10)
    assert got and got[0].id == finding.id
    watch.cancel()
    channel.close()


def test_state_survives_restart(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1 import logs_pb2

    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "billing"
    sl = rl.scope_logs.add()
    t0 = time.time_ns()
    for i in range(30):
        r: logs_pb2.LogRecord = sl.log_records.add()
        r.time_unix_nano = t0 + i * 1_000_000
        r.body.string_value = f"invoice {1000 + i} sent to customer {i % 7} in {10 + i} ms"
    first = RunningApp(tmp_path)
    first.app.queue.consume_logs(req)
    first.post("/api/v1/flush")
    before = first.app.logs.stage.miner.templates("billing")
    first.stop()
    assert before, "the miner learned no template"
    second = RunningApp(tmp_path)
    try:
        assert second.app.logs.stage.miner.templates("billing") == before
    finally:
        second.stop()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_config_errors_name_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  llm: off\notlp:\n  grpc_endpoint: 127.0.0.1:4317\n  max_recv_msg_size: 8\n")
    r = subprocess.run([sys.executable, "-m", "receiver", "config", "--config", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert f"{bad}:5: otlp.max_recv_msg_size: unknown setting" in r.stderr
    bad.write_text("graph:\n  store_ttl_s: -1\n")
    r = subprocess.run([sys.executable, "-m", "receiver", "config", "--config", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "graph" in r.stderr and "store_ttl_s" in r.stderr and ":2:" in r.stderr
    bad.write_text("server:\n  llm: 'off'\nspanproc:\n  signals: false\n")
    r = subprocess.run([sys.executable, "-m", "receiver", "config", "--config", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "spanproc.signals: must be true" in r.stderr, r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("server:\n  llm: 'off'\ngraph:\n  store_ttl_s: 3\n")
    r = subprocess.run([sys.executable, "-m", "receiver", "config", "--config", str(good), "--http",
                        "127.0.0.1:9999"], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={**os.environ, "LLA_OTLP__MAX_RECV_MSG_SIZE_MIB": "8"})
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["graph"]["store_ttl_s"] == 3.0 and cfg["api"]["endpoint"] == "127.0.0.1:9999"
    assert cfg["otlp"]["max_recv_msg_size_mib"] == 8 and cfg["server"]["llm"] == "off"


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid, g in zip(out[::2], out[1::2], strict=True) if int(g) == pgid]


def test_serve_process_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    grpc_port, http_port, api_port = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--llm", "off", "--data-dir", str(tmp_path / "var"),
         "--otlp-grpc", f"127.0.0.1:{grpc_port}", "--otlp-http", f"127.0.0.1:{http_port}",
         "--http", f"127.0.0.1:{api_port}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ready", timeout=2) as r:
                    ready = json.loads(r.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert ready == {"ready": True, "detail": "ok"}, proc.stdout.read().decode() if proc.poll() else ready
        # systemd, Ctrl-C and `timeout` signal the whole process group, the span child included:
        # the parent must still shut down in order, restart nothing, and leave no process behind.
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        out = proc.stdout.read().decode()
        assert "died" not in out and "restart" not in out, out
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and group_members(proc.pid):
            time.sleep(0.2)
        assert group_members(proc.pid) == [], "processes left behind in the serve process group"
    finally:
        if proc.poll() is None:
            proc.kill()


DATASETS = REPO.parent / "shared" / "datasets"


def test_eval_commands_through_the_cli() -> None:
    assert DATASETS.is_dir(), f"datasets folder missing: {DATASETS} (../shared/datasets beside the repo)"
    r = subprocess.run([sys.executable, "-m", "receiver", "eval", "anomaly", "--data",
                        str(DATASETS / "anomaly" / "BGL_half1" / "BGL_half1.log"), "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"precision", "recall", "f1", "items"} <= set(out) and out["items"] == 160
    assert out["f1"] >= 0.9
    r = subprocess.run([sys.executable, "-m", "receiver", "eval", "parsing", "--data",
                        str(DATASETS / "loghub_2k"), "--json"], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["systems"]) == 12
    assert {"system", "ga", "fga", "pa", "templates", "lines_per_s"} <= set(out["systems"][0])
    assert out["average"]["ga"] >= 0.93 and out["average"]["fga"] >= 0.85 and out["average"]["pa"] >= 0.6
    r = subprocess.run([sys.executable, "-m", "receiver", "eval", "anomaly", "--data", "/nonexistent"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "nonexistent" in r.stderr
