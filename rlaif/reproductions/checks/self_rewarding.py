"""self_rewarding: Yuan et al. 2024, Self-Rewarding Language Models (arXiv:2401.10020)."""

from __future__ import annotations

import math

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@check("self_rewarding")
def self_rewarding(study: StudyData, params: dict) -> CheckResult:
    """The win rate against the initial policy rises across iterations; the self-judge's accuracy
    on labelled pairs and the length are reported for every iteration.

    Reads the analysis (rlaif/reproductions/self_rewarding.py): ``win_rate``, ``audit_accuracy`` and
    ``length``, lists over the iterations M0..MR (M0's win rate is 0.5 by definition). Params:
    ``min_win_rate_rise`` (MR's win rate minus M1's must exceed it) and ``step_tolerance`` (no
    iteration may fall below the previous one by more than this).
    """
    a = study.analysis
    rise = float(params.get("min_win_rate_rise", 0.0))
    tol = float(params.get("step_tolerance", 0.05))
    rounds = a.get("rounds")
    crit: list[Criterion] = []
    values: dict = {}

    claim = "win rate against M0 rises across iterations M1..MR"
    exp = f"M_R - M_1 > {rise:g}, and no step down by more than {tol:g}"
    win = list(a.get("win_rate") or [])[1:]  # M1..MR
    if not isinstance(rounds, int) or rounds < 2 or len(win) != rounds or not all(_ok(w) for w in win):
        crit.append(missing("win_rate_rises", claim, exp,
                            f"needs the analysis's win_rate for M0..MR with R >= 2 rounds: got rounds={rounds}, "
                            f"win_rate={a.get('win_rate')}"))
    else:
        steps = [b - c for c, b in zip(win, win[1:], strict=False)]
        total = win[-1] - win[0]
        values["win_rate_steps"] = [round(s, 4) for s in steps]
        crit.append(Criterion("win_rate_rises", claim, [round(w, 4) for w in win], exp,
                              total > rise and all(s >= -tol for s in steps),
                              "" if total > rise else f"M_R - M_1 = {total:+.4g}"))

    n = rounds + 1 if isinstance(rounds, int) else None
    for key, name, claim in (("audit_accuracy", "judge_accuracy_each_iteration",
                              "self-judge accuracy on the labelled pairs, every iteration M0..MR"),
                             ("length", "length_each_iteration", "mean response length (the drift), every iteration M0..MR")):
        xs = list(a.get(key) or [])
        exp = f"{n} finite values" if n else "one value per iteration"
        if n is None or len(xs) != n or not all(_ok(x) for x in xs):
            crit.append(missing(name, claim, exp, f"the analysis's {key}: {xs or 'absent'} (rounds={rounds})"))
        else:
            crit.append(Criterion(name, claim, [round(x, 4) for x in xs], exp, True))
            values[f"{key}_change"] = round(xs[-1] - xs[0], 4)
    for key in ("gold", "kl", "length_drift", "audit_p_prefer_longer", "self_judge_gold_agreement", "audit_pairs"):
        if key in a:
            values[key] = a[key]
    return CheckResult("Self-rewarding iterations raise the win rate; the self-judge's accuracy and the length are "
                       "tracked each iteration (Yuan et al. 2024)", crit, values)
