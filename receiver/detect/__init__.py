"""detect stage: tier 0 (local, unsupervised) judges every closed log window.

config.py (the `detect` settings), text.py (what a template's text says), stats.py (tail
probabilities), baseline.py (what is known of one service), sessions.py (an entity session's order and
count invariants, judged and learned), problem.py (one finding's evidence), collapse.py (repeats into
one finding), tier0.py (the detector that scores windows and learns)."""

from receiver.detect.config import DetectConfig
from receiver.detect.tier0 import Assessment, AssessmentsConsumer, Tier0Detector, Tier0Only

__all__ = ["Assessment", "AssessmentsConsumer", "DetectConfig", "Tier0Detector", "Tier0Only"]
