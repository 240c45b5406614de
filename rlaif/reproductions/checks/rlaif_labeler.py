"""rlaif_labeler: Lee et al. 2023, RLAIF (arXiv:2309.00267v2), §2.1.1, Tables 1-4, App. B.

The labeler audit (rlaif.reproductions.rlaif_labeler) gives, per labeler variant, counts on
human-labelled pairs whose first-shown response is decided by a seeded coin. What is tested:

- **the averaged label carries no slot preference.** An averaged label cannot depend on the order
  by construction *if* the second ordering really shows the texts swapped; what can fail is the
  label pipeline (no averaging, a swap that does not swap, a label read from one ordering). A label
  free of slot preference, compared with the human label, picks the first-shown response when the
  human picked the second as often as the reverse: McNemar's exact test on the two discordant
  cells, at ``alpha`` family-wise (Bonferroni over the comparative variants), must *not* reject;
- **there was a slot preference to remove**: the same test on the label read from one ordering
  rejects for at least one variant (Lee et al. App. B: every PaLM 2 size keeps the same slot on
  18-56% of swapped pairs; SmolLM2-135M on ~100%);
- **averaged labels are decisive** (a swap that shows the same order twice makes every averaged
  probability exactly 1/2, which would pass the first test vacuously);
- **order invariance**: re-judging pairs with the presentation swapped gives the mirrored label
  (max |P(a) - (1 - P'(b))| <= ``max_swap_mismatch``);
- **alignment per labeler with its confidence interval** (Wilson, ``ci_level``), each variant
  measured on at least ``min_pairs`` pairs. The paper's alignments (78.0 L, 73.8 S, 62.7 XS) are
  reported beside ours, not required: a 135M labeler is expected near chance.

RLAIF against SFT (each RLAIF member's gold win rate over the reference policy, which plays SFT)
and direct against distilled RLAIF are reported; ``require_rlaif_beats_sft: true`` (full scale)
makes "each RLAIF member's gold win rate > 0.5" a criterion.
"""

from __future__ import annotations

import math
from typing import Any

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(level: float) -> float:
    """Two-sided normal quantile for a confidence level (bisection on erf; no scipy needed)."""
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs b, c against Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _fmt_ci(k: int, n: int, level: float) -> str:
    lo, hi = wilson(k, n, level)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "n/a"


@check("rlaif_labeler")
def rlaif_labeler(study: StudyData, params: dict) -> CheckResult:
    alpha = float(params.get("alpha", 0.05))
    level = float(params.get("ci_level", 0.95))
    min_pairs = int(params.get("min_pairs", 20))
    min_decisive = float(params.get("min_decisive_share", 0.9))
    max_mismatch = float(params.get("max_swap_mismatch", 1e-3))
    members = list(params.get("rlaif_members", ["direct", "distilled"]))
    win_key = params.get("win_rate_metric", "eval/heldout_win_rate")
    variants: dict[str, dict[str, Any]] = (study.analysis or {}).get("variants") or {}
    comparative = {n: v for n, v in variants.items() if "single_order" in v}
    k = max(1, len(comparative))
    a_k = alpha / k
    crit: list[Criterion] = []
    values: dict[str, Any] = {}
    no_audit = "the labeler audit (study.analysis) did not run or found no comparative variant"

    claim = "averaged labels carry no slot preference (McNemar vs the human label, every comparative variant)"
    exp = f"p >= {a_k:.3g} for every variant (alpha {alpha:g} / {k})"
    if not comparative:
        crit.append(missing("averaged_labels_slot_free", claim, exp, no_audit))
    else:
        ps = {n: mcnemar_p(v["averaged"]["lf_gs"], v["averaged"]["ls_gf"]) for n, v in comparative.items()}
        values["averaged_mcnemar_p"] = {n: round(p, 4) for n, p in ps.items()}
        crit.append(Criterion("averaged_labels_slot_free", claim, round(min(ps.values()), 4), exp,
                              all(p >= a_k for p in ps.values())))

    claim = "single-order labels do prefer a slot (what averaging must remove; McNemar, at least one variant)"
    exp = f"p < {a_k:.3g} for at least one variant"
    if not comparative:
        crit.append(missing("single_order_slot_preference", claim, exp, no_audit))
    else:
        ps = {n: mcnemar_p(v["single_order"]["lf_gs"], v["single_order"]["ls_gf"]) for n, v in comparative.items()}
        values["single_order_mcnemar_p"] = {n: float(f"{p:.3g}") for n, p in ps.items()}
        values["single_order_first_slot_share"] = {
            n: _fmt_ci(v["single_order_first"], v["single_order_total"], level) for n, v in comparative.items()}
        crit.append(Criterion("single_order_slot_preference", claim, float(f"{min(ps.values()):.3g}"), exp,
                              any(p < a_k for p in ps.values())))

    claim = "averaged labels are decisive (not exactly 1/2, which a swap that does not swap gives)"
    exp = f">= {min_decisive:g} of valid pairs, every comparative variant"
    if not comparative:
        crit.append(missing("averaged_labels_decisive", claim, exp, no_audit))
    else:
        shares = {}
        for n, v in comparative.items():
            valid = v["n"] - v.get("invalid", 0)
            shares[n] = (valid - v["ties"]) / valid if valid else 0.0
        crit.append(Criterion("averaged_labels_decisive", claim, round(min(shares.values()), 3), exp,
                              all(s >= min_decisive for s in shares.values())))

    claim = "re-judged with the presentation swapped, every probed pair gets the mirrored averaged label"
    exp = f"all agree and max |P(a) - (1 - P'(b))| <= {max_mismatch:g}"
    inv = {n: v.get("invariance") or {} for n, v in comparative.items()}
    if not comparative or not all(i.get("n") for i in inv.values()):
        crit.append(missing("order_invariance", claim, exp, no_audit if not comparative else
                            "some variant has no invariance probe (analysis_options.invariance_pairs = 0?)"))
    else:
        worst = max(i["max_mismatch"] for i in inv.values())
        agree = all(i["agree"] == i["n"] for i in inv.values())
        values["invariance"] = {n: f"{i['agree']}/{i['n']} agree, max mismatch {i['max_mismatch']:.2g}"
                                for n, i in inv.items()}
        crit.append(Criterion("order_invariance", claim, float(f"{worst:.3g}"), exp, agree and worst <= max_mismatch))

    claim = f"labeler alignment with the human labels, per variant, with its {level:.0%} Wilson interval"
    exp = f"every variant measured on >= {min_pairs} pairs"
    if not variants:
        crit.append(missing("alignment_with_ci", claim, exp, "the labeler audit (study.analysis) did not run"))
    else:
        align = {n: _fmt_ci(v["aligned"], v["n"], level) for n, v in variants.items()}
        values["alignment"] = align
        values["alignment_pairs"] = {n: v["n"] for n, v in variants.items()}
        values["same_slot_rate"] = {n: round(v["same_slot_rate"], 3) for n, v in comparative.items()
                                    if "same_slot_rate" in v}
        values["position_consistency"] = {n: round(v["position_consistency"], 3) for n, v in comparative.items()
                                          if "position_consistency" in v}
        small = [n for n, v in variants.items() if v["n"] < min_pairs]
        crit.append(Criterion("alignment_with_ci", claim, "; ".join(f"{n} {a}" for n, a in align.items()), exp,
                              not small, why=f"too few pairs: {', '.join(small)}" if small else ""))

    # RLAIF against SFT (the reference policy), direct against distilled.
    wins = {}
    for m in members:
        r = study.runs.get(m)
        if r is not None and r.complete:
            wins[m] = {"gold_win_rate_vs_sft": r.metric(win_key), "judge_win_rate_vs_sft": r.metric("eval/win_rate"),
                       "gold_reward_gain": r.metric("eval/gold_reward_gain"), "kl": r.metric("eval/kl"),
                       "pairs": r.metric("eval/pairs"),
                       "labeler_alignment_on_policy_samples": r.metric("judge/accuracy_vs_gold_averaged"),
                       "labeler_same_slot_rate_on_policy_samples": r.metric("judge/same_slot_rate")}
    values["rlaif_vs_sft"] = wins
    if "direct" in wins and "distilled" in wins:
        gd, gs = wins["direct"]["gold_win_rate_vs_sft"], wins["distilled"]["gold_win_rate_vs_sft"]
        values["direct_minus_distilled_gold_win_rate"] = None if gd is None or gs is None else round(gd - gs, 4)
    if params.get("require_rlaif_beats_sft", False):
        claim = f"each RLAIF member beats SFT (the reference policy): {win_key} > 0.5"
        exp = "> 0.5 for " + ", ".join(members)
        got = {m: (wins.get(m) or {}).get("gold_win_rate_vs_sft") for m in members}
        if any(v is None for v in got.values()):
            crit.append(missing("rlaif_beats_sft", claim, exp, f"missing {win_key} for "
                                + ", ".join(m for m, v in got.items() if v is None)))
        else:
            crit.append(Criterion("rlaif_beats_sft", claim, [round(v, 3) for v in got.values()], exp,
                                  all(v > 0.5 for v in got.values())))
    return CheckResult("Averaging both orders removes the AI labeler's slot preference; alignment per labeler with "
                       "its CI (Lee et al. 2023, §2.1.1, App. B)", crit, values)
