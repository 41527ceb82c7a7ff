"""`llm-log-analyzer eval rca --data DIR [--mode localize|detect] [--cases N] [--json]`: root-cause
accuracy on recorded incidents (the Nezha format: see ../shared/datasets/rca/README.md).

Each case gets a fresh analyzer: the stages the app wires (service graph, span signals, logs stage
with redaction, templates, event-time windows and the tier-0 detector, the RCA stage), fed with OTLP
requests made from the CSV rows (`receiver.eval.rca_data`: the conversion and its limits) at event time,
in steps of `STEP_S` seconds of event time (spans when they end, log lines when written), the fault-free
baseline first:

* TrainTicket cases name a fault-free baseline minute of the same day, often hours earlier: it is
  replayed shifted in time to end one second before the case's first record (the RCA baseline is the
  last `rca.baseline_s` seconds before the window, so the minute must sit there); the records of the
  case files before the injection (the minute files lag) are fault-free too and follow it.
* Online Boutique cases have no baseline minute: their baseline is the records before the injection
  (about 90 s of the fault minute's file).

Modes:
  localize  the investigation (`RcaStage.investigate`) ranks the services for the case window
            [inject, inject + window_s): the benchmark protocol, the fault time is known;
  detect    the automatic path (log anomaly or span-signal shift -> RCA): the first `rca.report` at or
            after the injection is scored; its time after the injection is the time to report.

Scores: AC@k (the true root-cause service among the first k), Avg@5 = mean of AC@1..AC@5, per fault
type and overall, per system. In the same run, on the same cases and the same rows, naive baselines
(each against the rows before the injection, ties scored by their expected value):
  random       a random pick among the services seen: AC@k = k / n;
  error_logs   rise of the rate of ERROR/FATAL log lines per service;
  p90_server   relative rise of the p90 of a service's SERVER span durations;
  p90_self     relative rise of the p90 of the exclusive time of a service's spans (duration minus
               the union of its children);
  p90_gap      relative rise of the p90 client-minus-server gap of the calls into a service.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from receiver.eval.rca import Pipeline
from receiver.eval.rca_data import (
    K_CLIENT,
    K_SERVER,
    Case,
    ConversionStats,
    LogRow,
    SpanRow,
    assign_kinds,
    load_cases,
    logs_request,
    read_logs,
    read_spans,
    trace_request,
)
from receiver.model import EVENT_RCA, R_CANDIDATES

STEP_S = 5.0
NS = 10**9
BASELINES = ("random", "error_logs", "p90_server", "p90_self", "p90_gap")
KS = (1, 2, 3, 4, 5)


@dataclass
class CaseRun:
    case: Case
    services: list[str]
    ranked: list[str]  # the product's order (best first)
    decided_by: str = ""
    confidence: float | None = None
    report_s: float | None = None  # detect: report event time - injection
    seconds: float = 0.0
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> service -> score
    stats: ConversionStats = field(default_factory=ConversionStats)

    def product_hits(self) -> dict[int, float]:
        truth = self.case.root_cause
        pos = self.ranked.index(truth) + 1 if truth in self.ranked else None
        return {k: 1.0 if pos is not None and pos <= k else 0.0 for k in KS}

    def baseline_hits(self, name: str) -> dict[int, float]:
        if name == "random":
            n = max(1, len(self.services))
            return {k: min(k, n) / n if self.case.root_cause in self.services else 0.0 for k in KS}
        return expected_hits(self.baselines.get(name, {}), self.services, self.case.root_cause)


def expected_hits(scores: dict[str, float], services: Sequence[str], truth: str) -> dict[int, float]:
    """P(truth among the first k) when services are ordered by score and ties are broken at random."""
    if truth not in services:
        return {k: 0.0 for k in KS}
    s = scores.get(truth, 0.0)
    better = sum(1 for x in services if scores.get(x, 0.0) > s)
    tied = sum(1 for x in services if scores.get(x, 0.0) == s)
    return {k: min(1.0, max(0.0, (k - better) / tied)) for k in KS}


# --- naive baselines on the rows ---------------------------------------------------------------
def _p90(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(0.9 * len(xs))) - 1)]


def _rel_shift(base: dict[str, list[float]], cur: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for svc, xs in cur.items():
        b = _p90(base.get(svc, []))
        if b > 0 and xs:
            out[svc] = (_p90(xs) - b) / b
    return out


def _self_times(spans: list[SpanRow]) -> list[tuple[SpanRow, int]]:
    kids: dict[tuple[bytes, bytes], list[SpanRow]] = defaultdict(list)
    for s in spans:
        if s.parent_id:
            kids[(s.trace_id, s.parent_id)].append(s)
    out = []
    for s in spans:
        ivs = sorted((max(c.start, s.start), min(c.end, s.end))
                     for c in kids.get((s.trace_id, s.span_id), ()))
        covered, cur_s, cur_e = 0, None, None
        for a, b in ivs:
            if b <= a:
                continue
            if cur_e is None or a > cur_e:
                if cur_e is not None:
                    covered += cur_e - cur_s  # type: ignore[operator]
                cur_s, cur_e = a, b
            else:
                cur_e = max(cur_e, b)
        if cur_e is not None:
            covered += cur_e - cur_s  # type: ignore[operator]
        out.append((s, max(0, s.end - s.start - covered)))
    return out


def naive_baselines(spans: list[SpanRow], logs: list[LogRow], start_ns: int, end_ns: int
                    ) -> dict[str, dict[str, float]]:
    """Each naive signal per service: the window [start, end) against everything before `start`."""
    in_base: Callable[[int], bool] = lambda t: t < start_ns  # noqa: E731
    in_cur: Callable[[int], bool] = lambda t: start_ns <= t < end_ns  # noqa: E731
    base_t = [s.start for s in spans if in_base(s.start)] + [r.time_ns for r in logs if in_base(r.time_ns)]
    base_s = max(1.0, (start_ns - min(base_t)) / NS) if base_t else 1.0
    cur_s = (end_ns - start_ns) / NS
    err_b: dict[str, float] = defaultdict(float)
    err_c: dict[str, float] = defaultdict(float)
    for r in logs:
        if r.severity_number >= 17:
            if in_base(r.time_ns):
                err_b[r.service] += 1
            elif in_cur(r.time_ns):
                err_c[r.service] += 1
    error_logs = {svc: err_c[svc] / cur_s - err_b.get(svc, 0.0) / base_s for svc in err_c}
    dur_b: dict[str, list[float]] = defaultdict(list)
    dur_c: dict[str, list[float]] = defaultdict(list)
    self_b: dict[str, list[float]] = defaultdict(list)
    self_c: dict[str, list[float]] = defaultdict(list)
    gap_b: dict[str, list[float]] = defaultdict(list)
    gap_c: dict[str, list[float]] = defaultdict(list)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for s, self_ns in _self_times(spans):
        b, c = in_base(s.start), in_cur(s.start)
        if not (b or c):
            continue
        (self_b if b else self_c)[s.service].append(self_ns)
        if s.kind == K_SERVER:
            (dur_b if b else dur_c)[s.service].append(s.end - s.start)
            p = by_id.get((s.trace_id, s.parent_id))
            if p is not None and p.kind == K_CLIENT and p.service != s.service:
                (gap_b if b else gap_c)[s.service].append(max(0, (p.end - p.start) - (s.end - s.start)))
    return {"error_logs": error_logs, "p90_server": _rel_shift(dur_b, dur_c),
            "p90_self": _rel_shift(self_b, self_c), "p90_gap": _rel_shift(gap_b, gap_c)}


# --- one case ----------------------------------------------------------------------------------
def _shift(spans: list[SpanRow], logs: list[LogRow], offset: int) -> None:
    for s in spans:
        s.start += offset
        s.end += offset
    for r in logs:
        r.time_ns += offset


def load_case(case: Case, stats: ConversionStats) -> tuple[list[SpanRow], list[LogRow]]:
    """The case's rows with the baseline minute shifted before them; spans with their kinds."""
    spans, logs = read_spans(case.trace_files), read_logs(case.log_files)
    b_spans, b_logs = read_spans(case.baseline_trace_files), read_logs(case.baseline_log_files)
    if b_spans or b_logs:
        first = min([s.start for s in spans] + [r.time_ns for r in logs])
        last = max([s.end for s in b_spans] + [r.time_ns for r in b_logs])
        _shift(b_spans, b_logs, first - NS - last)
        stats.notes.append(f"baseline minute shifted by {(first - NS - last) / NS:+.0f} s")
    all_spans = assign_kinds(b_spans + spans, stats)
    all_logs = b_logs + logs
    stats.logs += len(all_logs)
    stats.logs_without_level += sum(1 for r in all_logs if not r.severity_number)
    return all_spans, all_logs


def replay(pipe: Pipeline, spans: list[SpanRow], logs: list[LogRow], until_ns: int | None = None) -> None:
    """Send the rows at event time: per STEP_S of event time, the spans that ended and the lines
    written in it, as one trace and one logs request; the RCA stage checks after each."""
    if not spans and not logs:
        return
    step = int(STEP_S * NS)
    spans = sorted(spans, key=lambda s: s.end)
    logs = sorted(logs, key=lambda r: r.time_ns)
    t = min([s.end for s in spans[:1]] + [r.time_ns for r in logs[:1]]) // step * step
    last = max(([spans[-1].end] if spans else []) + ([logs[-1].time_ns] if logs else []))
    if until_ns is not None:
        last = min(last, until_ns)
    i = j = 0
    while t <= last:
        t += step
        i2, j2 = i, j
        while i2 < len(spans) and spans[i2].end < t:
            i2 += 1
        while j2 < len(logs) and logs[j2].time_ns < t:
            j2 += 1
        pipe.consume(trace_request(spans[i:i2]), logs_request(logs[j:j2]))
        i, j = i2, j2


def run_case(case: Case, mode: str, window_s: float) -> CaseRun:
    t0 = time.monotonic()
    stats = ConversionStats()
    spans, logs = load_case(case, stats)
    services = sorted({s.service for s in spans} | {r.service for r in logs})
    start, end = case.inject_ns, case.inject_ns + int(window_s * NS)
    pipe = Pipeline(use_logs=True)
    run = CaseRun(case, services, [], stats=stats)
    replay(pipe, spans, logs)
    pipe.flush()
    if mode == "localize":
        result = pipe.rca.investigate(start, end)
        run.ranked = [n for n, _ in result.ranked]
        run.confidence = result.confidence
        if result.ranked:
            parts = result.features[result.root].parts
            run.decided_by = max((k for k in parts if k not in ("explain", "pagerank")),
                                 key=lambda k: parts[k], default="")
    else:
        for f in pipe.sink.findings:
            if f.event_name == EVENT_RCA and f.time_ns >= start:
                cands = f.attributes.get(R_CANDIDATES)
                run.ranked = list(cands) if isinstance(cands, list) else []
                run.report_s = (f.time_ns - start) / NS
                conf = f.attributes.get("rca.confidence")
                run.confidence = float(conf) if isinstance(conf, (int, float)) else None
                run.decided_by = str(f.attributes.get("rca.fault_kind", ""))
                break
    run.baselines = naive_baselines(spans, logs, start, end)
    run.seconds = time.monotonic() - t0
    return run


# --- tables --------------------------------------------------------------------------------------
def _mean(rows: list[dict[int, float]]) -> dict[str, float]:
    n = max(1, len(rows))
    ac = {k: sum(r[k] for r in rows) / n for k in KS}
    return {"ac1": round(ac[1], 3), "ac3": round(ac[3], 3), "ac5": round(ac[5], 3),
            "avg5": round(sum(ac.values()) / len(KS), 3), "n": len(rows)}


def summarise(runs: list[CaseRun]) -> dict:
    out: dict = {}
    for system in sorted({r.case.system for r in runs}):
        rs = [r for r in runs if r.case.system == system]
        kinds = sorted({r.case.fault_type for r in rs})
        groups = {ft: [r for r in rs if r.case.fault_type == ft] for ft in kinds}
        groups["overall"] = rs
        table: dict = {}
        for g, members in groups.items():
            table[g] = {"product": _mean([r.product_hits() for r in members])}
            for b in BASELINES:
                table[g][b] = _mean([r.baseline_hits(b) for r in members])
        out[system] = table
    return out


def _print(runs: list[CaseRun], summary: dict, mode: str, window_s: float) -> None:
    print(f"{'case':<19} {'system':<22} {'fault':<15} {'root cause':<30} {'rank':>4} {'secs':>5}  "
          f"{'report_s':>8}  top-3 (decided by)")
    for r in runs:
        pos = r.ranked.index(r.case.root_cause) + 1 if r.case.root_cause in r.ranked else "-"
        rep = f"{r.report_s:.0f}" if r.report_s is not None else "-"
        print(f"{r.case.case_id:<19} {r.case.system[:22]:<22} {r.case.fault_type:<15} "
              f"{r.case.root_cause:<30} {pos:>4} {r.seconds:>5.1f}  {rep:>8}  "
              f"{', '.join(r.ranked[:3])} ({r.decided_by})")
    print()
    for system, table in summary.items():
        print(f"{system}  mode={mode} window={window_s:.0f}s  (AC@1 / AC@3 / AC@5 / Avg@5, n cases)")
        print(f"  {'fault type':<15} {'n':>3}  " + "  ".join(f"{m:<23}" for m in ("product", *BASELINES)))
        for g, row in table.items():
            cells = "  ".join(f"{row[m]['ac1']:.2f} {row[m]['ac3']:.2f} {row[m]['ac5']:.2f} "
                              f"{row[m]['avg5']:.2f}   " for m in ("product", *BASELINES))
            print(f"  {g:<15} {row['product']['n']:>3}  {cells}")
        print()
    if mode == "detect":
        got = [r.report_s for r in runs if r.report_s is not None]
        within = sum(1 for s in got if s <= 120)
        print(f"reports: {len(got)}/{len(runs)} cases, {within} within 120 s of the injection; "
              f"mean time to report {sum(got) / len(got):.0f} s" if got else "reports: none")
    secs = [r.seconds for r in runs]
    st = [r.stats for r in runs]
    print(f"time per case: max {max(secs):.1f} s, mean {sum(secs) / len(secs):.1f} s; "
          f"spans {sum(s.spans for s in st)} (client kind on the caller's call span "
          f"{sum(s.client_marked for s in st)}, synthesized "
          f"{sum(s.client_synthesized for s in st)}, unreadable {sum(s.bad for s in st)}), log lines "
          f"{sum(s.logs for s in st)} ({sum(s.logs_without_level for s in st)} without a level); "
          "metric rows not replayed (OTLP metrics are not accepted yet)")


def run(data: str, mode: str = "localize", cases: int | None = None, as_json: bool = False,
        window_s: float = 120.0) -> int:
    path = Path(data)
    if not path.exists():
        print(f"eval rca: --data {data}: no such directory", file=sys.stderr)
        return 2
    all_cases = load_cases(path)
    if cases is not None:
        if cases <= 0:
            print("cases: must be > 0", file=sys.stderr)
            return 2
        if cases < len(all_cases):
            print(f"eval rca: --cases {cases}: the first {cases} of {len(all_cases)} cases", file=sys.stderr)
        all_cases = all_cases[:cases]
    runs: list[CaseRun] = []
    for i, c in enumerate(all_cases):
        r = run_case(c, mode, window_s)
        runs.append(r)
        if not as_json:
            print(f"  case {i + 1}/{len(all_cases)} {c.case_id} {r.seconds:.1f}s", file=sys.stderr)
    summary = summarise(runs)
    if as_json:
        print(json.dumps({"mode": mode, "window_s": window_s, "systems": summary, "cases": [
            {"case_id": r.case.case_id, "system": r.case.system, "fault_type": r.case.fault_type,
             "root_cause": r.case.root_cause, "ranked": r.ranked[:10], "decided_by": r.decided_by,
             "confidence": r.confidence, "report_s": r.report_s, "seconds": round(r.seconds, 2)}
            for r in runs]}))
        return 0
    _print(runs, summary, mode, window_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval rca --data", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", choices=("localize", "detect"), default="localize")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--window-s", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    return run(a.data, a.mode, a.cases, a.json, a.window_s)


if __name__ == "__main__":
    raise SystemExit(main())
