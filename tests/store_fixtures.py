"""Store fixtures shared by the store and incident tests (loaded with `pytest_plugins`).

`pg_server`: one real PostgreSQL server per test session (started by `tests.pg_server`; an error, not
a skip, when PostgreSQL is not installed). `make_store`: parametrised over SQLite and PostgreSQL; each
test gets a fresh database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from receiver.store import Store, StoreConfig
from tests.pg_server import PostgresServer

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()  # raises (test error, not skip) if PostgreSQL is missing
    try:
        yield server
    finally:
        server.stop()


StoreFactory = Callable[..., Store]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Factory: `make_store(**config)` -> a started store on a fresh database of the backend;
    `make_store(url=..., ...)` reopens a given database."""
    backend = request.param
    url = (f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_server").create_database())
    stores: list[Store] = []

    def factory(start: bool = True, **kw: Any) -> Store:
        kw.setdefault("url", url)
        s = Store(StoreConfig(**kw), registry=CollectorRegistry())
        if start:  # not started: opens on first use, no background purge thread (deterministic purges)
            s.start()
        stores.append(s)
        return s

    factory.url = url  # type: ignore[attr-defined]
    factory.backend = backend  # type: ignore[attr-defined]
    yield factory
    for s in stores:
        s.shutdown()
