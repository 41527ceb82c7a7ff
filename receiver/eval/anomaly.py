"""`llm-log-analyzer eval anomaly --data PATH [PATH ...] [--json]`: measure the detector on labelled data.

The inputs and how each becomes windows are described in `receiver.eval.anomaly_data` (HDFS-style
block sessions, a label-first raw log such as BGL, a raw log with an `anomaly_label.csv`); an input in
none of these formats is an error naming them. The detector learns without labels, online, in event
order, with its one default configuration.

In the same run and on the same units, two simple baselines are scored:
  (a) severity: the unit has a line at ERROR or above (and, printed beside it, at WARN or above);
      inputs without a severity field (template-only sessions) have none, so it flags nothing;
  (b) novelty: the unit has a template not seen during a warm-up (the first 30 % of units in event
      order, or the train split of block sessions); warm-up units are predicted normal.
Precision, recall and F1 are printed for the detector and both baselines; with several `--data`
paths a table over all of them follows.

The detector chain is built by `build_chain(...)`; `llm` is handed to it so the LLM cascade can review
tier 0's assessments (an object with `review(assessments) -> list[bool]`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from receiver.detect.tier0 import Assessment, DetectConfig, Tier0Detector
from receiver.eval.anomaly_data import (
    FormatError,
    Prepared,
    detect_format,
    parse_labelled_line,
    read_labelled_log,
    read_raw_sessions,
    read_sessions,
)
from receiver.logs.windows import Window

__all__ = ["Assessment", "Chain", "build_chain", "evaluate", "main", "parse_labelled_line", "prf",
           "resolve_llm", "run"]


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


def _score(labels: dict[str, bool], pred: dict[str, bool]) -> dict[str, Any]:
    tp = sum(1 for k, lab in labels.items() if lab and pred.get(k, False))
    fp = sum(1 for k, lab in labels.items() if not lab and pred.get(k, False))
    fn = sum(1 for k, lab in labels.items() if lab and not pred.get(k, False))
    p, r, f = prf(tp, fp, fn)
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn,
            "tn": len(labels) - tp - fp - fn}


def baselines(prep: Prepared) -> dict[str, dict[str, Any]]:
    """The simple rules every accuracy figure is printed beside (module docstring)."""
    err: dict[str, bool] = {}
    warn: dict[str, bool] = {}
    novel: dict[str, bool] = {}
    vocab: set[str] = set()
    warm_windows = int(prep.extra.get("warmup_windows", 0) or 0)  # type: ignore[call-overload]
    for i, (w, u) in enumerate(zip(prep.windows, prep.unit, strict=True)):
        texts = [w.templates.get(t, str(t)) for t in w.template_counts]
        warm = i < warm_windows or (u and u in prep.warmup_units)
        if warm:
            vocab.update(texts)
        if not u:
            continue
        if prep.has_severity:
            sev = w.severity_counts
            bad = sev.get("error", 0) + sev.get("fatal", 0)
            err[u] = err.get(u, False) or bad > 0
            warn[u] = warn.get(u, False) or bad + sev.get("warn", 0) > 0
        novel[u] = novel.get(u, False) or (not warm and any(t not in vocab for t in texts))
    return {"severity_error": _score(prep.labels, err), "severity_warn": _score(prep.labels, warn),
            "novel_after_warmup": _score(prep.labels, novel)}


def prepare(path: Path, window_s: float = 3600.0, session_regex: str | None = None) -> Prepared:
    fmt = detect_format(path)
    if fmt == "sessions":
        return read_sessions(path)
    if fmt == "raw-sessions":
        return read_raw_sessions(path, session_regex)
    return read_labelled_log(path, window_s)


def evaluate_otlp(path: str | Path, session_regex: str | None = None) -> dict[str, Any]:
    """A raw log with labels replayed through the running product over OTLP (`anomaly_otlp`); the
    baselines are scored on the in-process windows of the same data."""
    from receiver.eval.anomaly_otlp import replay

    started = time.perf_counter()
    p = Path(path)
    if detect_format(p) != "raw-sessions":
        raise FormatError(f"{p}: --otlp replays a directory with anomaly_label.csv and one *.log")
    prep = prepare(p, session_regex=session_regex)
    rep = replay(p, session_regex)
    labels = {k: v for k, v in rep["labels"].items() if k in prep.labels}
    res: dict[str, Any] = {"dataset": str(path), "mode": "raw-sessions", "via": "otlp"}
    res |= _score(labels, rep["pred"])
    res |= {"items": len(labels), "positives": sum(labels.values()), "windows": len(prep.windows),
            "lines": rep["lines"], "unparsed_lines": rep["unparsed_lines"], "findings": rep["findings"],
            "flagged_by_type": {}, "baselines": baselines(prep),
            "seconds": round(time.perf_counter() - started, 3)}
    return res


def evaluate(path: str | Path, llm: Any = None, config: DetectConfig | None = None,
             window_s: float = 3600.0, session_regex: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    prep = prepare(Path(path), window_s, session_regex)
    chain = build_chain(config, llm)
    assessments: list[Assessment] = []
    for i in range(0, len(prep.windows), 256):
        assessments += [a for a in chain.judge(prep.windows[i:i + 256]) if not a.summary]
    pred: dict[str, bool] = {}
    by_type: dict[str, int] = {}
    for u, a in zip(prep.unit, assessments, strict=True):
        if not u:
            continue
        flagged = chain.flagged(a) or bool(a.duplicate_of)
        if flagged and not pred.get(u, False):
            by_type[a.problem] = by_type.get(a.problem, 0) + 1
        pred[u] = pred.get(u, False) or flagged
    res: dict[str, Any] = {"dataset": str(path), "mode": prep.mode} | _score(prep.labels, pred)
    res |= {"items": len(prep.labels), "positives": sum(prep.labels.values()), "windows": len(prep.windows),
            "lines": prep.lines, "unparsed_lines": prep.unparsed, "flagged_by_type": by_type,
            "baselines": baselines(prep), "seconds": round(time.perf_counter() - started, 3)}
    res |= {k: v for k, v in prep.extra.items() if k != "warmup_windows"}
    if prep.mode == "sessions":
        anomalous = res["tp"] + res["fn"]
        amb = int(prep.extra["ambiguous_anomalies"])  # type: ignore[call-overload]
        ceiling_r = (anomalous - amb) / anomalous if anomalous else 0.0
        res["f1_ceiling"] = 2 * ceiling_r / (1 + ceiling_r) if ceiling_r else 0.0
    report = chain.llm_report()
    if report is not None:
        res["llm"] = report
    return res


def _line(name: str, s: dict[str, Any]) -> str:
    return (f"{name:<22} P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}   "
            f"tp {s['tp']} fp {s['fp']} fn {s['fn']}")


def print_result(res: dict[str, Any]) -> None:
    unit = {"sessions": "test sessions", "raw-sessions": "labelled ids" + (
        ", replayed over OTLP" if res.get("via") == "otlp" else "")}.get(
        res["mode"], f"windows of {res.get('window_s', 0):.0f} s")
    print(f"dataset   {res['dataset']}  ({res['items']} {unit}, {res['positives']} anomalous, "
          f"{res['lines']} lines)")
    print(_line("detector", res))
    b = res["baselines"]
    print(_line("(a) has ERROR/FATAL", b["severity_error"]))
    print(_line("(a2) has WARN or above", b["severity_warn"]))
    print(_line("(b) novel after warm-up", b["novel_after_warmup"]))
    print(f"flagged by type {res['flagged_by_type']}")
    if res["mode"] == "sessions":
        print(f"note: {res['ambiguous_anomalies']} anomalous test sessions have exactly the template "
              f"sequence of a normal session; no sequence detector can separate them "
              f"(F1 ceiling {res['f1_ceiling']:.4f})")
    print(f"time      {res['seconds']:.2f} s")


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'dataset (F1)':<48} {'detector':>9} {'(a) err':>8} {'(a2) warn':>10} {'(b) novel':>10}")
    for r in results:
        b = r["baselines"]
        print(f"{Path(r['dataset']).name[:48]:<48} {r['f1']:>9.3f} {b['severity_error']['f1']:>8.3f} "
              f"{b['severity_warn']['f1']:>10.3f} {b['novel_after_warmup']['f1']:>10.3f}")


def run(path: str | Sequence[str], as_json: bool, llm: Any = None, window_s: float = 3600.0,
        session_regex: str | None = None, otlp: bool = False) -> int:
    paths = [path] if isinstance(path, str) else list(path)
    results: list[dict[str, Any]] = []
    try:
        for p in paths:
            results.append(evaluate_otlp(p, session_regex) if otlp else
                           evaluate(p, llm, window_s=window_s, session_regex=session_regex))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        for res in results:
            print(json.dumps({k: res[k] for k in ("precision", "recall", "f1", "items")} | {
                k: v for k, v in res.items() if k not in ("precision", "recall", "f1", "items")}))
        return 0
    for res in results:
        print_result(res)
    if len(results) > 1:
        print_table(results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval anomaly", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, nargs="+", metavar="PATH",
                    help="one or more inputs: a directory with block_sessions.jsonl, a labelled raw log "
                    "(first field = label, '-' normal), or a directory with anomaly_label.csv and one *.log")
    ap.add_argument("--json", action="store_true", help="print one JSON object per input")
    ap.add_argument("--window-s", type=float, default=3600.0, help="window size for labelled raw logs")
    ap.add_argument("--session-regex", default=None,
                    help="for a raw log with anomaly_label.csv: the regex of the labelled id in its lines")
    ap.add_argument("--otlp", action="store_true",
                    help="replay a raw log with anomaly_label.csv through the running product over OTLP")
    args = ap.parse_args(argv)
    return run(args.data, args.json, window_s=args.window_s, session_regex=args.session_regex, otlp=args.otlp)


if __name__ == "__main__":
    raise SystemExit(main())
