"""The JSON schema of one window analysis, and its validation."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

SEVERITY_OUT = ("critical", "high", "medium", "low", "none")
ANOMALY_TYPES = (
    "error_burst", "dependency_failure", "timeout", "resource_exhaustion", "crash", "new_error",
    "security", "configuration", "traffic_change", "hardware", "other", "none",
)

ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reasoning", "is_anomaly", "severity", "anomaly_type", "root_cause", "affected_services",
                 "remediation_steps", "confidence", "explanation"],
    "properties": {
        "reasoning": {"type": "string", "maxLength": 160},
        "is_anomaly": {"type": "boolean"},
        "severity": {"type": "string", "enum": list(SEVERITY_OUT)},
        "anomaly_type": {"type": "string", "enum": list(ANOMALY_TYPES)},
        "root_cause": {"type": "string", "maxLength": 120},
        "affected_services": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 4},
        "remediation_steps": {"type": "array", "items": {"type": "string", "maxLength": 120}, "maxItems": 2},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "explanation": {"type": "string", "maxLength": 200},
    },
}

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


class OutputError(ValueError):
    """The model's answer is not JSON or does not match the schema. `kind`: non_json | schema."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_json_output(text: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse and validate a model answer (tolerates a Markdown code fence around the JSON)."""
    if not text or not text.strip():
        raise OutputError("non_json", "empty answer")
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        value = json.loads(body)
    except ValueError as e:
        raise OutputError("non_json", f"not JSON: {e}") from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(root)"
        raise OutputError("schema", f"schema violation at {where}: {e.message[:200]}")
    if not isinstance(value, dict):
        raise OutputError("schema", "answer is not a JSON object")
    return value


def compact_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))
