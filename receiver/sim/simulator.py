"""A microservice shop simulated with the official OpenTelemetry SDK.

Every service has its own `TracerProvider` and `LoggerProvider` (resource `service.name`), real
span kinds (SERVER/CLIENT/PRODUCER/CONSUMER), `db.system`/`db.name` on database and cache client
spans, a span link from the queue consumer to the producer, and log records correlated with the
active trace/span ids.

Two ways to run it:
  * virtual time (`Simulator.run_virtual`): spans get explicit start/end timestamps from a virtual
    clock, are collected by the SDK's in-memory exporters and encoded with the SDK's own OTLP
    encoders (`encode_spans` / `encode_logs`) into `ExportTraceServiceRequest` /
    `ExportLogsServiceRequest`. Minutes of traffic take seconds; seeded, so deterministic.
  * live (`Simulator(..., endpoint="127.0.0.1:4317")` + `run_live`): the same spans and logs go
    through `BatchSpanProcessor`/`BatchLogRecordProcessor` and the SDK's OTLP gRPC exporters.

Topology (callers -> callees):
    frontend -> auth, recommendation, cart, inventory, checkout
    auth -> redis;  cart -> redis, inventory;  recommendation -> inventory
    inventory -> redis, postgres;  checkout -> cart, inventory, shipping, payment, postgres,
    kafka topic "orders" (producer) -> notification (consumer);  payment, shipping -> postgres
`postgres` and `redis` are not instrumented: they appear as virtual nodes through the client
spans (`peer.service`, `db.system`, `db.name`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode

from receiver.sim.faults import Fault

SERVICES = (
    "frontend",
    "auth",
    "recommendation",
    "cart",
    "inventory",
    "checkout",
    "payment",
    "shipping",
    "notification",
)
VIRTUAL = ("postgres", "redis")
ALL_NODES = SERVICES + VIRTUAL

SEV = {"DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17}
MS = 1_000_000


class SeededIdGenerator(IdGenerator):
    """Deterministic trace/span ids from a seeded RNG (the SDK's IdGenerator interface)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def generate_span_id(self) -> int:
        v = 0
        while v == 0:
            v = self._rng.getrandbits(64)
        return v

    def generate_trace_id(self) -> int:
        v = 0
        while v == 0:
            v = self._rng.getrandbits(128)
        return v

    def is_trace_id_random(self) -> bool:
        return True


class _Failure(Exception):
    """Raised inside a simulated handler: the current span fails with this message."""

    def __init__(self, message: str, exc_type: str = "ServiceError") -> None:
        super().__init__(message)
        self.exc_type = exc_type


@dataclass(slots=True)
class _Reply:
    end_ns: int
    error: bool = False
    bad_value: bool = False
    status_code: int = 200


@dataclass
class _Service:
    name: str
    version: str
    tracer: trace.Tracer
    logger: object
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider


@dataclass
class SimStats:
    requests: int = 0
    spans: int = 0
    logs: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Simulator:
    """The simulated shop. `faults` are injected at their `start_s` offsets.

    `endpoint` None -> virtual mode (in-memory SDK exporters, `run_virtual`);
    `endpoint` "host:port" -> live mode (OTLP gRPC exporters, `run_live`).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        faults: Sequence[Fault] = (),
        rate_per_s: float = 5.0,
        start_ns: int | None = None,
        endpoint: str | None = None,
        noise: bool = True,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s: must be > 0")
        self.seed = seed
        self.rng = random.Random(seed)
        self._ids = SeededIdGenerator(random.Random(seed * 7919 + 17))
        self.faults = list(faults)
        self.rate_per_s = rate_per_s
        self.noise = noise
        # default virtual start: a fixed, whole-minute instant an hour ago (historical event time)
        self.start_ns = start_ns if start_ns is not None else (int(time.time()) // 60 * 60 - 3600) * 10**9
        self.endpoint = endpoint
        self.stats = SimStats()
        self._now_s = 0.0  # current simulated offset, for fault activity
        self._span_mem = InMemorySpanExporter() if endpoint is None else None
        self._log_mem = InMemoryLogRecordExporter() if endpoint is None else None
        self._services: dict[str, _Service] = {}
        self._deployed: dict[str, bool] = {}
        for name in SERVICES:
            self._services[name] = self._make_service(name, "1.4.0")
        self._burst_until_s = -1.0

    # --- SDK plumbing --------------------------------------------------------------------
    def _make_service(self, name: str, version: str) -> _Service:
        resource = Resource.create(
            {
                "service.name": name,
                "service.namespace": "shop",
                "service.version": version,
                "service.instance.id": f"{name}-{version}-0",
                "deployment.environment.name": "sim",
            }
        )
        tp = TracerProvider(resource=resource, id_generator=self._ids)
        lp = LoggerProvider(resource=resource)
        if self.endpoint is None:
            assert self._span_mem is not None and self._log_mem is not None
            tp.add_span_processor(SimpleSpanProcessor(self._span_mem))
            lp.add_log_record_processor(SimpleLogRecordProcessor(self._log_mem))
        else:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            ep = self.endpoint if "://" in self.endpoint else f"http://{self.endpoint}"
            tp.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=ep, insecure=True), schedule_delay_millis=500)
            )
            lp.add_log_record_processor(
                BatchLogRecordProcessor(OTLPLogExporter(endpoint=ep, insecure=True),
                                        schedule_delay_millis=500)
            )
        return _Service(
            name=name,
            version=version,
            tracer=tp.get_tracer("shop.sim", "1.0"),
            logger=lp.get_logger("shop.sim", "1.0"),
            tracer_provider=tp,
            logger_provider=lp,
        )

    def shutdown(self) -> None:
        for s in self._services.values():
            s.tracer_provider.shutdown()
            s.logger_provider.shutdown()

    def force_flush(self) -> None:
        for s in self._services.values():
            s.tracer_provider.force_flush()
            s.logger_provider.force_flush()

    # --- fault helpers -------------------------------------------------------------------
    def _active(self, kind: str, service: str, caller: str = "") -> Fault | None:
        for f in self.faults:
            if f.kind == kind and f.service == service and (not caller or f.caller in (caller, "*")) \
                    and f.active(self._now_s):
                return f
        return None

    def _svc(self, name: str) -> _Service:
        if self._active("bad_deploy", name) and not self._deployed.get(name):
            # the bad deploy: a new version of the service starts (new resource version)
            self._deployed[name] = True
            self._services[name] = self._make_service(name, "1.5.0")
        return self._services[name]

    # --- emission ------------------------------------------------------------------------
    def _log(self, service: str, t_ns: int, sev: str, body: str, span: trace.Span | None,
             **attrs: str | int | float) -> None:
        svc = self._svc(service)
        ctx = trace.set_span_in_context(span) if span is not None else None
        svc.logger.emit(  # type: ignore[attr-defined]
            timestamp=t_ns,
            observed_timestamp=t_ns,
            context=ctx,
            severity_number=_sev_number(sev),
            severity_text=sev,
            body=body,
            attributes=attrs or None,
        )
        self.stats.logs += 1

    # --- the simulated request handling --------------------------------------------------
    def _lognormal_ms(self, median_ms: float, sigma: float = 0.35) -> float:
        return median_ms * math.exp(self.rng.gauss(0.0, sigma))

    def _serve(self, service: str, op: str, start_ns: int, parent: trace.Span | None,
               handler: Callable[[_Ctx], None], *, kind: SpanKind = SpanKind.SERVER,
               links: Sequence[Link] = (), attrs: dict[str, str | int] | None = None) -> _Reply:
        svc = self._svc(service)
        parent_ctx = trace.set_span_in_context(parent) if parent is not None else None
        span_attrs: dict[str, str | int] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": op}
        if attrs:
            span_attrs.update(attrs)
        span = svc.tracer.start_span(op, context=parent_ctx, kind=kind, attributes=span_attrs,
                                     links=list(links), start_time=start_ns)
        self.stats.spans += 1
        ctx = _Ctx(self, service, op, span, start_ns)
        reply = _Reply(end_ns=start_ns)
        try:
            ctx.preamble()
            handler(ctx)
            ctx.epilogue()
        except _Failure as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.add_event("exception", {"exception.type": exc.exc_type, "exception.message": str(exc)},
                           timestamp=ctx.t)
            reply.error = True
            reply.status_code = 500
            self.stats.errors += 1
        if not reply.error and ctx.bad_value:
            reply.bad_value = True
        ctx.t += int(self._lognormal_ms(0.2) * MS)
        span.end(end_time=ctx.t)
        reply.end_ns = ctx.t
        return reply

    def request(self, t_ns: int) -> None:
        """One user request entering the gateway at virtual time `t_ns`."""
        self.stats.requests += 1
        r = self.rng.random()
        if r < 0.33:
            route, h = "GET /", _home
        elif r < 0.60:
            route, h = "GET /product/{id}", _product
        elif r < 0.80:
            route, h = "POST /cart", _add_cart
        else:
            route, h = "POST /checkout", _checkout
        self.stats.by_kind[route] = self.stats.by_kind.get(route, 0) + 1
        self._serve("frontend", route, t_ns, None, h,
                    attrs={"http.request.method": route.split()[0], "http.route": route.split()[1]})

    def _rate_multiplier(self) -> float:
        t = self._now_s
        m = 1.0 + 0.35 * math.sin(2 * math.pi * t / 240.0)  # slow traffic swing
        if self.noise:
            if self._burst_until_s < t and self.rng.random() < 0.004:
                self._burst_until_s = t + self.rng.uniform(5, 15)
            if t < self._burst_until_s:
                m *= 1.8
        return m

    def _arrivals(self, t0_s: float, t1_s: float) -> list[float]:
        out: list[float] = []
        t = t0_s
        while True:
            self._now_s = t
            rate = self.rate_per_s * self._rate_multiplier()
            t += self.rng.expovariate(rate)
            if t >= t1_s:
                return out
            out.append(t)

    # --- driving -------------------------------------------------------------------------
    def _generate(self, t0_s: float, t1_s: float) -> None:
        for t in self._arrivals(t0_s, t1_s):
            self._now_s = t
            self.request(self.start_ns + int(t * 1e9))
        self._now_s = t1_s

    def take(self) -> tuple[ExportTraceServiceRequest, ExportLogsServiceRequest]:
        """(virtual mode) Encode and clear everything the SDK exporters collected so far."""
        if self._span_mem is None or self._log_mem is None:
            raise RuntimeError("take() is for virtual mode (no endpoint)")
        spans = self._span_mem.get_finished_spans()
        logs = self._log_mem.get_finished_logs()
        self._span_mem.clear()
        self._log_mem.clear()
        return encode_spans(spans), encode_logs(logs)

    def run_virtual(self, duration_s: float, step_s: float = 5.0
                    ) -> Iterator[tuple[float, ExportTraceServiceRequest, ExportLogsServiceRequest]]:
        """Simulate `duration_s` seconds of traffic; yield (offset_s at step end, traces, logs)
        once per `step_s` of simulated time."""
        if step_s <= 0:
            raise ValueError("step_s: must be > 0")
        t = self._now_s
        end = t + duration_s
        while t < end - 1e-9:
            t1 = min(end, t + step_s)
            self._generate(t, t1)
            traces, logs = self.take()
            yield t1, traces, logs
            t = t1

    def run_live(self, duration_s: float, speed: float = 1.0, tick_s: float = 0.25,
                 on_tick: Callable[[float], bool | None] | None = None) -> None:
        """(live mode) Generate traffic for `duration_s` simulated seconds, `speed` simulated
        seconds per wall second; timestamps follow the virtual clock anchored at `start_ns`.
        `on_tick(offset_s)` returning True stops early."""
        if self.endpoint is None:
            raise RuntimeError("run_live() needs an endpoint")
        wall0 = time.monotonic()
        t = self._now_s
        end = t + duration_s
        t_start = t
        while t < end:
            # at most one tick of simulated time per step, so on_tick runs regularly even when
            # generation cannot keep up with `speed`
            target = min(end, (time.monotonic() - wall0) * speed + t_start, t + speed * tick_s)
            if target > t:
                self._generate(t, target)
                t = target
            if on_tick is not None and on_tick(t):
                break
            time.sleep(tick_s)
        self.force_flush()


def _sev_number(sev: str):  # -> SeverityNumber
    from opentelemetry._logs import SeverityNumber

    return SeverityNumber(SEV[sev])


class _Ctx:
    """The work of one span in one service: a time cursor plus helpers to call others."""

    def __init__(self, sim: Simulator, service: str, op: str, span: trace.Span, start_ns: int) -> None:
        self.sim = sim
        self.service = service
        self.op = op
        self.span = span
        self.t = start_ns
        self.bad_value = False

    # local work ---------------------------------------------------------------------------
    def work(self, median_ms: float, sigma: float = 0.35) -> None:
        sim = self.sim
        ms = sim._lognormal_ms(median_ms, sigma)
        f = sim._active("cpu", self.service)
        if f:
            ms *= 1.0 + 3.0 * f.intensity * sim.rng.uniform(0.8, 1.2)
        self.t += int(ms * MS)

    def log(self, sev: str, body: str, **attrs: str | int | float) -> None:
        self.sim._log(self.service, self.t, sev, body, self.span, **attrs)

    def preamble(self) -> None:
        sim, svc = self.sim, self.service
        bad = sim._active("bad_deploy", svc)
        if bad and sim.rng.random() < min(1.0, 0.35 * bad.intensity):
            self.work(2.0)
            self.log("ERROR", f"failed to deserialize request payload: unknown field 'discount_v2' "
                              f"(schema v{sim.rng.randint(7, 9)})", **{"code.function": self.op})
            raise _Failure("SerializationException: unknown field 'discount_v2'", "SerializationException")
        f = sim._active("resource_exhaustion", svc)
        if f:
            waiting = sim.rng.randint(20, 80)
            if sim.rng.random() < 0.5:
                self.log("WARN", f"connection pool exhausted: active=50 idle=0 waiting={waiting}")
            wait_ms = sim._lognormal_ms(250.0 * f.intensity, 0.5)
            if wait_ms > 600:
                self.t += int(600 * MS)
                self.log("ERROR", "timeout acquiring connection from pool after 600ms (max=50)")
                raise _Failure("PoolTimeoutException: timeout acquiring connection after 600ms",
                               "PoolTimeoutException")
            self.t += int(wait_ms * MS)
            if sim.rng.random() < 0.2:
                self.log("WARN", f"GC overhead high: heap used {sim.rng.randint(92, 99)}% of 2048MB")
        exc = sim._active("exception", svc)
        if exc and sim.rng.random() < min(1.0, 0.4 * exc.intensity):
            self.work(1.0)
            field_name = sim.rng.choice(["customer", "address", "currency", "sku"])
            self.log("ERROR", f"unhandled exception in {self.op}: NullPointerException: "
                              f"'{field_name}' is null", **{"exception.type": "NullPointerException"})
            raise _Failure(f"NullPointerException: '{field_name}' is null", "NullPointerException")

    def epilogue(self) -> None:
        sim, svc = self.sim, self.service
        # wrong return value: the service answers normally but with a wrong payload
        for f in sim.faults:
            if f.kind == "wrong_value" and f.service == svc and f.active(sim._now_s) \
                    and sim.rng.random() < 0.45 * min(1.0, f.intensity):
                self.bad_value = True

    # calls --------------------------------------------------------------------------------
    def call(self, callee: str, op: str, handler: Callable[[_Ctx], None], *, optional: bool = False) -> None:
        sim = self.sim
        tracer = sim._svc(self.service).tracer
        parent_ctx = trace.set_span_in_context(self.span)
        client = tracer.start_span(f"{callee}/{op}", context=parent_ctx, kind=SpanKind.CLIENT,
                                   attributes={"rpc.system": "grpc", "rpc.service": callee, "rpc.method": op,
                                               "server.address": callee, "server.port": 8080},
                                   start_time=self.t)
        sim.stats.spans += 1
        net_ms = sim._lognormal_ms(0.6, 0.3)
        f = sim._active("network_delay", callee, self.service)
        if f:
            net_ms += sim._lognormal_ms(180.0 * f.intensity, 0.25)
        req_ns = self.t + int(net_ms / 2 * MS)
        reply = sim._serve(callee, op, req_ns, client, handler)
        self.t = reply.end_ns + int(net_ms / 2 * MS)
        if reply.error:
            client.set_attribute("rpc.grpc.status_code", 13)
            client.set_status(Status(StatusCode.ERROR, f"INTERNAL: {callee} returned an error"))
            client.end(end_time=self.t)
            if optional:
                self.log("WARN", f"{callee} unavailable, continuing without it ({op})")
                return
            self.log("ERROR", f"call to {callee} {op} failed: rpc error code=INTERNAL status=500",
                     **{"peer.service": callee})
            raise _Failure(f"upstream {callee} failed: INTERNAL", "UpstreamException")
        client.set_attribute("rpc.grpc.status_code", 0)
        client.end(end_time=self.t)
        if reply.bad_value:
            value = sim.rng.choice([-1, 0, -100])
            self.work(0.3)
            self.log("ERROR", f"invalid response from {callee} {op}: amount={value} violates amount > 0",
                     **{"peer.service": callee})
            raise _Failure(f"invalid response from {callee}: amount={value}", "ValidationException")

    def db(self, operation: str, table: str) -> None:
        sim = self.sim
        tracer = sim._svc(self.service).tracer
        span = tracer.start_span(
            f"{operation} shop.{table}",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "postgresql",
                "db.system.name": "postgresql",
                "db.name": "shop",
                "db.namespace": "shop",
                "db.operation.name": operation,
                "db.collection.name": table,
                "server.address": "postgres",
                "server.port": 5432,
                "peer.service": "postgres",
            },
            start_time=self.t,
        )
        sim.stats.spans += 1
        if sim._active("db_down", "postgres"):
            self.t += int(sim._lognormal_ms(3.0, 0.3) * MS)
            msg = "could not connect to server: Connection refused (host=postgres port=5432)"
            span.set_status(Status(StatusCode.ERROR, msg))
            span.add_event("exception", {"exception.type": "OperationalError", "exception.message": msg},
                           timestamp=self.t)
            span.end(end_time=self.t)
            self.log("ERROR", f"db query {operation} {table} failed: {msg}", **{"db.system": "postgresql"})
            raise _Failure(f"database error: {msg}", "OperationalError")
        self.t += int(sim._lognormal_ms(2.5, 0.4) * MS)
        span.end(end_time=self.t)

    def cache(self, operation: str, key: str) -> bool:
        sim = self.sim
        tracer = sim._svc(self.service).tracer
        span = tracer.start_span(
            f"{operation}",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={"db.system": "redis", "db.system.name": "redis", "db.name": "0", "db.namespace": "0",
                        "db.operation.name": operation, "server.address": "redis", "server.port": 6379,
                        "peer.service": "redis"},
            start_time=self.t,
        )
        sim.stats.spans += 1
        self.t += int(sim._lognormal_ms(0.4, 0.3) * MS)
        span.end(end_time=self.t)
        return sim.rng.random() < 0.65

    def publish(self, topic: str, consumer: str, handler: Callable[[_Ctx], None]) -> None:
        sim = self.sim
        tracer = sim._svc(self.service).tracer
        prod = tracer.start_span(
            f"{topic} publish",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "messaging.operation.type": "publish", "server.address": "kafka"},
            start_time=self.t,
        )
        sim.stats.spans += 1
        self.t += int(sim._lognormal_ms(1.0, 0.3) * MS)
        prod.end(end_time=self.t)
        lag_ns = int(sim._lognormal_ms(40.0, 0.6) * MS)
        pctx = prod.get_span_context()
        sim._serve(consumer, f"{topic} process", self.t + lag_ns, NonRecordingSpan(pctx), handler,
                   kind=SpanKind.CONSUMER, links=[Link(pctx, {"messaging.operation.type": "process"})],
                   attrs={"messaging.system": "kafka", "messaging.destination.name": topic,
                          "messaging.operation.type": "process"})


# --- handlers (one per operation) -----------------------------------------------------------
def _auth_validate(c: _Ctx) -> None:
    c.work(1.2)
    c.cache("GET", "session")
    c.work(0.3)


def _stock_log(c: _Ctx) -> None:
    rng = c.sim.rng
    c.log("INFO", f"stock check sku=SKU-{rng.randint(1000, 9999)} available={rng.randint(0, 300)}")


def _inventory_list(c: _Ctx) -> None:
    c.work(2.0)
    if not c.cache("GET", "products"):
        c.db("SELECT", "products")
    c.work(1.0)
    c.log("INFO", f"listed {c.sim.rng.randint(8, 24)} products for page {c.sim.rng.randint(1, 5)}")


def _inventory_get(c: _Ctx) -> None:
    c.work(1.5)
    if not c.cache("GET", "product"):
        c.db("SELECT", "products")
    _stock_log(c)


def _inventory_check(c: _Ctx) -> None:
    c.work(1.5)
    c.db("SELECT", "stock")
    _stock_log(c)


def _inventory_reserve(c: _Ctx) -> None:
    c.work(2.0)
    c.db("UPDATE", "stock")
    c.log("INFO", f"reserved {c.sim.rng.randint(1, 4)} units of SKU-{c.sim.rng.randint(1000, 9999)}")


def _recommend(c: _Ctx) -> None:
    rng = c.sim.rng
    c.work(6.0)
    for _ in range(rng.randint(3, 6)):  # the chatty service
        c.log("DEBUG", f"scoring candidate product SKU-{rng.randint(1000, 9999)} score={rng.random():.3f}")
    c.call("inventory", "ListProducts", _inventory_list)
    if c.sim.noise and rng.random() < 0.004:
        c.log("ERROR", "feature store lookup failed for user segment, using defaults")
    c.work(2.0)
    c.log("INFO", f"returned {rng.randint(3, 8)} recommendations")


def _cart_get(c: _Ctx) -> None:
    c.work(1.0)
    c.cache("GET", "cart")
    c.log("INFO", f"cart {c.sim.rng.randint(10000, 99999)} loaded with {c.sim.rng.randint(0, 9)} items")


def _cart_add(c: _Ctx) -> None:
    c.work(1.2)
    c.call("inventory", "CheckStock", _inventory_check)
    c.cache("SET", "cart")
    c.log("INFO", f"added SKU-{c.sim.rng.randint(1000, 9999)} to cart {c.sim.rng.randint(10000, 99999)}")


def _cart_empty(c: _Ctx) -> None:
    c.work(0.6)
    c.cache("DEL", "cart")


def _payment_charge(c: _Ctx) -> None:
    rng = c.sim.rng
    c.work(8.0)
    if c.sim.noise and rng.random() < 0.01:  # business errors: a steady baseline of failing traces
        c.log("WARN", f"card declined: insufficient funds (card ****{rng.randint(1000, 9999)})")
        raise _Failure("card declined", "CardDeclinedException")
    c.db("INSERT", "payments")
    c.work(2.0)
    c.log("INFO", f"charged {rng.randint(5, 500)}.{rng.randint(0, 99):02d} USD "
                  f"card ****{rng.randint(1000, 9999)} txn=tx-{rng.getrandbits(32):08x}")


def _shipping_quote(c: _Ctx) -> None:
    rng = c.sim.rng
    c.work(3.0)
    c.db("SELECT", "rates")
    if c.sim.noise and rng.random() < 0.01:
        c.log("WARN", "rate provider timeout, using cached rates")
    c.log("INFO", f"quote for zip {rng.randint(10000, 99999)}: {rng.randint(3, 40)}.99 USD")


def _notify(c: _Ctx) -> None:
    c.work(4.0)
    c.log("INFO", f"order confirmation email queued for order ord-{c.sim.rng.getrandbits(24):06x}")


def _place_order(c: _Ctx) -> None:
    rng = c.sim.rng
    c.work(3.0)
    c.call("cart", "GetCart", _cart_get)
    c.call("inventory", "ReserveStock", _inventory_reserve)
    c.call("shipping", "GetQuote", _shipping_quote)
    c.call("payment", "Charge", _payment_charge)
    c.db("INSERT", "orders")
    c.publish("orders", "notification", _notify)
    c.call("cart", "EmptyCart", _cart_empty)
    c.work(1.0)
    c.log("INFO", f"order ord-{rng.getrandbits(24):06x} placed total={rng.randint(5, 500)}.00 USD")


def _frontend_common(c: _Ctx) -> None:
    c.work(1.0)
    c.call("auth", "ValidateToken", _auth_validate)


def _access_log(c: _Ctx, route: str) -> None:
    c.log("INFO", f"{route} 200 {(c.t - c.span.start_time) / MS:.1f}ms")  # type: ignore[attr-defined]


def _home(c: _Ctx) -> None:
    _frontend_common(c)
    c.call("recommendation", "ListRecommendations", _recommend, optional=True)
    c.call("cart", "GetCart", _cart_get)
    c.work(2.0)
    _access_log(c, "GET /")


def _product(c: _Ctx) -> None:
    _frontend_common(c)
    c.call("inventory", "GetProduct", _inventory_get)
    c.call("recommendation", "ListRecommendations", _recommend, optional=True)
    c.work(2.0)
    _access_log(c, "GET /product")


def _add_cart(c: _Ctx) -> None:
    _frontend_common(c)
    c.call("cart", "AddItem", _cart_add)
    c.work(1.0)
    _access_log(c, "POST /cart")


def _checkout(c: _Ctx) -> None:
    _frontend_common(c)
    try:
        c.call("checkout", "PlaceOrder", _place_order)
    except _Failure:
        c.log("ERROR", "POST /checkout 500: checkout failed, order not placed")
        raise
    c.work(1.5)
    _access_log(c, "POST /checkout")
