"""dpo_sentiment: Rafailov et al. 2023, Fig. 2 (left)."""

from __future__ import annotations

import math

from rlaif.reproductions.checks.base import (
    CheckResult,
    Criterion,
    StudyData,
    check,
    frontier_at,
    missing,
    spearman,
)


@check("dpo_frontier")
def dpo_frontier(study: StudyData, params: dict) -> CheckResult:
    """DPO's (KL, gold) points lie on or above PPO's frontier at matched KL, and a smaller beta
    gives a larger KL. Runs named ``dpo*`` and ``ppo*``; "on" allows ``tolerance_sem`` standard
    errors of the DPO point's gold mean (and at least ``tolerance`` in reward units)."""
    kl_key, gold_key = params.get("kl_key", "eval/kl"), params.get("gold_key", "eval/gold_reward_policy")
    k_sem, floor = float(params.get("tolerance_sem", 2.0)), float(params.get("tolerance", 0.0))
    min_share = float(params.get("min_share_on_or_above", 1.0))
    max_rho = float(params.get("max_spearman_beta_kl", -0.99))
    dpo, ppo = [], []
    for name, r in study.matching("dpo"):
        kl, g = r.metric(kl_key), r.metric(gold_key)
        if kl is not None and g is not None:
            dpo.append((name, float(r.config.get("optimizer.beta", "nan")), kl, g,
                        r.metric(gold_key + "_sem") or 0.0, r.metric("eval/gold_reward_reference")))
    for _, r in study.matching("ppo"):
        kl, g = r.metric(kl_key), r.metric(gold_key)
        if kl is not None and g is not None:
            ppo.append((kl, g))
    crit = []
    above_claim = "DPO's points on or above PPO's reward-KL frontier at matched KL"
    above_exp = f">= {min_share:.0%} of DPO points within {k_sem:g} sem of the frontier or above it"
    gaps: list[float] = []
    if not dpo or not ppo:
        crit.append(missing("dpo_on_or_above_ppo", above_claim, above_exp,
                            f"needs finished dpo* and ppo* runs with {kl_key} and {gold_key}: {len(dpo)} dpo, {len(ppo)} ppo"))
    else:
        refs = [d[5] for d in dpo if d[5] is not None]
        origin = (0.0, sum(refs) / len(refs)) if refs else None
        ok = 0
        for _, _, kl, g, sem, _ in dpo:
            gap = g - frontier_at(ppo, kl, origin)
            gaps.append(round(gap, 4))
            ok += gap >= -max(k_sem * sem, floor)
        share = ok / len(dpo)
        crit.append(Criterion("dpo_on_or_above_ppo", above_claim, round(share, 3), above_exp, share >= min_share))
    beta_claim = "smaller beta gives larger KL (Spearman rank correlation of beta and KL)"
    if len(dpo) < 3:
        crit.append(missing("beta_kl_spearman", beta_claim, f"<= {max_rho:g}", f"needs >= 3 dpo runs, got {len(dpo)}"))
    else:
        rho = spearman([d[1] for d in dpo], [d[2] for d in dpo])
        crit.append(Criterion("beta_kl_spearman", beta_claim, round(rho, 3), f"<= {max_rho:g}",
                              math.isfinite(rho) and rho <= max_rho))
    values = {"dpo_gap_to_ppo_frontier": gaps, "dpo_points": [[d[0], d[1], round(d[2], 3), round(d[3], 4)] for d in dpo],
              "ppo_points": [[round(k, 3), round(g, 4)] for k, g in ppo]}
    return CheckResult("DPO's reward-KL frontier lies on or above PPO's (Rafailov et al. 2023, Fig. 2)", crit, values)
