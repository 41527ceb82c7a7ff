"""The service dependency graph built from OTLP spans.

Pairing follows the Collector's servicegraph connector and Tempo's service-graphs processor:

* resources without `service.name` are skipped (counted);
* CLIENT / PRODUCER spans wait in the pairing store under (trace id, span id),
  SERVER / CONSUMER spans under (trace id, parent span id); when both halves are there the call is
  recorded on the edge (client service -> server service) and the entry leaves the store;
* PRODUCER or CONSUMER on either side makes the edge `messaging_system`; a CONSUMER span with span
  links pairs through each link's (trace id, span id) instead of its parent (messaging semconv says
  links are the default correlation; contrib PR 48782 does the same);
* a CLIENT span with a database attribute (`database_name_attributes`) completes a `database` edge
  at once, without waiting for a server span (unless a server half of it already waits: an
  instrumented database proxy makes a normal edge), the callee named by the first `peer_attributes`
  value (else the first database attribute value), with server latency = client latency;
* a root SERVER / CONSUMER span (no parent, no links) can never pair, so it completes a
  `virtual_node` edge from `user` at once (the connector waits for the TTL to do the same);
* an entry not paired within `store_ttl_s` (wall clock) expires: a lone client half becomes a
  `virtual_node` edge to the first `peer_attributes` value (else `unknown`), its server latency set
  to the client latency like the database shortcut; a lone non-root server half is only counted;
* the store holds at most `store_max_items`; a span that needs a new entry while it is full is
  dropped and counted (`servicegraph_dropped_spans_total{reason="store_full"}`).

Duplicates (OTLP retries resend whole batches) never count twice: a half whose key already waits in
the store is a duplicate, and the pairing keys of recorded or expired calls are kept in a done-set
bounded by `dedupe_ttl_s` and `dedupe_max_items` (oldest evicted first, counted). One key per call
instead of one per span: (trace id, client span id) is the client's own id and the server's parent
id. Consequence: a second SERVER span under one CLIENT span counts as a duplicate (the connector
pairs only one of them too).

Spans are read from the request's wire bytes by the C reader in `receiver/otlp/spanwire.py` (one
tuple per span of a graph kind), not through protobuf objects. All state is guarded by one lock taken
once per request, so `consume_traces` (worker thread),
`snapshot()` / `digraph()` (API thread) and the expiry loop can run concurrently.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

import networkx as nx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from receiver.graph.config import GraphConfig
from receiver.graph.metrics import GraphMetricsCollector
from receiver.graph.stats import (
    CT_DATABASE,
    CT_MESSAGING,
    CT_NONE,
    CT_VIRTUAL,
    KIND_RANK,
    Bucket,
    EdgeStats,
)
from receiver.otlp.spanwire import graph_rows

log = logging.getLogger(__name__)

# OTLP SpanKind values
_SERVER, _CLIENT, _PRODUCER, _CONSUMER = 2, 3, 4, 5
_STATUS_ERROR = 2
_DUPLICATE, _FULL = -1, -2  # results of the helpers for the rarer span shapes
_FOLD_EVERY = 16  # requests between folds of the collected calls into the edges (<= 8192 calls held)

# pending entry layout (a list, mutated in place when the second half arrives)
# _CALLEE: a client half's callee name (first peer attribute), the server of its virtual-node edge
_C_SVC, _S_SVC, _C_LAT, _S_LAT, _FAILED, _CTYPE, _EXP, _CALLEE, _C_END, _PRODUCER_F, _KEY = range(11)


class ServiceGraph:
    """In-memory service dependency graph (networkx) with per-edge statistics and Prometheus export.

    A TracesConsumer: `consume_traces(ExportTraceServiceRequest)`.
    """

    def __init__(self, config: GraphConfig | None = None, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config if config is not None else GraphConfig()
        self.config.validate()
        c = self.config
        self._clock = clock
        self._lock = threading.Lock()
        self._bounds = [float(x) for x in c.latency_buckets_s]
        self._bucket_ns = max(1, int(c.bucket_s * 1e9))
        self._db_attrs = tuple(c.database_name_attributes)
        self._peer_attrs = tuple(c.peer_attributes)
        self._series_cfg = (self._bounds, self._bucket_ns, c.max_buckets)
        # state
        self._pending: dict[bytes, list] = {}
        self._done: dict[bytes, float] = {}  # keys of recorded/expired calls -> forget time
        self._edges: dict[tuple[str, str, str], EdgeStats] = {}
        self._g = nx.DiGraph()  # nodes: kind, virtual; edges: "stats" {connection_type: EdgeStats}
        self._obs: dict[tuple[str, str, str], list] = {}  # calls not yet folded into their edges
        self._obs_kinds: dict[tuple[str, str, str], tuple[str, str]] = {}  # node kinds of those edges
        self._unfolded = 0  # requests since the last fold
        # self-telemetry (plain ints, exported at scrape time)
        self.completed_calls = 0  # calls recorded on an edge
        self.paired_calls = 0  # ... of which had both halves (of removed edges; see stats())
        self.expired_entries = 0  # pairing-store entries that expired unpaired
        self.expired_unpaired_server = 0  # ... lone non-root server halves (no edge emitted)
        self.dropped_spans: dict[str, int] = {"store_full": 0, "invalid_id": 0}
        self.dropped_calls: dict[str, int] = {"edge_cap": 0, "node_cap": 0}
        self.skipped_spans = 0  # spans of resources without service.name
        self.duplicate_spans = 0
        self.dedupe_evicted = 0
        self.stale_edges = 0
        self.edges_created = 0
        self.late_events = 0  # calls older than an edge's oldest time bucket (of removed edges)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._collector = GraphMetricsCollector(self)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self._collector)

    # ------------------------------------------------------------------ ingest (hot path)
    def consume_traces(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> None:
        """`raw`: the request's wire bytes when the caller has them (else the request is serialized:
        reading the wire bytes in C is cheaper than reading protobuf fields from Python)."""
        self.consume_wire(raw if raw is not None else request.SerializeToString())

    def consume_wire(self, raw: bytes | memoryview) -> int:
        """Add the spans of one ExportTraceServiceRequest given as wire bytes; returns how many spans
        it held. Raises spanwire.WireError on bytes that are not one (nothing is added then)."""
        # The hot path: the C reader gives one tuple per client/server/producer/consumer span; per
        # span 2-3 dict operations and one small tuple per call. Calls are collected per edge and
        # folded into the edge statistics every _FOLD_EVERY requests.
        rows, total, skipped = graph_rows(raw, self._peer_attrs, self._db_attrs)
        cfg = self.config
        now = self._clock()
        exp = now + cfg.store_ttl_s
        dexp = now + cfg.dedupe_ttl_s
        max_items = cfg.store_max_items
        dedupe_max = cfg.dedupe_max_items
        virtual = cfg.virtual_nodes
        dup = dropped = invalid = 0
        with self._lock:
            pending = self._pending
            done = self._done
            obs = self._obs  # edge key -> calls of this request, folded into the edges at the end
            obs_kinds = self._obs_kinds
            if len(done) > dedupe_max:  # bounded by the cap + one request's spans
                self._evict_done()
            for kind, key, pkey, svc, lat, end, failed, is_db, callee, links in rows:
                if kind == _CLIENT or kind == _PRODUCER:
                    e = pending.get(key)
                    if e is None:
                        if key in done:
                            dup += 1
                            continue
                        if len(key) != 24:
                            invalid += 1
                            continue
                        if is_db and kind == _CLIENT:  # a database call completes at once
                            done[key] = dexp
                            ek = (svc, callee, CT_DATABASE)
                            calls = obs.get(ek)
                            if calls is None:
                                calls = obs[ek] = []
                                obs_kinds[ek] = ("service", "database")
                            calls.append((lat, lat, failed, False, end))
                            continue
                        if len(pending) >= max_items:
                            dropped += 1
                            continue
                        pending[key] = [svc, None, lat, 0.0, failed,
                                        CT_MESSAGING if kind == _PRODUCER else CT_NONE,
                                        exp, callee, end, kind == _PRODUCER, key]
                    elif e[_C_SVC] is None:  # the server half waits: complete the call
                        del pending[key]
                        done[key] = dexp
                        ek = (svc, e[_S_SVC], CT_MESSAGING if kind == _PRODUCER else e[_CTYPE])
                        calls = obs.get(ek)
                        if calls is None:
                            calls = obs[ek] = []
                        calls.append((lat, e[_S_LAT], e[_FAILED] or failed, True, end))
                    else:  # this client half is already waiting
                        dup += 1
                    continue
                # SERVER or CONSUMER
                if links is not None:  # a CONSUMER with links pairs through them
                    r = self._linked_consumer(links, svc, lat, end, failed, exp, dexp)
                    if r == _FULL:
                        dropped += 1
                    elif r == _DUPLICATE:
                        dup += 1
                    continue
                if not pkey:  # a root span never pairs: its caller is outside, a `user`
                    if key in done:
                        dup += 1
                        continue
                    done[key] = dexp
                    if virtual:
                        ek = ("user", svc, CT_VIRTUAL)
                        calls = obs.get(ek)
                        if calls is None:
                            calls = obs[ek] = []
                            obs_kinds[ek] = ("user", "service")
                        calls.append((lat, lat, failed, False, end))
                    continue
                e = pending.get(pkey)
                if e is None:
                    if pkey in done:
                        dup += 1
                        continue
                    if len(pkey) != 24:
                        invalid += 1
                        continue
                    if len(pending) >= max_items:
                        dropped += 1
                        continue
                    pending[pkey] = [None, svc, 0.0, lat, failed,
                                     CT_MESSAGING if kind == _CONSUMER else CT_NONE,
                                     exp, None, 0, False, pkey]
                elif e[_S_SVC] is None:  # the client half waits: complete the call
                    del pending[pkey]
                    done[pkey] = dexp
                    e[_S_SVC] = svc
                    ek = (e[_C_SVC], svc, CT_MESSAGING if kind == _CONSUMER else e[_CTYPE])
                    calls = obs.get(ek)
                    if calls is None:
                        calls = obs[ek] = []
                    calls.append((e[_C_LAT], lat, e[_FAILED] or failed, True, e[_C_END]))
                else:  # a server half for this client span already waits (a duplicate,
                    dup += 1  # or a second server span for one client span: ignored)
            self._unfolded += 1
            if self._unfolded >= _FOLD_EVERY:
                self._fold(now)
            if len(done) > dedupe_max:
                self._evict_done()
            self.duplicate_spans += dup
            self.dropped_spans["store_full"] += dropped
            self.dropped_spans["invalid_id"] += invalid
            self.skipped_spans += skipped
        return total

    def _settle(self) -> None:
        """Fold the collected calls now (lock held): before reads, expiry and flush."""
        self._fold(self._clock())

    def _fold(self, now: float) -> None:
        """Fold the calls collected since the last fold into their edges (lock held); a call whose
        edge is new and over the edge or node cap is dropped and counted. Runs every _FOLD_EVERY
        requests and before every read, expiry and flush: folding costs ~1 us per edge on top of
        ~0.4 us per call, so bigger batches per edge are cheaper."""
        self._unfolded = 0
        obs, self._obs = self._obs, {}
        if not obs:
            return
        kinds, self._obs_kinds = self._obs_kinds, {}
        edges = self._edges
        for ek, calls in obs.items():
            st = edges.get(ek)
            if st is None:
                ck, sk = kinds.get(ek, ("service", "service"))
                st = self._new_edge(ek, ck, sk, len(calls))
                if st is None:
                    continue
            st.add_many(calls, now)
            self.completed_calls += len(calls)

    def _linked_consumer(self, links: tuple[bytes, ...], svc: str, lat: float, end: int, failed: bool,
                         exp: float, dexp: float) -> int:
        """A CONSUMER span with links pairs with each linked PRODUCER span, keyed on the link's
        (trace id, span id) (lock held). Returns the calls completed, or _DUPLICATE when every link
        was seen before, or _FULL when an entry was needed and the store was full."""
        pending = self._pending
        done = self._done
        full = False
        n = seen = 0
        keys = dict.fromkeys(links)  # each linked span once, in order
        for key in keys:
            if len(key) != 24:
                continue
            if key in done:
                seen += 1
                continue
            e = pending.get(key)
            if e is None:
                if len(pending) >= self.config.store_max_items:
                    full = True
                    continue
                pending[key] = [None, svc, 0.0, lat, failed, CT_MESSAGING, exp, None, 0, False, key]
            elif e[_S_SVC] is None:
                del pending[key]
                done[key] = dexp
                e[_S_SVC] = svc
                self._complete(e[_C_SVC], svc, e[_C_LAT], lat, failed or e[_FAILED], CT_MESSAGING,
                               e[_C_END], True, "service", "service")
                n += 1
            else:
                seen += 1  # this consumer half already waits
        if seen and seen == len(keys):
            return _DUPLICATE
        return _FULL if full and not n else n

    def _complete(self, client: str, server: str, client_lat: float, server_lat: float, failed: bool,
                  ctype: str, event_ns: int, paired: bool, client_kind: str, server_kind: str) -> None:
        """Collect one call for its edge (lock held); `_fold` records it."""
        key = (client, server, ctype)
        calls = self._obs.get(key)
        if calls is None:
            calls = self._obs[key] = []
            if client_kind != "service" or server_kind != "service":
                self._obs_kinds[key] = (client_kind, server_kind)
        calls.append((client_lat, server_lat, failed, paired, event_ns))

    def _new_edge(self, key: tuple[str, str, str], client_kind: str, server_kind: str,
                  n_calls: int) -> EdgeStats | None:
        """Add an edge (and its nodes) unless a cap forbids it: then its `n_calls` calls are counted
        as dropped and None is returned (lock held)."""
        cfg = self.config
        if len(self._edges) >= cfg.max_edges:
            self.dropped_calls["edge_cap"] += n_calls
            return None
        g = self._g
        client, server, ctype = key
        new_nodes = (client not in g) + (server not in g and server != client)
        if new_nodes and g.number_of_nodes() + new_nodes > cfg.max_nodes:
            self.dropped_calls["node_cap"] += n_calls
            return None
        for name, kind in ((client, client_kind), (server, server_kind)):
            if name in g:
                attrs = g.nodes[name]
                if KIND_RANK[kind] < KIND_RANK[attrs["kind"]]:
                    attrs["kind"] = kind
                    attrs["virtual"] = kind != "service"
            else:
                g.add_node(name, kind=kind, virtual=kind != "service")
        st = EdgeStats(client, server, ctype, self._series_cfg)
        self._edges[key] = st
        if g.has_edge(client, server):
            g.edges[client, server]["stats"][ctype] = st
        else:
            g.add_edge(client, server, stats={ctype: st})
        self.edges_created += 1
        return st

    def _evict_done(self) -> None:
        """The done-set is over its cap: forget the oldest keys, down to 15/16 of the cap so the scan
        over deleted slots stays amortized (lock held)."""
        seen = self._done
        cap = self.config.dedupe_max_items
        n = min(len(seen), len(seen) - cap + max(1, cap // 16))
        for k in list(islice(seen, n)):
            del seen[k]
        self.dedupe_evicted += n

    # ------------------------------------------------------------------ expiry
    def expire(self, now_s: float | None = None) -> int:
        """Expire unpaired store entries past their TTL, old done-set keys and stale edges.
        `now_s` is wall-clock unix seconds (default: now). Returns the number of expired store entries."""
        now = self._clock() if now_s is None else now_s
        with self._lock:
            self._settle()
            n = self._expire_pending(now, now)
            done = self._done
            old = []
            for k, t in done.items():
                if t > now:
                    break
                old.append(k)
            for k in old:
                del done[k]
            self._expire_stale(now)
        return n

    def flush(self) -> int:
        """Expire every pending store entry now (virtual-node edges appear at once)."""
        with self._lock:
            self._settle()
            return self._expire_pending(math.inf, self._clock())

    def _expire_pending(self, now: float, stamp: float) -> int:
        """Expire store entries whose TTL ended by `now`; `stamp` is the wall-clock time recorded on
        the edges they complete (lock held)."""
        pending = self._pending
        old = []
        for k, e in pending.items():
            if e[_EXP] > now:
                break
            old.append(k)
        forget = stamp + self.config.dedupe_ttl_s
        for k in old:
            e = pending.pop(k)
            self.expired_entries += 1
            if e[_C_SVC] is None:
                # lone server half; root spans were completed at once, so this one's client is
                # simply missing (not sent, sampled out, or another receiver got it)
                self.expired_unpaired_server += 1
                continue
            if not self.config.virtual_nodes:
                continue
            server = e[_CALLEE]
            server_kind = "messaging" if e[_PRODUCER_F] else "virtual"
            lat = e[_C_LAT]
            self._done[k] = forget  # a retried copy of this client span must not count again
            self._complete(e[_C_SVC], server, lat, lat, e[_FAILED], CT_VIRTUAL, e[_C_END], False,
                           "service", server_kind)
        self._fold(stamp)
        return len(old)

    def _expire_stale(self, now: float) -> None:
        limit = now - self.config.edge_stale_s
        stale = [k for k, st in self._edges.items() if st.updated < limit]
        g = self._g
        for key in stale:
            st = self._edges.pop(key)
            self.late_events += st.late_events
            self.paired_calls += st.paired
            client, server, ctype = key
            stats = g.edges[client, server]["stats"]
            del stats[ctype]
            if not stats:
                g.remove_edge(client, server)
                for n in (client, server):
                    if n in g and g.degree(n) == 0:
                        g.remove_node(n)
            self.stale_edges += 1

    # ------------------------------------------------------------------ read side
    def snapshot(self) -> dict[str, Any]:
        """The `GET /api/v1/graph` contract: nodes and one edge per (client, server, connection_type)."""
        bounds = self._bounds
        with self._lock:
            self._settle()
            edges = [st.to_dict(bounds) for _, st in sorted(self._edges.items())]
            nodes = [{"id": n, "virtual": a["virtual"], "kind": a["kind"]}
                     for n, a in sorted(self._g.nodes.items())]
        by_id = {n["id"]: n for n in nodes}
        for n in nodes:
            n.update(calls_in=0, calls_out=0, errors_in=0, errors_out=0)
        for e in edges:
            src, dst = by_id[e["source"]], by_id[e["target"]]
            src["calls_out"] += e["calls"]
            src["errors_out"] += e["errors"]
            dst["calls_in"] += e["calls"]
            dst["errors_in"] += e["errors"]
        return {"nodes": nodes, "edges": edges}

    def digraph(self) -> nx.DiGraph:
        """A copy of the graph. Node attrs: kind, virtual. Edge attrs: the snapshot edge fields with the
        connection types of one (client, server) pair folded together (`connection_type` = the one
        with most calls, `connection_types` = all)."""
        bounds = self._bounds
        out = nx.DiGraph()
        with self._lock:
            self._settle()
            for n, a in self._g.nodes.items():
                out.add_node(n, kind=a["kind"], virtual=a["virtual"])
            for u, v, a in self._g.edges(data=True):
                stats: dict[str, EdgeStats] = a["stats"]
                if len(stats) == 1:
                    (st,) = stats.values()
                    d = st.to_dict(bounds)
                else:
                    merged = EdgeStats(u, v, "", self._series_cfg)
                    for st in stats.values():
                        st.merge_into(merged)
                    d = merged.to_dict(bounds)
                    d["connection_type"] = max(stats.values(), key=lambda s: s.calls).connection_type
                d["connection_types"] = sorted(stats)
                del d["source"], d["target"]
                out.add_edge(u, v, **d)
        return out

    def edge_series(self, client: str, server: str, connection_type: str | None = None) -> list[Bucket]:
        """Event-time buckets of the edge client -> server (all connection types summed unless one is
        given), oldest first."""
        with self._lock:
            self._settle()
            sts = [st for (c, s, ct), st in self._edges.items()
                   if c == client and s == server and (connection_type is None or ct == connection_type)]
            parts = [st.buckets(self._bucket_ns) for st in sts]
        if len(parts) == 1:
            return parts[0]
        merged: dict[float, Bucket] = {}
        for part in parts:
            for b in part:
                m = merged.get(b.start_s)
                if m is None:
                    merged[b.start_s] = Bucket(b.start_s, b.calls, b.errors, b.client_latency_sum_s,
                                               b.server_latency_sum_s, b.paired_calls, b.network_gap_sum_s)
                else:
                    m.calls += b.calls
                    m.errors += b.errors
                    m.client_latency_sum_s += b.client_latency_sum_s
                    m.server_latency_sum_s += b.server_latency_sum_s
                    m.paired_calls += b.paired_calls
                    m.network_gap_sum_s += b.network_gap_sum_s
        return [merged[k] for k in sorted(merged)]

    def stats(self) -> dict[str, Any]:
        """Self-telemetry as a dict (also exported on /metrics)."""
        with self._lock:
            self._settle()
            return {
                "store_items": len(self._pending),
                "dedupe_items": len(self._done),
                "edges": len(self._edges),
                "nodes": self._g.number_of_nodes(),
                "completed_calls": self.completed_calls,
                "paired_calls": self.paired_calls + sum(st.paired for st in self._edges.values()),
                "expired_entries": self.expired_entries,
                "expired_unpaired_server": self.expired_unpaired_server,
                "dropped_spans": dict(self.dropped_spans),
                "dropped_calls": dict(self.dropped_calls),
                "skipped_spans": self.skipped_spans,
                "duplicate_spans": self.duplicate_spans,
                "dedupe_evicted": self.dedupe_evicted,
                "stale_edges": self.stale_edges,
                "edges_created": self.edges_created,
                "late_events": self.late_events + sum(st.late_events for st in self._edges.values()),
            }

    def _metric_rows(self) -> tuple[list[tuple], dict[str, Any]]:
        """Edge counters for the Prometheus collector, copied under the lock."""
        with self._lock:
            self._settle()
            rows = [(st.client, st.server, st.connection_type, st.calls, st.errors, list(st.client_counts),
                     st.client_sum, list(st.server_counts), st.server_sum) for st in self._edges.values()]
        return rows, self.stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="servicegraph-expiry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.expiry_interval_s):
            try:
                self.expire()
            except Exception:  # never let the loop die
                log.exception("service graph expiry failed")

    def shutdown(self) -> None:
        """Stop the expiry loop and flush the pairing store into edges. Idempotent."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join()
        self.flush()
