"""OTLP/gRPC: TraceService/Export and LogsService/Export on a grpc.aio server.

The handlers take the raw request bytes and decode them here (instead of letting grpcio deserialize), so
an undecodable payload gets INVALID_ARGUMENT naming the problem rather than grpcio's generic INTERNAL.
Message size (after decompression) is enforced by grpcio via `grpc.max_receive_message_length`
-> RESOURCE_EXHAUSTED. gzip is handled by grpcio.

Before decoding, `Ingest.check_room` refuses the request (UNAVAILABLE + RetryInfo) if the queue is full;
after it, the bytes go downstream with the request (`raw=`) so a consumer that needs them (the span
analysis child process) does not re-serialize.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from receiver.otlp.auth import BearerAuth
from receiver.otlp.ingest import LOGS, TRACES, Ingest, ReceiverMetrics, outcome_for
from receiver.otlp.status import WireError, abort_grpc, bad_request, unauthenticated

TRACE_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
LOGS_SERVICE = logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name

GRPC = "grpc"


def _decode(message_type: Any, data: bytes, what: str) -> Any:
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise bad_request(f"cannot decode {what} protobuf ({len(data)} bytes): {exc}") from None
    return msg


def _traces_handler(ingest: Ingest) -> grpc.RpcMethodHandler:
    async def export(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            ingest.check_room(TRACES, len(data))
            req = _decode(trace_service_pb2.ExportTraceServiceRequest, data, "ExportTraceServiceRequest")
            return ingest.export_traces(req, GRPC, len(data), raw=data)
        except WireError as err:
            if not err.counted:
                ingest.metrics.request(GRPC, TRACES, outcome_for(err))
            await abort_grpc(context, err)

    return grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=None,
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )


def _logs_handler(ingest: Ingest) -> grpc.RpcMethodHandler:
    async def export(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            ingest.check_room(LOGS, len(data))
            req = _decode(logs_service_pb2.ExportLogsServiceRequest, data, "ExportLogsServiceRequest")
            return ingest.export_logs(req, GRPC, len(data), raw=data)
        except WireError as err:
            if not err.counted:
                ingest.metrics.request(GRPC, LOGS, outcome_for(err))
            await abort_grpc(context, err)

    return grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=None,
        response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString,
    )


def otlp_generic_handlers(ingest: Ingest) -> list[grpc.GenericRpcHandler]:
    """Generic handlers for the signals that have a consumer (others answer UNIMPLEMENTED, as the
    Collector does)."""
    handlers: list[grpc.GenericRpcHandler] = []
    if ingest.traces is not None:
        handlers.append(
            grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": _traces_handler(ingest)})
        )
    if ingest.logs is not None:
        handlers.append(grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": _logs_handler(ingest)}))
    return handlers


def _signal_of(method: str) -> str:
    if method.startswith(f"/{TRACE_SERVICE}/"):
        return TRACES
    if method.startswith(f"/{LOGS_SERVICE}/"):
        return LOGS
    return "other"


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for every method (OTLP and the project's own API) without a valid token."""

    def __init__(self, auth: BearerAuth, metrics: ReceiverMetrics) -> None:
        self._auth = auth
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        problem = self._auth.check(header)
        handler = await continuation(handler_call_details)
        if problem is None or handler is None:
            return handler
        self._metrics.request(GRPC, _signal_of(handler_call_details.method), "unauthenticated")
        err = unauthenticated(problem)

        async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
            await abort_grpc(context, err)

        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(deny, **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(deny, **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(deny, **kw)
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
