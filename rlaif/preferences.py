"""Build preference pairs from judgments.

``best_vs_worst``: per prompt, the highest- against the lowest-scored valid candidate.
``all_pairs``: every pair of valid candidates. Either way a pair needs a score margin of at least
``min_margin``; candidates whose score is missing or NaN never enter a pair, and are counted.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

from rlaif.types import Candidate, Judgment, PairwiseVerdict, PreferencePair, Prompt

MODES = ("best_vs_worst", "all_pairs")


def build_pairs(prompts: list[Prompt], candidates: list[Candidate], judgments: list[Judgment],
                verdicts: list[PairwiseVerdict] | None = None, mode: str = "best_vs_worst",
                min_margin: float = 0.0) -> tuple[list[PreferencePair], dict[str, float]]:
    if mode not in MODES:
        raise ValueError(f"preferences.mode='{mode}' is not one of {MODES}")
    by_prompt = {p.id: p for p in prompts}
    cand = {(c.prompt_id, c.index): c for c in candidates}
    scored: dict[str, list[tuple[float, int]]] = defaultdict(list)
    invalid = 0
    for j in judgments:
        if j.valid:
            scored[j.prompt_id].append((float(j.score), j.index))
        else:
            invalid += 1
    pv = {}
    for v in verdicts or []:
        pv[(v.prompt_id, v.a, v.b)] = (v.p_a_first, v.p_a_second)
        # Seen from b: b is in the first slot exactly when a is in the second, so
        # P(b better | b first) = 1 - P(a better | a second), and the other way round.
        pv[(v.prompt_id, v.b, v.a)] = (None if v.p_a_second is None else 1 - v.p_a_second,
                                      None if v.p_a_first is None else 1 - v.p_a_first)
    pairs: list[PreferencePair] = []
    below_margin = 0
    few = 0
    jmeta = {(j.prompt_id, j.index): j for j in judgments}
    prompt_ids = list(dict.fromkeys(c.prompt_id for c in candidates))
    for pid in prompt_ids:
        items = sorted(scored.get(pid, []), key=lambda t: (-t[0], t[1]))
        if len(items) < 2:
            few += 1
            continue
        combos = [(items[0], items[-1])] if mode == "best_vs_worst" else list(combinations(items, 2))
        for (s_hi, i_hi), (s_lo, i_lo) in combos:
            if s_hi - s_lo < min_margin or s_hi == s_lo:
                below_margin += 1
                continue
            j = jmeta[(pid, i_hi)]
            first, second = pv.get((pid, i_hi, i_lo), (None, None))
            pairs.append(PreferencePair(
                prompt=by_prompt[pid].messages,
                chosen=[{"role": "assistant", "content": cand[(pid, i_hi)].text}],
                rejected=[{"role": "assistant", "content": cand[(pid, i_lo)].text}],
                prompt_id=pid, chosen_index=i_hi, rejected_index=i_lo, chosen_score=s_hi, rejected_score=s_lo,
                margin=s_hi - s_lo, judge=j.judge, criterion=j.criterion,
                p_chosen_first=first, p_chosen_second=second,
            ))
    stats = {
        "pairs": len(pairs),
        "invalid_judgments": invalid,
        "dropped_below_margin": below_margin,
        "prompts_without_two_valid": few,
        "mean_margin": sum(p.margin for p in pairs) / len(pairs) if pairs else 0.0,
    }
    return pairs, stats
