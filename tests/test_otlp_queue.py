"""BoundedQueue: capacity in items, refusal (never a silent drop), failing consumers, drain, shutdown."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError, RetryableError
from receiver.pipeline.queue import BoundedQueue, QueueConfig
from tests.otlp_support import Sink


def _traces(n: int, tag: str = "s") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        ss.spans.add(name=f"{tag}{i}", trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"))
    return req


def _logs(n: int) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for i in range(n):
        sl.log_records.add(body={"string_value": f"line {i}"})
    return req


class Gate:
    """A consumer that blocks until released, so the queue can be filled deterministically."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.seen: list[str] = []

    def consume_traces(self, request: ExportTraceServiceRequest) -> None:
        self.entered.set()
        self.open.wait(10)
        self.seen.extend(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        self.entered.set()
        self.open.wait(10)


def _metric(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def test_capacity_counts_items_and_refuses_when_full() -> None:
    reg = CollectorRegistry()
    gate = Gate()
    q = BoundedQueue(QueueConfig(capacity_items=10, retry_after_s=0.3), [gate], [gate], reg)
    q.start()
    try:
        q.consume_traces(_traces(6, "a"))
        assert gate.entered.wait(5)  # the worker holds request a; its 6 items still count
        q.consume_logs(_logs(4))  # 6 + 4 = 10: exactly full
        assert q.size == 10
        assert _metric(reg, "llm_log_analyzer_queue_size_items") == 10
        with pytest.raises(RetryableError) as ei:
            q.consume_traces(_traces(1, "b"))
        assert ei.value.retry_after_s == 0.3
        assert "full (10 of 10 items," in str(ei.value)
        assert _metric(reg, "llm_log_analyzer_queue_refused_items_total", signal="traces") == 1
        gate.open.set()
        assert q.drain(5)
        assert q.size == 0
        q.consume_traces(_traces(1, "c"))  # room again
        assert q.drain(5)
        assert gate.seen == [f"a{i}" for i in range(6)] + ["c0"]
        assert _metric(reg, "llm_log_analyzer_queue_delivered_items_total", signal="logs") == 4
    finally:
        gate.open.set()
        q.shutdown()


def test_request_larger_than_capacity_is_accepted_only_into_an_empty_queue() -> None:
    gate = Gate()
    q = BoundedQueue(QueueConfig(capacity_items=5), [gate], [])
    q.start()
    try:
        q.consume_traces(_traces(8, "big"))  # empty queue: accepted (else it could never be)
        assert gate.entered.wait(5)
        with pytest.raises(RetryableError):
            q.consume_traces(_traces(1))
        gate.open.set()
        assert q.drain(5)
        assert len(gate.seen) == 8
    finally:
        gate.open.set()
        q.shutdown()


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def consume_traces(self, request: ExportTraceServiceRequest) -> None:
        self.calls += 1
        raise ValueError("downstream bug")


def test_failing_consumer_is_counted_and_never_kills_the_worker() -> None:
    reg = CollectorRegistry()
    bad, sink = Exploding(), Sink()
    q = BoundedQueue(QueueConfig(capacity_items=100), [bad, sink], [sink], reg)
    q.start()
    try:
        for i in range(5):
            q.consume_traces(_traces(2, f"r{i}-"))
        q.consume_logs(_logs(3))
        assert q.drain(5)
        assert bad.calls == 5
        assert len(sink.spans()) == 10  # the next consumer still got every request
        assert len(sink.log_records()) == 3
        assert (
            _metric(
                reg, "llm_log_analyzer_queue_consumer_errors_total", signal="traces", consumer="Exploding"
            )
            == 5
        )
    finally:
        q.shutdown()


def test_not_running_refuses_and_shutdown_delivers_everything_queued() -> None:
    sink = Sink(delay_s=0.01)
    q = BoundedQueue(QueueConfig(capacity_items=1000), [sink], [sink])
    with pytest.raises(RetryableError, match="not running"):
        q.consume_traces(_traces(1))
    q.shutdown()  # safe without start
    q.start()
    q.start()  # idempotent
    for i in range(20):
        q.consume_traces(_traces(3, f"x{i}-"))
    q.shutdown()
    assert len(sink.spans()) == 60
    with pytest.raises(RetryableError):
        q.consume_logs(_logs(1))
    q.shutdown()  # idempotent


def test_drain_waits_only_for_what_was_enqueued_before_the_call() -> None:
    gate = Gate()
    q = BoundedQueue(QueueConfig(capacity_items=100, workers=2), [gate], [])
    q.start()
    try:
        q.consume_traces(_traces(1, "first"))
        assert gate.entered.wait(5)
        assert q.drain(0.2) is False  # blocked downstream: drain times out, reports it
        gate.open.set()
        assert q.drain(5) is True
        assert gate.seen == ["first0"]
        assert q.drain(0) is True  # nothing outstanding
    finally:
        gate.open.set()
        q.shutdown()


def test_empty_requests_are_not_queued() -> None:
    sink = Sink()
    q = BoundedQueue(QueueConfig(), [sink], [sink])
    q.start()
    try:
        q.consume_traces(ExportTraceServiceRequest())
        assert q.drain(5)
        assert sink.traces == []
    finally:
        q.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"capacity_items": 0}, "queue.capacity_items"),
        ({"capacity_bytes": 0}, "queue.capacity_bytes"),
        ({"workers": 0}, "queue.workers"),
        ({"retry_after_s": -1}, "queue.retry_after_s"),
        ({"shutdown_timeout_s": -1}, "queue.shutdown_timeout_s"),
    ],
)
def test_queue_config_validation(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        QueueConfig(**kwargs).validate()
    assert str(ei.value).startswith(key)


def test_enqueue_while_drain_waits_still_wakes_a_worker() -> None:
    sink = Sink(delay_s=0.005)
    q = BoundedQueue(QueueConfig(capacity_items=100), [sink], [])
    q.start()
    try:
        for r in range(20):
            results: list[bool] = []
            q.consume_traces(_traces(1, f"a{r}-"))
            waiter = threading.Thread(target=lambda out=results: out.append(q.drain(10)))
            waiter.start()
            q.consume_traces(_traces(1, f"b{r}-"))  # must wake the worker, not the drain waiter
            waiter.join(15)
            assert results == [True]
            assert q.drain(10)
        assert len(sink.spans()) == 40
    finally:
        q.shutdown()


def test_byte_capacity_bounds_memory_for_requests_with_huge_attributes() -> None:
    reg = CollectorRegistry()
    gate = Gate()
    q = BoundedQueue(QueueConfig(capacity_items=1000, capacity_bytes=64 * 1024), [gate], [gate], reg)
    q.start()
    big = _traces(2, "big")
    big.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="blob").value.string_value = "x" * 40_000
    try:
        q.consume_traces(big)  # ~40 KB, measured with ByteSize()
        assert gate.entered.wait(5)
        assert 40_000 < _metric(reg, "llm_log_analyzer_queue_size_bytes") < 41_000
        with pytest.raises(RetryableError, match="bytes queued"):
            q.consume_traces(big)  # 2 items only, but 80 KB > 64 KB
        q.consume_logs(_logs(3), size_bytes=1000)  # caller-supplied size; fits
        assert _metric(reg, "llm_log_analyzer_queue_capacity_bytes") == 64 * 1024
        gate.open.set()
        assert q.drain(5)
        assert _metric(reg, "llm_log_analyzer_queue_size_bytes") == 0
        q.consume_traces(big)  # room again
        assert q.drain(5)
    finally:
        gate.open.set()
        q.shutdown()
