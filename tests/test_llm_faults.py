"""LLM analyst against a scripted OpenAI-compatible server that injects faults."""

from __future__ import annotations

import json
import socket

from prometheus_client import CollectorRegistry

from receiver.llm import LlmAnalyst
from receiver.llm.schema import ANALYSIS_SCHEMA
from receiver.model import A_CONFIDENCE, A_DETECTOR, FindingsSink
from tests.llm_fake_server import ANOMALY, NORMAL, FakeLlmServer
from tests.llm_helpers import NS, T0, assessment, incident_window, openai_config


def _analyst(url: str, registry: CollectorRegistry | None = None,
             **backend: object) -> tuple[LlmAnalyst, FindingsSink]:
    sink = FindingsSink()
    a = LlmAnalyst(openai_config(url, **backend), sink, registry or CollectorRegistry(),
                   known_services=lambda: ["payment", "db"])
    a.start()
    return a, sink


def _value(reg: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    v = reg.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_ok_answer_enriches_the_finding_and_drops_unknown_services() -> None:
    with FakeLlmServer([("ok", ANOMALY)]) as srv:
        reg = CollectorRegistry()
        an, sink = _analyst(srv.url, reg)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(10)
        an.shutdown()
    [f] = sink.findings
    assert f.attributes[A_DETECTOR] == "tier1"
    assert f.attributes["llm.model"] == "gpt-4o-mini"
    assert f.attributes["llm.tokens"] == 120
    assert f.attributes["llm.cost_usd"] > 0  # priced from the table (gpt-4o-mini)
    assert f.attributes["llm.cache_hit"] is False
    assert f.attributes["llm.affected_services"] == ["payment", "db"]  # ghost-service dropped
    body = srv.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == ANALYSIS_SCHEMA
    assert _value(reg, "llm_tokens_total", {"model": "gpt-4o-mini", "kind": "prompt"}) == 100
    assert _value(reg, "llm_requests_total", {"model": "gpt-4o-mini", "tier": "tier1", "outcome": "ok"}) == 1


def test_stall_times_out_and_caller_is_never_blocked() -> None:
    with FakeLlmServer([("stall", 30)]) as srv:
        reg = CollectorRegistry()
        an, sink = _analyst(srv.url, reg, timeout_s=0.5, max_attempts=2)
        an.consume_assessments([assessment(incident_window())])
        # consume returned while the server still holds the request: nothing analysed yet
        assert not an.drain(0)
        assert sink.findings == []
        assert an.drain(30)
        an.shutdown()
    [f] = sink.findings
    assert f.attributes["llm.outcome"] == "timeout"
    assert f.attributes[A_DETECTOR] == "tier0"  # the tier-0 finding stands
    assert "tier-0 finding stands" in f.body
    assert srv.calls == 2
    assert _value(reg, "llm_retries_total", {"model": "gpt-4o-mini", "reason": "timeout"}) == 1


def test_429_retry_after_is_respected() -> None:
    with FakeLlmServer([("status", 429, 1), ("ok", ANOMALY)]) as srv:
        reg = CollectorRegistry()
        an, sink = _analyst(srv.url, reg)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(20)
        an.shutdown()
    assert srv.calls == 2
    assert srv.times[1] - srv.times[0] >= 0.9  # waited for Retry-After: 1 before retrying
    assert sink.findings[0].attributes["llm.outcome"] == "ok"
    assert _value(reg, "llm_retries_total", {"model": "gpt-4o-mini", "reason": "http_429"}) == 1


def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    with FakeLlmServer([("status", 500, None), ("status", 503, None), ("ok", ANOMALY)]) as srv:
        an, sink = _analyst(srv.url)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(20)
        an.shutdown()
    assert srv.calls == 3
    assert sink.findings[0].attributes["llm.verdict"] == "anomaly"


def test_breaker_opens_after_repeated_5xx_and_stops_calling() -> None:
    with FakeLlmServer([("status", 503, None)]) as srv:
        reg = CollectorRegistry()
        an, sink = _analyst(srv.url, reg, max_attempts=2, breaker_failures=3)
        windows = [assessment(incident_window(T0 + i * 60 * NS, scale=i * 1000)) for i in range(4)]
        an.consume_assessments(windows)
        assert an.drain(20)
        an.shutdown()
    # call 1: 2 attempts, call 2: 1 attempt opens the breaker (3 failures); calls 3-4 never reach the server
    assert srv.calls == 3
    outcomes = [f.attributes["llm.outcome"] for f in sink.findings]
    assert outcomes == ["http_5xx", "breaker_open", "breaker_open", "breaker_open"]
    assert _value(reg, "llm_breaker_open", {"backend": "tier1"}) == 1
    assert _value(reg, "llm_breaker_opened_total", {"backend": "tier1"}) == 1
    assert all(f.attributes[A_DETECTOR] == "tier0" for f in sink.findings)


def test_breaker_half_open_trial_closes_it_again() -> None:
    with FakeLlmServer([("status", 500, None), ("ok", ANOMALY)]) as srv:
        an, sink = _analyst(srv.url, max_attempts=1, breaker_failures=1, breaker_reset_s=0.3)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(10)
        assert an.tier1 is not None and an.tier1.breaker.state == "open"
        import time

        time.sleep(0.4)
        assert an.tier1.breaker.state == "half_open"
        an.consume_assessments([assessment(incident_window(T0 + 60 * NS, scale=5000))])
        assert an.drain(10)
        assert an.tier1.breaker.state == "closed"
        an.shutdown()
    assert [f.attributes["llm.outcome"] for f in sink.findings] == ["http_5xx", "ok"]


def test_connection_refused_falls_back_to_tier0() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = CollectorRegistry()
    an, sink = _analyst(f"http://127.0.0.1:{port}/v1", reg, max_attempts=2)
    an.consume_assessments([assessment(incident_window())])
    assert an.drain(20)
    an.shutdown()
    [f] = sink.findings
    assert f.attributes["llm.outcome"] == "connection"
    assert f.attributes[A_CONFIDENCE] == 0.95  # untouched tier-0 finding
    assert _value(reg, "llm_retries_total", {"model": "gpt-4o-mini", "reason": "connection"}) == 1


def test_dropped_connection_is_a_connection_fault() -> None:
    with FakeLlmServer([("drop",), ("ok", ANOMALY)]) as srv:
        an, sink = _analyst(srv.url)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(20)
        an.shutdown()
    assert srv.calls == 2
    assert sink.findings[0].attributes["llm.outcome"] == "ok"


def test_non_json_gets_one_repair_retry() -> None:
    with FakeLlmServer([("text", "Sure! The window looks bad."), ("ok", ANOMALY)]) as srv:
        an, sink = _analyst(srv.url)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(10)
        an.shutdown()
    assert srv.calls == 2
    repair = srv.bodies[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! The window looks bad."}
    assert "invalid" in repair[-1]["content"]
    assert sink.findings[0].attributes["llm.outcome"] == "repaired"


def test_schema_violation_twice_leaves_tier0_standing() -> None:
    bad = dict(NORMAL, is_anomaly="no", confidence=7)
    with FakeLlmServer([("ok", bad)]) as srv:
        reg = CollectorRegistry()
        an, sink = _analyst(srv.url, reg)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(10)
        an.shutdown()
    assert srv.calls == 2  # the answer + one repair, no more
    [f] = sink.findings
    assert f.attributes["llm.outcome"] == "schema"
    assert "tier-0 finding stands" in f.body
    assert _value(reg, "llm_verdicts_total", {"tier": "tier0", "outcome": "schema"}) == 1


def test_json_schema_rejected_falls_back_to_json_object_with_schema() -> None:
    with FakeLlmServer([("status", 400, None), ("ok", ANOMALY)]) as srv:
        an, sink = _analyst(srv.url)
        an.consume_assessments([assessment(incident_window())])
        assert an.drain(10)
        an.shutdown()
    assert srv.bodies[0]["response_format"]["type"] == "json_schema"
    assert srv.bodies[1]["response_format"] == {"type": "json_object", "schema": ANALYSIS_SCHEMA}
    assert sink.findings[0].attributes["llm.verdict"] == "anomaly"


def test_complete_json_has_the_same_protections() -> None:
    schema = {"type": "object", "required": ["root"], "properties": {"root": {"type": "string"}},
              "additionalProperties": False}
    with FakeLlmServer([("ok", {"root": "db"}), ("status", 500, None)]) as srv:
        an, _ = _analyst(srv.url, max_attempts=1, breaker_failures=1)
        msgs = [{"role": "user", "content": "which service? token: Bearer abcdefghijklmnop1234"}]
        assert an.complete_json(msgs, schema, "tier2") == {"root": "db"}  # no tier2: collapses to tier1
        assert an.complete_json(msgs, schema) is None  # 500 -> breaker opens
        assert an.complete_json(msgs, schema) is None  # breaker open: not sent
        an.shutdown()
    assert srv.calls == 2
    assert "abcdefghijklmnop1234" not in json.dumps(srv.bodies)
    assert [r["outcome"] for r in an.audit_log] == ["ok", "http_5xx", "breaker_open"]
    assert an.audit_log[0]["redaction_counts"] == {"bearer_token": 1}


def test_shutdown_aborts_an_in_flight_call_and_keeps_the_tier0_finding() -> None:
    with FakeLlmServer([("stall", 120)]) as srv:
        an, sink = _analyst(srv.url, timeout_s=120.0, max_attempts=1)
        an.consume_assessments([assessment(incident_window())])
        while srv.calls == 0:  # the request is in flight at the server
            import time

            time.sleep(0.01)
        an.shutdown()
        assert len(sink.findings) == 1
    f = sink.findings[0]
    assert f.attributes[A_DETECTOR] == "tier0"
    assert f.attributes["llm.outcome"] == "shutdown"
