"""Stated targets: a benchmark checks its figures against them and exits non-zero on a miss.

    TARGETS = (Target("mean_iou", ">=", 0.75), Target("false_discoveries", "==", 0))
    ...
    add_flag(parser)                                    # --no-targets, for exploration
    result.update(check(result, TARGETS, enforce=not args.no_targets))
    ...
    if __name__ == "__main__":
        sys.exit(exit_status(main()))

``check`` prints one line per target (figure, value, target, met) and returns the
``missed_targets`` (descriptions) and ``targets_enforced`` keys for the JSON line;
``exit_status`` is 1 when a target was missed and targets are enforced. A target whose
figure is absent or None (a part of the benchmark that did not run) is not checked.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    key: str          # the figure's key in the benchmark's JSON
    op: str           # >=, <=, <, >, ==
    value: Any

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown comparison {self.op!r}; use one of {', '.join(_OPS)}")

    def applies(self, result: dict) -> bool:
        return result.get(self.key) is not None

    def met(self, result: dict) -> bool:
        return bool(_OPS[self.op](result[self.key], self.value))

    def describe(self) -> str:
        return f"{self.key} {self.op} {self.value}"


def add_flag(parser) -> None:
    parser.add_argument("--no-targets", action="store_true",
                        help="exploration: report the figures but exit 0 even when a stated target is missed")


def check(result: dict, targets: Sequence[Target], *, enforce: bool = True) -> dict:
    """Print each applicable target's verdict; the JSON keys ``missed_targets`` and ``targets_enforced``."""
    missed = []
    print(f"\n{'target':<40} {'value':>10}  met")
    for t in (t for t in targets if t.applies(result)):
        ok = t.met(result)
        print(f"{t.describe():<40} {result[t.key]!s:>10}  {'yes' if ok else 'NO'}")
        if not ok:
            missed.append(f"{t.describe()} (got {result[t.key]})")
    if missed and not enforce:
        print(f"{len(missed)} target(s) missed; --no-targets: exit status 0")
    return {"missed_targets": missed, "targets_enforced": enforce}


def exit_status(result: dict) -> int:
    """1 when a stated target was missed and targets are enforced, else 0."""
    return 1 if result.get("missed_targets") and result.get("targets_enforced", True) else 0
