"""SpanSignals' indexed expiry and one-pass span parsing give the same results as the plain versions.

The reference is `SpanSignals` with its expiry replaced by the straightforward rule (scan every
buffered trace; analyse, in arrival order, those whose last span ended before the event-time bound
and arrived at least trace_wall_idle_s ago). Both consume the same simulator traffic (faults,
logs) with the same injected clock, and every read RCA makes is compared, mid-run and after flush.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from receiver.otlp.spanwire import kv_marks_error
from receiver.rca.signals import SignalsConfig, SpanSignals, _attr_str
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator
from tests.fakeclock import FakeClock
from tests.otlp_support import add_attr

START_NS = 1_700_000_000 * 10**9


class _ScanExpiry(SpanSignals):
    """The reference: every expiry looks at every buffered trace."""

    def _index(self, touched: Any) -> None:
        pass

    def _expire(self, before_ns: int | None) -> None:
        wall_before = self._clock() - self.config.trace_wall_idle_s
        done = [tid for tid, tr in self._traces.items()
                if before_ns is None or (tr.last_end < before_ns and tr.last_wall <= wall_before)]
        for tid in done:
            self._analyse(tid, self._traces.pop(tid))


def _metrics(sig: SpanSignals) -> dict:
    out = {}
    for m in (sig.m_spans, sig.m_traces, sig.m_evicted, sig.m_inflight, sig.m_bad):
        for fam in m.collect():
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _reads(sig: SpanSignals) -> dict:
    nodes, edges = sig.nodes(), sig.edges()
    nb = {n: sig.node_buckets(n) for n in nodes}
    eb = {e: sig.edge_buckets(*e) for e in edges}
    g = sig.digraph()
    return {
        "nodes": nodes, "edges": edges, "virtual": sig.virtual_nodes(), "watermark": sig.watermark_ns(),
        "node_buckets": nb, "edge_buckets": eb,
        "node_exemplars": {n: [sig.exemplar(n, b, b + 1) for b in sorted(nb[n])] for n in nodes},
        "edge_exemplars": {e: [sig.exemplar(e[1], b, b + 1, caller=e[0]) for b in sorted(eb[e])]
                           for e in edges},
        "samples": {n: sig.samples(n) for n in nodes},
        "deploys": {n: sig.deploys(n) for n in nodes},
        "digraph": (sorted(g.nodes(data=True)), sorted(g.edges(data=True))),
        "metrics": _metrics(sig),
    }


def _traffic() -> list[tuple[ExportTraceServiceRequest, Any]]:
    out = []
    for seed, fault in ((3, Fault("db_down", "postgres", start_s=40)),
                        (4, Fault("wrong_value", "inventory", caller="cart", start_s=30)),
                        (5, Fault("bad_deploy", "payment", start_s=40))):
        sim = Simulator(seed=seed, faults=[fault], rate_per_s=5.0, start_ns=START_NS)
        out += [(tr, lg) for _, tr, lg in sim.run_virtual(80.0, 2.5)]
        sim.shutdown()
    return out


def _run(cls: type[SpanSignals], cfg: SignalsConfig, step: float, traffic: list) -> list:
    sig = cls(cfg, clock=FakeClock(step=step))
    seen: list = []
    for i, (tr, lg) in enumerate(traffic):
        sig.consume_traces(tr)
        sig.consume_logs(lg)
        if i % 3 == 0:
            seen.append(sig.complete_until_ns())
        if i % 7 == 0:  # explicit expiry: a later bound than the automatic one (idle 5 s), an earlier (1 s)
            sig.expire(sig.watermark_ns() - 2 * 10**9)
        if i == len(traffic) // 2:
            seen.append(_reads(sig))
    seen.append(_reads(sig))
    sig.flush()
    seen.append(_reads(sig))
    return seen


def test_indexed_expiry_matches_full_scan() -> None:
    traffic = _traffic()
    configs = [
        (SignalsConfig(), 0.3),  # wall idle time decides
        (SignalsConfig(trace_idle_s=1.0, trace_wall_idle_s=1.0), 0.05),
        # every cap bites: traces analysed early, nodes/edges/buckets/samples evicted
        (SignalsConfig(trace_wall_idle_s=0.0, max_traces=40, max_buckets=5, max_nodes=8, max_edges=10,
                       max_samples=3, max_spans_per_trace=12), 0.01),
    ]
    for cfg, step in configs:
        want = _run(_ScanExpiry, cfg, step, traffic)
        got = _run(SpanSignals, cfg, step, traffic)
        assert got == want
        final = got[-1]
        assert final["metrics"][("rca_signals_traces_total", ())] > 100
        assert final["edges"] and any(final["samples"].values())
    # the small caps did evict (the comparison covered eviction order)
    evicted = {k[1][0][1] for k, v in final["metrics"].items() if k[0] == "rca_signals_evicted_total" and v}
    assert {"trace", "node", "edge", "bucket", "span"} <= evicted


def test_stalled_event_time_keeps_expiry_index_bounded() -> None:
    """Reused timestamps (event time never advances): no trace completes, the index stays bounded."""
    sig = SpanSignals(SignalsConfig(max_traces=50), clock=FakeClock(step=0.01))
    for rep in range(40):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", "svc"
        ss = rs.scope_spans.add()
        for t in range(30):
            ss.spans.add(trace_id=bytes([rep % 3, t]) * 8, span_id=bytes([t, rep]) * 4,
                         start_time_unix_nano=START_NS, end_time_unix_nano=START_NS + 1000,
                         kind=Span.SPAN_KIND_SERVER)
        sig.consume_traces(req)
        assert len(sig._by_end) + len(sig._by_wall) <= 2 * len(sig._traces) + 1024
    assert len(sig._traces) == 50
    sig.flush()
    assert not sig._traces and not sig._by_end and not sig._by_wall


def _attr_error(attrs: Any) -> bool:
    return any(kv_marks_error(kv) for kv in attrs)


def test_one_pass_attributes_match_the_helpers() -> None:
    """Peer name precedence (last non-empty value of a key), messaging.system and failure marks of
    the one-pass parse agree with `_attr_str` / `_attr_error`."""
    cfg = SignalsConfig()
    cases: list[list[tuple[str, Any]]] = [
        [("net.peer.name", "db-host"), ("peer.service", ""), ("db.system", "postgresql")],
        [("db.system", "redis"), ("peer.service", "cart"), ("peer.service", "cart2"),
         ("messaging.system", "")],
        [("messaging.system", "kafka"), ("messaging.destination.name", "orders"), ("http.status_code", 503)],
        [("http.response.status_code", "502"), ("error", False)],
        [("error", True), ("http.status_code", "abc")],
        [("http.status_code", 200), ("server.address", 7)],
        [],
    ]
    for kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_SERVER):
        for code in (0, 1, 2):
            req = ExportTraceServiceRequest()
            rs = req.resource_spans.add()
            kv = rs.resource.attributes.add()
            kv.key, kv.value.string_value = "service.name", "caller"
            ss = rs.scope_spans.add()
            for i, attrs in enumerate(cases):
                s = ss.spans.add(trace_id=bytes([kind, code, i]) + bytes(13), span_id=bytes([i + 1]) * 8,
                                 start_time_unix_nano=START_NS, end_time_unix_nano=START_NS + 10, kind=kind)
                s.status.code = code
                for k, v in attrs:
                    add_attr(s.attributes, k, v)
            sig = SpanSignals(cfg)
            sig.consume_traces(req)
            for s in ss.spans:
                sp = sig._traces[s.trace_id].spans[0]
                client = kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER)
                assert sp.peer == (_attr_str(s.attributes, cfg.peer_attributes) if client else "")
                if client:
                    assert sp.messaging == bool(_attr_str(s.attributes, ["messaging.system"]))
                assert sp.error == (code == 2 or (code == 0 and _attr_error(s.attributes)))


def _one_span(trace: int, service: str, end_s: float) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    end = START_NS + int(end_s * 1e9)
    rs.scope_spans.add().spans.add(trace_id=bytes([trace]) * 16, span_id=bytes([trace, int(end_s * 10)]) * 4,
                                   start_time_unix_nano=end - 1000, end_time_unix_nano=end,
                                   kind=Span.SPAN_KIND_SERVER)
    return req


def _scripted(cls: type[SpanSignals]) -> list:
    clock = FakeClock()
    sig = cls(SignalsConfig(trace_idle_s=1.0, trace_wall_idle_s=10.0), clock=clock)
    seen = []
    sig.consume_traces(_one_span(1, "a", 0.0))  # trace 1 arrives first ...
    clock.t += 1
    sig.consume_traces(_one_span(2, "b", 0.1))
    clock.t += 1
    sig.consume_traces(_one_span(1, "a", 0.2))  # ... and is touched last
    clock.t += 1
    sig.consume_traces(_one_span(3, "c", 1.5))  # event time passes traces 1 and 2; wall time not yet
    seen.append((sig.nodes(), _metrics(sig)))
    clock.t += 20
    sig.expire(START_NS + int(0.6 * 1e9))  # bound -0.4 s, earlier than the automatic 0.5 s: none
    seen.append((sig.nodes(), _metrics(sig)))
    sig.expire(START_NS + int(1.25 * 1e9))  # bound 0.25 s: traces 1 and 2, analysed in arrival order
    seen.append((sig.nodes(), _metrics(sig)))
    sig.flush()
    seen.append((sig.nodes(), _metrics(sig)))
    return seen


def test_expiry_order_and_earlier_bounds_match_full_scan() -> None:
    want = _scripted(_ScanExpiry)
    assert _scripted(SpanSignals) == want
    assert want[0][0] == [] and want[1][0] == []  # wall time holds them, then the earlier bound does
    assert want[2][0] == ["a", "b"]  # arrival order, not last-touched order
    assert want[3][0] == ["a", "b", "c"]


def test_odd_http_status_strings_never_raise() -> None:
    """Attribute values are client data: a status code string with non-ASCII digits ('²') or
    garbage is not a failure mark and must not raise (it would lose the rest of the request)."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    def kv(value: str) -> list[KeyValue]:
        k = KeyValue(key="http.status_code")
        k.value.string_value = value
        return [k]

    assert _attr_error(kv("²")) is False
    assert _attr_error(kv("5x0")) is False
    assert _attr_error(kv("503")) is True
    assert _attr_error(kv("404")) is False


def test_parent_cycles_in_client_data_terminate() -> None:
    """Parent ids are client data: a span that is its own parent, and a same-service parent cycle
    sent twice (duplicate rows fan the walk out), are analysed in bounded time, not forever."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "a"
    spans = rs.scope_spans.add().spans
    a, b, c, root = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8, b"\x04" * 8
    spans.add(trace_id=b"\x09" * 16, span_id=a, parent_span_id=a, kind=Span.SPAN_KIND_SERVER,
              start_time_unix_nano=START_NS, end_time_unix_nano=START_NS + 5)
    tid = b"\x0a" * 16
    spans.add(trace_id=tid, span_id=root, kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=START_NS,
              end_time_unix_nano=START_NS + 100)
    for _ in range(2):
        for sid, parent in ((b, c), (c, b), (b, root)):
            s = spans.add(trace_id=tid, span_id=sid, parent_span_id=parent, kind=Span.SPAN_KIND_INTERNAL,
                          start_time_unix_nano=START_NS + 1, end_time_unix_nano=START_NS + 50)
            s.status.code = 2
            s.status.message = "boom"
    sig = SpanSignals(SignalsConfig())
    sig.consume_traces(req)
    sig.flush()  # the test's timeout fails it if this loops
    assert not sig._traces
    calls = sum(row[0] for row in sig.node_buckets("a").values())
    assert calls == 2  # the self-parented span and the root entered service a
