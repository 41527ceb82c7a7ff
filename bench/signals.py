"""SpanSignals.consume_traces throughput (`python -m bench signals`).

Two workloads, given to `consume_wire` as wire bytes (the span child's path; a module from
BENCH_SIGNALS_FILE without `consume_wire` gets them decoded before timing):
  sim:   the simulator's SDK-encoded OTLP requests (5 s steps, a cpu fault half way);
  synth: bench/ingest.py's pre-built 512-span requests (10 services, 8-9 span traces), the pool of
         100 sent 3 times like the ingest client does: timestamps and trace ids are reused, so event
         time never advances and the buffered traces only grow (no trace is complete before flush).
Rows per workload: ServiceGraph.consume_wire + flush (the baseline, same input, same run),
SpanSignals.consume_wire + flush, and the same while shedding load (as the span child runs it while
behind: 1 in 8 traces without failures analysed), default configs. CPU seconds (process time), best of
BENCH_SIGNALS_REPEATS (default 3) runs on fresh instances.

BENCH_SIGNALS_FILE=/path/to/signals.py times another version of the module instead (e.g. an older
copy, to compare before/after in one command).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver.graph import GraphConfig, ServiceGraph
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator


def _signals_module() -> ModuleType:
    path = os.environ.get("BENCH_SIGNALS_FILE")
    if not path:
        import receiver.rca.signals as mod

        return mod
    spec = importlib.util.spec_from_file_location("bench_signals_alt", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"BENCH_SIGNALS_FILE: cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_signals_alt"] = mod
    spec.loader.exec_module(mod)
    return mod


def _sim_requests() -> list[bytes]:
    sim = Simulator(seed=1, faults=[Fault("cpu", "payment", start_s=120.0)], rate_per_s=20.0)
    return [tr.SerializeToString() for _, tr, _ in sim.run_virtual(240.0, 5.0)]


def _synth_requests() -> list[bytes]:
    from bench.ingest import build_trace_requests

    return build_trace_requests() * 3  # as the ingest client sends them: the pool over and over


def _spans(reqs: list[bytes]) -> int:
    return sum(len(ss.spans) for b in reqs for rs in ExportTraceServiceRequest.FromString(b).resource_spans
               for ss in rs.scope_spans)


def _best(make: Callable[[], Any], reqs: list[bytes], repeats: int) -> float:
    best = float("inf")
    decoded = [ExportTraceServiceRequest.FromString(b) for b in reqs]
    for _ in range(repeats):
        consumer = make()
        wire = getattr(consumer, "consume_wire", None)
        t = time.process_time()
        if wire is not None:
            for b in reqs:
                wire(b)
        else:
            for r in decoded:
                consumer.consume_traces(r)
        consumer.flush()
        best = min(best, time.process_time() - t)
    return best


def _shedding(mod: ModuleType) -> Any:
    """SpanSignals as the span child runs them while behind (an older module without shedding: as is)."""
    sig = mod.SpanSignals(mod.SignalsConfig())
    if hasattr(sig, "set_shedding"):
        sig.set_shedding(True)
    return sig


def main() -> None:
    repeats = int(os.environ.get("BENCH_SIGNALS_REPEATS", "3"))
    mod = _signals_module()
    which = os.environ.get("BENCH_SIGNALS_FILE") or "receiver/rca/signals.py"
    print(f"SpanSignals from {which}; CPU seconds, best of {repeats}")
    print(f"{'workload':<8} {'consumer':<40} {'spans':>8} {'cpu s':>8} {'spans/s':>11} {'us/span':>8}")
    for name, build in (("sim", _sim_requests), ("synth", _synth_requests)):
        reqs = build()
        n = _spans(reqs)
        rows = (
            ("ServiceGraph consume_wire+flush (base)", lambda: ServiceGraph(GraphConfig())),
            ("SpanSignals consume_wire+flush", lambda: mod.SpanSignals(mod.SignalsConfig())),
            ("SpanSignals ... while shedding load", lambda: _shedding(mod)),
        )
        for label, make in rows:
            s = _best(make, reqs, repeats)
            print(f"{name:<8} {label:<40} {n:>8} {s:>8.3f} {n / s:>11,.0f} {s / n * 1e6:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
