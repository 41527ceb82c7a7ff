"""The checked-in generated code of the project's own gRPC API equals a fresh generation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN_SCRIPT = ROOT / "proto_gen" / "generate.py"


def _load_generate():
    spec = importlib.util.spec_from_file_location("proto_gen_generate", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    gen = _load_generate()
    produced = gen.generate(tmp_path)
    assert len(produced) == 3
    for rel in gen.GENERATED:
        fresh = (tmp_path / rel).read_bytes()
        checked_in = (ROOT / "proto_gen" / rel).read_bytes()
        assert fresh, rel
        assert fresh == checked_in, f"{rel} is stale: run `make proto` and commit the result"
    for rel in gen.PACKAGE_INITS:
        assert (ROOT / "proto_gen" / rel).exists(), rel


def test_generated_imports_resolve_from_the_package() -> None:
    from proto_gen.llm_log_analyzer.v1 import analyzer_pb2, analyzer_pb2_grpc

    grpc_src = (ROOT / "proto_gen" / "llm_log_analyzer" / "v1" / "analyzer_pb2_grpc.py").read_text()
    assert "from proto_gen.llm_log_analyzer.v1 import analyzer_pb2" in grpc_src
    assert "\nfrom llm_log_analyzer" not in grpc_src
    service = analyzer_pb2.DESCRIPTOR.services_by_name["Analyzer"]
    assert [m.name for m in service.methods] == ["ListFindings", "WatchFindings", "GetGraph"]
    assert service.methods_by_name["WatchFindings"].server_streaming
    assert analyzer_pb2.DESCRIPTOR.package == "llm_log_analyzer.v1"
    assert hasattr(analyzer_pb2_grpc, "add_AnalyzerServicer_to_server")
    f = analyzer_pb2.Finding(id="a", event_name="anomaly.detected")
    f.attributes["anomaly.evidence"].string_array_value.values.extend(["x", "y"])
    again = analyzer_pb2.Finding.FromString(f.SerializeToString())
    assert list(again.attributes["anomaly.evidence"].string_array_value.values) == ["x", "y"]
