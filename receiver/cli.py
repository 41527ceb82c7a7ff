"""The command line: `llm-log-analyzer serve | eval | demo | config`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from receiver.errors import ConfigError
from receiver.llm.modelfile import ModelNotInstalledError
from receiver.sim.faults import FAULT_KINDS


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (see README: Configuration)")
    p.add_argument("--otlp-grpc", metavar="HOST:PORT",
                   help="OTLP/gRPC listen address (default 127.0.0.1:4317)")
    p.add_argument("--otlp-http", metavar="HOST:PORT",
                   help="OTLP/HTTP listen address (default 127.0.0.1:4318)")
    p.add_argument("--http", metavar="HOST:PORT", help="API listen address (default 127.0.0.1:8080)")
    p.add_argument("--export-endpoint", metavar="HOST:PORT",
                   help="send findings as OTLP to this gRPC endpoint (default: off)")
    p.add_argument("--llm", metavar="off|local|URL",
                   help="LLM backend: off (tier 0 only), local (embedded model, default), "
                        "or an OpenAI-compatible base URL")
    p.add_argument("--data-dir", metavar="DIR", help="where state, the store and queues live (default ./var)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-log-analyzer",
                                     description="Self-hosted AI log analyst for OpenTelemetry")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OTLP receiver and the analysis pipeline")
    _add_serve_flags(serve)

    cfg = sub.add_parser("config", help="print the resolved configuration (file + env + flags) and exit")
    _add_serve_flags(cfg)

    ev = sub.add_parser("eval", help="evaluate on labelled data")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    ep = ev_sub.add_parser("parsing", help="template mining on Loghub-2k (GA, FGA, PA, lines/s)")
    ep.add_argument("--data", required=True, metavar="DIR")
    ep.add_argument("--json", action="store_true")
    ea = ev_sub.add_parser("anomaly", help="anomaly detection on labelled logs, beside two simple baselines")
    ea.add_argument("--data", required=True, nargs="+", metavar="PATH",
                    help="a directory with block_sessions.jsonl, a label-first raw log (BGL layout), or a "
                    "directory with anomaly_label.csv and one *.log; several paths print a table")
    ea.add_argument("--json", action="store_true")
    ea.add_argument("--llm", metavar="off|local|URL", default=None,
                    help="also run the LLM cascade and compare with sending every window to the LLM")
    ea.add_argument("--window-s", type=float, default=3600.0,
                    help="window size in seconds for a labelled raw log (default 3600)")
    ea.add_argument("--session-regex", default=None,
                    help="for a raw log with anomaly_label.csv: the regex of the labelled id in its lines")
    ea.add_argument("--otlp", action="store_true",
                    help="replay a raw log with anomaly_label.csv through the running product over OTLP")
    er = ev_sub.add_parser("rca", help="root-cause accuracy on recorded incidents (--data) or simulated "
                                       "faults (--sim)")
    src = er.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="recorded cases in the Nezha format (labels/cases.json "
                                                   "here or one level below)")
    src.add_argument("--sim", action="store_true", help="simulated fault cases (not evidence of accuracy)")
    er.add_argument("--mode", choices=("localize", "detect"), default="localize",
                    help="--data: rank for the known fault window, or score the automatic path")
    er.add_argument("--window-s", type=float, default=120.0,
                    help="--data: the case window after the injection (default 120 s)")
    er.add_argument("--cases", type=int, default=None, help="at most this many cases (--sim: default 20)")
    er.add_argument("--seed", type=int, default=1, help="--sim: the first case's seed")
    er.add_argument("--json", action="store_true")
    eq = ev_sub.add_parser("quiet", help="false alarms on simulated healthy traffic (noise on, no fault)")
    eq.add_argument("--hours", type=float, default=2.0, help="simulated hours (default 2)")
    eq.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    eq.add_argument("--json", action="store_true")

    inv = sub.add_parser("investigate", help="ask the running analyzer for the root cause of recent minutes")
    from receiver.rca.investigate_cli import add_arguments as add_investigate_arguments

    add_investigate_arguments(inv)

    demo = sub.add_parser("demo",
                          help="start the analyzer and a simulated microservice system, inject a fault")
    demo.add_argument("--fault", default=None, choices=FAULT_KINDS, help="fault kind (default: db_down)")
    demo.add_argument("--service", default=None, help="service to inject the fault into")
    demo.add_argument("--llm", metavar="off|local|URL", default=None)
    return parser


def _load(args: argparse.Namespace):  # noqa: ANN202 - returns AppConfig, imported lazily
    from receiver.config import load_config

    return load_config(args.config, flags=args)


async def _serve(args: argparse.Namespace) -> int:
    from receiver.app import build_app

    config = _load(args)
    app = build_app(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
    finally:
        logging.getLogger("receiver").info("shutting down")
        await app.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "config":
            from receiver.settings import to_dict

            print(json.dumps(to_dict(_load(args)), indent=2))
            return 0
        if args.command == "eval":
            if args.eval_command == "parsing":
                from receiver.eval.parsing import run as run_parsing

                return run_parsing(args.data, args.json)
            if args.eval_command == "anomaly":
                if args.llm in (None, "off"):
                    from receiver.eval.anomaly import run as run_anomaly

                    return run_anomaly(args.data, args.json, window_s=args.window_s,
                                       session_regex=args.session_regex, otlp=args.otlp)
                from receiver.llm.evalmode import run as run_cascade_eval

                return run_cascade_eval(args.data[0], args.json, args.llm, window_s=args.window_s)
            if args.eval_command == "rca":
                if args.sim:
                    from receiver.eval.rca import run as run_rca

                    return run_rca(args.cases if args.cases is not None else 20, args.seed, args.json)
                from receiver.eval.rca_replay import run as run_replay

                return run_replay(args.data, args.mode, args.cases, args.json, args.window_s)
            if args.eval_command == "quiet":
                from receiver.eval.quiet import main as quiet_main

                return quiet_main(["--hours", str(args.hours), "--seed", str(args.seed)]
                                  + (["--json"] if args.json else []))
        if args.command == "investigate":
            from receiver.rca.investigate_cli import run as run_investigate

            return run_investigate(args.since, args.service, args.api, args.token, args.json)
        if args.command == "demo":
            from receiver.sim.demo import main as demo_main

            return demo_main(fault=args.fault, service=args.service, llm=args.llm)
    except ConfigError as e:
        print(f"llm-log-analyzer: configuration error: {e}", file=sys.stderr)
        return 2
    except ModelNotInstalledError as e:
        print(f"llm-log-analyzer: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
