"""Errors that cross stage boundaries, carrying their retry semantics.

Stages raise these; the wire layer (`receiver.otlp.status`) maps them to gRPC codes and HTTP
statuses in one place, as the Collector's `consumererror` + `internal/errors` do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for errors a consumer returns to its producer."""


class RetryableError(PipelineError):
    """The data was NOT accepted; the sender should retry after `retry_after_s` (backpressure)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(PipelineError):
    """The data can never be accepted (bad data); the sender must not retry."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key (and file line when known)."""
