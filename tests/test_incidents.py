"""Incident grouping, resolution, knowledge graph memory and the incident API, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.model import (
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
)
from receiver.rca.incident_api import IncidentApi
from receiver.rca.incident_model import Incident
from receiver.rca.incidents import IncidentConfig, IncidentTracker, graph_connected
from receiver.rca.memory import IncidentMemory, MemoryConfig
from receiver.store import Store
from tests.fakeclock import FakeClock

pytest_plugins = ["tests.store_fixtures"]  # pg_server (a real PostgreSQL server), make_store

StoreFactory = Callable[..., Store]
S = 1_000_000_000
T0 = 1_700_000_000 * S  # historical event time, as in a replay
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def templates_of(system: str) -> list[str]:
    path = DATASETS / "loghub_2k" / system / f"{system}_2k.log_templates_corrected.csv"
    with path.open(newline="") as fh:  # FileNotFoundError (a failure) when the datasets are missing
        return [row["EventTemplate"] for row in csv.DictReader(fh)]


def shop_graph() -> nx.DiGraph:
    """caller -> callee, like ServiceGraph.digraph()."""
    g = nx.DiGraph()
    g.add_edges_from([("frontend", "checkout"), ("checkout", "payments"), ("payments", "payments-db"),
                      ("frontend", "cart"), ("cart", "redis"), ("mailer", "smtp"),
                      ("namenode", "datanode"), ("hbase", "zookeeper"), ("hbase", "datanode")])
    return g


def anomaly(service: str, t: int, severity: str = "high", templates: list[str] | None = None,
            evidence: list[str] | None = None, kind: str = "error_burst") -> Finding:
    attrs: dict[str, Any] = {A_SERVICE: service, A_SEVERITY: severity, A_TYPE: kind,
                             A_WINDOW_START: t - 60 * S, A_WINDOW_END: t,
                             A_EVIDENCE: evidence or [f"{service}: request 4711 failed"]}
    if templates is not None:
        attrs["anomaly.templates"] = templates
    return Finding(EVENT_ANOMALY, attrs, body="", time_ns=time.time_ns())


def report(root: str, t: int, symptom: str = "", path: list[str] | None = None, **extra: Any) -> Finding:
    attrs: dict[str, Any] = {R_ROOT_CAUSE: root, R_CANDIDATES: [root, "checkout"], R_CONFIDENCE: 0.8,
                             R_PATH: path or [root], A_WINDOW_END: t}
    if symptom:
        attrs[A_SERVICE] = symptom
    attrs.update(extra)
    return Finding(EVENT_RCA, attrs, body="", time_ns=t)


def tracker_for(store: Store | None, clock: FakeClock, **cfg: Any) -> IncidentTracker:
    memory_cfg = cfg.pop("memory", None) or MemoryConfig()
    config = IncidentConfig(correlation_window_s=120, quiet_period_s=600, **cfg)
    reg = CollectorRegistry()
    return IncidentTracker(config, store, registry=reg,
                           connected=graph_connected(shop_graph, max_hops=config.connect_hops), clock=clock,
                           memory=IncidentMemory(memory_cfg, reg))


def test_connected_services_in_window_form_one_incident(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock(T0)
    tr = tracker_for(store, clock)
    a = tr.observe(anomaly("payments-db", T0, severity="medium"))
    clock.t = T0 + 30 * S
    b = tr.observe(anomaly("checkout", T0 + 30 * S, severity="critical"))  # 2 hops from payments-db
    clock.t = T0 + 60 * S
    c = tr.observe(anomaly("frontend", T0 + 60 * S))
    other = tr.observe(anomaly("mailer", T0 + 40 * S))  # not connected to the shop
    assert a is not None and b is not None and c is not None and other is not None
    assert a.id == b.id == c.id != other.id
    assert c.services == ["payments-db", "checkout", "frontend"]
    assert c.severity == "critical" and c.finding_count == 3 and c.opened_ns == T0
    assert c.updated_ns == T0 + 60 * S
    assert other.services == ["mailer"]
    stored = {i.id: i for i in store.list_incidents(status="open")}
    assert set(stored) == {c.id, other.id}
    assert stored[c.id].services == c.services and stored[c.id].finding_ids == c.finding_ids
    # the same finding observed twice (RCA stage and fan-out) is counted once
    again = anomaly("frontend", T0 + 61 * S)
    tr.observe(again)
    assert tr.observe(again).finding_count == 4  # type: ignore[union-attr]
    assert tr.registry.get_sample_value("incidents_opened_total") == 2


def test_far_apart_or_beyond_hops_are_separate() -> None:
    clock = FakeClock(T0)
    tr = tracker_for(None, clock, connect_hops=1)
    a = tr.observe(anomaly("checkout", T0))
    b = tr.observe(anomaly("payments-db", T0 + 10 * S))  # 2 hops away with connect_hops=1
    c = tr.observe(anomaly("checkout", T0 + 10 * 60 * S))  # connected but outside the 120 s window
    assert a and b and c
    assert len({a.id, b.id, c.id}) == 3
    assert not graph_connected(shop_graph, 1)("checkout", "payments-db")
    assert graph_connected(shop_graph, 2)("checkout", "payments-db")
    assert graph_connected(shop_graph, 2)("payments-db", "checkout")  # direction ignored
    assert not graph_connected(shop_graph, 5)("checkout", "smtp")
    assert not graph_connected(shop_graph, 5)("checkout", "unknown-svc")


def test_bridging_finding_merges_incidents(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock(T0)
    tr = tracker_for(store, clock, connect_hops=1)
    a = tr.observe(anomaly("frontend", T0))
    b = tr.observe(anomaly("payments", T0 + 5 * S))
    assert a and b and a.id != b.id
    c = tr.observe(anomaly("checkout", T0 + 10 * S))  # linked to both: one burst
    assert c is not None and c.id == a.id
    assert set(c.services) == {"frontend", "payments", "checkout"} and c.finding_count == 3
    assert [i.id for i in store.list_incidents()] == [a.id]
    assert store.get_incident(b.id) is None and b.id not in tr.memory
    assert tr.registry.get_sample_value("incidents_merged_total") == 1


def test_quiet_period_resolves(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock(T0)
    tr = tracker_for(store, clock)
    inc = tr.observe(anomaly("checkout", T0))
    assert inc is not None
    clock.t = T0 + 599 * S
    assert tr.resolve_quiet() == []
    clock.t = T0 + 600 * S
    resolved = tr.resolve_quiet()
    assert [i.id for i in resolved] == [inc.id]
    got = store.get_incident(inc.id)
    assert got is not None and got.status == "resolved" and got.resolve_reason == "quiet"
    assert got.resolved_ns == T0 + 600 * S
    # a later anomaly of the same service opens a NEW incident
    later = tr.observe(anomaly("checkout", T0 + 601 * S))
    assert later is not None and later.id != inc.id and later.status == "open"
    # a record stamped far in the future (beyond the wall clock) does not close open incidents
    tr.observe(anomaly("mailer", T0 + 10 * 3600 * S))
    assert store.get_incident(later.id).status == "open"  # type: ignore[union-attr]
    # event time alone closes quiet incidents (replay without wall-clock gaps)
    clock.t = T0 + 3600 * S
    far = tr.observe(anomaly("smtp", T0 + 3600 * S))
    assert far is not None
    assert store.get_incident(later.id).status == "resolved"  # type: ignore[union-attr]
    assert tr.registry.get_sample_value("incidents_resolved_total", {"reason": "quiet"}) == 2


def test_resolver_thread_resolves_on_wall_clock() -> None:
    config = IncidentConfig(quiet_period_s=0.2, resolve_interval_s=0.05)
    tr = IncidentTracker(config, None, registry=CollectorRegistry())
    tr.start()
    try:
        inc = tr.observe(anomaly("checkout", T0))  # historical event time; the wall clock decides
        assert inc is not None
        deadline = time.monotonic() + 20
        while tr.open_incidents() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tr.open_incidents() == []
        assert tr.incident(inc.id).status == "resolved"  # type: ignore[union-attr]
    finally:
        tr.shutdown()
        tr.shutdown()


def test_rca_report_attaches_root_cause_and_remediation(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock(T0)
    tr = tracker_for(store, clock)
    inc = tr.observe(anomaly("checkout", T0))
    tr.observe(anomaly("frontend", T0 + 5 * S))
    assert inc is not None
    rep = report("payments-db", T0 + 20 * S, symptom="checkout", path=["payments-db", "payments", "checkout"],
                 **{"rca.root_cause_issue": "connection refused",
                    "llm.remediation_steps": ["restart payments-db"]})
    got = tr.observe(rep)
    assert got is not None and got.id == inc.id
    assert got.root_cause_service == "payments-db" and "payments-db" in got.services
    assert got.propagation_path == ["payments-db", "payments", "checkout"]
    assert got.remediation == ["restart payments-db"] and got.root_cause_issue == "connection refused"
    assert got.rca_confidence == 0.8 and got.rca_report_id == rep.id and rep.id in got.finding_ids
    assert store.get_incident(inc.id).root_cause_service == "payments-db"  # type: ignore[union-attr]
    # a report naming its incident explicitly goes there even without a shared service
    other = tr.observe(anomaly("mailer", T0 + 30 * S))
    assert other is not None
    named = tr.observe(report("smtp", T0 + 31 * S, **{"rca.incident_id": other.id}))
    assert named is not None and named.id == other.id and named.root_cause_service == "smtp"
    # a report with no incident in sight opens one
    lone = tr.observe(report("redis", T0 + 3 * 3600 * S, path=["redis", "cart"]))
    assert lone is not None and lone.id not in (inc.id, other.id) and lone.services == ["redis", "cart"]
    assert tr.observe(Finding("something.else", {})) is None


def test_caps_open_incidents_and_per_incident_lists() -> None:
    clock = FakeClock(T0)
    tr = tracker_for(None, clock, max_open_incidents=2, max_findings_per_incident=3)
    a = tr.observe(anomaly("mailer", T0))
    b = tr.observe(anomaly("redis", T0 + S))
    c = tr.observe(anomaly("payments-db", T0 + 2 * S))
    assert a and b and c
    assert {i.id for i in tr.open_incidents()} == {b.id, c.id}
    assert tr.incident(a.id).resolve_reason == "evicted"  # type: ignore[union-attr]
    for i in range(4):
        tr.observe(anomaly("payments-db", T0 + (3 + i) * S))
    got = tr.incident(c.id)
    assert got is not None and got.finding_count == 5 and len(got.finding_ids) == 3
    assert tr.registry.get_sample_value("incident_items_dropped_total", {"what": "finding_ids"}) == 2
    assert tr.registry.get_sample_value("incidents_resolved_total", {"reason": "evicted"}) == 1


def test_resolution_notes_api_and_graph(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock(T0)
    tr = tracker_for(store, clock)
    store.consume_findings([f := anomaly("checkout", T0, evidence=["conn refused to 10.0.0.7:5432"])])
    inc = tr.observe(f)
    tr.observe(report("payments-db", T0 + 5 * S, symptom="checkout",
                      **{"rca.remediation_steps": ["restart payments-db", "raise max_connections"]}))
    assert inc is not None
    api = IncidentApi(tr)
    listed = api.list_incidents(None, 10)
    assert [i["id"] for i in listed] == [inc.id] and listed[0]["status"] == "open"
    assert listed[0]["root_cause_service"] == "payments-db"
    clock.t = T0 + 60 * S
    out = api.add_resolution(inc.id, "payments-db hit max_connections; raised to 500", "oncall")
    assert out is not None and out["incident"]["status"] == "resolved"
    assert out["incident"]["resolve_reason"] == "manual" and out["resolution"]["author"] == "oncall"
    assert api.add_resolution("nope", "x", "") is None
    with pytest.raises(ValueError):
        api.add_resolution(inc.id, "  ", "")
    with pytest.raises(ValueError):
        api.list_incidents("bogus", 10)
    detail = api.get_incident(inc.id)
    assert detail is not None
    json.dumps(detail)  # serialisable as is
    assert [n["note"] for n in detail["resolution_notes"]] == [
        "payments-db hit max_connections; raised to 500"]
    assert [x["id"] for x in detail["findings"]] == [f.id]  # the stored anomaly
    assert detail["templates"] == ["conn refused to <*>"]  # masked evidence stands in for templates
    nodes = {n["id"]: n for n in detail["graph"]["nodes"]}
    rels = {(e["source"], e["relation"], e["target"]) for e in detail["graph"]["edges"]}
    node = f"incident:{inc.id}"
    assert nodes[node]["type"] == "incident" and nodes[node]["status"] == "resolved"
    assert (node, "affects", "service:checkout") in rels
    assert (node, "caused_by", "root_cause:payments-db") in rels
    assert ("root_cause:payments-db", "located_in", "service:payments-db") in rels
    remediations = [n for n in nodes.values() if n["type"] == "remediation"]
    assert sorted(r["text"] for r in remediations) == ["raise max_connections", "restart payments-db"]
    assert all((r["id"], "fixes", "root_cause:payments-db") in rels for r in remediations)
    notes = [n for n in nodes.values() if n["type"] == "resolution"]
    assert len(notes) == 1 and notes[0]["author"] == "oncall"
    assert api.get_incident("missing") is None


def test_similar_incident_ranks_the_right_past_incident_first(make_store: StoreFactory) -> None:
    store = make_store()
    hdfs, ssh, zk = templates_of("HDFS"), templates_of("OpenSSH"), templates_of("Zookeeper")
    clock = FakeClock(T0)
    tr = tracker_for(store, clock)
    past = {
        "hdfs": (["datanode", "namenode"], hdfs[:6]),
        "ssh": (["bastion"], ssh[:6]),
        "zk": (["zookeeper", "datanode"], zk[:6]),
    }
    ids = {}
    t = T0
    n_incidents = 0
    for name, (services, tpls) in past.items():
        first = None
        for s in services:
            clock.t = t
            got = tr.observe(anomaly(s, t, templates=tpls))
            first = first or got
        assert first is not None
        ids[name] = first.id
        n_incidents += 1
        assert len(store.list_incidents()) == n_incidents  # each past incident is one connected burst
        tr.add_resolution(first.id, f"fixed {name}")
        t += 3 * 3600 * S
    # a new incident on the datanode with HDFS templates (some new, some shared) looks like "hdfs"
    clock.t = t
    new = tr.observe(anomaly("datanode", t, templates=hdfs[2:8]))
    assert new is not None
    ranked = tr.similar(new, k=3)
    assert ranked[0][0].id == ids["hdfs"]
    assert [i.id for i, _ in ranked] == [ids["hdfs"], ids["zk"]]  # ssh shares nothing
    assert ranked[0][1] > ranked[1][1] > 0
    # documented score: (0.4 * J(services) + 0.6 * J(templates)) / 1.0
    assert ranked[0][1] == pytest.approx(0.4 * (1 / 2) + 0.6 * (4 / 8))
    assert ranked[0][0].resolution_notes[0]["note"] == "fixed hdfs"
    lines = tr.similar_descriptions(new, k=2)
    assert len(lines) == 2 and ids["hdfs"][:12] in lines[0] and "resolved with: fixed hdfs" in lines[0]
    assert "services datanode, namenode" in lines[0] and len(lines[0]) <= 400
    # rebuilt from the store by a fresh tracker (restart): same answer, open incident reloaded
    tr2 = tracker_for(store, FakeClock(t), memory=MemoryConfig(max_incidents=10))
    tr2.start()
    try:
        assert [i.id for i, _ in tr2.similar(new, k=1)] == [ids["hdfs"]]
        assert [i.id for i in tr2.open_incidents()] == [new.id]
        joined = tr2.observe(anomaly("namenode", t + 10 * S, templates=hdfs[2:3]))
        assert joined is not None and joined.id == new.id  # namenode -> datanode: same burst
    finally:
        tr2.shutdown()


def test_memory_cap_evicts_oldest_and_prunes_nodes() -> None:
    reg = CollectorRegistry()
    mem = IncidentMemory(MemoryConfig(max_incidents=3), registry=reg)
    incs = [Incident(id=f"i{i}", opened_ns=i, updated_ns=i, services=[f"only-{i}", "shared"],
                     templates=[f"tpl {i} <*>"], root_cause_service=f"only-{i}", remediation=[f"fix {i}"])
            for i in range(5)]
    for inc in incs:
        mem.add(inc)
    assert len(mem) == 3 and "i0" not in mem and "i1" not in mem and "i4" in mem
    nodes = set(mem.graph.nodes)
    assert "service:only-0" not in nodes
    assert not any(mem.graph.nodes[n].get("text") == "tpl 0 <*>" for n in nodes)
    assert any(mem.graph.nodes[n].get("text") == "tpl 4 <*>" for n in nodes)
    assert not any(n.startswith("remediation:") and mem.graph.nodes[n]["text"] == "fix 0" for n in nodes)
    assert "root_cause:only-0" not in nodes and "service:shared" in nodes
    assert reg.get_sample_value("incident_memory_evicted_total") == 2
    assert reg.get_sample_value("incident_memory_incidents") == 3
    # updating an incident refreshes it (it becomes the most recent) and replaces its edges
    mem.add(Incident(id="i2", opened_ns=2, updated_ns=9, services=["shared"]))
    mem.add(Incident(id="i5", opened_ns=5, updated_ns=5, services=["x"]))
    assert "i2" in mem and "i3" not in mem
    assert "service:only-2" not in mem.graph and mem.subgraph("i2") is not None
    assert [i.id for i, _ in mem.similar(Incident(services=["shared"]), k=5)] == ["i2", "i4"]
    assert mem.remove("i2") and not mem.remove("i2") and mem.subgraph("i2") is None


def test_broken_connected_callback_does_not_stop_tracking() -> None:
    def boom(a: str, b: str) -> bool:
        raise RuntimeError("graph unavailable")

    tr = IncidentTracker(IncidentConfig(), None, registry=CollectorRegistry(), connected=boom)
    a = tr.observe(anomaly("checkout", T0))
    b = tr.observe(anomaly("frontend", T0 + S))
    c = tr.observe(anomaly("checkout", T0 + 2 * S))
    assert a and b and c and a.id == c.id != b.id
    assert tr.registry.get_sample_value("incident_errors_total", {"op": "connected"}) >= 1
    tr.consume_findings([Finding(EVENT_ANOMALY, None)])  # type: ignore[arg-type]  # counted, not raised
    assert tr.registry.get_sample_value("incident_errors_total", {"op": "observe"}) == 1


def test_config_validation() -> None:
    IncidentConfig().validate()
    for bad in ({"correlation_window_s": 0}, {"quiet_period_s": -1}, {"max_open_incidents": 0},
                {"connect_hops": 1.5}, {"template_attributes": "x"}):
        with pytest.raises(ConfigError, match="incidents."):
            IncidentConfig(**bad).validate()
    for bad_memory in ({"max_incidents": 0}, {"service_weight": -1},
                       {"service_weight": 0, "template_weight": 0}):
        with pytest.raises(ConfigError, match="memory"):
            MemoryConfig(**bad_memory).validate()


def test_graph_connected_refreshes_from_the_live_graph() -> None:
    g = nx.DiGraph()
    g.add_edge("a", "b")
    calls = []
    now = [0.0]

    def snapshot() -> nx.DiGraph:
        calls.append(1)
        return g.copy()

    connected = graph_connected(snapshot, max_hops=2, refresh_s=5.0, clock=lambda: now[0])
    assert connected("a", "b") and not connected("a", "c")
    g.add_edge("b", "c")
    now[0] = 4.9
    assert not connected("a", "c")  # cached snapshot
    now[0] = 5.0
    assert connected("a", "c") and connected("c", "a")
    assert len(calls) == 2  # one digraph() copy per refresh, not per question
    assert connected.neighbours("a") == {"a", "b", "c"}  # type: ignore[attr-defined]
