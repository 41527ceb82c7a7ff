"""Service graph: pairing, virtual nodes, messaging (parent and links), duplicates, caps, TTL,
staleness, metrics, thread safety. Spans come from the official OpenTelemetry SDK, encoded with the
official OTLP encoder."""

from __future__ import annotations

import threading

import networkx as nx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from receiver.errors import ConfigError
from receiver.graph import GraphConfig, ServiceGraph
from receiver.graph.stats import quantile
from tests.fakeclock import FakeClock


class Services:
    """One SDK TracerProvider per service, each with its own in-memory exporter."""

    def __init__(self, *names: str) -> None:
        self.exporters: dict[str, InMemorySpanExporter] = {}
        self.tracers: dict[str, trace.Tracer] = {}
        for name in names:
            exp = InMemorySpanExporter()
            tp = TracerProvider(resource=Resource.create({"service.name": name}))
            tp.add_span_processor(SimpleSpanProcessor(exp))
            self.exporters[name] = exp
            self.tracers[name] = tp.get_tracer("test")

    def request(self, *names: str) -> ExportTraceServiceRequest:
        """The finished spans of these services as one OTLP request (and forget them)."""
        spans = []
        for n in names:
            spans.extend(self.exporters[n].get_finished_spans())
            self.exporters[n].clear()
        return encode_spans(spans)


ALL = ("frontend", "checkout", "payments", "email", "notifier", "anon")


def run_topology(s: Services, iterations: int = 5, payment_errors: int = 2) -> None:
    """user -> frontend -> checkout -> payments (errors on the first `payment_errors` iterations),
    checkout -> postgres (db client span), frontend -> geo-api (uninstrumented, peer.service),
    frontend -> ? (client span without any peer attribute), checkout -producer-> email (child
    consumer), checkout -producer-> notifier (consumer in its own trace, linked)."""
    fe, co, pay = s.tracers["frontend"], s.tracers["checkout"], s.tracers["payments"]
    email, notifier = s.tracers["email"], s.tracers["notifier"]
    for i in range(iterations):
        fail = i < payment_errors
        with fe.start_as_current_span("GET /checkout", kind=SpanKind.SERVER):
            with fe.start_as_current_span("render", kind=SpanKind.INTERNAL):
                pass
            with fe.start_as_current_span("POST", kind=SpanKind.CLIENT,
                                          attributes={"server.address": "checkout.svc"}):
                with co.start_as_current_span("POST /place", kind=SpanKind.SERVER):
                    with co.start_as_current_span("POST", kind=SpanKind.CLIENT,
                                                  attributes={"server.address": "payments.svc"}) as c:
                        with pay.start_as_current_span("POST /charge", kind=SpanKind.SERVER) as sv:
                            if fail:
                                sv.set_status(Status(StatusCode.ERROR, "card declined"))
                        if fail:
                            c.set_status(Status(StatusCode.ERROR))  # both sides failed: one error
                    with co.start_as_current_span("INSERT orders", kind=SpanKind.CLIENT, attributes={
                        "db.system": "postgresql", "db.namespace": "orders", "peer.service": "postgres",
                        "server.address": "10.0.0.7"}):
                        pass
                    with co.start_as_current_span("publish orders", kind=SpanKind.PRODUCER,
                                                  attributes={"messaging.destination.name": "orders"}):
                        with email.start_as_current_span("process orders", kind=SpanKind.CONSUMER):
                            pass
                    with co.start_as_current_span("publish notify", kind=SpanKind.PRODUCER) as prod:
                        link = Link(prod.get_span_context())
            with fe.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={
                    "peer.service": "geo-api", "server.address": "geo.ext"}):
                pass
            with fe.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
                pass
        # the consumer runs later, in its own trace, linked to the producer
        with notifier.start_as_current_span("process notify", kind=SpanKind.CONSUMER,
                                            context=trace.set_span_in_context(trace.INVALID_SPAN),
                                            links=[link]):
            pass


def edges_by_key(snap: dict) -> dict[tuple[str, str, str], dict]:
    return {(e["source"], e["target"], e["connection_type"]): e for e in snap["edges"]}


def build(clock: FakeClock | None = None, **cfg) -> ServiceGraph:
    return ServiceGraph(GraphConfig(**cfg), registry=CollectorRegistry(),
                        clock=clock or FakeClock(1_000_000.0))


def test_topology_exact_edges_virtual_nodes_and_errors() -> None:
    s = Services(*ALL)
    run_topology(s)
    g = build()
    # servers' batches first for some services, clients' first for others
    g.consume_traces(s.request("payments", "email"))
    g.consume_traces(s.request("checkout"))
    g.consume_traces(s.request("frontend", "notifier"))
    before = edges_by_key(g.snapshot())
    assert set(before) == {
        ("user", "frontend", "virtual_node"),
        ("frontend", "checkout", ""),
        ("checkout", "payments", ""),
        ("checkout", "postgres", "database"),
        ("checkout", "email", "messaging_system"),
        ("checkout", "notifier", "messaging_system"),
    }
    assert g.stats()["store_items"] == 10  # 5 x geo-api + 5 x peerless client halves wait for their TTL
    g.flush()
    snap = g.snapshot()
    edges = edges_by_key(snap)
    assert set(edges) == set(before) | {("frontend", "geo-api", "virtual_node"),
                                        ("frontend", "unknown", "virtual_node")}
    assert {k: (e["calls"], e["errors"]) for k, e in edges.items()} == {
        ("user", "frontend", "virtual_node"): (5, 0),
        ("frontend", "checkout", ""): (5, 0),
        ("checkout", "payments", ""): (5, 2),
        ("checkout", "postgres", "database"): (5, 0),
        ("checkout", "email", "messaging_system"): (5, 0),
        ("checkout", "notifier", "messaging_system"): (5, 0),
        ("frontend", "geo-api", "virtual_node"): (5, 0),
        ("frontend", "unknown", "virtual_node"): (5, 0),
    }
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert {n: (v["kind"], v["virtual"]) for n, v in nodes.items()} == {
        "user": ("user", True),
        "frontend": ("service", False),
        "checkout": ("service", False),
        "payments": ("service", False),
        "postgres": ("database", True),
        "email": ("service", False),
        "notifier": ("service", False),
        "geo-api": ("virtual", True),
        "unknown": ("virtual", True),
    }
    assert nodes["payments"]["errors_in"] == 2 and nodes["checkout"]["calls_out"] == 20
    e = edges[("checkout", "payments", "")]
    assert e["paired_calls"] == 5 and e["network_gap_avg_ms"] is not None and e["network_gap_avg_ms"] >= 0
    assert e["p50_ms"] is not None and e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"]
    assert 0 < e["first_seen"] <= e["last_seen"]
    st = g.stats()
    assert st["store_items"] == 0 and st["completed_calls"] == 40 and st["paired_calls"] == 20
    assert st["expired_entries"] == 10 and st["dropped_spans"]["store_full"] == 0


def test_pairing_is_order_independent() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=3, payment_errors=1)
    reqs = [s.request(n) for n in ALL]
    a, b = build(), build()
    for r in reqs:
        a.consume_traces(r)
    for r in reversed(reqs):
        b.consume_traces(r)
    a.flush()
    b.flush()
    ka = {k: (e["calls"], e["errors"]) for k, e in edges_by_key(a.snapshot()).items()}
    kb = {k: (e["calls"], e["errors"]) for k, e in edges_by_key(b.snapshot()).items()}
    assert ka == kb and ka[("checkout", "payments", "")] == (3, 1) and len(ka) == 8


def test_duplicates_are_not_double_counted() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=4, payment_errors=1)
    req = s.request(*ALL)
    payload = req.SerializeToString()
    g = build()
    g.consume_traces(req)
    g.consume_traces(ExportTraceServiceRequest.FromString(payload))  # an OTLP retry of the batch
    g.flush()  # the virtual-node halves expire...
    g.consume_traces(ExportTraceServiceRequest.FromString(payload))  # ... and a late retry comes
    g.flush()
    edges = edges_by_key(g.snapshot())
    assert all(e["calls"] == 4 for e in edges.values()), {k: e["calls"] for k, e in edges.items()}
    assert edges[("checkout", "payments", "")]["errors"] == 1
    # per batch: 4 x (root, 2 pairs x 2 halves, db, 2 messaging pairs x 2, 2 lone clients) = 4 x 12
    assert g.stats()["duplicate_spans"] == 2 * 48
    text = generate_latest(g.registry).decode()
    assert "servicegraph_duplicate_spans_total 96.0" in text


def test_pairing_store_cap_drops_and_counts() -> None:
    s = Services("frontend", "checkout")
    fe, co = s.tracers["frontend"], s.tracers["checkout"]
    for _ in range(5):
        with fe.start_as_current_span("POST", kind=SpanKind.CLIENT):
            with co.start_as_current_span("POST /x", kind=SpanKind.SERVER):
                pass
    g = build(store_max_items=3)
    g.consume_traces(s.request("frontend"))  # 5 client halves, room for 3
    st = g.stats()
    assert st["store_items"] == 3 and st["dropped_spans"]["store_full"] == 2
    g.consume_traces(s.request("checkout"))  # 3 pair, 2 find no client and no room
    edges = edges_by_key(g.snapshot())
    assert edges[("frontend", "checkout", "")]["calls"] == 3
    text = generate_latest(g.registry).decode()
    assert 'servicegraph_dropped_spans_total{reason="store_full"}' in text
    assert g.stats()["dropped_spans"]["store_full"] == 2  # the server halves found room after pairing


def test_ttl_expiry_on_wall_clock() -> None:
    clock = FakeClock(1_000_000.0)
    s = Services("frontend", "checkout")
    fe, co = s.tracers["frontend"], s.tracers["checkout"]
    with fe.start_as_current_span("root", kind=SpanKind.INTERNAL):
        with fe.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"server.address": "maps.ext"}):
            pass
    with co.start_as_current_span("root", kind=SpanKind.INTERNAL):
        with co.start_as_current_span("orphan", kind=SpanKind.SERVER):  # parent = an internal span
            pass
    g = build(clock=clock, store_ttl_s=10.0)
    g.consume_traces(s.request("frontend", "checkout"))
    assert g.stats()["store_items"] == 2
    assert g.expire(clock.t + 9.9) == 0 and g.snapshot()["edges"] == []
    clock.t += 10.5
    assert g.expire() == 2
    edges = edges_by_key(g.snapshot())
    assert set(edges) == {("frontend", "maps.ext", "virtual_node")}  # the lone server half: no edge
    st = g.stats()
    assert st["expired_entries"] == 2 and st["expired_unpaired_server"] == 1 and st["store_items"] == 0


def test_virtual_nodes_off() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=1, payment_errors=0)
    g = build(virtual_nodes=False)
    g.consume_traces(s.request(*ALL))
    g.flush()
    cts = {e["connection_type"] for e in g.snapshot()["edges"]}
    assert cts == {"", "database", "messaging_system"}


def test_stale_edges_expire_and_take_their_nodes() -> None:
    clock = FakeClock(1_000_000.0)
    s = Services(*ALL)
    run_topology(s, iterations=2, payment_errors=0)
    g = build(clock=clock, edge_stale_s=900.0)
    g.consume_traces(s.request(*ALL))
    g.flush()
    assert len(g.snapshot()["edges"]) == 8
    clock.t += 600
    fe, co = s.tracers["frontend"], s.tracers["checkout"]
    with fe.start_as_current_span("POST", kind=SpanKind.CLIENT):
        with co.start_as_current_span("POST /place", kind=SpanKind.SERVER):
            pass
    g.consume_traces(s.request("frontend", "checkout"))  # keeps frontend -> checkout fresh
    clock.t += 400
    g.expire()
    snap = g.snapshot()
    assert [(e["source"], e["target"], e["calls"]) for e in snap["edges"]] == [("frontend", "checkout", 3)]
    assert {n["id"] for n in snap["nodes"]} == {"frontend", "checkout"}
    assert g.stats()["stale_edges"] == 7
    assert "servicegraph_stale_edges_total 7.0" in generate_latest(g.registry).decode()


def test_edge_and_node_caps_are_counted() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=1, payment_errors=0)
    req = s.request(*ALL)
    g = build(max_edges=3)
    g.consume_traces(req)
    g.flush()
    st = g.stats()
    assert st["edges"] == 3 and st["dropped_calls"]["edge_cap"] == 5
    h = build(max_nodes=3)
    h.consume_traces(req)
    h.flush()
    assert h.stats()["nodes"] <= 3 and h.stats()["dropped_calls"]["node_cap"] > 0
    text = generate_latest(h.registry).decode()
    assert 'servicegraph_dropped_calls_total{reason="node_cap"}' in text


def test_dedupe_set_is_capped_and_counted() -> None:
    s = Services("frontend", "checkout")
    fe, co = s.tracers["frontend"], s.tracers["checkout"]
    for _ in range(40):
        with fe.start_as_current_span("POST", kind=SpanKind.CLIENT):
            with co.start_as_current_span("POST /x", kind=SpanKind.SERVER):
                pass
    g = build(dedupe_max_items=16)
    g.consume_traces(s.request("frontend", "checkout"))
    st = g.stats()
    assert st["dedupe_items"] <= 16 and st["dedupe_evicted"] >= 24
    assert edges_by_key(g.snapshot())[("frontend", "checkout", "")]["calls"] == 40


def test_metrics_exposition_matches_grafana_names() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=5, payment_errors=2)
    g = build()
    g.consume_traces(s.request(*ALL))
    g.flush()
    text = generate_latest(g.registry).decode()
    lbl = 'client="checkout",connection_type="",server="payments"'
    assert f"traces_service_graph_request_total{{{lbl}}} 5.0" in text
    assert f"traces_service_graph_request_failed_total{{{lbl}}} 2.0" in text
    cp = 'client="checkout",connection_type=""'  # the exposition sorts labels: le before server
    assert f'traces_service_graph_request_server_seconds_bucket{{{cp},le="0.002",server="payments"}}' in text
    assert f'traces_service_graph_request_client_seconds_bucket{{{cp},le="15.0",server="payments"}}' in text
    inf = f'traces_service_graph_request_client_seconds_bucket{{{cp},le="+Inf",server="payments"}} 5.0'
    assert inf in text
    assert f"traces_service_graph_request_server_seconds_count{{{lbl}}} 5.0" in text
    assert ('traces_service_graph_request_total{client="user",connection_type="virtual_node",'
            'server="frontend"} 5.0') in text
    assert ('traces_service_graph_request_total{client="checkout",connection_type="database",'
            'server="postgres"} 5.0') in text
    assert "servicegraph_edges 8.0" in text and "servicegraph_calls_total 40.0" in text


def test_digraph_copy_and_event_time_series() -> None:
    s = Services(*ALL)
    run_topology(s, iterations=3, payment_errors=1)
    g = build(bucket_s=10.0)
    g.consume_traces(s.request(*ALL))
    g.flush()
    d = g.digraph()
    assert isinstance(d, nx.DiGraph)
    assert d.nodes["postgres"] == {"kind": "database", "virtual": True}
    assert d.edges["checkout", "payments"]["calls"] == 3 and d.edges["checkout", "payments"]["errors"] == 1
    assert d.edges["checkout", "postgres"]["connection_type"] == "database"
    assert list(nx.topological_sort(d))[0] == "user"
    d.remove_node("checkout")  # a copy: the graph itself is untouched
    assert g.digraph().has_node("checkout")
    series = g.edge_series("checkout", "payments")
    assert sum(b.calls for b in series) == 3 and sum(b.errors for b in series) == 1
    assert all(b.start_s % 10 == 0 for b in series)
    assert sum(b.paired_calls for b in series) == 3
    assert sum(b.client_latency_sum_s for b in series) >= sum(b.server_latency_sum_s for b in series) >= 0
    assert g.edge_series("nobody", "payments") == []


def test_series_ring_is_bounded() -> None:
    g = build(bucket_s=1.0, max_buckets=4)
    s = Services("frontend", "checkout")
    fe, co = s.tracers["frontend"], s.tracers["checkout"]
    for k in range(7):  # seven calls, each in its own one-second event-time bucket
        t0 = 1_700_000_000_000_000_000 + k * 1_000_000_000
        with fe.start_as_current_span("POST", kind=SpanKind.CLIENT, start_time=t0) as c:
            with co.start_as_current_span("POST /x", kind=SpanKind.SERVER, start_time=t0 + 1000) as sv:
                sv.end(end_time=t0 + 2000)
            c.end(end_time=t0 + 3000)
    g.consume_traces(s.request("frontend", "checkout"))
    series = g.edge_series("frontend", "checkout")
    assert [b.start_s for b in series] == [1_700_000_003.0 + k for k in range(4)]
    assert edges_by_key(g.snapshot())[("frontend", "checkout", "")]["calls"] == 7


def test_concurrent_consume_and_snapshot() -> None:
    s = Services(*ALL)
    payloads = []
    for _ in range(30):
        run_topology(s, iterations=2, payment_errors=1)
        payloads.append(s.request(*ALL).SerializeToString())
    g = build()
    g.start()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                g.snapshot()
                g.digraph()
                generate_latest(g.registry)
                g.edge_series("checkout", "payments")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    writers = [threading.Thread(target=lambda part=part: [g.consume_traces(
        ExportTraceServiceRequest.FromString(p)) for p in part]) for part in (payloads[::2], payloads[1::2])]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    g.shutdown()
    assert errors == []
    edges = edges_by_key(g.snapshot())
    assert edges[("checkout", "payments", "")]["calls"] == 60
    assert edges[("checkout", "payments", "")]["errors"] == 30
    assert edges[("frontend", "geo-api", "virtual_node")]["calls"] == 60  # shutdown flushed the store


def test_resources_without_service_name_are_skipped() -> None:
    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource({"host.name": "x"}))  # no service.name at all
    tp.add_span_processor(SimpleSpanProcessor(exp))
    with tp.get_tracer("t").start_as_current_span("s", kind=SpanKind.SERVER):
        pass
    g = build()
    g.consume_traces(encode_spans(exp.get_finished_spans()))
    assert g.snapshot() == {"nodes": [], "edges": []} and g.stats()["skipped_spans"] == 1


def test_invalid_ids_are_counted_not_fatal() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    ss.spans.add(trace_id=b"\x01" * 3, span_id=b"\x02" * 8, kind=Span.SPAN_KIND_CLIENT)
    ss.spans.add(trace_id=b"\x01" * 16, span_id=b"", kind=Span.SPAN_KIND_CLIENT)
    ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=b"\x03" * 2,
                 kind=Span.SPAN_KIND_SERVER)
    g = build()
    g.consume_traces(req)
    assert g.stats()["dropped_spans"]["invalid_id"] == 3 and g.stats()["store_items"] == 0


def test_quantile_interpolates_like_histogram_quantile() -> None:
    bounds = [0.1, 0.2, 0.4]
    # 10 in (0, 0.1], 10 in (0.1, 0.2], 0 in (0.2, 0.4], 0 above
    assert quantile(0.5, [10, 10, 0, 0], bounds, 0.0) == pytest.approx(0.1)
    assert quantile(0.75, [10, 10, 0, 0], bounds, 0.0) == pytest.approx(0.15)
    assert quantile(0.5, [0, 0, 0, 4], bounds, 2.0) == pytest.approx(1.2)  # overflow: up to the max
    assert quantile(0.5, [0, 0, 0, 0], bounds, 0.0) is None


@pytest.mark.parametrize(("key", "value"), [
    ("store_ttl_s", 0), ("store_max_items", 0), ("dedupe_max_items", -1), ("max_edges", 0),
    ("max_nodes", 1), ("latency_buckets_s", [0.2, 0.1]), ("latency_buckets_s", []), ("bucket_s", -1),
    ("peer_attributes", ["", "x"]), ("edge_stale_s", 0),
])
def test_config_validation_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"graph.{key}"):
        ServiceGraph(GraphConfig(**{key: value}))


def test_lifecycle_idempotent() -> None:
    g = build()
    g.shutdown()  # safe without start
    g.start()
    g.start()
    g.shutdown()
    g.shutdown()


def test_lone_producer_and_bare_database_span_name_their_nodes() -> None:
    s = Services("checkout")
    co = s.tracers["checkout"]
    with co.start_as_current_span("POST /place", kind=SpanKind.INTERNAL):
        with co.start_as_current_span("publish audit", kind=SpanKind.PRODUCER,
                                      attributes={"messaging.system": "kafka",
                                                  "messaging.destination.name": "audit-log"}):
            pass
        with co.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"db.system": "redis"}) as c:
            c.set_status(Status(StatusCode.ERROR))
        with co.start_as_current_span("call", kind=SpanKind.CLIENT, attributes={"rpc.service": "Geo"}):
            pass
    g = build()
    g.consume_traces(s.request("checkout"))
    edges = edges_by_key(g.snapshot())  # the database edge is there at once, the others wait
    assert set(edges) == {("checkout", "redis", "database")} and edges[("checkout", "redis", "database")][
        "errors"] == 1
    g.flush()
    snap = g.snapshot()
    assert set(edges_by_key(snap)) == {("checkout", "redis", "database"),
                                       ("checkout", "audit-log", "virtual_node"),
                                       ("checkout", "Geo", "virtual_node")}
    kinds = {n["id"]: n["kind"] for n in snap["nodes"]}
    assert kinds == {"checkout": "service", "redis": "database", "audit-log": "messaging", "Geo": "virtual"}


def test_a_service_named_like_a_virtual_node_is_a_service() -> None:
    s = Services("frontend", "geo-api")
    fe, geo = s.tracers["frontend"], s.tracers["geo-api"]
    with fe.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"peer.service": "geo-api"}):
        pass
    g = build()
    g.consume_traces(s.request("frontend"))
    g.flush()
    assert {n["id"]: n["virtual"] for n in g.snapshot()["nodes"]} == {"frontend": False, "geo-api": True}
    with fe.start_as_current_span("GET", kind=SpanKind.CLIENT):
        with geo.start_as_current_span("GET /geo", kind=SpanKind.SERVER):
            pass
    g.consume_traces(s.request("frontend", "geo-api"))  # geo-api now reports its own spans
    snap = g.snapshot()
    assert {n["id"]: (n["kind"], n["virtual"]) for n in snap["nodes"]} == {
        "frontend": ("service", False), "geo-api": ("service", False)}
    assert set(edges_by_key(snap)) == {("frontend", "geo-api", "virtual_node"), ("frontend", "geo-api", "")}
    d = g.digraph()
    assert d.edges["frontend", "geo-api"]["calls"] == 2
    assert d.edges["frontend", "geo-api"]["connection_types"] == ["", "virtual_node"]


def test_background_expiry_loop_turns_lone_halves_into_virtual_nodes() -> None:
    import time

    s = Services("frontend")
    with s.tracers["frontend"].start_as_current_span("GET", kind=SpanKind.CLIENT,
                                                     attributes={"peer.service": "maps"}):
        pass
    g = ServiceGraph(GraphConfig(store_ttl_s=0.05, expiry_interval_s=0.02), registry=CollectorRegistry())
    g.start()
    try:
        g.consume_traces(s.request("frontend"))
        deadline = time.monotonic() + 10.0
        while g.stats()["expired_entries"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        g.shutdown()
    assert g.stats()["expired_entries"] == 1
    assert set(edges_by_key(g.snapshot())) == {("frontend", "maps", "virtual_node")}


def test_odd_spans_do_not_break_the_graph() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    tid = b"\x07" * 16
    ss.spans.add(trace_id=tid, span_id=b"\x01" * 8, kind=42)  # unknown kind: ignored
    # a client span that ends before it starts, without status, and its server span
    ss.spans.add(trace_id=tid, span_id=b"\x02" * 8, kind=Span.SPAN_KIND_CLIENT,
                 start_time_unix_nano=2_000, end_time_unix_nano=1_000)
    srv = ss.spans.add(trace_id=tid, span_id=b"\x03" * 8, parent_span_id=b"\x02" * 8,
                       kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=0, end_time_unix_nano=0)
    srv.status.code = Status.STATUS_CODE_ERROR
    rs2 = req.resource_spans.add()  # a resource whose service.name is not a string
    kv2 = rs2.resource.attributes.add()
    kv2.key, kv2.value.int_value = "service.name", 7
    rs2.scope_spans.add().spans.add(trace_id=tid, span_id=b"\x04" * 8, kind=Span.SPAN_KIND_SERVER)
    g = build()
    g.consume_traces(req)
    g.consume_traces(ExportTraceServiceRequest())  # empty request
    e = edges_by_key(g.snapshot())[("svc", "svc", "")]
    assert (e["calls"], e["errors"], e["client_latency_sum_s"], e["server_latency_sum_s"]) == (1, 1, 0.0, 0.0)
    assert g.stats()["skipped_spans"] == 1
