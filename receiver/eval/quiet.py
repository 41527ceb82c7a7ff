"""`llm-log-analyzer eval quiet [--hours H] [--seed S] [--json]`: false alarms on healthy traffic.

The simulator runs for `hours` simulated hours with its noise on (traffic swings and bursts, steady
business errors such as declined cards and a feature-store fallback logged at ERROR, slow GC) and no
fault, through the same stages `eval rca --sim` wires (service graph, span signals, logs stage with
the tier-0 detector, RCA). Every anomaly finding and every RCA report is a false alarm; they are
counted per hour and listed with their service and type.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from receiver.eval.rca import STEP_S, Pipeline
from receiver.model import A_SERVICE, A_TYPE, EVENT_ANOMALY, EVENT_RCA
from receiver.sim.simulator import Simulator


def evaluate(hours: float = 2.0, seed: int = 1, rate_per_s: float = 5.0) -> dict[str, Any]:
    started = time.perf_counter()
    sim = Simulator(seed=seed, rate_per_s=rate_per_s, noise=True)
    pipe = Pipeline(use_logs=True)
    for _, traces, logs in sim.run_virtual(hours * 3600.0, STEP_S):
        pipe.consume(traces, logs)
    pipe.flush()
    sim.shutdown()
    anomalies = [f for f in pipe.sink.findings if f.event_name == EVENT_ANOMALY]
    reports = [f for f in pipe.sink.findings if f.event_name == EVENT_RCA]
    per_hour = Counter(int((f.time_ns - sim.start_ns) // (3600 * 10**9)) for f in anomalies + reports)
    kinds = Counter(f"{f.attributes.get(A_SERVICE, '')}/{f.attributes.get(A_TYPE, '')}" for f in anomalies)
    return {"hours": hours, "seed": seed, "findings": len(anomalies) + len(reports),
            "anomalies": len(anomalies), "rca_reports": len(reports),
            "per_hour": {str(k): v for k, v in sorted(per_hour.items())},
            "by_service_type": dict(kinds.most_common()),
            "examples": [f.body[:200] for f in anomalies[:5]],
            "seconds": round(time.perf_counter() - started, 1)}


def run(hours: float, seed: int, as_json: bool) -> int:
    res = evaluate(hours, seed)
    if as_json:
        print(json.dumps(res))
        return 0
    print(f"simulated {res['hours']:g} h of healthy traffic (seed {res['seed']}, noise on, no fault)")
    print(f"false alarms: {res['findings']} ({res['anomalies']} anomaly findings, "
          f"{res['rca_reports']} RCA reports); per hour {res['per_hour']}")
    for k, v in res["by_service_type"].items():
        print(f"  {v:4d}  {k}")
    for e in res["examples"]:
        print(f"  e.g. {e}")
    print(f"time {res['seconds']} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval quiet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours of healthy traffic (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.hours <= 0:
        print("error: --hours must be > 0", file=sys.stderr)
        return 2
    return run(args.hours, args.seed, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
