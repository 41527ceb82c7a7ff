"""The C span reader (`receiver/otlp/_spanwire.c`) against its Python reference over protobuf objects:
generated requests of many shapes, protobuf merge rules (fields repeated on the wire, unknown fields,
unexpected wire types), and corrupted bytes (an error or the reference's answer, never a crash)."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from receiver.otlp import spanwire

PEER = ("peer.service", "server.address", "net.peer.name")
DB = ("db.namespace", "db.name", "db.system")
KEYS = [*PEER, *DB, "http.method", "service.name", "messaging.system", "error", "http.status_code",
        "http.response.status_code", "exception.message"]


def _kv(rng: random.Random, key: str) -> KeyValue:
    kv = KeyValue(key=key)
    r = rng.random()
    if r < 0.6:
        kv.value.string_value = rng.choice(["", "pg", "orders", "redis:6379", "ünïcode", "x" * 40, "503",
                                            "0500", "499", "５０３", "-600", "99999999999999999999"])
    elif r < 0.8:
        kv.value.int_value = rng.choice([rng.randrange(1000), -(2**63), 2**63 - 1])
    elif r < 0.9:
        kv.value.bool_value = True
    # else: no value at all
    return kv


def _id(rng: random.Random, n: int) -> bytes:
    r = rng.random()
    if r < 0.05:
        return b""
    if r < 0.08:
        return bytes(n)
    if r < 0.11:
        return rng.randbytes(n + rng.choice((-1, 1)))
    return rng.randbytes(n)


def _span(rng: random.Random) -> Span:
    s = Span(trace_id=_id(rng, 16), span_id=_id(rng, 8), name=rng.choice(["GET /", "SELECT", "send"]),
             kind=rng.choice([0, 1, 2, 3, 4, 5, 2, 3, 7]),
             start_time_unix_nano=rng.choice([0, 1_700_000_000_000_000_000 + rng.randrange(10**9)]),
             end_time_unix_nano=rng.choice([0, 1_700_000_000_000_000_000 + rng.randrange(10**9)]))
    if rng.random() < 0.7:
        s.parent_span_id = _id(rng, 8)
    for _ in range(rng.randrange(6)):
        s.attributes.append(_kv(rng, rng.choice(KEYS)))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        ln = s.links.add(trace_id=_id(rng, 16), span_id=_id(rng, 8))
        ln.attributes.append(_kv(rng, "messaging.system"))
    if rng.random() < 0.5:
        s.status.code = rng.choice([0, 1, 2])
        s.status.message = "boom"
    for _ in range(rng.choice([0, 0, 1, 2])):
        ev = s.events.add(name=rng.choice(["exception", "log"]))
        for _ in range(rng.randrange(3)):
            ev.attributes.append(_kv(rng, rng.choice(["exception.message", "exception.type"])))
    return s


def _request(rng: random.Random) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, 4)):
        rs = req.resource_spans.add()
        for _ in range(rng.randrange(3)):
            rs.resource.attributes.append(_kv(rng, rng.choice(["service.name", "host.name",
                                                                "service.version"])))
        if rng.random() < 0.7:
            rs.resource.attributes.add(key="service.name").value.string_value = rng.choice(["a", "b", "c"])
        for _ in range(rng.randrange(1, 3)):
            ss = rs.scope_spans.add()
            ss.scope.name = "t"
            ss.spans.extend(_span(rng) for _ in range(rng.randrange(6)))
    return req


def _same(buf: bytes) -> None:
    req = ExportTraceServiceRequest.FromString(buf)
    assert spanwire.check_spans(buf) == spanwire.check_spans_reference(req)
    assert spanwire.graph_rows(buf, PEER, DB) == spanwire.graph_rows_reference(req, PEER, DB)
    assert spanwire.signal_rows(buf, PEER + PEER[:1]) == spanwire.signal_rows_reference(req, PEER)


def test_generated_requests_match_the_reference() -> None:
    rng = random.Random(7)
    rows = 0
    seen = {"peer": 0, "messaging": 0, "attr_error": 0, "exceptions": 0, "version": 0}
    for _ in range(400):
        buf = _request(rng).SerializeToString()
        _same(buf)
        rows += len(spanwire.graph_rows(buf, PEER, DB)[0])
        for _svc, version, spans in spanwire.signal_rows(buf, PEER)[0]:
            seen["version"] += bool(version)
            for r in map(spanwire.SignalRow._make, spans):
                seen["peer"] += bool(r.peer)
                seen["messaging"] += r.messaging
                seen["attr_error"] += r.attr_error
                seen["exceptions"] += bool(r.exceptions)
    assert rows > 1000  # the generator really makes graph spans
    assert min(seen.values()) > 20, seen  # ... and every signal field is exercised both ways


def test_row_fields() -> None:
    tid, cid, sid = b"\x01" * 16, b"\x02" * 8, b"\x03" * 8
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "shop"
    sp = rs.scope_spans.add().spans
    c = sp.add(trace_id=tid, span_id=cid, parent_span_id=sid, kind=Span.SPAN_KIND_CLIENT,
               start_time_unix_nano=1_000, end_time_unix_nano=2_501_000)
    c.attributes.add(key="db.system").value.string_value = "postgresql"
    c.attributes.add(key="db.name").value.string_value = "orders"
    c.status.code = 2
    sp.add(trace_id=tid, span_id=sid, kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=5,
           end_time_unix_nano=4)
    sp.add(trace_id=tid, span_id=sid, kind=Span.SPAN_KIND_INTERNAL)
    cons = sp.add(trace_id=tid, span_id=cid, parent_span_id=sid, kind=Span.SPAN_KIND_CONSUMER)
    cons.links.add(trace_id=tid, span_id=sid)
    rows, total, skipped = spanwire.graph_rows(req.SerializeToString(), PEER, DB)
    assert (total, skipped) == (4, 0)
    assert rows == [
        (3, tid + cid, tid + sid, "shop", 0.0025, 2_501_000, True, True, "orders", None),
        (2, tid + sid, b"", "shop", 0.0, 4, False, False, None, None),
        (5, tid + cid, tid + sid, "shop", 0.0, 0, False, False, None, (tid + sid,)),
    ]
    assert spanwire.GraphRow(*rows[0]).callee == "orders"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by hand."""
    n, out = len(payload), bytearray([number << 3 | 2])
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n]) + payload


def test_merge_rules_on_the_wire() -> None:
    """Bytes a conforming encoder may send: a message field repeated on the wire merges (resource,
    span, AnyValue), a scalar field repeated takes the last value, unknown fields and known fields
    with another wire type are skipped."""
    host = ResourceSpans()
    host.resource.attributes.add(key="host.name").value.string_value = "h1"
    named = ResourceSpans()
    named.resource.attributes.add(key="service.name").value.string_value = "merged"
    s = Span(trace_id=b"\x05" * 16, span_id=b"\x06" * 8, kind=Span.SPAN_KIND_CLIENT)
    s.attributes.add(key="peer.service").value.string_value = "first"
    s2 = Span(kind=Span.SPAN_KIND_PRODUCER, end_time_unix_nano=9)
    s2.status.code = 2
    s2.attributes.add(key="peer.service").value.string_value = "second"
    # one span sent as s then s2 (they merge), an unknown field 99 and field 6 (kind) as bytes
    span = s.SerializeToString() + s2.SerializeToString() + b"\x98\x06\x01" + _field(6, b"\x03")
    # two `resource` fields in one ResourceSpans merge: service.name comes from the second
    rs = host.SerializeToString() + named.SerializeToString() + _field(2, _field(2, span))
    # an AnyValue whose string is replaced by an int later on the wire has no string value any more
    kv = KeyValue(key="peer.service")
    kv.value.string_value = "gone"
    kv_bytes = kv.SerializeToString() + _field(2, b"\x18\x07")  # value again: int_value = 7
    s3 = Span(trace_id=b"\x07" * 16, span_id=b"\x08" * 8, kind=Span.SPAN_KIND_CLIENT).SerializeToString()
    other = ResourceSpans()
    other.resource.attributes.add(key="service.name").value.string_value = "svc3"
    rs3 = other.SerializeToString() + _field(2, _field(2, s3 + _field(9, kv_bytes)))
    buf = _field(1, rs) + _field(1, rs3)
    _same(buf)
    rows, _, _ = spanwire.graph_rows(buf, PEER, DB)
    assert [(r[0], r[3], r[5], r[6], r[8]) for r in rows] == [
        (4, "merged", 9, True, "first"), (3, "svc3", 0, False, "unknown")]


def test_corrupted_bytes_raise_or_agree_never_crash() -> None:
    rng = random.Random(11)
    agreed = raised = 0
    for _ in range(1500):
        buf = bytearray(_request(rng).SerializeToString())
        if not buf:
            continue
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] = rng.randrange(256)
        if rng.random() < 0.3:
            del buf[rng.randrange(len(buf)):]
        data = bytes(buf)
        try:
            ExportTraceServiceRequest.FromString(data)
        except DecodeError:
            try:  # upb is stricter (UTF-8, nested messages): the C reader may accept what it refuses
                spanwire.check_spans(data)
                spanwire.graph_rows(data, PEER, DB)
                spanwire.signal_rows(data, PEER)
            except spanwire.WireError:
                raised += 1
            continue
        _same(data)
        agreed += 1
    assert agreed > 100 and raised > 100


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        spanwire._spanwire.graph_rows(b"", ("a",), ("b",))  # str keys, not bytes
    with pytest.raises(TypeError):
        spanwire.check_spans("not bytes")  # type: ignore[arg-type]
    with pytest.raises(spanwire.WireError, match="truncated varint"):
        spanwire.check_spans(b"\x0a\x80")


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def test_enum_fields_keep_the_low_32_bits_signed() -> None:
    """protobuf reads an enum varint as int32: 2**32 + 3 is CLIENT, a 10-byte -1 stays -1."""
    ids = _field(1, b"\x01" * 16) + _field(2, b"\x02" * 8)
    client = ids + b"\x30" + _varint(2**32 + 3)  # field 6 (kind), varint
    odd = ids + b"\x30" + _varint(-1) + _field(15, b"\x18" + _varint(-2))  # status.code = -2
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "s"
    buf = _field(1, rs.SerializeToString() + _field(2, _field(2, client) + _field(2, odd)))
    _same(buf)
    (svc, _, rows), = spanwire.signal_rows(buf, PEER)[0]
    assert [(r[3], r[6]) for r in rows] == [(3, 0), (-1, -2)]
    assert [r[0] for r in spanwire.graph_rows(buf, PEER, DB)[0]] == [3]


def test_validation_falls_back_to_the_decoded_request(caplog: pytest.LogCaptureFixture) -> None:
    """Should the C reader ever refuse bytes protobuf accepted, the receiver checks the decoded request
    instead of failing the export (here: bytes that do not match the request at all)."""
    from receiver.otlp.validate import validate_traces

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 3, name="short id")
    v = validate_traces(req, raw=b"\x0a\x80")
    assert (v.total, v.rejected) == (1, 1)
    assert "span_id is 3 bytes" in v.message
    assert "spanwire refused" in caplog.text
