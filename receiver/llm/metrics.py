"""Prometheus metrics of the LLM analyst (one instance per registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LlmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("llm_requests", "LLM calls by model, tier and outcome",
                                ["model", "tier", "outcome"], registry=registry)
        self.tokens = Counter("llm_tokens", "LLM tokens by model and kind (prompt|completion)",
                              ["model", "kind"], registry=registry)
        self.cost = Counter("llm_cost_usd", "LLM cost in USD by model (from the price table)", ["model"],
                            registry=registry)
        self.latency = Histogram("llm_latency_seconds", "LLM call latency by model", ["model"],
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120), registry=registry)
        self.retries = Counter("llm_retries", "LLM call retries by model and reason", ["model", "reason"],
                               registry=registry)
        self.cache = Counter("llm_cache", "verdict cache lookups by result (hit|miss)", ["result"],
                             registry=registry)
        self.cache_evictions = Counter("llm_cache_evictions", "verdict cache evictions by reason", ["reason"],
                                       registry=registry)
        self.cache_errors = Counter("llm_cache_errors", "verdict cache backend errors", registry=registry)
        self.breaker_state = Gauge("llm_breaker_open", "1 while the backend's circuit breaker is open",
                                   ["backend"], registry=registry)
        self.breaker_opened = Counter("llm_breaker_opened", "times a backend's circuit opened", ["backend"],
                                      registry=registry)
        self.budget_exhausted = Gauge("llm_budget_exhausted", "1 while the daily LLM budget is spent",
                                      registry=registry)
        self.budget_tokens = Gauge("llm_budget_tokens_used", "tokens spent today", registry=registry)
        self.budget_usd = Gauge("llm_budget_usd_used", "USD spent today", registry=registry)
        self.skipped = Counter("llm_skipped", "windows that stayed at tier 0, by reason", ["reason"],
                               registry=registry)
        self.routed = Counter("llm_routed",
                              "windows routed to the LLM, by reason (flagged|incident|borderline|sample)",
                              ["reason"], registry=registry)
        self.verdicts = Counter("llm_verdicts", "analysed windows by tier and outcome", ["tier", "outcome"],
                                registry=registry)
        self.queue_depth = Gauge("llm_queue_depth", "windows waiting for the LLM worker", registry=registry)
        self.neutralised = Counter("llm_prompt_neutralised",
                                   "instruction-like fragments removed from prompts",
                                   registry=registry)
        self.redactions = Counter("llm_prompt_redactions", "secrets redacted from prompts", registry=registry)
        self.audit_evicted = Counter("llm_audit_evicted", "in-memory audit records evicted (cap)",
                                     registry=registry)
        self.audit_errors = Counter("llm_audit_errors", "audit sink errors", registry=registry)
        self.tracked_evicted = Counter("llm_tracked_services_evicted",
                                       "per-service cascade states evicted (cap)", registry=registry)
        self.local_restarts = Counter("llm_local_server_restarts", "embedded model server restarts",
                                      registry=registry)
        self.local_up = Gauge("llm_local_server_up", "1 while the embedded model server is healthy",
                              registry=registry)
