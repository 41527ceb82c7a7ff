"""The graph fed by the official OTLP gRPC span exporter (one per service, batching) through a real
gRPC TraceService on a loopback port: the same exact edges as the in-process run."""

from __future__ import annotations

from concurrent import futures

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest

from receiver.graph import GraphConfig, ServiceGraph
from tests.test_graph import ALL, edges_by_key, run_topology


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, graph: ServiceGraph) -> None:
        self.graph = graph
        self.requests = 0

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        self.graph.consume_traces(request)
        self.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class _ExportingServices:
    def __init__(self, endpoint: str, *names: str) -> None:
        self.providers: dict[str, TracerProvider] = {}
        self.tracers = {}
        for name in names:
            tp = TracerProvider(resource=Resource.create({"service.name": name}))
            tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                     max_export_batch_size=7, schedule_delay_millis=50))
            self.providers[name] = tp
            self.tracers[name] = tp.get_tracer("test")

    def shutdown(self) -> None:
        for tp in self.providers.values():
            tp.force_flush()
            tp.shutdown()


def test_sdk_grpc_exporters_build_the_exact_graph() -> None:
    registry = CollectorRegistry()
    graph = ServiceGraph(GraphConfig(), registry=registry)
    graph.start()
    servicer = _TraceService(graph)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))  # concurrent Export calls
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        services = _ExportingServices(f"127.0.0.1:{port}", *ALL)
        run_topology(services, iterations=6, payment_errors=3)  # type: ignore[arg-type]
        services.shutdown()
    finally:
        server.stop(grace=2).wait()
    graph.shutdown()  # flushes the pairing store: the virtual nodes appear
    assert servicer.requests > len(ALL)  # batches of 7 spans: many requests, interleaved services
    edges = edges_by_key(graph.snapshot())
    assert {k: (e["calls"], e["errors"]) for k, e in edges.items()} == {
        ("user", "frontend", "virtual_node"): (6, 0),
        ("frontend", "checkout", ""): (6, 0),
        ("checkout", "payments", ""): (6, 3),
        ("checkout", "postgres", "database"): (6, 0),
        ("checkout", "email", "messaging_system"): (6, 0),
        ("checkout", "notifier", "messaging_system"): (6, 0),
        ("frontend", "geo-api", "virtual_node"): (6, 0),
        ("frontend", "unknown", "virtual_node"): (6, 0),
    }
    st = graph.stats()
    assert st["duplicate_spans"] == 0 and st["dropped_spans"]["store_full"] == 0
    text = generate_latest(registry).decode()
    assert ('traces_service_graph_request_failed_total{client="checkout",connection_type="",'
            'server="payments"} 3.0') in text
