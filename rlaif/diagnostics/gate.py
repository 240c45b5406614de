"""The judge gate: thresholds on diagnostics that stop a run before training."""

from __future__ import annotations

from typing import Any

# gate key -> (diagnostic metric, direction): "min" fails below the threshold, "max" above it.
GATES = {
    "min_agreement": ("judge/accuracy_vs_gold", "min"),
    "min_position_consistency": ("judge/position_consistency", "min"),
    "max_same_slot_rate": ("judge/same_slot_rate", "max"),
}


class JudgeGateError(RuntimeError):
    pass


def check_gate(gate: dict[str, Any] | None, diagnostics: dict[str, float]) -> list[str]:
    """Return a message per failed threshold; a threshold whose metric was not computed fails too,
    since a gate that cannot be checked must not silently pass."""
    failures = []
    for key, threshold in (gate or {}).items():
        if threshold is None:
            continue
        if key not in GATES:
            raise ValueError(f"diagnostics.gate.{key} is not a known gate; choose from {sorted(GATES)}")
        metric, direction = GATES[key]
        value = diagnostics.get(metric)
        if value is None:
            failures.append(f"{metric} could not be computed for this judge/data (gate {key}={threshold}); "
                            f"remove the gate or provide what the metric needs (gold labels, a pairwise judge)")
        elif direction == "min" and value < threshold:
            failures.append(f"{metric} = {value:.3f} is below diagnostics.gate.{key} = {threshold} "
                            f"(short by {threshold - value:.3f})")
        elif direction == "max" and value > threshold:
            failures.append(f"{metric} = {value:.3f} is above diagnostics.gate.{key} = {threshold} "
                            f"(over by {value - threshold:.3f})")
    return failures
