"""The composition root: the only module that knows the whole pipeline.

    otlp ──▶ queue ──▶ graph, signals                       (spans)
                  └──▶ logs (redact ▶ mine ▶ windows) ──▶ detect (tier 0) ──▶ llm (tier 1/2) ──▶ rca
    rca ──▶ findings fan-out: store, export (OTLP), live watchers (gRPC API)
    api (HTTP) and the project's gRPC API read the graph, the store and the incidents.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from prometheus_client import CollectorRegistry

from receiver.api.grpc_service import AnalyzerServicer, FindingsBroadcaster, add_analyzer_service
from receiver.api.http import ApiServer, ApiSources
from receiver.config import AppConfig
from receiver.detect.tier0 import Assessment, Tier0Detector, Tier0Only
from receiver.export.exporter import FindingsExporter
from receiver.graph.graph import ServiceGraph
from receiver.logs.stage import LogsStage
from receiver.model import Finding, FindingsFanout
from receiver.otlp.receiver import OtlpReceiver
from receiver.pipeline.queue import BoundedQueue
from receiver.pipeline.spanproc import SpanProcess
from receiver.rca.incident_api import IncidentApi
from receiver.rca.incidents import IncidentTracker, graph_connected
from receiver.rca.memory import IncidentMemory
from receiver.rca.signals import SpanSignals
from receiver.rca.stage import RcaStage
from receiver.store.store import Store

log = logging.getLogger(__name__)


class SerializedLogs:
    """The log stages are single-threaded: the queue worker, the ticker and flush all go through
    this lock, so windows and baselines are never touched by two threads at once."""

    def __init__(self, stage: LogsStage) -> None:
        self.stage = stage
        self.lock = threading.Lock()

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        with self.lock:
            self.stage.consume_logs(request)

    def tick(self) -> None:
        with self.lock:
            self.stage.tick()

    def flush(self) -> None:
        with self.lock:
            self.stage.flush()


class LateBound:
    """A findings consumer whose target is set after construction (the LLM analyst hands findings
    to the RCA stage, which itself calls the analyst for explanations)."""

    def __init__(self) -> None:
        self.target: Any = None

    def consume_findings(self, findings: Sequence[Finding]) -> None:
        self.target.consume_findings(findings)


class AssessmentCounter:
    """Counts what tier 0 hands on (for /api/v1/flush's answer) and forwards it."""

    def __init__(self, next_stage: Any) -> None:
        self.next = next_stage
        self.windows = 0
        self.flagged = 0

    def consume_assessments(self, assessments: Sequence[Assessment]) -> None:
        self.windows += sum(1 for a in assessments if not a.summary)  # collapse summaries are no windows
        self.flagged += sum(1 for a in assessments if a.flagged)
        self.next.consume_assessments(assessments)


class App:
    def __init__(self, config: AppConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        data = config.data_path
        data.mkdir(parents=True, exist_ok=True)
        self.state_dir = data / "state"

        # findings out: persisted first, then exported and streamed
        self.store = Store(config.store, reg)
        self.exporter = FindingsExporter(config.export, reg)
        self.broadcaster = FindingsBroadcaster(registry=reg)
        # spans: the graph and the RCA signals, in a child process unless spanproc.enabled is false
        self.spans: SpanProcess | None = None
        if config.spanproc.enabled:
            self.spans = SpanProcess(config.graph, config.signals, reg, config.spanproc)
            self.graph: Any = self.spans.graph_now  # reads answered at once; updates stay ordered
            self.signals: Any = self.spans.signals_now
            traces_consumers: list[Any] = [self.spans]
            logs_consumers: list[Any] = [self.spans]  # the span signals read WARN+ log records too
        else:
            self.graph = ServiceGraph(config.graph, reg)
            self.signals = SpanSignals(config.signals, reg)
            traces_consumers = [self.graph, self.signals]
            logs_consumers = [self.signals]

        # incidents and memory: the tracker sees every finding right after the store
        self.memory = IncidentMemory(config.memory, reg)
        self.incidents = IncidentTracker(
            config.incidents, self.store, reg, memory=self.memory,
            connected=graph_connected(self.graph.digraph, max_hops=config.incidents.connect_hops))
        self.incident_api = IncidentApi(self.incidents)
        self.findings_out = FindingsFanout([self.store, self.incidents, self.exporter, self.broadcaster])

        # analysis chain, built back to front
        to_rca = LateBound()
        self.analyst = self._build_analyst(to_rca)
        self.rca = RcaStage(config.rca, self.graph, self.signals, self.findings_out,
                            analyst=self.analyst, incidents=self.incidents, registry=reg)
        to_rca.target = self.rca
        tier_after_detect: Any = self.analyst if self.analyst is not None else Tier0Only(self.rca)
        self.assessments = AssessmentCounter(tier_after_detect)
        self.detector = Tier0Detector(config.detect, self.assessments, reg)
        self.logs = SerializedLogs(LogsStage(config.logs, self.detector, reg))

        self.queue = BoundedQueue(config.queue, traces_consumers, [self.logs, *logs_consumers], reg)
        self.otlp = OtlpReceiver(config.otlp, self.queue, self.queue, reg)
        self.grpc_api = AnalyzerServicer(self._list_findings_objects, self.graph.snapshot, self.broadcaster)
        self.otlp.add_grpc_service(lambda server: add_analyzer_service(server, self.grpc_api))
        self.api = ApiServer(config.api, ApiSources(
            graph_snapshot=self.graph.snapshot,
            list_findings=self._list_findings,
            flush=self.flush,
            ready=self._ready,
            list_incidents=self.incident_api.list_incidents,
            get_incident=self.incident_api.get_incident,
            add_resolution=self.incident_api.add_resolution,
            known_bad=self.detector.known_bad,
            mark_normal=self.detector.mark_normal,
            investigate=self._investigate,
        ), reg)
        self._ticker: asyncio.Task[None] | None = None
        self._llm_start: asyncio.Future[None] | None = None
        self._llm_state = "LLM backend starting"
        self._started = False
        self._last_save = time.monotonic()

    # --- construction helpers ---------------------------------------------------------------
    def _build_analyst(self, findings_consumer: LateBound) -> Any:
        from receiver.llm.analyst import LlmAnalyst
        from receiver.llm.config import LlmConfig

        llm = LlmConfig.from_flag(self.config.server.llm, self.config.llm)  # None: --llm off
        if llm is None:
            return None
        return LlmAnalyst(llm, findings_consumer, self.registry, known_services=self._known_services,
                          audit=self.store.record_llm_call)

    def _known_services(self) -> list[str]:
        return [n["id"] for n in self.graph.snapshot()["nodes"]] + self.detector.services()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        loop = asyncio.get_running_loop()
        if self.analyst is not None and self.config.server.llm == "local":
            # A missing or corrupt model is an error before anything starts, naming the install command.
            from receiver.llm.modelfile import ensure_model

            await loop.run_in_executor(None, ensure_model, self.config.llm.local.data_dir or None)
        self._started = True
        self._load_state()
        self.store.start()
        self.incidents.start()  # reloads open incidents and the incident memory
        self.exporter.start()
        if self.spans is not None:
            await loop.run_in_executor(None, self.spans.start)
        else:
            self.graph.start()
            self.signals.start()
        self.rca.start()
        self.queue.start()
        await self.otlp.start()
        await self.api.start()
        self._ticker = asyncio.create_task(self._tick_loop())
        if self.analyst is not None:
            # The model server loads in the background; ingest and tier 0 run meanwhile, /ready says so.
            self._llm_start = loop.run_in_executor(None, self._start_analyst)
        log.info("llm-log-analyzer ready: OTLP gRPC %s, OTLP/HTTP %s, API %s, LLM %s",
                 self.otlp.grpc_port, self.otlp.http_port, self.api.port, self.config.server.llm)

    async def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        await self.otlp.shutdown()  # stop accepting first
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown_sync)
        await self.api.shutdown()

    def _start_analyst(self) -> None:
        try:
            self.analyst.start()
            self._llm_state = "ok"
        except Exception as e:  # tier 0 keeps working; /ready and the log say why
            self._llm_state = f"LLM backend failed to start: {e}"
            log.error("%s", self._llm_state)

    def _shutdown_sync(self) -> None:
        self.queue.shutdown()  # delivers what was accepted
        with self.logs.lock:
            self.logs.stage.flush()  # analyse what is still open before leaving
        self._save_state()
        self.rca.shutdown()
        if self.analyst is not None:
            self.analyst.shutdown()
        if self.spans is not None:
            self.spans.shutdown()
        else:
            self.graph.shutdown()
            self.signals.shutdown()
        self.broadcaster.shutdown()
        self.exporter.shutdown()
        self.incidents.shutdown()
        self.store.shutdown()

    # --- periodic work -----------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.server.tick_interval_s)
            try:
                await loop.run_in_executor(None, self._tick)
            except Exception:  # a bad tick must not stop the next one
                log.exception("periodic housekeeping failed")

    def _tick(self) -> None:
        self.logs.tick()  # idle flush of silent services' windows
        if time.monotonic() - self._last_save >= self.config.server.state_save_interval_s:
            self._save_state()

    def _save_state(self) -> None:
        self._last_save = time.monotonic()
        try:
            with self.logs.lock:
                self.logs.stage.save_state(str(self.state_dir))  # templates and detector baselines
        except OSError:
            log.exception("saving state to %s failed", self.state_dir)

    def _load_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        loaded = self.logs.stage.load_state(str(self.state_dir))
        if loaded:
            log.info("restored state from %s: %s", self.state_dir, loaded)

    # --- flush: close everything open and analyse it now --------------------------------------
    async def flush(self) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self.flush_sync)

    def flush_sync(self, timeout_s: float = 120.0) -> dict[str, Any]:
        t0 = time.monotonic()
        before_windows, before_flagged = self.assessments.windows, self.assessments.flagged
        drained = self.queue.drain(timeout_s)
        self.graph.flush()
        self.signals.flush()
        self.logs.flush()
        if self.analyst is not None:
            self.analyst.drain(timeout_s)
        self.rca.flush()
        return {
            "drained": drained,
            "windows": self.assessments.windows - before_windows,
            "flagged": self.assessments.flagged - before_flagged,
            "seconds": round(time.monotonic() - t0, 3),
        }

    # --- API sources --------------------------------------------------------------------------
    def _ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if self.spans is not None:
            ok, detail = self.spans.ready()
            if not ok:
                return False, detail
        if self.analyst is not None and self._llm_state != "ok":
            return False, self._llm_state
        return True, "ok"

    def _list_findings_objects(self, limit: int, event_name: str | None, since_ns: int | None
                               ) -> list[Finding]:
        return self.store.list_findings(limit=limit, event_name=event_name, since_ns=since_ns)

    def _investigate(self, start_ns: int, end_ns: int, service: str | None) -> dict[str, Any] | None:
        rep = self.rca.investigate_report(start_ns, end_ns, service)
        return rep.to_dict() if rep is not None else None

    def _list_findings(self, limit: int, event_name: str | None, service: str | None,
                       since_ns: int | None) -> list[dict[str, Any]]:
        found = self.store.list_findings(limit=limit, event_name=event_name, since_ns=since_ns,
                                         service=service)
        return [f.to_dict() for f in found]


def build_app(config: AppConfig, registry: CollectorRegistry | None = None) -> App:
    return App(config, registry)
