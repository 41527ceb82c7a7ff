"""Variable masking for log template mining.

One compiled alternation finds every variable-looking span in a log message (URLs, UUIDs, IPs with
ports, host names, paths, hex, block ids, numbers with units, ...). `Masker.mask(text)` returns the
message with every such span replaced by `<*>` and the spans themselves, in order, as parameters.

Everything runs in C (`re.split` with ONE capturing group), so masking costs a few microseconds per
line. Patterns are chosen to put `<*>` where Loghub's (corrected) ground truth puts parameters, and are
not tuned per system.
"""

from __future__ import annotations

import re

WILDCARD = "<*>"

# Each entry is (name, pattern). Inner groups MUST be non-capturing: the whole alternation is wrapped
# in a single capturing group so that `split` yields [const, param, const, param, ..., const].
_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_TLD = r"(?:com|net|org|edu|gov|mil|io|cn|hk|uk|de|jp|fr|ru|in|local|lan|internal|corp|localdomain)"

_DEFAULT_PATTERNS: list[tuple[str, str]] = [
    ("url", r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s,;\"'<>()\[\]{}]+"),
    ("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    (
        "datetime",
        rf"\b(?:{_DAY},? )?{_MON} +\d{{1,2}},? (?:\d{{4}} )?\d{{1,2}}:\d{{2}}(?::\d{{2}})?(?:[.,]\d+)?"
        rf"(?: \d{{4}})?\b",
    ),
    (
        "isodate",
        r"\b\d{4}[-/]\d{1,2}[-/]\d{1,2}"
        r"(?:[T ]\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?\b",
    ),
    ("ipv4", r"(?<![\w.])/?\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?![\w.])"),
    ("mac", r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b"),
    ("block", r"\bblk_-?\d+\b"),
    ("hex", r"\b0[xX][0-9a-fA-F]+\b"),
    ("path", r"(?<![\w.])(?:[A-Za-z]:)?[\w.\-{}$~]*(?:[\\/][\w.\-$~@+%{}*?]+){2,}[\\/]?"),
    ("host", rf"\b(?:[A-Za-z0-9\-]+\.)+{_TLD}(?::\d+)?\b"),
    ("dotted", r"\b(?=[\w.\-]*\d)(?:[A-Za-z0-9\-]+\.){2,}[A-Za-z0-9\-]+(?::\d+)?\b"),
    ("time", r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"),
    ("number", r"(?<![\w.\-])-?\d+(?:[.,:]\d+)*(?![\w])"),
    ("word_digit", r"(?<![\w\-])(?=[\w\-]*\d[\w\-]*\d)[\w\-]+"),
    ("longhex", r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b"),
]


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


class Masker:
    """Replaces variable spans with `<*>`; returns (masked_text, params)."""

    __slots__ = ("_rx",)

    def __init__(self, extra_patterns: list[str] | None = None) -> None:
        self._rx = compile_patterns(None, extra_patterns)

    def mask(self, text: str) -> tuple[str, list[str]]:
        parts = self._rx.split(text)
        if len(parts) == 1:
            return text, []
        return WILDCARD.join(parts[0::2]), parts[1::2]
