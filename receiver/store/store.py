"""Findings, incidents, resolution notes and the LLM audit trail in SQLite or PostgreSQL.

One class, two backends: the stdlib `sqlite3` module and `psycopg` 3. The SQL is the same for both
except for what `_Dialect` rewrites: the parameter marker (`?` vs `%s`), the auto-increment key type
and the floating point type. Upserts use `INSERT ... ON CONFLICT ... DO UPDATE SET col = excluded.col`,
which both databases understand. Every table is plain columns plus JSON stored as TEXT, so the two
backends return identical rows.

Thread safety: one connection per store, every operation under one lock (worker threads, the API
thread and the purge thread share it). Schema: created and migrated at open, tracked in
`schema_version`; a database written by a newer version is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.model import A_SERVICE, A_SEVERITY, R_ROOT_CAUSE, Finding
from receiver.rca.incident_model import STATUS_OPEN, STATUSES, Incident
from receiver.store.config import StoreConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
MAX_NOTE_CHARS = 10_000
MAX_LIMIT = 10_000
_NS_PER_DAY = 86_400 * 1_000_000_000
_IN_CHUNK = 500  # ids per `IN (...)` list

# Each migration: (version, statements). `{AUTO}` / `{DOUBLE}` are filled in by the dialect.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS findings (
            seq {AUTO},
            id TEXT NOT NULL UNIQUE,
            event_name TEXT NOT NULL,
            time_ns BIGINT NOT NULL,
            service TEXT NOT NULL DEFAULT '',
            severity TEXT NOT NULL DEFAULT '',
            trace_id TEXT NOT NULL DEFAULT '',
            span_id TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL DEFAULT '',
            attributes TEXT NOT NULL,
            stored_ns BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS findings_time ON findings (time_ns)",
        "CREATE INDEX IF NOT EXISTS findings_event_time ON findings (event_name, time_ns)",
        "CREATE INDEX IF NOT EXISTS findings_service_time ON findings (service, time_ns)",
        "CREATE INDEX IF NOT EXISTS findings_stored ON findings (stored_ns)",
        """CREATE TABLE IF NOT EXISTS incidents (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            opened_ns BIGINT NOT NULL,
            updated_ns BIGINT NOT NULL,
            resolved_ns BIGINT,
            severity TEXT NOT NULL DEFAULT '',
            root_cause_service TEXT NOT NULL DEFAULT '',
            data TEXT NOT NULL,
            stored_ns BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS incidents_status_updated ON incidents (status, updated_ns)",
        "CREATE INDEX IF NOT EXISTS incidents_updated ON incidents (updated_ns)",
        "CREATE INDEX IF NOT EXISTS incidents_stored ON incidents (stored_ns)",
        """CREATE TABLE IF NOT EXISTS resolutions (
            seq {AUTO},
            incident_id TEXT NOT NULL,
            time_ns BIGINT NOT NULL,
            author TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL,
            stored_ns BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS resolutions_incident ON resolutions (incident_id)",
        """CREATE TABLE IF NOT EXISTS llm_calls (
            seq {AUTO},
            time_ns BIGINT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            tier TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL DEFAULT '',
            prompt_sha256 TEXT NOT NULL DEFAULT '',
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            total_tokens BIGINT NOT NULL DEFAULT 0,
            latency_s {DOUBLE},
            cost_usd {DOUBLE},
            cache_hit INTEGER NOT NULL DEFAULT 0,
            redaction_counts TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}',
            stored_ns BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS llm_calls_time ON llm_calls (time_ns)",
        "CREATE INDEX IF NOT EXISTS llm_calls_stored ON llm_calls (stored_ns)",
    ]),
]

_FINDING_COLS = "id, event_name, time_ns, service, severity, trace_id, span_id, body, attributes"
_INCIDENT_COLS = "id, status, opened_ns, updated_ns, resolved_ns, severity, root_cause_service, data"
_LLM_COLS = ("seq, time_ns, model, tier, outcome, prompt_sha256, prompt_tokens, completion_tokens, "
             "total_tokens, latency_s, cost_usd, cache_hit, redaction_counts, extra")
_LLM_KNOWN = {"time_ns", "model", "tier", "outcome", "prompt_sha256", "prompt_tokens", "completion_tokens",
              "total_tokens", "tokens", "latency_s", "cost_usd", "cache_hit", "redaction_counts"}


class StoreError(RuntimeError):
    """The store could not be opened or used (bad URL, unreachable server, newer schema)."""


class _Dialect:
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "sqlite":
            self.auto = "INTEGER PRIMARY KEY AUTOINCREMENT"
            self.double = "REAL"
        else:
            self.auto = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
            self.double = "DOUBLE PRECISION"

    def sql(self, statement: str) -> str:
        """Rewrite portable SQL (`?` markers, `{AUTO}`, `{DOUBLE}`) for this backend."""
        statement = statement.replace("{AUTO}", self.auto).replace("{DOUBLE}", self.double)
        if self.name == "postgresql":
            statement = statement.replace("%", "%%").replace("?", "%s")
        return statement


def _jdump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _text(value: Any) -> str:
    """A string both backends store as is: PostgreSQL TEXT cannot hold NUL, and neither driver
    encodes lone surrogates; both become U+FFFD (JSON columns escape them instead)."""
    s = value if isinstance(value, str) else str(value)
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s)
    return s


def _finding_row(f: Finding, stored_ns: int) -> tuple[Any, ...]:
    if not isinstance(f.attributes, dict):
        raise ValueError("attributes must be a dict")
    attrs = f.attributes
    t = int(f.time_ns)
    if not 0 <= t < 2**63:
        raise ValueError(f"time_ns out of range: {t}")
    service = attrs.get(A_SERVICE) or attrs.get(R_ROOT_CAUSE) or ""
    severity = attrs.get(A_SEVERITY) or ""
    return (_text(f.id), _text(f.event_name), t, _text(service), _text(severity), _text(f.trace_id or ""),
            _text(f.span_id or ""), _text(f.body or ""), _jdump(attrs), stored_ns)


def _row_finding(row: Sequence[Any]) -> Finding:
    return Finding(event_name=row[1], attributes=json.loads(row[8]), body=row[7], time_ns=int(row[2]),
                   id=row[0], trace_id=row[5], span_id=row[6])


def _row_incident(row: Sequence[Any]) -> Incident:
    data = json.loads(row[7])
    data.update(id=row[0], status=row[1], opened_ns=int(row[2]), updated_ns=int(row[3]),
                resolved_ns=None if row[4] is None else int(row[4]), severity=row[5],
                root_cause_service=row[6])
    data["resolution_notes"] = []
    return Incident.from_dict(data)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return min(limit, MAX_LIMIT)


class Store:
    """Persistent findings, incidents (+ resolution notes) and LLM audit records.

    `start()` opens the database, migrates the schema and starts the purge thread; methods called
    before `start()` open the database on first use (no purge thread). `shutdown()` stops the thread
    and closes the connection; it is idempotent and safe without `start()`.
    """

    def __init__(self, config: StoreConfig | None = None, registry: CollectorRegistry | None = None) -> None:
        self.config = config or StoreConfig()
        self.config.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._dialect = _Dialect(self.config.backend)
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writes_since_purge = 0
        self._psycopg_errors: tuple[type[BaseException], ...] = ()
        cfg = self.config
        caps = [c for c in (cfg.max_findings, cfg.max_incidents, cfg.max_llm_calls) if c]
        self._purge_trigger = max(10, min(caps) // 10) if caps else 10_000
        self.m_written = Counter("store_rows_written_total", "Rows written to the store", ["table"],
                                 registry=self.registry)
        self.m_purged = Counter("store_rows_purged_total", "Rows deleted by retention or row caps",
                                ["table", "reason"], registry=self.registry)
        self.m_errors = Counter("store_errors_total", "Store operations that failed", ["op"],
                                registry=self.registry)
        self.m_rows = Gauge("store_rows", "Rows per table after the last purge", ["table"],
                            registry=self.registry)
        self.m_purge_runs = Counter("store_purge_runs_total", "Purge passes run", registry=self.registry)

    # ---------------------------------------------------------------- lifecycle
    @property
    def backend(self) -> str:
        return self._dialect.name

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("store: already shut down")
            self._ensure_open()
            if self._thread is None:
                self._thread = threading.Thread(target=self._purge_loop, name="store-purge", daemon=True)
                self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)
        with self._lock:
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection must not raise
                    log.debug("store: error closing connection", exc_info=True)
                self._conn = None

    def _purge_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.purge_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.purge()
            except Exception:  # noqa: BLE001 - keep the thread alive; the error is counted
                log.exception("store: purge failed")

    # ---------------------------------------------------------------- connection
    def _connect(self) -> Any:
        if self.backend == "sqlite":
            path = self.config.sqlite_path
            if path != ":memory:":
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, exist_ok=True)
            try:
                conn = sqlite3.connect(path, timeout=self.config.connect_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as e:
                raise StoreError(f"store.url: cannot open sqlite database {path!r}: {e}") from e
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.connect_timeout_s * 1000)}")
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        import psycopg

        self._psycopg_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        try:
            return psycopg.connect(self.config.url, autocommit=False,
                                   connect_timeout=max(1, int(self.config.connect_timeout_s)))
        except psycopg.Error as e:
            raise StoreError(f"store.url: cannot connect to PostgreSQL: {e}") from e

    def _ensure_open(self) -> None:
        if self._closed:
            raise StoreError("store: already shut down")
        if self._conn is None:
            self._conn = self._connect()
            try:
                self._migrate()
            except Exception:
                self._conn.close()
                self._conn = None
                raise

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A transaction on the shared connection; caller holds `self._lock`."""
        conn = self._conn
        if self.backend == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.cursor()
            try:
                yield cur
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                cur.close()
        else:
            cur = conn.cursor()
            try:
                yield cur
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
            finally:
                cur.close()

    def _run(self, op: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(cursor)` in one transaction; reconnect once if a PostgreSQL connection broke."""
        with self._lock:
            try:
                self._ensure_open()
                for attempt in (0, 1):
                    try:
                        with self._tx() as cur:
                            return fn(cur)
                    except self._psycopg_errors:
                        if attempt or self._conn is None or not self._conn.closed:
                            raise
                        log.warning("store: PostgreSQL connection lost during %s; reconnecting", op)
                        self._conn = None
                        self._ensure_open()
                raise AssertionError("unreachable")
            except Exception:
                self.m_errors.labels(op).inc()
                raise

    def _ex(self, cur: Any, statement: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._dialect.sql(statement), tuple(params))
        return cur

    def _migrate(self) -> None:
        def run(cur: Any) -> None:
            if self.backend == "postgresql":
                # serialise concurrent first starts against the same database
                cur.execute("SELECT pg_advisory_xact_lock(74251)")
            self._ex(cur, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._ex(cur, "SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"store: database schema version {current} is newer than this program "
                                 f"supports ({SCHEMA_VERSION}); upgrade llm-log-analyzer")
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    self._ex(cur, statement)
                self._ex(cur, "DELETE FROM schema_version")
                self._ex(cur, "INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("store: migrated %s schema to version %d", self.backend, version)

        with self._tx() as cur:
            run(cur)

    def schema_version(self) -> int:
        statement = "SELECT MAX(version) FROM schema_version"
        return self._run("schema_version", lambda cur: int(self._ex(cur, statement).fetchone()[0]))

    # ---------------------------------------------------------------- findings
    def consume_findings(self, findings: Sequence[Finding]) -> None:
        """Persist findings (idempotent on `Finding.id`). A database failure is logged and counted in
        `store_errors_total{op="consume_findings"}`, never raised into the pipeline."""
        if not findings:
            return
        now = time.time_ns()
        rows = []
        for f in findings:
            try:
                rows.append(_finding_row(f, now))
            except (TypeError, ValueError, AttributeError) as e:
                self.m_errors.labels("bad_finding").inc()
                log.warning("store: skipping malformed finding %r: %s", getattr(f, "id", "?"), e)
        if not rows:
            return
        statement = self._dialect.sql(
            f"INSERT INTO findings ({_FINDING_COLS}, stored_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING")
        try:
            self._run("consume_findings", lambda cur: cur.executemany(statement, rows))
        except Exception:  # noqa: BLE001 - the pipeline must keep flowing; counted + logged
            log.exception("store: could not persist %d findings", len(rows))
            return
        self.m_written.labels("findings").inc(len(rows))
        self._note_writes(len(rows))

    def list_findings(self, limit: int = 100, event_name: str | None = None, since_ns: int | None = None,
                      service: str | None = None, severity: str | None = None,
                      until_ns: int | None = None) -> list[Finding]:
        """Findings newest first (by event time). `service` matches `anomaly.service` or, for reports
        without one, `rca.root_cause_service`; `since_ns`/`until_ns` bound the event time, inclusive."""
        limit = _limit(limit)
        where, params = [], []
        if event_name:
            where.append("event_name = ?")
            params.append(event_name)
        if since_ns is not None:
            where.append("time_ns >= ?")
            params.append(int(since_ns))
        if until_ns is not None:
            where.append("time_ns <= ?")
            params.append(int(until_ns))
        if service:
            where.append("service = ?")
            params.append(service)
        if severity:
            where.append("severity = ?")
            params.append(severity)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        statement = f"SELECT {_FINDING_COLS} FROM findings{clause} ORDER BY time_ns DESC, seq DESC LIMIT ?"
        rows = self._run("list_findings", lambda cur: self._ex(cur, statement, [*params, limit]).fetchall())
        return [_row_finding(r) for r in rows]

    def get_finding(self, finding_id: str) -> Finding | None:
        found = self.get_findings([finding_id])
        return found[0] if found else None

    def get_findings(self, ids: Sequence[str]) -> list[Finding]:
        """The findings with these ids that still exist, in the order of `ids`."""
        ids = [str(i) for i in dict.fromkeys(ids)]
        if not ids:
            return []

        def run(cur: Any) -> list[Any]:
            out: list[Any] = []
            for i in range(0, len(ids), _IN_CHUNK):
                chunk = ids[i:i + _IN_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                out.extend(self._ex(cur, f"SELECT {_FINDING_COLS} FROM findings WHERE id IN ({marks})",
                                    chunk).fetchall())
            return out

        by_id = {r[0]: _row_finding(r) for r in self._run("get_findings", run)}
        return [by_id[i] for i in ids if i in by_id]

    # ---------------------------------------------------------------- incidents
    def upsert_incident(self, incident: Incident) -> None:
        if incident.status not in STATUSES:
            raise ValueError(f"incident status must be one of {STATUSES}, got {incident.status!r}")
        data = incident.to_dict()
        for k in ("id", "status", "opened_ns", "updated_ns", "resolved_ns", "severity", "root_cause_service",
                  "resolution_notes"):
            data.pop(k, None)
        row = (_text(incident.id), incident.status, int(incident.opened_ns), int(incident.updated_ns),
               None if incident.resolved_ns is None else int(incident.resolved_ns), _text(incident.severity),
               _text(incident.root_cause_service), _jdump(data), time.time_ns())
        statement = (
            f"INSERT INTO incidents ({_INCIDENT_COLS}, stored_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, opened_ns = excluded.opened_ns, "
            "updated_ns = excluded.updated_ns, resolved_ns = excluded.resolved_ns, "
            "severity = excluded.severity, root_cause_service = excluded.root_cause_service, "
            "data = excluded.data, stored_ns = excluded.stored_ns")
        self._run("upsert_incident", lambda cur: self._ex(cur, statement, row))
        self.m_written.labels("incidents").inc()
        self._note_writes(1)

    def delete_incident(self, incident_id: str) -> bool:
        def run(cur: Any) -> int:
            self._ex(cur, "DELETE FROM resolutions WHERE incident_id = ?", (incident_id,))
            return self._ex(cur, "DELETE FROM incidents WHERE id = ?", (incident_id,)).rowcount

        return self._run("delete_incident", run) > 0

    def _attach_notes(self, cur: Any, incidents: list[Incident]) -> None:
        by_id = {i.id: i for i in incidents}
        ids = list(by_id)
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows = self._ex(cur, "SELECT seq, incident_id, time_ns, author, note FROM resolutions "
                                 f"WHERE incident_id IN ({marks}) ORDER BY seq", chunk).fetchall()
            for seq, inc_id, t, author, note in rows:
                by_id[inc_id].resolution_notes.append({"id": int(seq), "incident_id": inc_id,
                                                       "time_ns": int(t), "author": author, "note": note})

    def get_incident(self, incident_id: str) -> Incident | None:
        def run(cur: Any) -> Incident | None:
            row = self._ex(cur, f"SELECT {_INCIDENT_COLS} FROM incidents WHERE id = ?",
                           (str(incident_id),)).fetchone()
            if row is None:
                return None
            inc = _row_incident(row)
            self._attach_notes(cur, [inc])
            return inc

        return self._run("get_incident", run)

    def list_incidents(self, status: str | None = None, limit: int = 100,
                       service: str | None = None) -> list[Incident]:
        """Incidents, most recently updated first; `service` keeps those that involve the service."""
        limit = _limit(limit)
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")

        def run(cur: Any) -> list[Incident]:
            where = " WHERE status = ?" if status else ""
            params: list[Any] = [status] if status else []
            # `service` lives in the JSON list; filter in Python over a bounded scan
            scan = limit if not service else MAX_LIMIT
            rows = self._ex(cur, f"SELECT {_INCIDENT_COLS} FROM incidents{where} "
                                 "ORDER BY updated_ns DESC, id DESC LIMIT ?", [*params, scan]).fetchall()
            out = [_row_incident(r) for r in rows]
            if service:
                out = [i for i in out if service in i.services or i.root_cause_service == service][:limit]
            self._attach_notes(cur, out)
            return out

        return self._run("list_incidents", run)

    def add_resolution(self, incident_id: str, note: str, author: str = "",
                       time_ns: int | None = None) -> dict[str, Any] | None:
        """Append a resolution note; returns the stored note, or None when the incident is unknown."""
        if not isinstance(note, str) or not note.strip():
            raise ValueError("note must be a non-empty string")
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"note is longer than {MAX_NOTE_CHARS} characters")
        if not isinstance(author, str) or len(author) > 200:
            raise ValueError("author must be a string of at most 200 characters")
        t = time.time_ns() if time_ns is None else int(time_ns)
        note, author = _text(note), _text(author)

        def run(cur: Any) -> dict[str, Any] | None:
            if self._ex(cur, "SELECT id FROM incidents WHERE id = ?", (str(incident_id),)).fetchone() is None:
                return None
            self._ex(cur, "INSERT INTO resolutions (incident_id, time_ns, author, note, stored_ns) "
                          "VALUES (?, ?, ?, ?, ?)", (str(incident_id), t, author, note, time.time_ns()))
            seq = self._ex(cur, "SELECT MAX(seq) FROM resolutions WHERE incident_id = ?",
                           (str(incident_id),)).fetchone()[0]
            return {"id": int(seq), "incident_id": str(incident_id), "time_ns": t, "author": author,
                    "note": note}

        out = self._run("add_resolution", run)
        if out is not None:
            self.m_written.labels("resolutions").inc()
        return out

    # ---------------------------------------------------------------- LLM audit
    def record_llm_call(self, call: dict[str, Any]) -> None:
        """Audit one LLM call. Known keys: time_ns, model, tier, outcome, prompt_sha256,
        redaction_counts (dict), prompt_tokens, completion_tokens, total_tokens (or `tokens`),
        latency_s, cost_usd, cache_hit; any other key is kept in `extra`. Never raises: a failure is
        logged and counted in `store_errors_total{op="record_llm_call"}`."""
        try:
            c = dict(call)
            redactions = c.get("redaction_counts") or {}
            if not isinstance(redactions, dict):
                redactions = {"value": redactions}
            prompt_tokens = _int(c.get("prompt_tokens"))
            completion_tokens = _int(c.get("completion_tokens"))
            total = c.get("total_tokens", c.get("tokens"))
            total_tokens = _int(total) if total is not None else prompt_tokens + completion_tokens
            extra = {k: v for k, v in c.items() if k not in _LLM_KNOWN}
            row = (_int(c.get("time_ns")) or time.time_ns(), _text(c.get("model") or ""),
                   _text(c.get("tier") or ""), _text(c.get("outcome") or ""),
                   _text(c.get("prompt_sha256") or ""), prompt_tokens, completion_tokens, total_tokens,
                   _float_or_none(c.get("latency_s")),
                   _float_or_none(c.get("cost_usd")), 1 if c.get("cache_hit") else 0, _jdump(redactions),
                   _jdump(extra), time.time_ns())
            statement = ("INSERT INTO llm_calls (time_ns, model, tier, outcome, prompt_sha256, "
                         "prompt_tokens, completion_tokens, total_tokens, latency_s, cost_usd, cache_hit, "
                         "redaction_counts, extra, stored_ns) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            self._run("record_llm_call", lambda cur: self._ex(cur, statement, row))
        except Exception:  # noqa: BLE001 - auditing must never break the analyst; counted + logged
            self.m_errors.labels("record_llm_call").inc()
            log.exception("store: could not record LLM call")
            return
        self.m_written.labels("llm_calls").inc()
        self._note_writes(1)

    def list_llm_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """Audit records, newest first."""
        limit = _limit(limit)
        statement = f"SELECT {_LLM_COLS} FROM llm_calls ORDER BY time_ns DESC, seq DESC LIMIT ?"
        rows = self._run("list_llm_calls", lambda cur: self._ex(cur, statement, (limit,)).fetchall())
        out = []
        for r in rows:
            out.append({
                "id": int(r[0]), "time_ns": int(r[1]), "model": r[2], "tier": r[3], "outcome": r[4],
                "prompt_sha256": r[5], "prompt_tokens": int(r[6]), "completion_tokens": int(r[7]),
                "total_tokens": int(r[8]), "latency_s": None if r[9] is None else float(r[9]),
                "cost_usd": None if r[10] is None else float(r[10]), "cache_hit": bool(r[11]),
                "redaction_counts": json.loads(r[12]), "extra": json.loads(r[13]),
            })
        return out

    # ---------------------------------------------------------------- retention
    def _note_writes(self, n: int) -> None:
        """Wake the purge thread early once the writes since the last purge reach 10% of the smallest
        row cap, so a table never exceeds its cap by more than ~10% between purges."""
        with self._lock:
            self._writes_since_purge += n
            pending = self._writes_since_purge
        if pending >= self._purge_trigger and self._thread is not None:
            self._wake.set()

    def count(self, table: str) -> int:
        if table not in ("findings", "incidents", "resolutions", "llm_calls"):
            raise ValueError(f"unknown table {table!r}")
        statement = f"SELECT COUNT(*) FROM {table}"
        return self._run("count", lambda cur: int(self._ex(cur, statement).fetchone()[0]))

    def purge(self, now_ns: int | None = None) -> dict[str, int]:
        """Delete rows written more than `retention_days` before `now_ns` (open incidents are kept),
        then enforce the row caps, oldest rows first (resolved incidents before open ones).
        Returns the number of deleted rows per table."""
        now = time.time_ns() if now_ns is None else int(now_ns)
        cfg = self.config
        deleted = {"findings": 0, "incidents": 0, "resolutions": 0, "llm_calls": 0}

        def cap_by_seq(cur: Any, table: str, cap: int) -> int:
            statement = f"SELECT seq FROM {table} ORDER BY seq DESC LIMIT 1 OFFSET ?"
            row = self._ex(cur, statement, (cap,)).fetchone()
            if row is None:
                return 0
            return self._ex(cur, f"DELETE FROM {table} WHERE seq <= ?", (int(row[0]),)).rowcount

        def run(cur: Any) -> None:
            if cfg.retention_days > 0:
                cutoff = now - int(cfg.retention_days * _NS_PER_DAY)
                for table in ("findings", "llm_calls"):
                    n = self._ex(cur, f"DELETE FROM {table} WHERE stored_ns < ?", (cutoff,)).rowcount
                    deleted[table] += n
                    self.m_purged.labels(table, "retention").inc(n)
                n = self._ex(cur, "DELETE FROM incidents WHERE stored_ns < ? AND status <> ?",
                             (cutoff, STATUS_OPEN)).rowcount
                deleted["incidents"] += n
                self.m_purged.labels("incidents", "retention").inc(n)
            for table, cap in (("findings", cfg.max_findings), ("llm_calls", cfg.max_llm_calls)):
                if cap:
                    n = cap_by_seq(cur, table, cap)
                    deleted[table] += n
                    self.m_purged.labels(table, "cap").inc(n)
            if cfg.max_incidents:
                total = int(self._ex(cur, "SELECT COUNT(*) FROM incidents").fetchone()[0])
                excess = total - cfg.max_incidents
                if excess > 0:
                    ids = [r[0] for r in self._ex(
                        cur, "SELECT id FROM incidents ORDER BY CASE WHEN status = ? THEN 1 ELSE 0 END, "
                             "updated_ns, stored_ns, id LIMIT ?", (STATUS_OPEN, excess)).fetchall()]
                    for i in range(0, len(ids), _IN_CHUNK):
                        chunk = ids[i:i + _IN_CHUNK]
                        marks = ", ".join("?" for _ in chunk)
                        deleted["incidents"] += self._ex(
                            cur, f"DELETE FROM incidents WHERE id IN ({marks})", chunk).rowcount
                    self.m_purged.labels("incidents", "cap").inc(len(ids))
            n = self._ex(cur, "DELETE FROM resolutions "
                              "WHERE incident_id NOT IN (SELECT id FROM incidents)").rowcount
            deleted["resolutions"] += n
            self.m_purged.labels("resolutions", "orphan").inc(n)
            for table in deleted:
                rows = int(self._ex(cur, f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                self.m_rows.labels(table).set(rows)

        with self._lock:
            seen = self._writes_since_purge
            self._run("purge", run)
            self._writes_since_purge -= seen
        self.m_purge_runs.inc()
        return deleted
