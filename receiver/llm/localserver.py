"""Supervisor of the embedded llama.cpp server (`--llm local`).

The model file is assembled from the pinned chunk packages and verified by sha256
(`receiver.llm.modelfile`) BEFORE the server loads it. The server runs in a child process we own
(`python -m receiver.llm.local_child`) on 127.0.0.1 and a free port; a supervisor thread checks that
the process lives and that `/health` answers, restarts it on a crash with doubling backoff (bounded:
`max_restarts` within `restart_window_s`, then it stays down and callers fall back to tier 0), and
`shutdown()` terminates it cleanly (SIGTERM, then SIGKILL). The child also exits when its stdin
closes, so it never outlives us.
"""

from __future__ import annotations

import collections
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry

from receiver.llm.config import LocalModelConfig
from receiver.llm.metrics import LlmMetrics
from receiver.llm.modelfile import ModelNotInstalledError, ensure_model

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_ok(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


class LocalModelServer:
    """`start()` verifies the model and blocks until the server is healthy (or raises)."""

    def __init__(self, config: LocalModelConfig, registry: CollectorRegistry | None = None,
                 metrics: LlmMetrics | None = None, model_path: str | Path | None = None) -> None:
        self.config = config
        self._m = metrics or LlmMetrics(registry or CollectorRegistry())
        self._model_path = Path(model_path) if model_path else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts: collections.deque[float] = collections.deque(maxlen=max(1, config.max_restarts + 1))
        self.failed = False  # restarts exhausted
        self.restart_count = 0
        self._healthy = False

    # -- public ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None else None

    def base_url(self) -> str | None:
        """The OpenAI-compatible base URL while the server is healthy, else None."""
        return f"http://127.0.0.1:{self._port}/v1" if self._healthy and self._port else None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            if self._model_path is None:
                self._model_path = ensure_model(self.config.data_dir or None)  # raises with install hint
            elif not self._model_path.is_file():
                raise ModelNotInstalledError(f"model file {self._model_path} not found")
            self._spawn_and_wait()
            self._thread = threading.Thread(target=self._supervise, name="llm-local-supervisor", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=10)
        with self._lock:
            self._thread = None
            self._kill()

    # -- child process --------------------------------------------------------------------------
    def _spawn(self, port: int) -> None:
        c = self.config
        cmd = [sys.executable, "-m", "receiver.llm.local_child", "--model", str(self._model_path),
               "--port", str(port), "--ctx", str(c.n_ctx), "--threads", str(c.threads),
               "--parallel", str(c.n_parallel)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self._port = port

    def _spawn_and_wait(self) -> None:
        """Start the child and wait for /health; tries another port once if the first is taken."""
        last = "unknown"
        for port in ([self._port] if self._port else []) + [free_port(), free_port()]:
            self._spawn(port)
            deadline = time.monotonic() + self.config.startup_timeout_s
            while time.monotonic() < deadline and not self._stop.is_set():
                if self._proc is not None and self._proc.poll() is not None:
                    last = f"server process exited with code {self._proc.returncode}"
                    break
                if health_ok(port):
                    self._healthy = True
                    self._m.local_up.set(1)
                    log.info("local model server ready on 127.0.0.1:%d (pid %s)", port, self.pid)
                    return
                time.sleep(0.25)
            else:
                last = f"no healthy /health within {self.config.startup_timeout_s:.0f} s"
            self._kill()
            if self._stop.is_set():
                break
        raise RuntimeError(f"local model server failed to start: {last}")

    def _kill(self) -> None:
        self._healthy = False
        self._m.local_up.set(0)
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        misses = 0
        while not self._stop.wait(self.config.health_interval_s):
            with self._lock:
                p = self._proc
                alive = p is not None and p.poll() is None
                if alive and health_ok(self._port, timeout=5.0):
                    misses = 0
                    backoff = self.config.restart_backoff_s  # healthy again: next crash starts over
                    self._healthy = True
                    self._m.local_up.set(1)
                    continue
                misses += 1
                if alive and misses < 3:  # busy server: a slow /health is not yet a crash
                    continue
                log.warning("local model server down (%s); restarting",
                            "exited" if not alive else "unhealthy")
                self._kill()
                now = time.monotonic()
                while self._restarts and now - self._restarts[0] > self.config.restart_window_s:
                    self._restarts.popleft()
                if len(self._restarts) >= self.config.max_restarts:
                    self.failed = True
                    log.error("local model server crashed %d times within %.0f s; giving up (tier 0 only)",
                              len(self._restarts), self.config.restart_window_s)
                    return
                self._restarts.append(now)
            if self._stop.wait(backoff):
                return
            backoff = min(30.0, backoff * 2)
            with self._lock:
                try:
                    self._spawn_and_wait()
                    self.restart_count += 1
                    self._m.local_restarts.inc()
                    misses = 0
                except RuntimeError as e:
                    log.error("%s", e)
