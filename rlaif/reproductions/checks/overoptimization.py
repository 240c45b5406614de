"""overoptimization: Gao et al. 2022, Scaling Laws for Reward Model Overoptimization (arXiv:2210.10760).

Reads the study's analysis (rlaif/reproductions/overoptimization.py): the best-of-n curve over n
(``analysis["bon"]``: d = sqrt(KL_bon(n)), proxy and gold gains over n = 1, the gold gain's
standard error over prompts) and the RL points (``analysis["rl"]``: one per PPO member, d =
sqrt(eval/kl), the same gains over the reference's samples). For each of the two it checks

- the proxy keeps rising: Spearman(d, proxy gain) over the points with d = 0 included, and the
  proxy gain at the largest d above 0. (For best-of-n the expected maximum of the proxy cannot
  fall as n grows, so this fails only for a degenerate proxy; for RL it is a measurement);
- the gold rises: the largest gold gain is at least ``min_gold_rise_sem`` of its standard errors;
- the gold then falls or flattens: the paper's functional form fitted to the gold gains
  (best-of-n d(alpha - beta d), RL d(alpha - beta log d)) turns down at d* <=
  ``max_peak_over_range`` times the largest d measured. For best-of-n, d* = 1.5 d_max means the
  fitted gold slope at d_max is a third of its slope at 0; a gold curve still climbing steadily
  has beta <= 0 or d* far beyond the range and fails;
- best-of-n only: the form fits (R^2 >= ``min_fit_r2``); RL's R^2 is reported (with 3-4 points
  the two-parameter fit is nearly exact and says little).

The fitted alpha, beta, R^2 and d* of gold and proxy, for both, are reported as values.
"""

from __future__ import annotations

import math
from typing import Any

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing, spearman
from rlaif.reproductions.overoptimization import fit_form

CURVE_KEYS = ("d", "gold_gain", "proxy_gain", "gold_gain_sem")


def _curve(study: StudyData, name: str) -> tuple[dict[str, list] | None, str]:
    c = study.analysis.get(name)
    if not isinstance(c, dict):
        return None, f"the analysis has no '{name}' curve (did study.analysis run? see analysis_error.txt)"
    lens = {k: len(c.get(k) or []) for k in CURVE_KEYS}
    if len(set(lens.values())) != 1:
        return None, f"analysis['{name}'] has lists of different lengths: {lens}"
    rows = [(d, g, p, s) for d, g, p, s in zip(*(c[k] for k in CURVE_KEYS), strict=True)
            if d is not None and g is not None and p is not None]
    return {k: [r[i] for r in rows] for i, k in enumerate(CURVE_KEYS)}, ""


def _with_origin(c: dict[str, list]) -> tuple[list[float], list[float], list[float]]:
    """(d, gold gain, proxy gain) with the reference point (0, 0, 0) first when the curve lacks it."""
    d, g, p = list(c["d"]), list(c["gold_gain"]), list(c["proxy_gain"])
    if not d or d[0] > 0:
        d, g, p = [0.0] + d, [0.0] + g, [0.0] + p
    return d, g, p


def _criterion(name: str, key: str, claims: dict, measured: Any, passed: bool, why: str = "") -> Criterion:
    claim, expected = claims[key]
    return Criterion(f"{name}_{key}", claim, measured, expected, bool(passed), why=why)


def _criteria(name: str, label: str, c: dict[str, list] | None, why: str, form: str, params: dict, min_points: int,
              min_rho: float, check_r2: bool) -> tuple[list[Criterion], dict[str, Any]]:
    k_sem = float(params.get("min_gold_rise_sem", 2.0))
    max_over = float(params.get("max_peak_over_range", 1.5))
    min_r2 = float(params.get("min_fit_r2", 0.8))
    claims = {
        "proxy_rises": (f"{label}: the proxy keeps rising with d = sqrt(KL) (Spearman, d = 0 included; last gain > 0)",
                        f">= {min_rho:g}, last gain > 0"),
        "gold_rises": (f"{label}: the gold rises (largest gold gain over the reference, in its standard errors)",
                       f">= {k_sem:g} sem"),
        "gold_turns": (f"{label}: the gold then falls or flattens (fitted {'d(a - b d)' if form == 'bon' else 'd(a - b log d)'}"
                       " peaks at d* <= k x the largest d; measured d*/d_max)", f"<= {max_over:g}"),
        "fit_r2": (f"{label}: the paper's functional form fits the gold (R^2)", f">= {min_r2:g}"),
    }
    names = ["proxy_rises", "gold_rises", "gold_turns"] + (["fit_r2"] if check_r2 else [])
    n_pts = len([x for x in (c or {}).get("d", []) if x > 0])
    if c is None or n_pts < min_points:
        why = why or f"needs >= {min_points} points with d > 0, got {n_pts}"
        return [missing(f"{name}_{k}", *claims[k], why) for k in names], {}
    d, g, p = _with_origin(c)
    crit = []
    rho = spearman(d, p)
    ok = math.isfinite(rho) and rho >= min_rho and p[-1] > 0
    crit.append(_criterion(name, "proxy_rises", claims, round(rho, 3) if math.isfinite(rho) else None, ok,
                           "" if ok or p[-1] > 0 else f"proxy gain at the largest d is {p[-1]:.4g}"))
    j = max(range(1, len(g)), key=lambda i: g[i])
    sems = c["gold_gain_sem"] if len(c["d"]) == len(d) else [0.0] + list(c["gold_gain_sem"])
    sem = sems[j]
    if sem is not None and math.isfinite(sem) and sem > 0:
        z = g[j] / sem
        crit.append(_criterion(name, "gold_rises", claims, round(z, 2), z >= k_sem))
    else:
        crit.append(missing(f"{name}_gold_rises", *claims["gold_rises"], f"no standard error at the peak (sem={sem})"))
    fit = fit_form(d, g, form)
    d_max = max(d)
    if fit["peak_d"] is None:
        crit.append(missing(f"{name}_gold_turns", *claims["gold_turns"], "the form could not be fitted"))
    else:
        ratio = fit["peak_d"] / d_max
        crit.append(_criterion(name, "gold_turns", claims, round(ratio, 3) if math.isfinite(ratio) else "inf",
                               ratio <= max_over, "" if fit["beta"] > 0 else f"beta = {fit['beta']:.4g} <= 0: the "
                               "fitted gold never turns down"))
    if check_r2:
        r2 = fit["r2"]
        crit.append(_criterion(name, "fit_r2", claims, None if r2 is None else round(r2, 3),
                               r2 is not None and r2 >= min_r2, "" if r2 is not None else "R^2 undefined"))
    values: dict[str, Any] = {f"{name}_gold_peak_d": round(d[j], 4), f"{name}_gold_peak_gain": round(g[j], 4),
                              f"{name}_d_max": round(d_max, 4)}
    pfit = fit_form(d, p, form)
    for score, f in (("gold", fit), ("proxy", pfit)):
        for k in ("alpha", "beta", "r2", "peak_d"):
            x = f[k]
            values[f"{name}_{score}_{k}"] = (round(x, 4) if isinstance(x, float) and math.isfinite(x)
                                             else ("inf" if x == math.inf else x))
    return crit, values


@check("overoptimization")
def overoptimization(study: StudyData, params: dict) -> CheckResult:
    """Best-of-n and RL against a proxy reward model: the proxy keeps rising with d = sqrt(KL)
    while the gold rises, then falls or flattens; the paper's functional forms fitted (module docstring)."""
    crit: list[Criterion] = []
    values: dict[str, Any] = {}
    bon, why = _curve(study, "bon")
    c, v = _criteria("bon", "best-of-n", bon, why, "bon", params, int(params.get("min_bon_points", 3)),
                     float(params.get("bon_min_proxy_spearman", 0.99)), True)
    crit += c
    values.update(v)
    if bon is not None and isinstance(study.analysis.get("bon"), dict):
        values["bon_n"] = study.analysis["bon"].get("n")
    rl, why = _curve(study, "rl")
    c, v = _criteria("rl", "RL", rl, why, "rl", params, int(params.get("min_rl_points", 3)),
                     float(params.get("rl_min_proxy_spearman", 0.79)), False)
    crit += c
    values.update(v)
    if isinstance(study.analysis.get("rl"), dict):
        values["rl_members"] = study.analysis["rl"].get("members")
    accs = [r.metric("reward_model/accuracy") for _, r in study.matching(str(params.get("rl_prefix", "ppo")))]
    if accs and accs[0] is not None:
        values["proxy_heldout_pair_accuracy"] = round(accs[0], 4)
    return CheckResult("Against a proxy reward model the proxy keeps rising while the gold rises, then falls or "
                       "flattens, for best-of-n (x: KL_bon = log n - (n-1)/n) and RL (Gao et al. 2022)", crit, values)
