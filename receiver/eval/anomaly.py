"""`llm-log-analyzer eval anomaly --data PATH [--json]`: measure tier 0 (and later the LLM cascade).

Two inputs:

(a) a directory with `block_sessions.jsonl` (HDFS_100k, one JSON object per block: `BlockId`,
    `Label` 0/1, `split` train/test, `templates` = ordered template strings). Each block is a
    session window. Learning is UNSUPERVISED: every train session is fed to the detector without its
    label (normal and abnormal alike, as a live system would see them); then the test sessions are
    scored in file order (the detector keeps learning online) and session-level precision, recall
    and F1 are computed against the labels.

(b) a Loghub raw log whose first field is the label (`-` = normal), e.g. BGL: `LABEL UNIXTS DATE
    NODE TIMESTAMP NODE TYPE COMPONENT LEVEL MESSAGE`. Each line becomes a log event: service =
    COMPONENT (KERNEL, APP, DISCOVERY, ...), event time = UNIXTS, severity = LEVEL, body = MESSAGE;
    lines whose layout is not BGL-like fall back to (label, first integer field as time, rest as
    body) in one service. Bodies are mined with the project's TemplateMiner and windowed with the
    project's WindowManager; labels are never shown to the detector.
    WINDOW RULE: tumbling event-time windows of `--window-s` seconds (default 3600) per service; a
    window is anomalous (ground truth) if ANY of its lines carries a label other than `-`; a window
    is predicted anomalous if tier 0 flags it. Empty (silence) windows have no lines, so they are
    never anomalous in the ground truth and count as false positives if flagged.

Prints precision, recall, F1 (and counts); `--json` prints {"precision","recall","f1","items",...}.

The detector chain is built by `build_chain(...)`; `llm` is handed to it so the LLM cascade can be
plugged in later (an object with `consume_assessments` that returns/records its own verdicts).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from receiver.detect.tier0 import Assessment, DetectConfig, Tier0Detector
from receiver.logs.templates import TemplateMiner, TemplatesConfig
from receiver.logs.windows import NS, Window, WindowManager, WindowsConfig, severity_class


@dataclass
class Chain:
    """What the evaluation drives: `judge(windows) -> list[bool]` (flagged per window)."""

    detector: Tier0Detector
    judge: Callable[[Sequence[Window]], list[Assessment]]
    flagged: Callable[[Assessment], bool]
    reviewer: Any = None

    def llm_report(self) -> dict[str, Any] | None:
        report = getattr(self.reviewer, "report", None)
        return report() if callable(report) else None


def resolve_llm(llm: Any) -> Any:
    """`llm` as given to `run`: None / "" / "off" -> tier 0 only; an object with
    `review(assessments) -> list[bool]` -> used as is; any other string (`local`, a URL) is handed to
    `receiver.llm.eval_hook.make_reviewer(spec)` (the LLM cascade's evaluation hook) which returns
    such an object."""
    if llm is None or (isinstance(llm, str) and llm.strip().lower() in ("", "off", "none")):
        return None
    if hasattr(llm, "review"):
        return llm
    if isinstance(llm, str):
        try:
            from receiver.llm.eval_hook import make_reviewer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ValueError(f"--llm {llm}: the LLM cascade has no evaluation hook "
                             f"(receiver.llm.eval_hook.make_reviewer): {exc}") from exc
        return make_reviewer(llm)
    raise ValueError(f"llm: expected off, local, a URL or a reviewer object, got {llm!r}")


def build_chain(config: DetectConfig | None = None, llm: Any = None,
                registry: CollectorRegistry | None = None) -> Chain:
    """Build the detector chain used by the evaluation. Tier 0 alone when `llm` resolves to None.

    Hook for the LLM cascade: `llm` (see `resolve_llm`) offers `review(assessments) -> list[bool]`,
    the final verdict per assessment (tier 1/2 confirming or dismissing tier 0's flags, possibly
    flagging windows tier 0 let through); the chain then scores those verdicts. If the reviewer also
    has `report() -> dict`, that dict is added to the result under "llm".
    """
    llm = resolve_llm(llm)
    det = Tier0Detector(config or DetectConfig(), None, registry)

    if llm is None:
        return Chain(det, det.consume_windows, lambda a: a.flagged)

    verdicts: dict[int, bool] = {}

    def judge(windows: Sequence[Window]) -> list[Assessment]:
        out = det.consume_windows(windows)
        for a, v in zip(out, llm.review(out), strict=True):
            verdicts[id(a)] = bool(v)
        return out

    return Chain(det, judge, lambda a: verdicts.get(id(a), a.flagged), llm)


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


# ---------------------------------------------------------------------------- (a) sessions
def eval_sessions(path: Path, llm: Any = None, config: DetectConfig | None = None) -> dict[str, Any]:
    chain = build_chain(config, llm)
    ids: dict[str, int] = {}
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
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
                str(d["BlockId"])
                (train if d["split"] == "train" else test).append(d)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}/block_sessions.jsonl:{line_no}: bad record: {exc}") from exc

    def window(d: dict[str, Any], t0: int) -> Window:
        seq = [ids.setdefault(t, len(ids) + 1) for t in d["templates"]]
        counts: dict[int, int] = {}
        for t in seq:
            counts[t] = counts.get(t, 0) + 1
        templates = {ids[t]: t for t in d["templates"]}
        return Window(service="hdfs", kind="session", key=str(d["BlockId"]), start_ns=t0, end_ns=t0 + NS,
                      count=len(seq), template_counts=counts, templates=templates,
                      severity_counts={"info": len(seq)}, template_sequence=seq[:1024],
                      template_worst={t: "info" for t in counts})

    started = time.perf_counter()
    t0 = 0
    batch: list[Window] = []
    for d in train:
        batch.append(window(d, t0))
        t0 += NS
        if len(batch) >= 256:
            chain.judge(batch)
            batch = []
    if batch:
        chain.judge(batch)
    tp = fp = fn = tn = 0
    test_windows = [window(d, t0 + i * NS) for i, d in enumerate(test)]
    assessments: list[Assessment] = []
    for i in range(0, len(test_windows), 256):
        assessments += chain.judge(test_windows[i:i + 256])
    by_type: dict[str, int] = {}
    for d, a in zip(test, assessments, strict=True):
        pred = chain.flagged(a)
        if pred:
            by_type[a.problem] = by_type.get(a.problem, 0) + 1
        label = int(d["Label"]) == 1
        tp += pred and label
        fp += pred and not label
        fn += (not pred) and label
        tn += (not pred) and not label
    elapsed = time.perf_counter() - started
    p, r, f1 = prf(tp, fp, fn)
    # how many anomalous test sessions are indistinguishable (same template sequence as a normal one)
    normal_seqs = {tuple(d["templates"]) for d in train + test if int(d["Label"]) == 0}
    ambiguous = sum(1 for d in test if int(d["Label"]) == 1 and tuple(d["templates"]) in normal_seqs)
    anomalous = tp + fn
    ceiling_r = (anomalous - ambiguous) / anomalous if anomalous else 0.0
    ceiling_f1 = 2 * ceiling_r / (1 + ceiling_r) if ceiling_r else 0.0
    return {
        "dataset": str(path), "mode": "sessions", "precision": p, "recall": r, "f1": f1,
        "items": len(test), "train_items": len(train), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "flagged_by_type": by_type, "ambiguous_anomalies": ambiguous, "f1_ceiling": ceiling_f1,
        "seconds": round(elapsed, 3),
    } | ({"llm": chain.llm_report()} if chain.llm_report() is not None else {})


# ---------------------------------------------------------------------------- (b) labelled raw log
_BGL_RE = re.compile(
    r"^(?P<label>\S+) (?P<ts>\d{9,11}) \S+ \S+ \S+ \S+ (?P<type>\S+) (?P<comp>\S+) (?P<level>[A-Z]+)"
    r" ?(?P<msg>.*)$"
)
_GENERIC_RE = re.compile(r"^(?P<label>\S+) (?P<ts>\d{9,11})\b ?(?P<msg>.*)$")


def parse_labelled_line(line: str) -> tuple[bool, str, int, str, str] | None:
    """-> (is_anomalous, service, time_ns, severity class, body) or None for an unparseable line."""
    line = line.rstrip("\r\n")
    m = _BGL_RE.match(line)
    if m:
        return (m["label"] != "-", m["comp"], int(m["ts"]) * NS, severity_class(0, m["level"]), m["msg"])
    m = _GENERIC_RE.match(line)
    if m:
        return (m["label"] != "-", "log", int(m["ts"]) * NS, "unknown", m["msg"])
    return None


def eval_labelled_log(path: Path, llm: Any = None, config: DetectConfig | None = None,
                      window_s: float = 3600.0, one_service: bool = False) -> dict[str, Any]:
    chain = build_chain(config, llm)
    registry = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(), registry)
    wm = WindowManager(WindowsConfig(tumbling_s=window_s, allowed_lateness_s=0.0, session_key="off",
                                     max_empty_windows=0), registry, clock=lambda: 0.0)
    labels: dict[tuple[str, int], bool] = {}  # (service, window start) -> any line labelled
    closed: list[Window] = []
    size = int(window_s * NS)
    bad = 0
    lines = 0
    started = time.perf_counter()
    with open(path, errors="replace") as f:
        for raw in f:
            parsed = parse_labelled_line(raw)
            if parsed is None:
                bad += 1
                continue
            lines += 1
            anomalous, service, t_ns, sev, body = parsed
            if one_service:
                service = "log"
            key = (service, t_ns - t_ns % size)
            labels[key] = labels.get(key, False) or anomalous
            m = miner.match(service, body)
            closed += wm.add(service, t_ns, sev, body, m.template_id, m.template, m.is_new)
    closed += wm.flush()
    closed.sort(key=lambda w: (w.end_ns, w.service))
    assessments = chain.judge(closed)
    tp = fp = fn = tn = 0
    by_type: dict[str, int] = {}
    for w, a in zip(closed, assessments, strict=True):
        pred = chain.flagged(a)
        label = labels.get((w.service, w.start_ns), False) if w.count else False
        if pred:
            by_type[a.problem] = by_type.get(a.problem, 0) + 1
        tp += pred and label
        fp += pred and not label
        fn += (not pred) and label
        tn += (not pred) and not label
    p, r, f1 = prf(tp, fp, fn)
    return {
        "dataset": str(path), "mode": "windows", "window_s": window_s, "precision": p, "recall": r, "f1": f1,
        "items": len(closed), "lines": lines, "unparsed_lines": bad, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "flagged_by_type": by_type, "seconds": round(time.perf_counter() - started, 3),
    } | ({"llm": chain.llm_report()} if chain.llm_report() is not None else {})


def evaluate(path: str | Path, llm: Any = None, config: DetectConfig | None = None,
             window_s: float = 3600.0) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        if not (p / "block_sessions.jsonl").is_file():
            raise FileNotFoundError(f"{p}: no block_sessions.jsonl in this directory")
        return eval_sessions(p, llm, config)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or directory")
    return eval_labelled_log(p, llm, config, window_s)


def run(path: str, as_json: bool, llm: Any = None, window_s: float = 3600.0) -> int:
    try:
        res = evaluate(path, llm, window_s=window_s)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({k: res[k] for k in ("precision", "recall", "f1", "items")} | {
            k: v for k, v in res.items() if k not in ("precision", "recall", "f1", "items")}))
        return 0
    unit = "sessions" if res["mode"] == "sessions" else f"windows of {res['window_s']:.0f} s"
    print(f"dataset   {res['dataset']}  ({res['items']} {unit})")
    print(f"precision {res['precision']:.4f}")
    print(f"recall    {res['recall']:.4f}")
    print(f"f1        {res['f1']:.4f}")
    print(f"tp {res['tp']}  fp {res['fp']}  fn {res['fn']}  tn {res['tn']}  "
          f"flagged by type {res['flagged_by_type']}")
    if res["mode"] == "sessions":
        print(f"note: {res['ambiguous_anomalies']} anomalous test sessions have exactly the template "
              f"sequence of a normal session; no sequence detector can separate them "
              f"(F1 ceiling {res['f1_ceiling']:.4f})")
    print(f"time      {res['seconds']:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval anomaly", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="HDFS-style directory with block_sessions.jsonl, or a "
                    "labelled Loghub raw log (first field = label, '-' normal)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--window-s", type=float, default=3600.0, help="window size for labelled raw logs")
    args = ap.parse_args(argv)
    return run(args.data, args.json, window_s=args.window_s)


if __name__ == "__main__":
    raise SystemExit(main())
