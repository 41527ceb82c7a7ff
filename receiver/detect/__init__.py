"""detect stage: tier 0 (local, unsupervised) judges every closed log window."""

from receiver.detect.tier0 import (
    Assessment,
    AssessmentsConsumer,
    DetectConfig,
    Tier0Detector,
    Tier0Only,
)

__all__ = ["Assessment", "AssessmentsConsumer", "DetectConfig", "Tier0Detector", "Tier0Only"]
