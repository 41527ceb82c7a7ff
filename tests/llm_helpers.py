"""Shared builders for the LLM analyst tests (windows and tier-0 assessments of the real types)."""

from __future__ import annotations

from receiver.detect.tier0 import Assessment
from receiver.llm import BackendConfig, LlmConfig
from receiver.logs.windows import Window
from receiver.model import (
    A_CONFIDENCE,
    A_DETECTOR,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    A_WINDOW_END,
    A_WINDOW_START,
    EVENT_ANOMALY,
    Finding,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def incident_window(start_ns: int = T0, exemplars: list[str] | None = None, scale: int = 0,
                    service: str = "payment") -> Window:
    return Window(
        service=service, kind="tumbling", key="", start_ns=start_ns, end_ns=start_ns + 60 * NS,
        count=294 + scale,
        template_counts={1: 240 + scale, 2: 37, 3: 12, 4: 5},
        templates={1: "order <*> processed in <*> ms", 2: "charge failed: connection reset by peer <*>",
                   3: "retrying charge <*> attempt <*>", 4: "order <*> failed: payment unavailable"},
        new_templates=[2], severity_counts={"info": 240 + scale, "error": 42, "warn": 12},
        template_errors={2: 37, 4: 5},
        exemplars=exemplars if exemplars is not None else [
            "charge failed: connection reset by peer 10.0.0.7:5432 order=8812",
            "order 8812 failed: payment unavailable"],
    )


def normal_window(start_ns: int = T0, service: str = "payment", exemplars: list[str] | None = None) -> Window:
    return Window(
        service=service, kind="tumbling", key="", start_ns=start_ns, end_ns=start_ns + 60 * NS, count=252,
        template_counts={1: 240, 5: 12}, templates={1: "order <*> processed in <*> ms",
                                                     5: "cache refreshed <*> keys"},
        new_templates=[], severity_counts={"info": 252},
        exemplars=exemplars if exemplars is not None else ["order 771 processed in 12 ms"],
    )


def assessment(w: Window, score: float = 0.95, flagged: bool = True) -> Assessment:
    f = None
    if flagged:
        f = Finding(EVENT_ANOMALY, {A_SERVICE: w.service, A_SEVERITY: "high", A_TYPE: "error_burst",
                                    A_CONFIDENCE: score, A_DETECTOR: "tier0", A_WINDOW_START: w.start_ns,
                                    A_WINDOW_END: w.end_ns}, body="tier 0: error burst")
    return Assessment(window=w, score=score, flagged=flagged, finding=f,
                      reasons=["error lines 42 vs expected 0.4 (p < 1e-12)"] if flagged else [])


def openai_config(url: str, **backend: object) -> LlmConfig:
    b = BackendConfig(kind="openai", base_url=url, model="gpt-4o-mini", api_key_env="LLA_TEST_NO_KEY",
                      timeout_s=2.0, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05,
                      rate_wait_max_s=5.0, breaker_failures=3, breaker_reset_s=60.0)
    for k, v in backend.items():
        setattr(b, k, v)
    return LlmConfig(tier1=b, sample_rate=0.0)
