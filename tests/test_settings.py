"""The settings loader: YAML sections onto typed configs, errors naming key and line, env overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from receiver.component import StageConfig, require
from receiver.errors import ConfigError
from receiver.settings import build_config, deep_merge, env_overrides, load_yaml


@dataclass
class Inner(StageConfig):
    ttl_s: float = 2.0
    names: list[str] = field(default_factory=lambda: ["a"])

    def validate(self) -> None:
        require(self.ttl_s > 0, "ttl_s", "must be > 0")


@dataclass
class Outer(StageConfig):
    endpoint: str = "127.0.0.1:4317"
    size: int = 64
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)
    headers: dict[str, str] = field(default_factory=dict)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_maps_nested_sections_and_types(tmp_path: Path) -> None:
    text = "size: 8\ninner:\n  ttl_s: 5\n  names: [x, y]\nheaders: {a: b}\n"
    data, lines = load_yaml(write(tmp_path, text))
    cfg = build_config(Outer, data, "c.yaml", lines)
    assert cfg.size == 8 and cfg.inner.ttl_s == 5.0 and isinstance(cfg.inner.ttl_s, float)
    assert cfg.inner.names == ["x", "y"] and cfg.headers == {"a": "b"} and cfg.enabled is True


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    data, lines = load_yaml(write(tmp_path, "size: 8\ninner:\n  ttl_s: 5\n  tll_s: 3\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml:4: inner\.tll_s: unknown setting"):
        build_config(Outer, data, "c.yaml", lines)


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    data, lines = load_yaml(write(tmp_path, "enabled: yes please\nsize: 8\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml:1: enabled: expected true or false"):
        build_config(Outer, data, "c.yaml", lines)
    data, lines = load_yaml(write(tmp_path, "size: 1.5\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml:1: size: expected an integer"):
        build_config(Outer, data, "c.yaml", lines)


def test_validate_error_gets_line(tmp_path: Path) -> None:
    data, lines = load_yaml(write(tmp_path, "inner:\n  ttl_s: -1\n"))
    cfg_data = data["inner"]
    with pytest.raises(ConfigError, match=r"ttl_s: must be > 0"):
        build_config(Inner, cfg_data, "c.yaml", {k[1:]: v for k, v in lines.items()})


def test_invalid_yaml_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml:2: invalid YAML"):
        load_yaml(write(tmp_path, "a: 1\n b: [\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml:2: size: duplicate key"):
        load_yaml(write(tmp_path, "size: 1\nsize: 2\n"))


def test_env_overrides_parse_scalars_and_merge() -> None:
    env = {"LLA_OTLP__MAX_RECV_MSG_SIZE_MIB": "8", "LLA_GRAPH__STORE__TTL_S": "2.5", "OTHER": "x",
           "LLA_LLM__MODE": "off"}
    over = env_overrides(env)
    assert over == {"otlp": {"max_recv_msg_size_mib": "8"}, "graph": {"store": {"ttl_s": "2.5"}},
                    "llm": {"mode": "off"}}
    merged = deep_merge({"size": 64, "endpoint": "a:1"}, {"size": over["otlp"]["max_recv_msg_size_mib"],
                                                         "inner": over["graph"]["store"],
                                                         "endpoint": over["llm"]["mode"]})
    cfg = build_config(Outer, merged, "env")
    assert cfg.size == 8 and cfg.inner.ttl_s == 2.5 and cfg.endpoint == "off"
    with pytest.raises(ConfigError, match=r"size: expected an integer"):
        build_config(Outer, {"size": env_overrides({"LLA_X__SIZE": "many"})["x"]["size"]}, "env")
