"""llm-log-analyzer: an OTLP peer that turns traces and logs into anomalies and root causes.

Data flows one way through the sub-packages, each one stage:

    otlp (wire in) -> graph (spans) / logs (redact, mine, window) -> detect -> llm -> rca
        -> store / export (OTLP findings out) / api (HTTP, metrics)

`receiver.app` is the only module that knows the whole pipeline.
"""

__version__ = "0.1.0"
