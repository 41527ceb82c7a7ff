"""Configuration of the LLM analyst (`llm:` section of the YAML config).

`--llm off|local|URL` maps onto it with `LlmConfig.from_flag()`:
  * `off`   -> None (no analyst; the composition root uses detect's `Tier0Only`),
  * `local` -> tier1 backend `kind: local` (embedded llama.cpp server, model from the pinned wheels),
  * `URL`   -> tier1 backend `kind: openai` with `base_url: URL` (any OpenAI-compatible endpoint;
               model from `llm.tier1.model`, key from the env var named by `api_key_env`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.component import StageConfig, non_negative, positive, require

KINDS = ("local", "openai")
RESPONSE_FORMATS = ("json_schema", "json_object")

# USD per 1M tokens: "input,output". Unknown models cost 0 and are reported once in the log.
DEFAULT_PRICES: dict[str, str] = {
    "local": "0,0",
    "gpt-4o-mini": "0.15,0.60",
    "gpt-4o": "2.50,10.00",
    "gpt-4.1-mini": "0.40,1.60",
    "gpt-4.1-nano": "0.10,0.40",
    "gpt-4.1": "2.00,8.00",
}


@dataclass
class BackendConfig(StageConfig):
    kind: str = "local"  # local | openai
    base_url: str = ""  # openai kind: e.g. https://api.openai.com/v1, http://127.0.0.1:11434/v1
    model: str = "local"
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never logged)
    api_key_file: str = ""  # or a file holding the key
    timeout_s: float = 60.0  # per request (connect + read); a stalled server fails after this
    max_attempts: int = 3  # per call, with exponential backoff + jitter
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    requests_per_minute: int = 120
    tokens_per_minute: int = 200_000
    max_concurrency: int = 1
    rate_wait_max_s: float = 30.0  # longest wait for the rate limiter before giving up (tier 0)
    context_tokens: int = 4096
    prompt_budget_tokens: int = 1100  # the window summary is cut to fit
    max_output_tokens: int = 320
    temperature: float = 0.0
    response_format: str = "json_schema"  # json_schema | json_object (json_object + schema in body)
    breaker_failures: int = 4  # consecutive failures that open the circuit
    breaker_reset_s: float = 30.0  # open -> half-open after this

    def validate(self) -> None:
        super().validate()
        require(self.kind in KINDS, "kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "openai":
            require(self.base_url.startswith(("http://", "https://")), "base_url",
                    f"must be an http(s) URL, got {self.base_url!r}")
        require(bool(self.model), "model", "must not be empty")
        require(self.response_format in RESPONSE_FORMATS, "response_format",
                f"must be one of {RESPONSE_FORMATS}")
        for k in ("timeout_s", "backoff_base_s", "backoff_max_s", "breaker_reset_s", "requests_per_minute",
                  "tokens_per_minute", "max_concurrency", "max_attempts", "context_tokens",
                  "prompt_budget_tokens", "max_output_tokens", "breaker_failures"):
            positive(getattr(self, k), k)
        non_negative(self.rate_wait_max_s, "rate_wait_max_s")
        non_negative(self.temperature, "temperature")
        require(self.prompt_budget_tokens + self.max_output_tokens <= self.context_tokens,
                "prompt_budget_tokens", "prompt_budget_tokens + max_output_tokens must fit context_tokens")


@dataclass
class LocalModelConfig(StageConfig):
    data_dir: str = ""  # where the assembled GGUF lives; "" = ~/.cache/llm-log-analyzer
    n_ctx: int = 4096
    threads: int = 2
    n_parallel: int = 1
    startup_timeout_s: float = 180.0
    health_interval_s: float = 5.0
    max_restarts: int = 5  # within restart_window_s; beyond that the server stays down (tier 0 only)
    restart_window_s: float = 600.0
    restart_backoff_s: float = 1.0  # doubled per restart, capped at 30 s

    def validate(self) -> None:
        super().validate()
        for k in ("n_ctx", "threads", "n_parallel", "startup_timeout_s", "health_interval_s",
                  "restart_window_s", "restart_backoff_s"):
            positive(getattr(self, k), k)
        non_negative(self.max_restarts, "max_restarts")


@dataclass
class LlmConfig(StageConfig):
    tier1: BackendConfig = field(default_factory=BackendConfig)
    tier2_enabled: bool = False  # False: the tiers collapse into tier1
    tier2: BackendConfig = field(default_factory=BackendConfig)
    local: LocalModelConfig = field(default_factory=LocalModelConfig)
    # cascade
    sample_rate: float = 0.01  # share of unflagged windows sent to tier 1 (scaled down under load)
    incident_followup_s: float = 120.0  # after a flagged window, this service's windows all go to tier 1
    incident_followup_max: int = 3  # ... but at most this many unflagged windows per incident
    tier2_min_severity: str = "high"  # tier 1 at or above this severity escalates to tier 2
    tier2_below_confidence: float = 0.6  # ... and so does tier 1 below this confidence
    strong_evidence_score: float = 0.8  # tier-0 score from which an LLM "normal" cannot erase a finding
    llm_only_min_confidence: float = 0.7  # an LLM-only anomaly (tier 0 not flagged) needs this confidence
    borderline_score: float = 0.3  # an LLM-only anomaly needs at least this tier-0 score (some signal)
    route_borderline: bool = False  # also send every unflagged window with score >= borderline_score
    queue_size: int = 256
    max_services_tracked: int = 10_000
    # prompt
    max_templates: int = 12
    max_exemplars: int = 4
    max_line_chars: int = 240
    # cache
    redis_url: str = ""  # e.g. redis://127.0.0.1:6379/0; "" = in-memory LRU
    cache_max_entries: int = 4096
    cache_ttl_s: float = 3600.0
    cache_key_prefix: str = "lla:llm:"
    # budget
    daily_token_budget: int = 2_000_000
    daily_usd_budget: float = 5.0
    prices: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # audit
    audit_max_records: int = 1000

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.sample_rate <= 1.0, "sample_rate", "must be within [0, 1]")
        require(self.tier2_min_severity in ("critical", "high", "medium", "low"), "tier2_min_severity",
                "must be critical|high|medium|low")
        for k in ("tier2_below_confidence", "strong_evidence_score", "llm_only_min_confidence",
                  "borderline_score"):
            require(0.0 <= getattr(self, k) <= 1.0, k, "must be within [0, 1]")
        for k in ("queue_size", "max_services_tracked", "max_templates", "max_line_chars",
                  "cache_max_entries", "cache_ttl_s", "audit_max_records"):
            positive(getattr(self, k), k)
        for k in ("incident_followup_s", "incident_followup_max", "max_exemplars", "daily_token_budget",
                  "daily_usd_budget"):
            non_negative(getattr(self, k), k)
        require(self.redis_url == "" or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "redis_url", f"must be a redis:// URL, got {self.redis_url!r}")
        for model, price in self.prices.items():
            parse_price(price, f"prices.{model}")

    @classmethod
    def from_flag(cls, value: str, base: LlmConfig | None = None) -> LlmConfig | None:
        """Map `--llm off|local|URL` onto a config (None for off). `base` keeps file settings."""
        v = value.strip()
        if v in ("", "off"):
            return None
        cfg = base if base is not None else cls()
        if v == "local":
            cfg.tier1.kind = "local"
            cfg.tier1.model = "local"
            # a CPU-bound local server: long prompts take tens of seconds on a busy 2-core machine, and
            # re-sending a timed-out request only queues more work behind it
            cfg.tier1.timeout_s = max(cfg.tier1.timeout_s, 180.0)
            cfg.tier1.max_attempts = min(cfg.tier1.max_attempts, 2)
        elif v.startswith(("http://", "https://")):
            cfg.tier1.kind = "openai"
            cfg.tier1.base_url = v
            if cfg.tier1.model == "local":
                cfg.tier1.model = "gpt-4o-mini"
        else:
            from receiver.errors import ConfigError

            raise ConfigError(f"llm: --llm must be off, local or an http(s) URL, got {value!r}")
        cfg.validate()
        return cfg


def parse_price(text: str, key: str = "price") -> tuple[float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        pin, pout = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        from receiver.errors import ConfigError

        raise ConfigError(f"{key}: must be 'input_usd_per_mtok,output_usd_per_mtok', got {text!r}") from None
    require(pin >= 0 and pout >= 0 and len(parts) == 2, key, "prices must be two non-negative numbers")
    return pin, pout
