"""graph stage: the service dependency graph built from spans (pairing store, edge stats, metrics)."""

from receiver.graph.config import GraphConfig
from receiver.graph.graph import ServiceGraph
from receiver.graph.stats import Bucket

__all__ = ["Bucket", "GraphConfig", "ServiceGraph"]
