"""Child process entry point that runs the embedded llama.cpp server (xllamacpp).

Started by `receiver.llm.localserver.LocalModelServer` only: `python -m receiver.llm.local_child
--model PATH --port N ...`. The server listens on 127.0.0.1 only. The process exits when its stdin
reaches EOF (the parent died or closed it) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="receiver.llm.local_child")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--alias", default="local")
    args = ap.parse_args(argv)

    import xllamacpp  # imported here: only the child needs the native library

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = args.alias
    params.port = args.port
    params.hostnames = ["127.0.0.1"]
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.use_jinja = True
    params.warmup = False

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def _watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=_watch_stdin, daemon=True).start()
    server = xllamacpp.Server(params)  # returns once the model is loaded and the server listens
    print("local_child: ready", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
