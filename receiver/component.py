"""The component model every stage follows (after the OpenTelemetry Collector's).

A stage is a small package with:
  * a typed config dataclass with defaults and `validate()` (raises `ConfigError` naming the key),
  * a constructor taking that config and the next consumer,
  * `start()` / `shutdown()` -- idempotent; `shutdown()` is safe without `start()` and flushes,
  * one consuming method (`consume_traces`, `consume_logs`, `consume_findings`, ...).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

from receiver.errors import ConfigError


@runtime_checkable
class Component(Protocol):
    def start(self) -> None: ...

    def shutdown(self) -> None: ...


class StageConfig:
    """Mixin for stage configs (dataclasses). Subclasses override `validate()` and call super()."""

    def validate(self) -> None:
        if not is_dataclass(self):
            return
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StageConfig):
                value.validate()


def require(cond: bool, key: str, message: str) -> None:
    """Raise ConfigError('<key>: <message>') unless cond holds."""
    if not cond:
        raise ConfigError(f"{key}: {message}")


def positive(value: Any, key: str) -> None:
    require(isinstance(value, (int, float)) and value > 0, key, f"must be > 0, got {value!r}")


def non_negative(value: Any, key: str) -> None:
    require(isinstance(value, (int, float)) and value >= 0, key, f"must be >= 0, got {value!r}")
