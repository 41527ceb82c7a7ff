"""The ONE place where pipeline errors become wire statuses, for both gRPC and OTLP/HTTP.

Mapping (after the Collector's `internal/errors/errors.go` and the OTLP spec):
  RetryableError           -> UNAVAILABLE + RetryInfo  / 503 + Retry-After
  PermanentError           -> INVALID_ARGUMENT         / 400
  any other exception      -> UNAVAILABLE + RetryInfo  / 503 (the Collector treats non-permanent errors so)
  undecodable payload      -> INVALID_ARGUMENT         / 400
  too large (decompressed) -> RESOURCE_EXHAUSTED       / 413
  missing/wrong token      -> UNAUTHENTICATED          / 401

gRPC errors carry `google.rpc.Status` (with a RetryInfo detail when retryable) in `grpc-status-details-bin`,
which Go clients (the Collector) read, AND the serialized RetryInfo in `google.rpc.retryinfo-bin`, the only
trailer the Python SDK exporter reads (opentelemetry-exporter-otlp-proto-grpc exporter.py `_export`).
"""

from __future__ import annotations

import collections
import math

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from receiver.errors import PermanentError, RetryableError

RETRY_INFO_TRAILER = "google.rpc.retryinfo-bin"

# gRPC code -> HTTP status, as the Collector's otlpreceiver does (internal/errors/errors.go).
_HTTP_FOR_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.ABORTED: 503,
    grpc.StatusCode.OUT_OF_RANGE: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 404,
}


class WireError(Exception):
    """An export failure as the client will see it, on either transport."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        retry_after_s: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self._http_status = http_status
        self.counted = False  # True once the request outcome was counted in otelcol_receiver_requests

    @property
    def http_status(self) -> int:
        if self._http_status is not None:
            return self._http_status
        return _HTTP_FOR_GRPC.get(self.code, 500)

    @property
    def retryable(self) -> bool:
        return self.retry_after_s is not None


def bad_request(message: str) -> WireError:
    return WireError(grpc.StatusCode.INVALID_ARGUMENT, message)


def too_large(size_desc: str, limit: int) -> WireError:
    return WireError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body {size_desc} exceeds the limit of {limit} bytes (after decompression)",
        http_status=413,
    )


def unauthenticated(message: str) -> WireError:
    return WireError(grpc.StatusCode.UNAUTHENTICATED, message)


def from_exception(exc: BaseException, default_retry_after_s: float) -> WireError:
    """Map what a downstream consumer raised to the status the client gets."""
    if isinstance(exc, WireError):
        return exc
    if isinstance(exc, RetryableError):
        return WireError(
            grpc.StatusCode.UNAVAILABLE, f"data refused, retry later: {exc}", retry_after_s=exc.retry_after_s
        )
    if isinstance(exc, PermanentError):
        return WireError(grpc.StatusCode.INVALID_ARGUMENT, f"data rejected permanently: {exc}")
    return WireError(
        grpc.StatusCode.UNAVAILABLE,
        f"internal pipeline error: {type(exc).__name__}: {exc}",
        retry_after_s=default_retry_after_s,
    )


def _retry_info(delay_s: float) -> error_details_pb2.RetryInfo:
    delay_s = max(0.0, delay_s)
    seconds = int(delay_s)
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int(round((delay_s - seconds) * 1e9)))
    )


def status_proto(err: WireError) -> status_pb2.Status:
    st = status_pb2.Status(code=err.code.value[0], message=err.message)
    if err.retry_after_s is not None:
        detail = any_pb2.Any()
        detail.Pack(_retry_info(err.retry_after_s))
        st.details.append(detail)
    elif err.code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(description=err.message)]
            )
        )
        st.details.append(detail)
    return st


class _GrpcStatus(
    collections.namedtuple("_GrpcStatus", ("code", "details", "trailing_metadata")), grpc.Status
):
    pass


def grpc_status(err: WireError) -> grpc.Status:
    """grpc.Status for `context.abort_with_status`: the rich status trailer plus RetryInfo trailer."""
    base = rpc_status.to_status(status_proto(err))
    trailers = tuple(base.trailing_metadata)
    if err.retry_after_s is not None:
        trailers += ((RETRY_INFO_TRAILER, _retry_info(err.retry_after_s).SerializeToString()),)
    return _GrpcStatus(base.code, base.details, trailers)


async def abort_grpc(context: grpc.aio.ServicerContext, err: WireError) -> None:
    """Ends the RPC with `err` (raises, as grpc's abort does)."""
    await context.abort_with_status(grpc_status(err))


def http_response_parts(err: WireError, as_json: bool) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) for OTLP/HTTP: body = google.rpc.Status in the request's encoding."""
    st = status_proto(err)
    if as_json:
        body = json_format.MessageToJson(st, indent=None).encode()
        headers = {"Content-Type": "application/json"}
    else:
        body = st.SerializeToString()
        headers = {"Content-Type": "application/x-protobuf"}
    status = err.http_status
    if err.retry_after_s is not None and status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return status, body, headers


__all__ = [
    "RETRY_INFO_TRAILER",
    "WireError",
    "abort_grpc",
    "bad_request",
    "from_exception",
    "grpc_status",
    "http_response_parts",
    "status_proto",
    "too_large",
    "unauthenticated",
]
