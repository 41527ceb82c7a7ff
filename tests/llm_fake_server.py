"""A scripted OpenAI-compatible HTTP server on loopback, for fault injection in the LLM tests only.

Each POST /v1/chat/completions takes the next step of the script (the last step repeats):
  ("ok", answer_dict)              200 with the answer as the message content (JSON text)
  ("text", "raw text")             200 with arbitrary content (non-JSON)
  ("stall", seconds)               sleeps, then answers 200 with the default answer
  ("status", code, retry_after)    that HTTP status (retry_after None: no Retry-After header)
  ("drop",)                        closes the connection without answering
Every request body is captured (`bodies`) so tests can inspect the prompts.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NORMAL = {"reasoning": "routine lines", "is_anomaly": False, "severity": "none", "anomaly_type": "none",
          "root_cause": "", "affected_services": [], "remediation_steps": [], "confidence": 0.9,
          "explanation": "normal"}
ANOMALY = {"reasoning": "errors far above baseline", "is_anomaly": True, "severity": "high",
           "anomaly_type": "dependency_failure", "root_cause": "db refuses connections",
           "affected_services": ["payment", "db", "ghost-service"], "remediation_steps": ["check db"],
           "confidence": 0.9, "explanation": "payment cannot reach db"}


class FakeLlmServer:
    def __init__(self, script: list[tuple[Any, ...]] | None = None) -> None:
        self.script: list[tuple[Any, ...]] = list(script or [("ok", ANOMALY)])
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected in stall tests

            def _post(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.times.append(time.monotonic())
                    step = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                kind = step[0]
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind == "stall":
                    server._stop.wait(step[1])
                    step = ("ok", NORMAL)
                    kind = "ok"
                if kind == "status":
                    code, ra = step[1], step[2]
                    payload = json.dumps({"error": {"message": f"scripted {code}", "type": "x"}}).encode()
                    self.send_response(code)
                    if ra is not None:
                        self.send_header("Retry-After", str(ra))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                content = json.dumps(step[1]) if kind == "ok" else str(step[1])
                resp = {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
                payload = json.dumps(resp).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def set_script(self, script: list[tuple[Any, ...]]) -> None:
        with self.lock:
            self.script = list(script)

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.bodies)
