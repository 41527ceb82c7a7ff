"""store stage: findings, incidents, resolution notes and the LLM audit trail (SQLite or PostgreSQL)."""

from receiver.store.config import DEFAULT_URL, StoreConfig
from receiver.store.store import SCHEMA_VERSION, Store, StoreError

__all__ = ["DEFAULT_URL", "SCHEMA_VERSION", "Store", "StoreConfig", "StoreError"]
