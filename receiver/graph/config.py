"""Configuration of the service-graph stage (`graph:` section of the YAML config).

Defaults and where they come from:

* `store_ttl_s` 10 s (Tempo's `wait`; the Collector's connector uses 2 s). The client and the server
  span of one call are usually exported by different services, each through its own SDK batch
  processor (5 s schedule by default) and often a Collector batch processor on top, so 2 s pairs too
  few calls and turns the rest into virtual nodes.
* `store_max_items` 50 000 (Tempo 10 000, connector 1 000): an unpaired entry costs ~300 bytes, so
  the cap is ~15 MB and leaves room for ~5k spans/s of cross-batch pairing within the TTL.
* `latency_buckets_s`: the connector's default seconds buckets (0.002 ... 15).
* `edge_stale_s` 15 min: the connector's `cache_loop` / Tempo's `stale_duration`.
* `dedupe_ttl_s` 300 s: the Collector exporters' default `retry_on_failure.max_elapsed_time`, so a
  batch retried until the exporter gives up is still recognised (`dedupe_max_items` bounds it first
  under load: ~100 bytes a key, 20 MB at the cap).
* Series: `bucket_s` 10 s x `max_buckets` 360 = the last hour of each edge, for baselines.
* Attribute lists: see `DEFAULT_DATABASE_NAME_ATTRIBUTES` and `DEFAULT_PEER_ATTRIBUTES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.component import StageConfig, positive, require

# A CLIENT span carrying any of these is a database call and completes a `database` edge at once
# (Tempo's default `database_name_attributes` plus the semconv >= 1.26 `db.system.name`).
DEFAULT_DATABASE_NAME_ATTRIBUTES: list[str] = ["db.namespace", "db.name", "db.system.name", "db.system"]

# The name of the callee when no server span exists (database edges and virtual nodes): the first of
# these attributes present on the client/producer span. Tempo's precedence (peer.service,
# server.address, db.namespace, db.name) widened with the old-semconv `net.peer.name`, `rpc.service`,
# the messaging destination for producers that nobody consumes, and the DB system as a last resort.
# `network.peer.address` (an IP) is deliberately not used: one node per pod IP floods the graph.
DEFAULT_PEER_ATTRIBUTES: list[str] = [
    "peer.service",
    "server.address",
    "net.peer.name",
    "rpc.service",
    "messaging.destination.name",
    "db.namespace",
    "db.name",
    "db.system.name",
    "db.system",
]

# The Collector servicegraph connector's default latency buckets, in seconds.
DEFAULT_LATENCY_BUCKETS_S: list[float] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
]


@dataclass
class GraphConfig(StageConfig):
    enabled: bool = True
    # pairing store (client half / server half of a call waiting for the other half)
    store_ttl_s: float = 10.0
    store_max_items: int = 50_000
    expiry_interval_s: float = 2.0
    # unpaired halves become edges to virtual nodes ("user" for root server spans, a peer
    # attribute or "unknown" for client spans nobody answered)
    virtual_nodes: bool = True
    database_name_attributes: list[str] = field(
        default_factory=lambda: list(DEFAULT_DATABASE_NAME_ATTRIBUTES))
    peer_attributes: list[str] = field(default_factory=lambda: list(DEFAULT_PEER_ATTRIBUTES))
    # duplicate suppression for OTLP retries: (trace id, span id) remembered this long / this many
    dedupe_ttl_s: float = 300.0
    dedupe_max_items: int = 200_000
    # graph bounds (an edge costs ~21 KB with the default series: 5000 edges ~ 105 MB at most)
    max_edges: int = 5_000
    max_nodes: int = 2_000
    edge_stale_s: float = 900.0
    # latency histograms and per-edge event-time series
    latency_buckets_s: list[float] = field(default_factory=lambda: list(DEFAULT_LATENCY_BUCKETS_S))
    bucket_s: float = 10.0
    max_buckets: int = 360

    def validate(self) -> None:
        super().validate()
        positive(self.store_ttl_s, "graph.store_ttl_s")
        require(isinstance(self.store_max_items, int) and self.store_max_items > 0,
                "graph.store_max_items", f"must be an integer > 0, got {self.store_max_items!r}")
        positive(self.expiry_interval_s, "graph.expiry_interval_s")
        positive(self.dedupe_ttl_s, "graph.dedupe_ttl_s")
        require(isinstance(self.dedupe_max_items, int) and self.dedupe_max_items > 0,
                "graph.dedupe_max_items", f"must be an integer > 0, got {self.dedupe_max_items!r}")
        for key in ("max_edges", "max_nodes", "max_buckets"):
            value = getattr(self, key)
            require(isinstance(value, int) and value > 0, f"graph.{key}",
                    f"must be an integer > 0, got {value!r}")
        require(self.max_nodes >= 2, "graph.max_nodes", "must be >= 2 (an edge has two nodes)")
        positive(self.edge_stale_s, "graph.edge_stale_s")
        require(isinstance(self.bucket_s, (int, float)) and self.bucket_s >= 0.001, "graph.bucket_s",
                f"must be >= 0.001 (seconds), got {self.bucket_s!r}")
        b = self.latency_buckets_s
        require(isinstance(b, list) and len(b) > 0, "graph.latency_buckets_s", "must be a non-empty list")
        require(all(isinstance(x, (int, float)) and x > 0 for x in b), "graph.latency_buckets_s",
                "every bucket bound must be a number > 0")
        require(all(b[i] < b[i + 1] for i in range(len(b) - 1)), "graph.latency_buckets_s",
                "bucket bounds must be strictly increasing")
        for key in ("database_name_attributes", "peer_attributes"):
            value = getattr(self, key)
            require(isinstance(value, list) and all(isinstance(x, str) and x for x in value),
                    f"graph.{key}", "must be a list of non-empty strings")
