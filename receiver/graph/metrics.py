"""Prometheus export of the service graph, generated at scrape time from the edge statistics.

Series as the Collector's servicegraph connector / Tempo name them, so Grafana's service graph view
works unchanged: `traces_service_graph_request_total`, `traces_service_graph_request_failed_total`,
`traces_service_graph_request_server_seconds`, `traces_service_graph_request_client_seconds`, labels
`client`, `server`, `connection_type`. The ingest path makes no prometheus call per span.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from receiver.graph.graph import ServiceGraph

LABELS = ["client", "server", "connection_type"]


def _hist_buckets(counts: list[int], les: list[str]) -> list[tuple[str, float]]:
    out = []
    cum = 0
    for le, c in zip(les, counts, strict=True):
        cum += c
        out.append((le, float(cum)))
    return out


class GraphMetricsCollector(Collector):
    def __init__(self, graph: ServiceGraph) -> None:
        self._graph = graph

    def describe(self) -> list[Metric]:
        return []  # dynamic series: registering must not call collect()

    def collect(self) -> Iterator[Metric]:
        g = self._graph
        rows, s = g._metric_rows()
        les = [floatToGoString(b) for b in g._bounds] + ["+Inf"]
        total = CounterMetricFamily("traces_service_graph_request", "Requests between two nodes",
                                    labels=LABELS)
        failed = CounterMetricFamily("traces_service_graph_request_failed",
                                     "Failed requests between two nodes", labels=LABELS)
        server = HistogramMetricFamily("traces_service_graph_request_server_seconds",
                                       "Time for a request between two nodes as seen from the server",
                                       labels=LABELS)
        client = HistogramMetricFamily("traces_service_graph_request_client_seconds",
                                       "Time for a request between two nodes as seen from the client",
                                       labels=LABELS)
        for c, sv, ct, calls, errors, ccounts, csum, scounts, ssum in rows:
            lv = [c, sv, ct]
            total.add_metric(lv, calls)
            failed.add_metric(lv, errors)
            client.add_metric(lv, _hist_buckets(ccounts, les), csum)
            server.add_metric(lv, _hist_buckets(scounts, les), ssum)
        yield total
        yield failed
        yield server
        yield client

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def by_reason(name: str, doc: str, values: dict[str, float]) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["reason"])
            for reason, v in sorted(values.items()):
                family.add_metric([reason], v)
            return family

        yield gauge("servicegraph_edges", "Edges (client, server, connection_type) held in the graph",
                    s["edges"])
        yield gauge("servicegraph_nodes", "Nodes held in the graph", s["nodes"])
        yield gauge("servicegraph_store_items", "Unpaired span halves waiting in the pairing store",
                    s["store_items"])
        yield gauge("servicegraph_dedupe_items", "(trace id, span id) keys remembered to suppress duplicates",
                    s["dedupe_items"])
        yield counter("servicegraph_calls", "Calls recorded on an edge (paired, database or virtual)",
                      s["completed_calls"])
        yield counter("servicegraph_paired_calls", "Calls recorded with both a client and a server span",
                      s["paired_calls"])
        yield counter("servicegraph_expired_edges", "Pairing-store entries that expired unpaired",
                      s["expired_entries"])
        yield counter("servicegraph_unpaired_server_spans",
                      "Expired server/consumer halves whose client never arrived (no edge emitted)",
                      s["expired_unpaired_server"])
        yield by_reason("servicegraph_dropped_spans",
                        "Spans not used for the graph: pairing store full or invalid ids", s["dropped_spans"])
        yield by_reason("servicegraph_dropped_calls",
                        "Calls not recorded because the edge or node cap was reached", s["dropped_calls"])
        yield counter("servicegraph_skipped_spans", "Spans of resources without service.name",
                      s["skipped_spans"])
        yield counter("servicegraph_duplicate_spans", "Spans seen before (OTLP retries), not counted again",
                      s["duplicate_spans"])
        yield counter("servicegraph_dedupe_evicted", "Seen-set keys evicted because the set was full",
                      s["dedupe_evicted"])
        yield counter("servicegraph_stale_edges", "Edges removed after edge_stale_s without calls",
                      s["stale_edges"])
        yield counter("servicegraph_late_events",
                      "Calls older than the edge's oldest retained time bucket (counted, not in the series)",
                      s["late_events"])
