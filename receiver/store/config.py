"""Configuration of the findings / incidents store."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.component import StageConfig, non_negative, positive, require

DEFAULT_URL = "sqlite:///./var/llm-log-analyzer.db"


@dataclass
class StoreConfig(StageConfig):
    """`url`: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `sqlite:///:memory:`, or a
    PostgreSQL DSN / URL (`postgresql://user@host:5432/db`, `postgres://...`).

    Retention is measured on the wall-clock time a row was written (not on event time), so replays of
    historical data are not purged the moment they land. `retention_days = 0` keeps rows forever.
    Row caps (`max_*`) are enforced by `purge()`, oldest rows first; 0 disables a cap.
    """

    url: str = DEFAULT_URL
    retention_days: float = 7.0
    max_findings: int = 200_000
    max_incidents: int = 20_000
    max_llm_calls: int = 200_000
    purge_interval_s: float = 300.0
    connect_timeout_s: float = 10.0

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.url, str) and bool(self.url.strip()), "store.url",
                "must be a non-empty string")
        require(
            self.url.startswith(("sqlite://", "postgresql://", "postgres://")),
            "store.url",
            f"must start with sqlite:///, postgresql:// or postgres://, got {self.url!r}",
        )
        if self.url.startswith("sqlite://"):
            require(self.url.startswith("sqlite:///") and len(self.url) > len("sqlite:///"), "store.url",
                    "sqlite URL must look like sqlite:///path/to/file.db or sqlite:///:memory:")
        non_negative(self.retention_days, "store.retention_days")
        for key in ("max_findings", "max_incidents", "max_llm_calls"):
            value = getattr(self, key)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"store.{key}",
                    f"must be an integer >= 0, got {value!r}")
        positive(self.purge_interval_s, "store.purge_interval_s")
        positive(self.connect_timeout_s, "store.connect_timeout_s")

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite://") else "postgresql"

    @property
    def sqlite_path(self) -> str:
        """The file path of a sqlite URL (`:memory:` for an in-memory database)."""
        require(self.backend == "sqlite", "store.url", "not a sqlite URL")
        return self.url[len("sqlite:///"):]
