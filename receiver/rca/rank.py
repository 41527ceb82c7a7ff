"""Rank root-cause candidates on the call graph from span/log signals.

Failures propagate from callee to caller, so the root cause is usually downstream of the first
symptom. For every candidate we separate LOCAL evidence (what only the faulty node itself shows)
from SYMPTOMS (what its callers inherit):

local  -- the failing traces END at it (deepest span with ERROR status), its callers' own errors
          name it (a wrong answer seen only by the caller), its exclusive (self) time rose (CPU or
          resource contention), the client-minus-server gap on calls into it rose (network delay),
          its version changed, its logs are anomalous;
symptom-- the error rate and latency of calls into it rose against its baseline.

score(c) = local(c) * (1 + explained share of the symptomatic nodes that reach c through real call
edges) + a personalised PageRank term on the call graph (a random walk from the symptomatic nodes
towards their callees, weighted by local evidence, as MicroRank/MicroCause do) + an onset-order term.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import networkx as nx

from receiver.rca.signals import (
    E_BLAMED,
    E_CALLS,
    E_CLIENT_LAT,
    E_GAP,
    E_GAP_N,
    N_CALLS,
    N_DEEP,
    N_ERRORS,
    N_LAT,
    N_LOG_ERR,
    N_LOG_WARN,
    N_SELF,
    N_SELF_N,
    SpanSignals,
)

IGNORED_NODES = frozenset({"user", "unknown", ""})


@dataclass
class RankWeights:
    deep: float = 4.0  # share of calls into it that end as the deepest failure (delta vs baseline)
    self_time: float = 1.5  # log1p of the relative rise of its exclusive time
    gap: float = 1.5  # log1p of the relative rise of the client-server gap on calls into it
    deploy: float = 0.6  # a version change during the incident (only counts with other evidence)
    logs: float = 0.5  # anomaly findings / error-log rise on the node itself
    explain: float = 1.0  # multiplier for the explained share of symptoms
    pagerank: float = 0.6
    onset: float = 0.2


@dataclass(slots=True)
class Features:
    node: str
    calls_base: float = 0.0
    calls_cur: float = 0.0
    err_base: float = 0.0  # error rate of calls into the node
    err_cur: float = 0.0
    lat_base_ms: float = 0.0  # mean latency of calls into the node
    lat_cur_ms: float = 0.0
    self_base_ms: float = 0.0
    self_cur_ms: float = 0.0
    self_z: float = 0.0
    deep_base: float = 0.0  # deepest-failure rate (incl. blame from callers naming it)
    deep_cur: float = 0.0
    deep_count: float = 0.0
    blamed_count: float = 0.0  # callers' own errors naming this node
    blames_out: float = 0.0  # its own failing spans naming a service it called
    gap_base_ms: float = 0.0
    gap_cur_ms: float = 0.0
    gap_edge: str = ""
    gap_share: float = 0.0  # share of the node's edges (in and out) whose gap rose
    gap_rise: float = 0.0  # the largest relative gap rise (outgoing edges count half)
    log_err_n_cur: float = 0.0  # error log lines in the current window
    log_err_expected: float = 0.0  # ... expected there from the baseline rate
    log_err_base: float = 0.0  # error log lines per bucket
    log_err_cur: float = 0.0
    log_warn_base: float = 0.0
    log_warn_cur: float = 0.0
    anomaly_score: float = 0.0  # max confidence of anomaly findings on the node in the incident
    deployed: str = ""  # "old -> new" when the version changed
    onset_ns: int = 0  # first bucket where local evidence showed (0 = none)
    local: float = 0.0
    symptom: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class RankResult:
    ranked: list[tuple[str, float]]  # best first
    features: dict[str, Features]
    path: list[str]  # root cause first
    confidence: float
    symptomatic: list[str]
    candidates: list[str]

    @property
    def root(self) -> str:
        return self.ranked[0][0] if self.ranked else ""


def _sum_rows(rows: Iterable[list[float]], n: int) -> list[float]:
    acc = [0.0] * n
    for r in rows:
        for i in range(n):
            acc[i] += r[i]
    return acc


def _window(buckets: dict[int, list[float]], lo: int, hi: int) -> list[tuple[int, list[float]]]:
    return sorted((b, r) for b, r in buckets.items() if lo <= b < hi)


def _rel_rise(cur: float, base: float, floor: float) -> float:
    return max(0.0, (cur - base) / (abs(base) + floor))


def candidates_for(graph: nx.DiGraph, anomalous: Iterable[str]) -> list[str]:
    """The anomalous services and everything they depend on (callees, transitively)."""
    out: list[str] = []
    seen: set[str] = set()
    for s in anomalous:
        if s in IGNORED_NODES:
            continue
        group = [s]
        if s in graph:
            group += sorted(nx.descendants(graph, s))
        for n in group:
            if n not in seen and n not in IGNORED_NODES:
                seen.add(n)
                out.append(n)
    return out


def compute_features(signals: SpanSignals, graph: nx.DiGraph, node: str, onset_ns: int, until_ns: int,
                     baseline_s: float, min_baseline_calls: float = 5.0) -> Features:
    bns = signals.bucket_ns()
    cur_lo = onset_ns // bns * bns
    base_lo = cur_lo - int(baseline_s * 1e9)
    # only whole buckets: a bucket that ends after `until` would leak later data into the analysis
    until_ns = max(cur_lo, until_ns // bns * bns)
    f = Features(node)
    nb = signals.node_buckets(node)
    base_rows = _window(nb, base_lo, cur_lo)
    cur_rows = _window(nb, cur_lo, until_ns)
    b = _sum_rows((r for _, r in base_rows), 8)
    c = _sum_rows((r for _, r in cur_rows), 8)
    nbase, ncur = max(1, len(base_rows)), max(1, len(cur_rows))
    f.calls_base, f.calls_cur = b[N_CALLS], c[N_CALLS]
    # Laplace-smoothed rates so that tiny baselines do not explode
    f.err_base = (b[N_ERRORS] + 0.1) / (b[N_CALLS] + 1.0)
    f.err_cur = c[N_ERRORS] / c[N_CALLS] if c[N_CALLS] else 0.0
    f.lat_base_ms = b[N_LAT] / b[N_CALLS] / 1e6 if b[N_CALLS] else 0.0
    f.lat_cur_ms = c[N_LAT] / c[N_CALLS] / 1e6 if c[N_CALLS] else 0.0
    f.self_base_ms = b[N_SELF] / b[N_SELF_N] / 1e6 if b[N_SELF_N] else 0.0
    f.self_cur_ms = c[N_SELF] / c[N_SELF_N] / 1e6 if c[N_SELF_N] else 0.0
    means = [r[N_SELF] / r[N_SELF_N] / 1e6 for _, r in base_rows if r[N_SELF_N] >= 2]
    if len(means) >= 3:
        mu = sum(means) / len(means)
        sd = math.sqrt(sum((m - mu) ** 2 for m in means) / (len(means) - 1))
        f.self_z = (f.self_cur_ms - mu) / (sd + 0.05 * mu + 0.05)
    # blame moved from callers whose own errors name this node (and away from those callers)
    blamed_in_b = blamed_in_c = 0.0
    blamed_out_b = blamed_out_c = 0.0
    gap_best = 0.0
    gap_edges = gap_hit = 0

    def edge_gap(a: str, b_: str, eb_base: list[float], eb_cur: list[float], weight: float) -> None:
        # the client-server gap of one edge against its own baseline
        nonlocal gap_best, gap_edges, gap_hit
        if eb_base[E_GAP_N] < min_baseline_calls or eb_cur[E_GAP_N] < 2:
            return
        gb = eb_base[E_GAP] / eb_base[E_GAP_N] / 1e6
        gc = eb_cur[E_GAP] / eb_cur[E_GAP_N] / 1e6
        lat_b = eb_base[E_CLIENT_LAT] / max(1.0, eb_base[E_CALLS]) / 1e6
        rise = _rel_rise(gc, gb, 0.5 + 0.2 * lat_b) * weight
        gap_edges += 1
        gap_hit += rise > 0.5
        if rise > gap_best:
            gap_best = rise
            f.gap_base_ms, f.gap_cur_ms, f.gap_edge = gb, gc, f"{a} -> {b_}"

    for pred in graph.predecessors(node) if node in graph else ():
        eb = signals.edge_buckets(pred, node)
        eb_base = _sum_rows((r for _, r in _window(eb, base_lo, cur_lo)), 7)
        eb_cur = _sum_rows((r for _, r in _window(eb, cur_lo, until_ns)), 7)
        blamed_in_b += eb_base[E_BLAMED]
        blamed_in_c += eb_cur[E_BLAMED]
        edge_gap(pred, node, eb_base, eb_cur, 1.0)
    for succ in graph.successors(node) if node in graph else ():
        eb = signals.edge_buckets(node, succ)
        eb_base = _sum_rows((r for _, r in _window(eb, base_lo, cur_lo)), 7)
        eb_cur = _sum_rows((r for _, r in _window(eb, cur_lo, until_ns)), 7)
        blamed_out_b += eb_base[E_BLAMED]
        blamed_out_c += eb_cur[E_BLAMED]
        edge_gap(node, succ, eb_base, eb_cur, 0.5)  # its requests out are late: weaker evidence
    # a delayed node shows the gap on all its edges; a delayed edge on one edge of each end
    f.gap_share = gap_hit / gap_edges if gap_edges else 0.0
    f.gap_rise = gap_best
    deep_b = max(0.0, b[N_DEEP] + blamed_in_b - blamed_out_b)
    deep_c = max(0.0, c[N_DEEP] + blamed_in_c - blamed_out_c)
    f.blamed_count = blamed_in_c
    f.blames_out = blamed_out_c
    f.deep_count = deep_c
    f.deep_base = (deep_b + 0.1) / (b[N_CALLS] + 1.0)
    f.deep_cur = deep_c / c[N_CALLS] if c[N_CALLS] else (1.0 if deep_c else 0.0)
    f.log_err_base, f.log_err_cur = b[N_LOG_ERR] / nbase, c[N_LOG_ERR] / ncur
    f.log_err_n_cur = c[N_LOG_ERR]
    # the baseline rate, with one line per baseline window as the floor (never seen is not impossible)
    f.log_err_expected = (b[N_LOG_ERR] + 1.0) / (nbase + 1) * ncur
    f.log_warn_base, f.log_warn_cur = b[N_LOG_WARN] / nbase, c[N_LOG_WARN] / ncur
    deploys = signals.deploys(node, cur_lo - 2 * bns, until_ns)
    if deploys:
        t, old, new = deploys[-1]
        f.deployed = f"{old} -> {new}"
    # onset: first current bucket where a local signal is clearly off
    base_self = f.self_base_ms or 0.0
    base_deep = f.deep_base
    for bstart, r in cur_rows:
        n = r[N_CALLS]
        if n <= 0:
            continue
        deep_rate = r[N_DEEP] / n
        self_ms = r[N_SELF] / r[N_SELF_N] / 1e6 if r[N_SELF_N] else 0.0
        if deep_rate > base_deep + 0.1 or (base_self and self_ms > 1.8 * base_self + 0.5):
            f.onset_ns = bstart
            break
    return f


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam)."""
    if k <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    term = math.exp(-lam)
    cdf = term
    for i in range(1, k):
        term *= lam / i
        cdf += term
    return max(0.0, 1.0 - cdf)


def _local_score(f: Features, w: RankWeights, has_baseline: bool, has_spans: bool = True) -> float:
    parts: dict[str, float] = {}
    deep_delta = max(0.0, f.deep_cur - f.deep_base)
    # significant only: at least 3 failing traces, unlikely under the baseline rate (Poisson)
    if f.deep_count >= 3 and poisson_sf(int(f.deep_count), f.deep_base * f.calls_cur) < 0.001:
        parts["deep"] = w.deep * min(1.0, deep_delta) ** 0.5
    if has_baseline and f.self_z > 3.0:
        parts["self_time"] = w.self_time * math.log1p(_rel_rise(f.self_cur_ms, f.self_base_ms, 0.3))
    if f.gap_edge:
        rise = f.gap_rise
        if rise > 0.5:
            parts["gap"] = w.gap * math.log1p(rise) * (0.5 + 0.5 * f.gap_share)
    log_rise = math.log1p(_rel_rise(f.log_err_cur + 0.5 * f.log_warn_cur,
                                    f.log_err_base + 0.5 * f.log_warn_base, 1.0))
    parts["logs"] = w.logs * max(f.anomaly_score, min(1.0, log_rise / 2.0))
    # the node's own error lines, far more than its baseline rate explains (Poisson, p < 0.001 as for
    # failing traces): a specific signal of its own (an exception it logs, a wrong answer it reports),
    # on the failing-trace scale, growing with the surprise (-log10 p) up to 30 decades
    if f.log_err_n_cur >= 3:
        log_p = poisson_sf(int(f.log_err_n_cur), f.log_err_expected)
        if log_p < 0.001:
            parts["error_logs"] = w.deep * min(1.0, -math.log10(max(log_p, 1e-300)) / 30.0) ** 0.5
    if f.deployed:
        parts["deploy"] = w.deploy
    if not has_spans:
        # a service that sends no spans (logs only): its own logs are all the evidence there is
        parts["logs"] = max(f.anomaly_score, min(1.0, log_rise / 2.0))
    evidence = sum(v for k, v in parts.items() if k not in ("logs", "deploy"))
    if has_spans and evidence <= 0.05:
        # logs or a deploy alone are weak: they count only for nodes with trace evidence
        parts = {k: v * 0.25 for k, v in parts.items()}
    f.parts = parts
    return sum(parts.values())


def _symptom_score(f: Features) -> float:
    err = max(0.0, f.err_cur - f.err_base)
    lat = math.log1p(_rel_rise(f.lat_cur_ms, f.lat_base_ms, 1.0)) if f.lat_base_ms else 0.0
    return max(err * 2.0, lat if lat > 0.3 else 0.0, f.anomaly_score)


def rank(signals: SpanSignals, graph: nx.DiGraph, anomalous: Sequence[str], onset_ns: int, until_ns: int,
         *, anomaly_scores: dict[str, float] | None = None, baseline_s: float = 300.0,
         weights: RankWeights | None = None, max_candidates: int = 50) -> RankResult:
    """Rank the candidates of an incident whose symptoms started at `onset_ns` (event time),
    using the signals up to `until_ns`. `anomalous`: services with anomalies (trigger first)."""
    w = weights or RankWeights()
    scores_in = anomaly_scores or {}
    g = graph.copy()
    for n in list(g.nodes):
        if n in IGNORED_NODES:
            g.remove_node(n)
    extra = [s for s in scores_in if s not in anomalous]
    cands = candidates_for(g, list(anomalous) + extra)[:max_candidates]
    if not cands:
        return RankResult([], {}, [], 0.0, [], [])
    # a service with no spans (it only sends logs, or the signals evicted it) is a candidate too:
    # a node without edges, so that every graph walk below can visit it
    g.add_nodes_from(cands)
    feats: dict[str, Features] = {}
    for n in cands:
        f = compute_features(signals, g, n, onset_ns, until_ns, baseline_s)
        f.anomaly_score = float(scores_in.get(n, 0.0))
        has_base = f.calls_base >= 5
        f.local = _local_score(f, w, has_base,
                                has_spans=f.calls_base + f.calls_cur > 0 or g.degree(n) > 0)
        f.symptom = _symptom_score(f)
        feats[n] = f
    # explaining away: a caller's error lines while a service it calls fails on its own (its own error
    # lines or failing traces), or while its failing spans name a callee, are that callee's symptom,
    # not the caller's evidence
    for n in cands:
        f = feats[n]
        if "error_logs" in f.parts and (f.blames_out > 0 or any(
                "error_logs" in feats[c].parts or "deep" in feats[c].parts
                for c in g.successors(n) if c in feats and c != n)):
            f.local -= f.parts.pop("error_logs")
    symptomatic = [n for n in cands if feats[n].symptom > 0.1 or feats[n].local > 0.5]
    # explained share: symptomatic nodes that reach the candidate through real call edges
    sub = g.subgraph(cands)
    explain: dict[str, float] = {}
    for n in cands:
        if not symptomatic:
            explain[n] = 0.0
            continue
        ups = nx.ancestors(sub, n) | {n}
        explain[n] = sum(1 for s in symptomatic if s in ups) / len(symptomatic)
    # personalised PageRank: walk from symptoms towards callees with local evidence
    pr: dict[str, float] = {n: 0.0 for n in cands}
    pers = {n: feats[n].symptom + feats[n].local + 1e-6 for n in cands}
    if sub.number_of_edges() > 0 and sum(pers.values()) > 1e-3:
        wg = nx.DiGraph()
        wg.add_nodes_from(cands)
        for u, v in sub.edges:
            wg.add_edge(u, v, weight=feats[v].local + 0.1 * feats[v].symptom + 1e-3)
        pr = personalized_pagerank(wg, pers)
    pr_max = max(pr.values()) or 1.0
    onsets = sorted({f.onset_ns for f in feats.values() if f.onset_ns})
    final: dict[str, float] = {}
    for n in cands:
        f = feats[n]
        s = f.local * (1.0 + w.explain * explain[n]) + w.pagerank * pr.get(n, 0.0) / pr_max
        if f.onset_ns and onsets and f.local > 0.3:
            s += w.onset * (1.0 / (1 + onsets.index(f.onset_ns)))
        f.parts["explain"] = explain[n]
        f.parts["pagerank"] = pr.get(n, 0.0) / pr_max
        final[n] = s
    ranked = sorted(final.items(), key=lambda kv: (-kv[1], cands.index(kv[0])))
    root = ranked[0][0]
    path = propagation_path(sub, root, symptomatic, list(anomalous))
    top = ranked[0][1]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    margin = (top - second) / (top + 1e-9) if top > 0 else 0.0
    strength = min(1.0, feats[root].local / 2.0)
    confidence = round(max(0.05, min(0.99, 0.35 + 0.4 * margin + 0.25 * strength)), 3)
    return RankResult(ranked, feats, path, confidence, symptomatic, cands)


def personalized_pagerank(g: nx.DiGraph, personalization: dict[str, float], alpha: float = 0.85,
                          iterations: int = 100, tol: float = 1e-10) -> dict[str, float]:
    """Power iteration (pure Python: the graphs are small and numpy is not a dependency). Edge
    attr `weight`; dangling nodes teleport by the personalization vector."""
    nodes = list(g.nodes)
    total = sum(personalization.get(n, 0.0) for n in nodes) or 1.0
    p = {n: personalization.get(n, 0.0) / total for n in nodes}
    out_w = {n: sum(d.get("weight", 1.0) for _, _, d in g.out_edges(n, data=True)) for n in nodes}
    x = dict(p)
    for _ in range(iterations):
        dangling = sum(x[n] for n in nodes if out_w[n] <= 0)
        nxt = {n: (1 - alpha) * p[n] + alpha * dangling * p[n] for n in nodes}
        for u, v, d in g.edges(data=True):
            if out_w[u] > 0:
                nxt[v] += alpha * x[u] * d.get("weight", 1.0) / out_w[u]
        err = sum(abs(nxt[n] - x[n]) for n in nodes)
        x = nxt
        if err < tol:
            break
    return x


def propagation_path(g: nx.DiGraph, root: str, symptomatic: Sequence[str],
                     anomalous: Sequence[str], max_paths: int = 200) -> list[str]:
    """Root cause first, then its callers up to the farthest symptomatic/anomalous caller, through
    real call edges (edge u -> v means u calls v; the failure travels v -> u). Paths through
    symptomatic nodes are preferred, then longer ones."""
    if root not in g:
        return [root]
    rev = g.reverse(copy=False)
    sym = (set(symptomatic) | set(anomalous)) & set(g.nodes)
    targets = [s for s in dict.fromkeys(list(anomalous) + list(symptomatic)) if s != root and s in g]
    restricted = rev.subgraph(sym | {root})
    best: list[str] = [root]
    seen = 0
    for t in targets:
        if t not in restricted:
            continue
        for p in nx.all_simple_paths(restricted, root, t, cutoff=8):
            seen += 1
            if len(p) > len(best):
                best = list(p)
            if seen >= max_paths:
                break
        if seen >= max_paths:
            break
    if len(best) == 1:
        for t in targets:
            try:
                p = nx.shortest_path(rev, root, t)
            except nx.NetworkXNoPath:
                continue
            if len(p) > len(best):
                best = p
    return best
