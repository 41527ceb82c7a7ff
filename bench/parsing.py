"""Template mining: our miner (one default config) vs drain3 0.9.11 (per-dataset benchmark settings).

`python -m bench parsing` prints, measured in the same run:
  1. per Loghub-2k system: GA / FGA / PA and lines/s for both, plus the averages;
  2. a mixed stream of all systems (lines interleaved round-robin; one service per system for us, one
     drain3 instance per system with that system's settings);
  3. repeated HDFS (the 2k lines replayed `HDFS_REPEAT` times);
  4. memory: 1M lines of high-cardinality content through our miner with default caps (RSS growth
     at each quarter, templates held, evictions counted), and tracemalloc over 100k more.
drain3's settings (`rex`, `st`, `depth`) are the Loghub/Drain benchmark ones
(`receiver.eval.parsing.DRAIN3_SETTINGS`, shared with `eval parsing`).
Speed: lines per second of process CPU time (`time.process_time`, so other processes on a shared
machine do not count against either side); each measurement runs both miners BENCH_PARSING_REPEATS
times (default 3), alternating, and keeps each one's best time.
Environment: BENCH_PARSING_DATA (default ../shared/datasets/loghub_2k), BENCH_PARSING_MEMORY_LINES,
BENCH_PARSING_HDFS_REPEAT, BENCH_PARSING_REPEATS.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import resource
import string
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from drain3 import TemplateMiner as Drain3Miner

from receiver.eval.parsing import Dataset, load_all, make_drain3, scores
from receiver.logs.templates import TemplateMiner, TemplatesConfig

DATA = Path(
    os.environ.get(
        "BENCH_PARSING_DATA", Path(__file__).resolve().parents[1].parent / "shared/datasets/loghub_2k"
    )
)
HDFS_REPEAT = int(os.environ.get("BENCH_PARSING_HDFS_REPEAT", "25"))
REPEATS = int(os.environ.get("BENCH_PARSING_REPEATS", "3"))
MEMORY_LINES = int(os.environ.get("BENCH_PARSING_MEMORY_LINES", "1000000"))
TRACED_LINES = int(os.environ.get("BENCH_PARSING_TRACED_LINES", "100000"))


class _Drain3Runner:
    """One drain3 instance per system; final template per line = its cluster's final template."""

    def __init__(self) -> None:
        self.miners: dict[str, Drain3Miner] = {}

    def feed(self, stream: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, int]], float]:
        miners = self.miners
        out: list[tuple[str, int]] = []
        t0 = time.process_time()
        for system, line in stream:
            m = miners.get(system)
            if m is None:
                m = miners[system] = make_drain3(system)
            out.append((system, m.add_log_message(line)["cluster_id"]))
        return out, time.process_time() - t0

    def final(self, ids: list[tuple[str, int]]) -> list[str]:
        return [self.miners[s].drain.id_to_cluster[c].get_template() for s, c in ids]


class _OursRunner:
    def __init__(self) -> None:
        self.miner = TemplateMiner(TemplatesConfig())

    def feed(self, stream: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, int]], float]:
        match = self.miner.match
        out: list[tuple[str, int]] = []
        t0 = time.process_time()
        for system, line in stream:
            out.append((system, match(system, line).template_id))
        return out, time.process_time() - t0

    def final(self, ids: list[tuple[str, int]]) -> list[str]:
        cache: dict[tuple[str, int], str] = {}
        res = []
        for key in ids:
            t = cache.get(key)
            if t is None:
                t = cache[key] = self.miner.template(*key) or ""  # resolves merged ids
            res.append(t)
        return res


_scores = scores  # GA / FGA / PA of final templates (one definition, in receiver.eval.parsing)


RUNNERS: dict[str, Callable[[], _OursRunner | _Drain3Runner]] = {"ours": _OursRunner, "drain3": _Drain3Runner}


def _race(stream: list[tuple[str, str]], repeats: int = REPEATS) -> dict[str, tuple[list[str], float]]:
    """Run both miners `repeats` times, alternating (so load changes on the machine hit both alike);
    fresh miner each run; best (shortest) time kept. Returns name -> (final templates, seconds)."""
    out: dict[str, tuple[list[str], float]] = {}
    for _ in range(repeats):
        for name, factory in RUNNERS.items():
            runner = factory()
            gc.collect()
            ids, elapsed = runner.feed(stream)
            if name not in out:
                out[name] = (runner.final(ids), elapsed)
            elif elapsed < out[name][1]:
                out[name] = (out[name][0], elapsed)
    return out


def per_system(datasets: list[Dataset]) -> list[dict[str, float | str]]:
    rows = []
    for ds in datasets:
        stream = [(ds.system, line) for line in ds.contents]
        row: dict[str, float | str] = {"system": ds.system}
        for name, (pred, elapsed) in _race(stream).items():
            ga, fga, pa = _scores(ds.truth, pred)
            row.update(
                {f"{name}_ga": ga, f"{name}_fga": fga, f"{name}_pa": pa, f"{name}_lps": len(stream) / elapsed}
            )
        rows.append(row)
    return rows


def mixed(datasets: list[Dataset]) -> dict[str, float]:
    stream: list[tuple[str, str]] = []
    truth: dict[str, list[str]] = {ds.system: ds.truth for ds in datasets}
    longest = max(len(ds.contents) for ds in datasets)
    for i in range(longest):
        for ds in datasets:
            if i < len(ds.contents):
                stream.append((ds.system, ds.contents[i]))
    res: dict[str, float] = {"lines": len(stream)}
    for name, (pred, elapsed) in _race(stream).items():
        per: dict[str, list[str]] = {}
        for (system, _), p in zip(stream, pred, strict=True):
            per.setdefault(system, []).append(p)
        scores = [_scores(truth[s], per[s]) for s in truth]
        res[f"{name}_lps"] = len(stream) / elapsed
        for k, idx in (("ga", 0), ("fga", 1), ("pa", 2)):
            res[f"{name}_{k}"] = sum(x[idx] for x in scores) / len(scores)
    return res


def repeated_hdfs(datasets: list[Dataset]) -> dict[str, float]:
    hdfs = next(ds for ds in datasets if ds.system == "HDFS")
    stream = [("HDFS", line) for _ in range(HDFS_REPEAT) for line in hdfs.contents]
    res: dict[str, float] = {"lines": len(stream)}
    for name, (_, elapsed) in _race(stream).items():
        res[f"{name}_lps"] = len(stream) / elapsed
    return res


def _rss_kib() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _high_cardinality(lines: int, seed: int = 7) -> Iterator[tuple[str, str]]:
    """Every line carries fresh random words (nothing to mask, nothing repeats), spread over 50
    services plus a new one every 1000 lines, so templates, buckets, services and caches all hit
    their caps."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase

    def word() -> str:
        return "".join(rng.choices(letters, k=8))

    for i in range(lines):
        service = f"svc{i % 50}" if i % 1000 else f"burst{i}"
        yield service, f"{word()} op {word()} {word()} {word()} status {i % 7}"


def memory(lines: int = MEMORY_LINES, traced_lines: int = TRACED_LINES) -> dict[str, object]:
    """RSS over `lines` high-cardinality lines (default caps), then tracemalloc over a fresh miner
    fed `traced_lines` of them (tracemalloc slows Python down several times)."""
    miner = TemplateMiner(TemplatesConfig())
    gc.collect()
    rss0 = _rss_kib()
    rss_quarters = []
    t0 = time.process_time()
    for i, (service, line) in enumerate(_high_cardinality(lines)):
        miner.match(service, line)
        if (i + 1) % max(1, lines // 4) == 0:
            rss_quarters.append((_rss_kib() - rss0) / 1024)
    elapsed = time.process_time() - t0
    res: dict[str, object] = {
        "lines": lines,
        "lps": lines / elapsed,
        "rss_growth_mib_at_quarters": rss_quarters,
        "templates_held": miner.active_templates(),
        "services_held": len(miner.services()),
        "evicted_templates": miner.evicted_template_cap
        + miner.evicted_total_cap
        + miner.evicted_bucket_cap
        + miner.evicted_with_service,
        "evicted_services": miner.services_evicted,
        "cache_dropped": miner.cache_evicted + miner._masker.cache_dropped,
    }
    del miner
    gc.collect()
    traced = TemplateMiner(TemplatesConfig())
    tracemalloc.start()
    quarters = []
    for i, (service, line) in enumerate(_high_cardinality(traced_lines, seed=8)):
        traced.match(service, line)
        if (i + 1) % max(1, traced_lines // 4) == 0:
            quarters.append(tracemalloc.get_traced_memory()[0] / 2**20)
    res["traced_lines"] = traced_lines
    res["traced_mib_at_quarters"] = quarters
    res["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return res


def main() -> None:
    logging.getLogger("drain3").setLevel(logging.WARNING)
    datasets = load_all(DATA)
    print(f"data: {DATA} ({len(datasets)} systems); drain3 0.9.11 with per-dataset Loghub settings")
    print("accuracy: GA / FGA / PA as Loghub-2.0 defines them; final template per line")
    rows = per_system(datasets)
    hdr = (
        f"{'system':<12} {'GA ours':>8} {'drain3':>7} {'FGA ours':>9} {'drain3':>7} {'PA ours':>8} "
        f"{'drain3':>7} {'lines/s ours':>13} {'drain3':>8} {'ratio':>6}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['system']:<12} {r['ours_ga']:>8.3f} {r['drain3_ga']:>7.3f} {r['ours_fga']:>9.3f} "
            f"{r['drain3_fga']:>7.3f} {r['ours_pa']:>8.3f} {r['drain3_pa']:>7.3f} {r['ours_lps']:>13,.0f} "
            f"{r['drain3_lps']:>8,.0f} {float(r['ours_lps']) / float(r['drain3_lps']):>6.2f}"
        )
    n = len(rows)
    avg = {k: sum(float(r[k]) for r in rows) / n for k in rows[0] if k != "system"}
    print(
        f"{'average':<12} {avg['ours_ga']:>8.3f} {avg['drain3_ga']:>7.3f} {avg['ours_fga']:>9.3f} "
        f"{avg['drain3_fga']:>7.3f} {avg['ours_pa']:>8.3f} {avg['drain3_pa']:>7.3f}"
    )
    m = mixed(datasets)
    print(
        f"\nmixed stream ({m['lines']:.0f} lines, {n} systems interleaved): "
        f"ours {m['ours_lps']:,.0f} lines/s vs drain3 {m['drain3_lps']:,.0f} lines/s "
        f"= {m['ours_lps'] / m['drain3_lps']:.2f}x; avg GA/FGA/PA ours "
        f"{m['ours_ga']:.3f}/{m['ours_fga']:.3f}/{m['ours_pa']:.3f} vs drain3 "
        f"{m['drain3_ga']:.3f}/{m['drain3_fga']:.3f}/{m['drain3_pa']:.3f}"
    )
    h = repeated_hdfs(datasets)
    print(
        f"repeated HDFS ({h['lines']:.0f} lines): ours {h['ours_lps']:,.0f} lines/s vs drain3 "
        f"{h['drain3_lps']:,.0f} lines/s = {h['ours_lps'] / h['drain3_lps']:.2f}x"
    )
    mem = memory()
    rss = ", ".join(f"{x:.1f}" for x in mem["rss_growth_mib_at_quarters"])  # type: ignore[attr-defined]
    traced = ", ".join(f"{x:.1f}" for x in mem["traced_mib_at_quarters"])  # type: ignore[attr-defined]
    print(
        f"memory, {mem['lines']:,} high-cardinality lines (fresh random words each line), default caps: "
        f"{mem['lps']:,.0f} lines/s; RSS growth MiB at each quarter [{rss}]; held {mem['templates_held']} "
        f"templates in {mem['services_held']} services; evicted {mem['evicted_templates']} templates, "
        f"{mem['evicted_services']} services, dropped {mem['cache_dropped']} cache entries"
    )
    print(
        f"  tracemalloc over {mem['traced_lines']:,} such lines: MiB at each quarter [{traced}], "
        f"peak {mem['traced_peak_mib']:.1f} MiB"
    )


if __name__ == "__main__":
    main()
