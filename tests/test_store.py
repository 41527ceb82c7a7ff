"""The store against SQLite AND a real PostgreSQL server started here: same tests, same results."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.model import (
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_ROOT_CAUSE,
    Finding,
)
from receiver.rca.incident_model import Incident
from receiver.store import SCHEMA_VERSION, Store, StoreConfig, StoreError
from tests.pg_server import PostgresServer

pytest_plugins = ["tests.store_fixtures"]  # pg_server (a real PostgreSQL server), make_store

StoreFactory = Callable[..., Store]

DAY_NS = 86_400 * 1_000_000_000
T0 = 1_700_000_000 * 1_000_000_000  # a historical event time (replay)


def anomaly(service: str, t: int, severity: str = "high", **extra: Any) -> Finding:
    attrs: dict[str, Any] = {A_SERVICE: service, A_SEVERITY: severity, "anomaly.type": "error_burst",
                             "anomaly.confidence": 0.75,
                             A_EVIDENCE: [f"{service} failed", "conn refused: db"],
                             "anomaly.window.start": t - 60 * 10**9, "anomaly.window.end": t}
    attrs.update(extra)
    return Finding(EVENT_ANOMALY, attrs, body=f"{service} is anomalous", time_ns=t)


def report(root: str, t: int) -> Finding:
    return Finding(EVENT_RCA, {R_ROOT_CAUSE: root, R_CANDIDATES: [root, "checkout"], "rca.confidence": 0.9,
                               "rca.propagation_path": [root, "checkout", "frontend"]},
                   body=f"root cause {root}", time_ns=t, trace_id="ab" * 16, span_id="cd" * 8)


def test_findings_round_trip_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    f1 = anomaly("checkout", T0, **{"flag": True, "count": 3, "score": 1.5, "unicode": "naïve ✓ 'q' %s ?",
                                    "empty.list": []})
    f2 = report("payments-db", T0 + 1)
    store.consume_findings([f1, f2])
    store.consume_findings([f1])  # re-delivery is idempotent
    got = store.list_findings()
    assert [g.id for g in got] == [f2.id, f1.id]  # newest first
    assert got[1] == f1 and got[0] == f2  # every field, attribute types and string arrays preserved
    assert isinstance(got[1].attributes[A_EVIDENCE], list)
    assert got[1].attributes["flag"] is True and got[1].attributes["count"] == 3
    assert store.get_finding(f2.id) == f2
    assert store.get_finding("nope") is None
    assert [f.id for f in store.get_findings([f2.id, "x", f1.id])] == [f2.id, f1.id]
    assert store.count("findings") == 2


def test_hostile_text_is_stored_the_same_on_both_backends(make_store: StoreFactory) -> None:
    store = make_store()
    weird = Finding(EVENT_ANOMALY, {A_SERVICE: "svc\x00x", "k\x00": "v\x00\ud800", "arr": ["\x00", "\udfff"]},
                    body="nul \x00 and lone surrogate \ud800 end", time_ns=T0)
    out_of_range = Finding(EVENT_ANOMALY, {A_SERVICE: "a"}, time_ns=2**64)
    ok = anomaly("b", T0 + 1)
    store.consume_findings([weird, out_of_range, ok])  # the bad row is skipped, the others kept
    got = store.get_finding(weird.id)
    assert got is not None
    assert got.body == "nul \ufffd and lone surrogate \ufffd end"
    assert got.attributes == weird.attributes  # JSON escapes keep attribute text exact
    assert [f.id for f in store.list_findings(service="svc\ufffdx")] == [weird.id]
    assert store.get_finding(ok.id) == ok and store.get_finding(out_of_range.id) is None
    assert store.registry.get_sample_value("store_errors_total", {"op": "bad_finding"}) == 1
    inc = Incident(opened_ns=T0, updated_ns=T0, services=["a\x00"], root_cause_service="b\x00")
    store.upsert_incident(inc)
    note = store.add_resolution(inc.id, "fixed \x00 it", author="me\ud800")
    assert note is not None and note["note"] == "fixed \ufffd it"
    got_inc = store.get_incident(inc.id)
    assert got_inc is not None and got_inc.services == ["a\x00"] and got_inc.root_cause_service == "b\ufffd"
    assert got_inc.resolution_notes[0]["author"] == "me\ufffd"
    store.record_llm_call({"model": "m\x00", "extra\x00": "\ud800"})
    assert store.list_llm_calls()[0]["model"] == "m\ufffd"


def test_findings_filters(make_store: StoreFactory) -> None:
    store = make_store()
    fs = [anomaly("checkout", T0 + i * 10**9, severity="high" if i % 2 else "low") for i in range(10)]
    fs.append(report("payments-db", T0 + 100 * 10**9))
    store.consume_findings(fs)
    assert [f.id for f in store.list_findings(limit=3)] == [fs[10].id, fs[9].id, fs[8].id]
    assert [f.id for f in store.list_findings(event_name=EVENT_RCA)] == [fs[10].id]
    assert len(store.list_findings(event_name=EVENT_ANOMALY)) == 10
    assert [f.id for f in store.list_findings(since_ns=T0 + 8 * 10**9, event_name=EVENT_ANOMALY)] == \
        [fs[9].id, fs[8].id]
    assert [f.id for f in store.list_findings(until_ns=T0 + 1 * 10**9)] == [fs[1].id, fs[0].id]
    assert [f.id for f in store.list_findings(service="payments-db")] == [fs[10].id]  # via root cause
    assert len(store.list_findings(service="checkout")) == 10
    assert len(store.list_findings(severity="high")) == 5
    assert store.list_findings(service="nobody") == []
    with pytest.raises(ValueError):
        store.list_findings(limit=0)


def test_incidents_crud_and_resolution_notes(make_store: StoreFactory) -> None:
    store = make_store()
    inc = Incident(opened_ns=T0, updated_ns=T0 + 5, services=["checkout", "payments-db"],
                   templates=["connection refused to <*>"], finding_ids=["f1", "f2"], finding_count=2,
                   severity="high", anomaly_types=["error_burst"])
    store.upsert_incident(inc)
    assert store.get_incident(inc.id) == inc
    inc.root_cause_service = "payments-db"
    inc.remediation = ["restart payments-db", "check max_connections"]
    inc.updated_ns = T0 + 10
    store.upsert_incident(inc)
    other = Incident(opened_ns=T0 + 20, updated_ns=T0 + 30, services=["cart"], status="resolved",
                     resolved_ns=T0 + 40, resolve_reason="quiet")
    store.upsert_incident(other)
    assert store.get_incident(inc.id) == inc
    assert [i.id for i in store.list_incidents()] == [other.id, inc.id]  # most recently updated first
    assert [i.id for i in store.list_incidents(status="open")] == [inc.id]
    assert [i.id for i in store.list_incidents(status="resolved")] == [other.id]
    assert [i.id for i in store.list_incidents(service="payments-db")] == [inc.id]
    with pytest.raises(ValueError):
        store.list_incidents(status="bogus")

    note = store.add_resolution(inc.id, "raised max_connections to 500", author="oncall", time_ns=T0 + 99)
    assert note is not None and note["note"] == "raised max_connections to 500"
    store.add_resolution(inc.id, "added alert on pool saturation")
    got = store.get_incident(inc.id)
    assert got is not None
    assert [n["note"] for n in got.resolution_notes] == ["raised max_connections to 500",
                                                         "added alert on pool saturation"]
    assert got.resolution_notes[0]["author"] == "oncall" and got.resolution_notes[0]["time_ns"] == T0 + 99
    assert len(store.list_incidents(status="open")[0].resolution_notes) == 2
    assert store.add_resolution("unknown-id", "x") is None
    for bad in ("", "   ", "x" * 10_001, None):
        with pytest.raises(ValueError):
            store.add_resolution(inc.id, bad)  # type: ignore[arg-type]
    assert store.delete_incident(other.id) and store.get_incident(other.id) is None
    assert not store.delete_incident(other.id)


def test_llm_audit(make_store: StoreFactory) -> None:
    store = make_store()
    store.record_llm_call({"time_ns": T0, "model": "qwen2.5-coder-1.5b", "tier": 1, "outcome": "ok",
                           "prompt_sha256": "a" * 64, "redaction_counts": {"email": 2, "ipv4": 1},
                           "prompt_tokens": 900, "completion_tokens": 120, "latency_s": 3.25,
                           "cost_usd": 0.0, "cache_hit": False, "service": "checkout"})
    store.record_llm_call({"time_ns": T0 + 1, "model": "gpt-4o-mini", "tier": "2", "outcome": "schema_error",
                           "tokens": 77, "latency_s": float("nan"), "cache_hit": True})
    store.record_llm_call({"time_ns": "garbage", "prompt_tokens": object()})  # coerced, never raises
    calls = store.list_llm_calls(limit=10)
    assert len(calls) == 3
    newest, older = [c for c in calls if c["model"]]
    assert newest["model"] == "gpt-4o-mini" and newest["total_tokens"] == 77 and newest["cache_hit"] is True
    assert newest["latency_s"] is None and newest["tier"] == "2"
    assert older == {"id": older["id"], "time_ns": T0, "model": "qwen2.5-coder-1.5b", "tier": "1",
                     "outcome": "ok", "prompt_sha256": "a" * 64, "prompt_tokens": 900,
                     "completion_tokens": 120, "total_tokens": 1020, "latency_s": 3.25, "cost_usd": 0.0,
                     "cache_hit": False, "redaction_counts": {"email": 2, "ipv4": 1},
                     "extra": {"service": "checkout"}}
    assert len(store.list_llm_calls(limit=1)) == 1


def test_retention_purge(make_store: StoreFactory) -> None:
    store = make_store(start=False, retention_days=1.0, max_findings=0, max_incidents=0, max_llm_calls=0)
    store.consume_findings([anomaly("a", T0)])  # historical event time: retention is on write time
    open_inc = Incident(opened_ns=T0, updated_ns=T0, services=["a"])
    done = Incident(opened_ns=T0, updated_ns=T0, services=["b"], status="resolved", resolved_ns=T0)
    store.upsert_incident(open_inc)
    store.upsert_incident(done)
    store.add_resolution(done.id, "fixed")
    store.record_llm_call({"model": "m"})
    assert store.purge() == {"findings": 0, "incidents": 0, "resolutions": 0, "llm_calls": 0}
    assert store.count("findings") == 1
    later = time.time_ns() + 2 * DAY_NS
    assert store.purge(now_ns=later) == {"findings": 1, "incidents": 1, "resolutions": 1, "llm_calls": 1}
    assert store.get_incident(open_inc.id) is not None  # open incidents survive retention
    assert store.get_incident(done.id) is None
    assert store.count("findings") == 0 and store.count("llm_calls") == 0 and store.count("resolutions") == 0


def test_row_caps_oldest_first(make_store: StoreFactory) -> None:
    store = make_store(start=False, retention_days=0, max_findings=5, max_incidents=3, max_llm_calls=4)
    fs = [anomaly("svc", T0 + i) for i in range(12)]
    for f in fs:
        store.consume_findings([f])
    for i in range(7):
        store.record_llm_call({"model": f"m{i}", "time_ns": T0 + i})
    incs = [Incident(opened_ns=T0 + i, updated_ns=T0 + i, services=[f"s{i}"],
                     status="open" if i in (0, 1) else "resolved",
                     resolved_ns=None if i in (0, 1) else T0 + i)
            for i in range(6)]
    for inc in incs:
        store.upsert_incident(inc)
    deleted = store.purge()
    assert deleted["findings"] == 7 and deleted["llm_calls"] == 3 and deleted["incidents"] == 3
    assert [f.id for f in store.list_findings()] == [f.id for f in reversed(fs[7:])]
    assert [c["model"] for c in store.list_llm_calls()] == ["m6", "m5", "m4", "m3"]
    # the oldest RESOLVED incidents go first; open ones are kept while resolved ones remain
    assert sorted(i.id for i in store.list_incidents()) == sorted([incs[0].id, incs[1].id, incs[5].id])
    assert store.purge()["findings"] == 0  # idempotent
    reg = store.registry
    assert reg.get_sample_value("store_rows_purged_total", {"table": "findings", "reason": "cap"}) == 7
    assert reg.get_sample_value("store_rows", {"table": "findings"}) == 5


def test_purge_thread_enforces_caps(make_store: StoreFactory) -> None:
    store = make_store(retention_days=0, max_findings=100, purge_interval_s=3600)
    for i in range(30):
        store.consume_findings([anomaly("svc", T0 + i * 10 + j) for j in range(10)])
    # woken by the write volume (every 10% of the cap), not by the 1 h interval: the table never
    # stays above cap + 10%
    deadline = time.monotonic() + 30
    while store.count("findings") > 110 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.count("findings") <= 110
    assert store.registry.get_sample_value("store_purge_runs_total") >= 1


def test_reopen_keeps_data_and_schema(make_store: StoreFactory) -> None:
    store = make_store()
    f = anomaly("checkout", T0)
    store.consume_findings([f])
    assert store.schema_version() == SCHEMA_VERSION
    store.shutdown()
    store.shutdown()  # idempotent
    again = make_store()  # same database: migration is a no-op, data is there
    assert again.get_finding(f.id) == f
    assert again.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused(make_store: StoreFactory) -> None:
    store = make_store()
    bump = "UPDATE schema_version SET version = ?"
    store._run("bump", lambda cur: store._ex(cur, bump, (SCHEMA_VERSION + 1,)))
    store.shutdown()
    with pytest.raises(StoreError, match="newer"):
        make_store()


def test_concurrent_writers(make_store: StoreFactory) -> None:
    store = make_store()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                store.consume_findings([anomaly(f"s{n}", T0 + n * 1000 + i)])
                store.record_llm_call({"model": f"m{n}"})
                store.list_findings(limit=5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count("findings") == 150 and store.count("llm_calls") == 150


def test_database_errors_do_not_crash_consume(make_store: StoreFactory) -> None:
    store = make_store()
    store._run("drop", lambda cur: store._ex(cur, "DROP TABLE findings"))
    store.consume_findings([anomaly("a", T0)])  # logged + counted, not raised into the pipeline
    assert store.registry.get_sample_value("store_errors_total", {"op": "consume_findings"}) == 1
    store.consume_findings([Finding(EVENT_ANOMALY, attributes=None)])  # type: ignore[arg-type]


def test_same_results_on_sqlite_and_postgresql(pg_server: PostgresServer, tmp_path: Path) -> None:
    def scenario(url: str) -> dict[str, Any]:
        cfg = StoreConfig(url=url, retention_days=0, max_findings=6, max_incidents=2, max_llm_calls=3)
        store = Store(cfg, registry=CollectorRegistry())  # not started: no background purge
        try:
            fs = [anomaly(f"s{i % 3}", T0 + i * 10**9, severity=["low", "high", "critical"][i % 3],
                          **{"arr": [str(i), "x"], "n": i}) for i in range(9)]
            fs = [Finding(f.event_name, f.attributes, f.body, f.time_ns, id=f"f{i:02d}")
                  for i, f in enumerate(fs)]
            store.consume_findings(fs)
            incs = [Incident(id=f"i{i}", opened_ns=T0 + i, updated_ns=T0 + 10 * i, services=[f"s{i}"],
                             templates=[f"t{i} <*>"], status="resolved", resolved_ns=T0 + 11 * i)
                    for i in range(4)]
            for inc in incs:
                store.upsert_incident(inc)
            store.add_resolution("i3", "note a", time_ns=T0)
            for i in range(5):
                store.record_llm_call({"time_ns": T0 + i, "model": "m", "prompt_tokens": i,
                                       "redaction_counts": {"email": i}})
            before = {
                "all": [f.to_dict() for f in store.list_findings()],
                "rca": [f.id for f in store.list_findings(event_name=EVENT_RCA)],
                "s1": [f.id for f in store.list_findings(service="s1")],
                "since": [f.id for f in store.list_findings(since_ns=T0 + 4 * 10**9, limit=3)],
                "crit": [f.id for f in store.list_findings(severity="critical")],
            }
            purged = store.purge()
            calls = [{k: v for k, v in c.items() if k != "id"} for c in store.list_llm_calls()]
            return {
                "before": before,
                "purged": purged,
                "after": [f.to_dict() for f in store.list_findings(limit=100)],
                "incidents": [i.to_dict() for i in store.list_incidents()],
                "calls": calls,
            }
        finally:
            store.shutdown()

    lite = scenario(f"sqlite:///{tmp_path / 'cmp.db'}")
    pg = scenario(pg_server.create_database())
    assert lite == pg
    assert len(lite["after"]) == 6 and [i["id"] for i in lite["incidents"]] == ["i3", "i2"]
    assert lite["incidents"][0]["resolution_notes"][0]["note"] == "note a"


def test_postgresql_reconnects_after_connection_loss(pg_server: PostgresServer) -> None:
    import psycopg

    store = Store(StoreConfig(url=pg_server.create_database()), registry=CollectorRegistry())
    store.start()
    try:
        store.consume_findings([anomaly("a", T0)])
        pid = store._conn.info.backend_pid
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        store.consume_findings([anomaly("b", T0 + 1)])
        assert store.count("findings") == 2
    finally:
        store.shutdown()


def test_config_validation() -> None:
    StoreConfig().validate()
    assert StoreConfig().backend == "sqlite" and StoreConfig().sqlite_path == "./var/llm-log-analyzer.db"
    assert StoreConfig(url="postgres://u@h/db").backend == "postgresql"
    for bad in ({"url": "mysql://x"}, {"url": ""}, {"url": "sqlite:///"}, {"retention_days": -1},
                {"max_findings": -5}, {"max_incidents": 1.5}, {"purge_interval_s": 0}):
        with pytest.raises(ConfigError, match="store."):
            StoreConfig(**bad).validate()


def test_unreachable_postgresql_is_a_clear_error() -> None:
    from tests.pg_server import _free_port

    store = Store(StoreConfig(url=f"postgresql://postgres@127.0.0.1:{_free_port()}/x", connect_timeout_s=2))
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        store.start()
    store.shutdown()
