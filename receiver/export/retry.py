"""Retry semantics of OTLP/gRPC export errors (spec table, conformance doc G9/G10).

Retryable: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and
RESOURCE_EXHAUSTED only when the server attached RetryInfo. Everything else is permanent.
The server's RetryInfo is read from `google.rpc.retryinfo-bin` (what the Python SDK sends and
reads) and from the standard `grpc-status-details-bin` (google.rpc.Status details).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})

RETRY_INFO_KEY = "google.rpc.retryinfo-bin"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Verdict:
    retryable: bool
    server_delay_s: float | None  # RetryInfo.retry_delay, when the server sent one


def retry_info_delay(trailers: object) -> float | None:
    """The RetryInfo delay (seconds) carried by an RPC's trailing metadata, or None."""
    if not trailers:
        return None
    for key, value in trailers:  # type: ignore[attr-defined]
        try:
            if key == RETRY_INFO_KEY and isinstance(value, bytes):
                info = error_details_pb2.RetryInfo.FromString(value)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except Exception:  # malformed trailer: ignore it, fall back to our own backoff
            continue
    return None


def classify(error: grpc.RpcError) -> Verdict:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    delay = retry_info_delay(trailers)
    if code in RETRYABLE:
        return Verdict(True, delay)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None:
        return Verdict(True, delay)
    return Verdict(False, delay)


class Backoff:
    """Exponential backoff with +-jitter; the server's RetryInfo delay is a lower bound (as the
    Collector's retry sender does: max(backoff, delay)), capped by `max_server_delay_s`."""

    def __init__(self, initial_s: float, max_s: float, multiplier: float, jitter: float,
                 max_server_delay_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.max_server_delay_s = max_server_delay_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self, server_delay_s: float | None = None) -> float:
        base = min(self.max_s, self.initial_s * (self.multiplier ** self.attempt))
        self.attempt += 1
        delay = base * (1 + self._rng.uniform(-self.jitter, self.jitter))
        if server_delay_s is not None and server_delay_s > 0:
            delay = max(delay, min(server_delay_s, self.max_server_delay_s))
        return max(0.0, delay)
