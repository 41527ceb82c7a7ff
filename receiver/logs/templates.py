"""Streaming, online log template mining (per service), bounded and persistent.

Per line:
  1. Line cache: the line with its digits deleted is looked up per service. Lines that differ only in
     digits (counters, ids, addresses, times) share one entry: a hit costs about a microsecond and
     skips masking and the tree.
  2. Masking (`receiver.logs.masking`): each whitespace token's variable spans (numbers, hex, UUIDs,
     IPs, paths, hosts, ids with digits, dates, ...) become `<*>`.
  3. Search: candidates are the templates with the same token count and first token (plus those whose
     first token is a wildcard). A template accepts the line when every differing token is a
     *value* difference (digits or wildcards in the differing part, or `key=`/`key:` values) and the
     share of equal tokens is >= `similarity_threshold`; the template is then generalised there,
     keeping the tokens' common punctuation (`(<*>)`, `user=<*>`, `[<*>]`).
  4. Otherwise a new template. Two templates differing in one *word* (`bytes`/`values`) stay apart
     (they are usually different events), but when `merge_siblings` templates differ only in the same
     position, that position is a variable: they are merged into the oldest (ids of the others become
     aliases of it, resolved by `template()`). Except at the line's first constant word (the request
     method, the verb), which names the event: there only first words each seen once are merged.

Bounded: templates per service and in all (least-recently-matched evicted, in batches), services
(least-recently-seen evicted), line cache, token cache, aliases, templates scanned per bucket. Every
eviction is counted in metrics. Templates survive restarts through `save(path)` / `load(path)` (JSON,
atomic replace; ids, aliases and recency order kept).

Threads: line-cache hits run without the lock (GIL-atomic reads, benign counter writes); everything
that changes structure runs under one lock. Speed and accuracy against drain3: `python -m bench parsing`
(figures in BENCHMARKS.md).
"""

from __future__ import annotations

import heapq
import itertools
import json
import operator
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from receiver.component import StageConfig, positive, require
from receiver.logs.masking import WILDCARD, Masker

STATE_VERSION = 1
_DIGITS = b"0123456789"
_MAX_ALIAS_HOPS = 32
_VERIFY = 8


@dataclass
class TemplatesConfig(StageConfig):
    """Template miner settings. One default for every system; no per-dataset tuning needed."""

    similarity_threshold: float = 0.5  # share of equal tokens needed to join a template
    merge_siblings: int = 3  # this many templates differing in one word position are merged
    merge_min_constants: int = 3  # ... if at least this many other tokens are constant words
    max_templates_per_service: int = 2000  # least-recently-matched template evicted beyond this
    max_templates_total: int = 20_000  # all services: the biggest service's LRU templates go first
    max_services: int = 500  # least-recently-seen service (with its templates) evicted beyond this
    max_bucket_templates: int = 200  # templates scanned per (length, first token) bucket
    cache_size: int = 50_000  # line-key -> template cache entries (all services)
    token_cache_size: int = 100_000  # token -> masked token cache entries
    max_line_chars: int = 4096  # longer messages are truncated before mining
    max_tokens: int = 128  # tokens beyond this are folded into one trailing <*>
    collapse_runs: int = 4  # this many bare <*> tokens in a row (a variable-length list) become one; 0: off
    extra_mask_patterns: list[str] = field(default_factory=list)  # tried first, per token; (?:..) only

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.similarity_threshold, (int, float)) and 0.0 < self.similarity_threshold <= 1.0,
            "templates.similarity_threshold",
            f"must be in (0, 1], got {self.similarity_threshold!r}",
        )
        for key in (
            "merge_siblings",
            "merge_min_constants",
            "max_templates_per_service",
            "max_templates_total",
            "max_services",
            "max_bucket_templates",
            "cache_size",
            "token_cache_size",
            "max_line_chars",
            "max_tokens",
        ):
            value = getattr(self, key)
            require(isinstance(value, int), f"templates.{key}", f"must be an integer, got {value!r}")
            positive(value, f"templates.{key}")
        require(self.merge_siblings >= 2, "templates.merge_siblings", "must be >= 2")
        require(self.max_tokens >= 2, "templates.max_tokens", "must be >= 2")
        require(
            isinstance(self.collapse_runs, int) and (self.collapse_runs == 0 or self.collapse_runs >= 2),
            "templates.collapse_runs",
            f"must be 0 (off) or >= 2, got {self.collapse_runs!r}",
        )
        require(isinstance(self.extra_mask_patterns, list), "templates.extra_mask_patterns", "must be a list")
        try:
            Masker(self.extra_mask_patterns)
        except (re.error, ValueError) as exc:
            require(False, "templates.extra_mask_patterns", str(exc))


class TemplateMatch(tuple):  # noqa: SLOT001 - a tuple: built in C, cheap per line
    """Result of `TemplateMiner.match`: `template_id` (stable per service), `template` (tokens joined by
    one space, parameters written `<*>`), `is_new` (this line created the template), `variant_of`
    (for a new template that differs from an existing one in a single word, that template's id: a
    cheap "probably not a novel event" hint; else None) and `params` (the variable parts of the line,
    in order; computed when read, so callers that only need the id / template pay nothing for it)."""

    __slots__ = ()

    template_id: int = property(operator.itemgetter(0))  # type: ignore[assignment]
    template: str = property(operator.itemgetter(1))  # type: ignore[assignment]
    is_new: bool = property(operator.itemgetter(2))  # type: ignore[assignment]

    def __new__(
        cls,
        template_id: int,
        template: str,
        is_new: bool,
        text: str = "",
        tokens: list[str] | None = None,
        miner: TemplateMiner | None = None,
    ) -> TemplateMatch:
        return tuple.__new__(cls, (template_id, template, is_new, text, tokens, miner))

    @property
    def variant_of(self) -> int | None:
        return self[6] if len(self) > 6 else None

    @property
    def params(self) -> list[str]:
        miner, tokens = self[5], self[4]
        if miner is None or tokens is None:
            return []
        return miner.extract_params(tokens, self[3])

    def __repr__(self) -> str:
        return (
            f"TemplateMatch(template_id={self[0]}, template={self[1]!r}, params={self.params!r}, "
            f"is_new={self[2]})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemplateMatch):
            return NotImplemented
        return (self[0], self[1], self[2], self.params) == (other[0], other[1], other[2], other.params)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]


_new_match = tuple.__new__


class _Cluster:
    __slots__ = (
        "id",
        "tokens",
        "template",
        "count",
        "alive",
        "key",
        "last",
        "merged_into",
        "verify",
        "_skel",
        "tail",
        "variant_of",
    )

    def __init__(self, cid: int, tokens: list[str], key: tuple[int, str], count: int = 0) -> None:
        self.id = cid
        self.tokens = tokens
        self.template = " ".join(tokens)
        self.count = count
        self.alive = True
        self.key = key
        self.last = 0  # miner line counter at the last match (bucket LRU)
        self.merged_into: _Cluster | None = None
        # a template keeping digits as constants (`ssh2`, `node n1`) is checked on its next
        # `_VERIFY` lines before the line cache (which ignores digits) is trusted for it
        self.verify = _VERIFY if _has_digit(self.template) else 0
        self._skel: list[str] | None = None
        self.tail: tuple[object, ...] | None = None  # sibling index key: (length, skeleton minus 1st)
        self.variant_of: int | None = None  # id of a template this one differs from in one word

    @property
    def skel(self) -> list[str]:
        """The tokens with their value parts erased (computed when first needed)."""
        if self._skel is None:
            self._skel = [_skel_token(t) for t in self.tokens]
        return self._skel

    def set_tokens(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.template = " ".join(tokens)
        self.verify = _VERIFY if _has_digit(self.template) else 0
        self._skel = None


def _skel_token(token: str) -> str:
    """A token with its value parts erased: what must stay equal between sibling templates."""
    if WILDCARD in token or _DIGIT(token) is not None:
        return WILDCARD
    i = token.find("=")
    if i > 0:
        return token[: i + 1]
    if len(token) <= 9 and token.lower() in _VALUE_WORDS:
        return WILDCARD
    return token


class _Service:
    __slots__ = ("clusters", "buckets", "tails", "cache", "aliases", "next_id", "last")

    def __init__(self) -> None:
        self.clusters: dict[int, _Cluster] = {}  # by id; recency in cluster.last
        self.buckets: dict[tuple[int, str], list[_Cluster]] = {}
        self.tails: dict[tuple[object, ...], list[_Cluster]] = {}  # templates by all but their 1st word
        self.cache: dict[bytes, _Cluster] = {}  # the line without its digits -> cluster
        self.aliases: OrderedDict[int, int] = OrderedDict()  # merged id -> id it was merged into
        self.next_id = 1
        self.last = 0  # miner line counter when this service was last seen (service LRU)


_DIGIT = re.compile(r"[0-9]").search
_LAST = operator.attrgetter("last")


def _has_digit(token: str) -> bool:
    return _DIGIT(token) is not None


def _first_key(tokens: list[str]) -> str:
    if not tokens:
        return ""
    first = tokens[0]
    if WILDCARD in first or _has_digit(first):
        return WILDCARD
    return first


class _Metrics(Collector):
    def __init__(self, miner: TemplateMiner) -> None:
        self._m = miner

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        m = self._m
        yield CounterMetricFamily("log_templates_lines", "Log lines matched against templates", value=m.lines)
        yield CounterMetricFamily("log_templates_created", "Templates created", value=m.created)
        yield CounterMetricFamily(
            "log_templates_merged",
            "Templates merged into a sibling (their ids became aliases)",
            value=m.merged,
        )
        ev = CounterMetricFamily(
            "log_templates_evicted", "Templates evicted because a cap was hit", labels=["reason"]
        )
        ev.add_metric(["service_templates_cap"], m.evicted_template_cap)
        ev.add_metric(["total_templates_cap"], m.evicted_total_cap)
        ev.add_metric(["bucket_cap"], m.evicted_bucket_cap)
        ev.add_metric(["service_evicted"], m.evicted_with_service)
        yield ev
        yield CounterMetricFamily(
            "log_template_services_evicted", "Services evicted (max_services hit)", value=m.services_evicted
        )
        yield CounterMetricFamily(
            "log_template_cache_evicted", "Line cache entries dropped (cache_size hit)", value=m.cache_evicted
        )
        yield CounterMetricFamily(
            "log_template_token_cache_evicted",
            "Token masking cache entries dropped (token_cache_size hit)",
            value=m._masker.cache_dropped,
        )
        yield CounterMetricFamily(
            "log_template_aliases_evicted",
            "Merged-template aliases dropped (max_templates_per_service per service / max_templates_total)",
            value=m.aliases_evicted,
        )
        yield GaugeMetricFamily(
            "log_templates_active", "Templates currently held", value=m.active_templates()
        )
        yield GaugeMetricFamily(
            "log_template_services_active", "Services currently held", value=len(m._services)
        )


class TemplateMiner:
    """Online template miner, one template set per service. Thread-safe (one lock)."""

    def __init__(
        self, config: TemplatesConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config or TemplatesConfig()
        self.config.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._masker = Masker(self.config.extra_mask_patterns, self.config.token_cache_size)
        self._max_chars = self.config.max_line_chars
        self._max_tokens = self.config.max_tokens
        self._min_constants = self.config.merge_min_constants
        self._run = self.config.collapse_runs
        self._services: dict[str, _Service] = {}
        self._lock = threading.Lock()
        self._cache_entries = 0
        self._total = 0  # templates held, all services
        self._alias_total = 0  # aliases held, all services
        self._ticks = itertools.count(1)  # line counter: next() is atomic, so the hot path needs no lock
        self.created = 0
        self.merged = 0
        self.evicted_template_cap = 0
        self.evicted_total_cap = 0
        self.evicted_bucket_cap = 0
        self.evicted_with_service = 0
        self.services_evicted = 0
        self.cache_evicted = 0
        self.aliases_evicted = 0
        self.registry.register(_Metrics(self))

    @property
    def lines(self) -> int:
        """Lines matched so far."""
        return int(self._ticks.__reduce__()[1][0]) - 1  # CPython 3.11: a count's current value

    # ------------------------------------------------------------------ public API
    def match(self, service: str, text: str) -> TemplateMatch:
        """Match one message, learning from it. Returns the (possibly new / generalised) template."""
        if text.__class__ is not str:
            text = "" if text is None else str(text)
        if service.__class__ is not str:
            service = str(service)
        if len(text) > self._max_chars:
            text = text[: self._max_chars]
        try:
            key = text.encode().translate(None, _DIGITS)
        except UnicodeEncodeError:  # lone surrogates
            key = text.encode("utf-8", "backslashreplace").translate(None, _DIGITS)
        tick = next(self._ticks)  # atomic under the GIL
        # Hot path without the lock: dict reads are atomic, and the only writes (recency, counts)
        # are benign; everything that changes structure below runs under the lock.
        svc = self._services.get(service)
        if svc is not None:
            svc.last = tick
            cl = svc.cache.get(key)
            if cl is not None and cl.alive and not cl.verify:
                cl.count += 1
                cl.last = tick
                return _new_match(TemplateMatch, (cl.id, cl.template, False, text, cl.tokens, self))
        with self._lock:
            svc = self._services.get(service)
            if svc is None:
                svc = self._new_service(service)
            svc.last = tick
            cl = svc.cache.get(key)
            if cl is not None:
                if not cl.alive:
                    cl = _live(cl)
                if cl is not None and not cl.verify:
                    cl.count += 1
                    cl.last = tick
                    return _new_match(TemplateMatch, (cl.id, cl.template, False, text, cl.tokens, self))
            tokens = self._masker.tokens(text)
            if self._run and tokens.count(WILDCARD) >= self._run:
                tokens = _collapse_runs(tokens, None, self._run)[0]
            if len(tokens) > self._max_tokens:
                tokens = tokens[: self._max_tokens - 1] + [WILDCARD]
            cl, is_new = self._search_or_create(svc, tokens)
            if cl.verify and not is_new:
                cl.verify -= 1
            cl.count += 1
            cl.last = tick
            self._cache_put(svc, key, cl)
            if is_new:
                return _new_match(
                    TemplateMatch, (cl.id, cl.template, True, text, cl.tokens, self, cl.variant_of)
                )
            return _new_match(TemplateMatch, (cl.id, cl.template, False, text, cl.tokens, self))

    def extract_params(self, template_tokens: list[str], text: str) -> list[str]:
        """The variable parts of `text` under a template (given as its token list), in order."""
        with self._lock:  # the masker's token cache is shared
            tokens, rparams = self._masker.mask_tokens(text)
        if self._run and tokens.count(WILDCARD) >= self._run:
            tokens, rparams = _collapse_runs(tokens, rparams, self._run)
        if len(tokens) > self._max_tokens:
            tokens = tokens[: self._max_tokens - 1] + [WILDCARD]
        if tokens == template_tokens:
            return rparams
        return _params(template_tokens, tokens, rparams)

    def template(self, service: str, template_id: int) -> str | None:
        """The current template of an id (an id merged into another resolves to the merged one)."""
        with self._lock:
            svc = self._services.get(service)
            if svc is None:
                return None
            cl = self._resolve(svc, template_id)
            return cl.template if cl is not None else None

    def canonical_id(self, service: str, template_id: int) -> int | None:
        """The id a (possibly merged) template id lives on as, or None if unknown / evicted."""
        with self._lock:
            svc = self._services.get(service)
            if svc is None:
                return None
            cl = self._resolve(svc, template_id)
            return cl.id if cl is not None else None

    def templates(self, service: str) -> dict[int, str]:
        """All live templates of a service, by id."""
        with self._lock:
            svc = self._services.get(service)
            if svc is None:
                return {}
            return {cid: cl.template for cid, cl in sorted(svc.clusters.items())}

    def services(self) -> list[str]:
        with self._lock:
            return list(self._services)

    def active_templates(self) -> int:
        return sum(len(s.clusters) for s in list(self._services.values()))

    def save(self, path: str) -> None:
        """Write all templates (and aliases) as JSON, atomically (temp file + fsync + rename)."""
        with self._lock:
            ordered = sorted(self._services.items(), key=lambda kv: kv[1].last)  # LRU order kept
            state = {
                "version": STATE_VERSION,
                "services": {
                    name: {
                        "next_id": svc.next_id,
                        # least recently matched first, so the eviction order survives too
                        "templates": [
                            {"id": cl.id, "tokens": cl.tokens, "count": cl.count}
                            for cl in sorted(svc.clusters.values(), key=_LAST)
                        ],
                        "aliases": [[a, b] for a, b in svc.aliases.items()],
                    }
                    for name, svc in ordered
                },
            }
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".templates-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load(self, path: str) -> int:
        """Replace the state with the one saved at `path` (caps of the current config applied).
        Returns the number of templates loaded. Raises ValueError on a malformed file; the current
        state is then left untouched."""
        with open(path, encoding="utf-8") as fh:
            try:
                state = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not a template state file: {exc}") from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported template state version")
        cfg = self.config
        services: dict[str, _Service] = {}
        loaded = 0
        try:
            items = list(state["services"].items())[-cfg.max_services :]
            for rank, (name, data) in enumerate(items):
                svc = _Service()
                svc.last = rank - len(items)  # older than anything matched after the load
                kept = list(data["templates"])[-cfg.max_templates_per_service :]
                for idx, item in enumerate(kept):
                    tokens = [str(t) for t in item["tokens"]]
                    if not tokens:
                        tokens = [""]
                    cid = int(item["id"])
                    cl = _Cluster(cid, tokens, (len(tokens), _first_key(tokens)), int(item.get("count", 0)))
                    cl.last = idx - len(kept)  # keeps the saved recency order
                    svc.clusters[cid] = cl
                    svc.buckets.setdefault(cl.key, []).append(cl)
                    self._index_tail(svc, cl)
                    loaded += 1
                for a, b in list(data.get("aliases", []))[-cfg.max_templates_per_service :]:
                    svc.aliases[int(a)] = int(b)
                ids = list(svc.clusters) + list(svc.aliases)
                svc.next_id = max(int(data.get("next_id", 1)), max(ids, default=0) + 1)
                services[str(name)] = svc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: malformed template state: {exc}") from exc
        with self._lock:
            self._services = services
            self._cache_entries = 0
            self._total = loaded
            self._alias_total = sum(len(x.aliases) for x in services.values())
        return loaded

    # ------------------------------------------------------------------ internals
    def _resolve(self, svc: _Service, template_id: int) -> _Cluster | None:
        cid = template_id
        for _ in range(_MAX_ALIAS_HOPS):
            cl = svc.clusters.get(cid)
            if cl is not None:
                return cl
            nxt = svc.aliases.get(cid)
            if nxt is None:
                return None
            cid = nxt
        return None

    def _new_service(self, name: str) -> _Service:
        if len(self._services) >= self.config.max_services:
            oldest = min(self._services, key=lambda n: self._services[n].last)
            old = self._services.pop(oldest)
            self.services_evicted += 1
            self.evicted_with_service += len(old.clusters)
            self._total -= len(old.clusters)
            self._alias_total -= len(old.aliases)
            self._cache_entries -= len(old.cache)
            for cl in old.clusters.values():
                cl.alive = False
        svc = _Service()
        self._services[name] = svc
        return svc

    def _cache_put(self, svc: _Service, key: bytes, cl: _Cluster) -> None:
        if key not in svc.cache:
            if self._cache_entries >= self.config.cache_size:
                # drop this service's whole cache (cheap, bounded; it re-warms from the tree)
                victim = svc if svc.cache else next((s for s in self._services.values() if s.cache), svc)
                dropped = len(victim.cache)
                victim.cache.clear()
                self._cache_entries -= dropped
                self.cache_evicted += dropped
            self._cache_entries += 1
        svc.cache[key] = cl

    def _best(self, bucket: Iterable[_Cluster], tokens: list[str]) -> _Cluster | None:
        n = len(tokens)
        need = self.config.similarity_threshold * n
        eq = operator.eq
        best: _Cluster | None = None
        best_same = -1
        best_params = -1
        for cl in bucket:
            same = sum(map(eq, cl.tokens, tokens))
            if same < need or same < best_same:
                continue  # as Drain: only equal tokens count as similar (wildcards are allowed)
            params = 0
            ok = True
            if same < n:
                anchored = False  # a non-identical line must share at least one constant word
                for a, b in zip(cl.tokens, tokens, strict=True):
                    if a == b:
                        if not anchored and (WILDCARD not in a or (a[0] != "<" and _keyed(a))):
                            anchored = True
                        continue
                    if WILDCARD in a and _glob(a, b):
                        params += 1
                    elif not _value_diff(a, b):
                        ok = False
                        break
                ok = ok and anchored
            if ok and (same > best_same or params > best_params):
                best, best_same, best_params = cl, same, params
        return best

    def _search_or_create(self, svc: _Service, tokens: list[str]) -> tuple[_Cluster, bool]:
        n = len(tokens)
        first = _first_key(tokens)
        key = (n, first)
        best = None
        bucket = svc.buckets.get(key)
        if bucket:
            best = self._best(bucket, tokens)
        if best is None and first != WILDCARD:
            wild = svc.buckets.get((n, WILDCARD))
            if wild:
                best = self._best(wild, tokens)
        if best is not None:
            if best.tokens != tokens:
                new_tokens = [
                    a if a == b or (WILDCARD in a and _glob(a, b)) else _merge_token(a, b)
                    for a, b in zip(best.tokens, tokens, strict=True)
                ]
                if new_tokens != best.tokens:
                    self._retokenize(svc, best, new_tokens)
            return best, False
        cl = self._create(svc, tokens, key)
        target = self._merge_siblings(svc, cl)
        if target is not None:
            return target, False
        return cl, True

    def _merge_siblings(self, svc: _Service, cl: _Cluster) -> _Cluster | None:
        """If `merge_siblings` templates (cl included) differ from each other in exactly one and the
        same position, that position is a variable: merge them into the oldest one. A new template
        with a one-word sibling remembers it (`variant_of`).

        The message's first constant word (`_lead_word`) usually says what happened: siblings
        differing there stay apart once one of them has recurred. Only a burst of first words each
        seen once (table or device names heading their lines) is taken as a variable."""
        need = self.config.merge_siblings - 1
        # candidates: same first word (same bucket: they may differ later on) or same everything but
        # the first word (the tail index)
        limit = self.config.max_bucket_templates
        same_first = svc.buckets.get(cl.key) or []
        same_tail = svc.tails.get(cl.tail) or [] if cl.tail is not None else []
        if len(same_first) + len(same_tail) < 3:  # cl is in both lists
            return None
        groups: dict[int, list[_Cluster]] = {}
        # a one-word difference only says "variable" when enough constant words surround it
        skel = cl.skel
        n_const = sum(1 for t in skel if t != WILDCARD)
        constants = [n_const - (t != WILDCARD) for t in skel]
        lead = _lead_word(cl.tokens, skel)
        min_constants = self._min_constants
        ne = operator.ne
        seen: set[int] = set()
        for other in chain(same_first[-limit:], same_tail[-limit:]):
            if other is cl or other.id in seen or sum(map(ne, other.skel, skel)) != 1:
                continue
            seen.add(other.id)
            if cl.variant_of is None:
                cl.variant_of = other.id
            pos = next(i for i, (a, b) in enumerate(zip(other.skel, skel, strict=True)) if a != b)
            if constants[pos] >= min_constants:
                group = groups.setdefault(pos, [])
                group.append(other)
                if len(group) >= need and (pos != lead or all(o.count <= 1 for o in group)):
                    return self._merge(svc, [*group, cl])
        return None

    def _merge(self, svc: _Service, members: list[_Cluster]) -> _Cluster:
        target = min(members, key=lambda c: c.id)
        new_tokens = list(target.tokens)
        for m in members:
            if m is target:
                continue
            for i, (a, b) in enumerate(zip(new_tokens, m.tokens, strict=True)):
                if a != b and not (WILDCARD in a and _glob(a, b)):
                    new_tokens[i] = _merge_token(a, b)
        for m in members:
            if m is target:
                continue
            self._remove(svc, m)
            m.merged_into = target
            target.count += m.count
            target.last = max(target.last, m.last)
            self._alias(svc, m.id, target.id)
            self.merged += 1
        self._retokenize(svc, target, new_tokens)
        new_key = (len(new_tokens), _first_key(new_tokens))
        if new_key != target.key:  # the first token became a wildcard: move to the wildcard bucket
            self._unbucket(svc, target)
            target.key = new_key
            svc.buckets.setdefault(new_key, []).append(target)
        return target

    def _alias(self, svc: _Service, old: int, new: int) -> None:
        """Remember that `old` was merged into `new`. Capped per service (max_templates_per_service)
        and in all (max_templates_total); the oldest aliases go first."""
        svc.aliases[old] = new
        self._alias_total += 1
        cfg = self.config
        if len(svc.aliases) > cfg.max_templates_per_service:
            svc.aliases.popitem(last=False)
            self._alias_total -= 1
            self.aliases_evicted += 1
        if self._alias_total > cfg.max_templates_total:
            victim = (
                svc if len(svc.aliases) > 1 else max(self._services.values(), key=lambda x: len(x.aliases))
            )
            if victim.aliases:
                victim.aliases.popitem(last=False)
                self._alias_total -= 1
                self.aliases_evicted += 1

    def _create(self, svc: _Service, tokens: list[str], key: tuple[int, str]) -> _Cluster:
        cfg = self.config
        bucket = svc.buckets.get(key)
        if bucket is not None and len(bucket) >= cfg.max_bucket_templates:
            victim = min(bucket, key=lambda c: c.last)
            self._remove(svc, victim)
            self.evicted_bucket_cap += 1
        if len(svc.clusters) >= cfg.max_templates_per_service:
            # evict the least recently matched templates, a batch at a time (amortised O(log n))
            self.evicted_template_cap += self._evict_lru(svc, max(1, cfg.max_templates_per_service // 20))
        if self._total >= cfg.max_templates_total:
            biggest = max(self._services.values(), key=lambda x: len(x.clusters))
            self.evicted_total_cap += self._evict_lru(biggest, max(1, len(biggest.clusters) // 20))
        cl = _Cluster(svc.next_id, tokens, key)
        svc.next_id += 1
        svc.clusters[cl.id] = cl
        svc.buckets.setdefault(key, []).append(cl)
        self._index_tail(svc, cl)
        self._total += 1
        self.created += 1
        return cl

    def _evict_lru(self, svc: _Service, batch: int) -> int:
        victims = heapq.nsmallest(batch, svc.clusters.values(), key=_LAST)
        for victim in victims:
            self._remove(svc, victim)
        return len(victims)

    def _unbucket(self, svc: _Service, cl: _Cluster) -> None:
        bucket = svc.buckets.get(cl.key)
        if bucket is not None:
            try:
                bucket.remove(cl)
            except ValueError:
                pass
            if not bucket:
                del svc.buckets[cl.key]

    def _remove(self, svc: _Service, cl: _Cluster) -> None:
        cl.alive = False
        if svc.clusters.pop(cl.id, None) is not None:
            self._total -= 1
        self._unbucket(svc, cl)
        self._unindex_tail(svc, cl)

    def _index_tail(self, svc: _Service, cl: _Cluster) -> None:
        key = (len(cl.tokens), *cl.skel[1:])
        cl.tail = key
        svc.tails.setdefault(key, []).append(cl)

    def _unindex_tail(self, svc: _Service, cl: _Cluster) -> None:
        key = cl.tail
        if key is None:
            return
        cl.tail = None
        same = svc.tails.get(key)
        if same is not None:
            try:
                same.remove(cl)
            except ValueError:
                pass
            if not same:
                del svc.tails[key]

    def _retokenize(self, svc: _Service, cl: _Cluster, tokens: list[str]) -> None:
        self._unindex_tail(svc, cl)
        cl.set_tokens(tokens)
        self._index_tail(svc, cl)


def _lead_word(tokens: list[str], skel: list[str]) -> int:
    """Position of the message's first constant word, after a leading bracketed context (`[client
    <ip>]`, `[req-<id> ...]`, `[instance: <id>]`: attached by the logger, not the message), or -1. It
    usually names the event: the request method (`"GET <path>`), the verb (`Started Session <n>`).
    Drain keys its prefix tree on a message's first tokens for the same reason (ICWS'17)."""
    start = 0
    if tokens and tokens[0].startswith("["):
        start = next((i + 1 for i, t in enumerate(tokens) if "]" in t), 0)
    return next((i for i in range(start, len(skel)) if skel[i] != WILDCARD), -1)


def _collapse_runs(tokens: list[str], params: list[str] | None, run: int) -> tuple[list[str], list[str]]:
    """`run` or more bare `<*>` tokens in a row are a variable-length list of values: one `<*>`
    (its parameter: the values joined by spaces). Every `<*>` in a token stands for one parameter."""
    out: list[str] = []
    out_params: list[str] = []
    p = 0  # index into params
    i = 0
    n = len(tokens)
    while i < n:
        t = tokens[i]
        if t == WILDCARD:
            j = i
            while j < n and tokens[j] == WILDCARD:
                j += 1
            if j - i >= run:
                out.append(WILDCARD)
                if params is not None:
                    out_params.append(" ".join(params[p : p + j - i]))
            else:
                out.extend(tokens[i:j])
                if params is not None:
                    out_params.extend(params[p : p + j - i])
            p += j - i
            i = j
            continue
        out.append(t)
        holes = t.count(WILDCARD)
        if params is not None and holes:
            out_params.extend(params[p : p + holes])
        p += holes
        i += 1
    if params is not None and p < len(params):
        out_params.extend(params[p:])
    return out, out_params


def _live(cl: _Cluster | None) -> _Cluster | None:
    """Follow merges from a cached (dead) cluster to the live one it was merged into, if any."""
    for _ in range(_MAX_ALIAS_HOPS):
        if cl is None or cl.alive:
            return cl
        cl = cl.merged_into
    return None


def _params(template_tokens: list[str], tokens: list[str], rparams: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(rparams)
    for t, m in zip(template_tokens, tokens, strict=False):
        holes = m.count(WILDCARD)
        if t == m or WILDCARD not in t:
            for _ in range(holes):
                out.append(next(it, ""))
            continue
        # generalised position: the original token, minus the template's constant shell
        value = m
        if holes:
            pieces = m.split(WILDCARD)
            value = pieces[0]
            for piece in pieces[1:]:
                value += next(it, "") + piece
        first = t.find(WILDCARD)
        last = t.rfind(WILDCARD)
        pre, suf = t[:first], t[last + 3 :]
        if (
            WILDCARD not in pre
            and WILDCARD not in suf
            and len(value) > len(pre) + len(suf)
            and value.startswith(pre)
            and value.endswith(suf)
        ):
            value = value[len(pre) : len(value) - len(suf)]
        out.append(value)
    return out


_KEYED = re.compile(r"[A-Za-z_][\w.:\-]*[=:]").match


def _keyed(token: str) -> bool:
    """Is the token a named value (`lock=<*>`, `uid:<*>`)? Its name is constant text."""
    return _KEYED(token) is not None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _glob(pattern: str, token: str) -> bool:
    """Does `token` fit a template token with wildcards (`pre<*>...<*>suf`)? One gap per `<*>`."""
    parts = pattern.split(WILDCARD)
    pre, suf = parts[0], parts[-1]
    if len(token) <= len(pre) + len(suf) or not token.startswith(pre) or not token.endswith(suf):
        return False
    pos = len(pre)
    end = len(token) - len(suf)
    for mid in parts[1:-1]:
        if not mid:
            continue
        k = token.find(mid, pos + 1, end)
        if k < 0:
            return False
        pos = k + len(mid)
    return pos < end or (len(parts) == 2 and pos <= end)


def _shell(a: str, b: str) -> tuple[int, int]:
    """Lengths of the common prefix (ending on a delimiter) and common suffix (starting on one)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    # the prefix must end on a delimiter (not inside a word, not inside a <*>)
    while i > 0 and (_is_word(a[i - 1]) or a[i - 1] in "<*"):
        i -= 1
    j = 0
    while j < n - i and a[-1 - j] == b[-1 - j]:
        j += 1
    while j > 0 and (_is_word(a[len(a) - j]) or a[len(a) - j] in "*>"):
        j -= 1
    return i, j


# booleans and null values; a lone "-" is the conventional empty value of a field (the Common Log Format's
# missing user, syslog's NILVALUE in RFC 5424)
_VALUE_WORDS = frozenset({"true", "false", "null", "none", "nil", "undefined", "-"})


def _value_like(mid: str) -> bool:
    """Is the differing part of a token a value: empty, wildcards only, containing a digit, or a
    boolean / null word?"""
    if not mid or _has_digit(mid):
        return True
    if WILDCARD in mid and not mid.replace(WILDCARD, "").strip(":.,;/@#-_ "):
        return True
    return mid.lower() in _VALUE_WORDS


def _value_diff(a: str, b: str) -> bool:
    """Do two differing tokens differ in a value rather than in a word? Yes when both differing parts
    are value-like, or when they are the value of a `key=` / `key:` prefix."""
    if a.isalpha() and b.isalpha():  # fast path: two plain words
        return a.lower() in _VALUE_WORDS and b.lower() in _VALUE_WORDS
    i, j = _shell(a, b)
    if i > 0 and ("=" in a[:i] or a[i - 1] in ":." or a[i - 1] == "|"):
        return True  # the value of key= / key: / a dotted or |-separated name (com.x.<*>)
    return _value_like(a[i : len(a) - j]) and _value_like(b[i : len(b) - j])


def _compatible(a: str, b: str) -> bool:
    """Could one template cover both tokens without a word changing?"""
    return (WILDCARD in a and _glob(a, b)) or (WILDCARD in b and _glob(b, a)) or _value_diff(a, b)


def _merge_token(a: str, b: str) -> str:
    """Generalise two differing tokens, keeping their common punctuation shell: `(root)` and `(cyrus)`
    give `(<*>)`, `user=root` and `user=guest` give `user=<*>`, `[A1]` and `B2` give `<*>`."""
    if a == WILDCARD or not a or not b:
        return WILDCARD
    i, j = _shell(a, b)
    return a[:i] + WILDCARD + (a[len(a) - j :] if j else "")
