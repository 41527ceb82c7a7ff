"""otlp stage: the OTLP/gRPC + OTLP/HTTP receive path."""

from receiver.otlp.config import AuthConfig, OtlpConfig, TlsConfig
from receiver.otlp.receiver import OtlpReceiver

__all__ = ["AuthConfig", "OtlpConfig", "OtlpReceiver", "TlsConfig"]
