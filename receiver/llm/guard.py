"""Protections around a backend: circuit breaker, rate limiter, daily budget, backoff."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**attempt))."""
    r = rng or random
    return r.uniform(0.0, min(max_s, base_s * (2 ** attempt)))


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (reset_s) -> half-open (one trial) -> closed|open."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int, reset_s: float, clock: Clock = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._fails = 0
        self._opened_at = 0.0
        self._trial_out = False
        self._on_change = on_change
        self.opened_total = 0

    @property
    def state(self) -> str:
        with self._lock:
            self._tick()
            return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if state == self.OPEN:
                self.opened_total += 1
            if self._on_change:
                self._on_change(state)

    def _tick(self) -> None:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self._reset_s:
            self._set(self.HALF_OPEN)
            self._trial_out = False

    def allow(self) -> bool:
        with self._lock:
            self._tick()
            if self._state == self.CLOSED:
                return True
            if self._state == self.HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._fails = 0
            self._trial_out = False
            self._set(self.CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._fails += 1
            self._trial_out = False
            if self._state == self.HALF_OPEN or self._fails >= self._threshold:
                self._opened_at = self._clock()
                self._set(self.OPEN)


class RateLimiter:
    """Two token buckets (requests per minute, tokens per minute). `acquire` waits up to `max_wait_s`."""

    def __init__(self, rpm: int, tpm: int, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._rpm, self._tpm = float(rpm), float(tpm)
        self._req = float(rpm)
        self._tok = float(tpm)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()
        self._blocked_until = 0.0

    def _refill(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last)
        self._last = now
        self._req = min(self._rpm, self._req + dt * self._rpm / 60.0)
        self._tok = min(self._tpm, self._tok + dt * self._tpm / 60.0)

    def block_for(self, seconds: float) -> None:
        """A server said 429 + Retry-After: nobody calls this backend before then."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    def wait_needed(self, tokens: int) -> float:
        """Seconds until one request of `tokens` fits (inf if it can never fit)."""
        tokens = min(tokens, int(self._tpm))  # a single request larger than the bucket waits for a full one
        with self._lock:
            self._refill()
            w = max(0.0, self._blocked_until - self._clock())
            if self._req < 1.0:
                w = max(w, (1.0 - self._req) * 60.0 / self._rpm)
            if self._tok < tokens:
                w = max(w, (tokens - self._tok) * 60.0 / self._tpm)
            return w

    def acquire(self, tokens: int, max_wait_s: float) -> bool:
        tokens = min(tokens, int(self._tpm))
        deadline = self._clock() + max_wait_s
        while True:
            with self._lock:
                self._refill()
                if self._clock() >= self._blocked_until and self._req >= 1.0 and self._tok >= tokens:
                    self._req -= 1.0
                    self._tok -= tokens
                    return True
            w = self.wait_needed(tokens)
            if self._clock() + w > deadline:
                return False
            self._sleep(min(max(w, 0.01), 1.0))

    def refund(self, tokens: int) -> None:
        """Give back estimated tokens that were not used (actual usage lower than reserved)."""
        with self._lock:
            self._tok = min(self._tpm, self._tok + max(0, tokens))


def utc_day(now_s: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).strftime("%Y-%m-%d")


class Budget:
    """Daily budget in tokens and USD (UTC days). 0 means unlimited for that unit."""

    def __init__(self, max_tokens: int, max_usd: float, wall: Clock = time.time) -> None:
        self._max_tokens = max_tokens
        self._max_usd = max_usd
        self._wall = wall
        self._lock = threading.Lock()
        self._day = utc_day(wall())
        self.tokens = 0
        self.usd = 0.0

    def _roll(self) -> None:
        d = utc_day(self._wall())
        if d != self._day:
            self._day, self.tokens, self.usd = d, 0, 0.0

    def allows(self, est_tokens: int, est_usd: float) -> bool:
        with self._lock:
            self._roll()
            if self._max_tokens and self.tokens + est_tokens > self._max_tokens:
                return False
            return not (self._max_usd and self.usd + est_usd > self._max_usd)

    def spend(self, tokens: int, usd: float) -> None:
        with self._lock:
            self._roll()
            self.tokens += tokens
            self.usd += usd

    def exhausted(self) -> bool:
        with self._lock:
            self._roll()
            return bool((self._max_tokens and self.tokens >= self._max_tokens)
                        or (self._max_usd and self.usd >= self._max_usd))
