"""llm stage: the LLM analyst (tier 1 / tier 2 after the tier-0 detector).

Public names: `LlmConfig`, `BackendConfig`, `LocalModelConfig`, `LlmAnalyst`, `LocalModelServer`,
`ModelNotInstalledError`, `ensure_model`, `neutralise` (for other stages that quote log text).
"""

from receiver.llm.analyst import AnalysisOutcome, LlmAnalyst
from receiver.llm.config import BackendConfig, LlmConfig, LocalModelConfig
from receiver.llm.localserver import LocalModelServer
from receiver.llm.modelfile import ModelNotInstalledError, ensure_model
from receiver.llm.prompt import neutralise

__all__ = [
    "AnalysisOutcome",
    "BackendConfig",
    "LlmAnalyst",
    "LlmConfig",
    "LocalModelConfig",
    "LocalModelServer",
    "ModelNotInstalledError",
    "ensure_model",
    "neutralise",
]
