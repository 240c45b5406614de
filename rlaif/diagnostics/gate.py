"""The judge gate: thresholds on diagnostics that stop a run before training."""

from __future__ import annotations

from typing import Any

# gate key -> (diagnostic metric, direction): "min" fails below the threshold, "max" above it.
# Agreement is read with order-inconsistent verdicts counted as ties (Zheng et al. S1): with them
# dropped, a judge consistent on a few pairs only would be gated on those few.
GATES = {
    "min_agreement": ("judge/accuracy_vs_gold_with_ties", "min"),
    "min_position_consistency": ("judge/position_consistency", "min"),
    "max_same_slot_rate": ("judge/same_slot_rate", "max"),
}
# Settings of a gate that are not thresholds: key -> (count metric, the gate it applies to). The
# agreement gate never passes on fewer gold pairs than this: an accuracy over a handful of pairs
# says little about the judge.
SETTINGS = {"min_gold_pairs": ("judge/gold_pairs_with_ties", "min_agreement")}
DEFAULT_MIN_GOLD_PAIRS = 30


class JudgeGateError(RuntimeError):
    pass


def check_gate(gate: dict[str, Any] | None, diagnostics: dict[str, float]) -> list[str]:
    """Return a message per failed threshold; a threshold whose metric was not computed fails too,
    since a gate that cannot be checked must not silently pass."""
    gate = dict(gate or {})
    for key in gate:
        if key not in GATES and key not in SETTINGS:
            raise ValueError(f"diagnostics.gate.{key} is not a known gate; choose from {sorted(GATES | SETTINGS)}")
    failures = []
    for key, threshold in gate.items():
        if threshold is None or key in SETTINGS:
            continue
        metric, direction = GATES[key]
        value = diagnostics.get(metric)
        if value is None:
            failures.append(f"{metric} could not be computed for this judge/data (gate {key}={threshold}); "
                            f"remove the gate or provide what the metric needs (gold labels, a pairwise judge)")
            continue
        failures += _too_few(key, gate, diagnostics)
        if direction == "min" and value < threshold:
            failures.append(f"{metric} = {value:.3f} is below diagnostics.gate.{key} = {threshold} "
                            f"(short by {threshold - value:.3f})")
        elif direction == "max" and value > threshold:
            failures.append(f"{metric} = {value:.3f} is above diagnostics.gate.{key} = {threshold} "
                            f"(over by {value - threshold:.3f})")
    return failures


def _too_few(key: str, gate: dict[str, Any], diagnostics: dict[str, float]) -> list[str]:
    """A failure when gate ``key`` rests on fewer items than its minimum count setting asks for."""
    out = []
    for setting, (metric, applies_to) in SETTINGS.items():
        if applies_to != key:
            continue
        least = gate.get(setting, DEFAULT_MIN_GOLD_PAIRS)  # an explicit null: no minimum
        n = diagnostics.get(metric) or 0
        if least is not None and n < least:
            out.append(f"diagnostics.gate.{key} read {metric} = {n:g} gold pairs, fewer than "
                       f"diagnostics.gate.{setting} = {least}: label more pairs (data.num_train, "
                       f"generator.num_candidates) or lower diagnostics.gate.{setting}")
    return out
