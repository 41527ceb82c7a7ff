"""Store and incident memory: throughput on SQLite and a throw-away PostgreSQL server.

    python -m bench store

Rows: consume_findings() with 1 and 100 findings per call, list_findings() filtered newest-first
queries over the stored rows, on SQLite (file, WAL) and PostgreSQL (local server started here, fsync
off as in the tests); baseline: the naive way (one INSERT + COMMIT per finding through raw sqlite3).
Incident memory: similar() through the graph index vs. a brute-force scan of every remembered incident
(the baseline), with 2,000 incidents in memory.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from receiver.model import Finding
from receiver.rca.incident_model import Incident
from receiver.rca.memory import IncidentMemory, MemoryConfig
from receiver.store import Store, StoreConfig

N = 2000
T0 = 1_700_000_000_000_000_000


def _findings(n: int, offset: int = 0) -> list[Finding]:
    return [Finding(event_name="anomaly.detected", body=f"checkout error burst {i}",
                    time_ns=T0 + (offset + i) * 10**6,
                    attributes={"anomaly.service": f"svc-{i % 10}", "anomaly.severity": "high",
                                "anomaly.type": "error_burst", "anomaly.confidence": 0.8,
                                "anomaly.evidence": ["ERROR payment timeout after <NUM>ms", "ERROR pool"]})
            for i in range(n)]


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def _bench_store(url: str) -> list[tuple[str, str]]:
    rows = []
    store = Store(StoreConfig(url=url, max_findings=0, retention_days=0), registry=CollectorRegistry())
    store.start()
    try:
        fs = _findings(N)
        t = time.perf_counter()
        for f in fs:
            store.consume_findings([f])
        rows.append(("consume_findings x1", _rate(N, time.perf_counter() - t)))
        fs = _findings(N * 5, offset=N)
        t = time.perf_counter()
        for i in range(0, len(fs), 100):
            store.consume_findings(fs[i:i + 100])
        rows.append(("consume_findings x100", _rate(len(fs), time.perf_counter() - t)))
        q = 200
        t = time.perf_counter()
        for i in range(q):
            store.list_findings(limit=50, service=f"svc-{i % 10}", since_ns=T0 + 1000 * 10**6)
        rows.append(("list_findings(service, since, 50)", f"{(time.perf_counter() - t) / q * 1000:.2f} ms"))
    finally:
        store.shutdown()
    return rows


def _naive_sqlite(path: str) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE f (id TEXT PRIMARY KEY, event_name TEXT, time_ns INTEGER, body TEXT, "
                 "attrs TEXT)")
    fs = _findings(N)
    t = time.perf_counter()
    for f in fs:
        conn.execute("INSERT INTO f VALUES (?, ?, ?, ?, ?)",
                     (f.id, f.event_name, f.time_ns, f.body, json.dumps(f.attributes)))
        conn.commit()
    out = _rate(N, time.perf_counter() - t)
    conn.close()
    return out


def _bench_memory() -> list[tuple[str, str]]:
    rnd = random.Random(7)
    services = [f"svc-{i}" for i in range(60)]
    templates = [f"template {i} <*> failed" for i in range(800)]
    mem = IncidentMemory(MemoryConfig(max_incidents=2000), registry=CollectorRegistry())
    incs = [Incident(services=rnd.sample(services, 3), templates=rnd.sample(templates, 6), opened_ns=i,
                     updated_ns=i) for i in range(2000)]
    t = time.perf_counter()
    for inc in incs:
        mem.add(inc)
    add_s = time.perf_counter() - t
    queries = [Incident(services=rnd.sample(services, 3), templates=rnd.sample(templates, 6))
               for _ in range(200)]
    t = time.perf_counter()
    for q in queries:
        mem.similar(q, k=3)
    fast = (time.perf_counter() - t) / len(queries)
    t = time.perf_counter()
    for q in queries:
        sorted(((mem.score(q, o), o.id) for o in incs), reverse=True)[:3]
    brute = (time.perf_counter() - t) / len(queries)
    return [("memory.add (2,000 incidents)", _rate(len(incs), add_s)),
            ("memory.similar k=3", f"{fast * 1000:.2f} ms"),
            ("baseline: brute-force scan k=3", f"{brute * 1000:.2f} ms")]


def main() -> None:
    table: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, value in _bench_store(f"sqlite:///{Path(tmp) / 'bench.db'}"):
            table.append(("sqlite", name, value))
        naive = _naive_sqlite(str(Path(tmp) / "n.db"))
        table.append(("sqlite", "baseline: naive INSERT+COMMIT per finding", naive))
    try:
        from tests.pg_server import PostgresServer

        server = PostgresServer().start()
    except Exception as e:  # noqa: BLE001 - the bench still reports SQLite
        table.append(("postgresql", f"not run: {e}".splitlines()[0][:80], "-"))
    else:
        try:
            for name, value in _bench_store(server.create_database()):
                table.append(("postgresql", name, value))
        finally:
            server.stop()
    for name, value in _bench_memory():
        table.append(("memory", name, value))
    w = max(len(r[1]) for r in table)
    print(f"{'backend':<11} {'operation':<{w}} result")
    for backend, name, value in table:
        print(f"{backend:<11} {name:<{w}} {value}")


if __name__ == "__main__":
    main()
