"""Variable masking for log template mining.

A line is split on whitespace; in each token, variable-looking spans (URLs, UUIDs, IPs with ports,
MACs, hex, paths, host names, package/Class names, times, numbers, ids with digits) become
`<*>`. Dates written with month names, and sizes / durations with their unit ("1190 bytes (1.16 KB)",
"<1 sec", "Fri Jun 17 07:07:00 2005") span tokens: they are masked on the whole line first, and only
for lines holding a month or unit word.

Speed: a token's result is cached (most tokens of a stream repeat), and a token only meets the
patterns that can match its shape (which of digit / dot / slash / colon / dash it contains).
`Masker.tokens(text)` (masked tokens, no parameters) is the hot path used for matching;
`Masker.mask_tokens(text)` / `Masker.mask(text)` also return the replaced spans, in order, as
parameters. Patterns are chosen to put `<*>` where Loghub's (corrected) ground truth puts parameters,
and are not tuned per system.
"""

from __future__ import annotations

import re
from itertools import chain
from operator import itemgetter

WILDCARD = "<*>"

# Each entry is (name, pattern). Inner groups MUST be non-capturing: the whole alternation is wrapped
# in a single capturing group so that `split` yields [const, param, const, param, ..., const].
_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_TLD = r"(?:com|net|org|edu|gov|mil|io|cn|hk|uk|de|jp|fr|ru|in|local|lan|internal|corp|localdomain)"

# Dates written with month names span several tokens: masked on the whole line, before tokenising.
_DATETIME = (
    rf"\b(?:{_DAY},? )?{_MON} +\d{{1,2}},? (?:\d{{4}} )?"
    r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?: \d{4})?\b"
)
# Sizes and durations with their unit ("1190 bytes (1.16 KB)", "<1 sec", "30 seconds") are one value:
# a number token followed by a unit word is merged into one <*> (`_merge_units`). Dates need a month
# name; the date regex only runs on lines holding one.
_SIZE_UNITS = frozenset("B KB MB GB TB KiB MiB GiB TiB bytes byte".split())
_UNIT_WORDS = _SIZE_UNITS | frozenset(
    "sec secs second seconds ms msec msecs millisecond milliseconds us µs ns min mins minute minutes hour "
    "hours".split()
)
_MONTHS = frozenset(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Sept Oct Nov Dec January February March April June July August "
    "September October November December".split()
)
_SENTINEL = "\ue000"  # stands for a masked date inside the line while tokens are masked
# Every default pattern needs a digit or one of these characters: tokens without any skip the regex.
_MAYBE_VARIABLE = re.compile(r"[\d/\\.:]").search

_DEFAULT_PATTERNS: list[tuple[str, str]] = [
    ("url", r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s,;\"'<>()\[\]{}]+"),
    ("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    (
        "isodate",
        r"\b\d{4}[-/]\d{1,2}[-/]\d{1,2}"
        r"(?:[T ]\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?\b",
    ),
    ("ipv4", r"(?<![\w.])/?\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?![\w.])"),
    ("mac", r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b"),
    ("hex", r"\b0[xX][0-9a-fA-F]+\b"),
    # a path, with its query string if any (`/v1/servers/detail?limit=10&marker=x`: one value)
    ("path", r"(?<![\w.])(?:[A-Za-z]:)?[\w.\-{}$~]*(?:[\\/][\w.\-$~@+%{}*?=&]+){2,}[\\/]?"),
    # package/Class component names (Android/Java): com.example.app/.ui.MainActivity
    ("component", r"(?<![\w.])[A-Za-z_][\w$]*(?:\.[\w$]+)+/\.?[\w$]+(?:\.[\w$]+)*"),
    ("host", rf"\b(?:[A-Za-z0-9\-]+\.)+{_TLD}(?::\d+)?\b"),
    ("dotted", r"\b(?=[\w.\-]*\d)(?:[A-Za-z0-9\-]+\.){2,}[A-Za-z0-9\-]+(?::\d+)?\b"),
    ("time", r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"),
    # a name with a numeric suffix is one id: core.2275, broadcast_9, worker_12, item_-42
    ("name_num", r"(?<![\w.\-])[A-Za-z]+[._]-?\d+(?![\w.])"),
    ("number", r"(?<![\w.\-])-?\d+(?:[.,:]\d+)*(?![\w])"),
    ("word_digit", r"(?<![\w\-])(?:\d[\w\-]*|(?=[\w\-]*\d[\w\-]*\d)[\w\-]+)"),
    ("longhex", r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b"),
]


# What a token must contain for a pattern to possibly match: digit, dot, slash, colon, dash.
_NEEDS: dict[str, tuple[str, ...]] = {
    "url": ("slash", "colon"),
    "uuid": ("dash",),
    "isodate": ("digit",),
    "ipv4": ("digit", "dot"),
    "mac": ("colon",),
    "hex": ("digit",),
    "path": ("slash",),
    "component": ("dot", "slash"),
    "host": ("dot",),
    "dotted": ("digit", "dot"),
    "time": ("digit", "colon"),
    "number": ("digit",),
    "name_num": ("digit",),
    "word_digit": ("digit",),
    "longhex": ("digit",),
}
_FEATURES = ("digit", "dot", "slash", "colon", "dash")
_DIGIT = re.compile(r"\d").search
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)
_chain = chain.from_iterable
_PUNCT = "()[]{}<>,;:'\"=."


def compile_patterns(
    patterns: list[tuple[str, str]] | None = None, extra: list[str] | None = None
) -> re.Pattern[str]:
    """Compile the alternation (extra user patterns first, so they win)."""
    pats = [p for p in (extra or [])] + [p for _, p in (patterns or _DEFAULT_PATTERNS)]
    for p in pats:
        rx = re.compile(p)
        if rx.groups:
            raise ValueError(f"masking pattern must not have capturing groups: {p!r} (use (?:...))")
    return re.compile("(" + "|".join(f"(?:{p})" for p in pats) + ")")


_BY_SHAPE: dict[tuple[bool, ...], re.Pattern[str] | None] = {}  # at most 2**5 entries


_NUMBER = re.compile(r"<?\d+(?:\.\d+)?").fullmatch
_PAREN_NUMBER = re.compile(r"\(\d+(?:\.\d+)?").fullmatch
_NUMBER_MASKS = frozenset({WILDCARD, "(" + WILDCARD, "[" + WILDCARD, "<" + WILDCARD})


def _merge_units(
    words: list[str], masked: list[str], params: list[tuple[str, ...]] | None
) -> tuple[list[str], list[tuple[str, ...]]]:
    """Merge `<number> <unit>` token pairs (and a following `(<number> <size unit>)`) into one `<*>`:
    `1190 bytes (1.16 KB) sent,` -> `<*> sent,`; `lifetime <1 sec` -> `lifetime <*>`."""
    out: list[str] = []
    out_params: list[tuple[str, ...]] = []
    n = len(words)
    i = 0
    while i < n:
        word = words[i]
        core = word.rstrip(_PUNCT)
        if core in _UNIT_WORDS and out and out[-1] in _NUMBER_MASKS:
            prefix = out[-1][:-3]  # "", "(", "[" stay outside the value; "<" (as in "<1 sec") is in it
            value = words[i - 1] if prefix == "<" else words[i - 1][len(prefix) :]
            if _NUMBER(value):
                trailing = word[len(core) :]
                param = f"{value} {core}"
                if (
                    core in _SIZE_UNITS
                    and not trailing
                    and i + 2 < n
                    and _PAREN_NUMBER(words[i + 1])
                    and words[i + 2].rstrip(_PUNCT) in _SIZE_UNITS
                    and words[i + 2][len(words[i + 2].rstrip(_PUNCT)) :].startswith(")")
                ):
                    unit2 = words[i + 2].rstrip(_PUNCT)
                    param += f" {words[i + 1]} {unit2})"
                    trailing = words[i + 2][len(unit2) + 1 :]
                    i += 2
                out[-1] = (prefix if prefix != "<" else "") + WILDCARD + trailing
                if params is not None:
                    out_params[-1] = (param,)
                i += 1
                continue
        out.append(masked[i])
        if params is not None:
            out_params.append(params[i])
        i += 1
    return out, out_params


def _compile_for(shape: tuple[bool, ...]) -> re.Pattern[str] | None:
    cached = _BY_SHAPE.get(shape, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    have = {f for f, on in zip(_FEATURES, shape, strict=True) if on}
    pats = [(n, p) for n, p in _DEFAULT_PATTERNS if all(x in have for x in _NEEDS.get(n, ()))]
    rx = compile_patterns(pats) if pats else None
    _BY_SHAPE[shape] = rx
    return rx


class Masker:
    """Masks variable spans of a log line. `mask_tokens(text)` returns (masked tokens, params):
    the line split on whitespace, each token with its variable spans replaced by `<*>`, and the
    replaced spans in order.

    Patterns apply within a whitespace-delimited token (dates with month names excepted), so a token's
    result is cached: most tokens of a log stream repeat, and a repeated token costs one dict lookup.
    The token cache is bounded (`cache_size`; cleared when full, counted in `cache_dropped`)."""

    __slots__ = (
        "_rx",
        "_dates",
        "_cache",
        "_tcache",
        "_hints",
        "_cache_size",
        "_extra",
        "_by_features",
        "cache_dropped",
    )

    def __init__(self, extra_patterns: list[str] | None = None, cache_size: int = 100_000) -> None:
        self._rx = compile_patterns(None, extra_patterns)
        self._extra = bool(extra_patterns)
        # per token "shape" (which of digit/dot/slash/colon/dash it has): only the patterns that can
        # match it, compiled on first use (at most 32 variants)
        self._by_features: dict[tuple[bool, ...], re.Pattern[str] | None] = {}
        self._dates = re.compile(f"((?:{_DATETIME}))")
        self._cache: dict[str, tuple[str, tuple[str, ...], int]] = {}  # token -> (masked, params, hint)
        self._tcache: dict[str, str] = {}  # token -> masked token (the hot path needs no params)
        # cached tokens that are a unit word / a month name (multi-token spans may be around)
        self._hints: tuple[set[str], set[str]] = (set(), set())
        self._cache_size = cache_size
        self.cache_dropped = 0

    def mask(self, text: str) -> tuple[str, list[str]]:
        """(masked text with single spaces between tokens, params)."""
        tokens, params = self.mask_tokens(text)
        return " ".join(tokens), params

    def tokens(self, text: str) -> list[str]:
        """The masked tokens only (same as `mask_tokens(text)[0]`, cheaper: no parameters)."""
        words = text.split()
        toks = self._lookup(words)
        units, months = self._hints
        if months and not months.isdisjoint(words):  # dates written with month names span tokens
            parts = self._dates.split(text)
            if len(parts) > 1:
                dates = parts[1::2]
                words = _SENTINEL.join(parts[0::2]).split()
                toks = [self._with_dates(w, dates)[0] if _SENTINEL in w else "" for w in words]
                it = iter(self._lookup([w for w in words if _SENTINEL not in w]))
                toks = [t if t else next(it) for t in toks]
        if units and not units.isdisjoint(words):  # "12 bytes", "<1 sec": a value with its unit
            toks = _merge_units(words, toks, None)[0]
        return toks

    def _lookup(self, words: list[str]) -> list[str]:
        cache = self._tcache
        toks = [cache.get(w) for w in words]
        if None in toks:
            for i, tok in enumerate(toks):
                if tok is None:
                    word = words[i]
                    masked, _, hint = self._mask_token(word)
                    if len(cache) >= self._cache_size:
                        self.cache_dropped += len(cache)
                        cache.clear()
                        self._hints[0].clear()
                        self._hints[1].clear()
                    cache[word] = toks[i] = masked
                    if hint:
                        self._hints[hint - 1].add(word)
        return toks  # type: ignore[return-value]

    def mask_tokens(self, text: str) -> tuple[list[str], list[str]]:
        words, hits = self._hits(text, None)
        kinds = set(map(_THIRD, hits))
        if 2 in kinds:  # a month name: dates may span tokens
            parts = self._dates.split(text)
            if len(parts) > 1:
                words, hits = self._hits(_SENTINEL.join(parts[0::2]), parts[1::2])
        tokens = list(map(_FIRST, hits))
        per_token = list(map(_SECOND, hits))
        if 1 in kinds:  # a unit word: "12 bytes", "<1 sec" are one value
            tokens, merged = _merge_units(words, tokens, per_token)
            per_token = merged  # type: ignore[assignment]
        return tokens, list(_chain(per_token))

    def _hits(
        self, text: str, dates: list[str] | None
    ) -> tuple[list[str], list[tuple[str, tuple[str, ...], int]]]:
        cache = self._cache
        words = text.split()
        hits = [cache.get(tok) for tok in words]
        if None in hits:
            for i, hit in enumerate(hits):
                if hit is not None:
                    continue
                tok = words[i]
                if dates is not None and _SENTINEL in tok:
                    hits[i] = self._with_dates(tok, dates)  # not cached: depends on the line
                    continue
                hit = hits[i] = self._mask_token(tok)
                if len(cache) >= self._cache_size:
                    self.cache_dropped += len(cache)
                    cache.clear()
                cache[tok] = hit
        return words, hits  # type: ignore[return-value]

    def _mask_token(self, tok: str) -> tuple[str, tuple[str, ...], int]:
        if tok.isalpha() and not self._extra:  # a plain word: nothing to mask
            return tok, (), 1 if tok in _UNIT_WORDS else 2 if tok in _MONTHS else 0
        core = tok.strip(_PUNCT)
        hint = 1 if core in _UNIT_WORDS else 2 if core in _MONTHS else 0
        if self._extra:
            rx: re.Pattern[str] | None = self._rx
        else:
            if tok.isdigit():
                return WILDCARD, (tok,), hint
            if not _MAYBE_VARIABLE(tok):
                return tok, (), hint
            if core.isdigit():  # 123, (123) [123]: ... (same result as the number pattern)
                i = tok.find(core)
                return tok[:i] + WILDCARD + tok[i + len(core) :], (core,), hint
            shape = (_DIGIT(tok) is not None, "." in tok, "/" in tok or "\\" in tok, ":" in tok, "-" in tok)
            try:
                rx = self._by_features[shape]
            except KeyError:
                rx = self._by_features[shape] = _compile_for(shape)
            if rx is None:
                return tok, (), hint
        parts = rx.split(tok)
        if len(parts) == 1:
            return tok, (), hint
        return WILDCARD.join(parts[0::2]), tuple(parts[1::2]), hint

    def _with_dates(self, tok: str, dates: list[str]) -> tuple[str, tuple[str, ...], int]:
        pieces = tok.split(_SENTINEL)
        out = []
        params: list[str] = []
        for i, piece in enumerate(pieces):
            if i:
                out.append(WILDCARD)
                params.append(dates.pop(0) if dates else "")
            if piece:
                masked, tparams, _ = self._mask_token(piece)
                out.append(masked)
                params.extend(tparams)
        return "".join(out), tuple(params), 0
