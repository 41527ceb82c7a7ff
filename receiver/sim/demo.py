"""`llm-log-analyzer demo [--fault KIND] [--service NAME]`: the whole loop in one command.

Starts the analyzer (`receiver.app.build_app`) on loopback ports with embedded defaults (no network,
`--llm off` unless asked), runs the simulated shop sending real OTLP over gRPC through the
OpenTelemetry SDK exporters, shows the warm-up progress, injects the fault, and prints the anomalies
and the RCA report as they arrive, with the time to detect. Simulated time runs `speed` times faster
than the wall clock; timestamps stay in the past so event-time windows behave as with live traffic.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from receiver.model import (
    A_CONFIDENCE,
    A_SERVICE,
    A_TYPE,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_EVIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
)
from receiver.sim.faults import FAULT_KINDS, Fault, default_fault
from receiver.sim.simulator import Simulator


@dataclass
class DemoResult:
    fault: Fault
    anomalies: list[Finding] = field(default_factory=list)
    reports: list[Finding] = field(default_factory=list)
    ttd_event_s: float | None = None  # first report's event time - fault onset
    ttd_wall_s: float | None = None  # wall seconds from injection to the first report
    spans_sent: int = 0
    logs_sent: int = 0

    @property
    def root_cause(self) -> str:
        return str(self.reports[0].attributes.get(R_ROOT_CAUSE, "")) if self.reports else ""


def _demo_config(llm: str, data_dir: str) -> Any:
    from receiver.config import load_config

    return load_config(overrides={
        "server": {"llm": llm, "data_dir": data_dir, "tick_interval_s": 0.5},
        "otlp": {"grpc_endpoint": "127.0.0.1:0", "http_endpoint": ""},
        "api": {"endpoint": "127.0.0.1:0"},
        "export": {"endpoint": ""},
        "rca": {"check_interval_s": 0.5},
        # the simulator's SDK exporters send in order from one process: a short lateness and one
        # delivery in flight let log windows close while the demo runs
        "logs": {"windows": {"allowed_lateness_s": 10.0, "max_in_flight": 1}},
    })


class _AppThread:
    """The analyzer on its own asyncio loop in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-app", daemon=True)

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> _AppThread:
        self.thread.start()
        self.run(self.app.start())
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self.app.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def format_report(f: Finding) -> str:
    a = f.attributes
    ev = a.get(R_EVIDENCE) or []
    lines = [
        f"  root cause : {a.get(R_ROOT_CAUSE)}  (confidence {float(a.get(R_CONFIDENCE, 0)):.2f}, "
        f"kind {a.get('rca.fault_kind', '?')})",
        f"  candidates : {', '.join(a.get(R_CANDIDATES) or [])}",
        f"  path       : {' -> '.join(a.get(R_PATH) or [])}  (root cause first)",
        f"  issue      : {a.get('rca.root_cause_issue', '')}",
        "  remediation:",
        *[f"    - {s}" for s in (a.get("rca.remediation") or [])],
        "  evidence   :",
        *[f"    {e}" for e in list(ev)[:8]],
    ]
    if f.trace_id:
        lines.append(f"  trace      : {f.trace_id} (span {f.span_id})")
    return "\n".join(lines)


def run_demo(fault: str | None = "db_down", service: str | None = None, *, llm: str = "off",
             warmup_s: float = 330.0, fault_s: float = 150.0, speed: float = 15.0, seed: int = 1,
             out: Callable[[str], None] = print, stop_on_report: bool = True,
             data_dir: str | None = None) -> DemoResult:
    from receiver.app import build_app

    kind = fault or "db_down"
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault: unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
    flt = default_fault(kind, service, start_s=warmup_s)
    res = DemoResult(flt)
    tmp = data_dir or tempfile.mkdtemp(prefix="lla-demo-")
    total = warmup_s + fault_s
    try:
        app = build_app(_demo_config(llm, tmp))
        with _AppThread(app):
            target = f"127.0.0.1:{app.otlp.grpc_port}"
            start_ns = time.time_ns() - int(total * 1e9)
            sim = Simulator(seed=seed, faults=[flt], endpoint=target, start_ns=start_ns)
            onset_ns = start_ns + int(warmup_s * 1e9)
            out(f"analyzer up: OTLP gRPC {target}, API 127.0.0.1:{app.api.port}, LLM {llm}")
            out(f"simulating 9 services at {speed:g}x; warm-up {warmup_s:.0f}s of simulated traffic, "
                f"then {flt.describe()}")
            seen: set[str] = set()
            state: dict[str, Any] = {"progress": -1, "injected_wall": None, "stop_at": None}

            def on_tick(t_s: float) -> bool:
                if t_s < warmup_s:
                    pct = int(100 * t_s / warmup_s) // 10 * 10
                    if pct > state["progress"]:
                        state["progress"] = pct
                        out(f"  warm-up {pct:3d}%  ({t_s:5.0f}s simulated, {sim.stats.requests} requests, "
                            f"{sim.stats.spans} spans, {sim.stats.logs} logs)")
                elif state["injected_wall"] is None:
                    state["injected_wall"] = time.monotonic()
                    out(f"injecting fault at {warmup_s:.0f}s: {flt.describe()}")
                _poll(app, seen, res, onset_ns, state, out)
                if stop_on_report and res.reports and state["stop_at"] is None:
                    state["stop_at"] = t_s + 10.0
                return state["stop_at"] is not None and t_s >= state["stop_at"]

            sim.run_live(total, speed=speed, tick_s=0.2, on_tick=on_tick)
            sim.shutdown()
            res.spans_sent, res.logs_sent = sim.stats.spans, sim.stats.logs
            if not res.reports:
                app.flush_sync()  # close the open windows and analyse what is pending
            _poll(app, seen, res, onset_ns, state, out)
        if state.get("quiet"):
            out(f"({state['quiet']} more anomaly findings of the same service and type not shown)")
        if res.reports:
            out(f"time to detect: {res.ttd_event_s:.0f}s of simulated time after the fault"
                + (f" ({res.ttd_wall_s:.1f}s wall clock)" if res.ttd_wall_s is not None else ""))
            verdict = "correct" if res.root_cause == flt.root_cause else f"expected {flt.root_cause}"
            out(f"root cause reported: {res.root_cause} ({verdict})")
        else:
            out("no RCA report arrived")
    finally:
        if data_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def _poll(app: Any, seen: set[str], res: DemoResult, onset_ns: int, state: dict[str, Any],
          out: Callable[[str], None]) -> None:
    found = app.store.list_findings(limit=200)
    for f in sorted(found, key=lambda x: x.time_ns):
        if f.id in seen:
            continue
        seen.add(f.id)
        a = f.attributes
        if f.event_name == EVENT_ANOMALY:
            res.anomalies.append(f)
            end = int(a.get("anomaly.window.end", f.time_ns) or f.time_ns)
            rel = (end - onset_ns) / 1e9
            # one line per service and anomaly type per minute of event time (session windows can
            # flag many traces at once)
            key = (str(a.get(A_SERVICE)), str(a.get(A_TYPE)))
            last = state.setdefault("printed", {}).get(key)
            if last is not None and abs(end - last) < 60 * 10**9:
                state["quiet"] = state.get("quiet", 0) + 1
                continue
            state["printed"][key] = end
            conf = float(a.get(A_CONFIDENCE, 0) or 0)
            out(f"ANOMALY  {a.get(A_SERVICE)}: {a.get(A_TYPE)} (confidence {conf:.2f}) "
                f"window ends {rel:+.0f}s from the fault")
        elif f.event_name == EVENT_RCA:
            res.reports.append(f)
            if len(res.reports) == 1:
                res.ttd_event_s = (f.time_ns - onset_ns) / 1e9
                if state.get("injected_wall") is not None:
                    res.ttd_wall_s = time.monotonic() - state["injected_wall"]
            out(f"RCA REPORT ({(f.time_ns - onset_ns) / 1e9:+.0f}s from the fault)")
            out(format_report(f))


def main(fault: str | None = None, service: str | None = None, llm: str | None = None) -> int:
    try:
        res = run_demo(fault, service, llm=llm or "off")
    except ValueError as e:
        print(f"demo: {e}")
        return 2
    return 0 if res.reports else 1
