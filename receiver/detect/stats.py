"""Tail probabilities and running moments the detector turns its evidence into."""

from __future__ import annotations

import math


def confidence_from_surprise(surprise: float, midpoint: float, slope: float) -> float:
    x = slope * (surprise - midpoint)
    if x > 50:
        return 1.0
    if x < -50:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), computed in log space."""
    if k <= 0:
        return 1.0
    lam = max(lam, 1e-9)
    # P(X >= k) = 1 - sum_{i<k} e^-lam lam^i / i!
    if k > lam:  # upper tail: sum terms from k upward (few needed)
        log_term = -lam + k * math.log(lam) - math.lgamma(k + 1)
        total = 0.0
        i = k
        term = math.exp(log_term)
        while term > 1e-300 and i < k + 1000:
            total += term
            i += 1
            term *= lam / i
            if term < total * 1e-12:
                break
        return min(1.0, total)
    cdf = 0.0
    term = math.exp(-lam)
    for i in range(k):
        cdf += term
        term *= lam / (i + 1)
    return max(0.0, 1.0 - cdf)


def count_sf(k: int, mean: float, var: float) -> float:
    """P(X >= k) for a count with this mean and variance: a negative binomial matched to both when the
    counts are over-dispersed (bursty), Poisson otherwise."""
    if k <= 0:
        return 1.0
    mean = max(mean, 1e-9)
    if var <= mean * 1.0001:
        return poisson_sf(k, mean)
    r = mean * mean / (var - mean)
    q = mean / (r + mean)
    log_q, log_p = math.log(q), math.log1p(-q)

    def log_pmf(x: int) -> float:
        return math.lgamma(x + r) - math.lgamma(r) - math.lgamma(x + 1) + r * log_p + x * log_q

    if k > mean:
        total = 0.0
        x = k
        while x < k + 100_000:
            term = math.exp(log_pmf(x))
            total += term
            if term < 1e-300 or (x > k + 10 and term < total * 1e-12):
                break
            x += 1
        return min(1.0, total)
    return max(0.0, 1.0 - sum(math.exp(log_pmf(x)) for x in range(k)))


def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def js_divergence(p: dict[int, float], q: dict[int, float]) -> float:
    """Jensen-Shannon divergence (bits) of two normalised histograms."""
    js = 0.0
    for k in set(p) | set(q):
        a = p.get(k, 0.0)
        b = q.get(k, 0.0)
        m = 0.5 * (a + b)
        if a > 0:
            js += 0.5 * a * math.log2(a / m)
        if b > 0:
            js += 0.5 * b * math.log2(b / m)
    return max(0.0, js)


class Ewma:
    __slots__ = ("mean", "var", "n")

    def __init__(self, mean: float = 0.0, var: float = 0.0, n: int = 0) -> None:
        self.mean = mean
        self.var = var
        self.n = n

    def update(self, x: float, alpha: float) -> None:
        if self.n == 0:
            self.mean = x
            self.var = 0.0
        else:
            a = max(alpha, 1.0 / (self.n + 1))  # plain average while young, EWMA afterwards
            d = x - self.mean
            self.mean += a * d
            self.var = (1 - a) * (self.var + a * d * d)
        self.n += 1

    def to_list(self) -> list[float]:
        return [self.mean, self.var, self.n]
