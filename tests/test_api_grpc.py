"""The project's own gRPC API over a real grpc.aio server and channel on loopback."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry

from proto_gen.llm_log_analyzer.v1 import analyzer_pb2, analyzer_pb2_grpc
from receiver.api.grpc_service import (
    AnalyzerServicer,
    BroadcastConfig,
    FindingsBroadcaster,
    add_analyzer_service,
    finding_from_proto,
    graph_to_proto,
)
from receiver.errors import ConfigError
from receiver.graph.graph import ServiceGraph
from receiver.model import A_CONFIDENCE, A_EVIDENCE, A_SERVICE, EVENT_ANOMALY, EVENT_RCA, Finding


def finding(i: int, event: str = EVENT_ANOMALY) -> Finding:
    return Finding(event_name=event, attributes={A_SERVICE: "checkout", A_CONFIDENCE: 0.5 + i / 100,
                                                 A_EVIDENCE: [f"line {i}", "b"], "n": i, "ok": True},
                   body=f"finding {i}", time_ns=1_700_000_000_000_000_000 + i,
                   trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7")


class Harness:
    def __init__(self, findings: list[Finding], graph_snapshot, config: BroadcastConfig | None = None):
        self.registry = CollectorRegistry()
        self.broadcaster = FindingsBroadcaster(config, self.registry)
        self.findings = findings
        self.list_calls: list[tuple] = []
        self.graph_snapshot = graph_snapshot

    def list_findings(self, limit: int, event_name: str | None, since_ns: int | None) -> list[Finding]:
        self.list_calls.append((limit, event_name, since_ns))
        if event_name == "boom":
            raise RuntimeError("store is down")
        out = [f for f in self.findings if (event_name is None or f.event_name == event_name)
               and (since_ns is None or f.time_ns >= since_ns)]
        if event_name == EVENT_RCA:  # the store may hand back dicts in the API shape
            return [f.to_dict() for f in out[-limit:]]
        return out[-limit:]

    async def __aenter__(self) -> Harness:
        self.server = grpc.aio.server()
        servicer = AnalyzerServicer(self.list_findings, self.graph_snapshot, self.broadcaster)
        add_analyzer_service(self.server, servicer)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        self.broadcaster.shutdown()
        await self.channel.close()
        await self.server.stop(1)


async def wait_until(cond, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def publish_from_thread(b: FindingsBroadcaster, findings: list[Finding]) -> None:
    t = threading.Thread(target=b.consume_findings, args=(findings,))
    t.start()
    t.join()


async def test_list_findings_filters_and_converts() -> None:
    stored = [finding(i) for i in range(5)] + [finding(9, EVENT_RCA)]
    async with Harness(stored, lambda: {"nodes": [], "edges": []}) as h:
        resp = await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest(limit=3, event_name=EVENT_ANOMALY))
        assert h.list_calls[-1] == (3, EVENT_ANOMALY, None)
        assert [finding_from_proto(f) for f in resp.findings] == stored[2:5]
        f0 = resp.findings[0]
        assert list(f0.attributes[A_EVIDENCE].string_array_value.values) == ["line 2", "b"]
        assert f0.attributes["n"].int_value == 2 and f0.attributes["ok"].bool_value is True
        assert f0.attributes[A_CONFIDENCE].WhichOneof("value") == "double_value"
        assert f0.missed_before == 0

        since = stored[4].time_ns
        resp = await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest(since_unix_nano=since))
        assert h.list_calls[-1] == (100, None, since)
        assert [f.id for f in resp.findings] == [stored[4].id, stored[5].id]

        resp = await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest(event_name=EVENT_RCA))
        assert [finding_from_proto(f) for f in resp.findings] == [stored[5]]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest(limit=5000))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest(event_name="boom"))
        assert err.value.code() == grpc.StatusCode.INTERNAL and "store is down" in err.value.details()
        # the server survived the failing callable
        assert len((await h.stub.ListFindings(analyzer_pb2.ListFindingsRequest())).findings) == 6


async def test_watch_receives_findings_published_after_subscribing() -> None:
    async with Harness([], lambda: {"nodes": [], "edges": []}) as h:
        early = finding(0)
        h.broadcaster.consume_findings([early])  # before anyone watches: not delivered
        call = h.stub.WatchFindings(analyzer_pb2.WatchFindingsRequest())
        rca_only = h.stub.WatchFindings(analyzer_pb2.WatchFindingsRequest(event_name=EVENT_RCA))
        await wait_until(lambda: h.broadcaster.subscribers == 2)
        a, r = finding(1), finding(2, EVENT_RCA)
        publish_from_thread(h.broadcaster, [a])
        publish_from_thread(h.broadcaster, [r])
        got = [await call.read(), await call.read()]
        assert [finding_from_proto(m) for m in got] == [a, r]
        assert [m.missed_before for m in got] == [0, 0]
        only = await rca_only.read()
        assert only.id == r.id
        call.cancel()
        rca_only.cancel()
        await wait_until(lambda: h.broadcaster.subscribers == 0)
        assert h.registry.get_sample_value("llm_log_analyzer_api_watch_published_total") == 3


async def test_slow_watcher_loses_oldest_and_is_told() -> None:
    cfg = BroadcastConfig(subscriber_queue=5)
    async with Harness([], lambda: {"nodes": [], "edges": []}, cfg) as h:
        call = h.stub.WatchFindings(analyzer_pb2.WatchFindingsRequest())
        await wait_until(lambda: h.broadcaster.subscribers == 1)
        batch = [finding(i) for i in range(50)]
        publish_from_thread(h.broadcaster, batch)  # one burst: only the newest 5 fit
        got = [await call.read() for _ in range(5)]
        assert [m.id for m in got] == [f.id for f in batch[45:]]
        assert [m.missed_before for m in got] == [45, 0, 0, 0, 0]
        assert h.registry.get_sample_value("llm_log_analyzer_api_watch_dropped_total") == 45
        nxt = finding(99)
        publish_from_thread(h.broadcaster, [nxt])
        m = await call.read()
        assert (m.id, m.missed_before) == (nxt.id, 0)
        call.cancel()


async def test_subscriber_cap_and_shutdown_end_streams() -> None:
    async with Harness([], lambda: {"nodes": [], "edges": []}, BroadcastConfig(max_subscribers=1)) as h:
        first = h.stub.WatchFindings(analyzer_pb2.WatchFindingsRequest())
        await wait_until(lambda: h.broadcaster.subscribers == 1)
        second = h.stub.WatchFindings(analyzer_pb2.WatchFindingsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await second.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert h.registry.get_sample_value("llm_log_analyzer_api_watch_rejected_total") == 1
        h.broadcaster.shutdown()
        assert await first.read() == grpc.aio.EOF
        assert await first.code() == grpc.StatusCode.OK


def test_sync_subscription_is_bounded_and_never_blocks() -> None:
    reg = CollectorRegistry()
    b = FindingsBroadcaster(BroadcastConfig(subscriber_queue=3), reg)
    sub = b.subscribe()
    for i in range(10):  # nobody reads
        b.consume_findings([finding(i)])
    assert sub.pending() == 3 and sub.lost == 7
    got = sub.get(0)
    assert got is not None
    assert [(f.body, missed) for f, missed in got] == [("finding 7", 7), ("finding 8", 0), ("finding 9", 0)]
    assert sub.get(0.01) == []
    sub.close()
    assert sub.get(0) is None and b.subscribers == 0
    assert reg.get_sample_value("llm_log_analyzer_api_watch_dropped_total") == 7
    with pytest.raises(ConfigError, match="api_grpc.subscriber_queue"):
        BroadcastConfig(subscriber_queue=0).validate()


def _span(trace: bytes, sid: bytes, parent: bytes, kind: int, name: str, start: int, dur: int,
          error: bool = False) -> trace_pb2.Span:
    s = trace_pb2.Span(trace_id=trace, span_id=sid, parent_span_id=parent, kind=kind, name=name,
                       start_time_unix_nano=start, end_time_unix_nano=start + dur)
    if error:
        s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    return s


def _traces(service_spans: dict[str, list[trace_pb2.Span]]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for svc, spans in service_spans.items():
        rs = req.resource_spans.add()
        rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=svc)))
        rs.scope_spans.add().spans.extend(spans)
    return req


async def test_get_graph_from_a_real_service_graph() -> None:
    graph = ServiceGraph()
    t0 = 1_700_000_000_000_000_000
    client, server = [], []
    for i in range(4):
        tid = (i + 1).to_bytes(16, "big")
        c_id, s_id = (100 + i).to_bytes(8, "big"), (200 + i).to_bytes(8, "big")
        client.append(_span(tid, c_id, b"", trace_pb2.Span.SPAN_KIND_CLIENT, "GET /pay", t0, 20_000_000,
                            error=(i == 0)))
        server.append(_span(tid, s_id, c_id, trace_pb2.Span.SPAN_KIND_SERVER, "/pay", t0 + 1, 15_000_000,
                            error=(i == 0)))
    graph.consume_traces(_traces({"checkout": client, "payment": server}))
    snap = graph.snapshot()
    async with Harness([], graph.snapshot) as h:
        g = await h.stub.GetGraph(analyzer_pb2.GetGraphRequest())
    assert g == graph_to_proto(snap)
    edges = [(e.source, e.target, e.calls, e.errors) for e in g.edges]
    assert ("checkout", "payment", 4, 1) in edges
    e = next(e for e in g.edges if e.source == "checkout")
    assert e.HasField("p50_ms") and e.p50_ms > 0 and e.first_seen > 0
    assert {n.id for n in g.nodes} >= {"checkout", "payment"}
    node = next(n for n in g.nodes if n.id == "checkout")
    assert node.attributes["virtual"].bool_value is False


def test_graph_conversion_handles_missing_percentiles() -> None:
    snap = {"nodes": [{"id": "a", "virtual": False}, {"id": "user", "virtual": True}],
            "edges": [{"source": "user", "target": "a", "calls": 3, "errors": 0,
                       "connection_type": "virtual_node",
                       "p50_ms": None, "p95_ms": None, "p99_ms": None, "first_seen": 1.5, "last_seen": 2.5,
                       "error_rate": 0.0, "network_gap_avg_ms": None}]}
    g = graph_to_proto(snap)
    e = g.edges[0]
    assert not e.HasField("p50_ms") and (e.calls, e.first_seen, e.last_seen) == (3, 1.5, 2.5)
    assert "network_gap_avg_ms" not in e.attributes and e.attributes["error_rate"].double_value == 0.0
    assert g.nodes[1].attributes["virtual"].bool_value is True


async def test_served_beside_otlp_on_the_receivers_grpc_port() -> None:
    """The Analyzer service registered on the OTLP receiver's gRPC server: spans sent by the official
    SDK exporter to that port show up in GetGraph over the same port."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, set_span_in_context

    from receiver.otlp.config import OtlpConfig
    from receiver.otlp.receiver import OtlpReceiver

    graph = ServiceGraph()
    broadcaster = FindingsBroadcaster()
    rx = OtlpReceiver(OtlpConfig(grpc_endpoint="127.0.0.1:0", http_endpoint=""), graph, None)
    servicer = AnalyzerServicer(lambda limit, ev, since: [], graph.snapshot, broadcaster)
    rx.add_grpc_service(lambda server: add_analyzer_service(server, servicer))
    await rx.start()
    try:
        endpoint = f"127.0.0.1:{rx.grpc_port}"

        def send() -> None:
            providers = {}
            for svc in ("frontend", "cart"):
                p = TracerProvider(resource=Resource.create({"service.name": svc}))
                p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
                providers[svc] = p
            for _ in range(3):
                with providers["frontend"].get_tracer("t").start_as_current_span(
                        "GET /cart", kind=SpanKind.CLIENT) as client:
                    ctx = set_span_in_context(client)
                    with providers["cart"].get_tracer("t").start_as_current_span(
                            "/cart", kind=SpanKind.SERVER, context=ctx):
                        pass
            for p in providers.values():
                p.shutdown()

        await asyncio.to_thread(send)
        channel = grpc.aio.insecure_channel(endpoint)
        try:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            g = await stub.GetGraph(analyzer_pb2.GetGraphRequest())
        finally:
            await channel.close()
        assert [(e.source, e.target, e.calls, e.errors) for e in g.edges] == [("frontend", "cart", 3, 0)]
    finally:
        broadcaster.shutdown()
        await rx.shutdown()
