"""RCA signals throughput and ranking latency (`python -m bench rca`).

Rows:
  baseline: decode-walk -- iterate every span of the same OTLP requests and read the fields the
            signals read (the floor any TracesConsumer pays);
  SpanSignals.consume_traces + flush -- buffering, trace assembly, exclusive time, edges, attribution;
  rank (one incident) -- candidates, features, PageRank, path on the same data.
"""

from __future__ import annotations

import time

from receiver.rca.rank import rank
from receiver.rca.signals import SignalsConfig, SpanSignals
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator


def _walk(reqs) -> int:  # noqa: ANN001 - OTLP requests
    n = 0
    for r in reqs:
        for rs in r.resource_spans:
            for a in rs.resource.attributes:
                _ = a.key
            for ss in rs.scope_spans:
                for s in ss.spans:
                    _ = (s.trace_id, s.span_id, s.parent_span_id, s.kind, s.start_time_unix_nano,
                         s.end_time_unix_nano, s.status.code)
                    for a in s.attributes:
                        _ = a.key
                    n += 1
    return n


def main() -> None:
    warm, fault = 240.0, 60.0
    sim = Simulator(seed=1, faults=[Fault("cpu", "payment", start_s=warm)], rate_per_s=8.0)
    reqs = [tr for _, tr, _ in sim.run_virtual(warm + fault, 5.0)]
    spans = sum(len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)

    t = time.perf_counter()
    _walk(reqs)
    base_s = time.perf_counter() - t

    sig = SpanSignals(SignalsConfig(trace_wall_idle_s=0.0))
    t = time.perf_counter()
    for r in reqs:
        sig.consume_traces(r)
    sig.flush()
    sig_s = time.perf_counter() - t

    onset = sim.start_ns + int(warm * 1e9)
    g = sig.digraph()
    t = time.perf_counter()
    runs = 20
    for _ in range(runs):
        res = rank(sig, g, ["frontend"], onset, onset + 20 * 10**9)
    rank_s = (time.perf_counter() - t) / runs

    print(f"{spans} spans ({len(reqs)} requests), {len(g)} nodes; root found: {res.root}")
    print(f"{'case':<42} {'seconds':>9} {'spans/s':>12}")
    print(f"{'baseline: walk the decoded spans':<42} {base_s:>9.3f} {spans / base_s:>12,.0f}")
    print(f"{'SpanSignals consume_traces + flush':<42} {sig_s:>9.3f} {spans / sig_s:>12,.0f}")
    print(f"{'rank one incident (all candidates)':<42} {rank_s:>9.4f} {'-':>12}")


if __name__ == "__main__":
    main()
