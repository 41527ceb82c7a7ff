"""What tier 0 knows about one service (its baseline), and how it is saved and restored."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from receiver.detect.stats import Ewma

START = -2  # session start marker in transition statistics
END = -3  # session end marker


class Baseline:
    """What tier 0 knows about one service."""

    def __init__(self) -> None:
        self.first_ns = 0  # event time of the first window seen (the warm-up clock)
        self.windows = 0  # tumbling windows learned
        self.sessions = 0  # sessions learned
        self.templates: OrderedDict[int, int] = OrderedDict()  # template id -> lines (LRU)
        self.families: OrderedDict[str, int] = OrderedDict()  # template family -> templates seen (LRU)
        self.error_share = Ewma()
        self.warn_share = Ewma()
        self.count = Ewma()  # lines per tumbling window
        self.js = Ewma()
        self.hist: dict[int, float] = {}  # EWMA template distribution
        self.trans: dict[tuple[int, ...], dict[int, int]] = {}  # context -> next -> count
        self.ctx_total: dict[tuple[int, ...], int] = {}
        self.n_trans = 0
        self.silent = False  # a silence was reported and no line has arrived since (not persisted)
        self.incident_end_ns = 0  # end of the last tumbling window, if it was flagged (not persisted)
        # the open incident's own failures: templates first seen in it that name a failure -> prior
        self.incident_templates: dict[int, float] = {}
        self.incident_windows = 0  # windows the open incident has lasted
        self.size = 0  # entries accounted in the detector's total
        self.sess_df: dict[int, int] = {}  # template -> sessions containing it (count invariants)
        # (x, y), x < y -> [sessions with both, sessions with both and count(x) == count(y)]
        self.pairs: dict[tuple[int, int], list[int]] = {}
        # known bad: failure templates first seen in a flagged window; never learned as seen, so their
        # recurrence is news again (LRU, capped like the templates)
        self.known_bad: OrderedDict[int, int] = OrderedDict()  # template -> flagged windows holding it
        self.known_bad_text: dict[int, str] = {}  # its text, for the operator's list
        # templates an operator marked normal: never known bad, never news for being rare (LRU, capped)
        self.acknowledged: OrderedDict[int, None] = OrderedDict()
        # active invariants (rebuilt every 64 sessions): template -> partners
        self.eq_by: dict[int, list[tuple[int, float, int, int]]] = {}  # x -> [(y, rate, hold, n)]
        self.imp_by: dict[int, list[tuple[int, float, int, int]]] = {}  # a -> [(b, rate, hold, n)]

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "sessions": self.sessions,
            "first_ns": self.first_ns,
            "templates": [[k, v] for k, v in self.templates.items()],
            "families": [[k, v] for k, v in self.families.items()],
            "error_share": self.error_share.to_list(),
            "warn_share": self.warn_share.to_list(),
            "count": self.count.to_list(),
            "js": self.js.to_list(),
            "hist": [[k, v] for k, v in self.hist.items()],
            "trans": [[list(ctx), [[n, c] for n, c in nxt.items()]] for ctx, nxt in self.trans.items()],
            "sess_df": [[k, v] for k, v in self.sess_df.items()],
            "pairs": [[x, y, n, h] for (x, y), (n, h) in self.pairs.items()],
            "known_bad": [[k, v, self.known_bad_text.get(k, "")] for k, v in self.known_bad.items()],
            "acknowledged": list(self.acknowledged),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Baseline:
        b = cls()
        b.windows = int(d["windows"])
        b.first_ns = int(d.get("first_ns", 0))
        b.sessions = int(d["sessions"])
        b.templates = OrderedDict((int(k), int(v)) for k, v in d["templates"])
        b.families = OrderedDict((str(k), int(v)) for k, v in d.get("families", []))
        b.error_share = Ewma(*d["error_share"][:2], int(d["error_share"][2]))
        b.warn_share = Ewma(*d["warn_share"][:2], int(d["warn_share"][2]))
        b.count = Ewma(*d["count"][:2], int(d["count"][2]))
        b.js = Ewma(*d["js"][:2], int(d["js"][2]))
        b.hist = {int(k): float(v) for k, v in d["hist"]}
        for ctx, nxt in d["trans"]:
            key = tuple(int(x) for x in ctx)
            b.trans[key] = {int(n): int(c) for n, c in nxt}
            b.ctx_total[key] = sum(b.trans[key].values())
            b.n_trans += len(b.trans[key])
        b.sess_df = {int(k): int(v) for k, v in d.get("sess_df", [])}
        b.pairs = {(int(x), int(y)): [int(n), int(h)] for x, y, n, h in d.get("pairs", [])}
        for row in d.get("known_bad", []):
            b.known_bad[int(row[0])] = int(row[1])
            b.known_bad_text[int(row[0])] = str(row[2]) if len(row) > 2 else ""
        b.acknowledged = OrderedDict((int(t), None) for t in d.get("acknowledged", []))
        return b
