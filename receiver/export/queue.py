"""A durable, capped FIFO of serialized findings on disk (SQLite, WAL, synchronous=FULL).

`append()` returns only after the rows are committed and fsync'd, so a crash or restart loses
nothing that was appended. Each row remembers which signals were already delivered (`logs_done`,
`spans_done`) so a finding whose log record went out but whose span did not is not re-sent as a
log record. A row is deleted once every signal it needs has been delivered (or permanently
refused). One process at a time: the directory is locked with flock(2).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from receiver.errors import ConfigError

DB_NAME = "findings.sqlite3"
LOCK_NAME = "LOCK"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    logs_done INTEGER NOT NULL DEFAULT 0,
    spans_done INTEGER NOT NULL DEFAULT 1
)
"""


@dataclass(slots=True)
class Row:
    seq: int
    payload: bytes
    logs_done: bool
    spans_done: bool


class DiskQueue:
    def __init__(self, directory: str | os.PathLike[str], max_items: int, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConfigError(
                f"export.queue_dir: {self.directory} is in use by another exporter (locked)"
            ) from None
        self._mu = threading.Lock()
        try:
            self._db = sqlite3.connect(self.directory / DB_NAME, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
        except sqlite3.Error as e:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            raise ConfigError(
                f"export.queue_dir: cannot open the export queue {self.directory / DB_NAME}: {e} "
                "(move the file away to start with an empty queue)"
            ) from e
        self._count = int(count)
        self._bytes = int(size)
        self._closed = False

    # --- producer side -------------------------------------------------------------------
    def append(self, items: Sequence[tuple[bytes, bool]]) -> int:
        """Append (payload, needs_span) items durably, evicting the oldest rows to respect the caps.
        Returns how many findings were dropped (old rows evicted, or new items that alone exceed a cap)."""
        if not items:
            return 0
        dropped = 0
        items = list(items)
        # Keep only the newest items that fit into an empty queue by themselves.
        keep: list[tuple[bytes, bool]] = []
        total = 0
        for payload, needs_span in reversed(items):
            if len(keep) >= self.max_items or total + len(payload) > self.max_bytes:
                dropped += 1
                continue
            keep.append((payload, needs_span))
            total += len(payload)
        keep.reverse()
        with self._mu:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count, nbytes = self._count, self._bytes
                evict = 0
                evicted_bytes = 0
                if count + len(keep) > self.max_items or nbytes + total > self.max_bytes:
                    cur = self._db.execute("SELECT size FROM queue ORDER BY seq")
                    for (size,) in cur:
                        if (count - evict + len(keep) <= self.max_items
                                and nbytes - evicted_bytes + total <= self.max_bytes):
                            break
                        evict += 1
                        evicted_bytes += int(size)
                    cur.close()
                    if evict:
                        self._db.execute(
                            "DELETE FROM queue WHERE seq IN (SELECT seq FROM queue ORDER BY seq LIMIT ?)",
                            (evict,),
                        )
                self._db.executemany(
                    "INSERT INTO queue (payload, size, logs_done, spans_done) VALUES (?, ?, 0, ?)",
                    [(p, len(p), 0 if needs_span else 1) for p, needs_span in keep],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count = count - evict + len(keep)
            self._bytes = nbytes - evicted_bytes + total
        return dropped + evict

    # --- consumer side -------------------------------------------------------------------
    def peek(self, limit: int) -> list[Row]:
        with self._mu:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, payload, logs_done, spans_done FROM queue ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Row(int(s), bytes(p), bool(ld), bool(sd)) for s, p, ld, sd in rows]

    def mark_done(self, seqs: Sequence[int], signal: str) -> int:
        """Mark `signal` ('logs' or 'spans') delivered for these rows; delete rows that are finished.
        Returns how many rows were deleted."""
        if signal not in ("logs", "spans"):
            raise ValueError(signal)
        if not seqs:
            return 0
        column = "logs_done" if signal == "logs" else "spans_done"
        with self._mu:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(f"UPDATE queue SET {column} = 1 WHERE seq = ?", [(s,) for s in seqs])
                marks = ",".join("?" * len(seqs))
                gone = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue WHERE seq IN ({marks}) "
                    "AND logs_done = 1 AND spans_done = 1",
                    list(seqs),
                ).fetchone()
                self._db.execute(
                    f"DELETE FROM queue WHERE seq IN ({marks}) AND logs_done = 1 AND spans_done = 1",
                    list(seqs),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= int(gone[0])
            self._bytes -= int(gone[1])
        return int(gone[0])

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("export queue is closed")

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
