"""Redaction of secrets and personal data in log bodies and string attributes.

Runs before anything is mined, windowed, stored, exported or shown to an LLM. Every match is
replaced by `<REDACTED:kind>`; for `key=value` / URL credentials the key (or scheme and user) is
kept so the line stays readable: `password=<REDACTED:password>`.

Kinds (config `kinds`, all on by default except IP addresses, which `ip_addresses: true` adds):
  email, bearer_token, jwt, private_key, aws_access_key, aws_secret_key, gcp_api_key,
  azure_key, github_token, slack_token, api_key (OpenAI/Anthropic `sk-...`, Stripe),
  url_password (`scheme://user:pass@host`), password (password/passwd/pwd = ...),
  secret (token/secret/api_key/client_secret/... = ..., JSON `"token": "..."` too),
  card_number (13-19 digits, known card prefixes, Luhn-checked), ipv4, ipv6 (validated).
Custom patterns: `custom: [{name: ..., regex: ...}]`; the whole match is replaced.

Speed: one pass per line. All enabled rules are compiled into ONE alternation of named groups;
rules carry cheap trigger substrings (`"@"`, `"eyJ"`, `"BEGIN"`, ...) tested with `in` first, and
the alternation is compiled (and cached) for the subset of rules whose triggers occur in the line,
so an ordinary line usually runs a tiny regex or none at all.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from receiver.component import StageConfig, require

IP_KINDS = ("ipv4", "ipv6")


def _luhn_ok(digits: str) -> bool:
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(raw: str) -> bool:
    digits = raw.replace(" ", "").replace("-", "")
    n = len(digits)
    if not 13 <= n <= 19 or not digits.isdigit():
        return False
    p2 = int(digits[:2])
    p4 = int(digits[:4])
    brand = (
        (digits[0] == "4" and n in (13, 16, 19))  # Visa
        or (51 <= p2 <= 55 and n == 16)  # Mastercard
        or (2221 <= p4 <= 2720 and n == 16)  # Mastercard 2-series
        or (p2 in (34, 37) and n == 15)  # Amex
        or ((p4 == 6011 or p2 == 65 or 644 <= int(digits[:3]) <= 649) and 16 <= n <= 19)  # Discover
        or (3528 <= p4 <= 3589 and 16 <= n <= 19)  # JCB
        or ((p2 in (36, 38, 39) or 300 <= int(digits[:3]) <= 305) and 14 <= n <= 19)  # Diners
    )
    return brand and _luhn_ok(digits)


def _ipv6_ok(raw: str) -> bool:
    try:
        ipaddress.IPv6Address(raw.split("%", 1)[0])
    except ValueError:
        return False
    return True


_PASSWORD_KEYS = r"pass(?:word|wd|phrase)|pwd"
_SECRET_KEYS = (
    r"secret|client[_-]?secret|token|access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|"
    r"session[_-]?token|api[_-]?key|apikey|x-api-key|access[_-]?key|secret[_-]?key|private[_-]?key|"
    r"account[_-]?key|shared[_-]?access[_-]?key|sig|credentials?|authorization"
)
_AWS_SECRET_KEYS = r"aws[_-]?secret[_-]?access[_-]?key|aws[_-]?secret[_-]?key|aws[_-]?session[_-]?token"


# key, optional closing quote, separator, then an auth scheme + credential, or a quoted or bare value
def _kv_pattern(keys: str) -> str:
    return (
        r"(?P<{g}_k>(?<![A-Za-z0-9])[\"']?(?:[A-Za-z0-9_.-]*[_.-])?(?:" + keys + r"))"
        r"(?P<{g}_s>[\"']?\s*[:=]\s*)"
        r"(?P<{g}_v>(?:Bearer|Basic|Token|Digest|bearer)\s+[^\s\"',;]+|\"[^\"\n]*\"|'[^'\n]*'"
        r"|[^\s\"',;&)}\]<>]+)"
    )


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: str  # named groups are not allowed inside (we wrap each rule in one)
    triggers: tuple[str, ...]  # lowercase substrings; empty = always try
    replace: Callable[[re.Match[str], str, str], str | None]  # (match, group name, kind) -> text or None
    ignore_case: bool = False
    prefilter: re.Pattern[str] | None = None  # cheap search that must hit before the rule is tried


def _whole(m: re.Match[str], g: str, kind: str) -> str:
    return f"<REDACTED:{kind}>"


def _keep_prefix(m: re.Match[str], g: str, kind: str) -> str:
    # the rule's first inner group is the part to keep (a key, a scheme://user:, "Bearer ")
    keep = m.group(f"{g}_k")
    if keep is None:  # second alternative of a rule (bearer: `Basic ...`)
        keep = m.group(f"{g}_b") or ""
    return f"{keep}<REDACTED:{kind}>"


_AUTH_SCHEME = re.compile(r"^(Bearer|bearer|Basic|Token|Digest)(\s+)")


def _kv(m: re.Match[str], g: str, kind: str) -> str:
    key, sep, value = m.group(f"{g}_k"), m.group(f"{g}_s"), m.group(f"{g}_v")
    scheme = _AUTH_SCHEME.match(value)
    if scheme:  # `Authorization: Bearer xyz` -> keep the scheme, the credential is a bearer token
        return f"{key}{sep}{scheme.group(0)}<REDACTED:bearer_token>"
    if "PRIVATE KEY" in value and "-----BEGIN" in value:
        kind = "private_key"
    if value[:1] in "\"'" and len(value) >= 2:
        if len(value) == 2:  # empty quoted value: nothing to hide
            return m.group(g)
        return f"{key}{sep}{value[0]}<REDACTED:{kind}>{value[-1]}"
    return f"{key}{sep}<REDACTED:{kind}>"


def _card(m: re.Match[str], g: str, kind: str) -> str | None:
    return f"<REDACTED:{kind}>" if _card_ok(m.group(g)) else None


def _ipv6(m: re.Match[str], g: str, kind: str) -> str | None:
    return f"<REDACTED:{kind}>" if _ipv6_ok(m.group(g)) else None


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

BUILTIN_RULES: tuple[_Rule, ...] = (
    _Rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----(?:.|\n)*?"
        r"(?:-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|\Z)",
        ("private key",),
        _whole,
    ),
    _Rule(
        "url_password",
        r"(?P<{g}_k>\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@]{1,128}:)[^\s@/]{1,256}(?=@)",
        ("://",),
        _keep_prefix,
    ),
    _Rule(
        "bearer_token",
        r"(?P<{g}_k>\b(?:[Bb]earer|BEARER)\s+)[A-Za-z0-9._~+/=-]{8,}"
        r"|(?P<{g}_b>\bBasic\s+)(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}",
        ("bearer", "basic"),
        _keep_prefix,
    ),
    _Rule(
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}",
        ("eyj",),
        _whole,
    ),
    _Rule(
        "aws_access_key",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
        ("akia", "asia", "agpa", "aida", "aroa", "anpa", "anva", "aipa"),
        _whole,
    ),
    _Rule(
        "aws_secret_key",
        _kv_pattern(_AWS_SECRET_KEYS),
        ("aws",),
        _kv,
        ignore_case=True,
    ),
    _Rule("gcp_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("aiza",), _whole),
    _Rule(
        "azure_key",
        r"(?P<{g}_k>\b(?:AccountKey|SharedAccessKey|SharedAccessSignature)=)[A-Za-z0-9+/=%]{20,}",
        ("accountkey", "sharedaccess"),
        _keep_prefix,
    ),
    _Rule(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        ("gh", "github_pat_"),
        _whole,
    ),
    _Rule(
        "slack_token",
        r"\b(?:xox[abposr]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,})",
        ("xox", "hooks.slack"),
        _whole,
    ),
    _Rule(
        "api_key",
        r"\b(?:sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}|[rs]k_(?:live|test)_[0-9A-Za-z]{16,})",
        ("sk-", "k_live_", "k_test_"),
        _whole,
    ),
    _Rule(
        "password",
        _kv_pattern(_PASSWORD_KEYS),
        ("pass", "pwd"),
        _kv,
        ignore_case=True,
    ),
    _Rule(
        "secret",
        _kv_pattern(_SECRET_KEYS),
        ("secret", "token", "key", "sig", "credential", "authorization"),
        _kv,
        ignore_case=True,
    ),
    _Rule(
        "email",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
        ("@",),
        _whole,
    ),
    _Rule(
        "card_number",
        r"(?<![\w./:+-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5})"
        r"(?![\w/:+-]|\.\d)",
        (),
        _card,
        prefilter=re.compile(r"\d{4}[ -]?\d{4}[ -]?\d{4}"),
    ),
    _Rule("ipv4", rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)", (".",), _whole),
    _Rule(
        "ipv6",
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?"
        r"(?![\w:])",
        (":",),
        _ipv6,
    ),
)
BUILTIN_KINDS = tuple(r.kind for r in BUILTIN_RULES)
DEFAULT_KINDS = [k for k in BUILTIN_KINDS if k not in IP_KINDS]

_KIND_IN = re.compile(r"<REDACTED:([a-z0-9_]+)>")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# attribute keys whose whole string value is a secret (header names, config keys)
_SENSITIVE_ATTR_KEY = re.compile(
    r"(?:^|[._-])(?:authorization|cookie|set-cookie|" + _PASSWORD_KEYS + "|" + _SECRET_KEYS + r")$",
    re.IGNORECASE,
)


@dataclass
class RedactConfig(StageConfig):
    """Which kinds of secrets are replaced by `<REDACTED:kind>`."""

    enabled: bool = True
    kinds: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    ip_addresses: bool = False  # also redact IPv4/IPv6 addresses (off: they help diagnosis)
    custom: list[dict[str, str]] = field(default_factory=list)  # [{name: kind, regex: pattern}]
    max_chars: int = 65536  # longer bodies are truncated (with a marker) before redaction

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.kinds, list), "redact.kinds", "must be a list of kind names")
        for k in self.kinds:
            require(
                k in BUILTIN_KINDS, "redact.kinds", f"unknown kind {k!r}; known: {', '.join(BUILTIN_KINDS)}"
            )
        require(isinstance(self.custom, list), "redact.custom", "must be a list of {name, regex}")
        for i, c in enumerate(self.custom):
            key = f"redact.custom[{i}]"
            require(isinstance(c, dict) and set(c) >= {"name", "regex"}, key, "needs 'name' and 'regex'")
            require(
                bool(_NAME_RE.match(str(c["name"]))),
                f"{key}.name",
                f"must match {_NAME_RE.pattern}, got {c['name']!r}",
            )
            require(str(c["name"]) not in BUILTIN_KINDS, f"{key}.name", f"{c['name']!r} is a built-in kind")
            try:
                re.compile(str(c["regex"]))
            except re.error as exc:
                require(False, f"{key}.regex", f"invalid regex: {exc}")
        require(isinstance(self.max_chars, int) and self.max_chars > 0, "redact.max_chars", "must be > 0")


class Redactor:
    """Replaces secrets by `<REDACTED:kind>`; counts per kind in `log_redactions_total{kind}`."""

    def __init__(self, config: RedactConfig | None = None, registry: CollectorRegistry | None = None) -> None:
        self.config = config or RedactConfig()
        self.config.validate()
        registry = registry if registry is not None else CollectorRegistry()
        self._counter = Counter("log_redactions", "Secrets redacted, by kind", ["kind"], registry=registry)
        kinds = set(self.config.kinds)
        if self.config.ip_addresses:
            kinds.update(IP_KINDS)
        rules = [r for r in BUILTIN_RULES if r.kind in kinds]
        for c in self.config.custom:
            rules.append(_Rule(str(c["name"]), f"(?:{c['regex']})", (), _whole))
        self._rules = rules
        self._always = 0
        self._prefiltered: list[tuple[int, re.Pattern[str]]] = []
        for i, r in enumerate(rules):
            if r.prefilter is not None:
                self._prefiltered.append((i, r.prefilter))
            elif not r.triggers:
                self._always |= 1 << i
        trig: dict[str, int] = {}  # distinct trigger substring -> rules it enables
        for i, r in enumerate(rules):
            if r.prefilter is None:
                for t in r.triggers:
                    trig[t] = trig.get(t, 0) | 1 << i
        self._triggers = list(trig.items())
        # one C-level scan finds every trigger; a hit also enables the triggers it contains
        self._trigger_bits: dict[str, int] = {}
        for t in trig:
            bits = 0
            for u, b in trig.items():
                if u in t:
                    bits |= b
            self._trigger_bits[t] = bits
        self._trigger_re = (
            re.compile("|".join(re.escape(t) for t in sorted(trig, key=len, reverse=True))) if trig else None
        )
        self._cache: dict[int, re.Pattern[str] | None] = {}
        self._lock = threading.Lock()
        self._attr_kind = "secret"

    @property
    def kinds(self) -> list[str]:
        return [r.kind for r in self._rules]

    def _compiled(self, mask: int) -> re.Pattern[str] | None:
        pat = self._cache.get(mask)
        if pat is not None or mask in self._cache:
            return pat
        parts = []
        for i, r in enumerate(self._rules):
            if mask >> i & 1:
                g = f"r{i}"
                body = r.pattern.replace("{g}", g)
                if r.ignore_case:
                    body = f"(?i:{body})"
                parts.append(f"(?P<{g}>{body})")
        compiled = re.compile("|".join(parts)) if parts else None
        with self._lock:
            if len(self._cache) > 4096:  # bounded: 2^rules subsets in theory, a handful in practice
                self._cache.clear()
            self._cache[mask] = compiled
        return compiled

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """Return the redacted text and how many secrets of each kind were replaced."""
        if not self.config.enabled or not text:
            return text, {}
        if len(text) > self.config.max_chars:
            text = text[: self.config.max_chars] + "...<TRUNCATED>"
        low = text.lower()
        mask = self._always
        for i, pre in self._prefiltered:
            if pre.search(text):
                mask |= 1 << i
        if self._trigger_re is not None:
            bits = self._trigger_bits
            for hit in self._trigger_re.findall(low):
                mask |= bits[hit]
        if not mask:
            return text, {}
        pat = self._compiled(mask)
        if pat is None:
            return text, {}
        counts: dict[str, int] = {}
        rules = self._rules

        def sub(m: re.Match[str]) -> str:
            g = m.lastgroup
            if g is None:  # pragma: no cover - every alternative is a named group
                return m.group(0)
            rule = rules[int(g[1:])]
            out = rule.replace(m, g, rule.kind)
            if out is None:
                return m.group(0)
            kind = rule.kind
            if not out.endswith(f"<REDACTED:{kind}>") and f"<REDACTED:{kind}>" not in out:
                found = _KIND_IN.search(out)  # a rule may pick a more precise kind (kv -> bearer)
                if found:
                    kind = found.group(1)
            counts[kind] = counts.get(kind, 0) + 1
            return out

        out = pat.sub(sub, text)
        for kind, n in counts.items():
            self._counter.labels(kind).inc(n)
        return out, counts

    def redact_attributes(self, attributes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """Redact string values (and lists of strings) of an attribute map; values under keys that
        name a secret (`password`, `http.request.header.authorization`, `api_key`, ...) are replaced
        whole. Returns a new dict and counts per kind."""
        counts: dict[str, int] = {}
        out: dict[str, Any] = {}
        if not self.config.enabled:
            return dict(attributes), counts
        for key, value in attributes.items():
            if isinstance(value, (str, bytes)) and _SENSITIVE_ATTR_KEY.search(str(key)) and value:
                out[key] = f"<REDACTED:{self._attr_kind}>"
                counts[self._attr_kind] = counts.get(self._attr_kind, 0) + 1
                self._counter.labels(self._attr_kind).inc()
            elif isinstance(value, str):
                out[key], c = self.redact(value)
                _merge(counts, c)
            elif isinstance(value, list):
                items = []
                for v in value:
                    if isinstance(v, str):
                        v, c = self.redact(v)
                        _merge(counts, c)
                    items.append(v)
                out[key] = items
            elif isinstance(value, dict):
                out[key], c = self.redact_attributes(value)
                _merge(counts, c)
            else:
                out[key] = value
        return out, counts


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n
