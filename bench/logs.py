"""Logs path throughput: redaction, template mining, windows, tier 0, per stage and end to end.

`python -m bench logs` prints, measured in the same run on the same lines:
  * drain3 0.9.11 alone (default config, one instance per system) = the baseline;
  * each stage alone: Redactor.redact, TemplateMiner.match, WindowManager.add, Tier0Detector on the
    closed windows;
  * end to end: OTLP `ExportLogsServiceRequest`s (prebuilt, 512 records each) through
    LogsStage.consume_logs -> Tier0Detector (one service per Loghub system, tumbling windows +
    trace-id sessions, original order, event times 50 ms apart);
  * memory: BENCH_LOGS_MEMORY_LINES (default 1,000,000) lines of high-cardinality content (fresh
    random words and ids in every line, 200 services, unique trace ids) end to end, RSS and held
    state printed every quarter: it must plateau (templates, windows, sessions and baselines are
    capped; the caps' evictions are printed).
Stream: the 12 Loghub-2k systems (24k lines) interleaved round-robin, repeated BENCH_LOGS_REPEAT
(default 4) times. Environment: BENCH_LOGS_DATA (default ../shared/datasets/loghub_2k).
"""

from __future__ import annotations

import gc
import logging
import os
import random
import resource
import string
import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import CollectorRegistry

from receiver.detect.tier0 import DetectConfig, Tier0Detector
from receiver.eval.parsing import load_all
from receiver.logs.redact import RedactConfig, Redactor
from receiver.logs.stage import LogsConfig, LogsStage
from receiver.logs.templates import TemplateMiner, TemplatesConfig
from receiver.logs.windows import NS, Window, WindowManager, WindowsConfig

DATA = Path(os.environ.get("BENCH_LOGS_DATA",
                           Path(__file__).resolve().parents[1].parent / "shared/datasets/loghub_2k"))
REPEAT = int(os.environ.get("BENCH_LOGS_REPEAT", "4"))
MEMORY_LINES = int(os.environ.get("BENCH_LOGS_MEMORY_LINES", "1000000"))
T0 = 1_700_000_000 * NS
STEP = 50_000_000  # 50 ms between events


def mixed_stream() -> list[tuple[str, str]]:
    sets = load_all(DATA)
    out: list[tuple[str, str]] = []
    for i in range(2000):
        for ds in sets:
            if i < len(ds.contents):
                out.append((ds.system, ds.contents[i]))
    return out * REPEAT


def rate(n: int, fn: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return n / dt, dt


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def requests(lines: list[tuple[str, str]], batch: int = 512,
             traces: Callable[[int], bytes] | None = None) -> list[ExportLogsServiceRequest]:
    out = []
    for i in range(0, len(lines), batch):
        by_service: dict[str, list[LogRecord]] = {}
        for j, (svc, text) in enumerate(lines[i:i + batch], start=i):
            by_service.setdefault(svc, []).append(LogRecord(
                time_unix_nano=T0 + j * STEP, severity_number=9, body=AnyValue(string_value=text),
                trace_id=traces(j) if traces else b""))
        out.append(ExportLogsServiceRequest(resource_logs=[
            ResourceLogs(resource=Resource(attributes=[KeyValue(key="service.name",
                                                                value=AnyValue(string_value=svc))]),
                         scope_logs=[ScopeLogs(log_records=recs)])
            for svc, recs in by_service.items()]))
    return out


def bench_stages(stream: list[tuple[str, str]]) -> list[tuple[str, float, str]]:
    n = len(stream)
    rows: list[tuple[str, float, str]] = []
    # baseline: drain3 alone, default settings, one miner per system
    logging.getLogger("drain3").setLevel(logging.WARNING)
    from drain3 import TemplateMiner as Drain3Miner
    from drain3.template_miner_config import TemplateMinerConfig

    drains: dict[str, Drain3Miner] = {}
    for svc, _ in stream:
        if svc not in drains:
            cfg = TemplateMinerConfig()
            cfg.profiling_enabled = False
            drains[svc] = Drain3Miner(config=cfg)

    def run_drain() -> None:
        for svc, text in stream:
            drains[svc].add_log_message(text)

    r, _ = rate(n, run_drain)
    rows.append(("baseline: drain3 0.9.11 alone (mining only)", r, "lines/s"))

    red = Redactor(RedactConfig(), CollectorRegistry())
    redacted: list[str] = []

    def run_redact() -> None:
        for _, text in stream:
            redacted.append(red.redact(text)[0])

    r, _ = rate(n, run_redact)
    rows.append(("redaction (default kinds)", r, "lines/s"))
    red_ip = Redactor(RedactConfig(ip_addresses=True), CollectorRegistry())
    r, _ = rate(n, lambda: [red_ip.redact(t) for _, t in stream])
    rows.append(("redaction (+ IPv4/IPv6)", r, "lines/s"))

    miner = TemplateMiner(TemplatesConfig(), CollectorRegistry())
    matches = []

    def run_mine() -> None:
        for (svc, _), text in zip(stream, redacted, strict=True):
            matches.append(miner.match(svc, text))

    r, _ = rate(n, run_mine)
    rows.append(("template mining (TemplateMiner.match)", r, "lines/s"))

    wm = WindowManager(WindowsConfig(session_key="regex", session_regex=r"blk_-?\d+"), CollectorRegistry(),
                       clock=lambda: 0.0)
    windows: list[Window] = []

    def run_windows() -> None:
        for j, ((svc, _), text, m) in enumerate(zip(stream, redacted, matches, strict=True)):
            windows.extend(wm.add(svc, T0 + j * STEP, "info", text, m.template_id, m.template, m.is_new))
        windows.extend(wm.flush())

    r, _ = rate(n, run_windows)
    rows.append((f"windows (tumbling 60 s + sessions by block id; {len(windows)} windows)", r, "lines/s"))
    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    r, dt = rate(len(windows), lambda: det.consume_windows(windows))
    rows.append(("tier 0 on those windows", n / dt, "lines/s"))
    rows.append(("tier 0 on those windows", r, "windows/s"))

    # end to end from OTLP requests (building them is not timed: the receiver hands us decoded protos)
    reqs = requests(stream, traces=lambda j: (j // 20).to_bytes(16, "big"))
    det2 = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    stage = LogsStage(LogsConfig(), det2, CollectorRegistry())

    def run_e2e() -> None:
        for q in reqs:
            stage.consume_logs(q)
        stage.flush()

    r, _ = rate(n, run_e2e)
    rows.append(("end to end: OTLP -> LogsStage -> tier 0 (tumbling + trace sessions)", r, "lines/s"))
    det3 = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    stage3 = LogsStage(LogsConfig(windows=WindowsConfig(session_key="off")), det3, CollectorRegistry())

    def run_e2e_tumbling() -> None:
        for q in reqs:
            stage3.consume_logs(q)
        stage3.flush()

    r, _ = rate(n, run_e2e_tumbling)
    rows.append(("end to end: OTLP -> LogsStage -> tier 0 (tumbling only)", r, "lines/s"))
    return rows


def high_cardinality(n: int, seed: int = 11) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    verbs = ["started", "stopped", "failed", "retried", "queued", "dropped", "merged", "shipped"]
    out = []
    for i in range(n):
        w = "".join(rng.choices(letters, k=8))
        v = "".join(rng.choices(letters, k=6))
        user = "".join(rng.choices(letters, k=5))
        out.append((f"svc-{i % 200}", f"{w} {rng.choice(verbs)} {v} id={rng.getrandbits(48):x} n={i} "
                                     f"user {user}@example.com took {i % 997} ms"))
    return out


def bench_memory(n: int) -> list[str]:
    reg = CollectorRegistry()
    det = Tier0Detector(DetectConfig(), None, reg)
    stage = LogsStage(LogsConfig(), det, reg)
    chunk = 50_000
    lines_out: list[str] = []
    base = rss_mib()
    quarter = max(chunk, n // 4)
    t = time.perf_counter()
    done = 0
    seed = 0
    while done < n:
        part = high_cardinality(min(chunk, n - done), seed=seed)
        seed += 1
        reqs = requests([(s, x) for s, x in part], traces=lambda j, off=done: (off + j).to_bytes(16, "big"))
        del part
        for q in reqs:
            stage.consume_logs(q)
        del reqs
        done += min(chunk, n - done)
        if done % quarter < chunk or done == n:
            names = ("log_window_evictions", "log_templates_evicted", "tier0_baseline_evictions")
            ev = sum(s.value for m in reg.collect() if m.name in names
                     for s in m.samples if s.name.endswith("_total"))
            lines_out.append(
                f"{done:>9,} lines  RSS {rss_mib() - base:7.1f} MiB above start  templates "
                f"{stage.miner.active_templates():6d}  open windows {stage.windows.open_windows():6d}  "
                f"baselines {len(det.services()):4d} ({det.entries():7d} entries)  evictions {int(ev):9d}  "
                f"{done / (time.perf_counter() - t):8.0f} lines/s")
    stage.flush()
    return lines_out


def main() -> None:
    stream = mixed_stream()
    print(f"stream: {len(stream)} lines ({len(stream) // REPEAT} Loghub-2k lines of 12 systems x {REPEAT}), "
          f"{len({s for s, _ in stream})} services")
    rows = bench_stages(stream)
    base = rows[0][1]
    print(f"{'stage':<72} {'rate':>12}  unit       vs drain3")
    for name, r, unit in rows:
        rel = f"{r / base:6.2f}x" if unit == "lines/s" else ""
        print(f"{name:<72} {r:>12,.0f}  {unit:<9} {rel}")
    print(f"\nmemory: {MEMORY_LINES:,} high-cardinality lines end to end (200 services, unique trace ids)")
    for line in bench_memory(MEMORY_LINES):
        print(line)


if __name__ == "__main__":
    main()
