"""One anomaly a scorer found in a window (the detector reports the strongest)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    type: str
    confidence: float
    severity: str
    explanation: str
    templates: list[int] = field(default_factory=list)  # templates to show first as evidence
    signature: tuple[int, ...] = ()  # what made it anomalous (collapse key); default: templates[:1]
    warmup: bool = False  # found while the service's baseline was still learning (`anomaly.warmup`)
