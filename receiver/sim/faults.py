"""Faults the simulator can inject, and which service each one makes the root cause."""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = (
    "db_down",
    "network_delay",
    "cpu",
    "exception",
    "wrong_value",
    "resource_exhaustion",
    "bad_deploy",
)

# Which services each kind may target in the default topology. For the two edge faults
# (network_delay, wrong_value) the entry is (caller, callee): the callee is the root cause.
DEFAULT_TARGETS: dict[str, list[str] | list[tuple[str, str]]] = {
    "db_down": ["postgres"],
    "network_delay": [("checkout", "payment"), ("frontend", "cart"), ("cart", "inventory"),
                      ("checkout", "shipping")],
    "cpu": ["payment", "inventory", "cart", "shipping", "auth", "recommendation"],
    "exception": ["payment", "inventory", "cart", "shipping", "auth", "checkout"],
    "wrong_value": [("checkout", "payment"), ("checkout", "shipping"), ("cart", "inventory")],
    "resource_exhaustion": ["payment", "inventory", "checkout", "cart"],
    "bad_deploy": ["payment", "checkout", "inventory", "shipping", "cart"],
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault.

    `service` is the faulty service (the expected root cause). For `network_delay` and
    `wrong_value`, `caller` names the other end of the affected edge (caller -> service); `"*"`
    affects every caller (e.g. a delay on the service's own network interface).
    `start_s` is the offset from the simulation start; `duration_s` how long it lasts.
    """

    kind: str
    service: str
    caller: str = ""
    start_s: float = 0.0
    duration_s: float = 1e12
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault.kind: unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.kind in ("network_delay", "wrong_value") and not self.caller:
            raise ValueError(f"fault.caller: {self.kind} needs the caller of the edge")
        if self.intensity <= 0:
            raise ValueError("fault.intensity: must be > 0")

    @property
    def root_cause(self) -> str:
        return self.service

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s

    def describe(self) -> str:
        if self.caller:
            return f"{self.kind} on {self.caller} -> {self.service}"
        return f"{self.kind} in {self.service}"


def default_fault(kind: str, service: str | None = None, start_s: float = 0.0) -> Fault:
    """A fault of `kind` on `service` (or the kind's first default target)."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault: unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
    targets = DEFAULT_TARGETS[kind]
    if kind in ("network_delay", "wrong_value"):
        pairs: list[tuple[str, str]] = [t for t in targets if isinstance(t, tuple)]
        if service is None:
            caller, callee = pairs[0]
        else:
            match = [p for p in pairs if p[1] == service]
            if not match:
                allowed = sorted({p[1] for p in pairs})
                raise ValueError(f"service: {kind} can target {allowed}, not {service!r}")
            caller, callee = match[0]
        return Fault(kind, callee, caller=caller, start_s=start_s)
    names = [t for t in targets if isinstance(t, str)]
    svc = service or names[0]
    if svc not in names:
        raise ValueError(f"service: {kind} can target {names}, not {svc!r}")
    return Fault(kind, svc, start_s=start_s)
