"""Judge-bias diagnostics: can this judge be trusted? (DESIGN.md section 4)

Pure functions of the judge stage's records (no model runs) plus probes that call a judge:

* ``compute_diagnostics(prompts, candidates, judgments, verdicts, gold_scores, judge_model,
  policy_model)`` -> ``{"judge/position_consistency": ..., ...}``, the metrics the inputs support;
* the metrics one by one: ``position_bias``, ``length_bias``, ``length_controlled_win_rate``,
  ``self_preference``, ``agreement``, ``inter_judge_agreement``, ``transitivity``, ``calibration``;
* probes: ``verbosity_probe``, ``injection_probe``, ``swap_probe``;
* ``diagnostics_plot`` writes a PNG (matplotlib, imported lazily).

Diagnostics only measure: they never change judgments, verdicts or preference pairs.
"""

from rlaif.diagnostics.bias import (
    agreement,
    base_model_name,
    calibration,
    inter_judge_agreement,
    length_bias,
    length_controlled_win_rate,
    position_bias,
    pref_label,
    self_preference,
    shares_base_model,
    transitivity,
    verdict_label,
)
from rlaif.diagnostics.probes import INJECTIONS, RESTATE, injection_probe, swap_probe, verbosity_probe
from rlaif.diagnostics.report import compute_diagnostics, diagnostics_plot
from rlaif.diagnostics.stats import cohen_kappa, expected_calibration_error, fit_logistic, spearman

__all__ = [
    "INJECTIONS",
    "RESTATE",
    "agreement",
    "base_model_name",
    "calibration",
    "cohen_kappa",
    "compute_diagnostics",
    "diagnostics_plot",
    "expected_calibration_error",
    "fit_logistic",
    "injection_probe",
    "inter_judge_agreement",
    "length_bias",
    "length_controlled_win_rate",
    "position_bias",
    "pref_label",
    "self_preference",
    "shares_base_model",
    "spearman",
    "swap_probe",
    "transitivity",
    "verbosity_probe",
    "verdict_label",
]
