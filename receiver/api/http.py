"""The HTTP API: health, readiness, Prometheus metrics, graph, findings, flush, incidents.

The API knows nothing of the stages: the composition root hands it an `ApiSources` of callables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from receiver.component import StageConfig, require
from receiver.errors import ConfigError

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiConfig(StageConfig):
    endpoint: str = "127.0.0.1:8080"
    # Optional bearer token for /api/v1/* (health, ready and metrics stay open for probes).
    auth_tokens: list[str] = field(default_factory=list)
    max_findings_limit: int = 1000

    def validate(self) -> None:
        host, sep, port = self.endpoint.rpartition(":")
        require(bool(sep) and port.isdigit() and 0 <= int(port) < 65536, "endpoint",
                f"must be HOST:PORT, got {self.endpoint!r}")
        require(self.max_findings_limit > 0, "max_findings_limit", "must be > 0")


@dataclass
class ApiSources:
    """What the API reads and triggers. Every callable is synchronous unless typed as awaitable."""

    graph_snapshot: Callable[[], dict[str, Any]]
    list_findings: Callable[[int, str | None, str | None, int | None], list[dict[str, Any]]]
    flush: Callable[[], Awaitable[dict[str, Any]]]
    ready: Callable[[], tuple[bool, str]]
    list_incidents: Callable[[str | None, int], list[dict[str, Any]]] | None = None
    get_incident: Callable[[str], dict[str, Any] | None] | None = None
    add_resolution: Callable[[str, str, str], dict[str, Any] | None] | None = None
    known_bad: Callable[[str | None], list[dict[str, Any]]] | None = None
    mark_normal: Callable[[str, int], bool] | None = None
    investigate: Callable[[int, int, str | None], dict[str, Any] | None] | None = None


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object body, or None when it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"query parameter {name!r} must be an integer"}),
                                 content_type="application/json") from e


class ApiServer:
    def __init__(self, config: ApiConfig, sources: ApiSources, registry: CollectorRegistry,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.sources = sources
        self.registry = registry
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._flush_lock = asyncio.Lock()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.add_routes([
            web.get("/", self.page),
            web.get("/health", self.health),
            web.get("/ready", self.ready),
            web.get("/metrics", self.metrics),
            web.get("/api/v1/graph", self.graph),
            web.get("/api/v1/findings", self.findings),
            web.post("/api/v1/flush", self.flush),
            web.get("/api/v1/incidents", self.incidents),
            web.get("/api/v1/incidents/{id}", self.incident),
            web.post("/api/v1/incidents/{id}/resolution", self.resolution),
            web.get("/api/v1/detect/known-bad", self.list_known_bad),
            web.post("/api/v1/detect/normal", self.normal),
            web.post("/api/v1/investigate", self.investigate),
        ])
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.config.auth_tokens and request.path.startswith("/api/"):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or token.strip() not in self.config.auth_tokens:
                return _error(401, "missing or invalid bearer token")
        return await handler(request)

    async def start(self) -> None:
        if self._runner is not None:
            return
        host, port = split_endpoint(self.config.endpoint)
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001 - aiohttp exposes no getter
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("HTTP API listening on %s:%s", host, self.port)

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers -------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.StreamResponse:
        if PAGE.exists():
            # The same policy as the page's meta tag, as a header too (defence in depth): inline code
            # only from the page itself, requests only to this origin, no framing.
            return web.FileResponse(PAGE, headers={
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            })
        return web.Response(text="llm-log-analyzer: see /api/v1/graph and /api/v1/findings\n")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ok, detail = self.sources.ready()
        return web.json_response({"ready": ok, "detail": detail}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def graph(self, request: web.Request) -> web.Response:
        snap = await asyncio.get_running_loop().run_in_executor(None, self.sources.graph_snapshot)
        return web.json_response(snap)

    async def findings(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 100) or 100
        if limit < 1 or limit > self.config.max_findings_limit:
            return _error(400, f"limit must be between 1 and {self.config.max_findings_limit}")
        since = _int_param(request, "since", None)
        event_name = request.query.get("event_name") or None
        service = request.query.get("service") or None
        rows = await asyncio.get_running_loop().run_in_executor(
            None, self.sources.list_findings, limit, event_name, service, since)
        return web.json_response(rows)

    async def flush(self, request: web.Request) -> web.Response:
        async with self._flush_lock:
            result = await self.sources.flush()
        return web.json_response(result)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a source callable off the event loop; its ValueError is the caller's fault (400)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except ValueError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(e)}),
                                     content_type="application/json") from e

    async def incidents(self, request: web.Request) -> web.Response:
        if self.sources.list_incidents is None:
            return _error(404, "incidents are not enabled")
        limit = _int_param(request, "limit", 100) or 100
        status = request.query.get("status") or None
        return web.json_response(await self._call(self.sources.list_incidents, status, limit))

    async def incident(self, request: web.Request) -> web.Response:
        if self.sources.get_incident is None:
            return _error(404, "incidents are not enabled")
        row = await self._call(self.sources.get_incident, request.match_info["id"])
        if row is None:
            return _error(404, f"no incident {request.match_info['id']!r}")
        return web.json_response(row)

    async def list_known_bad(self, request: web.Request) -> web.Response:
        if self.sources.known_bad is None:
            return _error(404, "the detector is not enabled")
        limit = _int_param(request, "limit", 100) or 100
        if limit < 1 or limit > self.config.max_findings_limit:
            return _error(400, f"limit must be between 1 and {self.config.max_findings_limit}")
        rows = await self._call(self.sources.known_bad, request.query.get("service") or None)
        return web.json_response(rows[:limit])

    async def normal(self, request: web.Request) -> web.Response:
        """`{"service": NAME, "template_id": ID}`: the operator says a remembered failure is normal."""
        if self.sources.mark_normal is None:
            return _error(404, "the detector is not enabled")
        body = await _json_object(request)
        if body is None or not isinstance(body.get("service"), str) \
                or not isinstance(body.get("template_id"), int) or isinstance(body.get("template_id"), bool):
            return _error(400, "body must be a JSON object with a string 'service' and an integer "
                          "'template_id'")
        service, tid = body["service"][:1024], body["template_id"]
        if not await self._call(self.sources.mark_normal, service, tid):
            return _error(404, f"service {service!r} remembers no failure template {tid}")
        return web.json_response({"service": service, "template_id": tid, "normal": True})

    async def investigate(self, request: web.Request) -> web.Response:
        """`{"start": NANOS, "end": NANOS, "service": NAME?}` (event time, unix nanoseconds): rank the
        root-cause candidates of that window and answer with the `rca.report` it stored and exported."""
        if self.sources.investigate is None:
            return _error(404, "root-cause analysis is not enabled")
        body = await _json_object(request)
        ok = body is not None and all(isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
                                      for k in ("start", "end"))
        if not ok or (body is not None and body.get("service") is not None
                      and not isinstance(body.get("service"), str)):
            return _error(400, "body must be a JSON object with integer 'start' and 'end' (unix nanoseconds) "
                          "and an optional string 'service'")
        assert body is not None
        service = body["service"][:1024] if body.get("service") else None
        row = await self._call(self.sources.investigate, body["start"], body["end"], service)
        if row is None:
            return _error(404, "no service shows any evidence in that window")
        return web.json_response(row)

    async def resolution(self, request: web.Request) -> web.Response:
        if self.sources.add_resolution is None:
            return _error(404, "incidents are not enabled")
        body = await _json_object(request)
        if body is None:
            return _error(400, "body must be JSON: {\"note\": \"...\", \"author\": \"...\"}")
        if not isinstance(body.get("note"), str) or not body["note"].strip():
            return _error(400, "field 'note' (non-empty string) is required")
        author = body.get("author") if isinstance(body.get("author"), str) else ""
        row = await self._call(self.sources.add_resolution, request.match_info["id"], body["note"], author)
        if row is None:
            return _error(404, f"no incident {request.match_info['id']!r}")
        return web.json_response(row)


__all__ = ["ApiConfig", "ApiServer", "ApiSources", "ConfigError", "split_endpoint"]
