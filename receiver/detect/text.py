"""What a template's text says: the words that name a failure, its event family, and whether it only
dumps state (a register or settings table) rather than reporting an event."""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_ERROR_WORDS = [
    "error", "exception", "fail", "failed", "failure", "fatal", "refused", "timeout", "timed out", "killed",
    "panic", "abort", "denied", "unreachable", "crash", "corrupt", "interrupt", "oom", "out of memory",
    "cannot", "can not", "unable", "invalid", "lost", "severe",
    # the shapes of an exception report in Python and on the JVM (a Go panic is a word above)
    "traceback", "caused by",
]


_WILD = re.compile(r"<\*>|<[A-Z_]+>")


def template_family(template: str, n: int) -> str:
    """The first `n` constant tokens of a template (tokens holding a parameter are skipped): two
    templates that a parser split on a trailing detail (`... from file <*>: Permission denied` vs
    `... : Bad file descriptor`) share a family."""
    if n <= 0:
        return ""
    out: list[str] = []
    for tok in template.split():
        if "<" in tok and _WILD.search(tok):
            continue
        out.append(tok)
        if len(out) >= n:
            break
    return " ".join(out)


# `name.........<*>` (a dump row: a label padded with dots to a value)
_PADDED_FIELD = re.compile(r".*[^.\s]\s?\.{2,}\s*(?:<\*>|<[A-Z_]+>|0x[0-9a-fA-F]+|\d+)")
_LABEL_VALUE = re.compile(r"[A-Za-z][\w ()/,.'+-]{0,60}?\s?[:=]\s*(?:<\*>|<[A-Z_]+>)")  # `name: <*>`
_PAIRS = re.compile(r"(?:[\w.-]+[:=](?:<\*>|<[A-Z_]+>)\s*){2,}")  # `rip:<*> rsp:<*> rax:<*>`
_HEADER = re.compile(r"[A-Za-z][\w ()/,.'-]{0,60}:")  # `memory usage:`


def is_field_line(template: str, error_words: Sequence[str] = ()) -> bool:
    """True for a template that prints dumped state, not an event: a padded table row
    (`strict alignment exception.......<*>`: the words name a flag, not a failure), key:value pairs
    only (`rip:<*> rsp:<*>`), or, when it names no failure, one labelled value (`heap used: <*>`) or
    a section header (`memory usage:`).
    `Connection failed: <*>` or `error=<*>` name a failure and stay events."""
    t = template.strip()
    if not t or len(t) > 200:  # dump rows are short; long lines are statements
        return False
    if _PADDED_FIELD.fullmatch(t) or _PAIRS.fullmatch(t):
        return True
    if error_words:
        return False
    return bool(_LABEL_VALUE.fullmatch(t) or _HEADER.fullmatch(t))
