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
    errors of the DPO point's gold mean (and at least ``tolerance`` in reward units).

    Matched KL: PPO's frontier is known only up to its largest measured KL (beyond it the frontier
    is held flat, a lower bound of what more PPO would reach), so a DPO point further out than
    ``kl_slack`` times that KL is not compared, and at least ``min_matched_points`` DPO points
    must fall inside PPO's range: a sweep whose DPO points all lie beyond PPO's cannot pass."""
    kl_key, gold_key = params.get("kl_key", "eval/kl"), params.get("gold_key", "eval/gold_reward_policy")
    k_sem, floor = float(params.get("tolerance_sem", 2.0)), float(params.get("tolerance", 0.0))
    min_share = float(params.get("min_share_on_or_above", 1.0))
    max_rho = float(params.get("max_spearman_beta_kl", -0.99))
    slack, min_matched = float(params.get("kl_slack", 1.25)), int(params.get("min_matched_points", 2))
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
    matched_claim = "DPO points at a KL that PPO's runs reach (matched KL)"
    matched_exp = f">= {min_matched} DPO points at KL <= {slack:g} x PPO's largest KL"
    beyond: list[str] = []
    if not dpo or not ppo:
        why = f"needs finished dpo* and ppo* runs with {kl_key} and {gold_key}: {len(dpo)} dpo, {len(ppo)} ppo"
        crit.append(missing("dpo_on_or_above_ppo", above_claim, above_exp, why))
        crit.append(missing("matched_kl_points", matched_claim, matched_exp, why))
    else:
        refs = [d[5] for d in dpo if d[5] is not None]
        origin = (0.0, sum(refs) / len(refs)) if refs else None
        reach = slack * max(kl for kl, _ in ppo)
        ok = compared = 0
        for name, _, kl, g, sem, _ in dpo:
            gap = g - frontier_at(ppo, kl, origin)
            gaps.append(round(gap, 4))
            if kl > reach:
                beyond.append(name)
                continue
            compared += 1
            ok += gap >= -max(k_sem * sem, floor)
        crit.append(Criterion("matched_kl_points", matched_claim, compared, matched_exp, compared >= min_matched))
        if compared:
            share = ok / compared
            crit.append(Criterion("dpo_on_or_above_ppo", above_claim, round(share, 3), above_exp, share >= min_share))
        else:
            crit.append(missing("dpo_on_or_above_ppo", above_claim, above_exp,
                                f"every DPO point lies beyond {slack:g} x PPO's largest KL ({reach:.3g} nats)"))
    beta_claim = "smaller beta gives larger KL (Spearman rank correlation of beta and KL)"
    if len(dpo) < 3:
        crit.append(missing("beta_kl_spearman", beta_claim, f"<= {max_rho:g}", f"needs >= 3 dpo runs, got {len(dpo)}"))
    else:
        rho = spearman([d[1] for d in dpo], [d[2] for d in dpo])
        crit.append(Criterion("beta_kl_spearman", beta_claim, round(rho, 3), f"<= {max_rho:g}",
                              math.isfinite(rho) and rho <= max_rho))
    values = {"dpo_gap_to_ppo_frontier": gaps, "dpo_beyond_ppo_kl_range": beyond,
              "dpo_points": [[d[0], d[1], round(d[2], 3), round(d[3], 4)] for d in dpo],
              "ppo_points": [[round(k, 3), round(g, 4)] for k, g in ppo]}
    return CheckResult("DPO's reward-KL frontier lies on or above PPO's (Rafailov et al. 2023, Fig. 2)", crit, values)
