"""Tier-0 detector settings (`detect` in the config file)."""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.component import StageConfig, positive, require
from receiver.detect.text import DEFAULT_ERROR_WORDS


@dataclass
class DetectConfig(StageConfig):
    """Tier-0 detector settings (the defaults are the ones measured in the report)."""

    threshold: float = 0.6  # a window is flagged when its best confidence reaches this
    warmup_windows: int = 5  # tumbling windows per service before findings
    warmup_sessions: int = 50  # session windows per service before sequence findings
    # and a service's first minutes of event time, however many windows or sessions they hold (a
    # service of thousands of requests a minute passes 50 sessions in seconds, before it has shown its
    # routine errors): only a window made mostly of failures is reported then
    warmup_s: float = 300.0
    ewma_alpha: float = 0.1
    surprise_midpoint: float = 3.0  # -log10(p) giving confidence 0.5
    surprise_slope: float = 1.5
    min_errors: int = 3  # an error/warn burst needs at least this many lines
    shift_min_count: int = 30  # lines in a window before the distribution shift is judged
    shift_min_js: float = 0.2  # and at least this JS divergence (bits)
    silence_min_expected: float = 10.0  # expected lines per window before an empty window is silence
    seq_min_support: int = 10  # occurrences of a context before its transitions are judged
    seq_smoothing: float = 0.5  # additive smoothing of transition probabilities
    inv_templates: int = 24  # per session, the most common templates whose pairs are counted
    max_pairs_per_service: int = 5_000  # template pairs tracked for count invariants
    inv_min_support: int = 50  # sessions showing a template pair before its invariant is used
    inv_min_hold: float = 0.97  # an invariant must hold in this share of those sessions
    novel_info_prior: float = 0.35
    # entity sessions (regex keys): a warn/error template in fewer than this share of past sessions is
    # news (0 = off). Requests (trace-id sessions) are judged by their error rate instead: every request
    # stream fails at some steady rate (see `eval quiet` in BENCHMARKS.md)
    rare_session_share: float = 0.02
    family_tokens: int = 4  # a template's family = its first N constant tokens (0 disables families)
    known_family_factor: float = 0.5  # novelty prior multiplier for a new template of a known family
    error_word_bonus: float = 0.15
    # field lines (see `is_field_line`: register/state dumps logged at FATAL) and the new templates of
    # an incident's follow-on window corroborate but never alarm: their novelty prior and a burst
    # made only of them are capped here, below the threshold
    severity_only_cap: float = 0.5
    error_words: list[str] = field(default_factory=lambda: list(DEFAULT_ERROR_WORDS))
    max_services: int = 1000
    max_templates_per_service: int = 2000
    max_transitions_per_service: int = 10_000
    max_hist_templates: int = 256  # templates in the baseline mix (JS divergence); the tail is dropped
    max_entries_total: int = 1_000_000  # all baselines together (templates, histogram, transitions,
    # pairs); beyond it the least recently seen services' baselines are dropped
    max_evidence: int = 5
    # an incident's own new failure keeps flagging the windows that directly follow it while it
    # recurs, for at most this many windows (then it is the new normal and is learned)
    incident_max_windows: int = 60
    # silence up to this long does not end an incident (a window with lines and no elevated errors does)
    incident_grace_s: float = 3600.0
    # collapse (see `Tier0Detector` docstring, "Collapsing"): session findings of one service with the
    # same problem signature within one event-time period of this many seconds become one finding
    # (0 disables); at most `collapse_max_groups` open groups (oldest closed early), trace ids kept
    # per group `collapse_max_trace_ids`, evidence lines `max_evidence`
    collapse_period_s: float = 60.0
    collapse_max_groups: int = 10_000
    collapse_max_trace_ids: int = 20

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1, "detect.threshold",
                f"must be in (0, 1], got {self.threshold!r}")
        require(isinstance(self.ewma_alpha, (int, float)) and 0 < self.ewma_alpha <= 1, "detect.ewma_alpha",
                f"must be in (0, 1], got {self.ewma_alpha!r}")
        require(isinstance(self.inv_min_hold, (int, float)) and 0.5 <= self.inv_min_hold < 1,
                "detect.inv_min_hold", f"must be in [0.5, 1), got {self.inv_min_hold!r}")
        for key in ("warmup_windows", "warmup_sessions", "min_errors", "shift_min_count", "seq_min_support",
                    "inv_templates", "inv_min_support", "max_pairs_per_service", "max_entries_total",
                    "incident_max_windows", "collapse_max_trace_ids",
                    "max_hist_templates",
                    "max_services", "max_templates_per_service", "max_transitions_per_service",
                    "max_evidence"):
            v = getattr(self, key)
            require(isinstance(v, int) and v >= 0, f"detect.{key}", f"must be an integer >= 0, got {v!r}")
        for key in ("max_services", "max_templates_per_service", "max_transitions_per_service",
                    "max_hist_templates", "max_entries_total"):
            positive(getattr(self, key), f"detect.{key}")
        require(isinstance(self.known_family_factor, (int, float)) and 0 <= self.known_family_factor <= 1,
                "detect.known_family_factor", f"must be in [0, 1], got {self.known_family_factor!r}")
        require(isinstance(self.family_tokens, int) and self.family_tokens >= 0, "detect.family_tokens",
                f"must be an integer >= 0, got {self.family_tokens!r}")
        require(isinstance(self.warmup_s, (int, float)) and self.warmup_s >= 0, "detect.warmup_s",
                f"must be a number of seconds >= 0, got {self.warmup_s!r}")
        require(isinstance(self.incident_grace_s, (int, float)) and self.incident_grace_s >= 0,
                "detect.incident_grace_s", f"must be a number of seconds >= 0, got {self.incident_grace_s!r}")
        require(isinstance(self.collapse_period_s, (int, float)) and self.collapse_period_s >= 0,
                "detect.collapse_period_s",
                f"must be a number of seconds >= 0, got {self.collapse_period_s!r}")
        positive(self.collapse_max_groups, "detect.collapse_max_groups")
        for key in ("surprise_slope", "seq_smoothing"):
            positive(getattr(self, key), f"detect.{key}")
        require(isinstance(self.error_words, list), "detect.error_words", "must be a list of words")
        require(isinstance(self.severity_only_cap, (int, float)) and 0 <= self.severity_only_cap <= 1,
                "detect.severity_only_cap", f"must be in [0, 1], got {self.severity_only_cap!r}")
