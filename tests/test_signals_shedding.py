"""Load shedding of the RCA span signals: while the pipeline says analysis is behind, traces without a
failing span are sampled (1 in `shed_keep_one_in`, by trace id) and counted that many times; every
trace with a failure is analysed. Checked on simulator traffic with faults, against the same traffic
analysed in full, and end to end through the span child process under a real backlog."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.graph import GraphConfig
from receiver.otlp.spanwire import SignalRow, signal_rows
from receiver.pipeline.spanproc import SpanProcess, SpanProcessConfig
from receiver.rca.signals import N_CALLS, N_DEEP, N_ERRORS, N_LAT, SignalsConfig, SpanSignals
from receiver.sim.faults import Fault
from receiver.sim.simulator import Simulator


def _sim(seconds: float = 240.0) -> list[ExportTraceServiceRequest]:
    sim = Simulator(seed=3, faults=[Fault("db_down", "postgres", start_s=120.0)], rate_per_s=20.0)
    return [tr for _, tr, _ in sim.run_virtual(seconds, 5.0)]


def _analysed(reqs: list[ExportTraceServiceRequest], shedding: bool, keep: int = 4) -> SpanSignals:
    sig = SpanSignals(SignalsConfig(shed_keep_one_in=keep))
    sig.set_shedding(shedding)
    for r in reqs:
        sig.consume_traces(r)
    sig.flush()
    return sig


def _totals(sig: SpanSignals, node: str) -> list[float]:
    rows = sig.node_buckets(node).values()
    return [sum(r[i] for r in rows) for i in range(len(next(iter(rows))))]


def test_shedding_keeps_failures_exact_and_counts_unbiased() -> None:
    reqs = _sim()
    full, shed = _analysed(reqs, False), _analysed(reqs, True)
    assert full.m_shed._value.get() == 0
    # the traces without a failing span, by the signals' own failure rule, and which of them a 1-in-4
    # sample by trace id leaves out
    failed: dict[bytes, bool] = {}
    for r in reqs:
        for _svc, _ver, rows in signal_rows(r.SerializeToString(), SignalsConfig().peer_attributes)[0]:
            for row in map(SignalRow._make, rows):
                bad = row.status_code == 2 or (row.status_code == 0 and row.attr_error)
                failed[row.trace_id] = failed.get(row.trace_id, False) or bad
    ok = [t for t, f in failed.items() if not f]
    assert 0.2 * len(failed) < len(ok) < 0.95 * len(failed)  # both kinds are there
    left_out = sum(1 for t in ok if int.from_bytes(t[-4:], "big") % 4)
    assert shed.m_shed._value.get() == left_out
    assert set(shed.nodes()) == set(full.nodes()) and set(shed.edges()) == set(full.edges())
    busy = [n for n in full.nodes() if _totals(full, n)[N_CALLS] >= 1000]
    assert len(busy) >= 4
    for n in full.nodes():
        a, b = _totals(full, n), _totals(shed, n)
        assert b[N_ERRORS] == a[N_ERRORS] and b[N_DEEP] == a[N_DEEP], n  # failures: all analysed
        if n in busy:
            assert abs(b[N_CALLS] / a[N_CALLS] - 1) < 0.1, (n, a[N_CALLS], b[N_CALLS])
            mean_a, mean_b = a[N_LAT] / a[N_CALLS], b[N_LAT] / b[N_CALLS]
            assert abs(mean_b / mean_a - 1) < 0.15, (n, mean_a, mean_b)
        assert [s.text for s in shed.samples(n)] == [s.text for s in full.samples(n)]


def test_keep_one_in_one_never_sheds_and_bad_values_are_refused() -> None:
    reqs = _sim(60.0)
    one = _analysed(reqs, True, keep=1)
    full = _analysed(reqs, False)
    assert one.m_shed._value.get() == 0
    for n in full.nodes():
        assert _totals(one, n) == _totals(full, n)
    with pytest.raises(ConfigError, match="signals.shed_keep_one_in"):
        SignalsConfig(shed_keep_one_in=0).validate()


def test_the_span_child_sheds_only_while_behind() -> None:
    """Requests sent while half the capacity is in flight (a slow child) are analysed with shedding
    on; the same requests sent one at a time are not."""
    reqs = _sim(150.0)[:30]
    biggest = max(r.ByteSize() for r in reqs)
    for backlog in (False, True):
        reg = CollectorRegistry()
        sp = SpanProcess(GraphConfig(), SignalsConfig(trace_idle_s=0.0, trace_wall_idle_s=0.0,
                                                      shed_keep_one_in=2),
                         registry=reg, config=SpanProcessConfig(capacity_bytes=8 * biggest))
        sp.start()
        try:
            if backlog:
                sp.call("_ctl", "set_delay", 0.05)  # the child now takes 50 ms per data message
            for r in reqs:
                sp.consume_traces(r)
                if not backlog:
                    assert sp.drain(30)
            sp.call("_ctl", "set_delay", 0.0, _ordered=False)
            assert sp.drain(60)
            shed = reg.get_sample_value("rca_signals_shed_traces_total")
            assert (shed > 0) if backlog else (shed == 0), (backlog, shed)
            assert sp.stats()["spans"] == sum(
                len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)
        finally:
            sp.shutdown()
