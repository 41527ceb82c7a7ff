"""OTLP/gRPC trace ingest with span analysis ON, in-process vs. in a child process (SpanProcess).

    python -m bench ingest_split      (or .venv/bin/python -m bench.ingest_split [--seconds S] [--repeats N])

Same workload, client and decode-only baseline as `bench/ingest.py` (imported from it): pre-serialized
512-span requests, 10 services, 8 concurrent calls over 2 channels, client in its own process.

Rows (all measured in this run, interleaved, best of the repeats):
  baseline       minimal grpc.aio server, ParseFromString + count           (bench.ingest --serve baseline)
  inproc-graph   OtlpReceiver -> BoundedQueue -> ServiceGraph in the receiver process
  split-graph    OtlpReceiver -> BoundedQueue -> SpanProcess(signals=False): ServiceGraph in a child
  inproc         OtlpReceiver -> BoundedQueue -> ServiceGraph + SpanSignals in the receiver process
                 (how app.py wired it before SpanProcess)
  split          OtlpReceiver -> BoundedQueue -> SpanProcess: ServiceGraph + SpanSignals in a child
  split-graph-reserialize  like split-graph, but SpanProcess sits behind a consumer without a `raw`
                 parameter, so the queue hands it the request alone and it re-serializes it for the child
                 (how it worked before the receiver passed the wire bytes through) -- what the
                 pass-through saves. split-graph and split use the real pass-through (the receiver keeps
                 the gRPC bytes when validation kept every span, the queue hands them to SpanProcess).

Throughput is END TO END: spans processed by the graph and the signals (inproc: counted after both
consumers returned; split: the child's own count, read by an RPC that is answered only after everything
sent before it was processed), per second, between two stats snapshots after a warm-up.
CPU columns: the receiver process and (split) the child, in cores over the window.

Env/flags: BENCH_INGEST_SECONDS (window, default 4), BENCH_INGEST_REPEATS (default 2),
BENCH_INGEST_STREAMS (default 8), --only split,split-graph (the baseline always runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

from bench.ingest import _ask, _Counting, _expect, _finish, _mem, _spawn

ALL_MODES = ("inproc-graph", "split-graph", "split-graph-reserialize", "inproc", "split")


async def _serve(mode: str) -> None:
    from receiver.graph import GraphConfig, ServiceGraph
    from receiver.otlp import OtlpConfig, OtlpReceiver
    from receiver.pipeline.queue import BoundedQueue, QueueConfig
    from receiver.pipeline.spanproc import SpanProcess, SpanProcessConfig
    from receiver.rca.signals import SignalsConfig, SpanSignals

    loop = asyncio.get_running_loop()
    sp: SpanProcess | None = None
    inproc: list[Any] = []
    with_signals = "-graph" not in mode
    counter: _Counting | None = None
    if mode.startswith("split"):
        sp = SpanProcess(GraphConfig(), SignalsConfig(), config=SpanProcessConfig(signals=with_signals))
        sp.start()
        consumer: Any = sp  # the child counts processed spans; the queue passes it the wire bytes
        if mode.endswith("-reserialize"):
            spanproc = sp

            class _NoRaw:  # no `raw` parameter: SpanProcess gets the request alone and re-serializes it
                def consume_traces(self, req: Any) -> None:
                    spanproc.consume_traces(req)

                def consume_logs(self, req: Any) -> None:
                    spanproc.consume_logs(req)

            consumer = _NoRaw()
    else:
        inproc = [ServiceGraph(GraphConfig())] + ([SpanSignals(SignalsConfig())] if with_signals else [])
        for c in inproc:
            c.start()

        class _All:
            def consume_traces(self, req: Any) -> None:
                for c in inproc:
                    c.consume_traces(req)

            def consume_logs(self, req: Any) -> None:
                pass

        consumer = counter = _Counting(traces=_All(), logs=_All())
    queue = BoundedQueue(QueueConfig(), [consumer], [consumer])
    queue.start()
    rcv = OtlpReceiver(OtlpConfig(grpc_endpoint="127.0.0.1:0", http_endpoint=""), queue, queue)
    await rcv.start()
    print(f"PORT {rcv.grpc_port}", flush=True)

    def stats() -> dict[str, Any]:
        errors = sum(s.value for m in queue.registry.collect() for s in m.samples
                     if s.name == "llm_log_analyzer_queue_consumer_errors_total")
        out = {"consumer_errors": errors, **_mem()}
        if sp is not None:
            child = sp.stats()  # answered after everything sent before was processed
            out.update(items=child["spans"], t=child["t"], child_cpu_s=child["cpu_s"],
                       cpu_s=time.process_time(), lost=child["lost_spans"])
        else:
            assert counter is not None
            out.update(items=counter.items, t=time.monotonic(), cpu_s=time.process_time(), child_cpu_s=0.0)
        return out

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() == "stats":
            print(json.dumps(await loop.run_in_executor(None, stats)), flush=True)
        else:
            break
    await rcv.shutdown(1)
    queue.shutdown()
    if sp is not None:
        sp.shutdown()
    for c in inproc:
        c.shutdown()


def run_case(mode: str, warmup_s: float, window_s: float, streams: int) -> dict[str, Any]:
    if mode == "baseline":
        server = _spawn(["--serve", "baseline"])
    else:
        server = _spawn(["--serve", mode], "bench.ingest_split")
    try:
        port = int(_expect(server, "PORT").split()[1])
        client = _spawn(["--client", f"127.0.0.1:{port}", "--signal", "traces", "--streams", str(streams)])
        try:
            _expect(client, "READY")
            time.sleep(warmup_s)
            s0 = _ask(server)
            time.sleep(window_s)
            s1 = _ask(server)
            out = _finish(client)
            cstats = json.loads(out.strip().splitlines()[-1])
        finally:
            if client.poll() is None:
                client.kill()
    finally:
        if server.poll() is None:
            _finish(server)
    dt = s1["t"] - s0["t"]
    if s1["consumer_errors"]:
        raise RuntimeError(f"{mode}: downstream consumer raised {s1['consumer_errors']} times")
    return {
        "mode": mode,
        "rate": (s1["items"] - s0["items"]) / dt,
        "cpu": (s1["cpu_s"] - s0["cpu_s"]) / dt,
        "child_cpu": (s1.get("child_cpu_s", 0.0) - s0.get("child_cpu_s", 0.0)) / dt,
        "rss_mb": s1["VmRSS"] / 1024,
        "client": cstats,
        "lost": s1.get("lost", 0),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.ingest_split")
    ap.add_argument("--serve")
    ap.add_argument("--streams", type=int, default=int(os.environ.get("BENCH_INGEST_STREAMS", "8")))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_INGEST_SECONDS", "4")))
    ap.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_INGEST_REPEATS", "2")))
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--only", default="", help="comma list of: " + ", ".join(ALL_MODES))
    args = ap.parse_args(sys.argv[1:] if argv is None and __name__ == "__main__" else (argv or []))
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    modes = ["baseline"] + [m for m in ALL_MODES if not args.only or m in args.only.split(",")]
    print(f"OTLP/gRPC trace ingest with graph + signals: 512-span requests, 10 services, {args.streams} "
          f"concurrent calls, {args.warmup:.0f}s warm-up + {args.seconds:.0f}s window, "
          f"best of {args.repeats}; "
          f"{os.cpu_count()} CPUs shared by client, receiver and (split) the child", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for m in modes:
            r = run_case(m, args.warmup, args.seconds, args.streams)
            runs[m].append(r)
            print(f"  run {rep + 1} {m:8} {r['rate']:>10,.0f} spans/s  receiver CPU {r['cpu']:.2f}  "
                  f"child CPU {r['child_cpu']:.2f}  (client: {r['client']})", flush=True)
    best = {m: max(rs, key=lambda r: r["rate"]) for m, rs in runs.items()}
    base = best["baseline"]["rate"]
    label = {
        "baseline": "baseline: grpc.aio + ParseFromString only",
        "inproc-graph": "receiver + graph in-process",
        "split-graph": "receiver + SpanProcess (graph in a child)",
        "split-graph-reserialize": "... re-serializing instead of passing the wire bytes",
        "inproc": "receiver + graph + signals in-process",
        "split": "receiver + SpanProcess (graph + signals in a child)",
    }
    print()
    print("| server | spans/s (end to end) | ratio | paired ratio (median) | receiver CPU (cores) "
          "| child CPU (cores) | receiver us/span | child us/span | RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in modes:
        r = best[m]
        us = min(x["cpu"] / max(x["rate"], 1e-9) for x in runs[m]) * 1e6
        child_us = min(x["child_cpu"] / max(x["rate"], 1e-9) for x in runs[m]) * 1e6
        pairs = zip(runs[m], runs["baseline"], strict=True)
        paired = statistics.median(x["rate"] / b["rate"] for x, b in pairs)
        print(f"| {label[m]} | {r['rate']:,.0f} | {r['rate'] / base:.2f} | {paired:.2f} | {r['cpu']:.2f} | "
              f"{r['child_cpu']:.2f} | {us:.2f} | {child_us:.2f} | {r['rss_mb']:.0f} |")
    print("ratio = vs the decode-only baseline measured in this run; spans counted after the graph and "
          "the signals processed them. Best of the repeated runs. Paired ratio: each run against the "
          "baseline run of the same repetition (steadier when other load comes and goes), median over "
          "repetitions. us/span: lowest CPU cost per processed span over the runs; the receiver's includes "
          "requests it refused while the child was behind.")
    if any(r["lost"] for rs in runs.values() for r in rs):
        print("WARNING: the span process lost spans (it crashed) during a run")


if __name__ == "__main__":
    main()
