"""`llm-log-analyzer eval rca --cases N --seed S [--json]`: root-cause accuracy on simulated faults.

Each case simulates the shop (receiver.sim) at event time with historical timestamps: a fault-free
warm-up, then one fault (kind and root-cause service cycling over `DEFAULT_TARGETS`; intensity,
onset within a 10 s bucket and traffic rate drawn from the case seed). The OTLP
requests go through the real stages -- service graph, span signals, logs stage (redaction, template
mining, event-time windows) with the tier-0 detector, and the RCA stage -- and at the end everything
is flushed. The first `rca.report` emitted at or after the fault onset is scored:

  AC@k  = share of cases whose true root cause is among the report's first k candidates,
  Avg@5 = mean of AC@1..AC@5,
  MTTD  = mean (report event time - fault onset) in seconds over the cases with a report.
Reports before the onset are false alarms (counted, printed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from receiver.model import EVENT_ANOMALY, EVENT_RCA, R_CANDIDATES, Finding, FindingsSink
from receiver.rca.signals import SignalsConfig, SpanSignals
from receiver.rca.stage import RcaConfig, RcaStage
from receiver.sim.faults import DEFAULT_TARGETS, Fault
from receiver.sim.simulator import Simulator

WARMUP_S = 240.0
FAULT_S = 90.0
STEP_S = 5.0


def all_targets() -> list[tuple[str, str, str]]:
    """(kind, caller, service) for every default fault target."""
    out: list[tuple[str, str, str]] = []
    for kind, targets in DEFAULT_TARGETS.items():
        for t in targets:
            if isinstance(t, tuple):
                out.append((kind, t[0], t[1]))
            else:
                out.append((kind, "", t))
    return out


@dataclass
class CaseResult:
    kind: str
    service: str
    caller: str
    seed: int
    ranked: list[str] = field(default_factory=list)
    ttd_s: float | None = None
    false_alarms: int = 0
    anomalies: int = 0
    reports: int = 0
    report: Finding | None = None  # the scored report

    def rank_of_truth(self) -> int | None:
        return self.ranked.index(self.service) + 1 if self.service in self.ranked else None


class Pipeline:
    """The real stages wired as the app wires them, without the network."""

    def __init__(self, use_logs: bool = True, rca_config: RcaConfig | None = None) -> None:
        from receiver.graph.config import GraphConfig
        from receiver.graph.graph import ServiceGraph

        self.sink = FindingsSink()
        cfg = rca_config or RcaConfig(check_interval_s=0)
        self.graph = ServiceGraph(GraphConfig())
        self.signals = SpanSignals(SignalsConfig(trace_wall_idle_s=0.0))
        self.rca = RcaStage(cfg, self.graph, self.signals, self.sink)
        self.logs = None
        if use_logs:
            from receiver.detect.tier0 import DetectConfig, Tier0Detector, Tier0Only
            from receiver.logs.stage import LogsConfig, LogsStage
            from receiver.logs.windows import WindowsConfig

            self.detector = Tier0Detector(DetectConfig(), Tier0Only(self.rca))
            self.logs = LogsStage(LogsConfig(windows=WindowsConfig(tumbling_s=30.0)), self.detector)

    def consume(self, traces, logs) -> None:  # noqa: ANN001 - OTLP requests
        raw = traces.SerializeToString()  # both read the wire bytes: serialize once
        self.graph.consume_wire(raw)
        self.signals.consume_wire(raw)
        self.signals.consume_logs(logs)
        if self.logs is not None:
            self.logs.consume_logs(logs)
        self.rca.check()

    def flush(self) -> None:
        self.graph.flush()
        if self.logs is not None:
            self.logs.flush()
        self.rca.flush()


def run_case(kind: str, service: str, caller: str, seed: int, *, use_logs: bool = True,
             warmup_s: float = WARMUP_S, fault_s: float = FAULT_S, vary: bool = False) -> CaseResult:
    """One case. `vary`: draw the fault intensity (0.5-1.2), an onset not aligned to the buckets and
    the traffic rate (3-7 requests/s) from the seed, as the evaluation does."""
    intensity, rate, onset = 1.0, 5.0, warmup_s
    if vary:
        r = random.Random(seed * 1_000_003 + 7)
        intensity, rate, onset = r.uniform(0.5, 1.2), r.uniform(3.0, 7.0), warmup_s + r.uniform(0.0, 10.0)
    fault = Fault(kind, service, caller=caller, start_s=onset, intensity=intensity)
    sim = Simulator(seed=seed, faults=[fault], rate_per_s=rate)
    pipe = Pipeline(use_logs=use_logs)
    for _, traces, logs in sim.run_virtual(onset + fault_s, STEP_S):
        pipe.consume(traces, logs)
    pipe.flush()
    sim.shutdown()
    onset_ns = sim.start_ns + int(onset * 1e9)
    res = CaseResult(kind, service, caller, seed)
    reports: list[Finding] = [f for f in pipe.sink.findings if f.event_name == EVENT_RCA]
    res.anomalies = sum(1 for f in pipe.sink.findings if f.event_name == EVENT_ANOMALY)
    res.reports = len(reports)
    for rep in reports:
        if rep.time_ns < onset_ns:
            res.false_alarms += 1
            continue
        cands = rep.attributes.get(R_CANDIDATES)
        res.ranked = list(cands) if isinstance(cands, list) else []
        res.ttd_s = (rep.time_ns - onset_ns) / 1e9
        res.report = rep
        break
    return res


def evaluate(cases: int, seed: int, use_logs: bool = True, progress: bool = False) -> dict:
    targets = all_targets()
    results: list[CaseResult] = []
    for i in range(cases):
        kind, caller, service = targets[i % len(targets)]
        r = run_case(kind, service, caller, seed + i, use_logs=use_logs, vary=True)
        results.append(r)
        if progress:
            print(f"  case {i + 1}/{cases}: {kind:<20} {service:<15} rank={r.rank_of_truth()} "
                  f"ttd={r.ttd_s} top3={r.ranked[:3]}", file=sys.stderr)
    n = max(1, len(results))
    ac = {k: sum(1 for r in results if (r.rank_of_truth() or 99) <= k) / n for k in range(1, 6)}
    ttds = [r.ttd_s for r in results if r.ttd_s is not None]
    return {
        "ac1": round(ac[1], 4),
        "ac3": round(ac[3], 4),
        "avg5": round(sum(ac.values()) / 5, 4),
        "cases": len(results),
        "mttd_s": round(sum(ttds) / len(ttds), 2) if ttds else None,
        "detected": len(ttds),
        "false_alarms": sum(r.false_alarms for r in results),
        "per_case": [
            {"kind": r.kind, "service": r.service, "caller": r.caller, "seed": r.seed,
             "rank": r.rank_of_truth(), "ttd_s": r.ttd_s, "top3": r.ranked[:3]} for r in results
        ],
    }


def run(cases: int = 29, seed: int = 1, as_json: bool = False, use_logs: bool = True) -> int:
    if cases <= 0:
        print("cases: must be > 0", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    res = evaluate(cases, seed, use_logs=use_logs, progress=not as_json)
    if as_json:
        print(json.dumps({k: res[k] for k in ("ac1", "ac3", "avg5", "cases", "mttd_s")}))
        return 0
    print(f"{'kind':<20} {'root cause':<15} {'rank':>4} {'ttd_s':>6}  top-3")
    for c in res["per_case"]:
        ttd = f"{c['ttd_s']:.0f}" if c["ttd_s"] is not None else "-"
        print(f"{c['kind']:<20} {c['service']:<15} {c['rank'] or '-':>4} {ttd:>6}  {', '.join(c['top3'])}")
    print()
    print(f"cases={res['cases']} AC@1={res['ac1']:.3f} AC@3={res['ac3']:.3f} Avg@5={res['avg5']:.3f} "
          f"MTTD={res['mttd_s']}s detected={res['detected']}/{res['cases']} "
          f"false_alarms={res['false_alarms']} ({time.monotonic() - t0:.0f}s, "
          f"logs stage {'on' if use_logs else 'off'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval rca", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=29)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-logs", action="store_true", help="drive RCA from the span signals only")
    a = ap.parse_args(argv)
    return run(a.cases, a.seed, a.json, use_logs=not a.no_logs)


if __name__ == "__main__":
    raise SystemExit(main())
