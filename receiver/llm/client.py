"""One LLM backend: an OpenAI-compatible endpoint reached with the `openai` package.

Every call goes through: circuit breaker -> rate limiter (requests + tokens per minute, 429
Retry-After respected) -> concurrency cap -> request with a timeout -> JSON parse + schema validation
-> one repair retry. Transport faults (timeout/stall, refused connection, 5xx) are retried with
exponential backoff + full jitter and count towards the breaker. The API key comes from an env var or
a file and is never logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from receiver.llm.config import BackendConfig
from receiver.llm.guard import CircuitBreaker, RateLimiter, backoff_delay
from receiver.llm.metrics import LlmMetrics
from receiver.llm.schema import OutputError, parse_json_output

log = logging.getLogger(__name__)

_tiktoken_lock = threading.Lock()
_tiktoken_encoders: dict[str, Any] = {}
_tiktoken_failed: set[str] = set()


def estimate_tokens(text: str) -> int:
    """Conservative estimate when no tokenizer is available: ~3 UTF-8 bytes per token."""
    return max(1, math.ceil(len(text.encode("utf-8", "replace")) / 3))


def tiktoken_count(model: str, text: str) -> int | None:
    """Token count with tiktoken (OpenAI models); None if the encoding cannot be loaded (offline)."""
    with _tiktoken_lock:
        enc = _tiktoken_encoders.get(model)
        if enc is None and model not in _tiktoken_failed:
            try:
                import tiktoken

                try:
                    enc = tiktoken.encoding_for_model(model)
                except KeyError:
                    enc = tiktoken.get_encoding("o200k_base")
                _tiktoken_encoders[model] = enc
            except Exception as e:  # network fetch of the BPE file failed, etc.
                _tiktoken_failed.add(model)
                log.warning("tiktoken encoding for %s unavailable (%s); estimating tokens from bytes",
                            model, type(e).__name__)
    if enc is None:
        return None
    return len(enc.encode(text, disallowed_special=()))


def read_api_key(cfg: BackendConfig) -> str:
    if cfg.kind == "local":
        return "local"
    if cfg.api_key_file:
        try:
            return open(cfg.api_key_file, encoding="utf-8").read().strip()
        except OSError as e:
            raise RuntimeError(f"llm: api_key_file {cfg.api_key_file!r} unreadable: {e.strerror}") from None
    if cfg.api_key_env and os.environ.get(cfg.api_key_env):
        return os.environ[cfg.api_key_env]
    return "unused"  # vLLM / Ollama / llama.cpp servers accept any key


@dataclass
class CallResult:
    value: dict[str, Any] | None
    outcome: str  # ok | repaired | breaker_open | rate_limited | timeout | connection | http_5xx | http_4xx
    #               | http_429 | non_json | schema | unavailable
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def ok(self) -> bool:
        return self.value is not None


class Backend:
    """One configured backend. `base_url` may be a callable (the embedded server's port can change)."""

    def __init__(self, name: str, cfg: BackendConfig, metrics: LlmMetrics, price: tuple[float, float],
                 base_url: str | Callable[[], str | None],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.cfg = cfg
        self.model = cfg.model
        self._m = metrics
        self._price = price
        self._base_url = base_url
        self._sleep = sleep
        self._key = read_api_key(cfg)
        self._format = cfg.response_format
        self._client: openai.OpenAI | None = None
        self._client_url: str | None = None
        self._client_lock = threading.Lock()
        self._closed = False
        self._sem = threading.BoundedSemaphore(cfg.max_concurrency)
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s,
                                      on_change=self._breaker_changed)
        self.limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute, sleep=sleep)

    # -- plumbing -------------------------------------------------------------------------------
    def _breaker_changed(self, state: str) -> None:
        self._m.breaker_state.labels(self.name).set(1 if state == CircuitBreaker.OPEN else 0)
        if state == CircuitBreaker.OPEN:
            self._m.breaker_opened.labels(self.name).inc()
            log.warning("llm backend %s: circuit open for %.0f s", self.name, self.cfg.breaker_reset_s)

    def url(self) -> str | None:
        return self._base_url() if callable(self._base_url) else self._base_url

    def _get_client(self) -> openai.OpenAI | None:
        url = self.url()
        if not url or self._closed:
            return None
        with self._client_lock:
            if self._client is None or self._client_url != url:
                if self._client is not None:
                    self._client.close()
                self._client = openai.OpenAI(base_url=url, api_key=self._key, max_retries=0,
                                             timeout=self.cfg.timeout_s)
                self._client_url = url
            return self._client

    def close(self) -> None:
        """Closes the HTTP client (an in-flight call fails fast as a connection error); no new calls."""
        self._closed = True
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self._price[0] + completion_tokens * self._price[1]) / 1e6

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for this backend's model: the llama.cpp server's /tokenize for the local
        backend, tiktoken for OpenAI models, a conservative byte estimate otherwise."""
        if self.cfg.kind == "local":
            url = self.url()
            if url:
                root = url[:-3] if url.endswith("/v1") else url
                req = urllib.request.Request(root.rstrip("/") + "/tokenize", method="POST",
                                             data=json.dumps({"content": text}).encode(),
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=min(10.0, self.cfg.timeout_s)) as r:
                        return len(json.loads(r.read()).get("tokens", []))
                except (OSError, ValueError, urllib.error.URLError):
                    pass
            return estimate_tokens(text)
        n = tiktoken_count(self.model, text)
        return n if n is not None else estimate_tokens(text)

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        return sum(self.count_tokens(m.get("content", "")) + 6 for m in messages) + 3

    @property
    def response_format(self) -> str:
        """json_schema, or json_object after the server rejected json_schema."""
        return self._format

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._format == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": "analysis", "strict": True, "schema": schema}}
        return {"type": "json_object", "schema": schema}

    # -- one call -------------------------------------------------------------------------------
    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], tier: str,
                 prompt_tokens_est: int | None = None, max_tokens: int | None = None) -> CallResult:
        max_tokens = max_tokens or self.cfg.max_output_tokens
        est = (prompt_tokens_est or self.count_messages(messages)) + max_tokens
        res = CallResult(None, "unavailable", self.model)
        t_start = time.monotonic()
        repaired = False
        msgs = list(messages)
        attempt = 0
        while attempt < self.cfg.max_attempts:
            attempt += 1
            res.attempts = attempt
            if not self.breaker.allow():
                res.outcome, res.error = "breaker_open", "circuit breaker open"
                break
            if not self.limiter.acquire(est, self.cfg.rate_wait_max_s):
                res.outcome, res.error = "rate_limited", "rate limit: no capacity within rate_wait_max_s"
                break
            client = self._get_client()
            if client is None:
                res.outcome, res.error = "unavailable", "backend not running"
                self.breaker.failure()
                break
            if not self._sem.acquire(timeout=max(0.01, self.cfg.rate_wait_max_s)):
                res.outcome, res.error = "rate_limited", "concurrency cap: no slot within rate_wait_max_s"
                break
            retry_wait: float | None = None
            try:
                t0 = time.monotonic()
                resp = client.chat.completions.create(
                    model=self.model, messages=msgs, temperature=self.cfg.temperature, max_tokens=max_tokens,
                    response_format=self._response_format(schema),  # type: ignore[arg-type]
                    timeout=self.cfg.timeout_s,
                )
                self._m.latency.labels(self.model).observe(time.monotonic() - t0)
            except openai.RateLimitError as e:
                ra = _retry_after(e)
                self.limiter.block_for(ra if ra is not None else self.cfg.backoff_base_s * 2 ** attempt)
                res.outcome, res.error = "http_429", "429 rate limited by server"
                self._m.retries.labels(self.model, "http_429").inc()
                if ra is not None and ra > self.cfg.rate_wait_max_s:
                    break
                continue  # the limiter waits for Retry-After before the next attempt
            except openai.APITimeoutError:
                res.outcome, res.error = "timeout", f"no answer within {self.cfg.timeout_s} s"
                # the server may have processed (and billed) the prompt: count it, conservatively
                res.prompt_tokens += est - max_tokens
                res.extra["estimated_prompt_tokens"] = res.extra.get("estimated_prompt_tokens", 0) + (
                    est - max_tokens)
                self.breaker.failure()
                retry_wait = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
            except openai.APIConnectionError as e:
                res.outcome, res.error = "connection", f"connection failed: {type(e.__cause__ or e).__name__}"
                self.breaker.failure()
                retry_wait = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
            except openai.APIStatusError as e:
                body = str(getattr(e, "message", ""))[:200]
                if e.status_code >= 500 and not ("json_schema" in body or "response_format" in body):
                    res.outcome, res.error = "http_5xx", f"HTTP {e.status_code}"
                    self.breaker.failure()
                    retry_wait = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
                elif self._format == "json_schema" and e.status_code in (400, 422, 500):
                    # the server does not support json_schema: fall back to json_object + schema
                    log.warning("llm backend %s rejected response_format json_schema (HTTP %d); "
                                "falling back to json_object + schema", self.name, e.status_code)
                    self._format = "json_object"
                    attempt -= 1
                    continue
                else:
                    res.outcome, res.error = "http_4xx", f"HTTP {e.status_code}"
                    self.breaker.failure()
                    break
            finally:
                self._sem.release()
            if retry_wait is not None:
                if attempt < self.cfg.max_attempts:
                    self._m.retries.labels(self.model, res.outcome).inc()
                    self._sleep(retry_wait)
                continue
            # -- got an HTTP 200 answer ---------------------------------------------------------
            usage = getattr(resp, "usage", None)
            pt = int(getattr(usage, "prompt_tokens", 0) or 0) or self.count_messages(msgs)
            ct = int(getattr(usage, "completion_tokens", 0) or 0)
            text = resp.choices[0].message.content if resp.choices else None
            if not ct and text:
                ct = estimate_tokens(text)
            res.prompt_tokens += pt
            res.completion_tokens += ct
            self.limiter.refund(max(0, est - pt - ct))
            try:
                res.value = parse_json_output(text, schema)
                res.outcome = "repaired" if repaired else "ok"
                res.error = ""
                self.breaker.success()
                break
            except OutputError as e:
                res.outcome, res.error = e.kind, str(e)
                self._m.retries.labels(self.model, e.kind).inc()
                if repaired:
                    self.breaker.failure()
                    break
                repaired = True
                attempt -= 1  # the repair retry does not consume a transport attempt
                msgs = list(messages) + [
                    {"role": "assistant", "content": (text or "")[:2000]},
                    {"role": "user", "content": f"That answer was invalid ({e}). Reply with only the "
                                                "corrected JSON object that matches the schema."},
                ]
        res.latency_s = time.monotonic() - t_start
        res.cost_usd = self.cost(res.prompt_tokens, res.completion_tokens)
        self._m.requests.labels(self.model, tier, res.outcome).inc()
        if res.prompt_tokens or res.completion_tokens:
            self._m.tokens.labels(self.model, "prompt").inc(res.prompt_tokens)
            self._m.tokens.labels(self.model, "completion").inc(res.completion_tokens)
            self._m.cost.labels(self.model).inc(res.cost_usd)
        return res


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        v = e.response.headers.get("retry-after")
    except AttributeError:
        return None
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
