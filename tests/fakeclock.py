"""The one fake clock of the tests: a time the test sets (`.t`), optionally advancing by `step` on
every read."""

from __future__ import annotations


class FakeClock:
    def __init__(self, t: float = 1000.0, step: float = 0.0) -> None:
        self.t = t
        self.step = step

    def __call__(self) -> float:
        if self.step:
            self.t += self.step
        return self.t
