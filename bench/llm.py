"""Seconds per analysed window on the embedded local model (`python -m bench llm`).

Real data: BGL_half1 through the project's miner, 1 h windows and tier 0; the first N distinct
flagged windows go to the local model (Qwen2.5-Coder-1.5B Q4_K_M, xllamacpp, 2 threads). Rows:
  * tier 0 alone (baseline, same windows, same run): seconds per window to assess;
  * LLM cold call (cache miss, prompt prefix not yet in llama.cpp's prompt cache: the first call);
  * LLM warm calls (cache miss, prefix cached by the server);
  * verdict cache hit (the same windows again).
Needs `pip install -e '.[local]'`. Env LLA_BENCH_LLM_WINDOWS (default 4) sets N.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _windows():
    from receiver.eval.anomaly import parse_labelled_line
    from receiver.logs.templates import TemplateMiner, TemplatesConfig
    from receiver.logs.windows import NS, WindowManager, WindowsConfig

    path = DATA / "anomaly" / "BGL_half1" / "BGL_half1.log"
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(), reg)
    wm = WindowManager(WindowsConfig(tumbling_s=3600, allowed_lateness_s=0.0, session_key="off",
                                     max_empty_windows=0), reg, clock=lambda: 0.0)
    closed = []
    for raw in path.open(errors="replace"):
        p = parse_labelled_line(raw)
        if p is None:
            continue
        _bad, svc, t, sev, body = p
        m = miner.match(svc, body)
        closed += wm.add(svc, t, sev, body, m.template_id, m.template, m.is_new)
    closed += wm.flush()
    closed.sort(key=lambda w: (w.end_ns, w.service))
    _ = NS
    return closed


def main() -> None:
    from receiver.detect.tier0 import DetectConfig, Tier0Detector
    from receiver.llm import LlmAnalyst, LlmConfig
    from receiver.llm.cache import fingerprint
    from receiver.model import FindingsSink

    n = int(os.environ.get("LLA_BENCH_LLM_WINDOWS", "4"))
    windows = _windows()
    det = Tier0Detector(DetectConfig(), None, CollectorRegistry())
    t = time.perf_counter()
    assessments = det.consume_windows(windows)
    t0_per_window = (time.perf_counter() - t) / len(windows)
    seen: set[str] = set()
    picked = []
    for a in assessments:
        w = a.window
        fp = fingerprint(w.service, w.template_counts, (), w.severity_counts)
        if a.flagged and w.count > 0 and fp not in seen:
            seen.add(fp)
            picked.append(a)
        if len(picked) == n:
            break
    cfg = LlmConfig.from_flag("local")
    assert cfg is not None
    an = LlmAnalyst(cfg, FindingsSink(), CollectorRegistry())
    t = time.perf_counter()
    an.start()
    start_s = time.perf_counter() - t
    rows: list[tuple[str, float, float, int]] = []
    try:
        times, toks = [], []
        for a in picked:
            t = time.perf_counter()
            out = an.analyse(a, "flagged")
            times.append(time.perf_counter() - t)
            toks.append(out.tokens)
        rows.append(("LLM cold (1st call)", times[0], times[0], toks[0]))
        if len(times) > 1:
            rows.append((f"LLM warm ({len(times) - 1} calls)", statistics.mean(times[1:]),
                         max(times[1:]), int(statistics.mean(toks[1:]))))
        hits = []
        for a in picked:
            t = time.perf_counter()
            out = an.analyse(a, "flagged")
            hits.append(time.perf_counter() - t)
            assert out.cache_hit
        rows.append(("verdict cache hit", statistics.mean(hits), max(hits), 0))
    finally:
        an.shutdown()
    print(f"local model server start (verify stamp + load): {start_s:.1f} s; windows: {len(picked)} flagged "
          f"BGL 1 h windows; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'path':<26} {'s/window mean':>14} {'s/window max':>13} {'tokens/window':>14}")
    print(f"{'tier 0 alone (baseline)':<26} {t0_per_window:>14.6f} {t0_per_window:>13.6f} {0:>14}")
    for name, mean, mx, tk in rows:
        print(f"{name:<26} {mean:>14.3f} {mx:>13.3f} {tk:>14}")


if __name__ == "__main__":
    main()
