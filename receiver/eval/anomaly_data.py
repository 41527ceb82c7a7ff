"""Readers for `eval anomaly`: each turns one labelled input into windows for the detector.

Three input formats, recognised from what the path holds (anything else is an error naming them):

(a) a directory with `block_sessions.jsonl`: one JSON object per session (`BlockId`, `Label` 0/1,
    `split` train/test, `templates` = the session's ordered template strings). The train sessions are
    fed first without their labels (as a live system would see them), then the test sessions are
    scored. Sessions are spaced one second apart in event time (the file has no times).
(b) a raw log whose first field is a label (`-` = normal, anything else = an alert) and whose second
    field is a Unix timestamp (Loghub's BGL layout: `LABEL UNIXTS DATE NODE TIMESTAMP NODE TYPE
    COMPONENT LEVEL MESSAGE`). Each line is a log event of service COMPONENT; windows are tumbling
    event-time windows of `window_s` per service; a window is anomalous if any of its lines is.
(c) a directory with `anomaly_label.csv` (`BlockId,Label` with `Normal`/`Anomaly`) and one `*.log`
    of raw lines `DATE TIME PID LEVEL COMPONENT: MESSAGE`: the whole file is one service (one
    application's log); lines are grouped into session windows by the session regex (the product's
    `logs.windows.session_regex`), and a labelled id is anomalous if any window of it is flagged.

Bodies are mined with the product's TemplateMiner and windowed with its WindowManager; labels are
never shown to the detector.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from receiver.logs.templates import TemplateMiner, TemplatesConfig
from receiver.logs.windows import NS, Window, WindowManager, WindowsConfig, severity_class

ENTITY_GAP_S = 3600.0
# the share of a readable input that may fail to parse before it is refused as the wrong format
MAX_UNPARSED_SHARE = 0.5


@dataclass
class Prepared:
    """Windows in the order the detector judges them, and how to score them.

    `unit[i]` names the labelled unit window i belongs to ("" = not scored: the unlabelled train part);
    a unit is predicted anomalous when any of its windows is flagged. `warmup_units` are the units
    baseline (b) learns its vocabulary from (it scores only the others)."""

    mode: str  # sessions | windows | raw-sessions
    windows: list[Window]
    unit: list[str]
    labels: dict[str, bool]
    warmup_units: set[str] = field(default_factory=set)
    has_severity: bool = True
    lines: int = 0
    unparsed: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class FormatError(ValueError):
    """The input is not one of the formats `eval anomaly` reads."""


FORMATS = ("a directory with block_sessions.jsonl (one JSON session per line: BlockId, Label, split, "
           "templates); a labelled raw log whose first field is the label ('-' normal) and second a Unix "
           "timestamp (Loghub BGL layout); or a directory with anomaly_label.csv (BlockId,Label) and one "
           "*.log of raw 'DATE TIME PID LEVEL COMPONENT: MESSAGE' lines")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "block_sessions.jsonl").is_file():
            return "sessions"
        if (path / "anomaly_label.csv").is_file() and list(path.glob("*.log")):
            return "raw-sessions"
        raise FormatError(f"{path}: no block_sessions.jsonl, and no anomaly_label.csv with a *.log beside "
                          f"it; expected {FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return "windows"


# ---------------------------------------------------------------------------- (a) sessions
def read_sessions(path: Path) -> Prepared:
    ids: dict[str, int] = {}
    train: list[dict[str, object]] = []
    test: list[dict[str, object]] = []
    with open(path / "block_sessions.jsonl") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
                if not isinstance(d["templates"], list) or d["split"] not in ("train", "test"):
                    raise ValueError("templates must be a list and split train|test")
                d["Label"] = int(d["Label"])
                d["BlockId"] = str(d["BlockId"])
                (train if d["split"] == "train" else test).append(d)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}/block_sessions.jsonl:{line_no}: bad record: {exc}") from exc

    def window(d: dict[str, object], t0: int) -> Window:
        tl = [str(t) for t in d["templates"]]  # type: ignore[attr-defined]
        seq = [ids.setdefault(t, len(ids) + 1) for t in tl]
        counts: dict[int, int] = {}
        for t in seq:
            counts[t] = counts.get(t, 0) + 1
        return Window(service="log", kind="session", key=str(d["BlockId"]), start_ns=t0, end_ns=t0 + NS // 2,
                      count=len(seq), template_counts=counts, templates={ids[t]: t for t in tl},
                      severity_counts={"unknown": len(seq)}, template_sequence=seq[:1024],
                      template_worst={t: "unknown" for t in counts}, key_kind="regex",
                      first_ns=t0, last_ns=t0 + NS // 2)

    windows: list[Window] = []
    unit: list[str] = []
    labels: dict[str, bool] = {}
    for i, d in enumerate(train + test):
        windows.append(window(d, i * NS))
        key = str(d["BlockId"])
        if d["split"] == "test":
            unit.append(key)
            labels[key] = int(d["Label"]) == 1  # type: ignore[call-overload]
        else:
            unit.append("")
    p = Prepared("sessions", windows, unit, labels, has_severity=False, lines=sum(w.count for w in windows))
    p.extra["train_items"] = len(train)
    # baseline (b) learns from the train part: those windows are not units, so mark them by index
    p.extra["warmup_windows"] = len(train)
    normal = {tuple(d["templates"]) for d in train + test if int(d["Label"]) == 0}  # type: ignore[call-overload]
    p.extra["ambiguous_anomalies"] = sum(1 for d in test if int(d["Label"]) == 1  # type: ignore[call-overload]
                                         and tuple(d["templates"]) in normal)  # type: ignore[arg-type]
    return p


# ---------------------------------------------------------------------------- (b) labelled raw log
_BGL_RE = re.compile(
    r"^(?P<label>\S+) (?P<ts>\d{9,11}) \S+ \S+ \S+ \S+ (?P<type>\S+) (?P<comp>\S+) (?P<level>[A-Z]+)"
    r" ?(?P<msg>.*)$"
)


def parse_labelled_line(line: str) -> tuple[bool, str, int, str, str] | None:
    """-> (is_anomalous, service, time_ns, severity class, body) or None for an unparseable line."""
    m = _BGL_RE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    return (m["label"] != "-", m["comp"], int(m["ts"]) * NS, severity_class(0, m["level"]), m["msg"])


def _miner_and_windows(windows_cfg: WindowsConfig) -> tuple[TemplateMiner, WindowManager]:
    registry = CollectorRegistry()
    return (TemplateMiner(TemplatesConfig(), registry),
            WindowManager(windows_cfg, registry, clock=lambda: 0.0))


def read_labelled_log(path: Path, window_s: float) -> Prepared:
    miner, wm = _miner_and_windows(WindowsConfig(tumbling_s=window_s, allowed_lateness_s=0.0,
                                                 session_key="off", max_empty_windows=0))
    labels: dict[str, bool] = {}
    closed: list[Window] = []
    size = int(window_s * NS)
    bad = lines = 0
    with open(path, errors="replace") as f:
        for raw in f:
            if not raw.strip():
                continue
            parsed = parse_labelled_line(raw)
            if parsed is None:
                bad += 1
                continue
            lines += 1
            anomalous, service, t_ns, sev, body = parsed
            key = f"{service}@{t_ns - t_ns % size}"
            labels[key] = labels.get(key, False) or anomalous
            m = miner.match(service, body)
            closed += wm.add(service, t_ns, sev, body, m.template_id, m.template, m.is_new)
    _check_parsed(path, lines, bad)
    closed += wm.flush()
    closed = [w for w in closed if w.count]
    closed.sort(key=lambda w: (w.end_ns, w.service))
    unit = [f"{w.service}@{w.start_ns}" for w in closed]
    warm = set(unit[: int(len(unit) * 0.3)])
    p = Prepared("windows", closed, unit, labels, warmup_units=warm, lines=lines, unparsed=bad)
    p.extra["window_s"] = window_s
    return p


def _check_parsed(path: Path, lines: int, bad: int) -> None:
    if lines == 0 or bad > MAX_UNPARSED_SHARE * (lines + bad):
        raise FormatError(f"{path}: {bad} of {lines + bad} lines are not in a format eval anomaly reads; "
                          f"expected {FORMATS}")


# ---------------------------------------------------------------------------- (c) raw log + labels
_RAW_RE = re.compile(r"^(?P<date>\d{6}) (?P<time>\d{6}) (?P<pid>\d+) (?P<level>[A-Z]+) (?P<comp>[^:\s]+): "
                     r"(?P<msg>.*)$")


def parse_raw_line(line: str) -> tuple[int, str, str] | None:
    """`YYMMDD HHMMSS PID LEVEL COMPONENT: MESSAGE` -> (time_ns, severity class, body) or None."""
    m = _RAW_RE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    try:
        t = dt.datetime.strptime(m["date"] + m["time"], "%y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return int(t.timestamp()) * NS, severity_class(0, m["level"]), f"{m['comp']}: {m['msg']}"


def read_label_csv(path: Path) -> dict[str, bool]:
    labels: dict[str, bool] = {}
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.reader(f), 1):
            if row_no == 1 and row and row[0].strip().lower() in ("blockid", "id", "key"):
                continue
            if len(row) < 2 or row[1].strip() not in ("Normal", "Anomaly"):
                raise FormatError(f"{path}:{row_no}: expected 'ID,Normal|Anomaly', got {row!r}")
            labels[row[0].strip()] = row[1].strip() == "Anomaly"
    if not labels:
        raise FormatError(f"{path}: no labels")
    return labels


def raw_events(log: Path) -> Iterator[tuple[int, str, str] | None]:
    with open(log, errors="replace") as f:
        for raw in f:
            if raw.strip():
                yield parse_raw_line(raw)


def read_raw_sessions(path: Path, session_regex: str | None = None) -> Prepared:
    logs = sorted(path.glob("*.log"))
    if len(logs) != 1:
        raise FormatError(f"{path}: expected exactly one *.log beside anomaly_label.csv, found {len(logs)}")
    labels = read_label_csv(path / "anomaly_label.csv")
    # an entity (a block, a VM, a job) lives far longer than a request: its session closes after an
    # hour without lines (not the 30 s gap meant for trace ids), and the caps hold every open entity
    cfg = WindowsConfig(tumbling=False, session_key="off", allowed_lateness_s=0.0,
                        session_gap_s=ENTITY_GAP_S, session_max_s=7 * 86400.0,
                        max_sessions_per_service=100_000, max_sessions_total=100_000)
    if not session_regex:
        raise FormatError(f"{path}: a raw log with anomaly_label.csv needs --session-regex, the regex of "
                          f"the labelled id in its lines")
    cfg.session_key, cfg.session_regex = "regex", session_regex
    key_re = re.compile(cfg.session_regex)
    miner, wm = _miner_and_windows(cfg)
    closed: list[Window] = []
    bad = lines = 0
    first_seen: list[str] = []
    seen: set[str] = set()
    for ev in raw_events(logs[0]):
        if ev is None:
            bad += 1
            continue
        lines += 1
        t_ns, sev, body = ev
        for k in key_re.findall(body):
            if k not in seen and k in labels:
                seen.add(k)
                first_seen.append(k)
        m = miner.match("log", body)
        closed += wm.add("log", t_ns, sev, body, m.template_id, m.template, m.is_new)
    _check_parsed(logs[0], lines, bad)
    closed += wm.flush()
    closed = [w for w in closed if w.count and w.kind == "session"]
    closed.sort(key=lambda w: (w.end_ns, w.key))
    unit = [w.key if w.key in labels else "" for w in closed]
    missing = [k for k in labels if k not in seen]
    p = Prepared("raw-sessions", closed, unit, {k: v for k, v in labels.items() if k in seen},
                 warmup_units=set(first_seen[: int(len(first_seen) * 0.3)]), lines=lines, unparsed=bad)
    p.extra["labelled_ids_not_in_log"] = len(missing)
    p.extra["session_regex"] = cfg.session_regex
    return p
