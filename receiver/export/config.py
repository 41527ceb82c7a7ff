"""Configuration of the findings exporter (YAML section `export:`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.component import StageConfig, non_negative, positive, require

COMPRESSIONS = ("gzip", "none")


@dataclass
class ExportConfig(StageConfig):
    """Where and how findings leave as OTLP (gRPC) log records and finding spans.

    Queue overflow rule: the on-disk queue is capped by `queue_max_items` and `queue_max_bytes`.
    When a new batch would exceed a cap, the OLDEST queued findings are deleted to make room and
    counted in `llm_log_analyzer_export_dropped_total{reason="queue_full"}`; `consume_findings`
    never blocks and never raises for a full queue (the store keeps every finding anyway; the
    export queue only buffers delivery, and the newest findings matter most during an outage).
    """

    endpoint: str = ""  # host:port of an OTLP gRPC receiver; "" disables the exporter
    insecure: bool = True  # plaintext gRPC; False = TLS (system roots or ca_file)
    ca_file: str = ""  # PEM bundle to verify the server (TLS)
    cert_file: str = ""  # client certificate (mTLS), with key_file
    key_file: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent as gRPC metadata on every call
    compression: str = "gzip"  # gzip | none
    timeout_s: float = 10.0  # deadline of one Export call
    queue_dir: str = "./var/export-queue"  # holds findings.sqlite3 (the durable queue)
    queue_max_items: int = 100_000
    queue_max_bytes: int = 256 * 1024 * 1024  # sum of serialized findings
    batch_max_items: int = 256  # findings per Export call
    retry_initial_backoff_s: float = 1.0
    retry_max_backoff_s: float = 30.0
    retry_multiplier: float = 1.5
    retry_jitter: float = 0.2  # +-20% randomization of each backoff
    retry_max_server_delay_s: float = 300.0  # cap on a server's RetryInfo.retry_delay
    export_spans: bool = True  # also export trace-tied findings as spans (TraceService)
    shutdown_timeout_s: float = 5.0  # how long shutdown() keeps sending before leaving the rest on disk
    service_name: str = "llm-log-analyzer"  # resource service.name and scope name

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    def validate(self) -> None:
        super().validate()
        if self.endpoint:
            host, sep, port = self.endpoint.rpartition(":")
            require(bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536,
                    "export.endpoint", f"must be host:port, got {self.endpoint!r}")
        require(self.compression in COMPRESSIONS, "export.compression",
                f"must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        require(bool(self.cert_file) == bool(self.key_file), "export.cert_file",
                "cert_file and key_file must be given together")
        require(not (self.insecure and (self.ca_file or self.cert_file)), "export.insecure",
                "ca_file/cert_file need insecure: false")
        require(bool(self.queue_dir), "export.queue_dir", "must not be empty")
        for key in ("timeout_s", "queue_max_items", "queue_max_bytes", "batch_max_items",
                    "retry_initial_backoff_s", "retry_max_backoff_s", "retry_max_server_delay_s"):
            positive(getattr(self, key), f"export.{key}")
        require(isinstance(self.retry_multiplier, (int, float)) and self.retry_multiplier >= 1,
                "export.retry_multiplier", f"must be >= 1, got {self.retry_multiplier!r}")
        require(isinstance(self.retry_jitter, (int, float)) and 0 <= self.retry_jitter < 1,
                "export.retry_jitter", f"must be in [0, 1), got {self.retry_jitter!r}")
        require(self.retry_max_backoff_s >= self.retry_initial_backoff_s, "export.retry_max_backoff_s",
                "must be >= retry_initial_backoff_s")
        require(self.batch_max_items <= 10_000, "export.batch_max_items",
                f"must be <= 10000, got {self.batch_max_items!r}")
        non_negative(self.shutdown_timeout_s, "export.shutdown_timeout_s")
        for k, v in self.headers.items():
            require(isinstance(k, str) and k == k.lower() and k.strip() != "" and isinstance(v, str),
                    f"export.headers.{k}", "header names must be lowercase strings with string values")
