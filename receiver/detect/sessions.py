"""Sessions of an entity (a block, a VM, a job): what their order and counts say, and how that is
learned. Pure functions over a service's `Baseline` and one session `Window`.

  * count invariants (Invariants-Mining spirit, learned online): pairs of frequent templates whose
    counts are equal in at least `inv_min_hold` of the sessions showing either, and templates that
    (almost) always come with another one;
  * transitions: first and second order, with start and end markers, add-`seq_smoothing` smoothed,
    backing off to first order while a context has fewer than `seq_min_support` occurrences.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter

from receiver.detect.baseline import END, START, Baseline
from receiver.detect.config import DetectConfig
from receiver.detect.problem import Problem
from receiver.logs.windows import Window


def invariants(b: Baseline, w: Window) -> Problem | None:
    """The strongest count invariant the session breaks; confidence = the share of past sessions that
    obeyed it."""
    c = w.template_counts
    worst: tuple[float, str, list[int]] | None = None
    for x, cx in c.items():
        for y, rate, h, n in b.eq_by.get(x, ()):
            cy = c.get(y, 0)
            if cx != cy and (cy == 0 or x < y) and (worst is None or rate > worst[0]):
                worst = (rate, f"count(#{x}) = {cx} but count(#{y}) = {cy}; they were equal in {h} "
                         f"of {n} sessions showing either ({rate:.1%})", [x, y])
        for y, rate, h, n in b.imp_by.get(x, ()):
            if y not in c and (worst is None or rate > worst[0]):
                worst = (rate, f"#{x} occurred without #{y}; they came together in {h} of {n} "
                         f"sessions ({rate:.1%})", [x, y])
    if worst is None:
        return None
    rate, why, tids = worst
    names = "; ".join(f"#{t} = \"{w.templates[t][:100]}\"" for t in tids if t in w.templates)
    return Problem("sequence", rate, "medium",
                   f"session {w.key} ({w.count} lines) breaks a count invariant: {why}"
                   + (f" [{names}]" if names else ""), tids, signature=(-10, *tids))


def transition_probability(b: Baseline, cfg: DetectConfig, ctx2: tuple[int, ...], ctx1: tuple[int, ...],
                           nxt: int) -> float | None:
    for ctx in (ctx2, ctx1):
        total = b.ctx_total.get(ctx, 0)
        if total >= cfg.seq_min_support:
            nexts = b.trans.get(ctx, {})
            k = len(nexts) + 1
            return (nexts.get(nxt, 0) + cfg.seq_smoothing) / (total + cfg.seq_smoothing * k)
    return None


def sequence(b: Baseline, w: Window, cfg: DetectConfig,
             confidence: Callable[[float], float]) -> Problem | None:
    """The session's least likely step; `confidence` maps its probability to a confidence."""
    seq = [START, *w.template_sequence, END]
    worst_p = 1.0
    worst_at = -1
    for i in range(1, len(seq)):
        ctx2 = (seq[i - 2], seq[i - 1]) if i >= 2 else (START, START)
        p = transition_probability(b, cfg, ctx2, (seq[i - 1],), seq[i])
        if p is not None and p < worst_p:
            worst_p, worst_at = p, i
    if worst_at < 0:
        return None
    conf = confidence(worst_p)
    if conf <= 0.05:
        return None

    def name(t: int) -> str:
        if t == START:
            return "<session start>"
        if t == END:
            return "<session end>"
        return f"\"{w.templates.get(t, '#' + str(t))[:120]}\""

    prev, nxt = seq[worst_at - 1], seq[worst_at]
    if nxt == END:
        what = f"session ended after {name(prev)}, which rarely closes a session"
    else:
        what = f"{name(nxt)} followed {name(prev)}"
    return Problem(
        "sequence", conf, "medium",
        f"unusual order in session {w.key} ({w.count} lines): {what} "
        f"(learned P = {worst_p:.2g} from {b.sessions} sessions)",
        [nxt] if nxt >= 0 else ([prev] if prev >= 0 else []), signature=(prev, nxt))


def learn_transitions(b: Baseline, w: Window, cfg: DetectConfig, evicted: Counter) -> None:
    """Count the session's first- and second-order transitions; past the cap the rarest half goes."""
    seq = [START, START, *w.template_sequence, END]
    for i in range(2, len(seq)):
        _count(b, (seq[i - 2], seq[i - 1]), seq[i])
        _count(b, (seq[i - 1],), seq[i])
    if b.n_trans > cfg.max_transitions_per_service:
        pairs = sorted((c, ctx, n) for ctx, nexts in b.trans.items() for n, c in nexts.items())
        drop = pairs[: len(pairs) // 2]
        for c, ctx, n in drop:
            del b.trans[ctx][n]
            b.ctx_total[ctx] -= c
            if not b.trans[ctx]:
                del b.trans[ctx]
                del b.ctx_total[ctx]
        b.n_trans -= len(drop)
        evicted.labels("transitions").inc(len(drop))


def _count(b: Baseline, ctx: tuple[int, ...], nxt: int) -> None:
    nexts = b.trans.get(ctx)
    if nexts is None:
        nexts = b.trans[ctx] = {}
    if nxt not in nexts:
        nexts[nxt] = 0
        b.n_trans += 1
    nexts[nxt] += 1
    b.ctx_total[ctx] = b.ctx_total.get(ctx, 0) + 1


def learn_invariants(b: Baseline, w: Window, cfg: DetectConfig, evicted: Counter,
                     bad: set[int] | None = None) -> None:
    """Count the session's templates (`bad` ones excepted: remembered failures are not learned) and
    its pairs of frequent templates, and refresh the active invariants."""
    if not cfg.inv_templates:
        return
    c = w.template_counts
    for t in c:
        if t >= 0 and not (bad and t in bad):
            b.sess_df[t] = b.sess_df.get(t, 0) + 1
    if len(b.sess_df) > cfg.max_templates_per_service:
        # amortised: keep the most common three quarters, so the sort runs once per cap/4 new templates
        keep_n = max(1, cfg.max_templates_per_service * 3 // 4)
        keep = sorted(b.sess_df.items(), key=lambda kv: -kv[1])[:keep_n]
        evicted.labels("session_templates").inc(len(b.sess_df) - len(keep))
        b.sess_df = dict(keep)
        b.pairs = {k: v for k, v in b.pairs.items() if k[0] in b.sess_df and k[1] in b.sess_df}
    present = [t for t in c if t >= 0]
    if len(present) > cfg.inv_templates:
        present = sorted(present, key=lambda t: -b.sess_df.get(t, 0))[: cfg.inv_templates]
    present.sort()
    pairs = b.pairs
    for i, x in enumerate(present):
        cx = c[x]
        for y in present[i + 1:]:
            st = pairs.get((x, y))
            if st is None:
                st = pairs[(x, y)] = [0, 0]
            st[0] += 1
            st[1] += cx == c[y]
    if len(pairs) > cfg.max_pairs_per_service:
        ranked = sorted(pairs.items(), key=lambda kv: kv[1][0])
        drop = len(pairs) - cfg.max_pairs_per_service // 2
        for k, _ in ranked[:drop]:
            del pairs[k]
        evicted.labels("pairs").inc(drop)
    # the active set follows every session while the baseline is young (and the table small),
    # then every 64 sessions (rates are stable by then; the rebuild is O(pairs))
    young = b.sessions < 512 and len(pairs) <= 4096
    if young or b.sessions % 64 == 0:
        rebuild_invariants(b, cfg)


def rebuild_invariants(b: Baseline, cfg: DetectConfig) -> None:
    """Turn pair counts into the active invariants:
    equal counts: sessions with both and equal / sessions with either (= df(x) + df(y) - both);
    x implies y: sessions with both / df(x)."""
    eq_by: dict[int, list[tuple[int, float, int, int]]] = {}
    imp_by: dict[int, list[tuple[int, float, int, int]]] = {}
    df = b.sess_df
    for (x, y), (both, equal) in b.pairs.items():
        dx, dy = df.get(x, 0), df.get(y, 0)
        n_either = dx + dy - both
        if n_either >= cfg.inv_min_support and equal / n_either >= cfg.inv_min_hold:
            rate = equal / n_either
            eq_by.setdefault(x, []).append((y, rate, equal, n_either))
            eq_by.setdefault(y, []).append((x, rate, equal, n_either))
        for a, bb, da in ((x, y, dx), (y, x, dy)):
            if da >= cfg.inv_min_support and both / da >= cfg.inv_min_hold:
                imp_by.setdefault(a, []).append((bb, both / da, both, da))
    b.eq_by, b.imp_by = eq_by, imp_by
