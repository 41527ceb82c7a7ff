"""The application's configuration: one section per stage, from a YAML file, env and flags.

Precedence: defaults < `--config FILE` < `LLA_SECTION__KEY` environment variables < command-line
flags. Every section is the stage's own config dataclass; this module only composes them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from receiver.api.http import ApiConfig
from receiver.component import StageConfig, require
from receiver.detect.config import DetectConfig
from receiver.errors import ConfigError
from receiver.export.config import ExportConfig
from receiver.graph.config import GraphConfig
from receiver.llm.config import LlmConfig
from receiver.logs.stage import LogsConfig
from receiver.otlp.config import OtlpConfig
from receiver.pipeline.queue import QueueConfig
from receiver.pipeline.spanproc import SpanProcessConfig
from receiver.rca.incidents import IncidentConfig
from receiver.rca.memory import MemoryConfig
from receiver.rca.signals import SignalsConfig
from receiver.rca.stage import RcaConfig
from receiver.settings import Lines, build_config, deep_merge, env_overrides, load_yaml
from receiver.store.config import StoreConfig


@dataclass
class ServerConfig(StageConfig):
    # off: tier-0 detector only; local: embedded llama.cpp model (needs the `local` extra);
    # http(s)://...: an OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).
    llm: str = "local"
    # Where templates, baselines, the SQLite store and the export queue live.
    data_dir: str = "./var"
    # Save mined templates and detector baselines every this many seconds (and at shutdown).
    state_save_interval_s: float = 60.0
    # Close windows of silent services / run RCA housekeeping every this many seconds.
    tick_interval_s: float = 1.0

    def validate(self) -> None:
        require(self.llm in ("off", "local") or self.llm.startswith(("http://", "https://")), "llm",
                f"must be off, local or an http(s):// URL, got {self.llm!r}")
        require(self.state_save_interval_s > 0, "state_save_interval_s", "must be > 0")
        require(self.tick_interval_s > 0, "tick_interval_s", "must be > 0")


@dataclass
class AppConfig(StageConfig):
    server: ServerConfig = field(default_factory=ServerConfig)
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    spanproc: SpanProcessConfig = field(default_factory=SpanProcessConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    rca: RcaConfig = field(default_factory=RcaConfig)
    incidents: IncidentConfig = field(default_factory=IncidentConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    def validate(self) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            try:
                section.validate()
            except ConfigError as e:
                msg = str(e)
                # Stages name keys relative to their section ("ttl_s: ...") or in full ("otlp.x: ...").
                raise ConfigError(msg if msg.startswith(f"{f.name}.") else f"{f.name}.{msg}") from e
        # across sections: the app's root-cause analysis reads the span signals the child builds
        require(self.spanproc.signals, "spanproc.signals",
                "must be true in the app: root-cause analysis reads the span signals "
                "(false runs the service graph alone, for benchmarks)")

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


def _flag_overrides(flags: argparse.Namespace | None) -> dict[str, Any]:
    if flags is None:
        return {}
    over: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            over.setdefault(section, {})[key] = value

    put("otlp", "grpc_endpoint", getattr(flags, "otlp_grpc", None))
    put("otlp", "http_endpoint", getattr(flags, "otlp_http", None))
    put("api", "endpoint", getattr(flags, "http", None))
    put("export", "endpoint", getattr(flags, "export_endpoint", None))
    put("server", "llm", getattr(flags, "llm", None))
    put("server", "data_dir", getattr(flags, "data_dir", None))
    return over


def _place_under_data_dir(data: dict[str, Any]) -> dict[str, Any]:
    """Paths that default to ./var follow `server.data_dir` unless set explicitly."""
    data_dir = str(data.get("server", {}).get("data_dir", ServerConfig.data_dir))
    store = data.setdefault("store", {})
    store.setdefault("url", f"sqlite:///{Path(data_dir) / 'llm-log-analyzer.db'}")
    export = data.setdefault("export", {})
    export.setdefault("queue_dir", str(Path(data_dir) / "export-queue"))
    return data


def load_config(path: str | os.PathLike[str] | None = None, flags: argparse.Namespace | None = None,
                environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Build the AppConfig from file, environment and flags; raises ConfigError naming key and line."""
    data: dict[str, Any] = {}
    lines: Lines = {}
    source = ""
    if path:
        source = str(path)
        data, lines = load_yaml(path)
    data = deep_merge(data, env_overrides(environ))
    data = deep_merge(data, _flag_overrides(flags))
    if overrides:
        data = deep_merge(data, overrides)
    data = _place_under_data_dir(data)
    return build_config(AppConfig, data, source, lines)
