"""Streaming, online log template mining (per service), bounded and persistent.

Pipeline per line:
  1. `Masker` replaces variable-looking spans (numbers, hex, UUIDs, IPs, paths, hosts, ...) by `<*>`
     and keeps them as parameters (one C-level regex split).
  2. A cache maps the masked string to its template (most lines hit it: once masked, lines of one
     event type are usually byte-identical).
  3. Otherwise a Drain-like search: bucket = (token count, first token), best cluster by token
     similarity >= `similarity_threshold`; the template is generalised where tokens differ.

Bounded: templates per service (least-recently-matched evicted), services (least-recently-seen
evicted), masked-string cache, clusters scanned per bucket. Every eviction is counted in metrics.
Templates survive restarts through `save(path)` / `load(path)` (JSON, atomic replace).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from receiver.component import StageConfig, positive, require
from receiver.logs.masking import WILDCARD, Masker

STATE_VERSION = 1


@dataclass
class TemplatesConfig(StageConfig):
    """Template miner settings. One default for every system; no per-dataset tuning needed."""

    similarity_threshold: float = 0.7  # fraction of equal tokens needed to join a template
    mature_count: int = 10  # a token constant over this many lines no longer generalises
    max_templates_per_service: int = 2000  # least-recently-matched template evicted beyond this
    max_services: int = 500  # least-recently-seen service (with its templates) evicted beyond this
    max_bucket_templates: int = 200  # templates scanned per (length, first token) bucket
    cache_size: int = 50_000  # masked-string -> template cache entries (all services)
    max_line_chars: int = 4096  # longer messages are truncated before mining
    max_tokens: int = 128  # tokens beyond this are folded into one trailing <*>
    extra_mask_patterns: list[str] = field(default_factory=list)  # regexes masked first (no groups)

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.similarity_threshold, (int, float)) and 0.0 < self.similarity_threshold <= 1.0,
            "templates.similarity_threshold",
            f"must be in (0, 1], got {self.similarity_threshold!r}",
        )
        for key in (
            "max_templates_per_service",
            "max_services",
            "max_bucket_templates",
            "cache_size",
            "max_line_chars",
            "max_tokens",
        ):
            value = getattr(self, key)
            require(isinstance(value, int), f"templates.{key}", f"must be an integer, got {value!r}")
            positive(value, f"templates.{key}")
        require(isinstance(self.extra_mask_patterns, list), "templates.extra_mask_patterns", "must be a list")
        try:
            Masker(self.extra_mask_patterns)
        except Exception as exc:  # noqa: BLE001 - re.error or our ValueError
            raise_config("templates.extra_mask_patterns", str(exc))


def raise_config(key: str, message: str) -> None:
    require(False, key, message)


@dataclass(slots=True)
class TemplateMatch:
    template_id: int  # stable per service (survives save/load)
    template: str  # tokens joined by one space, parameters written <*>
    params: list[str]  # the variable parts of this line, in order
    is_new: bool  # this line created the template


class _Cluster:
    __slots__ = ("id", "tokens", "template", "count", "alive", "version", "key", "last")

    def __init__(self, cid: int, tokens: list[str], key: tuple[int, str], count: int = 0) -> None:
        self.id = cid
        self.tokens = tokens
        self.template = " ".join(tokens)
        self.count = count
        self.alive = True
        self.version = 0
        self.key = key
        self.last = 0  # miner line counter at the last match (bucket LRU)


class _Service:
    __slots__ = ("clusters", "buckets", "cache", "next_id")

    def __init__(self) -> None:
        self.clusters: OrderedDict[int, _Cluster] = OrderedDict()  # LRU order, most recent last
        self.buckets: dict[tuple[int, str], list[_Cluster]] = {}
        self.cache: dict[str, tuple[_Cluster, int, bool]] = {}  # masked -> (cluster, version, fast)
        self.next_id = 1


def _has_digit(token: str) -> bool:
    for ch in token:
        if "0" <= ch <= "9":
            return True
    return False


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
        ev = CounterMetricFamily(
            "log_templates_evicted", "Templates evicted because a cap was hit", labels=["reason"]
        )
        ev.add_metric(["service_templates_cap"], m.evicted_template_cap)
        ev.add_metric(["bucket_cap"], m.evicted_bucket_cap)
        ev.add_metric(["service_evicted"], m.evicted_with_service)
        yield ev
        yield CounterMetricFamily(
            "log_template_services_evicted", "Services evicted (max_services hit)", value=m.services_evicted
        )
        yield CounterMetricFamily(
            "log_template_cache_evicted",
            "Masked-line cache entries dropped (cache_size hit)",
            value=m.cache_evicted,
        )
        yield GaugeMetricFamily(
            "log_templates_active", "Templates currently held", value=m.active_templates()
        )
        yield GaugeMetricFamily(
            "log_template_services_active", "Services currently held", value=len(m._services)
        )


class TemplateMiner:
    """Online template miner, one template tree per service. Thread-safe (one lock)."""

    def __init__(
        self, config: TemplatesConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config or TemplatesConfig()
        self.config.validate()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._masker = Masker(self.config.extra_mask_patterns)
        self._services: OrderedDict[str, _Service] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_entries = 0
        self.lines = 0
        self.created = 0
        self.evicted_template_cap = 0
        self.evicted_bucket_cap = 0
        self.evicted_with_service = 0
        self.services_evicted = 0
        self.cache_evicted = 0
        self.registry.register(_Metrics(self))

    # ------------------------------------------------------------------ public API
    def match(self, service: str, text: str) -> TemplateMatch:
        """Match one message, learning from it. Returns the (possibly new / generalised) template."""
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        cfg = self.config
        if len(text) > cfg.max_line_chars:
            text = text[: cfg.max_line_chars]
        masked, rparams = self._masker.mask(text)
        with self._lock:
            self.lines += 1
            svc = self._service(service)
            hit = svc.cache.get(masked)
            if hit is not None:
                cl, version, fast = hit
                if cl.alive:
                    svc.clusters.move_to_end(cl.id)
                    cl.count += 1
                    cl.last = self.lines
                    if version != cl.version:
                        fast = self._fast(cl, masked.split())
                        svc.cache[masked] = (cl, cl.version, fast)
                    params = rparams if fast else self._params(cl, masked.split(), rparams)
                    return TemplateMatch(cl.id, cl.template, params, False)
            tokens = masked.split()
            if len(tokens) > cfg.max_tokens:
                tokens = tokens[: cfg.max_tokens - 1] + [WILDCARD]
            cl, is_new = self._search_or_create(svc, tokens)
            cl.count += 1
            cl.last = self.lines
            fast = self._fast(cl, tokens)
            self._cache_put(svc, masked, (cl, cl.version, fast))
            params = rparams if fast else self._params(cl, tokens, rparams)
            return TemplateMatch(cl.id, cl.template, params, is_new)

    def template(self, service: str, template_id: int) -> str | None:
        with self._lock:
            svc = self._services.get(service)
            if svc is None:
                return None
            cl = svc.clusters.get(template_id)
            return cl.template if cl is not None else None

    def templates(self, service: str) -> dict[int, str]:
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
        """Write all templates as JSON, atomically (temp file + rename)."""
        with self._lock:
            state = {
                "version": STATE_VERSION,
                "services": {
                    name: {
                        "next_id": svc.next_id,
                        # LRU order (least recent first) is kept so eviction order survives too
                        "templates": [
                            {"id": cl.id, "tokens": cl.tokens, "count": cl.count}
                            for cl in svc.clusters.values()
                        ],
                    }
                    for name, svc in self._services.items()
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
        """Replace the state with the one saved at `path`. Returns the number of templates loaded.
        Raises ValueError on a malformed file (the current state is then left untouched)."""
        with open(path, encoding="utf-8") as fh:
            try:
                state = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not a template state file: {exc}") from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported template state version")
        services: OrderedDict[str, _Service] = OrderedDict()
        loaded = 0
        try:
            for name, data in state["services"].items():
                svc = _Service()
                for item in data["templates"]:
                    tokens = [str(t) for t in item["tokens"]]
                    cid = int(item["id"])
                    cl = _Cluster(cid, tokens, (len(tokens), _first_key(tokens)), int(item.get("count", 0)))
                    svc.clusters[cid] = cl
                    svc.buckets.setdefault(cl.key, []).append(cl)
                    loaded += 1
                svc.next_id = max(int(data.get("next_id", 1)), max(svc.clusters, default=0) + 1)
                services[str(name)] = svc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: malformed template state: {exc}") from exc
        with self._lock:
            self._services = services
            self._cache_entries = 0
        return loaded

    # ------------------------------------------------------------------ internals
    def _service(self, name: str) -> _Service:
        svc = self._services.get(name)
        if svc is not None:
            self._services.move_to_end(name)
            return svc
        if len(self._services) >= self.config.max_services:
            _, old = self._services.popitem(last=False)
            self.services_evicted += 1
            self.evicted_with_service += len(old.clusters)
            self._cache_entries -= len(old.cache)
            for cl in old.clusters.values():
                cl.alive = False
        svc = _Service()
        self._services[name] = svc
        return svc

    def _cache_put(self, svc: _Service, masked: str, entry: tuple[_Cluster, int, bool]) -> None:
        if masked not in svc.cache:
            if self._cache_entries >= self.config.cache_size:
                # drop this service's whole cache (cheap, bounded; it re-warms from the tree)
                dropped = len(svc.cache)
                if dropped == 0:  # the cache is held by other services: drop the oldest service's
                    for other in self._services.values():
                        if other.cache:
                            dropped = len(other.cache)
                            other.cache.clear()
                            break
                else:
                    svc.cache.clear()
                self._cache_entries -= dropped
                self.cache_evicted += dropped
            self._cache_entries += 1
        svc.cache[masked] = entry

    def _search_or_create(self, svc: _Service, tokens: list[str]) -> tuple[_Cluster, bool]:
        n = len(tokens)
        key = (n, _first_key(tokens))
        bucket = svc.buckets.get(key)
        best: _Cluster | None = None
        if bucket:
            best_sim = -1.0
            best_params = -1
            mature = self.config.mature_count
            for cl in bucket:
                strict = cl.count >= mature
                same = 0
                params = 0
                for a, b in zip(cl.tokens, tokens, strict=True):
                    if a == b:
                        same += 1
                    elif WILDCARD in a and _glob(a, b):
                        params += 1
                    elif strict and not _shared_shell(a, b):
                        # a position that stayed constant over `mature_count` lines is a constant
                        same = -1
                        break
                if same < 0:
                    continue
                sim = (same + params) / n if n else 1.0
                if sim > best_sim or (sim == best_sim and params > best_params):
                    best, best_sim, best_params = cl, sim, params
            if best is not None and best_sim < self.config.similarity_threshold:
                best = None
        if best is not None:
            new_tokens = [
                a if a == b or (WILDCARD in a and _glob(a, b)) else _merge_token(a, b)
                for a, b in zip(best.tokens, tokens, strict=True)
            ]
            if new_tokens != best.tokens:
                best.tokens = new_tokens
                best.template = " ".join(new_tokens)
                best.version += 1
            svc.clusters.move_to_end(best.id)
            return best, False
        return self._create(svc, tokens, key), True

    def _create(self, svc: _Service, tokens: list[str], key: tuple[int, str]) -> _Cluster:
        cfg = self.config
        bucket = svc.buckets.setdefault(key, [])
        if len(bucket) >= cfg.max_bucket_templates:
            victim = min(bucket, key=lambda c: c.last)
            self._remove(svc, victim)
            self.evicted_bucket_cap += 1
        if len(svc.clusters) >= cfg.max_templates_per_service:
            _, victim = next(iter(svc.clusters.items()))
            self._remove(svc, victim)
            self.evicted_template_cap += 1
        cl = _Cluster(svc.next_id, tokens, key)
        svc.next_id += 1
        svc.clusters[cl.id] = cl
        svc.buckets.setdefault(key, []).append(cl)
        self.created += 1
        return cl

    def _remove(self, svc: _Service, cl: _Cluster) -> None:
        cl.alive = False
        svc.clusters.pop(cl.id, None)
        bucket = svc.buckets.get(cl.key)
        if bucket is not None:
            try:
                bucket.remove(cl)
            except ValueError:
                pass
            if not bucket:
                del svc.buckets[cl.key]

    @staticmethod
    def _fast(cl: _Cluster, tokens: list[str]) -> bool:
        """True when the template's tokens equal the masked tokens (params = masked spans)."""
        return cl.tokens == tokens

    @staticmethod
    def _params(cl: _Cluster, tokens: list[str], rparams: list[str]) -> list[str]:
        out: list[str] = []
        it = iter(rparams)
        for t, m in zip(cl.tokens, tokens, strict=False):
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


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _glob(pattern: str, token: str) -> bool:
    """Does `token` fit a template token with wildcards (`pre<*>...<*>suf`)? One gap per `<*>`."""
    parts = pattern.split(WILDCARD)
    pre, suf = parts[0], parts[-1]
    if len(token) <= len(pre) + len(suf) - 0 or not token.startswith(pre) or not token.endswith(suf):
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
    return pos < end or len(parts) == 2 and pos <= end


def _shared_shell(a: str, b: str) -> bool:
    """Do the tokens share a punctuation-ended prefix (`user=`, `(`, `[id:`)? Then they differ in a
    value, not in a word."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    while i > 0:
        if not _is_word(a[i - 1]):
            return True
        i -= 1
    return False


def _merge_token(a: str, b: str) -> str:
    """Generalise two differing tokens, keeping their common punctuation shell: `(root)` and `(cyrus)`
    give `(<*>)`, `user=root` and `user=guest` give `user=<*>`, `[A1]` and `B2` give `<*>`."""
    if a == WILDCARD or not a or not b:
        return WILDCARD
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
    return a[:i] + WILDCARD + a[len(a) - j :] if j else a[:i] + WILDCARD
