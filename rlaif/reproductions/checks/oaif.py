"""oaif: Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback (arXiv:2402.04792)."""

from __future__ import annotations

import math

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing

GOLD = "eval/gold_reward_policy"
LENGTH = "eval/length_policy"
CALLS = "train/judge_calls"


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


@check("oaif")
def oaif(study: StudyData, params: dict) -> CheckResult:
    """Online DPO's gold at or above offline DPO's at matched judge calls, online DPO learning at all,
    and a "be brief" annotator shortening the online policy's responses.

    Params: ``offline_run``, ``online_run``, ``brief_run`` (member names); ``tolerance_sem`` (k: online
    may trail offline by at most k standard errors of the difference of the two gold means);
    ``min_online_gain`` (online's ``gain_metric`` over the initial policy must exceed it); ``gold_metric``
    and ``gain_metric`` (default the gold reward and its gain; full scale without a gold: the held-out
    judge's win rate, with ``min_online_gain`` 0.5);
    ``max_length_ratio`` (brief / online mean length); ``judge_calls_match`` (each online member's
    judge calls within [share, 1] of offline labelling's).
    """
    off, on, brief = (params.get(k, d) for k, d in (("offline_run", "offline_dpo"), ("online_run", "online_dpo"),
                                                     ("brief_run", "online_dpo_brief")))
    k_sem = float(params.get("tolerance_sem", 2.0))
    min_gain = float(params.get("min_online_gain", 0.0))
    max_ratio = float(params.get("max_length_ratio", 0.8))
    share = float(params.get("judge_calls_match", 0.9))
    gold_key = params.get("gold_metric", GOLD)
    gain_key = params.get("gain_metric", "eval/gold_reward_gain")
    m = study.metric
    crit: list[Criterion] = []
    values: dict = {}

    # 1. online at or above offline on gold
    claim = f"online DPO's {gold_key} at or above offline DPO's ({on} vs {off})"
    exp = f"online - offline >= -{k_sem:g} x sem of the difference"
    g_on, g_off = m(on, gold_key), m(off, gold_key)
    s_on, s_off = m(on, gold_key + "_sem"), m(off, gold_key + "_sem")
    if not _finite(g_on, g_off):
        crit.append(missing("online_at_or_above_offline", claim, exp,
                            f"needs finished runs {on!r} and {off!r} with {gold_key}: got {g_on}, {g_off}"))
    else:
        se = math.sqrt((s_on or 0.0) ** 2 + (s_off or 0.0) ** 2) if _finite(s_on, s_off) else 0.0
        diff = g_on - g_off
        values.update({"gold_online_minus_offline": round(diff, 4), "gold_difference_sem": round(se, 4),
                       "gold_offline": round(g_off, 4), "gold_online": round(g_on, 4)})
        crit.append(Criterion("online_at_or_above_offline", claim, round(diff, 4), exp + f" (= {-k_sem * se:.4g})",
                              diff >= -k_sem * se,
                              "" if _finite(s_on, s_off) else f"no {gold_key}_sem: tolerance 0"))

    # 2. online learned (otherwise 1 compares two unchanged policies)
    claim = f"online DPO improves on the initial policy ({on}: {gain_key})"
    gain = m(on, gain_key)
    if not _finite(gain):
        crit.append(missing("online_gain", claim, f"> {min_gain:g}", f"needs {on!r} with {gain_key}"))
    else:
        crit.append(Criterion("online_gain", claim, round(gain, 4), f"> {min_gain:g}", gain > min_gain))
    if _finite(m(off, gain_key)):
        values["gain_offline"] = round(m(off, gain_key), 4)

    # 3. matched judge calls
    claim = "online members spend the judge calls offline labelling spent (matched budget)"
    exp = f"each online/offline ratio in [{share:g}, 1]"
    c_off = m(off, CALLS)
    ratios = {}
    for name in (on, brief):
        c = m(name, CALLS)
        if _finite(c, c_off) and c_off > 0:
            ratios[name] = round(c / c_off, 3)
    if len(ratios) < 2:
        crit.append(missing("judge_calls_matched", claim, exp,
                            f"needs {CALLS} of {off!r}, {on!r} and {brief!r}: got {c_off} and {ratios}"))
    else:
        worst = min(ratios.values()) if all(r <= 1 for r in ratios.values()) else max(ratios.values())
        crit.append(Criterion("judge_calls_matched", claim, worst, exp,
                              all(share <= r <= 1.0 for r in ratios.values())))

    # 4. the brief annotator shortens
    claim = f"a 'be brief' annotator shortens responses ({brief} / {on} mean length)"
    exp = f"<= {max_ratio:g}"
    l_on, l_brief = m(on, LENGTH), m(brief, LENGTH)
    if not _finite(l_on, l_brief) or not l_on:
        crit.append(missing("brief_shortens", claim, exp, f"needs {on!r} and {brief!r} with {LENGTH}: got {l_on}, {l_brief}"))
    else:
        ratio = l_brief / l_on
        values.update({"length_online": round(l_on, 2), "length_brief": round(l_brief, 2)})
        crit.append(Criterion("brief_shortens", claim, round(ratio, 3), exp, ratio <= max_ratio))
    for name in (off, on, brief):
        for key, short in ((LENGTH, "length"), ("eval/win_rate", "win_rate"), ("eval/kl", "kl"), (gold_key, "gold")):
            v = m(name, key)
            if _finite(v):
                values[f"{name}/{short}"] = round(v, 4)
    return CheckResult("Online AI feedback at least matches offline feedback at matched judge calls, and the "
                       "annotator's preference steers length (Guo et al. 2024)", crit, values)
