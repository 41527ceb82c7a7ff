"""TLS and mTLS on both transports, with a CA, server and client certificates made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExportResult

from receiver.errors import ConfigError
from receiver.otlp import OtlpConfig, TlsConfig
from tests.otlp_support import RunningReceiver, Sink, local_config, make_spans


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer_key, issuer_name: x509.Name, key, *, ca: bool = False, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, _name("test-ca"), ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", ca_key, ca.subject, srv_key, server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("client", ca_key, ca.subject, cli_key)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("other-ca", other_ca_key, _name("other-ca"), other_ca_key, ca=True)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert("rogue", other_ca_key, other_ca.subject, rogue_key)
    return {
        "ca": _write(d / "ca.pem", cert=ca),
        "server_cert": _write(d / "server.pem", cert=srv),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", cert=cli),
        "client_key": _write(d / "client.key", key=cli_key),
        "rogue_cert": _write(d / "rogue.pem", cert=rogue),
        "rogue_key": _write(d / "rogue.key", key=rogue_key),
    }


def _read(p: str) -> bytes:
    return Path(p).read_bytes()


def _session() -> requests.Session:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify (psf/requests#3829);
    # without env trust the exporter's certificate_file is what gets used.
    s = requests.Session()
    s.trust_env = False
    return s


def _req() -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x")
    return req


def test_tls_both_transports_with_sdk_exporters(pki: dict[str, str]) -> None:
    sink = Sink()
    cfg = local_config(tls=TlsConfig(cert_file=pki["server_cert"], key_file=pki["server_key"]))
    spans = make_spans(("a", "b"), per_service=2)
    with RunningReceiver(cfg, sink, sink) as rr:
        creds = grpc.ssl_channel_credentials(root_certificates=_read(pki["ca"]))
        ex = OTLPSpanExporter(endpoint=f"localhost:{rr.receiver.grpc_port}", credentials=creds)
        assert ex.export(spans) == SpanExportResult.SUCCESS
        hx = HttpSpanExporter(
            endpoint=f"https://127.0.0.1:{rr.receiver.http_port}/v1/traces",
            certificate_file=pki["ca"],
            session=_session(),
        )
        assert hx.export(spans) == SpanExportResult.SUCCESS
        assert len(sink.spans()) == 2 * len(spans)
        # plaintext clients are refused on both ports
        with grpc.insecure_channel(rr.grpc_target) as ch, pytest.raises(grpc.RpcError) as ei:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(_req(), timeout=3)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(
                rr.http_base + "/v1/traces",
                data=b"",
                headers={"Content-Type": "application/x-protobuf"},
                timeout=5,
            )
        assert len(sink.spans()) == 2 * len(spans)


def test_mtls_requires_a_client_certificate_from_the_ca(pki: dict[str, str]) -> None:
    sink = Sink()
    cfg = local_config(
        tls=TlsConfig(cert_file=pki["server_cert"], key_file=pki["server_key"], client_ca_file=pki["ca"])
    )
    spans = make_spans(("a", "b"), per_service=1)
    with RunningReceiver(cfg, sink, sink) as rr:
        target = f"localhost:{rr.receiver.grpc_port}"
        url = f"https://localhost:{rr.receiver.http_port}/v1/traces"
        good = grpc.ssl_channel_credentials(
            _read(pki["ca"]), _read(pki["client_key"]), _read(pki["client_cert"])
        )
        assert OTLPSpanExporter(endpoint=target, credentials=good).export(spans) == SpanExportResult.SUCCESS
        hx = HttpSpanExporter(
            endpoint=url,
            certificate_file=pki["ca"],
            client_certificate_file=pki["client_cert"],
            client_key_file=pki["client_key"],
            session=_session(),
        )
        assert hx.export(spans) == SpanExportResult.SUCCESS
        assert len(sink.spans()) == 2 * len(spans)

        # no client certificate / a certificate from another CA: handshake refused on both transports
        for creds in (
            grpc.ssl_channel_credentials(_read(pki["ca"])),
            grpc.ssl_channel_credentials(_read(pki["ca"]), _read(pki["rogue_key"]), _read(pki["rogue_cert"])),
        ):
            with grpc.secure_channel(target, creds) as ch, pytest.raises(grpc.RpcError) as ei:
                trace_service_pb2_grpc.TraceServiceStub(ch).Export(_req(), timeout=3)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        for cert in (None, (pki["rogue_cert"], pki["rogue_key"])):
            with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
                _session().post(
                    url,
                    data=b"",
                    headers={"Content-Type": "application/x-protobuf"},
                    verify=pki["ca"],
                    cert=cert,
                    timeout=5,
                )
        assert len(sink.spans()) == 2 * len(spans)


def test_https_uses_at_least_tls12(pki: dict[str, str]) -> None:
    cfg = local_config(
        tls=TlsConfig(cert_file=pki["server_cert"], key_file=pki["server_key"], min_version="1.3")
    )
    with RunningReceiver(cfg, Sink(), Sink()) as rr:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", rr.receiver.http_port), timeout=5) as sock:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(sock, server_hostname="localhost").close()


def test_tls_config_validation(pki: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="otlp.tls: cert_file and key_file"):
        OtlpConfig(tls=TlsConfig(cert_file=pki["server_cert"])).validate()
    with pytest.raises(ConfigError, match="otlp.tls.client_ca_file"):
        OtlpConfig(tls=TlsConfig(client_ca_file=pki["ca"])).validate()
    with pytest.raises(ConfigError, match="otlp.tls.key_file: file not found"):
        OtlpConfig(tls=TlsConfig(cert_file=pki["server_cert"], key_file="/nope.key")).validate()
    with pytest.raises(ConfigError, match="otlp.tls.min_version"):
        OtlpConfig(tls=TlsConfig(min_version="1.0")).validate()
