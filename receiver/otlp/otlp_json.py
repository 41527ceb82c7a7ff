"""OTLP/JSON decoding (OTLP spec §JSON Protobuf Encoding) on top of `google.protobuf.json_format`.

Differences from the stock proto3 JSON mapping that OTLP requires:
  * `traceId`, `spanId`, `parentSpanId` (in spans, span links and log records) are hex strings
    (case-insensitive), not base64. A pre-pass converts them to base64 before `ParseDict`.
  * unknown fields MUST be ignored -> `ignore_unknown_fields=True`.
  * enums are integers; int64 may be a decimal string or a number (json_format accepts both).
Responses carry no ids (`Export*ServiceResponse`, `google.rpc.Status`), so they are encoded with the stock
mapping (int64 as decimal strings, lowerCamelCase keys).

`opentelemetry-proto-json` (PyPI) was considered: it decodes into its own dataclasses, not into the
protobuf messages the pipeline passes around, so it would add a second conversion.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class OtlpJsonError(ValueError):
    """The payload is not valid OTLP/JSON; the message names the field."""


def _hex_to_b64(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise OtlpJsonError(f"{where}: must be a hex string, got {type(value).__name__}")
    if not value:
        return ""
    try:
        raw = binascii.a2b_hex(value)
    except (binascii.Error, ValueError):
        raise OtlpJsonError(f"{where}: invalid hex string {value[:64]!r}") from None
    return base64.b64encode(raw).decode("ascii")


def _get(d: dict[str, Any], camel: str, snake: str) -> tuple[str, Any] | None:
    if camel in d:
        return camel, d[camel]
    if snake in d:
        return snake, d[snake]
    return None


def _list(d: dict[str, Any], camel: str, snake: str, where: str) -> list[tuple[str, Any]]:
    found = _get(d, camel, snake)
    if found is None or found[1] is None:
        return []
    key, value = found
    if not isinstance(value, list):
        raise OtlpJsonError(f"{where}.{key}: must be an array, got {type(value).__name__}")
    return [(f"{where}.{key}[{i}]", item) for i, item in enumerate(value)]


def _convert_ids(obj: Any, where: str, fields: tuple[tuple[str, str], ...]) -> None:
    if not isinstance(obj, dict):
        raise OtlpJsonError(f"{where}: must be an object, got {type(obj).__name__}")
    for camel, snake in fields:
        found = _get(obj, camel, snake)
        if found is not None:
            key, value = found
            obj[key] = _hex_to_b64(value, f"{where}.{key}")


_SPAN_IDS = (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id"))
_LINK_IDS = (("traceId", "trace_id"), ("spanId", "span_id"))
_LOG_IDS = (("traceId", "trace_id"), ("spanId", "span_id"))


def _prepare_traces(doc: dict[str, Any]) -> None:
    for w_rs, rs in _list(doc, "resourceSpans", "resource_spans", "$"):
        if not isinstance(rs, dict):
            raise OtlpJsonError(f"{w_rs}: must be an object")
        for w_ss, ss in _list(rs, "scopeSpans", "scope_spans", w_rs):
            if not isinstance(ss, dict):
                raise OtlpJsonError(f"{w_ss}: must be an object")
            for w_s, span in _list(ss, "spans", "spans", w_ss):
                _convert_ids(span, w_s, _SPAN_IDS)
                for w_l, link in _list(span, "links", "links", w_s):
                    _convert_ids(link, w_l, _LINK_IDS)


def _prepare_logs(doc: dict[str, Any]) -> None:
    for w_rl, rl in _list(doc, "resourceLogs", "resource_logs", "$"):
        if not isinstance(rl, dict):
            raise OtlpJsonError(f"{w_rl}: must be an object")
        for w_sl, sl in _list(rl, "scopeLogs", "scope_logs", w_rl):
            if not isinstance(sl, dict):
                raise OtlpJsonError(f"{w_sl}: must be an object")
            for w_r, rec in _list(sl, "logRecords", "log_records", w_sl):
                _convert_ids(rec, w_r, _LOG_IDS)


def _parse(body: bytes, message: M, prepare: Any) -> M:
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise OtlpJsonError(f"request body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise OtlpJsonError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise OtlpJsonError("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise OtlpJsonError(f"$: must be a JSON object, got {type(doc).__name__}")
    prepare(doc)
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(f"invalid OTLP/JSON: {exc}") from None
    except RecursionError:
        raise OtlpJsonError("invalid OTLP/JSON: nested too deeply") from None
    return message


def parse_traces_json(body: bytes, message: M) -> M:
    """Fill `message` (an ExportTraceServiceRequest) from OTLP/JSON bytes; raises OtlpJsonError."""
    return _parse(body, message, _prepare_traces)


def parse_logs_json(body: bytes, message: M) -> M:
    """Fill `message` (an ExportLogsServiceRequest) from OTLP/JSON bytes; raises OtlpJsonError."""
    return _parse(body, message, _prepare_logs)


def to_json(message: Message) -> bytes:
    """Encode a response message (no id fields) as OTLP/JSON."""
    return json_format.MessageToJson(message, indent=None).encode()
