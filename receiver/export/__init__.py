"""export stage: findings out as OTLP/gRPC log records and finding spans, via a durable disk queue."""

from receiver.export.config import ExportConfig
from receiver.export.exporter import FindingsExporter

__all__ = ["ExportConfig", "FindingsExporter"]
