"""`eval anomaly --llm local|URL`: the LLM cascade measured beside tier 0 alone and the naive approach.

Same data, same windows, same tier-0 detector (`receiver.eval.anomaly`, labels never shown to the
detectors). Three rows:
  * tier 0 alone: the detector's flags;
  * cascade: tier 0 + the analyst's routing (flagged / open incident / sample), cache, budget and
    verdict rules; F1 of its final verdicts, its real LLM calls, tokens and cost;
  * naive (the seed document's approach): every non-empty window's raw log lines sent to the LLM with
    the same system prompt and few-shot prefix. Its tokens are COUNTED with the backend's tokenizer
    (prompt: prefix + every raw line; output: the mean completion tokens the cascade measured). Its F1
    needs one LLM call per window and is measured only with `naive_f1=True` (slow on a CPU).

`CascadeReviewer.review(assessments) -> list[bool]` is the hook `receiver.eval.anomaly.build_chain`
expects (`llm.review`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from receiver.llm.analyst import LlmAnalyst
from receiver.llm.config import LlmConfig
from receiver.llm.prompt import prefix_text
from receiver.model import EVENT_ANOMALY, FindingsSink


class CascadeReviewer:
    """Runs the analyst's cascade synchronously over tier-0 assessments and keeps the numbers."""

    def __init__(self, analyst: LlmAnalyst, naive: bool = False) -> None:
        self.analyst = analyst
        self.naive = naive  # True: every non-empty window goes to the LLM, the LLM's verdict alone
        self.windows = 0
        self.analysed = 0
        self.llm_calls = 0
        self.cache_hits = 0
        self.tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.llm_seconds = 0.0
        self.outcomes: dict[str, int] = {}

    def review(self, assessments: Sequence[Any]) -> list[bool]:
        out: list[bool] = []
        for a in assessments:
            self.windows += 1
            if self.naive:
                out.append(self._naive(a))
                continue
            reason, base = self.analyst.route(a)
            if reason is None:
                out.append(bool(a.flagged))
                continue
            n_audit = len(self.analyst.audit_log)
            t = time.perf_counter()
            res = self.analyst.analyse(a, reason, base)
            self._count(res, time.perf_counter() - t, n_audit)
            out.append(any(f.event_name == EVENT_ANOMALY for f in res.findings))
        return out

    def _count(self, res: Any, seconds: float, n_audit: int) -> None:
        self.analysed += 1
        self.llm_calls += res.llm_calls
        self.cache_hits += int(res.cache_hit)
        self.tokens += res.tokens
        self.cost_usd += res.cost_usd
        if res.llm_calls:
            self.llm_seconds += seconds
        self.outcomes[res.outcome] = self.outcomes.get(res.outcome, 0) + 1
        for rec in list(self.analyst.audit_log)[n_audit:]:
            self.completion_tokens += int(rec.get("completion_tokens", 0) or 0)

    def _naive(self, a: Any) -> bool:
        if a.window.count <= 0:
            return bool(a.flagged)
        # the LLM alone decides: a fresh key per window (no cache), tier 0's flag hidden
        b = self.analyst.tier1
        assert b is not None
        facts, red = self.analyst.facts(a, (None, None))
        facts.tier0_flagged, facts.tier0_score, facts.tier0_reasons = False, 0.0, []
        n_audit = len(self.analyst.audit_log)
        t = time.perf_counter()
        v, res, _hit, outcome = self.analyst._ask(b, "tier1", facts, red, f"naive:{id(a)}:{time.time_ns()}")
        self.analysed += 1
        if res is not None:
            self.llm_calls += 1
            self.tokens += res.tokens
            self.cost_usd += res.cost_usd
            self.llm_seconds += time.perf_counter() - t
        for rec in list(self.analyst.audit_log)[n_audit:]:
            self.completion_tokens += int(rec.get("completion_tokens", 0) or 0)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return bool(v and v.get("is_anomaly"))

    def summary(self) -> dict[str, Any]:
        return {
            "windows": self.windows, "analysed": self.analysed, "llm_calls": self.llm_calls,
            "cache_hits": self.cache_hits, "tokens": self.tokens, "cost_usd": round(self.cost_usd, 6),
            "llm_seconds": round(self.llm_seconds, 2),
            "seconds_per_llm_call": round(self.llm_seconds / self.llm_calls, 2) if self.llm_calls else None,
            "outcomes": dict(self.outcomes),
        }


def _naive_windows(path: Path, window_s: float) -> list[list[str]]:
    """The raw lines of every non-empty window (labelled raw log) or session (HDFS block sessions:
    the session's template strings stand in for its lines, which undercounts the naive approach)."""
    if path.is_dir():
        out: list[list[str]] = []
        with open(path / "block_sessions.jsonl") as f:
            for line in f:
                if line.strip():
                    out.append(list(json.loads(line)["templates"]))
        return out
    from receiver.eval.anomaly import parse_labelled_line
    from receiver.logs.windows import NS

    size = int(window_s * NS)
    windows: dict[tuple[str, int], list[str]] = {}
    with open(path, errors="replace") as f:
        for raw in f:
            p = parse_labelled_line(raw)
            if p is None:
                continue
            _lab, service, t_ns, _sev, _body = p
            # the seed approach sends the line as received (minus our label column)
            windows.setdefault((service, t_ns - t_ns % size), []).append(raw.rstrip("\n").split(" ", 1)[-1])
    return list(windows.values())


def naive_tokens(path: Path, window_s: float, analyst: LlmAnalyst,
                 output_tokens_per_call: float) -> dict[str, Any]:
    """Tokens the seed document's approach would spend: for every non-empty window, the prefix
    (system prompt + few-shot) + all its raw lines + the mean output. Counted with the backend's
    tokenizer (one request per window), not guessed."""
    b = analyst.tier1
    assert b is not None
    prefix = b.count_tokens(prefix_text())
    windows = _naive_windows(path, window_s)
    prompt = sum(prefix + b.count_tokens("\n".join(lines)) for lines in windows)
    calls = len(windows)
    total = int(prompt + calls * output_tokens_per_call)
    return {"llm_calls": calls, "prompt_tokens": prompt, "tokens": total}


def run_cascade_eval(data: str | Path, llm: str, window_s: float = 3600.0, naive_f1: bool = False,
                     config: LlmConfig | None = None) -> dict[str, Any]:
    """Tier 0 alone vs the cascade vs naive, on a labelled raw log (e.g. BGL_half1.log)."""
    from receiver.eval.anomaly import evaluate

    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    cfg = LlmConfig.from_flag(llm, config)
    if cfg is None:
        raise ValueError("--llm off: nothing to compare (use eval anomaly without --llm)")
    started = time.perf_counter()
    t0 = evaluate(path, None, window_s=window_s)
    analyst = LlmAnalyst(cfg, FindingsSink(), CollectorRegistry())
    analyst.start()
    try:
        reviewer = CascadeReviewer(analyst)
        casc = evaluate(path, reviewer, window_s=window_s)
        cs = reviewer.summary()
        out_per_call = (reviewer.completion_tokens / reviewer.llm_calls) if reviewer.llm_calls else \
            float(cfg.tier1.max_output_tokens)
        naive = naive_tokens(path, window_s, analyst, out_per_call)
        naive_row: dict[str, Any] = dict(naive, f1=None)
        if naive_f1:
            nrev = CascadeReviewer(analyst, naive=True)
            nres = evaluate(path, nrev, window_s=window_s)
            ns = nrev.summary()
            naive_row.update(f1=nres["f1"], precision=nres["precision"], recall=nres["recall"],
                             measured_llm_calls=ns["llm_calls"], measured_tokens=ns["tokens"],
                             seconds_per_llm_call=ns["seconds_per_llm_call"])
    finally:
        analyst.shutdown()
    saved = 1.0 - cs["tokens"] / naive["tokens"] if naive["tokens"] else 0.0
    return {
        "dataset": str(path), "window_s": window_s, "llm": llm, "model": cfg.tier1.model,
        "tier0": {k: t0[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn", "items")},
        "cascade": {**{k: casc[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn")}, **cs},
        "naive": naive_row,
        "token_reduction_vs_naive": round(saved, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(data: str, as_json: bool, llm: str, window_s: float = 3600.0, naive_f1: bool = False) -> int:
    """CLI entry: prints the comparison table (or JSON). Returns the exit code."""
    try:
        res = run_cascade_eval(data, llm, window_s, naive_f1)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(res))
        return 0
    t0, c, n = res["tier0"], res["cascade"], res["naive"]
    print(f"dataset {res['dataset']}  windows of {res['window_s']:.0f} s  llm {res['llm']} ({res['model']})")
    print(f"{'approach':<12} {'F1':>7} {'P':>7} {'R':>7} {'LLM calls':>10} {'tokens':>10} {'cost USD':>10}")

    def f(x: Any) -> str:
        return "   n/a" if x is None else f"{x:.4f}"

    print(f"{'tier 0':<12} {f(t0['f1']):>7} {f(t0['precision']):>7} {f(t0['recall']):>7} "
          f"{0:>10} {0:>10} {0:>10}")
    print(f"{'cascade':<12} {f(c['f1']):>7} {f(c['precision']):>7} {f(c['recall']):>7} "
          f"{c['llm_calls']:>10} {c['tokens']:>10} {c['cost_usd']:>10.4f}")
    print(f"{'naive':<12} {f(n.get('f1')):>7} {f(n.get('precision')):>7} {f(n.get('recall')):>7} "
          f"{n['llm_calls']:>10} {n['tokens']:>10} {'':>10}")
    print(f"tokens saved vs naive: {100 * res['token_reduction_vs_naive']:.1f}%   "
          f"cache hits {c['cache_hits']}   seconds per LLM call {c['seconds_per_llm_call']}   "
          f"outcomes {c['outcomes']}")
    if n.get("f1") is None:
        print("naive F1 not measured (one LLM call per window; pass --naive-f1)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m receiver.llm.evalmode",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="labelled raw log (e.g. ../shared/datasets/anomaly/"
                    "BGL_half1/BGL_half1.log) or an HDFS block_sessions directory")
    ap.add_argument("--llm", required=True, help="local or an OpenAI-compatible base URL")
    ap.add_argument("--window-s", type=float, default=3600.0)
    ap.add_argument("--naive-f1", action="store_true", help="also run the LLM on every window (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    return run(args.data, args.json, args.llm, args.window_s, args.naive_f1)


if __name__ == "__main__":
    raise SystemExit(main())
