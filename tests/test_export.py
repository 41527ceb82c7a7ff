"""FindingsExporter against a real OTLP gRPC server started by the test (loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.logs.v1 import logs_pb2
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.export import ExportConfig, FindingsExporter
from receiver.export.encode import dump_finding, finding_span_id, load_finding
from receiver.model import (
    A_CONFIDENCE,
    A_DETECTOR,
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_EVIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
)
from tests.otlp_recorder import Fault, OtlpRecorder, attrs

ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metric(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


@pytest.fixture
def server():
    srv = OtlpRecorder()
    yield srv
    srv.stop()


def make_exporter(endpoint: str, tmp_path: Path, **kw: Any) -> tuple[FindingsExporter, CollectorRegistry]:
    reg = CollectorRegistry()
    opts: dict[str, Any] = dict(endpoint=endpoint, queue_dir=str(tmp_path / "q"),
                                retry_initial_backoff_s=0.02, retry_max_backoff_s=0.2, timeout_s=5.0)
    opts.update(kw)
    return FindingsExporter(ExportConfig(**opts), reg), reg


def anomaly(i: int = 0, **kw: Any) -> Finding:
    return Finding(
        event_name=EVENT_ANOMALY,
        attributes={
            A_SERVICE: "checkout",
            A_SEVERITY: "high",
            A_TYPE: "error_burst",
            A_CONFIDENCE: 0.875,
            A_DETECTOR: "tier0",
            A_WINDOW_START: 1_700_000_000_000_000_000 + i,
            A_WINDOW_END: 1_700_000_060_000_000_000 + i,
            A_EVIDENCE: ["ERROR payment timeout after <NUM>ms", "ERROR db pool exhausted"],
            "anomaly.index": i,
        },
        body=f"checkout error burst #{i}",
        time_ns=1_700_000_061_000_000_000 + i,
        **kw,
    )


def rca() -> Finding:
    return Finding(
        event_name=EVENT_RCA,
        attributes={
            R_ROOT_CAUSE: "payment-db",
            R_CANDIDATES: ["payment-db", "payment", "checkout"],
            R_PATH: ["payment-db", "payment", "checkout", "frontend"],
            R_CONFIDENCE: 0.7,
            R_EVIDENCE: ["payment->payment-db errors 41/50", "db pool exhausted"],
            A_SEVERITY: "critical",
        },
        body="payment-db connection pool exhausted",
        time_ns=1_700_000_062_000_000_000,
    )


# --- tests ---------------------------------------------------------------------------------
def test_log_records_carry_the_contract(server: OtlpRecorder, tmp_path: Path) -> None:
    exp, reg = make_exporter(server.endpoint, tmp_path, headers={"x-tenant": "acme"})
    exp.start()
    try:
        a, r = anomaly(1), rca()
        exp.consume_findings([a, r])
        assert exp.flush(20)
    finally:
        exp.shutdown()
    recs = server.log_records()
    assert [x.event_name for x in recs] == [EVENT_ANOMALY, EVENT_RCA]
    got = attrs(recs[0].attributes)
    assert got == a.attributes
    assert isinstance(got[A_CONFIDENCE], float) and isinstance(got[A_WINDOW_START], int)
    ev = next(kv for kv in recs[0].attributes if kv.key == A_EVIDENCE)
    assert ev.value.WhichOneof("value") == "array_value"
    assert [x.WhichOneof("value") for x in ev.value.array_value.values] == ["string_value"] * 2
    assert recs[0].body.string_value == a.body
    assert recs[0].time_unix_nano == a.time_ns
    assert recs[0].severity_number == logs_pb2.SEVERITY_NUMBER_ERROR and recs[0].severity_text == "high"
    assert recs[0].trace_id == b"" and recs[0].span_id == b""
    assert attrs(recs[1].attributes) == r.attributes
    assert recs[1].severity_number == logs_pb2.SEVERITY_NUMBER_FATAL
    rl = server.logs[0].resource_logs[0]
    assert attrs(rl.resource.attributes)["service.name"] == "llm-log-analyzer"
    assert rl.scope_logs[0].scope.name == "llm-log-analyzer"
    assert server.traces == []  # nothing trace-tied
    assert all(md.get("x-tenant") == "acme" for md in server.metadata)
    assert metric(reg, "llm_log_analyzer_export_sent_total", signal="logs") == 2
    assert metric(reg, "llm_log_analyzer_export_queue_size") == 0


def test_trace_tied_finding_becomes_span_with_event(server: OtlpRecorder, tmp_path: Path) -> None:
    exp, reg = make_exporter(server.endpoint, tmp_path)
    exp.start()
    tied = anomaly(2, trace_id=TRACE_ID, span_id=SPAN_ID)
    untied = anomaly(3)
    exp.consume_findings([tied, untied])
    assert exp.flush(20)
    exp.shutdown()
    recs = server.log_records()
    assert len(recs) == 2
    assert recs[0].trace_id.hex() == TRACE_ID and recs[0].span_id.hex() == SPAN_ID
    spans = server.spans()
    assert len(spans) == 1
    span = spans[0]
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == SPAN_ID
    assert span.span_id == finding_span_id(tied) and span.span_id.hex() != SPAN_ID
    assert span.name == EVENT_ANOMALY
    assert [e.name for e in span.events] == [EVENT_ANOMALY]
    assert attrs(span.events[0].attributes) == tied.attributes
    assert span.events[0].time_unix_nano == tied.time_ns
    rs = server.traces[0].resource_spans[0]
    assert attrs(rs.resource.attributes)["service.name"] == "llm-log-analyzer"
    assert metric(reg, "llm_log_analyzer_export_sent_total", signal="traces") == 1


def test_gzip_on_the_wire(tmp_path: Path) -> None:
    """A TCP proxy reads the gRPC length-prefixed message header in the client's HTTP/2 DATA frames:
    its first byte is the compressed flag (1 = the message is gzip-compressed per grpc-encoding)."""
    backend = OtlpRecorder()
    try:
        flags = {}
        for compression in ("gzip", "none"):
            proxy = FrameSniffingProxy(backend.port)
            exp, _ = make_exporter(f"127.0.0.1:{proxy.port}", tmp_path / compression, compression=compression)
            exp.start()
            exp.consume_findings([anomaly(i) for i in range(20)])
            assert exp.flush(20)
            exp.shutdown()
            proxy.close()
            flags[compression] = proxy.compressed_flags
        assert flags["gzip"] and set(flags["gzip"]) == {1}
        assert flags["none"] and set(flags["none"]) == {0}
        assert len(backend.log_records()) == 40
    finally:
        backend.stop()


class FrameSniffingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.compressed_flags: list[int] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, sniff: bool) -> None:
        buf = b""
        seen_streams: set[int] = set()
        preface_done = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if not sniff:
                    continue
                buf += data
                if not preface_done:
                    if len(buf) < 24:
                        continue
                    assert buf[:24] == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                    buf, preface_done = buf[24:], True
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    ftype, stream = buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    if len(buf) < 9 + length:
                        break
                    payload = buf[9:9 + length]
                    buf = buf[9 + length:]
                    if ftype == 0 and payload and stream not in seen_streams:
                        seen_streams.add(stream)
                        self.compressed_flags.append(payload[0])
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def test_retry_honours_retry_info_and_retryable_codes(server: OtlpRecorder, tmp_path: Path) -> None:
    server.faults.extend([
        Fault(grpc.StatusCode.UNAVAILABLE, 0.4, "details"),
        Fault(grpc.StatusCode.UNAVAILABLE, 0.3, "retryinfo-bin"),
        Fault(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.2, "details"),  # retryable only because of RetryInfo
    ])
    exp, reg = make_exporter(server.endpoint, tmp_path,
                             retry_initial_backoff_s=0.01, retry_max_backoff_s=0.02)
    exp.start()
    f = anomaly(7)
    exp.consume_findings([f])
    assert exp.flush(20)
    exp.shutdown()
    times = [t for _, t, _ in server.attempts]
    outcomes = [o for _, _, o in server.attempts]
    assert outcomes == ["UNAVAILABLE", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "OK"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # own backoff is <= 0.024 s; the waits must be at least what the server asked for
    assert gaps[0] >= 0.4 and gaps[1] >= 0.3 and gaps[2] >= 0.2
    assert metric(reg, "llm_log_analyzer_export_retried_total", signal="logs") == 3
    assert [r.event_name for r in server.log_records()] == [EVENT_ANOMALY]
    assert metric(reg, "llm_log_analyzer_export_sent_total", signal="logs") == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.UNAUTHENTICATED])
def test_permanent_errors_are_not_retried(server: OtlpRecorder, tmp_path: Path, code) -> None:
    server.faults.append(Fault(code))  # RESOURCE_EXHAUSTED here carries no RetryInfo
    exp, reg = make_exporter(server.endpoint, tmp_path)
    exp.start()
    exp.consume_findings([anomaly(1)])
    assert exp.flush(20)
    exp.consume_findings([anomaly(2)])
    assert exp.flush(20)
    exp.shutdown()
    assert [o for _, _, o in server.attempts] == [code.name, "OK"]
    assert metric(reg, "llm_log_analyzer_export_failed_total", signal="logs") == 1
    assert metric(reg, "llm_log_analyzer_export_retried_total", signal="logs") == 0
    assert [attrs(r.attributes)["anomaly.index"] for r in server.log_records()] == [2]


def test_downstream_down_then_up_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    exp, reg = make_exporter(f"127.0.0.1:{port}", tmp_path)
    exp.start()
    sent = [anomaly(i, trace_id=TRACE_ID, span_id=SPAN_ID) if i % 5 == 0 else anomaly(i) for i in range(60)]
    for i in range(0, 60, 10):
        exp.consume_findings(sent[i:i + 10])
    wait_for(lambda: metric(reg, "llm_log_analyzer_export_retried_total", signal="logs") >= 3, what="retries")
    assert exp.queue_size() == 60
    server = OtlpRecorder(port)
    try:
        assert exp.flush(30)
        exp.shutdown()
        idx = [attrs(r.attributes)["anomaly.index"] for r in server.log_records()]
        assert sorted(idx) == list(range(60))
        assert len(server.spans()) == 12
        assert metric(reg, "llm_log_analyzer_export_sent_total", signal="logs") == 60
        assert metric(reg, "llm_log_analyzer_export_dropped_total", reason="queue_full") == 0
    finally:
        server.stop()


def test_restart_resends_unsent_after_graceful_shutdown(tmp_path: Path) -> None:
    port = free_port()
    exp, _ = make_exporter(f"127.0.0.1:{port}", tmp_path, shutdown_timeout_s=0.2)
    exp.start()
    exp.consume_findings([anomaly(i) for i in range(5)])
    exp.shutdown()
    server = OtlpRecorder(port)
    try:
        exp2, reg2 = make_exporter(f"127.0.0.1:{port}", tmp_path)
        assert metric(reg2, "llm_log_analyzer_export_queue_size") == 5
        exp2.start()
        assert exp2.flush(20)
        exp2.shutdown()
        assert sorted(attrs(r.attributes)["anomaly.index"] for r in server.log_records()) == list(range(5))
    finally:
        server.stop()


CRASH_CHILD = r"""
import sys
from receiver.export import ExportConfig, FindingsExporter
from receiver.model import Finding
exp = FindingsExporter(ExportConfig(endpoint=sys.argv[1], queue_dir=sys.argv[2],
                                    retry_initial_backoff_s=0.05, retry_max_backoff_s=0.1))
exp.start()
for i in range(int(sys.argv[3])):
    exp.consume_findings([Finding(event_name="anomaly.detected", attributes={"anomaly.index": i},
                                  trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7")])
print("queued", flush=True)
sys.stdin.read()
"""


def test_crash_after_consume_loses_nothing(tmp_path: Path) -> None:
    """A child process queues findings (downstream unreachable) and is SIGKILLed; a new exporter on the
    same queue_dir delivers every one of them, log records and spans."""
    port = free_port()
    qdir = tmp_path / "q"
    child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, f"127.0.0.1:{port}", str(qdir), "40"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"queued"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    server = OtlpRecorder(port)
    try:
        exp, _ = make_exporter(f"127.0.0.1:{port}", tmp_path)
        assert exp.queue_size() == 40
        exp.start()
        assert exp.flush(20)
        exp.shutdown()
        assert sorted(attrs(r.attributes)["anomaly.index"] for r in server.log_records()) == list(range(40))
        assert len(server.spans()) == 40
    finally:
        server.stop()


def test_signals_acked_separately_across_restart(tmp_path: Path) -> None:
    """Log records accepted, spans refused retryably: after a restart only the spans are re-sent."""
    first = OtlpRecorder()
    port = first.port
    first.always_fail["traces"] = grpc.StatusCode.UNAVAILABLE
    exp, reg = make_exporter(first.endpoint, tmp_path, shutdown_timeout_s=0.2)
    exp.start()
    exp.consume_findings([anomaly(i, trace_id=TRACE_ID, span_id=SPAN_ID) for i in range(3)])
    wait_for(lambda: metric(reg, "llm_log_analyzer_export_retried_total", signal="traces") >= 2,
             what="retries")
    exp.shutdown()
    first.stop()
    assert len(first.log_records()) == 3 and first.spans() == []
    second = OtlpRecorder(port)
    try:
        exp2, _ = make_exporter(second.endpoint, tmp_path)
        assert exp2.queue_size() == 3
        exp2.start()
        assert exp2.flush(20)
        exp2.shutdown()
        assert second.log_records() == []
        assert len(second.spans()) == 3
    finally:
        second.stop()


def test_disk_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    port = free_port()
    exp, reg = make_exporter(f"127.0.0.1:{port}", tmp_path, queue_max_items=5)
    for i in range(8):  # not started: everything stays queued
        exp.consume_findings([anomaly(i)])
    assert exp.queue_size() == 5
    assert metric(reg, "llm_log_analyzer_export_dropped_total", reason="queue_full") == 3
    exp.consume_findings([anomaly(100 + i) for i in range(7)])  # one batch larger than the cap
    assert exp.queue_size() == 5
    assert metric(reg, "llm_log_analyzer_export_dropped_total", reason="queue_full") == 3 + 5 + 2
    server = OtlpRecorder(port)
    try:
        exp.start()
        assert exp.flush(20)
        exp.shutdown()
        idx = [attrs(r.attributes)["anomaly.index"] for r in server.log_records()]
        assert idx == [102, 103, 104, 105, 106]  # the newest survive, in order
    finally:
        server.stop()


def test_byte_cap(tmp_path: Path) -> None:
    one = len(dump_finding(anomaly(0)))
    exp, reg = make_exporter(f"127.0.0.1:{free_port()}", tmp_path, queue_max_bytes=one * 3 + one // 2)
    for i in range(6):
        exp.consume_findings([anomaly(i)])
    assert exp.queue_size() == 3
    assert metric(reg, "llm_log_analyzer_export_queue_bytes") <= one * 3 + one // 2
    assert metric(reg, "llm_log_analyzer_export_dropped_total", reason="queue_full") == 3
    exp.shutdown()


def test_queue_dir_is_locked_and_config_validated(tmp_path: Path) -> None:
    exp, _ = make_exporter("127.0.0.1:9", tmp_path)
    with pytest.raises(ConfigError, match="export.queue_dir"):
        make_exporter("127.0.0.1:9", tmp_path)
    exp.shutdown()
    exp.shutdown()  # idempotent
    again, _ = make_exporter("127.0.0.1:9", tmp_path)  # lock released
    again.shutdown()
    cases = [
        ({"endpoint": "nohost"}, "export.endpoint"),
        ({"compression": "zstd"}, "export.compression"),
        ({"retry_jitter": 1.5}, "export.retry_jitter"),
        ({"queue_max_items": 0}, "export.queue_max_items"),
        ({"ca_file": "/x.pem"}, "export.insecure"),
        ({"cert_file": "/c.pem"}, "export.cert_file"),
    ]
    for bad, key in cases:
        with pytest.raises(ConfigError, match=key):
            ExportConfig(endpoint=bad.pop("endpoint", "127.0.0.1:4317"), **bad).validate()


def test_disabled_exporter_is_a_noop(tmp_path: Path) -> None:
    exp = FindingsExporter(ExportConfig(queue_dir=str(tmp_path / "never")))
    exp.start()
    exp.consume_findings([anomaly(1)])
    assert exp.flush(1) and exp.queue_size() == 0
    exp.shutdown()
    assert not (tmp_path / "never").exists()


def test_queue_payload_roundtrip_keeps_types() -> None:
    f = Finding(event_name=EVENT_RCA, attributes={"a": 1, "b": 1.0, "c": True, "d": ["x"], "e": float("nan"),
                                                  "f": "s"}, trace_id=TRACE_ID, span_id=SPAN_ID, body="é")
    g = load_finding(dump_finding(f))
    assert (g.id, g.trace_id, g.span_id, g.body) == (f.id, f.trace_id, f.span_id, f.body)
    assert g.time_ns == f.time_ns
    assert [type(g.attributes[k]) for k in "abcdf"] == [int, float, bool, list, str]
    assert g.attributes["e"] != g.attributes["e"]  # NaN survives


# --- TLS / mTLS with certificates made here ------------------------------------------------------
def _make_pki(tmp: Path) -> dict[str, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test-ca")).issuer_name(name("test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    roles = (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH))
    for role, usage in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(f"test-{role}")).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if role == "server":
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        out[f"{role}_cert"] = tmp / f"{role}.pem"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}_key"] = write_key(key, tmp / f"{role}.key")
    return out


def test_mtls_export(tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    creds = grpc.ssl_server_credentials([(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
                                        root_certificates=pki["ca"].read_bytes(), require_client_auth=True)
    server = OtlpRecorder(credentials=creds)
    try:
        # without a client certificate the handshake fails: retried, nothing delivered
        anon, reg_anon = make_exporter(server.endpoint, tmp_path / "anon", insecure=False,
                                       ca_file=str(pki["ca"]), shutdown_timeout_s=0.1)
        anon.start()
        anon.consume_findings([anomaly(1)])
        wait_for(lambda: metric(reg_anon, "llm_log_analyzer_export_retried_total", signal="logs") >= 1,
                 what="tls retry")
        anon.shutdown()
        assert server.log_records() == []
        exp, reg = make_exporter(server.endpoint, tmp_path / "mtls", insecure=False, ca_file=str(pki["ca"]),
                                 cert_file=str(pki["client_cert"]), key_file=str(pki["client_key"]))
        exp.start()
        exp.consume_findings([anomaly(2)])
        assert exp.flush(20)
        exp.shutdown()
        assert [attrs(r.attributes)["anomaly.index"] for r in server.log_records()] == [2]
    finally:
        server.stop()


def test_corrupt_queue_file_is_a_clear_error(tmp_path: Path) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / "findings.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="export.queue_dir: cannot open the export queue"):
        make_exporter("127.0.0.1:9", tmp_path)
    (qdir / "findings.sqlite3").unlink()
    exp, _ = make_exporter("127.0.0.1:9", tmp_path)  # the lock was released
    exp.shutdown()


def test_queue_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    exp, reg = make_exporter("127.0.0.1:9", tmp_path)
    assert exp._queue is not None
    exp._queue._db.close()  # simulate an I/O failure of the queue file: every statement now fails
    exp.consume_findings([anomaly(1), anomaly(2)])  # must not raise into the pipeline
    assert metric(reg, "llm_log_analyzer_export_dropped_total", reason="disk_error") == 2
    exp.shutdown()
