"""OTLP/HTTP (aiohttp): POST /v1/traces and /v1/logs, binary protobuf and JSON, gzip/deflate bodies.

aiohttp's own request decompression is switched off (`auto_decompress=False` on the runner) so the body
limit is enforced here, on the decompressed size, with a streaming decompressor that never inflates more
than `limit + 1` bytes (a gzip bomb costs at most the limit in memory).

Order of checks: auth (401), media type (415), body size after decompression (413), then
`Ingest.check_room` (503 + Retry-After while the queue is full, before any decoding), then decode (400).
A binary protobuf body goes downstream with the request (`raw=`, the decompressed bytes); JSON has none.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver.otlp.auth import BearerAuth
from receiver.otlp.ingest import LOGS, TRACES, Ingest, outcome_for
from receiver.otlp.otlp_json import OtlpJsonError, parse_logs_json, parse_traces_json, to_json
from receiver.otlp.status import WireError, bad_request, http_response_parts, too_large, unauthenticated

HTTP = "http"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_CHUNK = 64 * 1024


class UnsupportedMediaType(Exception):
    pass


def _decompressor(encoding: str) -> Any:
    if encoding == "gzip" or encoding == "x-gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise UnsupportedMediaType(
        f"unsupported Content-Encoding {encoding!r} (supported: gzip, deflate, identity)"
    )


class _Inflater:
    """Streaming decompression with an output cap; handles multi-member gzip."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._encoding = encoding
        self._limit = limit
        self._d = _decompressor(encoding)
        self._parts: list[bytes] = []
        self._size = 0

    def _emit(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise too_large(f"decompressed size is more than {self._limit} bytes", self._limit)
        self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        try:
            while chunk:
                out = self._d.decompress(chunk, self._limit - self._size + 1)
                self._emit(out)
                if self._d.unconsumed_tail:
                    chunk = self._d.unconsumed_tail
                elif self._d.eof and self._d.unused_data:
                    chunk = self._d.unused_data  # next gzip member
                    self._d = _decompressor(self._encoding)
                else:
                    chunk = b""
        except zlib.error as exc:
            raise bad_request(f"invalid {self._encoding} request body: {exc}") from None

    def finish(self) -> bytes:
        if not self._d.eof:
            raise bad_request(f"truncated {self._encoding} request body")
        return b"".join(self._parts)


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, decompressed, at most `limit` bytes (else WireError 413)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"of {request.content_length} bytes", limit)
    if encoding in ("", "identity"):
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large(f"is more than {limit} bytes", limit)
            parts.append(chunk)
        return b"".join(parts)
    inflater = _Inflater(encoding, limit)
    raw = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        raw += len(chunk)
        if raw > limit:
            raise too_large(f"is more than {limit} bytes compressed", limit)
        inflater.feed(chunk)
    return inflater.finish()


def _decode_protobuf(message: Any, body: bytes) -> Any:
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise bad_request(
            f"cannot decode {type(message).__name__} protobuf ({len(body)} bytes): {exc}"
        ) from None
    return message


class OtlpHttpHandlers:
    def __init__(self, ingest: Ingest, limit: int, auth: BearerAuth | None) -> None:
        self._ingest = ingest
        self._limit = limit
        self._auth = auth

    def add_routes(self, app: web.Application, traces_path: str, logs_path: str) -> None:
        if self._ingest.traces is not None:
            app.router.add_post(traces_path, self.traces)
        if self._ingest.logs is not None:
            app.router.add_post(logs_path, self.logs)

    async def traces(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(
            request, TRACES, ExportTraceServiceRequest, parse_traces_json, self._ingest.export_traces
        )

    async def logs(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(
            request, LOGS, ExportLogsServiceRequest, parse_logs_json, self._ingest.export_logs
        )

    async def _handle(
        self,
        request: web.Request,
        signal: str,
        message_type: Any,
        parse_json: Callable[[bytes, Any], Any],
        export: Callable[..., Any],
    ) -> web.StreamResponse:
        ctype = request.content_type  # lower-cased mime type without parameters
        as_json = ctype == JSON
        try:
            if self._auth is not None:
                problem = self._auth.check(request.headers.get("Authorization"))
                if problem is not None:
                    raise unauthenticated(problem)
            if ctype not in (PROTOBUF, JSON):
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {ctype!r} (supported: {PROTOBUF}, {JSON})"
                )
            body = await read_body(request, self._limit)
            self._ingest.check_room(signal, len(body))
            if as_json:
                try:
                    req = parse_json(body, message_type())
                except OtlpJsonError as exc:
                    raise bad_request(str(exc)) from None
                resp = export(req, HTTP, len(body))
            else:
                req = _decode_protobuf(message_type(), body)
                resp = export(req, HTTP, len(body), raw=body)
        except UnsupportedMediaType as exc:
            self._ingest.metrics.request(HTTP, signal, "unsupported_media_type")
            return web.Response(status=415, text=f"415 {exc}", content_type="text/plain")
        except WireError as err:
            if not err.counted:
                self._ingest.metrics.request(HTTP, signal, outcome_for(err))
            status, payload, headers = http_response_parts(err, as_json)
            return web.Response(status=status, body=payload, headers=headers)
        if as_json:
            return web.Response(status=200, body=to_json(resp), content_type=JSON)
        return web.Response(status=200, body=resp.SerializeToString(), content_type=PROTOBUF)
