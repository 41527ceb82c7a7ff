"""Configuration of the OTLP receive path (gRPC :4317 and HTTP :4318), after the Collector's otlpreceiver."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from receiver.component import StageConfig, non_negative, positive, require

MIB = 1024 * 1024


def _check_endpoint(value: str, key: str) -> None:
    """An endpoint is "host:port" (port 0 = any free port) or "" to disable that transport."""
    if value == "":
        return
    host, sep, port = value.rpartition(":")
    require(bool(sep) and bool(host), key, f"must be HOST:PORT or empty to disable, got {value!r}")
    require(port.isdigit() and 0 <= int(port) <= 65535, key, f"port must be 0..65535, got {port!r}")


@dataclass
class AuthConfig(StageConfig):
    """Bearer-token auth on both transports (`authorization: Bearer <token>`).

    Auth is on when `bearer_tokens` is non-empty or `token_file` is set (one token per line, blank
    lines and `#` comments ignored). The file is read once at start.
    """

    bearer_tokens: list[str] = field(default_factory=list)
    token_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.bearer_tokens) or bool(self.token_file)

    def load_tokens(self) -> list[str]:
        tokens = [t for t in self.bearer_tokens if t]
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        tokens.append(line)
        return tokens

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.bearer_tokens, list), "otlp.auth.bearer_tokens", "must be a list of strings")
        for t in self.bearer_tokens:
            require(
                isinstance(t, str) and t.strip() != "" and t == t.strip(),
                "otlp.auth.bearer_tokens",
                "tokens must be non-empty strings without surrounding whitespace",
            )
        if self.token_file:
            require(
                os.path.isfile(self.token_file), "otlp.auth.token_file", f"file not found: {self.token_file}"
            )
            require(bool(self.load_tokens()), "otlp.auth.token_file", f"no tokens in {self.token_file}")


@dataclass
class TlsConfig(StageConfig):
    """Server TLS on both transports. TLS is on when cert_file and key_file are set; mTLS (client
    certificate required and verified) when client_ca_file is set too."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    min_version: str = "1.2"

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def validate(self) -> None:
        super().validate()
        require(
            bool(self.cert_file) == bool(self.key_file),
            "otlp.tls",
            "cert_file and key_file must be set together",
        )
        require(
            not self.client_ca_file or bool(self.cert_file),
            "otlp.tls.client_ca_file",
            "mTLS needs cert_file and key_file as well",
        )
        for key in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, key)
            require(not path or os.path.isfile(path), f"otlp.tls.{key}", f"file not found: {path}")
        require(
            self.min_version in ("1.2", "1.3"),
            "otlp.tls.min_version",
            f"must be '1.2' or '1.3', got {self.min_version!r}",
        )


@dataclass
class OtlpConfig(StageConfig):
    grpc_endpoint: str = "127.0.0.1:4317"
    http_endpoint: str = "127.0.0.1:4318"
    # Limit on one request AFTER decompression, both transports (spec recommends 64 MiB).
    max_recv_msg_size_mib: int = 64
    # gRPC: 0 = grpcio default (unlimited concurrent streams per connection).
    max_concurrent_streams: int = 0
    traces_url_path: str = "/v1/traces"
    logs_url_path: str = "/v1/logs"
    # Delay suggested to clients (RetryInfo / Retry-After) when the pipeline fails without saying how
    # long to wait; a RetryableError from the queue carries its own delay.
    retry_after_s: float = 1.0
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def max_recv_bytes(self) -> int:
        return int(self.max_recv_msg_size_mib) * MIB

    def validate(self) -> None:
        super().validate()
        _check_endpoint(self.grpc_endpoint, "otlp.grpc_endpoint")
        _check_endpoint(self.http_endpoint, "otlp.http_endpoint")
        require(
            bool(self.grpc_endpoint or self.http_endpoint),
            "otlp",
            "at least one of grpc_endpoint / http_endpoint must be set",
        )
        require(
            isinstance(self.max_recv_msg_size_mib, int) and not isinstance(self.max_recv_msg_size_mib, bool),
            "otlp.max_recv_msg_size_mib",
            "must be an integer",
        )
        positive(self.max_recv_msg_size_mib, "otlp.max_recv_msg_size_mib")
        require(self.max_recv_msg_size_mib <= 2047, "otlp.max_recv_msg_size_mib", "must be < 2048 (2 GiB)")
        non_negative(self.max_concurrent_streams, "otlp.max_concurrent_streams")
        for key in ("traces_url_path", "logs_url_path"):
            path = getattr(self, key)
            require(
                isinstance(path, str) and path.startswith("/"),
                f"otlp.{key}",
                f"must start with '/', got {path!r}",
            )
        require(
            self.traces_url_path != self.logs_url_path,
            "otlp.logs_url_path",
            "must differ from traces_url_path",
        )
        positive(self.retry_after_s, "otlp.retry_after_s")
